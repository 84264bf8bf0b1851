//! The heap allocator the gateway binary runs on: mimalloc, set up to give memory back.
//!
//! mimalloc costs about 12 % less CPU per proxied request than glibc's malloc (fewer
//! instructions per allocation, no fastbin consolidation on the large header buffers), but
//! its defaults keep the memory of a connection spike: the first arena is committed eagerly
//! and freed pages are purged only after a second. [`set_defaults`] changes those defaults
//! before the first allocation, so RSS falls back after 5,000 WebSockets have closed;
//! `MIMALLOC_*` environment variables still override them. A binary opts in with
//! [`use_mimalloc!`](crate::use_mimalloc), as `src/main.rs` and the benchmark's bare
//! Pingora proxy do.

use std::alloc::{GlobalAlloc, Layout};
use std::os::raw::{c_int, c_long, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by [`set_defaults`]: the binary runs on mimalloc.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Option indices of mimalloc 3.3 (`mi_option_t` in `mimalloc.h`; `libmimalloc-sys`
/// 0.1.49 does not export them). `tests/allocator.rs` checks them by name through
/// `MIMALLOC_VERBOSE`, so a version bump that moves them fails there.
const ARENA_EAGER_COMMIT: c_int = 4;
const PURGE_DELAY: c_int = 15;

extern "C" {
    fn mi_option_set_default(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}

use libmimalloc_sys::{mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned};
use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};

/// Lazy arena commit and a 100 ms purge delay; runs from `.init_array` before `main` (and
/// before mimalloc's own initialisation, which reads the environment).
pub extern "C" fn set_defaults() {
    // SAFETY: sets two entries of mimalloc's static option table; called once, before any
    // other thread exists.
    unsafe {
        mi_option_set_default(ARENA_EAGER_COMMIT, 0);
        mi_option_set_default(PURGE_DELAY, 100);
    }
    IN_USE.store(true, Ordering::Relaxed);
}

/// Purges the free pages of every arena and returns the calling thread's free pages, its
/// full ones included. mimalloc purges only when it is called, so an idle process after a
/// spike would keep them; the memory trimming service calls this every few seconds, and each
/// relay thread a second after tunnels closed there
/// (`pingora_proxy::tunnel::set_after_closes`). Forced: a plain collect purges only some
/// arenas and skips full pages, and a relay thread's full pages are those whose blocks other
/// threads freed (the tasks that ran its tunnels' close callbacks). Does nothing on another
/// allocator.
pub(crate) fn collect() {
    if IN_USE.load(Ordering::Relaxed) {
        // SAFETY: thread-safe; collects the calling thread's heap and the shared arenas.
        unsafe { mi_collect(true) };
    }
}

/// Makes mimalloc the binary's global allocator, with [`set_defaults`] run before anything
/// allocates. In the binary rather than the library, so that programs built on the library
/// keep their own allocator choice.
#[macro_export]
macro_rules! use_mimalloc {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::alloc::MiMalloc = $crate::alloc::MiMalloc;

        // A prioritised constructor runs before the unprioritised ones, mimalloc's included.
        #[used]
        #[link_section = ".init_array.00099"]
        static MIMALLOC_DEFAULTS: extern "C" fn() = $crate::alloc::set_defaults;
    };
}

/// mimalloc as the global allocator, calling its plain functions whenever the block they
/// return is aligned enough, as Rust's own `System` allocator does with `malloc`.
///
/// The `mimalloc` crate's allocator sends every allocation to `mi_malloc_aligned`. In
/// mimalloc 3, that call takes its fast path only while the size class's page has a free
/// block at hand; otherwise a size whose block is not a power of two (40, 48, 80 bytes...)
/// goes to `mi_theap_malloc_zero_aligned_at_overalloc`, which allocates `size + align - 1`
/// from the next size class. The page of the size asked for is then never refilled, so every
/// later allocation of that size pays the slow path and a larger block: 15 of the 58
/// allocations of a proxied request did, at about 190 instructions each instead of 30.
///
/// A plain mimalloc block is always aligned to 8 (size classes are multiples of 8 and a
/// page's first block is 16-aligned), and to 16 when the size is a multiple of 16 (every size
/// class holding such a size is one). Larger alignments keep the aligned calls.
pub struct MiMalloc;

/// Whether `mi_malloc(size)` is aligned enough for `align` (see [`MiMalloc`]).
#[inline(always)]
fn plain_fits(size: usize, align: usize) -> bool {
    align <= 8 || (align == 16 && size.is_multiple_of(16))
}

// SAFETY: every block comes from mimalloc and goes back to `mi_free`, which takes blocks from
// both the plain and the aligned calls; `plain_fits` only picks the plain ones when their
// alignment satisfies the layout's (checked by `plain_blocks_are_aligned_enough`).
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain_fits(layout.size(), layout.align()) {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain_fits(layout.size(), layout.align()) {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain_fits(new_size, layout.align()) {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alignment `plain_fits` relies on, for every size up to past mimalloc's small and
    /// medium classes, several blocks of each (a fresh page and the ones after it).
    #[test]
    fn plain_blocks_are_aligned_enough() {
        let mut blocks = Vec::new();
        let mut size = 1;
        while size <= 300_000 {
            for align in [1, 2, 4, 8, 16] {
                if !plain_fits(size, align) {
                    continue;
                }
                let layout = Layout::from_size_align(size, align).unwrap();
                for _ in 0..3 {
                    // SAFETY: a non-zero size; every block is freed below.
                    let p = unsafe { MiMalloc.alloc(layout) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    blocks.push((p, layout));
                }
            }
            size += if size < 2048 { 1 } else { size / 64 };
        }
        // The same through realloc and alloc_zeroed.
        let layout = Layout::from_size_align(16, 16).unwrap();
        // SAFETY: as above.
        unsafe {
            let z = MiMalloc.alloc_zeroed(layout);
            assert_eq!(z as usize % 16, 0);
            let r = MiMalloc.realloc(z, layout, 48);
            assert_eq!(r as usize % 16, 0);
            MiMalloc.dealloc(r, Layout::from_size_align(48, 16).unwrap());
            for (p, layout) in blocks {
                MiMalloc.dealloc(p, layout);
            }
        }
    }

    /// Alignments the plain calls do not give still come out aligned.
    #[test]
    fn larger_alignments_take_the_aligned_calls() {
        for (size, align) in [(24, 16), (8, 16), (64, 64), (100, 32), (4096, 4096)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            assert!(!plain_fits(size, align) || align <= 8);
            // SAFETY: a non-zero size; freed at once.
            unsafe {
                let p = MiMalloc.alloc(layout);
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                MiMalloc.dealloc(p, layout);
            }
        }
    }
}

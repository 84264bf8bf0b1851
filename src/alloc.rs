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

use std::os::raw::{c_int, c_long};
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

/// Purges the pages freed more than the purge delay ago, in every arena. mimalloc purges
/// only when it is called, so an idle process after a spike would keep them; the memory
/// trimming service calls this every few seconds. Does nothing on another allocator.
pub(crate) fn collect() {
    if IN_USE.load(Ordering::Relaxed) {
        // SAFETY: thread-safe; collects the calling thread's heap and the shared arenas.
        unsafe { mi_collect(false) };
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

pub use mimalloc::MiMalloc;

//! Gives freed heap memory back to the operating system after a connection spike.
//!
//! glibc keeps freed memory in its arenas: after 5,000 WebSockets (or 20,000 connections) have
//! come and gone, the process would stay at its peak RSS for good. A background service checks
//! the arenas' free bytes every few seconds and, when they are large, calls `malloc_trim`,
//! which returns every whole free page (not only the top of the heap). The check is cheap and
//! the trim runs only after memory was freed, so a steady load never pays for it. Being a
//! Pingora service, it runs in the daemon after the fork and stops with the server.

use std::time::Duration;

/// How often the free bytes are checked.
const INTERVAL: Duration = Duration::from_secs(5);
/// Free heap bytes (and RSS growth since the last trim) above which a trim runs.
const THRESHOLD: usize = 1 << 20;

/// The trimming loop.
pub(crate) struct MemTrim;

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for MemTrim {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        // glibc keeps counting returned pages as free, so "much free memory" alone would trim
        // every time. Trim when memory was freed since (free bytes rose well above their low)
        // or pages were touched again since (RSS rose well above its level after the trim).
        let (mut rss_after_trim, mut min_free) = (0, usize::MAX);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            crate::alloc::collect();
            let free = heap_free();
            min_free = min_free.min(free);
            let rss = rss_bytes();
            if free >= THRESHOLD
                && (free - min_free >= THRESHOLD || rss >= rss_after_trim + THRESHOLD)
            {
                trim();
                rss_after_trim = rss_bytes();
                min_free = heap_free();
                log::debug!(
                    "heap trimmed: RSS {} -> {} KiB",
                    rss >> 10,
                    rss_after_trim >> 10
                );
            }
        }
    }
}

/// Resident set size of this process.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * page_size())
}

/// The page size `statm` counts in.
fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Bytes in the allocator's free lists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_free() -> usize {
    // SAFETY: a thread-safe glibc call without arguments.
    unsafe { libc::mallinfo2() }.fordblks
}

/// Returns every whole free page of every arena to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: a thread-safe glibc call without pointer arguments.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_free() -> usize {
    0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

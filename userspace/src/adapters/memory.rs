//! Giving the heap's free pages back to the kernel, so the daemon's memory
//! follows what it holds rather than the most it ever needed at once.
//!
//! glibc's allocator keeps freed memory in its arenas (one per thread that
//! allocated) and returns it only from the top of the main heap. The
//! daemon's peaks are short: loading the datapath parses the kernel's BTF
//! (about 17 MiB at the peak), a request publishing 1 000 ports or listing
//! them builds its rows; afterwards 2–3 MiB stay in use but the arenas kept
//! twice that resident. `malloc_trim(0)` hands back every free page of
//! every arena. It walks the free lists (well under a millisecond for
//! the daemon's heap), so [`Trimmer`] runs it once things have been quiet
//! for a moment, never inside a request.
use std::{sync::Arc, time::Duration};

use futures_util::FutureExt as _;
use tokio::sync::Notify;

/// Returns the allocator's free pages to the kernel (glibc; elsewhere
/// nothing to do).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free
    // lists under its locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long after the last poke a trim runs.
pub const TRIM_DELAY: Duration = Duration::from_secs(1);

/// Trims the heap [`TRIM_DELAY`] after work that allocated; pokes during
/// that time are folded into the same trim, so a stream of requests costs
/// one trim per delay at most.
#[derive(Clone, Default)]
pub struct Trimmer {
    poked: Arc<Notify>,
}

impl Trimmer {
    /// Something allocated and freed a lot (a request was answered).
    pub fn poke(&self) {
        // One stored permit: pokes while a trim is pending add nothing.
        self.poked.notify_one();
    }

    /// Runs until the task is aborted.
    pub async fn run(self) {
        self.run_with(TRIM_DELAY, release_free_memory).await;
    }

    async fn run_with(self, delay: Duration, trim: fn()) {
        loop {
            self.poked.notified().await;
            tokio::time::sleep(delay).await;
            // This trim covers the pokes that came while it waited.
            let _ = self.poked.notified().now_or_never();
            // Off the async workers: it takes the allocator's locks.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident anonymous memory of this process, in KiB.
    fn rss_anon_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn a_trim_returns_what_a_burst_of_small_allocations_left_resident() {
        // Many small blocks (below the mmap threshold, so they come from an
        // arena), touched, then all freed but the last, which pins the top
        // of the heap so glibc's own trimming cannot give anything back.
        // Other tests run on other threads (other arenas), so the measure
        // is this thread's burst against their noise: 64 MiB vs a few.
        let blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| vec![1u8; 4096]).collect();
        let pin = vec![1u8; 4096];
        drop(blocks);
        let before = rss_anon_kib();
        release_free_memory();
        let after = rss_anon_kib();
        drop(pin);
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "RssAnon {before} KiB before the trim, {after} KiB after"
        );
    }

    #[tokio::test]
    async fn pokes_within_the_delay_fold_into_one_trim() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static TRIMS: AtomicUsize = AtomicUsize::new(0);
        fn count() {
            TRIMS.fetch_add(1, Ordering::SeqCst);
        }
        let delay = Duration::from_millis(100);
        let t = Trimmer::default();
        let task = tokio::spawn(t.clone().run_with(delay, count));
        tokio::time::sleep(delay * 3).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0, "a trim without a poke");
        for _ in 0..3 {
            t.poke();
            tokio::time::sleep(delay / 5).await;
        }
        tokio::time::sleep(delay * 3).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "three pokes in one delay");
        t.poke();
        tokio::time::sleep(delay * 3).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 2, "a later poke trims again");
        task.abort();
    }
}

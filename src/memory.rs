//! Handing freed memory back to the operating system after a reload, and
//! after many idle connections have released their HTTP buffers.
//!
//! Parsing and compiling a large snapshot allocates several times its size
//! on a blocking thread, and the compiled set it keeps is interleaved with
//! the parse tree it frees. glibc keeps such freed pages in the thread's
//! arena, and each reload may run on another thread with another arena, so
//! resident memory ratchets up: measured with the 75 MB generated large
//! snapshot, 1.3 GB after the first load and 2.5 GB after the second
//! reload, 180 MB after `malloc_trim(0)`. Trimming once after each reload
//! (on a blocking thread; it takes milliseconds) keeps the proxy at its
//! working size.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Idle connections that released their HTTP buffers since the last trim.
static RELEASES: AtomicUsize = AtomicUsize::new(0);

/// Released connections (about 16 KiB each) worth a trim: 4 MiB.
pub const RELEASES_PER_TRIM: usize = 256;

/// An idle connection released its HTTP buffers.
///
/// The allocator keeps what they free, so after a burst of connections
/// goes idle the process would stay at the burst's size. Counted here;
/// [`trim_after_releases`] hands the memory back.
pub fn note_release() {
    RELEASES.fetch_add(1, Ordering::Relaxed);
}

/// Whether enough connections released since the last call to be worth a
/// trim; resets the count when it says yes.
pub fn trim_due() -> bool {
    RELEASES
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n >= RELEASES_PER_TRIM).then_some(0)
        })
        .is_ok()
}

/// Every `every`, trims (on a blocking thread) if [`trim_due`]: at most
/// once a period, and never while connections are busy rather than idle.
pub async fn trim_after_releases(every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if trim_due() {
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    }
}

/// Blocks at least this large are mappings of their own (glibc's default).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes glibc's mmap threshold at its default, once, before the runtime
/// starts. A no-op where the allocator is not glibc's.
///
/// By default glibc raises the threshold to the size of each mapped block
/// freed (up to 32 MiB), and its trim threshold to twice that. A reload
/// frees blocks of tens of MiB (the document, the lists of its entries),
/// so the next reload's blocks of that size come from the reload
/// thread's arena instead; and [`release_free_memory`] cannot return the
/// free top of an arena other than the main one (`malloc_trim` trims only
/// the main arena's top), so each reload thread's arena kept its last
/// large block: the large snapshot re-applied settled 28 MiB higher every
/// few reloads (141 → 196 MiB over six). With the threshold fixed, a large
/// block is unmapped when freed and settled RSS stays flat (135 MiB).
/// Nothing on the request path allocates 128 KiB at once, so it sees the
/// thresholds it always had.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn fix_allocator_thresholds() {
    // SAFETY: `mallopt` has no preconditions; it sets a tunable under the
    // allocator's lock. It fails (returns 0) only for a value above
    // HEAP_MAX_SIZE / 2 (32 MiB on 64-bit), which this constant is not;
    // nothing would be lost but the fix.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_allocator_thresholds() {}

/// Returns free heap pages of every arena to the OS. A no-op where the
/// allocator is not glibc's.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: `malloc_trim` has no preconditions: it only advises the
    // kernel about pages that are free in the allocator's own lists, and
    // is thread-safe (it takes each arena's lock).
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// Runs `f` on a thread of its own (inline if no thread can be started),
/// so that glibc gives what it allocates another arena than the caller's.
///
/// What a reload keeps (the compiled set, the etcd entries' indexes) is
/// then not interleaved with what it frees (the document, its model, the
/// values read from etcd): freeing those frees whole pages, which
/// [`release_free_memory`] returns, instead of leaving holes between
/// long-lived allocations. Measured with the large snapshot
/// (`benches/reload.sh`), the file source's settled size went from 218 to
/// 132 MiB.
pub fn on_own_thread<T: Send>(f: impl Fn() -> T + Sync) -> T {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("portcullis-compile".into())
            .spawn_scoped(scope, &f);
        match spawned {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to be had: run it here (it has not run).
            Err(_) => f(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::on_own_thread;

    #[test]
    fn work_runs_on_another_thread_and_its_panic_comes_back() {
        let here = std::thread::current().id();
        let there = on_own_thread(|| std::thread::current().id());
        assert_ne!(here, there);
        let caught = std::panic::catch_unwind(|| on_own_thread(|| panic!("compile failed")));
        assert!(caught.is_err());
    }

    #[test]
    fn a_trim_is_due_after_enough_releases_and_once() {
        // Other tests in this process may release connections too; only
        // what this test adds after a reset is relied on.
        let _ = super::trim_due();
        for _ in 0..super::RELEASES_PER_TRIM {
            super::note_release();
        }
        assert!(super::trim_due());
        assert!(!super::trim_due());
    }

    #[test]
    fn trimming_is_safe_to_call_at_any_time() {
        let big: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(big);
        super::release_free_memory();
        super::release_free_memory();
    }
}

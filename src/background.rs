//! Reload work off the request path: parsing and compiling snapshots,
//! applying etcd batches, building the saved state, and freeing replaced
//! snapshots run on threads the kernel schedules only when the request
//! workers do not want the core (`SCHED_IDLE` on Linux).
//!
//! Why: a change compiled over the set in force is 20–30 ms of one core at
//! the large scale, and a replaced set takes a few more milliseconds to
//! free. At normal priority that work shares a core with a request worker,
//! and the kernel lets it finish its time slice (about 3 ms) before a
//! worker woken by a request gets the core back: open-loop p99 rose by
//! 2.4–2.8 ms while ten changes a second arrived (`benches/etcd.sh`). A
//! worker that wakes preempts an idle-priority thread at once; measured
//! the same way, the rise was 0.4–0.8 ms.
//!
//! The price: while every core is busy with requests, reload work waits for
//! idle time, so a change takes longer to be in force on a saturated proxy.
//! Threads inherit the policy of the thread that starts them, so the
//! threads `memory::on_own_thread` starts for a compile are background
//! threads too. Heap trims are the exception ([`trim`]): they take locks
//! the request workers need. (The one trim left on a background thread
//! follows a whole etcd read: at start-up, after a compaction, or after an
//! internal error made the follower read again. Only the thread that
//! freed the read gets its pages back; see `reload::etcd`.)
//! The work gets threads of its own rather than tokio's blocking pool,
//! whose threads are reused for other work: leaving `SCHED_IDLE` again is
//! allowed only within `RLIMIT_NICE`, which is 0 by default.

use std::sync::atomic::{AtomicBool, Ordering};

/// Why background work gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("the background thread panicked")]
    Panicked,
}

/// Runs `f` on a background thread of its own and waits for its result.
/// Without a thread to be had (the process is out of threads) it runs on
/// tokio's blocking pool at normal priority instead.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackgroundError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The caller's runtime, entered on the thread: what the work drops can
    // still hand its disposal to the runtime ([`dispose`]).
    let runtime = tokio::runtime::Handle::try_current().ok();
    let job = move || {
        let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
        // When the receiver is already gone (its request was cancelled),
        // the result is dropped here, off the workers. (One that arrives
        // just before the receiver is dropped is dropped by the receiver's
        // owner.)
        let _ = tx.send(f());
    };
    if let Err(job) = spawn_thread(job) {
        let _ = tokio::task::spawn_blocking(job).await;
    }
    rx.await.map_err(|_| BackgroundError::Panicked)
}

/// Drops `value` (a replaced set, a parsed model) on a background thread,
/// then returns free heap pages to the OS ([`trim`]).
pub fn dispose<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(async move {
            let _ = run(move || drop(value)).await;
            trim().await;
        })),
        Err(_) => {
            drop(value);
            crate::memory::release_free_memory();
        }
    }
}

/// Returns free heap pages to the OS, at normal priority on tokio's
/// blocking pool rather than here: `malloc_trim` holds each arena's lock in
/// turn, the request workers' arenas included, and an idle-priority thread
/// preempted while holding one would keep a worker waiting for as long as
/// any other thread wants the core.
pub async fn trim() {
    let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
}

/// Starts a background thread for `job`, or gives the job back.
fn spawn_thread<F: FnOnce() + Send + 'static>(job: F) -> Result<(), F> {
    // The job is handed over once the thread runs, so a thread that could
    // not start leaves it with the caller.
    let (tx, rx) = std::sync::mpsc::sync_channel::<F>(1);
    let started = std::thread::Builder::new()
        .name("portcullis-reload".into())
        .spawn(move || {
            lower_current_thread();
            if let Ok(job) = rx.recv() {
                job();
            }
        });
    match started {
        Ok(_) => tx.send(job).map_err(|back| back.0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a background thread; running reload work at normal priority");
            Err(job)
        }
    }
}

/// Whether a failure to lower a thread's priority was logged already.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Puts the calling thread in the idle scheduling class. Failure (a
/// seccomp profile that forbids it) is logged once; the work then runs
/// at normal priority.
pub fn lower_current_thread() {
    if let Err(e) = set_idle_policy()
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "cannot lower the priority of reload threads; reload work competes with requests for CPU");
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_idle_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads the `sched_param` it is given,
    // which lives across the call; pid 0 is the calling thread (Linux
    // schedules threads, not processes), and SCHED_IDLE with priority 0
    // needs no privilege.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_idle_policy() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy, from procfs (5 is
    /// SCHED_IDLE, 0 SCHED_OTHER).
    fn policy() -> Option<u32> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("policy"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    #[tokio::test]
    async fn work_runs_at_idle_priority_and_its_result_comes_back() {
        let before = policy();
        let (answer, during) = run(|| (6 * 7, policy())).await.expect("ran");
        assert_eq!(answer, 42);
        if cfg!(target_os = "linux") && before.is_some() {
            assert_eq!(during, Some(5), "SCHED_IDLE on the background thread");
            // The caller is untouched.
            assert_eq!(policy(), before);
        }
    }

    /// What the work drops can hand its disposal to the runtime.
    #[tokio::test]
    async fn the_work_runs_inside_the_callers_runtime() {
        let inside = run(|| tokio::runtime::Handle::try_current().is_ok()).await;
        assert!(inside.expect("ran"));
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_hang() {
        let r: Result<(), _> = run(|| panic!("boom")).await;
        assert!(matches!(r, Err(BackgroundError::Panicked)));
    }

    /// Sends the policy of the thread that drops it.
    struct Probe(std::sync::mpsc::Sender<Option<u32>>);

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self.0.send(policy());
        }
    }

    #[tokio::test]
    async fn a_disposed_value_is_dropped_on_a_background_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        dispose(Probe(tx));
        let during = tokio::task::spawn_blocking(move || {
            rx.recv_timeout(std::time::Duration::from_secs(10))
        })
        .await
        .expect("joined")
        .expect("dropped");
        if cfg!(target_os = "linux") && during.is_some() {
            assert_eq!(during, Some(5));
        }
    }
}

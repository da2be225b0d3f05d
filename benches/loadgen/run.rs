//! The three ways to drive load, each stopping by itself:
//!
//! - **closed**: every connection (or HTTP/2 stream) sends its next request
//!   as soon as the previous answer is in, until `--duration` is up. Measures
//!   the most the server can do.
//! - **open**: requests are scheduled at a fixed `--rate` regardless of how
//!   fast answers come, and each latency is counted from the request's
//!   intended send time (so a stalled server shows in the percentiles instead
//!   of silently slowing the generator down: no coordinated omission).
//!   Requests still unsent when the run ends count as `not_sent` errors with
//!   the time they had waited.
//! - **idle**: opens `--connections` connections (PROXY, TLS, one request
//!   each), holds them for `--duration`, then reports how many survived and
//!   how much the server's resident memory grew per connection.
//!
//! Closed and open runs first open all their connections (not timed), so
//! the measured window is steady state; with `--requests-per-connection 1`
//! every request then pays for a new connection inside the window.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis_test_kit::synth::Rng;
use tokio::sync::{Mutex, MutexGuard, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::client::{self, Conn, Failure, H2Handle, Response, Settings};
use crate::proxy_header::Sources;
use crate::stats::{self, ProcSample, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Closed,
    Open,
    Idle,
}

pub struct Plan {
    pub mode: Mode,
    pub connections: usize,
    /// Concurrent HTTP/2 streams per connection (1 for HTTP/1.1).
    pub streams: usize,
    /// Open loop: requests per second.
    pub rate: f64,
    pub duration: Duration,
    /// 0: keep connections open; n: open a new one after n requests.
    pub requests_per_connection: u64,
    /// Where the client identities' random picks start.
    pub seed: u64,
    /// Server processes whose CPU time and RSS are sampled (summed).
    pub measure_pids: Vec<u32>,
    // The ramp that opens the connections (before the window; in idle
    // mode, it is the window).
    pub connect_concurrency: usize,
    /// Idle: the longest the connection ramp may take.
    pub ramp_timeout: Duration,
    /// Idle: written (with the number established) once all are open.
    pub ready_file: Option<PathBuf>,
}

/// Server-side cost, from `/proc`, over the measured window.
#[derive(Debug, Clone, Copy)]
pub struct ServerCost {
    pub before: ProcSample,
    pub after: ProcSample,
}

/// In the order they were taken: server RSS before the ramp, the
/// connections the ramp established, server RSS once all were open (after
/// a 1 s settle), those still open at the end of the hold, and server RSS
/// then.
pub struct IdleOutcome {
    pub rss_before_kib: Option<u64>,
    pub established: u64,
    pub rss_held_kib: Option<u64>,
    pub held_at_end: u64,
    pub rss_end_kib: Option<u64>,
}

/// What only one mode measures: one enum rather than an `Option` a mode,
/// so no outcome can carry another mode's figures.
pub enum ModeOutcome {
    Closed,
    /// The requests scheduled, sent or not.
    Open {
        scheduled: u64,
    },
    Idle(IdleOutcome),
}

pub struct Outcome {
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Connections opened inside the window.
    pub connections_opened: u64,
    pub server: Option<ServerCost>,
    pub mode: ModeOutcome,
    /// Problems reading `/proc` (the run itself went on).
    pub warnings: Vec<String>,
}

impl Outcome {
    /// Open loop: the requests scheduled (`None` in the other modes).
    pub fn scheduled(&self) -> Option<u64> {
        match self.mode {
            ModeOutcome::Open { scheduled } => Some(scheduled),
            _ => None,
        }
    }

    pub fn idle(&self) -> Option<&IdleOutcome> {
        match &self.mode {
            ModeOutcome::Idle(idle) => Some(idle),
            _ => None,
        }
    }
}

struct Run {
    settings: Settings,
    sources: Sources,
    stats: Arc<Stats>,
    serial: AtomicU64,
    requests_per_connection: u64,
}

type Slot = Mutex<Option<Conn>>;

/// The right to send one request: an HTTP/1.1 connection held exclusively,
/// or a handle onto a shared HTTP/2 connection.
enum Lease<'a> {
    H1 {
        guard: MutexGuard<'a, Option<Conn>>,
        last: bool,
    },
    H2(H2Handle),
}

impl Lease<'_> {
    async fn send(self, settings: &Settings) -> Result<Response, Failure> {
        match self {
            Lease::H1 { mut guard, last } => {
                let Some(conn) = guard.as_mut() else {
                    return Err(Failure::Closed);
                };
                let result = conn.request(settings, last).await;
                if result.is_err() || last {
                    *guard = None;
                }
                result
            }
            Lease::H2(handle) => handle.request(settings).await,
        }
    }
}

impl Run {
    async fn open(&self, rng: &mut Rng) -> Result<Conn, Failure> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let client = self.sources.pick(rng, serial);
        let started = Instant::now();
        let conn = client::connect(&self.settings, &client).await?;
        self.stats
            .connected(started.elapsed(), conn.negotiated.as_deref());
        Ok(conn)
    }

    /// Makes sure `slot` holds a usable connection (opening or replacing
    /// it as needed) and leases it for one request.
    async fn lease<'a>(&self, slot: &'a Slot, rng: &mut Rng) -> Result<Lease<'a>, Failure> {
        let rpc = self.requests_per_connection;
        let mut guard = slot.lock().await;
        let fresh = match guard.as_ref() {
            None => true,
            Some(c) if c.is_closed() => {
                self.stats.reconnect();
                true
            }
            Some(c) => rpc > 0 && c.requests >= rpc,
        };
        if fresh {
            *guard = None;
            *guard = Some(self.open(rng).await?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(Failure::Closed);
        };
        conn.requests += 1;
        let last = rpc > 0 && conn.requests >= rpc;
        match conn.h2_handle() {
            Some(handle) => Ok(Lease::H2(handle)),
            None => Ok(Lease::H1 { guard, last }),
        }
    }
}

fn worker_rng(seed: u64, i: usize) -> Rng {
    Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// After a failure, wait a little (never past `deadline`) so a dead server
/// does not turn the generator into a busy loop.
async fn back_off(deadline: Instant) {
    sleep_until(deadline.min(Instant::now() + Duration::from_millis(10))).await;
}

pub async fn execute(
    plan: Plan,
    settings: Settings,
    sources: Sources,
    stats: Arc<Stats>,
) -> Outcome {
    let run = Arc::new(Run {
        settings,
        sources,
        stats,
        serial: AtomicU64::new(0),
        requests_per_connection: plan.requests_per_connection,
    });
    match plan.mode {
        Mode::Closed | Mode::Open => load(&run, &plan).await,
        Mode::Idle => idle(&run, &plan).await,
    }
}

fn sample(pids: &[u32], warnings: &mut Vec<String>) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    match stats::sample(pids) {
        Ok(s) => Some(s),
        Err(e) => {
            warnings.push(e);
            None
        }
    }
}

/// Opens `plan.connections` connections, `connect_concurrency` at a time;
/// failed ones are `None`. With `one_request`, each also sends a request
/// (idle mode).
async fn ramp(run: &Arc<Run>, plan: &Plan, one_request: bool) -> Vec<Option<Conn>> {
    let permits = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let deadline = Instant::now() + plan.ramp_timeout;
    let seed = plan.seed ^ RAMP_SALT;
    let mut tasks = JoinSet::new();
    for i in 0..plan.connections {
        let run = run.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return None;
            };
            if Instant::now() >= deadline {
                run.stats.failure(Failure::Timeout);
                return None;
            }
            let mut rng = worker_rng(seed, i);
            let mut conn = match run.open(&mut rng).await {
                Ok(c) => c,
                Err(f) => {
                    run.stats.failure(f);
                    return None;
                }
            };
            if one_request {
                conn.requests += 1;
                let sent = Instant::now();
                match conn.request(&run.settings, false).await {
                    Ok(r) => {
                        let took = sent.elapsed();
                        run.stats.response(r.status, r.body_bytes, took, took);
                    }
                    Err(f) => {
                        run.stats.failure(f);
                        return None;
                    }
                }
            }
            Some(conn)
        });
    }
    let mut conns = Vec::with_capacity(plan.connections);
    let overall = deadline + plan_slack(run);
    while let Ok(Some(joined)) = tokio::time::timeout_at(overall, tasks.join_next()).await {
        conns.push(joined.ok().flatten());
    }
    // Whatever did not finish in time is dropped and counted.
    let unfinished = tasks.len();
    tasks.abort_all();
    for _ in 0..unfinished {
        run.stats.failure(Failure::Timeout);
    }
    conns
}

/// Keeps ramp identities apart from the workers' (both derive from --seed).
const RAMP_SALT: u64 = 0x5EED_0000_0000;

/// Longest one connection + request can take past a deadline.
fn plan_slack(run: &Run) -> Duration {
    run.settings.timeout * 6 + Duration::from_secs(1)
}

async fn load(run: &Arc<Run>, plan: &Plan) -> Outcome {
    let mut warnings = Vec::new();
    let mut conns = ramp(run, plan, false).await;
    // Slots whose connection failed stay empty; workers retry them.
    conns.resize_with(plan.connections, || None);
    let slots: Vec<Arc<Slot>> = conns.into_iter().map(|c| Arc::new(Mutex::new(c))).collect();
    let connects_before = run.stats.lock().connect.len();
    let before = sample(&plan.measure_pids, &mut warnings);
    let start = Instant::now();
    let deadline = start + plan.duration;
    let hard_stop = deadline + plan_slack(run);

    let mut tasks = JoinSet::new();
    let mode = if plan.mode == Mode::Closed {
        for (i, slot) in slots.iter().enumerate() {
            for s in 0..plan.streams {
                let run = run.clone();
                let slot = slot.clone();
                let rng = worker_rng(plan.seed, i * plan.streams + s);
                tasks.spawn(closed_worker(run, slot, rng, deadline));
            }
        }
        ModeOutcome::Closed
    } else {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(rx));
        for (i, slot) in slots.iter().enumerate() {
            for s in 0..plan.streams {
                let worker = OpenWorker {
                    run: run.clone(),
                    slot: slot.clone(),
                    rng: worker_rng(plan.seed, i * plan.streams + s),
                    queue: queue.clone(),
                    hard_stop,
                };
                tasks.spawn(worker.run());
            }
        }
        let (rate, duration) = (plan.rate, plan.duration);
        let dispatcher =
            tokio::task::spawn_blocking(move || dispatch(tx, start, rate, duration)).await;
        // Only a bug could make the dispatcher panic; the report then
        // shows 0 scheduled rather than a made-up number.
        let total = dispatcher.unwrap_or(0);
        join_until(&mut tasks, hard_stop + Duration::from_secs(1)).await;
        let end = Instant::now();
        let mut rx = queue.lock().await;
        // Bounded: the channel holds at most `total` entries.
        while let Ok(intended) = rx.try_recv() {
            run.stats.unanswered(
                Failure::NotSent,
                Some(end.saturating_duration_since(intended)),
            );
        }
        ModeOutcome::Open { scheduled: total }
    };
    join_until(&mut tasks, hard_stop + Duration::from_secs(1)).await;
    let elapsed = start.elapsed();
    let after = sample(&plan.measure_pids, &mut warnings);
    let connections_opened = run.stats.lock().connect.len() - connects_before;
    drop(slots);
    Outcome {
        elapsed,
        connections_opened,
        server: before
            .zip(after)
            .map(|(before, after)| ServerCost { before, after }),
        mode,
        warnings,
    }
}

/// Waits for all tasks, aborting any still running at `limit`.
async fn join_until(tasks: &mut JoinSet<()>, limit: Instant) {
    while let Ok(Some(_)) = tokio::time::timeout_at(limit, tasks.join_next()).await {}
    tasks.abort_all();
}

async fn closed_worker(run: Arc<Run>, slot: Arc<Slot>, mut rng: Rng, deadline: Instant) {
    while Instant::now() < deadline {
        let lease = match run.lease(&slot, &mut rng).await {
            Ok(l) => l,
            Err(f) => {
                run.stats.failure(f);
                back_off(deadline).await;
                continue;
            }
        };
        let sent = Instant::now();
        match lease.send(&run.settings).await {
            Ok(r) => {
                let took = sent.elapsed();
                run.stats.response(r.status, r.body_bytes, took, took);
            }
            Err(f) => {
                run.stats.failure(f);
                back_off(deadline).await;
            }
        }
    }
}

/// Sends `rate × duration` intended send times, each at its time, from a
/// thread of its own: tokio's timers tick in whole milliseconds, which
/// would send requests in bursts and add up to a millisecond to every
/// latency counted from the intended time.
fn dispatch(
    tx: mpsc::UnboundedSender<Instant>,
    start: Instant,
    rate: f64,
    duration: Duration,
) -> u64 {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = 1e9 / rate;
    let start = start.into_std();
    let at = |i: u64| start + Duration::from_nanos((i as f64 * interval) as u64);
    let mut i = 0;
    while i < total {
        let now = std::time::Instant::now();
        // Send everything due (the thread may have slept too long).
        while i < total && at(i) <= now {
            if tx.send(Instant::from_std(at(i))).is_err() {
                return i;
            }
            i += 1;
        }
        if i < total {
            std::thread::sleep(at(i).saturating_duration_since(std::time::Instant::now()));
        }
    }
    total
}

struct OpenWorker {
    run: Arc<Run>,
    slot: Arc<Slot>,
    rng: Rng,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    hard_stop: Instant,
}

impl OpenWorker {
    async fn run(mut self) {
        loop {
            let next = {
                let mut rx = self.queue.lock().await;
                tokio::select! {
                    v = rx.recv() => v,
                    () = sleep_until(self.hard_stop) => None,
                }
            };
            let Some(intended) = next else { return };
            let lease = match self.run.lease(&self.slot, &mut self.rng).await {
                Ok(l) => l,
                Err(f) => {
                    self.run.stats.failure(f);
                    continue;
                }
            };
            let sent = Instant::now();
            match lease.send(&self.run.settings).await {
                Ok(r) => {
                    let now = Instant::now();
                    self.run
                        .stats
                        .response(r.status, r.body_bytes, now - intended, now - sent);
                }
                Err(f) => self.run.stats.failure(f),
            }
        }
    }
}

async fn idle(run: &Arc<Run>, plan: &Plan) -> Outcome {
    let mut warnings = Vec::new();
    let before = sample(&plan.measure_pids, &mut warnings);
    let start = Instant::now();
    let conns: Vec<Conn> = ramp(run, plan, true).await.into_iter().flatten().collect();
    let established = conns.len() as u64;
    let ramp_time = start.elapsed();
    let ramp_sample = sample(&plan.measure_pids, &mut warnings);
    // Let the server finish whatever the last handshakes left behind.
    sleep(Duration::from_secs(1)).await;
    let held = sample(&plan.measure_pids, &mut warnings);
    if let Some(path) = &plan.ready_file
        && let Err(e) = std::fs::write(path, format!("{established}\n"))
    {
        warnings.push(format!("{}: {e}", path.display()));
    }
    eprintln!(
        "idle: {established} of {} connections open after {:.1}s; holding for {:.1}s",
        plan.connections,
        ramp_time.as_secs_f64(),
        plan.duration.as_secs_f64()
    );
    sleep(plan.duration).await;
    let held_at_end = conns.iter().filter(|c| !c.is_closed()).count() as u64;
    let end = sample(&plan.measure_pids, &mut warnings);
    drop(conns);
    Outcome {
        // The ramp is the measured window: its CPU per connection is the
        // cost of a new connection plus one request.
        elapsed: ramp_time,
        connections_opened: established,
        server: before
            .zip(ramp_sample)
            .map(|(before, after)| ServerCost { before, after }),
        mode: ModeOutcome::Idle(IdleOutcome {
            rss_before_kib: before.map(|s| s.rss_kib),
            established,
            rss_held_kib: held.map(|s| s.rss_kib),
            held_at_end,
            rss_end_kib: end.map(|s| s.rss_kib),
        }),
        warnings,
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;

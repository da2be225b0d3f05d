//! The access log's batching writer: request workers append formatted lines
//! to a shared buffer; one background thread writes the buffer out in large
//! writes.
//!
//! Costs per line on the request path: formatting into a thread-local
//! scratch buffer, one uncontended mutex lock and a `memcpy`. The writer
//! thread is woken only when a batch is full (`batch_bytes`) or when the
//! first line after a quiet spell of a whole `flush_interval` arrives;
//! otherwise it sleeps until its `flush_interval` timer, so a busy proxy
//! wakes it once per batch rather than once per line (the cost that
//! dominated the old `tracing` path: a thread wake-up, and its context
//! switches, for every request).
//!
//! Memory is bounded: lines waiting to be written never exceed
//! `max_buffered_bytes`; past that (a stalled stdout consumer) new lines are
//! dropped and counted, and a request never waits for the log.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the writer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterSettings {
    /// Write once this many bytes are waiting.
    pub batch_bytes: usize,
    /// Write whatever is waiting at least this often.
    pub flush_interval: Duration,
    /// Lines waiting (including the batch being written) never exceed
    /// this; further lines are dropped and counted.
    pub max_buffered_bytes: usize,
}

/// Where lines go.
pub type Sink = Box<dyn Write + Send>;

/// Counts lines the writer had to drop.
pub trait DropCounter: Send + Sync {
    fn dropped(&self, lines: u64);
}

impl DropCounter for prometheus::IntCounter {
    fn dropped(&self, lines: u64) {
        self.inc_by(lines);
    }
}

/// The handle request workers append to. Cloning shares the writer.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here.
    wake: Condvar,
    /// `close` waits here for the thread's last write.
    done: Condvar,
    settings: WriterSettings,
    dropped: Box<dyn DropCounter>,
}

#[derive(Default)]
struct State {
    /// Lines appended since the last swap.
    filling: Vec<u8>,
    /// Bytes the writer thread took and is writing.
    writing: usize,
    /// The writer thread is asleep with nothing to write and wants to hear
    /// about the first line.
    idle: bool,
    closed: bool,
    finished: bool,
    /// Times a line woke the writer thread (what the tests check).
    #[cfg(test)]
    wakes: u64,
}

thread_local! {
    /// Where a worker formats its line before taking the lock.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Lines longer than this are not kept in the thread-local scratch buffer
/// afterwards (a client can make a line as long as its URI).
const SCRATCH_KEEP: usize = 4096;

impl Writer {
    /// Starts the writer thread.
    pub fn start(
        sink: Sink,
        settings: WriterSettings,
        dropped: Box<dyn DropCounter>,
    ) -> std::io::Result<(Self, WriterThread)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                filling: Vec::with_capacity(settings.batch_bytes),
                ..State::default()
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            settings,
            dropped,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || shared.run(sink))?
        };
        Ok((
            Self {
                shared: shared.clone(),
            },
            WriterThread {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Formats a line with `format` (which appends to the buffer it is
    /// given) and queues it. Never blocks on I/O.
    pub fn append(&self, format: impl FnOnce(&mut Vec<u8>)) {
        SCRATCH.with(|scratch| {
            // A re-entrant call (impossible today) would find the buffer
            // borrowed; it gets a fresh one rather than a panic.
            let mut own;
            let mut borrowed = scratch.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => {
                    own = Vec::new();
                    &mut own
                }
            };
            buf.clear();
            format(buf);
            self.shared.push(buf);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bytes behind; the
        // state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.closed
            || state.filling.len() + state.writing + line.len() > self.settings.max_buffered_bytes
        {
            drop(state);
            self.dropped.dropped(1);
            return;
        }
        state.filling.extend_from_slice(line);
        let wake = state.idle || state.filling.len() >= self.settings.batch_bytes;
        if wake {
            state.idle = false;
            #[cfg(test)]
            {
                state.wakes += 1;
            }
        }
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The writer thread: waits for a batch or the flush interval, swaps
    /// the buffer out, and writes it without holding the lock.
    fn run(&self, mut sink: Sink) {
        let interval = self.settings.flush_interval;
        let mut spare: Vec<u8> = Vec::with_capacity(self.settings.batch_bytes);
        let mut state = self.lock();
        loop {
            // Wait until a batch is full or an interval has passed. With
            // nothing waiting, the thread does not ask to hear of the first
            // line: a busy proxy fills the batch within the interval and
            // wakes it once, when it is full, instead of twice (first line,
            // then full batch; each wake-up two context switches on the
            // worker's core). Lines wait at most the interval (plus the
            // write under way when they came).
            state = self.wait_for_batch(state, Instant::now() + interval);
            if state.filling.is_empty() {
                if state.closed {
                    break;
                }
                // A whole interval without a line: sleep until the next
                // one, which then gets an interval of its own.
                state.idle = true;
                state = self
                    .wake
                    .wait_while(state, |s| s.filling.is_empty() && !s.closed)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            std::mem::swap(&mut state.filling, &mut spare);
            state.writing = spare.len();
            drop(state);
            if let Err(e) = sink.write_all(&spare).and_then(|()| sink.flush()) {
                // Nowhere better to say it than the operational log; the
                // lines are lost, and counted.
                let lines = spare.iter().filter(|&&b| b == b'\n').count() as u64;
                self.dropped.dropped(lines);
                tracing::warn!(error = %e, lines, "cannot write the access log");
            }
            spare.clear();
            // A burst may have grown the buffer far past a batch; give the
            // memory back rather than keep the peak forever.
            if spare.capacity() > 4 * self.settings.batch_bytes {
                spare = Vec::with_capacity(self.settings.batch_bytes);
            }
            state = self.lock();
            state.writing = 0;
        }
        state.finished = true;
        drop(state);
        self.done.notify_all();
    }

    /// Waits until a batch is full, the writer is closed or `deadline`.
    fn wait_for_batch<'s>(
        &'s self,
        mut state: MutexGuard<'s, State>,
        deadline: Instant,
    ) -> MutexGuard<'s, State> {
        while !state.closed && state.filling.len() < self.settings.batch_bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
    }
}

/// Owns the writer thread: [`WriterThread::close`] (or dropping it) writes
/// what is waiting and stops the thread.
pub struct WriterThread {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl WriterThread {
    /// Stops accepting lines, writes what is waiting, and waits at most
    /// `limit` for that (a stuck stdout must not hold up shutdown).
    pub fn close(&mut self, limit: Duration) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.wake.notify_one();
        let deadline = Instant::now() + limit;
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .shared
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(state);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.close(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A sink tests can read, counting its writes.
    #[derive(Clone, Default)]
    struct Memory {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
        /// While set, writes block (a stalled consumer).
        stall: Arc<Mutex<()>>,
    }

    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _stalled = self.stall.lock().unwrap();
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Default, Clone)]
    struct Count(Arc<AtomicU64>);

    impl DropCounter for Count {
        fn dropped(&self, lines: u64) {
            self.0.fetch_add(lines, Ordering::Relaxed);
        }
    }

    fn settings(batch: usize, flush: Duration, max: usize) -> WriterSettings {
        WriterSettings {
            batch_bytes: batch,
            flush_interval: flush,
            max_buffered_bytes: max,
        }
    }

    fn line(n: usize) -> impl FnOnce(&mut Vec<u8>) {
        move |out| {
            out.extend_from_slice(format!("line {n:05}\n").as_bytes());
        }
    }

    /// A writer into a fresh [`Memory`], with no interest in drops.
    fn start(settings: WriterSettings) -> (Memory, Writer, WriterThread) {
        let sink = Memory::default();
        let (w, thread) =
            Writer::start(Box::new(sink.clone()), settings, Box::new(Count::default())).unwrap();
        (sink, w, thread)
    }

    /// Waits (10 s at most) until `done` holds.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn lines_are_written_in_order_in_few_large_writes() {
        let sink = Memory::default();
        let dropped = Count::default();
        let (w, mut thread) = Writer::start(
            Box::new(sink.clone()),
            settings(1024, Duration::from_secs(60), 1 << 20),
            Box::new(dropped.clone()),
        )
        .unwrap();
        for n in 0..1000 {
            w.append(line(n));
        }
        thread.close(Duration::from_secs(10));
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|n| format!("line {n:05}\n")).collect();
        assert_eq!(text, expected);
        // 11 000 bytes in batches of 1 KiB or more (the writer takes all
        // that is waiting when it wakes), not 1000 writes.
        let writes = sink.writes.load(Ordering::Relaxed);
        assert!((1..=11).contains(&writes), "{writes} writes");
        assert_eq!(dropped.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_quiet_proxy_still_gets_its_lines_out_within_the_flush_interval() {
        let (sink, w, _thread) = start(settings(1 << 16, Duration::from_millis(20), 1 << 20));
        w.append(line(7));
        wait_until("line never written", || {
            !sink.bytes.lock().unwrap().is_empty()
        });
        assert_eq!(&*sink.bytes.lock().unwrap(), b"line 00007\n");
    }

    #[test]
    fn a_busy_stream_wakes_the_writer_once_a_batch() {
        let (sink, w, mut thread) = start(settings(1100, Duration::from_secs(60), 1 << 20));
        // Five batches of 100 lines (11 bytes each), each written out
        // before the next begins: the writer has nothing waiting between
        // them, yet only the full batch wakes it, never its first line.
        for batch in 0..5 {
            for n in 0..100 {
                w.append(line(batch * 100 + n));
            }
            let written = (batch + 1) * 1100;
            wait_until("batch never written", || {
                sink.bytes.lock().unwrap().len() >= written
            });
        }
        assert_eq!(w.shared.lock().wakes, 5);
        thread.close(Duration::from_secs(10));
        assert_eq!(sink.bytes.lock().unwrap().len(), 5500);
    }

    #[test]
    fn after_a_quiet_interval_the_first_line_wakes_the_writer() {
        let (sink, w, _thread) = start(settings(1 << 16, Duration::from_millis(20), 1 << 20));
        // Let the writer find a whole interval without a line and sleep.
        wait_until("the writer never went idle", || w.shared.lock().idle);
        w.append(line(3));
        wait_until("line never written", || {
            !sink.bytes.lock().unwrap().is_empty()
        });
        assert_eq!(&*sink.bytes.lock().unwrap(), b"line 00003\n");
        assert_eq!(w.shared.lock().wakes, 1);
    }

    #[test]
    fn a_stalled_consumer_costs_lines_not_memory_or_requests() {
        let sink = Memory::default();
        let dropped = Count::default();
        let stall = sink.stall.clone();
        let stalled = stall.lock().unwrap();
        let (w, mut thread) = Writer::start(
            Box::new(sink.clone()),
            settings(64, Duration::from_millis(1), 1100),
            Box::new(dropped.clone()),
        )
        .unwrap();
        // 11 bytes a line, 1100 bytes at most waiting: at most 100 lines
        // are kept, however long the consumer stalls.
        let started = Instant::now();
        for n in 0..1000 {
            w.append(line(n));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "appends blocked"
        );
        let lost = dropped.0.load(Ordering::Relaxed);
        assert!(lost >= 900, "only {lost} dropped");
        drop(stalled);
        thread.close(Duration::from_secs(10));
        let kept = sink.bytes.lock().unwrap().len() / 11;
        assert_eq!(kept as u64 + lost, 1000);
    }

    #[test]
    fn close_writes_what_is_waiting() {
        let (sink, w, mut thread) = start(settings(1 << 20, Duration::from_secs(3600), 1 << 20));
        w.append(line(1));
        w.append(line(2));
        thread.close(Duration::from_secs(10));
        assert_eq!(&*sink.bytes.lock().unwrap(), b"line 00001\nline 00002\n");
        // Lines after close are dropped, never written half-way.
        w.append(line(3));
        assert_eq!(sink.bytes.lock().unwrap().len(), 22);
    }
}

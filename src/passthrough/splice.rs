//! Stage: the last one of a remote-cluster connection. Splices bytes both
//! ways between the client and the backend node until one of: both sides
//! have closed, a side fails, nothing moved for the idle timeout, or the
//! caller's `stop` future resolves (revocation, shutdown).
//!
//! Guarantees:
//!
//! - Byte for byte: what is read from one side is written to the other,
//!   in order, starting with the bytes the caller already read (the
//!   ClientHello), which go to the backend first.
//! - Bounded memory: one buffer per direction, allocated once.
//! - Half-close: an EOF from one side is passed on as `shutdown(write)` to
//!   the other, and the opposite direction keeps flowing until it ends too
//!   (a peer that half-closes still receives the rest of the answer).
//! - Live accounting: the byte counters move as data is written, so a
//!   connection that lasts for days is visible while it lasts.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::metrics::End;

/// Byte counts of one spliced connection.
#[derive(Debug, Default)]
pub struct Progress {
    pub client_to_backend: AtomicU64,
    pub backend_to_client: AtomicU64,
    /// Milliseconds after the splice started of the last byte moved.
    last_ms: AtomicU64,
}

impl Progress {
    pub fn totals(&self) -> (u64, u64) {
        (
            self.client_to_backend.load(Ordering::Relaxed),
            self.backend_to_client.load(Ordering::Relaxed),
        )
    }
}

/// One direction's settings and accounting.
struct Direction<'a> {
    bytes: &'a AtomicU64,
    counter: &'a IntCounter,
    last_ms: &'a AtomicU64,
    epoch: Instant,
}

impl Direction<'_> {
    fn moved(&self, n: usize) {
        let n = n as u64;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.counter.inc_by(n);
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// Which side an I/O failure was on.
enum Failed {
    Read,
    Write,
}

/// Copies `r` to `w` until EOF, then shuts `w` down for writing.
/// `buf[..pending]` is written first.
async fn pump<R, W>(
    mut r: R,
    mut w: W,
    mut buf: Vec<u8>,
    mut pending: usize,
    dir: Direction<'_>,
) -> Result<(), Failed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if let Some(chunk) = buf.get(..pending).filter(|c| !c.is_empty()) {
            w.write_all(chunk).await.map_err(|_| Failed::Write)?;
            dir.moved(pending);
        }
        pending = r.read(&mut buf).await.map_err(|_| Failed::Read)?;
        if pending == 0 {
            // EOF: pass it on. A failure here means the other side is gone,
            // which the opposite direction will notice.
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
}

/// The splice's inputs.
pub struct Splice<'a> {
    /// Bytes already read from the client (the ClientHello) at the start
    /// of a buffer of at least `buffer_bytes`.
    pub first: Vec<u8>,
    pub buffer_bytes: usize,
    pub idle_timeout: Duration,
    pub progress: &'a Progress,
    pub client_to_backend: &'a IntCounter,
    pub backend_to_client: &'a IntCounter,
}

/// Splices `client` and `backend` until the connection ends; returns why.
/// `stop` ends it early with the [`End`] it yields.
pub async fn run(
    mut client: TcpStream,
    mut backend: TcpStream,
    s: Splice<'_>,
    stop: impl Future<Output = End>,
) -> End {
    let epoch = Instant::now();
    let (client_read, client_write) = client.split();
    let (backend_read, backend_write) = backend.split();
    let pending = s.first.len();
    let mut up_buf = s.first;
    up_buf.resize(pending.max(s.buffer_bytes), 0);
    let up = pump(
        client_read,
        backend_write,
        up_buf,
        pending,
        Direction {
            bytes: &s.progress.client_to_backend,
            counter: s.client_to_backend,
            last_ms: &s.progress.last_ms,
            epoch,
        },
    );
    let down = pump(
        backend_read,
        client_write,
        vec![0; s.buffer_bytes],
        0,
        Direction {
            bytes: &s.progress.backend_to_client,
            counter: s.backend_to_client,
            last_ms: &s.progress.last_ms,
            epoch,
        },
    );
    let (mut up, mut down) = (std::pin::pin!(up), std::pin::pin!(down));
    let mut stop = std::pin::pin!(stop);
    let mut idle = std::pin::pin!(tokio::time::sleep(s.idle_timeout));
    let (mut up_done, mut down_done) = (false, false);
    let mut first_close = None;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                match r {
                    Ok(()) => { first_close.get_or_insert(End::ClientClosed); }
                    Err(Failed::Read) => return End::ClientError,
                    Err(Failed::Write) => return End::BackendError,
                }
            }
            r = &mut down, if !down_done => {
                down_done = true;
                match r {
                    Ok(()) => { first_close.get_or_insert(End::BackendClosed); }
                    Err(Failed::Read) => return End::BackendError,
                    Err(Failed::Write) => return End::ClientError,
                }
            }
            () = &mut idle => {
                let last = Duration::from_millis(s.progress.last_ms.load(Ordering::Relaxed));
                let deadline = epoch + last + s.idle_timeout;
                if Instant::now() >= deadline {
                    return End::IdleTimeout;
                }
                idle.as_mut().reset(deadline);
            }
            end = &mut stop => return end,
        }
        if up_done && down_done {
            return first_close.unwrap_or(End::ClientClosed);
        }
    }
}

//! Connection activity: the two client timeouts that hyper cannot tell
//! apart, kept separately.
//!
//! - **Idle**: no request in flight and nothing received since the last
//!   response ended (or since the TLS handshake) for `idle_timeout`: the
//!   connection is closed politely (HTTP/1.1 close, HTTP/2 GOAWAY).
//! - **Request header** (HTTP/1.1): from the first byte of a request until
//!   its headers are complete, at most `request_header_timeout`; then the
//!   connection is dropped. This is what stops slowloris; hyper's own
//!   header timer also runs while the connection is idle, so it cannot be
//!   shorter than the idle timeout without closing idle connections early.
//!
//! - **Release** (HTTP/1.1): no request in flight and nothing received for
//!   `idle_release`: the connection frees its HTTP buffers and waits on
//!   the TLS stream alone (see `super::http1`).
//!
//! [`ActivityIo`] notes the first plaintext byte after an idle period;
//! [`RequestGuard`]s (one per request, released when the response body is
//! done) count requests in flight. The connection task asks
//! [`Activity::next_deadline`] when to look again.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::settings::Timeouts;

const UNSET: u64 = u64::MAX;

/// Release deadlines (and the look-agains of busy connections that may
/// release) are rounded up to this grid, shared by every connection:
/// connections that go idle within one interval are then released in one
/// timer tick. Timed one by one, each woke a worker thread of its own,
/// which cost more CPU than the release itself on connections that send
/// a request every second or so.
pub const RELEASE_GRID: Duration = Duration::from_millis(100);

/// `at`, rounded up to the next [`RELEASE_GRID`] point.
fn on_release_grid(at: Instant) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let grid = RELEASE_GRID.as_nanos();
    let slots = at
        .saturating_duration_since(origin)
        .as_nanos()
        .div_ceil(grid);
    origin + Duration::from_nanos(u64::try_from(slots * grid).unwrap_or(u64::MAX))
}

/// What expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle,
    RequestHeader,
    /// Idle for `Timeouts::idle_release`: time to free the HTTP buffers.
    Release,
}

#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// HTTP/1.1: reads after an idle period start the header clock.
    http1: bool,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` of the first byte of the request being
    /// read, or `UNSET`.
    header_since: AtomicU64,
}

impl Activity {
    pub fn new(http1: bool) -> Self {
        Self {
            epoch: Instant::now(),
            http1,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            header_since: AtomicU64::new(UNSET),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Plaintext bytes arrived.
    fn on_read(&self) {
        if self.http1
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.header_since.load(Ordering::Acquire) == UNSET
        {
            // The watchdog reads the deadline again after each poll of the
            // connection, which is where this runs.
            self.header_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A request's headers are complete; it is in flight until the guard
    /// is dropped (with the response body).
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.header_since.store(UNSET, Ordering::Release);
        RequestGuard(Some(self.clone()))
    }

    #[cfg(test)]
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When the watchdog should look next, and what would expire then.
    pub fn next_deadline(&self, t: Timeouts) -> (Instant, Option<Expired>) {
        // Nothing wakes the watchdog when a request ends, so while one is
        // in flight (or its header on its way) it looks again after a
        // while: an idle period, or, with buffers to release, a release
        // period, so that an idle connection releases them promptly. On
        // the grid either way: the watchdog reads this after every poll
        // of a busy connection, and a deadline that moved with the clock
        // would re-arm its timer every time.
        let look_again = || match t.idle_release {
            Some(release) => on_release_grid(Instant::now() + release),
            None => on_release_grid(Instant::now() + t.idle),
        };
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (look_again(), None);
        }
        let header = self.header_since.load(Ordering::Acquire);
        if header != UNSET {
            let cut = self.at(header) + t.request_header;
            return match look_again() {
                again if again < cut => (again, None),
                _ => (cut, Some(Expired::RequestHeader)),
            };
        }
        let idle = self.at(self.idle_since.load(Ordering::Acquire));
        match t.idle_release {
            Some(release) if release < t.idle => {
                (on_release_grid(idle + release), Some(Expired::Release))
            }
            _ => (idle + t.idle, Some(Expired::Idle)),
        }
    }

    /// Whether something expired at `now` (re-checked after waking, since
    /// the state may have moved on while the watchdog slept).
    pub fn expired(&self, t: Timeouts, now: Instant) -> Option<Expired> {
        match self.next_deadline(t) {
            (deadline, Some(what)) if deadline <= now => Some(what),
            _ => None,
        }
    }
}

/// Marks a request in flight; dropping it (when the response body is
/// finished or abandoned) makes the connection idle again if it was the
/// last one.
#[derive(Debug)]
pub struct RequestGuard(Option<Arc<Activity>>);

impl RequestGuard {
    /// A guard tracking nothing (for requests not served on a connection).
    pub fn none() -> Self {
        Self(None)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(a) = self.0.take()
            && a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
        {
            a.idle_since.store(a.now_ms(), Ordering::Release);
        }
    }
}

/// A stream that reports reads to an [`Activity`].
#[derive(Debug)]
pub struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> ActivityIo<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        idle: Duration::from_secs(60),
        request_header: Duration::from_secs(10),
        idle_release: None,
    };

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_releases_before_it_times_out() {
        const RELEASE: Duration = Duration::from_millis(250);
        let t = Timeouts {
            idle_release: Some(RELEASE),
            ..T
        };
        // On the shared grid, at most one grid step after `at`.
        let about = |(deadline, what): (Instant, Option<Expired>), at: Instant| {
            assert!(
                deadline >= at && deadline < at + RELEASE_GRID,
                "{deadline:?} is not just after {at:?}"
            );
            what
        };
        let a = Arc::new(Activity::new(true));
        let start = Instant::now();
        assert_eq!(
            about(a.next_deadline(t), start + RELEASE),
            Some(Expired::Release)
        );
        // Released (or asked to be): the idle timeout is next.
        assert_eq!(
            a.next_deadline(t.without_release()),
            (start + T.idle, Some(Expired::Idle))
        );
        // A request header on its way, or a request in flight, comes
        // first; the watchdog looks again a release period later, since
        // nothing wakes it when the request ends.
        a.on_read();
        assert_eq!(about(a.next_deadline(t), Instant::now() + RELEASE), None);
        tokio::time::advance(T.request_header).await;
        assert_eq!(a.expired(t, Instant::now()), Some(Expired::RequestHeader));
        let guard = a.request_started();
        assert_eq!(about(a.next_deadline(t), Instant::now() + RELEASE), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(guard);
        assert_eq!(
            about(a.next_deadline(t), Instant::now() + RELEASE),
            Some(Expired::Release)
        );
        // Connections going idle within one grid step release together.
        let b = Arc::new(Activity::new(true));
        tokio::time::advance(RELEASE_GRID / 3).await;
        let c = Arc::new(Activity::new(true));
        let (b_at, c_at) = (b.next_deadline(t).0, c.next_deadline(t).0);
        assert!(
            b_at == c_at || c_at == b_at + RELEASE_GRID,
            "{b_at:?} {c_at:?}"
        );
        // A release no shorter than the idle timeout never happens.
        let late = Timeouts {
            idle_release: Some(T.idle),
            ..T
        };
        assert_eq!(a.next_deadline(late).1, Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_then_header_then_busy_then_idle() {
        let a = Arc::new(Activity::new(true));
        let start = Instant::now();
        assert_eq!(a.next_deadline(T), (start + T.idle, Some(Expired::Idle)));
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_read();
        assert_eq!(a.next_deadline(T).1, Some(Expired::RequestHeader));
        assert_eq!(
            a.expired(T, Instant::now() + Duration::from_secs(11)),
            Some(Expired::RequestHeader)
        );
        let guard = a.request_started();
        assert_eq!(
            a.expired(T, Instant::now() + Duration::from_secs(3600)),
            None
        );
        a.on_read(); // body bytes while busy do not start a header clock
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(guard);
        let (deadline, what) = a.next_deadline(T);
        assert_eq!(what, Some(Expired::Idle));
        assert_eq!(deadline, Instant::now() + T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connections_look_again_holds_still_between_polls() {
        let a = Arc::new(Activity::new(false));
        let _busy = a.request_started();
        let first = a.next_deadline(T).0;
        tokio::time::advance(Duration::from_millis(1)).await;
        let second = a.next_deadline(T).0;
        assert!(
            first == second || second == first + RELEASE_GRID,
            "{first:?} {second:?}"
        );
        assert!(first >= Instant::now() - Duration::from_millis(1) + T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_reads_do_not_start_a_header_clock() {
        let a = Activity::new(false);
        a.on_read();
        assert_eq!(a.next_deadline(T).1, Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_keep_the_connection_busy() {
        let a = Arc::new(Activity::new(false));
        let g1 = a.request_started();
        let g2 = a.request_started();
        drop(g1);
        assert_eq!(a.in_flight(), 1);
        assert_eq!(a.next_deadline(T).1, None);
        drop(g2);
        assert_eq!(a.next_deadline(T).1, Some(Expired::Idle));
    }
}

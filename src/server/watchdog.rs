//! The connection watchdog: runs a served connection (hyper's, either
//! protocol) until it ends, enforcing the timeouts [`Activity`] keeps and
//! reacting to shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Proxy;
use super::activity::{Activity, Expired};
use super::metrics::ConnectionEnd;
use crate::shutdown::{Phase, Shutdown};

/// A served connection and how to ask it to stop.
pub(super) struct Watched<C> {
    /// Boxed, so that the watchdog's own future holds a pointer to it:
    /// an async fn keeps room for its arguments for as long as it runs,
    /// beside whatever it moves them into, and for an idle HTTP/2
    /// connection this future is the connection's state.
    pub conn: Pin<Box<C>>,
    /// Finish politely: hyper's `graceful_shutdown`, which has different
    /// bounds per protocol.
    pub close: fn(Pin<&mut C>),
    /// Finish without closing, to free the connection's HTTP buffers while
    /// it is idle (HTTP/1.1); `None` where there is nothing to free.
    pub release: Option<fn(Pin<&mut C>)>,
    /// Already asked to close (the idle timeout and the abort apply).
    pub closing: bool,
}

/// Runs the connection until it ends. `Ok` is what the connection returned
/// when it finished by itself or as asked; `Err` is the
/// `connections_total{result}` label of a connection cut short (or ended
/// by an HTTP error).
pub(super) async fn drive<C, T>(
    watched: Watched<C>,
    activity: Arc<Activity>,
    proxy: &Proxy,
    shutdown: Shutdown,
) -> Result<T, ConnectionEnd>
where
    C: Future<Output = Result<T, hyper::Error>>,
{
    let Watched {
        mut conn,
        close,
        release,
        mut closing,
    } = watched;
    let mut drain_shutdown = shutdown.clone();
    let mut abort_shutdown = shutdown;
    // Created once and polled across iterations: re-creating a timer and
    // two watch futures per request showed up in profiles. A completed
    // `drain` is never polled again (`closing` guards it), `abort` only
    // once closing.
    let mut drain = std::pin::pin!(drain_shutdown.reached(Phase::Draining));
    let mut abort = std::pin::pin!(abort_shutdown.reached(Phase::Abort));
    let timeouts = proxy.http.timeouts;
    let mut releasing = false;
    // The release is asked for once, and never of a closing connection.
    let watching = |asked: bool| match release {
        Some(_) if !asked => timeouts,
        _ => timeouts.without_release(),
    };
    // When an idle connection was asked to close: it gets another idle
    // period to finish politely (send its GOAWAY or close_notify).
    let mut closed_idle_at: Option<tokio::time::Instant> = None;
    let (mut armed, _) = activity.next_deadline(watching(closing));
    let mut timer = std::pin::pin!(tokio::time::sleep_until(armed));
    loop {
        let t = watching(closing || releasing);
        // `biased`: the connection is polled first, then the deadline is
        // read again before the timer is. Everything that moves the
        // deadline (a request header's first byte, a request starting or
        // ending) happens while the connection is polled, so the timer is
        // re-armed in the same poll of this task. (It used to be woken
        // through a `Notify`, which cost each keep-alive request a second
        // poll of the whole connection.)
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                return r.map_err(|e| if e.is_timeout() {
                    ConnectionEnd::Timeout
                } else {
                    tracing::debug!(error = %e, "connection ended with an error");
                    ConnectionEnd::HttpError
                });
            }
            () = std::future::poll_fn(|cx| {
                let (mut deadline, _) = activity.next_deadline(t);
                if let Some(at) = closed_idle_at {
                    deadline = deadline.max(at + t.idle);
                }
                if deadline != armed {
                    armed = deadline;
                    timer.as_mut().reset(deadline);
                }
                timer.as_mut().poll(cx)
            }) => {
                let now = tokio::time::Instant::now();
                match activity.expired(t, now) {
                    Some(Expired::RequestHeader) => {
                        tracing::debug!("request header timeout");
                        return Err(ConnectionEnd::HeaderTimeout);
                    }
                    Some(Expired::Release) => {
                        releasing = true;
                        if let Some(release) = release {
                            release(conn.as_mut());
                        }
                    }
                    Some(Expired::Idle) if !closing => {
                        closing = true;
                        closed_idle_at = Some(now);
                        close(conn.as_mut());
                    }
                    // Already closing politely, and it took longer than
                    // another idle period (the timer is not armed before
                    // `closed_idle_at` + idle): stop waiting.
                    Some(Expired::Idle) => return Err(ConnectionEnd::IdleTimeout),
                    None => {}
                }
            }
            () = drain.as_mut(), if !closing => {
                closing = true;
                close(conn.as_mut());
            }
            () = abort.as_mut(), if closing => {
                return Err(ConnectionEnd::Aborted);
            }
        }
    }
}

//! One client connection: PROXY header → TLS → HTTP/1.1 or HTTP/2 (by
//! ALPN), with the idle and request-header watchdog and graceful shutdown.
//!
//! A failure before HTTP (untrusted sender, bad header, slow header, failed
//! handshake) closes the connection and is counted; nothing is ever sent to
//! a backend for such a connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::Proxy;
use super::activity::{Activity, ActivityIo, Expired};
use super::metrics::ConnectionEnd;
use super::service::{self, ConnInfo};
use crate::forward::headers::client_header_value;
use crate::proxy_protocol::{self, Prefixed};
use crate::shutdown::{Phase, Shutdown};
use crate::tls;

/// Serves one accepted TCP connection to the end.
pub async fn serve(proxy: Arc<Proxy>, mut tcp: TcpStream, peer: SocketAddr, shutdown: Shutdown) {
    let span = tracing::debug_span!("conn", %peer, client_ip = tracing::field::Empty);
    let result = async {
        let _ = tcp.set_nodelay(true);
        // Boxed, like the handshake below: the header buffer is needed for
        // a moment, not for the life of an idle connection.
        let accepted = match Box::pin(proxy_protocol::read_header(
            &mut tcp,
            peer,
            &proxy.proxy_protocol,
        ))
        .await
        {
            Ok(a) => a,
            Err(e) => {
                proxy.metrics.proxy_protocol_error(&e);
                tracing::debug!(error = %e, kind = e.kind(), "PROXY header refused");
                return ConnectionEnd::ProxyProtocol;
            }
        };
        tracing::Span::current()
            .record("client_ip", tracing::field::display(accepted.client.source));
        let io = Prefixed::new(accepted.prefix, tcp);
        // Boxed for the same reason: the handshake's state is gone once
        // the connection is established.
        let handshake = Box::pin(tls::handshake(&proxy.tls, io, proxy.tls_handshake_timeout));
        let stream = match handshake.await {
            Ok(s) => s,
            Err(e) => {
                proxy.metrics.tls_handshake_error(&e);
                tracing::debug!(error = %e, kind = e.kind(), "TLS handshake failed");
                return ConnectionEnd::Tls;
            }
        };
        let h2 = tls::alpn_is_h2(&stream);
        let activity = Arc::new(Activity::new(!h2));
        let info = Arc::new(ConnInfo {
            forwarded_for: client_header_value(accepted.client.source),
            client: accepted.client,
            peer,
            sni: tls::sni_of(&stream).map(Into::into),
            activity: activity.clone(),
        });
        let io = TokioIo::new(ActivityIo::new(stream, activity.clone()));
        let svc = {
            let proxy = proxy.clone();
            // Boxed: hyper keeps a slot the size of the service's future
            // for the whole life of an HTTP/1.1 connection, idle or not;
            // boxing costs one allocation per request instead of about
            // 3 KiB on every idle connection.
            service_fn(move |req| Box::pin(service::handle(proxy.clone(), info.clone(), req)))
        };
        let h = &proxy.http;
        if h2 {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(h.h2_max_concurrent_streams)
                .max_pending_accept_reset_streams(h.h2_max_pending_accept_resets)
                .max_local_error_reset_streams(h.h2_max_local_error_resets)
                .max_header_list_size(u32::try_from(h.max_header_bytes).unwrap_or(u32::MAX))
                .serve_connection(io, svc);
            // Each protocol's connection is boxed so that the task holds
            // only the one in use, not space for the larger of the two
            // (and for the handshake state) on every idle connection.
            let served = drive(conn, |c| c.graceful_shutdown(), &activity, &proxy, shutdown);
            Box::pin(served).await
        } else {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // The watchdog enforces header and idle timeouts separately.
                .header_read_timeout(None)
                // A request head over the limit gets 431; the buffer must
                // hold a full head plus some body.
                .max_header_size(h.max_header_bytes)
                .max_buf_size((h.max_header_bytes * 2).max(16 * 1024))
                .max_headers(h.max_headers)
                // One flat buffer per response instead of a vector of
                // slices: rustls's `write_vectored` collects the slices into
                // a fresh `Vec` on every write. Copying a response's bytes
                // once more costs less than that allocation (and encryption
                // copies them anyway).
                .writev(false)
                .keep_alive(true)
                .serve_connection(io, svc);
            let served = drive(conn, |c| c.graceful_shutdown(), &activity, &proxy, shutdown);
            Box::pin(served).await
        }
    }
    .instrument(span)
    .await;
    proxy.metrics.connection_ended(result);
}

/// Runs the connection until it ends, enforcing the watchdog timeouts and
/// reacting to shutdown. Returns the `connections_total{result}` label.
///
/// `shut_down` asks the connection to finish politely (hyper's
/// `graceful_shutdown`, which has different bounds per protocol).
async fn drive<C>(
    conn: C,
    shut_down: fn(Pin<&mut C>),
    activity: &Activity,
    proxy: &Proxy,
    shutdown: Shutdown,
) -> ConnectionEnd
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut drain_shutdown = shutdown.clone();
    let mut abort_shutdown = shutdown;
    // Created once and polled across iterations: every request wakes this
    // loop (`activity.changed()`), and re-creating a timer and two watch
    // futures per request showed up in profiles. A completed `drain` is
    // never polled again (`closing` guards it), `abort` only once closing.
    let mut drain = std::pin::pin!(drain_shutdown.reached(Phase::Draining));
    let mut abort = std::pin::pin!(abort_shutdown.reached(Phase::Abort));
    let timeouts = proxy.http.timeouts;
    let (mut armed, _) = activity.next_deadline(timeouts);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(armed));
    let mut closing = false;
    loop {
        let (deadline, _) = activity.next_deadline(timeouts);
        if deadline != armed {
            armed = deadline;
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            r = conn.as_mut() => {
                return match r {
                    Ok(()) => ConnectionEnd::Closed,
                    Err(e) if e.is_timeout() => ConnectionEnd::Timeout,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        ConnectionEnd::HttpError
                    }
                };
            }
            () = timer.as_mut() => {
                match activity.expired(timeouts, tokio::time::Instant::now()) {
                    Some(Expired::RequestHeader) => {
                        tracing::debug!("request header timeout");
                        return ConnectionEnd::HeaderTimeout;
                    }
                    Some(Expired::Idle) if !closing => {
                        closing = true;
                        shut_down(conn.as_mut());
                    }
                    // Already closing politely; if it takes longer than
                    // another idle period, stop waiting.
                    Some(Expired::Idle) => return ConnectionEnd::IdleTimeout,
                    None => {}
                }
            }
            () = activity.changed() => {}
            () = drain.as_mut(), if !closing => {
                closing = true;
                shut_down(conn.as_mut());
            }
            () = abort.as_mut(), if closing => {
                return ConnectionEnd::Aborted;
            }
        }
    }
}

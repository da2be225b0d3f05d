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
use super::activity::{Activity, ActivityIo};
use super::http1;
use super::metrics::ConnectionEnd;
use super::service::{self, ConnInfo};
use super::watchdog::{Watched, drive};
use crate::endpoint::ClientIdentity;
use crate::forward::headers::client_header_value;
use crate::proxy_protocol::{self, Prefixed};
use crate::shutdown::Shutdown;
use crate::tls;

/// Serves one accepted TCP connection to the end.
pub async fn serve(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, shutdown: Shutdown) {
    let span = tracing::debug_span!("conn", %peer, client_ip = tracing::field::Empty);
    let result = async {
        // Established in a block of its own: what the handshake leaves
        // behind (the stream itself, 1.2 KiB, moved on but with its room
        // still reserved) must not stay in this future's state for the
        // life of an idle connection. Only the boxed `serving` does.
        let serving = match Box::pin(establish(&proxy, tcp, peer)).await {
            Ok((stream, client)) => serving(&proxy, stream, client, peer, shutdown),
            Err(end) => return end,
        };
        match serving.await {
            Ok(()) => ConnectionEnd::Closed,
            Err(end) => end,
        }
    }
    .instrument(span)
    .await;
    proxy.metrics.connection_ended(result);
}

type Stream = tls::TlsStream<Prefixed<TcpStream>>;

/// PROXY header, then TLS: the client and its stream, or the
/// `connections_total{result}` label of a connection refused on the way.
async fn establish(
    proxy: &Proxy,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(Stream, ClientIdentity), ConnectionEnd> {
    let _ = tcp.set_nodelay(true);
    // Boxed, like the handshake below: the header buffer is needed for a
    // moment, not for the life of an idle connection.
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
            return Err(ConnectionEnd::ProxyProtocol);
        }
    };
    tracing::Span::current().record("client_ip", tracing::field::display(accepted.client.source));
    let io = Prefixed::new(accepted.prefix, tcp);
    // Boxed for the same reason: the handshake's state is gone once the
    // connection is established.
    let handshake = Box::pin(tls::handshake(&proxy.tls, io, proxy.tls_handshake_timeout));
    match handshake.await {
        Ok(stream) => Ok((stream, accepted.client)),
        Err(e) => {
            proxy.metrics.tls_handshake_error(&e);
            tracing::debug!(error = %e, kind = e.kind(), "TLS handshake failed");
            Err(ConnectionEnd::Tls)
        }
    }
}

/// The established connection served by the protocol ALPN chose, boxed:
/// the task holds only the one in use, not room for the larger of the
/// two (and for the handshake) on every idle connection. `Ok` when it
/// closed in the ordinary way, else the `connections_total{result}`
/// label.
fn serving<'a>(
    proxy: &'a Arc<Proxy>,
    stream: Stream,
    client: ClientIdentity,
    peer: SocketAddr,
    shutdown: Shutdown,
) -> Pin<Box<dyn Future<Output = Result<(), ConnectionEnd>> + Send + 'a>> {
    let h2 = tls::alpn_is_h2(&stream);
    let activity = Arc::new(Activity::new(!h2));
    let mut info = ConnInfo {
        forwarded_for: client_header_value(client.source),
        client,
        peer,
        sni: tls::sni_of(&stream).map(Into::into),
        activity: activity.clone(),
        log_origin: None,
    };
    if let Some(log) = &proxy.access_log {
        info.log_origin = Some(log.format_origin(&info.origin()));
    }
    let info = Arc::new(info);
    let io = ActivityIo::new(stream, activity.clone());
    let svc = {
        let proxy = proxy.clone();
        // `Handled` is `Unpin`, as handing an HTTP/1.1 connection back
        // from hyper (the idle release, `http1.rs`) needs, and small: a
        // forwarded request boxes its wait on the backend (hyper keeps a
        // slot the size of the service future for as long as its
        // connection lives, about 3 KiB were that unboxed); a request
        // answered locally allocates nothing for it.
        service_fn(move |req| service::handle(proxy.clone(), info.clone(), req))
    };
    if !h2 {
        return Box::pin(http1::serve(io, svc, activity, proxy.clone(), shutdown));
    }
    let h = &proxy.http;
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(h.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(h.h2_max_pending_accept_resets)
        .max_local_error_reset_streams(h.h2_max_local_error_resets)
        .max_header_list_size(u32::try_from(h.max_header_bytes).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), svc);
    let watched = Watched {
        conn: Box::pin(conn),
        close: |c| c.graceful_shutdown(),
        release: None,
        closing: false,
    };
    Box::pin(drive(watched, activity, proxy, shutdown))
}

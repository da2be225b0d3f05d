//! One client connection: PROXY header → TLS → HTTP/1.1 or HTTP/2 (by
//! ALPN), with the idle and request-header watchdog and graceful shutdown.
//!
//! A failure before HTTP (untrusted sender, bad header, slow header, failed
//! handshake) closes the connection and is counted; nothing is ever sent to
//! a backend for such a connection.

use std::net::SocketAddr;
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
use crate::forward::headers::client_header_value;
use crate::proxy_protocol::{self, Prefixed};
use crate::shutdown::Shutdown;
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
        let io = ActivityIo::new(stream, activity.clone());
        let svc = {
            let proxy = proxy.clone();
            // Boxed: hyper keeps a slot the size of the service's future
            // for the whole life of an HTTP/1.1 connection, idle or not;
            // boxing costs one allocation per request instead of about
            // 3 KiB on every idle connection.
            service_fn(move |req| Box::pin(service::handle(proxy.clone(), info.clone(), req)))
        };
        // Each protocol's connection is boxed so that the task holds only
        // the one in use, not space for the larger of the two (and for
        // the handshake state) on every idle connection.
        if h2 {
            let h = &proxy.http;
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(h.h2_max_concurrent_streams)
                .max_pending_accept_reset_streams(h.h2_max_pending_accept_resets)
                .max_local_error_reset_streams(h.h2_max_local_error_resets)
                .max_header_list_size(u32::try_from(h.max_header_bytes).unwrap_or(u32::MAX))
                .serve_connection(TokioIo::new(io), svc);
            let watched = Watched {
                conn,
                close: |c| c.graceful_shutdown(),
                release: None,
                closing: false,
            };
            match Box::pin(drive(watched, &activity, &proxy, shutdown)).await {
                Ok(()) => ConnectionEnd::Closed,
                Err(end) => end,
            }
        } else {
            Box::pin(http1::serve(io, svc, &activity, &proxy, shutdown)).await
        }
    }
    .instrument(span)
    .await;
    proxy.metrics.connection_ended(result);
}

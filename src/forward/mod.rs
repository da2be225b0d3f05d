//! Forwarding: an allowed request goes to one of its resource's backend
//! nodes over a pooled HTTP/1.1 connection, and the response streams back.
//!
//! - [`headers`]: the pure header rewrite (SPEC §6).
//! - [`client`]: the HTTP/1.1 client the request drives itself.
//! - [`pool`]: keep-alive connections per node, round-robin with failover
//!   to the next node when a connect fails.
//! - [`upload`]: the streaming request body, and its progress.
//! - [`body`]: the streaming response body, which hands its connection
//!   back to the pool at the end.
//!
//! Timeouts: connecting (per node, then the next node is tried) and the
//! response. The response timeout runs from the request body's last
//! progress: after the body has been sent, the backend has that long to
//! answer; while it is being sent, each frame restarts the clock, so a long
//! upload is fine but a backend that stops reading it is a 504, and a
//! client that stops sending it a 408. A connect failure on every node is
//! 502.

pub mod body;
pub mod client;
pub mod frame;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod upload;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use client::{BackendError, Reading, ResponseHead, SendError};

pub use body::ResponseBody;
pub use headers::Forwarded;
pub use health::{ActiveChecks, Ejection};
pub use pool::{Pool, PoolSettings};
pub use upload::{Progress, UpstreamBody, Watch};

use crate::backends::Backends;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no healthy backend node: every node of the resource is ejected")]
    NoHealthyBackend,
    #[error("connecting to backend {0} failed")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("connecting to backend {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("the request body could not be read from the client")]
    RequestBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the client sent no request body data for {0:?}")]
    RequestBodyTimeout(Duration),
    #[error("the backend failed before answering")]
    Backend(#[source] BackendError),
    #[error("the backend did not answer within {0:?}")]
    ResponseTimeout(Duration),
    #[error("the backend switched protocols though no upgrade was asked for")]
    UnexpectedUpgrade,
}

impl ForwardError {
    /// The `upstream_errors_total{kind}` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoHealthyBackend => "no_healthy_backend",
            Self::Connect(..) => "connect",
            Self::ConnectTimeout(_) => "connect_timeout",
            Self::RequestBody(_) => "request_body",
            Self::RequestBodyTimeout(_) => "request_body_timeout",
            Self::Backend(_) => "backend",
            Self::ResponseTimeout(_) => "timeout",
            Self::UnexpectedUpgrade => "unexpected_upgrade",
        }
    }
}

/// Why a connection did not answer a request.
enum Awaited {
    /// Nothing of the request was written: it can go elsewhere.
    Back(ForwardError),
    Failed(ForwardError),
}

/// Sends allowed requests to backends.
#[derive(Debug)]
pub struct Forwarder {
    pool: Pool,
    response_timeout: Duration,
}

impl Forwarder {
    pub fn new(pool: PoolSettings, response_timeout: Duration) -> Self {
        Self {
            pool: Pool::new(pool),
            response_timeout,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Forwards `req` to `backends` and returns the backend's response,
    /// rewritten for the client, with its body still streaming.
    pub async fn forward(
        &self,
        backends: &Backends,
        req: Request<Incoming>,
        fwd: Forwarded<'_>,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        let nodes = backends.nodes();
        let (mut parts, body) = req.into_parts();
        // HTTP/1.0 clients may send no Host; the upstream hop is HTTP/1.1,
        // which requires one. Name the backend, as a client connecting to
        // it would (rare path, so the allocation does not matter).
        headers::rewrite_request(&mut parts, fwd, || {
            nodes
                .first()
                .and_then(|node| http::HeaderValue::try_from(node.to_string()).ok())
        });
        let (body, progress) = UpstreamBody::new(body);
        let mut req = Request::from_parts(parts, body);

        let mut route = self.pool.route(nodes, backends.next_start());
        loop {
            let mut candidate = route.next().await?;
            let awaited = {
                // Pinned here, where the response is awaited, rather than
                // boxed.
                let sent = std::pin::pin!(candidate.lease.send(&mut req));
                self.await_response(sent, &progress).await
            };
            let head = match awaited {
                Ok(head) => head,
                // Not sent: offer it to the next connection.
                Err(Awaited::Back(why)) => {
                    route.gave_back(candidate, why);
                    continue;
                }
                Err(Awaited::Failed(e)) => return Err(e),
            };
            // The request's Upgrade header was stripped (hop-by-hop), so a
            // 101 answers a question nobody asked; relaying it would hand
            // the client a raw connection to the node. Dropping the lease
            // closes that backend connection.
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ForwardError::UnexpectedUpgrade);
            }
            let reading = Reading::new(&head);
            let mut response = Response::new(ResponseBody::upstream(reading, candidate.lease));
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers;
            // A backend's own reason phrase goes on to the client (hyper's
            // server writes it from this extension); the rare case pays
            // for the extensions map.
            if let Some(reason) = head.reason
                && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason)
            {
                response.extensions_mut().insert(reason);
            }
            headers::rewrite_response(response.headers_mut());
            return Ok(response);
        }
    }

    /// Waits for the response head, giving up when the request body has
    /// made no progress for `response_timeout` (see the module docs).
    async fn await_response(
        &self,
        mut response: Pin<&mut impl Future<Output = Result<ResponseHead, SendError>>>,
        progress: &Watch,
    ) -> Result<ResponseHead, Awaited> {
        let timeout = self.response_timeout;
        loop {
            tokio::select! {
                r = response.as_mut() => {
                    return r.map_err(|e| match e {
                        SendError::Unsent(e) => Awaited::Back(ForwardError::Backend(e)),
                        SendError::Backend(e) => Awaited::Failed(ForwardError::Backend(e)),
                        SendError::RequestBody(e) => Awaited::Failed(ForwardError::RequestBody(e)),
                    });
                }
                () = tokio::time::sleep_until(progress.last() + timeout) => {
                    if progress.last().elapsed() < timeout {
                        continue; // the body moved while we slept
                    }
                    return Err(Awaited::Failed(if progress.waiting_on_client() {
                        ForwardError::RequestBodyTimeout(timeout)
                    } else {
                        ForwardError::ResponseTimeout(timeout)
                    }));
                }
            }
        }
    }
}

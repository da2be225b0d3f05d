//! Keep-alive HTTP/1.1 connections to backend nodes.
//!
//! One [`Node`] per backend address, shared by every snapshot that lists it,
//! so a reload does not drop warm connections. A connection is checked out
//! for one request and comes back when the response body has been read to
//! the end ([`Lease::release`]); a connection whose response was abandoned
//! half-way is closed instead, since its stream position is unknown.
//!
//! The pool never owns a request: [`Pool::send`] hands the request to a
//! pooled connection with `try_send_request`, which gives it back untouched
//! when the connection turned out to be closed or busy, so a stale
//! keep-alive connection or a refused connect moves the request to the next
//! connection or node without losing its body.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ForwardError;
use super::health::{ActiveChecks, Ejection, Health};
use super::upload::UpstreamBody;

/// Pool settings; see `[upstream]` in the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    pub ejection: Ejection,
}

type Sender = http1::SendRequest<UpstreamBody>;

/// Node table keyed by address: foldhash, as the compiled snapshot's
/// tables, since the key is not attacker-chosen.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// All backend nodes this process talks to.
#[derive(Debug)]
pub struct Pool {
    nodes: Mutex<FastMap<SocketAddr, Arc<Node>>>,
    settings: PoolSettings,
}

/// One backend address and its idle connections.
#[derive(Debug)]
pub struct Node {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    health: Health,
}

#[derive(Debug)]
struct Idle {
    tx: Sender,
    since: Instant,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub struct Lease {
    node: Arc<Node>,
    tx: Sender,
}

impl Lease {
    /// Returns the connection to its node for the next request.
    pub fn release(self) {
        self.node.put(self.tx);
    }

    pub fn addr(&self) -> SocketAddr {
        self.node.addr
    }
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            nodes: Mutex::new(FastMap::default()),
            settings,
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    fn node(&self, addr: SocketAddr) -> Arc<Node> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Node {
                    addr,
                    idle: Mutex::new(Vec::new()),
                    max_idle: self.settings.max_idle_per_backend,
                    health: Health::default(),
                })
            })
            .clone()
    }

    /// Sends `req` to the first node, starting at `start`, that takes it:
    /// a pooled connection if one is idle, else a new one. Ejected nodes are
    /// skipped; a node that refuses the connection (or does not answer
    /// within the connect timeout) passes the request on to the next node,
    /// and counts towards its ejection. Resolves when the request has been
    /// handed to a connection; the returned future yields the response.
    pub async fn dispatch(
        &self,
        nodes: &[SocketAddr],
        start: usize,
        mut req: Request<UpstreamBody>,
    ) -> Result<Dispatched, ForwardError> {
        let mut last = ForwardError::NoHealthyBackend;
        for (addr, node) in self.walk(nodes, start) {
            // Pooled connections first.
            while let Some(mut tx) = node.take(self.settings.idle_timeout) {
                match try_send(&mut tx, req) {
                    TrySend::Sent(response) => return Ok(Dispatched { node, tx, response }),
                    TrySend::Back(back) => req = back,
                }
            }
            let connected = self.connect(addr).await;
            self.record(&node, addr, connected.as_ref().err());
            match connected {
                Ok(mut tx) => match try_send(&mut tx, req) {
                    TrySend::Sent(response) => return Ok(Dispatched { node, tx, response }),
                    TrySend::Back(back) => {
                        req = back;
                        last = ForwardError::Handshake(addr);
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `nodes` from `start` round, ejected ones skipped (checked as the
    /// walk reaches each, so an ejection on the way counts).
    fn walk<'a>(
        &'a self,
        nodes: &'a [SocketAddr],
        start: usize,
    ) -> impl Iterator<Item = (SocketAddr, Arc<Node>)> + 'a {
        (0..nodes.len())
            .filter_map(move |i| nodes.get((start + i) % nodes.len()).copied())
            .map(|addr| (addr, self.node(addr)))
            .filter(|(_, node)| !node.health.is_ejected())
    }

    /// A connect attempt's outcome, counted towards the node's ejection.
    fn record(&self, node: &Node, addr: SocketAddr, failure: Option<&ForwardError>) {
        match failure {
            None => node.health.succeeded(),
            Some(e) => {
                if let Some(period) = node.health.failed(&self.settings.ejection) {
                    tracing::warn!(backend = %addr, error = %e, ?period, "backend node ejected");
                }
            }
        }
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ForwardError> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => Ok(tcp),
            Ok(Err(e)) => Err(ForwardError::Connect(addr, e)),
            Err(_) => Err(ForwardError::ConnectTimeout(addr)),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, ForwardError> {
        let tcp = self.tcp(addr).await?;
        // Requests and responses are written whole; Nagle only adds latency.
        let _ = tcp.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| ForwardError::Handshake(addr))?;
        tokio::spawn(async move {
            // Ends when the backend or the pool closes the connection; a
            // failure here is reported to the request that was using it.
            let _ = conn.await;
        });
        Ok(tx)
    }

    /// A plain TCP connection for TLS pass-through (the remote-cluster
    /// listener): the same walk as [`Pool::dispatch`] from `start`, skipping
    /// ejected nodes, with each connect failure counted towards the node's
    /// ejection and passing on to the next node. Nothing is pooled.
    pub async fn connect_stream(
        &self,
        nodes: &[SocketAddr],
        start: usize,
    ) -> Result<(SocketAddr, TcpStream), ForwardError> {
        let mut last = ForwardError::NoHealthyBackend;
        for (addr, node) in self.walk(nodes, start) {
            let connected = self.tcp(addr).await;
            self.record(&node, addr, connected.as_ref().err());
            match connected {
                Ok(tcp) => return Ok((addr, tcp)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Drops idle connections that expired or were closed by the backend,
    /// and nodes left with nothing. Called periodically.
    pub fn sweep(&self) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|_, node| {
            let mut idle = node.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| !c.tx.is_closed() && c.since.elapsed() < self.settings.idle_timeout);
            // Keep nodes someone is using (a lease or a pending request
            // holds another reference) or that still have connections.
            // Keep an ejected node too, although a dead one never has
            // connections: dropping it would forget the ejection, and the
            // next request would try the dead node long before its backoff
            // ended (tests/it/faults.rs, lone_dead_node_gets_502_then_503_...).
            // Bounded: every ejection ends within `eject_max`.
            !idle.is_empty() || Arc::strong_count(node) > 1 || node.health.is_ejected()
        });
    }

    /// Runs one round of active health checks over the nodes in use.
    pub async fn check_nodes(&self, checks: &ActiveChecks) {
        let nodes: Vec<Arc<Node>> = {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.values().cloned().collect()
        };
        let mut set = tokio::task::JoinSet::new();
        for node in nodes {
            let checks = checks.clone();
            let ejection = self.settings.ejection;
            set.spawn(async move {
                let alive = probe(node.addr, &checks).await;
                match (&alive, node.health.is_ejected()) {
                    (Ok(()), true) => {
                        tracing::info!(backend = %node.addr, "backend node healthy again");
                        node.health.succeeded();
                    }
                    (Ok(()), false) => node.health.succeeded(),
                    (Err(why), false) => {
                        let period = node.health.eject(&ejection);
                        tracing::warn!(backend = %node.addr, why, ?period, "backend node failed its health check; ejected");
                    }
                    (Err(_), true) => {}
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Idle connections across all nodes (for metrics and tests).
    pub fn idle_connections(&self) -> usize {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .values()
            .map(|n| n.idle.lock().map(|v| v.len()).unwrap_or(0))
            .sum()
    }
}

/// A request on its way: the response future and the connection carrying
/// it.
pub struct Dispatched {
    node: Arc<Node>,
    tx: Sender,
    pub response: ResponseFuture,
}

impl Dispatched {
    /// Splits into the response future and the lease to return once the
    /// response body is consumed.
    pub fn into_parts(self) -> (ResponseFuture, Lease) {
        (
            self.response,
            Lease {
                node: self.node,
                tx: self.tx,
            },
        )
    }
}

/// The backend's response to a dispatched request. One allocation per
/// request: hyper's send future, boxed once and polled where it is.
pub struct ResponseFuture(ResponseState);

enum ResponseState {
    Pending(Pin<Box<SendFuture>>),
    Failed(Option<hyper::Error>),
}

type SendFuture = dyn Future<
        Output = Result<
            Response<Incoming>,
            hyper::client::conn::TrySendError<Request<UpstreamBody>>,
        >,
    > + Send;

impl Future for ResponseFuture {
    type Output = Result<Response<Incoming>, hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            ResponseState::Pending(fut) => fut.as_mut().poll(cx).map_err(|e| e.into_error()),
            ResponseState::Failed(e) => match e.take() {
                Some(e) => Poll::Ready(Err(e)),
                // Polled again after it failed: a caller bug, not the
                // backend's; never reached by `Forwarder`.
                None => Poll::Pending,
            },
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

/// The outcome of offering a request to a connection. Returned and
/// matched at once, never stored: boxing the request to even out the
/// variants would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum TrySend {
    /// Queued on the connection; the future yields the response.
    Sent(ResponseFuture),
    /// The connection could not take it (closed, or busy finishing the
    /// previous response); here it is back, untouched.
    Back(Request<UpstreamBody>),
}

/// Hands `req` to `tx` if it can take it now; gives it back otherwise.
fn try_send(tx: &mut Sender, req: Request<UpstreamBody>) -> TrySend {
    if tx.is_closed() {
        return TrySend::Back(req);
    }
    // `try_send_request` queues the request only when the connection is
    // ready for one (it decides before the returned future is polled); if
    // it is not, or the connection dies before writing it, the error
    // carries the request back. One poll, with a no-op waker, tells which.
    let mut fut: Pin<Box<SendFuture>> = Box::pin(tx.try_send_request(req));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(mut e)) => match e.take_message() {
            Some(req) => TrySend::Back(req),
            None => TrySend::Sent(ResponseFuture(ResponseState::Failed(Some(e.into_error())))),
        },
        // Answered on the first poll: cannot happen in practice (the
        // backend has not even seen the request), but keep the answer.
        Poll::Ready(Ok(resp)) => TrySend::Sent(ResponseFuture(ResponseState::Pending(Box::pin(
            std::future::ready(Ok(resp)),
        )))),
        Poll::Pending => TrySend::Sent(ResponseFuture(ResponseState::Pending(fut))),
    }
}

/// One active check: GET `checks.path` on a fresh connection; any answer
/// below 500 means alive.
async fn probe(addr: SocketAddr, checks: &ActiveChecks) -> Result<(), &'static str> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| "connect failed")?;
        let (mut tx, conn) =
            http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tcp))
                .await
                .map_err(|_| "handshake failed")?;
        tokio::spawn(conn);
        let req = Request::get(checks.path.as_str())
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, "portcullis-health-check")
            .body(http_body_util::Empty::new())
            .map_err(|_| "bad health check path")?;
        let resp = tx.send_request(req).await.map_err(|_| "no answer")?;
        if resp.status().is_server_error() {
            Err("answered 5xx")
        } else {
            Ok(())
        }
    };
    tokio::time::timeout(checks.timeout, attempt)
        .await
        .unwrap_or(Err("timed out"))
}

impl Node {
    /// An idle connection younger than `max_age`, most recently used first
    /// (warm in the backend's caches, least likely to have been closed).
    fn take(&self, max_age: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.tx.is_closed() && c.since.elapsed() < max_age {
                return Some(c.tx);
            }
        }
        None
    }

    fn put(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }
}

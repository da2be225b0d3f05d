//! Keep-alive HTTP/1.1 connections to backend nodes.
//!
//! One [`Node`] per backend address, shared by every snapshot that lists it,
//! so a reload does not drop warm connections. A connection is checked out
//! for one request and comes back when the response body has been read to
//! the end ([`Lease::release`]); a connection whose response was abandoned
//! half-way is closed instead, since its stream position is unknown.
//!
//! The pool never owns a request: [`Lease::send`] writes the request to a
//! connection [`Route::next`] found, and leaves it with the caller when
//! not a byte of it could be written, so a stale keep-alive connection or
//! a refused connect moves the request to the next connection or node
//! without losing its body. A connection the backend closed while idle is
//! noticed before it is offered ([`Conn::is_closed`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ForwardError;
use super::client::{Conn, ResponseHead, SendError};
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
    conn: Box<Conn>,
    since: Instant,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub struct Lease {
    node: Arc<Node>,
    /// Boxed once per connection: a lease moves with every response, and
    /// the connection with its buffers is ~200 bytes.
    conn: Box<Conn>,
}

impl Lease {
    /// Returns the connection to its node for the next request.
    pub fn release(self) {
        self.node.put(self.conn);
    }

    pub fn addr(&self) -> SocketAddr {
        self.node.addr
    }

    /// The connection, for reading the response body off it.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Writes `req` to this connection and reads the response head (see
    /// [`Conn::send`]). Not boxed: the caller pins it where it waits for
    /// the response, which saves an allocation per request.
    pub fn send<'a>(
        &'a mut self,
        req: &'a mut Request<UpstreamBody>,
    ) -> impl Future<Output = Result<ResponseHead, SendError>> + Send + 'a {
        self.conn.send(req)
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

    /// The connections a request to `nodes` is offered to, starting at
    /// `start`: see [`Route`].
    pub fn route<'p>(&'p self, nodes: &'p [SocketAddr], start: usize) -> Route<'p> {
        Route {
            pool: self,
            walk: self.walk(nodes, start),
            current: None,
            last: ForwardError::NoHealthyBackend,
        }
    }

    /// `nodes` from `start` round, ejected ones skipped (checked as the
    /// walk reaches each, so an ejection on the way counts).
    fn walk<'p>(&'p self, nodes: &'p [SocketAddr], start: usize) -> Walk<'p> {
        Walk {
            pool: self,
            nodes,
            start,
            next: 0,
        }
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

    async fn connect(&self, addr: SocketAddr) -> Result<Box<Conn>, ForwardError> {
        let tcp = self.tcp(addr).await?;
        // Requests and responses are written whole; Nagle only adds latency.
        let _ = tcp.set_nodelay(true);
        Ok(Box::new(Conn::new(tcp)))
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
        for node in self.walk(nodes, start) {
            let addr = node.addr;
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
            idle.retain(|c| !c.conn.is_closed() && c.since.elapsed() < self.settings.idle_timeout);
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

/// The nodes of one request, in the order they are tried.
struct Walk<'p> {
    pool: &'p Pool,
    nodes: &'p [SocketAddr],
    start: usize,
    /// How many of `nodes` were looked at.
    next: usize,
}

impl Iterator for Walk<'_> {
    type Item = Arc<Node>;

    fn next(&mut self) -> Option<Arc<Node>> {
        while self.next < self.nodes.len() {
            let at = (self.start + self.next) % self.nodes.len();
            self.next += 1;
            let node = self.pool.node(*self.nodes.get(at)?);
            if !node.health.is_ejected() {
                return Some(node);
            }
        }
        None
    }
}

/// The connections one request is offered to, in order: each node's idle
/// connections (most recently used first), then a new connection to it,
/// then the next node. A node that refuses the connection (or does not
/// answer within the connect timeout) counts towards its ejection.
///
/// The caller offers the request with [`Lease::send`] and, when it could
/// not be written, tells [`Route::gave_back`] and asks for the next one:
/// the request is never lost on the way, body included.
pub struct Route<'p> {
    pool: &'p Pool,
    walk: Walk<'p>,
    /// The node whose idle connections are being offered.
    current: Option<Arc<Node>>,
    /// Why the last node failed: the error when every node has.
    last: ForwardError,
}

/// A connection [`Route::next`] found.
pub struct Candidate {
    pub lease: Lease,
    /// Connected for this request rather than taken from the pool.
    fresh: bool,
}

impl Route<'_> {
    /// The next connection to offer the request to, or why there is none.
    pub async fn next(&mut self) -> Result<Candidate, ForwardError> {
        loop {
            let node = match self.current.take().or_else(|| self.walk.next()) {
                Some(node) => node,
                None => {
                    return Err(std::mem::replace(
                        &mut self.last,
                        ForwardError::NoHealthyBackend,
                    ));
                }
            };
            if let Some(conn) = node.take(self.pool.settings.idle_timeout) {
                self.current = Some(node.clone());
                return Ok(Candidate {
                    lease: Lease { node, conn },
                    fresh: false,
                });
            }
            // No idle connection left: a new one, and after it the next node.
            let connected = self.pool.connect(node.addr).await;
            self.pool.record(&node, node.addr, connected.as_ref().err());
            match connected {
                Ok(conn) => {
                    return Ok(Candidate {
                        lease: Lease { node, conn },
                        fresh: true,
                    });
                }
                Err(e) => self.last = e,
            }
        }
    }

    /// The request could not be written to `candidate` (`why`). A pooled
    /// connection was most likely closed by the backend just then; a new
    /// one that fails so is the error if no other node takes the request.
    pub fn gave_back(&mut self, candidate: Candidate, why: ForwardError) {
        if candidate.fresh {
            self.last = why;
        }
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
    fn take(&self, max_age: Duration) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.conn.is_closed() && c.since.elapsed() < max_age {
                return Some(c.conn);
            }
        }
        None
    }

    fn put(&self, conn: Box<Conn>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new(PoolSettings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_backend: 8,
            ejection: Ejection {
                after_failures: 100,
                base: Duration::from_secs(1),
                max: Duration::from_secs(1),
            },
        })
    }

    /// A loopback address that accepts connections (into the backlog: the
    /// handshake needs nothing from the peer).
    async fn listening() -> (tokio::net::TcpListener, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// A loopback address nothing listens on.
    async fn refusing() -> SocketAddr {
        listening().await.1
    }

    /// A failure to write a request to `addr` (any error that names it).
    fn unsent(addr: SocketAddr) -> ForwardError {
        ForwardError::Connect(addr, std::io::Error::other("reset"))
    }

    fn where_from(c: &Candidate) -> (SocketAddr, bool) {
        (c.lease.addr(), c.fresh)
    }

    #[tokio::test]
    async fn a_route_offers_idle_connections_then_a_new_one_then_the_next_node() {
        let pool = pool();
        let (_a_listener, a) = listening().await;
        let (_b_listener, b) = listening().await;
        let nodes = [a, b];

        // Leave one idle connection to `a` in the pool.
        let first = pool.route(&nodes, 0).next().await.unwrap();
        assert_eq!(where_from(&first), (a, true));
        first.lease.release();
        assert_eq!(pool.idle_connections(), 1);

        let mut route = pool.route(&nodes, 0);
        let offered = route.next().await.unwrap();
        assert_eq!(where_from(&offered), (a, false), "the idle one first");
        route.gave_back(offered, unsent(a));
        let offered = route.next().await.unwrap();
        assert_eq!(
            where_from(&offered),
            (a, true),
            "then a new one to the same node"
        );
        route.gave_back(offered, unsent(a));
        let offered = route.next().await.unwrap();
        assert_eq!(where_from(&offered), (b, true), "then the next node");
        route.gave_back(offered, unsent(b));
        match route.next().await {
            Err(ForwardError::Connect(addr, _)) => assert_eq!(addr, b),
            other => panic!(
                "expected the last new connection's failure, got {:?}",
                other.err()
            ),
        }
    }

    #[tokio::test]
    async fn a_route_passes_over_a_refusing_node_and_reports_the_last_failure() {
        let pool = pool();
        let dead = refusing().await;
        let (_listener, alive) = listening().await;

        let nodes = [dead, alive];
        let mut route = pool.route(&nodes, 0);
        let offered = route.next().await.unwrap();
        assert_eq!(where_from(&offered), (alive, true));

        let nodes = [alive, dead];
        let mut route = pool.route(&nodes, 1);
        assert_eq!(where_from(&route.next().await.unwrap()), (alive, true));

        let nodes = [dead];
        let mut route = pool.route(&nodes, 0);
        match route.next().await {
            Err(ForwardError::Connect(addr, _)) => assert_eq!(addr, dead),
            other => panic!("expected the refused connect, got {:?}", other.err()),
        }
        let mut route = pool.route(&[], 0);
        assert!(matches!(
            route.next().await,
            Err(ForwardError::NoHealthyBackend)
        ));
    }
}

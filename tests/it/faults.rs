//! Faults and floods, end to end: the real `portcullis::serve` on loopback
//! against backends and a control plane that misbehave on purpose. Each
//! test defines the outcome a client or an operator sees and asserts it:
//!
//! - connection flood past `server.max_connections`: the excess is closed
//!   at once and counted, the admin API still answers, and capacity comes
//!   back when the flood goes away (or times out at the PROXY header);
//! - a backend node killed under load and restarted: only requests on its
//!   open connections fail (502), the rest move to the other node; the node
//!   is ejected (503 for a resource with no other node) and used again
//!   after its backoff, or at once when an active check finds it alive;
//! - a lone dead node: 502 until ejected, then 503 for the whole ejection
//!   period, then served again;
//! - a backend that accepts and never answers: 504 after
//!   `upstream.response_timeout`, the client connection stays usable;
//! - a backend that resets mid-response: the client sees its response
//!   aborted, never a clean short body; the next request is served;
//! - a snapshot URL that accepts and never answers: each poll gives up
//!   after `snapshot.fetch_timeout`, is counted, and the snapshot in force
//!   stays; at boot the state directory is the fallback, or the proxy
//!   stays not ready.
//!
//! Timeouts are configured small so the file runs in seconds; every wait
//! is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_test_kit::harness::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- the proxy

/// Where the snapshot comes from.
#[derive(Clone)]
enum Src {
    /// This content, in a file.
    File(Vec<u8>),
    Url(String),
}

/// The knobs these tests turn; everything else is the default.
#[derive(Clone)]
struct Options {
    source: Src,
    state_dir: Option<PathBuf>,
    max_connections: usize,
    pp_read_timeout: &'static str,
    response_timeout: &'static str,
    upstream_idle_timeout: &'static str,
    eject_after_failures: u32,
    eject_base: &'static str,
    eject_max: &'static str,
    health_check_interval: Option<&'static str>,
    fetch_timeout: &'static str,
    poll_interval: &'static str,
}

impl Options {
    fn new(source: Src) -> Self {
        Self {
            source,
            state_dir: None,
            max_connections: 1000,
            pp_read_timeout: "3s",
            response_timeout: "5s",
            upstream_idle_timeout: "60s",
            eject_after_failures: 3,
            eject_base: "1s",
            eject_max: "30s",
            health_check_interval: None,
            fetch_timeout: "2s",
            poll_interval: "100ms",
        }
    }

    /// These options on the test baseline.
    fn config(&self, files: &TempDir) -> ProxyConfig {
        let mut config = ProxyConfig::new(files)
            .set(
                "server.max_connections",
                i64::try_from(self.max_connections).unwrap_or(i64::MAX),
            )
            .set("proxy_protocol.read_timeout", self.pp_read_timeout)
            .set("upstream.connect_timeout", "1s")
            .set("upstream.response_timeout", self.response_timeout)
            .set("upstream.idle_timeout", self.upstream_idle_timeout)
            .set(
                "upstream.eject_after_failures",
                i64::from(self.eject_after_failures),
            )
            .set("upstream.eject_base", self.eject_base)
            .set("upstream.eject_max", self.eject_max)
            .set("snapshot.poll_interval", self.poll_interval)
            .set("snapshot.fetch_timeout", self.fetch_timeout);
        if let Some(interval) = self.health_check_interval {
            config = config
                .set("upstream.health_check_interval", interval)
                .set("upstream.health_check_timeout", "500ms");
        }
        if let Some(dir) = &self.state_dir {
            config = config.set("snapshot.state_dir", dir.display().to_string());
        }
        match &self.source {
            Src::File(bytes) => config.set(
                "snapshot.path",
                files.write("snapshot.json", bytes).display().to_string(),
            ),
            Src::Url(url) => config.set("snapshot.url", url.clone()),
        }
    }
}

/// `portcullis::serve` with [`Options`]; shut down on drop.
struct Instance(Served);

impl std::ops::Deref for Instance {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.0
    }
}

impl Instance {
    /// Starts `serve` and waits for `/healthz` (not `/readyz`).
    async fn start(o: &Options) -> Self {
        let files = TempDir::new();
        let config = o.config(&files);
        Self(Served::start_with(&config, files).await)
    }

    async fn ready(o: &Options) -> Self {
        let p = Self::start(o).await;
        p.wait_ready(WAIT).await;
        p
    }

    async fn wait_ready(&self, limit: Duration) {
        self.0.wait_ready_within(limit).await;
    }

    /// A client (allowed by every policy: there are none in these
    /// snapshots) whose SNI is the bare zone, so that one connection can
    /// address every deployment.
    fn client(&self) -> ClientBuilder {
        ClientBuilder::new(self.data, ZONE).preamble(v1_from(ALLOWED_V4))
    }

    /// A keep-alive HTTP/1.1 connection.
    async fn conn(&self) -> Conn {
        self.client().connect().await
    }

    /// Waits up to [`WAIT`] until the metrics satisfy `met`. A failed
    /// `/metrics` request counts as "not yet" rather than failing the test:
    /// these waits run while the proxy is flooded or has no snapshot.
    async fn until_metrics(&self, what: &str, met: impl Fn(&Metrics) -> bool) {
        let (admin, met) = (self.admin, &met);
        eventually(WAIT, what, || async move {
            let r = admin_request(admin, Method::GET, "/metrics", &[], None).await;
            r.is_ok_and(|r| met(&Metrics::parse(&r.text())))
        })
        .await;
    }
}

/// `GET /` to deployment `id` on `conn`.
async fn get(conn: &mut Conn, id: &str) -> Reply {
    conn.get(&host(id), "/").await
}

fn upstream_errors(m: &Metrics, kind: &str) -> f64 {
    m.sum("portcullis_upstream_errors_total", &[("kind", kind)])
}

/// Requests answered 503 because their resource had no healthy node.
fn no_healthy_backend(m: &Metrics) -> f64 {
    upstream_errors(m, "no_healthy_backend")
}

fn reloads(m: &Metrics, result: &str) -> f64 {
    m.sum("portcullis_snapshot_reloads_total", &[("result", result)])
}

/// A snapshot with one `es` resource per deployment and no policies.
fn snapshot(version: u64, deployments: &[(&str, &[SocketAddr])]) -> Vec<u8> {
    let deployments: Vec<Value> = deployments
        .iter()
        .map(|(id, nodes)| {
            let nodes: Vec<String> = nodes.iter().map(ToString::to_string).collect();
            json!({ "id": id, "region": "aws-us-east-1",
                    "resources": { "es": { "backends": nodes } }, "policies": [] })
        })
        .collect();
    json!({ "version": version, "deployments": deployments, "policies": [] })
        .to_string()
        .into_bytes()
}

// ---------------------------------------------------------------- misbehaving peers

/// Binds `addr` with SO_REUSEADDR (a restarted node reuses its port while
/// old connections sit in TIME_WAIT).
async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(l) => return l,
            Err(e) => assert!(Instant::now() < deadline, "bind {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
struct NodeState {
    /// Client requests answered (health checks not included).
    served: AtomicUsize,
    probes: AtomicUsize,
    /// Connections open now.
    open: AtomicUsize,
}

/// Counts a connection as open while alive.
struct Open(Arc<NodeState>);

impl Open {
    fn new(state: &Arc<NodeState>) -> Self {
        state.open.fetch_add(1, Ordering::SeqCst);
        Self(state.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An HTTP/1.1 backend node that can be killed — listener and every open
/// connection closed, as when the process dies — and restarted on the same
/// address. Answers `{"backend": name}`, after `?ms=N` milliseconds.
struct Killable {
    name: &'static str,
    addr: SocketAddr,
    state: Arc<NodeState>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Killable {
    async fn start(name: &'static str) -> Self {
        Self::start_at(name, "127.0.0.1:0".parse().expect("literal")).await
    }

    async fn start_at(name: &'static str, addr: SocketAddr) -> Self {
        let mut node = Self {
            name,
            addr,
            state: Arc::default(),
            accept: None,
            conns: Arc::default(),
        };
        node.restart().await;
        node
    }

    fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// (Re)starts listening on the node's address.
    async fn restart(&mut self) {
        assert!(self.accept.is_none(), "already running");
        let listener = bind(self.addr).await;
        self.addr = listener.local_addr().expect("address");
        let (name, state, conns) = (self.name, self.state.clone(), self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // Counted from accept, not from when the task first runs.
                let open = Open::new(&state);
                let state = state.clone();
                let conn = tokio::spawn(async move {
                    let _open = open;
                    let svc = service_fn(move |req| node_answer(name, state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
                conns.lock().unwrap().push(conn);
            }
        }));
    }

    /// Closes the listener and every connection, and returns once they are
    /// closed. Returns how many connections were open.
    async fn kill(&mut self) -> usize {
        let accept = self.accept.take().expect("running");
        accept.abort();
        let _ = accept.await;
        let open = self.state.open.load(Ordering::SeqCst);
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for c in &conns {
            c.abort();
        }
        for c in conns {
            let _ = c.await;
        }
        open
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

async fn node_answer(
    name: &'static str,
    state: Arc<NodeState>,
    req: Request<Incoming>,
) -> Result<Response<BoxedBody>, std::convert::Infallible> {
    let probe = req
        .headers()
        .get(http::header::USER_AGENT)
        .is_some_and(|v| v == "portcullis-health-check");
    if probe {
        state.probes.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(empty()));
    }
    let ms = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok());
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    state.served.fetch_add(1, Ordering::SeqCst);
    let body = json!({ "backend": name, "path": req.uri().path() }).to_string();
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Reads a request head (up to the blank line); `None` if the peer closed
/// first.
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Reads until the peer closes; returns how long that took.
async fn until_closed(tcp: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

/// A plain TCP listener on 127.0.0.1 that runs `f` on every connection
/// and counts the connections accepted.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Listener {
    async fn start<F, Fut>(f: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(f(tcp));
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- connection flood

/// Outcome: with `server.max_connections` idle connections open, every
/// further one is accepted and closed at once (no byte sent, well under a
/// second), counted as `connections_total{result="limit"}` and not as
/// active; a real client is refused the same way; the admin API answers
/// throughout. Slots come back when flood connections close, and at the
/// PROXY read timeout for those that never send a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_refused_cheaply_and_the_proxy_stays_responsive() {
    const LIMIT: usize = 4;
    const EXCESS: usize = 20;
    let es = Killable::start("es").await;
    let mut o = Options::new(Src::File(snapshot(1, &[("open0001", &[es.addr])])));
    o.max_connections = LIMIT;
    // Long enough for the checks below; short enough to see it end the flood.
    o.pp_read_timeout = "3s";
    let p = Instance::ready(&o).await;
    let active = |m: &Metrics| m.sum("portcullis_connections_active", &[]);
    let refused = |m: &Metrics| m.sum("portcullis_connections_total", &[("result", "limit")]);

    // Fill every slot with idle connections that never send a byte.
    let flood_started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(Raw::connect(p.data, None).await);
    }
    p.until_metrics("every slot taken", |m| active(m) == LIMIT as f64)
        .await;

    // Past the limit: accepted and closed at once, nothing sent back.
    for _ in 0..EXCESS {
        let mut raw = Raw::connect(p.data, None).await;
        let closed = raw.closed_within(Duration::from_secs(2)).await;
        assert_eq!(closed.bytes_received, 0);
        assert!(closed.after < Duration::from_secs(1), "{closed:?}");
    }
    // A real client is refused the same way.
    let refused_client = p.client().try_connect().await;
    assert!(refused_client.is_err(), "served past the limit");

    // The admin API is not behind the data-plane limit.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(p.admin_get(path).await.status, StatusCode::OK, "{path}");
    }
    let m = p.metrics().await;
    assert_eq!(refused(&m), (EXCESS + 1) as f64, "{}", m.text);
    assert_eq!(active(&m), LIMIT as f64, "{}", m.text);
    assert_eq!(es.served(), 0);

    // Half the flood goes away: its slots serve real clients again.
    held.truncate(LIMIT / 2);
    p.until_metrics("released slots are free", |m| {
        active(m) == (LIMIT / 2) as f64
    })
    .await;
    let mut conn = p.conn().await;
    assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");
    drop(conn);

    // The rest never sends a PROXY header: closed at the read timeout.
    for raw in &mut held {
        let closed = raw.closed_within(WAIT).await;
        assert_eq!(closed.bytes_received, 0);
    }
    let held_for = flood_started.elapsed();
    assert!(held_for >= Duration::from_millis(2900), "{held_for:?}");
    let m = p.metrics().await;
    let timeouts = m.sum(
        "portcullis_proxy_protocol_errors_total",
        &[("kind", "timeout")],
    );
    assert_eq!(timeouts, (LIMIT / 2) as f64, "{}", m.text);
    assert_eq!(refused(&m), (EXCESS + 1) as f64, "no more refusals");
    let mut conn = p.conn().await;
    assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");
    assert_eq!(es.served(), 2);
}

// ---------------------------------------------------------------- backend nodes

/// Client requests in a loop on `WORKERS` keep-alive connections.
#[derive(Default)]
struct Tally {
    ok: BTreeMap<String, usize>,
    /// Local error answers: status and body.
    failed: Vec<(StatusCode, Option<String>, String)>,
    /// The client connection itself failed.
    transport: Vec<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(p: &Instance, id: &'static str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let workers = (0..workers)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                let client = p.client();
                tokio::spawn(async move {
                    let mut conn = client.connect().await;
                    while !stop.load(Ordering::SeqCst) {
                        let req = conn
                            .request(Method::GET, &host(id), "/load?ms=20")
                            .body(empty())
                            .expect("request");
                        let sent = conn.send(req).await;
                        let mut t = tally.lock().unwrap();
                        match sent {
                            Ok(r) if r.status == StatusCode::OK => {
                                *t.ok.entry(r.echo().backend().to_owned()).or_default() += 1;
                            }
                            Ok(r) => {
                                let ct = r.content_type().map(str::to_owned);
                                t.failed.push((r.status, ct, r.text()));
                            }
                            Err(e) => t.transport.push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            tally,
            workers,
        }
    }

    fn ok(&self, backend: &str) -> usize {
        self.tally
            .lock()
            .unwrap()
            .ok
            .get(backend)
            .copied()
            .unwrap_or(0)
    }

    fn failed(&self) -> usize {
        self.tally.lock().unwrap().failed.len()
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            within("load worker to stop", w).await.expect("load worker");
        }
        Arc::try_unwrap(self.tally)
            .ok()
            .expect("workers done")
            .into_inner()
            .unwrap()
    }
}

/// Sends `GET /` to `id` on `conn` until the status is `want`, at most
/// for `limit`; every other answer must be one of `meanwhile`.
async fn until_status(
    conn: &mut Conn,
    id: &str,
    want: StatusCode,
    meanwhile: &[StatusCode],
    limit: Duration,
) -> Reply {
    let deadline = Instant::now() + limit;
    loop {
        let r = get(conn, id).await;
        if r.status == want {
            return r;
        }
        assert!(meanwhile.contains(&r.status), "{}: {}", r.status, r.text());
        assert!(Instant::now() < deadline, "no {want} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`until_status`] for `solo0001`, whose only node is `a`: until `a`
/// serves it again.
async fn until_solo_served(conn: &mut Conn, meanwhile: &[StatusCode], limit: Duration) -> Reply {
    until_status(conn, "solo0001", StatusCode::OK, meanwhile, limit).await
}

/// [`until_status`] for `new0001`, which only the second snapshot has:
/// unknown (404) until that snapshot is applied.
async fn until_new0001_served(conn: &mut Conn) -> Reply {
    until_status(
        conn,
        "new0001",
        StatusCode::OK,
        &[StatusCode::NOT_FOUND],
        Duration::from_secs(8),
    )
    .await
}

/// Outcome: killing node `a` of a two-node resource under load fails only
/// requests on connections `a` had open (each with a 502 JSON answer); the
/// rest are served by `b`. Repeated connect failures eject `a`, which a
/// resource with no other node shows as 503. When `a` comes back it gets
/// requests again once its backoff (at most `eject_max`) ends, and nothing
/// fails from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_under_load_fails_only_its_open_requests_and_rejoins_after_restart() {
    const WORKERS: usize = 4;
    let mut a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let mut o = Options::new(Src::File(snapshot(
        1,
        &[("pair0001", &[a.addr, b.addr]), ("solo0001", &[a.addr])],
    )));
    o.eject_after_failures = 2;
    o.eject_base = "300ms";
    o.eject_max = "1s";
    let p = Instance::ready(&o).await;

    let load = Load::start(&p, "pair0001", WORKERS);
    eventually(WAIT, "both nodes serve the load", || {
        let both = load.ok("a") >= 5 && load.ok("b") >= 5;
        async move { both }
    })
    .await;
    assert_eq!(load.failed(), 0, "errors before the kill");

    let open_at_kill = a.kill().await;
    let b_at_kill = load.ok("b");
    // Ejected: the resource whose only node is `a` has no healthy node.
    let mut solo = p.conn().await;
    let r = until_status(
        &mut solo,
        "solo0001",
        StatusCode::SERVICE_UNAVAILABLE,
        &[StatusCode::BAD_GATEWAY],
        Duration::from_secs(3),
    )
    .await;
    r.assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    eventually(WAIT, "b carries the load", || {
        let moved = load.ok("b") >= b_at_kill + 20;
        async move { moved }
    })
    .await;
    let failed_while_down = load.failed();

    let a_before = a.served();
    a.restart().await;
    let restarted = Instant::now();
    eventually(Duration::from_secs(5), "a serves again", || {
        let back = a.served() > a_before;
        async move { back }
    })
    .await;
    // The backoff is capped at `eject_max`.
    assert!(restarted.elapsed() < Duration::from_secs(3));
    until_solo_served(
        &mut solo,
        &[StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_GATEWAY],
        Duration::from_secs(3),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tally = load.stop().await;

    assert!(tally.transport.is_empty(), "{:?}", tally.transport);
    assert!(
        tally.failed.len() <= open_at_kill,
        "{} failures, but a had only {open_at_kill} connections open: {:?}",
        tally.failed.len(),
        tally.failed
    );
    for (status, ct, body) in &tally.failed {
        assert_eq!(*status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(ct.as_deref(), Some("application/json"));
        assert_eq!(serde_json::from_str::<Value>(body).unwrap()["ok"], false);
    }
    assert_eq!(
        tally.failed.len(),
        failed_while_down,
        "failures after the restart"
    );
    let m = p.metrics().await;
    assert!(no_healthy_backend(&m) >= 1.0, "{}", m.text);
}

/// Outcome: with active checks, a dead node is ejected by the check before
/// any client request tries it: no 502, no connect error; 503 where it was
/// the only node, the other node elsewhere. When it comes back, the check
/// restores it within a few intervals, long before its 30 s backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_eject_a_dead_node_before_clients_hit_it_and_restore_it() {
    let mut a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let mut o = Options::new(Src::File(snapshot(
        1,
        &[("pair0001", &[a.addr, b.addr]), ("solo0001", &[a.addr])],
    )));
    o.health_check_interval = Some("100ms");
    o.eject_after_failures = 1000;
    o.eject_base = "30s";
    o.eject_max = "30s";
    let p = Instance::ready(&o).await;
    let mut solo = p.conn().await;
    let mut pair = p.conn().await;
    assert_eq!(get(&mut solo, "solo0001").await.echo().backend(), "a");
    eventually(WAIT, "a is checked", || {
        let checked = a.probes() >= 2;
        async move { checked }
    })
    .await;

    a.kill().await;
    // Ten check intervals, no client traffic.
    tokio::time::sleep(Duration::from_secs(1)).await;
    get(&mut solo, "solo0001")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    for _ in 0..4 {
        assert_eq!(get(&mut pair, "pair0001").await.echo().backend(), "b");
    }
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "connect"), 0.0, "{}", m.text);
    assert_eq!(no_healthy_backend(&m), 1.0, "{}", m.text);

    a.restart().await;
    let r = until_solo_served(
        &mut solo,
        &[StatusCode::SERVICE_UNAVAILABLE],
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r.echo().backend(), "a");
    let mut seen = BTreeMap::new();
    for _ in 0..4 {
        *seen
            .entry(get(&mut pair, "pair0001").await.echo().backend().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "round-robin over both again: {seen:?}");
    assert_eq!(upstream_errors(&p.metrics().await, "connect"), 0.0);
}

/// Outcome: a resource's only node is down: `eject_after_failures`
/// requests get 502 (connect failed), then every request gets 503 without
/// trying the node, for the whole ejection period, even across the pool's
/// idle sweeps; once it ends, the restarted node is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_dead_node_gets_502_then_503_for_the_whole_ejection_then_serves() {
    let addr = unused_port();
    let mut o = Options::new(Src::File(snapshot(1, &[("solo0001", &[addr])])));
    o.eject_after_failures = 2;
    o.eject_base = "3s";
    o.eject_max = "3s";
    // The pool sweeps idle connections every second.
    o.upstream_idle_timeout = "1s";
    let p = Instance::ready(&o).await;
    let mut conn = p.conn().await;

    for _ in 0..2 {
        get(&mut conn, "solo0001")
            .await
            .assert_local(StatusCode::BAD_GATEWAY, None);
    }
    let ejected = Instant::now();
    get(&mut conn, "solo0001")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    // Past at least one sweep: still ejected, the node is not tried.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get(&mut conn, "solo0001")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);

    let node = Killable::start_at("a", addr).await;
    let r = until_solo_served(
        &mut conn,
        &[StatusCode::SERVICE_UNAVAILABLE],
        Duration::from_secs(5),
    )
    .await;
    let after = ejected.elapsed();
    assert_eq!(r.echo().backend(), "a");
    assert!(
        after >= Duration::from_millis(2800),
        "served {after:?} into a 3 s ejection"
    );
    assert_eq!(node.served(), 1);
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "connect"), 2.0, "{}", m.text);
    assert!(no_healthy_backend(&m) >= 2.0, "{}", m.text);
}

/// Outcome: a backend that accepts the connection and never answers gets
/// the client a 504 JSON answer after `upstream.response_timeout`; the
/// proxy closes that backend connection (never reuses it), does not eject
/// the node for it, and the client connection serves the next request.
/// Over HTTP/2 other streams are answered while one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_never_answers_gets_504_and_the_client_connection_lives_on() {
    let closed = Arc::new(AtomicUsize::new(0));
    let count = closed.clone();
    let silent = Listener::start(move |mut tcp| {
        let count = count.clone();
        async move {
            until_closed(&mut tcp).await;
            count.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let es = Killable::start("es").await;
    let mut o = Options::new(Src::File(snapshot(
        1,
        &[("silent0001", &[silent.addr]), ("open0001", &[es.addr])],
    )));
    o.response_timeout = "500ms";
    let p = Instance::ready(&o).await;

    let mut conn = p.conn().await;
    for i in 1..=2 {
        let started = Instant::now();
        let r = get(&mut conn, "silent0001").await;
        let took = started.elapsed();
        r.assert_local(StatusCode::GATEWAY_TIMEOUT, None);
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "504 after {took:?}"
        );
        // Same connection, another deployment: served.
        assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");
        assert!(!conn.is_closed());
        assert_eq!(silent.accepted(), i, "a timed-out connection was reused");
        let closed = closed.clone();
        eventually(WAIT, "the proxy closes the silent connection", || {
            let n = closed.load(Ordering::SeqCst);
            async move { n == i }
        })
        .await;
    }

    // HTTP/2: a stream stuck on the silent backend holds up no other.
    let h2 = p.client().h2().connect().await;
    let mut tx = h2.h2_sender();
    let stuck = tokio::spawn({
        let req = h2
            .request(Method::GET, &host("silent0001"), "/")
            .body(empty())
            .unwrap();
        let mut tx = tx.clone();
        async move { within("stuck stream", tx.send_request(req)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let req = h2
        .request(Method::GET, &host("open0001"), "/")
        .body(empty())
        .unwrap();
    let ok = within("other stream", tx.send_request(req)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(400));
    assert!(!stuck.is_finished(), "the stuck stream answered early");
    let r = within("stuck stream", stuck).await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);

    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "timeout"), 3.0, "{}", m.text);
    assert_eq!(no_healthy_backend(&m), 0.0, "{}", m.text);
}

/// How the resetting backend answers, by request path.
async fn reset_backend(mut tcp: TcpStream) {
    let Some(head) = read_head(&mut tcp).await else {
        return;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let partial = vec![b'x'; 1000];
    let written = match path.as_str() {
        "/content-length" => {
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
            out.extend_from_slice(&partial);
            tcp.write_all(&out).await
        }
        "/chunked" => {
            let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n".to_vec();
            out.extend_from_slice(&partial);
            out.extend_from_slice(b"\r\n");
            tcp.write_all(&out).await
        }
        _ => Ok(()), // "/early": nothing at all
    };
    if written.is_ok() && path != "/early" {
        // Let the proxy pass the head and the first bytes on.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Linger 0: close with RST, as a crashing process or a middlebox does.
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
}

/// Reads a response body to its end; returns the bytes and whether it
/// ended with an error rather than cleanly.
async fn read_body(body: Incoming) -> (usize, Option<String>) {
    let mut body = body;
    let mut bytes = 0;
    loop {
        match within("response body", body.frame()).await {
            None => return (bytes, None),
            Some(Err(e)) => return (bytes, Some(e.to_string())),
            Some(Ok(f)) => bytes += f.data_ref().map_or(0, Bytes::len),
        }
    }
}

/// Sends `GET path` to `host` on `conn` and checks that the response
/// starts (200) but its body ends in an error, never cleanly. Returns how
/// many body bytes arrived first.
async fn assert_body_aborted(conn: &mut Conn, host: &str, path: &str) -> usize {
    let req = conn.request(Method::GET, host, path).body(empty()).unwrap();
    let resp = conn.send_streaming(req).await.expect("head");
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let (bytes, error) = read_body(resp.into_body()).await;
    assert!(error.is_some(), "{path}: a clean end after {bytes} bytes");
    bytes
}

/// Outcome: a backend that resets the connection before answering gets
/// the client a 502 JSON answer on a connection that stays open. One that
/// resets mid-body (after the 200 head went out) aborts that response: an
/// HTTP/1.1 client sees the connection closed before the body completed,
/// an HTTP/2 client sees the stream reset, and neither ever sees a clean
/// short body. The next request is served, and no broken backend
/// connection is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_mid_response_aborts_that_response_and_the_next_is_served() {
    let resetter = Listener::start(reset_backend).await;
    let es = Killable::start("es").await;
    let o = Options::new(Src::File(snapshot(
        1,
        &[("reset0001", &[resetter.addr]), ("open0001", &[es.addr])],
    )));
    let p = Instance::ready(&o).await;
    let reset_host = host("reset0001");

    // Reset before any answer: 502, the client connection lives on.
    let mut conn = p.conn().await;
    let r = conn.get(&reset_host, "/early").await;
    r.assert_local(StatusCode::BAD_GATEWAY, None);
    assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "backend"), 1.0, "{}", m.text);

    for path in ["/content-length", "/chunked"] {
        // HTTP/1.1: the response is cut off and the connection closed.
        let mut conn = p.conn().await;
        let bytes = assert_body_aborted(&mut conn, &reset_host, path).await;
        assert!(bytes <= 1000, "{path}: {bytes}");
        eventually(WAIT, "the proxy closes the connection", || {
            let closed = conn.is_closed();
            async move { closed }
        })
        .await;

        // HTTP/2: only the stream is reset; the connection serves on.
        let mut h2 = p.client().h2().connect().await;
        assert_body_aborted(&mut h2, &reset_host, path).await;
        assert_eq!(get(&mut h2, "open0001").await.echo().backend(), "es");

        let mut fresh = p.conn().await;
        assert_eq!(get(&mut fresh, "open0001").await.echo().backend(), "es");
    }
    // One backend connection per request: none came back to the pool.
    assert_eq!(resetter.accepted(), 5);
}

// ---------------------------------------------------------------- snapshot source

/// A control plane that serves a snapshot, or accepts and never answers.
#[derive(Default)]
struct ControlPlane {
    /// `None`: hang.
    body: Option<(Bytes, &'static str)>,
    /// How long each hung request was held before the proxy closed it.
    held: Vec<Duration>,
    hanging_now: usize,
}

async fn control_plane(state: Arc<Mutex<ControlPlane>>) -> Listener {
    Listener::start(move |mut tcp| {
        let state = state.clone();
        async move {
            let Some(head) = read_head(&mut tcp).await else {
                return;
            };
            let body = state.lock().unwrap().body.clone();
            let Some((body, etag)) = body else {
                state.lock().unwrap().hanging_now += 1;
                let held = until_closed(&mut tcp).await;
                let mut s = state.lock().unwrap();
                s.hanging_now -= 1;
                s.held.push(held);
                return;
            };
            let head = head.to_ascii_lowercase();
            let out = if head.contains(&format!("if-none-match: {etag}")) {
                format!("HTTP/1.1 304 Not Modified\r\netag: {etag}\r\nconnection: close\r\n\r\n")
                    .into_bytes()
            } else {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\netag: {etag}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(&body);
                out
            };
            let _ = tcp.write_all(&out).await;
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// Outcome: while the snapshot URL accepts and never answers, each poll
/// gives up after `snapshot.fetch_timeout` (closing its connection), is
/// counted as `snapshot_reloads_total{result="unreadable"}`, and the
/// snapshot in force stays: ready, same version, requests served. When the
/// URL answers again, its new snapshot is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_snapshot_url_times_out_and_the_running_snapshot_stays() {
    let es = Killable::start("es").await;
    let v1 = snapshot(1, &[("open0001", &[es.addr])]);
    let v2 = snapshot(2, &[("open0001", &[es.addr]), ("new0001", &[es.addr])]);
    let cp_state = Arc::new(Mutex::new(ControlPlane {
        body: Some((Bytes::from(v1), "\"v1\"")),
        ..ControlPlane::default()
    }));
    let cp = control_plane(cp_state.clone()).await;
    let mut o = Options::new(Src::Url(format!("http://{}/snapshot", cp.addr)));
    o.fetch_timeout = "300ms";
    let p = Instance::ready(&o).await;
    let mut conn = p.conn().await;
    assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");

    cp_state.lock().unwrap().body = None;
    p.until_metrics("two polls time out", |m| reloads(m, "unreadable") >= 2.0)
        .await;

    // Still serving the snapshot in force.
    assert_eq!(p.admin_get("/readyz").await.status, StatusCode::OK);
    assert_eq!(p.snapshot_meta().await["version"], 1);
    assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");
    let mut fresh = p.conn().await;
    assert_eq!(get(&mut fresh, "open0001").await.echo().backend(), "es");
    get(&mut fresh, "new0001")
        .await
        .assert_local(StatusCode::NOT_FOUND, Some(UNKNOWN_BODY));
    {
        let s = cp_state.lock().unwrap();
        assert!(s.held.len() >= 2, "{:?}", s.held);
        for held in &s.held {
            assert!(
                *held >= Duration::from_millis(250) && *held < Duration::from_secs(2),
                "a fetch held {held:?}; fetch_timeout is 300ms"
            );
        }
        assert!(s.hanging_now <= 1, "{} fetches hang at once", s.hanging_now);
    }
    let m = p.metrics().await;
    assert_eq!(m.sum("portcullis_snapshot_version", &[]), 1.0);
    assert_eq!(reloads(&m, "applied"), 1.0, "{}", m.text);

    cp_state.lock().unwrap().body = Some((Bytes::from(v2), "\"v2\""));
    let r = until_new0001_served(&mut conn).await;
    assert_eq!(r.echo().backend(), "es");
    assert_eq!(p.snapshot_meta().await["version"], 2);
    assert_eq!(reloads(&p.metrics().await, "applied"), 2.0);
}

/// Outcome: a snapshot URL that hangs at boot, with no state directory:
/// `/healthz` answers, `/readyz` and the data plane say 503, and nothing is
/// forwarded, past the fetch timeout and for as long as it hangs; the
/// first snapshot the URL serves makes the proxy ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_url_hanging_at_boot_without_state_keeps_the_proxy_not_ready() {
    let es = Killable::start("es").await;
    let cp_state = Arc::new(Mutex::new(ControlPlane::default()));
    let cp = control_plane(cp_state.clone()).await;
    let mut o = Options::new(Src::Url(format!("http://{}/snapshot", cp.addr)));
    o.fetch_timeout = "300ms";
    let p = Instance::start(&o).await;

    // Several fetch timeouts later: still not ready.
    p.until_metrics("the boot fetch and a poll time out", |m| {
        reloads(m, "unreadable") >= 2.0
    })
    .await;
    assert_eq!(p.admin_get("/healthz").await.status, StatusCode::OK);
    p.admin_get("/readyz")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    let mut conn = p.conn().await;
    get(&mut conn, "open0001")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    assert_eq!(es.served(), 0);

    let v1 = snapshot(1, &[("open0001", &[es.addr])]);
    cp_state.lock().unwrap().body = Some((Bytes::from(v1), "\"v1\""));
    p.wait_ready(Duration::from_secs(8)).await;
    assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");
    assert_eq!(reloads(&p.metrics().await, "applied"), 1.0);
}

/// Outcome: a snapshot URL that hangs at boot, with a saved snapshot in
/// the state directory: the proxy waits out one `fetch_timeout` (not
/// ready), then serves the saved snapshot (`restored`), and applies the
/// URL's snapshot once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_url_hanging_at_boot_falls_back_to_the_state_dir_after_the_fetch_timeout() {
    let es = Killable::start("es").await;
    let state = TempDir::new();
    // What a previous run saved (the documented `snapshot.json`).
    state.write("snapshot.json", snapshot(1, &[("open0001", &[es.addr])]));
    let cp_state = Arc::new(Mutex::new(ControlPlane::default()));
    let cp = control_plane(cp_state.clone()).await;
    let mut o = Options::new(Src::Url(format!("http://{}/snapshot", cp.addr)));
    o.fetch_timeout = "2s";
    o.state_dir = Some(state.0.clone());

    let started = Instant::now();
    let p = Instance::start(&o).await;
    p.admin_get("/readyz")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    p.wait_ready(Duration::from_secs(6)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "ready after {took:?}");
    let meta = p.snapshot_meta().await;
    assert_eq!(meta["version"], 1, "{meta}");
    assert!(
        meta["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("state:")),
        "{meta}"
    );
    let mut conn = p.conn().await;
    assert_eq!(get(&mut conn, "open0001").await.echo().backend(), "es");
    let m = p.metrics().await;
    assert_eq!(reloads(&m, "restored"), 1.0, "{}", m.text);
    assert!(reloads(&m, "unreadable") >= 1.0, "{}", m.text);

    let v2 = snapshot(2, &[("open0001", &[es.addr]), ("new0001", &[es.addr])]);
    cp_state.lock().unwrap().body = Some((Bytes::from(v2), "\"v2\""));
    until_new0001_served(&mut conn).await;
    assert_eq!(p.snapshot_meta().await["version"], 2);
}

//! Heap allocations per proxied request (issue 10): one keep-alive TLS
//! HTTP/1.1 connection, PROXY v2 from 127.0.0.1, `GET` requests that are
//! forwarded to a backend (200, ~600-byte JSON body) and requests the
//! `ip` policy denies (403).
//!
//! ```text
//! cargo bench --bench allocs
//! PORTCULLIS_ALLOC_REQUESTS=50000 PORTCULLIS_ALLOC_ROUNDS=3 cargo bench --bench allocs
//! PORTCULLIS_ALLOC_TRACE=1 cargo bench --bench allocs     # call sites instead of totals
//! ```
//!
//! A counting global allocator counts only on the proxy's threads: the
//! proxy runs on a runtime of its own (multi-thread, one worker, in a
//! dedicated OS thread) whose `on_thread_start` marks its threads, blocking
//! pool included. The client and the backend share another runtime, on the
//! main thread; the log writer's worker thread is not marked either. What
//! is counted is therefore what the proxy does per request: PROXY/TLS
//! records, hyper server and client, routing, policy, forwarding, and the
//! access-log line (tracing-subscriber formats the event on the calling
//! thread, i.e. the proxy's; only the final write happens on the worker).
//!
//! Counted: `alloc` and `alloc_zeroed` as allocations, `realloc`
//! separately; bytes are the sizes passed to `alloc`/`alloc_zeroed` plus
//! the growth of each `realloc`. Frees are not counted.
//!
//! Each case warms up first (`PORTCULLIS_ALLOC_WARMUP`, default 2000
//! requests: pools, buffers and caches filled), then sends
//! `PORTCULLIS_ALLOC_REQUESTS` (default 20 000) requests, reading each full
//! response, and reports (count after − count before) / requests. Run
//! without `--bench` (`cargo test --benches`), it is a smoke run of 200.
//!
//! With `PORTCULLIS_ALLOC_TRACE=1`, each case instead sends
//! `PORTCULLIS_ALLOC_TRACE_REQUESTS` (default 20) requests after the
//! warm-up while every counted allocation captures a backtrace, and prints
//! the distinct call sites (`PORTCULLIS_ALLOC_TRACE_DEPTH` frames, default
//! 6) with their count per request.
//!
//! Everything is on loopback, port 0; every network wait is bounded, and a
//! watchdog ends the process if the whole run takes longer than 10 minutes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portcullis::reload::Store;
use portcullis::server::Server;
use portcullis::shutdown::Trigger;
use portcullis_test_kit::TempDir;
use portcullis_test_kit::harness::{ProxyConfig, client_tls};
use portcullis_test_kit::proxy::V2;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- allocator

/// Forwards to `System`; counts on threads marked as the proxy's.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Whether counted allocations capture a backtrace.
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACES: Mutex<Vec<Trace>> = Mutex::new(Vec::new());

struct Flags {
    /// A thread of the proxy's runtime: count its allocations.
    proxy: Cell<bool>,
    /// Inside the tracing hook: the hook's own allocations (the backtrace,
    /// the `TRACES` vector) are neither counted nor traced.
    busy: Cell<bool>,
}

thread_local! {
    // `const`, no destructor: reading it never allocates.
    static FLAGS: Flags = const {
        Flags {
            proxy: Cell::new(false),
            busy: Cell::new(false),
        }
    };
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Alloc,
    Realloc,
}

struct Trace {
    kind: Kind,
    bytes: usize,
    backtrace: Backtrace,
}

fn mark_proxy_thread() {
    FLAGS.with(|f| f.proxy.set(true));
}

#[inline]
fn note(kind: Kind, bytes: usize) {
    let counted = FLAGS
        .try_with(|f| f.proxy.get() && !f.busy.get())
        .unwrap_or(false);
    if !counted {
        return;
    }
    match kind {
        Kind::Alloc => ALLOCS.fetch_add(1, Ordering::Relaxed),
        Kind::Realloc => REALLOCS.fetch_add(1, Ordering::Relaxed),
    };
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        capture(kind, bytes);
    }
}

#[cold]
fn capture(kind: Kind, bytes: usize) {
    // Set before anything here allocates; `note` skips while it is set, so
    // the capture cannot recurse.
    if FLAGS.try_with(|f| f.busy.replace(true)).unwrap_or(true) {
        return;
    }
    let backtrace = Backtrace::force_capture();
    if let Ok(mut traces) = TRACES.lock() {
        traces.push(Trace {
            kind,
            bytes,
            backtrace,
        });
    }
    let _ = FLAGS.try_with(|f| f.busy.set(false));
}

// SAFETY (all methods): each forwards its arguments unchanged to `System`,
// which upholds the `GlobalAlloc` contract; the counting around it neither
// touches the memory nor allocates (a `const` thread-local and atomics,
// or, in trace mode, allocations made under the re-entrancy guard).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(Kind::Alloc, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(Kind::Alloc, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(Kind::Realloc, new_size.saturating_sub(layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Counts {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
}

fn counts() -> Counts {
    Counts {
        allocs: ALLOCS.load(Ordering::SeqCst),
        reallocs: REALLOCS.load(Ordering::SeqCst),
        bytes: BYTES.load(Ordering::SeqCst),
    }
}

// ---------------------------------------------------------------- settings

/// Bound on every single network wait.
const WAIT: Duration = Duration::from_secs(10);
/// The whole run.
const WATCHDOG: Duration = Duration::from_secs(600);
/// After the last response of a measured batch, for the proxy to finish
/// what it does after the response is written (access log, pool return).
const SETTLE: Duration = Duration::from_millis(50);

const ZONE: &str = "es.test";
const FORWARDED_ID: &str = "fwd0001";
const DENIED_ID: &str = "deny0001";
const PATH: &str = "/_cluster/health";
/// The 403 body (SPEC §6).
const FORBIDDEN_BODY: &str = r#"{"ok":false,"message":"Forbidden due to traffic filtering. Please see the Elastic documentation on Traffic Filtering for more information."}"#;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

struct Settings {
    warmup: usize,
    requests: usize,
    rounds: usize,
    trace: Option<TraceSettings>,
}

struct TraceSettings {
    requests: usize,
    depth: usize,
}

impl Settings {
    /// Under `cargo bench` (which passes `--bench`), the defaults above;
    /// under `cargo test --benches`, a quick smoke run of a few requests.
    fn from_env() -> Self {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let (warmup, requests) = if smoke { (20, 200) } else { (2000, 20_000) };
        let trace = std::env::var("PORTCULLIS_ALLOC_TRACE")
            .is_ok_and(|v| !v.is_empty() && v != "0")
            .then(|| TraceSettings {
                requests: env_usize("PORTCULLIS_ALLOC_TRACE_REQUESTS", 20).max(1),
                depth: env_usize("PORTCULLIS_ALLOC_TRACE_DEPTH", 6).max(1),
            });
        Self {
            warmup: env_usize("PORTCULLIS_ALLOC_WARMUP", warmup),
            requests: env_usize("PORTCULLIS_ALLOC_REQUESTS", requests).max(1),
            rounds: env_usize("PORTCULLIS_ALLOC_ROUNDS", 1).max(1),
            trace,
        }
    }
}

// ---------------------------------------------------------------- logging

/// The configurations measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogSetup {
    /// `[log] access = true`: lines formatted by the access log (on the
    /// request's worker), written by its own thread into `io::sink()`.
    AccessOn,
    /// `[log] access = false`.
    AccessOff,
}

impl LogSetup {
    const ALL: [Self; 2] = [Self::AccessOn, Self::AccessOff];

    fn name(self) -> &'static str {
        match self {
            Self::AccessOn => "access log on",
            Self::AccessOff => "access log off",
        }
    }

    /// Where access-log lines go: formatted on the proxy's worker (so
    /// counted) and written by the access log's own thread into a sink.
    fn sink(self) -> Option<portcullis::access_log::Sink> {
        match self {
            Self::AccessOn => Some(Box::new(std::io::sink())),
            Self::AccessOff => None,
        }
    }

    /// The `[log]` section of the proxy's configuration.
    fn toml(self) -> &'static str {
        match self {
            Self::AccessOn => "[log]\naccess = true\n",
            Self::AccessOff => "[log]\naccess = false\n",
        }
    }
}

/// What `src/main.rs` `init_logging` installs for `--log-format text`,
/// writing to `io::sink()` instead of stdout (and `info` regardless of
/// `RUST_LOG`). Installed once for the whole process, as in production;
/// keep the guard alive until the end.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking(std::io::sink());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("info"))
        .with_writer(writer)
        .with_ansi(false)
        .init();
    guard
}

// ---------------------------------------------------------------- backend

/// ~600 bytes of JSON, like a small cluster-health answer.
fn backend_body() -> Bytes {
    let mut body = String::from(
        r#"{"cluster_name":"bench","status":"green","timed_out":false,"number_of_nodes":3,"number_of_data_nodes":3,"active_primary_shards":42,"active_shards":84,"relocating_shards":0,"initializing_shards":0,"unassigned_shards":0,"delayed_unassigned_shards":0,"number_of_pending_tasks":0,"number_of_in_flight_fetch":0,"task_max_waiting_in_queue_millis":0,"active_shards_percent_as_number":100.0,"nodes":["#,
    );
    for i in 0..5 {
        let _ = write!(
            body,
            r#"{}{{"name":"instance-000000000{i}","zone":"us-east-1a"}}"#,
            if i == 0 { "" } else { "," }
        );
    }
    body.push_str("]}");
    Bytes::from(body)
}

/// An HTTP/1.1 server on `127.0.0.1:0` answering every request with 200
/// and `body`; runs on the caller's (uncounted) runtime.
async fn start_backend(body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let mut resp = Response::new(Full::new(body.clone()));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------- proxy

fn snapshot(backend: SocketAddr) -> String {
    serde_json::json!({
        "version": 1,
        "deployments": [
            { "id": FORWARDED_ID, "alias": "fwd", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [backend.to_string()] } },
              "policies": ["loopback"] },
            { "id": DENIED_ID, "alias": "deny", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [backend.to_string()] } },
              "policies": ["office"] },
        ],
        "policies": [
            { "id": "loopback", "type": "ip", "region": "aws-us-east-1",
              "rules": [ { "source": "127.0.0.1/32" } ] },
            { "id": "office", "type": "ip", "region": "aws-us-east-1",
              "rules": [ { "source": "203.0.113.0/24" } ] },
        ],
    })
    .to_string()
}

/// The real proxy on `127.0.0.1:0`, on its own counted runtime and thread.
struct Proxy {
    addr: SocketAddr,
    trigger: Trigger,
    thread: std::thread::JoinHandle<()>,
    _dir: TempDir,
}

impl Proxy {
    /// As the harness's `TestProxy::start` does it.
    fn start(backend: SocketAddr, log: LogSetup) -> Self {
        let dir = TempDir::new();
        let snapshot = snapshot(backend);
        let snapshot_path = dir.write("snapshot.json", &snapshot);
        let settings = ProxyConfig::new(&dir)
            .set("snapshot.path", snapshot_path.display().to_string())
            .merge(log.toml())
            .settings();
        let store = Arc::new(Store::new());
        let loaded = portcullis::reload::prepare(snapshot.as_bytes(), "bench", settings.policy)
            .unwrap_or_else(|e| panic!("bench snapshot is invalid: {e}"));
        store.apply(loaded).expect("snapshot applies");
        let (trigger, shutdown) = portcullis::shutdown::channel();

        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || {
                mark_proxy_thread();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("proxy-worker")
                    .on_thread_start(mark_proxy_thread)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let server = Server::bind(
                        &settings,
                        store,
                        &portcullis::metrics::registry(),
                        log.sink(),
                    )
                    .expect("bind proxy");
                    let _ = tx.send(server.local_addrs()[0]);
                    // Ends when the trigger fires (or the watchdog does).
                    let _ = tokio::spawn(server.run(shutdown)).await;
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("spawn proxy thread");
        let addr = rx.recv_timeout(WAIT).expect("proxy did not start");
        Self {
            addr,
            trigger,
            thread,
            _dir: dir,
        }
    }

    fn stop(self) {
        self.trigger.drain();
        self.trigger.abort();
        let deadline = Instant::now() + WAIT;
        while !self.thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "proxy did not stop within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.thread.join();
    }
}

// ---------------------------------------------------------------- client

async fn bounded<T, E: std::fmt::Display>(what: &str, f: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: nothing within {WAIT:?}"),
    }
}

/// One keep-alive HTTP/1.1 connection to one deployment host.
struct Client {
    host: String,
    sender: SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    expect: StatusCode,
    expect_len: usize,
}

impl Client {
    async fn connect(
        proxy: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        id: &str,
        expect: StatusCode,
        expect_len: usize,
    ) -> Self {
        let host = format!("{id}.{ZONE}");
        let mut tcp = bounded("TCP connect", TcpStream::connect(proxy)).await;
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let header = V2::proxy(
            (Ipv4Addr::LOCALHOST, 40000).into(),
            (Ipv4Addr::LOCALHOST, 9243).into(),
        )
        .build();
        bounded("write PROXY header", tcp.write_all(&header)).await;
        let name = ServerName::try_from(host.clone()).expect("valid SNI");
        let stream = bounded(
            "TLS handshake",
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
        )
        .await;
        let (sender, conn) = bounded(
            "HTTP/1.1 handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Self {
            host,
            sender,
            driver,
            expect,
            expect_len,
        }
    }

    /// `GET`, the whole response read and checked.
    async fn get(&mut self) {
        bounded(
            "connection ready (closed by the proxy?)",
            self.sender.ready(),
        )
        .await;
        let req = Request::get(PATH)
            .header(http::header::HOST, &self.host)
            .header(http::header::USER_AGENT, "portcullis-allocs-bench")
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .expect("request");
        let resp = bounded("response head", self.sender.send_request(req)).await;
        let status = resp.status();
        let body = bounded("response body", resp.into_body().collect())
            .await
            .to_bytes();
        assert_eq!(
            (status, body.len()),
            (self.expect, self.expect_len),
            "{}: {}",
            self.host,
            String::from_utf8_lossy(&body)
        );
    }

    async fn run(&mut self, n: usize) {
        for _ in 0..n {
            self.get().await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

// ---------------------------------------------------------------- measuring

/// Per request: allocations, reallocations, bytes.
#[derive(Clone, Copy)]
struct PerRequest {
    allocs: f64,
    reallocs: f64,
    bytes: f64,
}

async fn measure(client: &mut Client, n: usize) -> PerRequest {
    let before = counts();
    client.run(n).await;
    tokio::time::sleep(SETTLE).await;
    let after = counts();
    let per = |a: u64, b: u64| (a - b) as f64 / n as f64;
    PerRequest {
        allocs: per(after.allocs, before.allocs),
        reallocs: per(after.reallocs, before.reallocs),
        bytes: per(after.bytes, before.bytes),
    }
}

async fn trace(client: &mut Client, n: usize) -> Vec<Trace> {
    if let Ok(mut t) = TRACES.lock() {
        t.clear();
    }
    // Let the previous request's tail (log line, pool return) finish.
    tokio::time::sleep(SETTLE).await;
    TRACING.store(true, Ordering::SeqCst);
    client.run(n).await;
    tokio::time::sleep(SETTLE).await;
    TRACING.store(false, Ordering::SeqCst);
    TRACES
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default()
}

/// One frame of a rendered backtrace: function (generic arguments
/// dropped) and `file:line`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Frame {
    symbol: String,
    at: String,
    /// In the Rust standard library (`/rustc/<hash>/library/...`).
    library: bool,
}

fn frames(backtrace: &Backtrace) -> Vec<Frame> {
    let text = backtrace.to_string();
    let mut out: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(at) = line.strip_prefix("at ") {
            if let Some(last) = out.last_mut() {
                last.library = at.starts_with("/rustc/");
                last.at = shorten_path(at);
            }
        } else if let Some((index, symbol)) = line.split_once(": ")
            && index.chars().all(|c| c.is_ascii_digit())
        {
            out.push(Frame {
                symbol: drop_generics(symbol),
                at: String::new(),
                library: false,
            });
        }
    }
    out
}

/// `a::b<T, U>::c<V>` → `a::b::c`; a leading `<T as Trait>` is kept.
fn drop_generics(symbol: &str) -> String {
    let mut out = String::with_capacity(symbol.len());
    let mut skip = 0usize;
    for c in symbol.chars() {
        if skip > 0 {
            match c {
                '<' => skip += 1,
                '>' => skip -= 1,
                _ => {}
            }
            continue;
        }
        if c == '<'
            && out
                .chars()
                .last()
                .is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '}')
        {
            skip = 1;
            continue;
        }
        out.push(c);
    }
    out
}

/// `crate-1.2.3/src/x.rs:12`, `src/x.rs:12`, `alloc/src/x.rs:12`.
fn shorten_path(at: &str) -> String {
    // Drop the column.
    let at = match at.rsplit_once(':') {
        Some((rest, col)) if col.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => at,
    };
    if let Some(i) = at.find("/index.crates.io-") {
        let rest = &at[i + 1..];
        return rest.split_once('/').map_or(rest, |(_, r)| r).to_owned();
    }
    if let Some(i) = at.find("/library/") {
        return at[i + "/library/".len()..].to_owned();
    }
    at.trim_start_matches("./").to_owned()
}

/// A call site: the last standard-library frame above the allocator (what
/// kind of allocation: `to_vec`, `Box::new`, `format`, ...) and the first
/// `depth` frames outside the standard library above it.
fn site(trace: &Trace, depth: usize) -> (Kind, Option<Frame>, Vec<Frame>) {
    let all = frames(&trace.backtrace);
    // Skip the capture itself and the allocator shim.
    let start = all
        .iter()
        .position(|f| f.symbol.starts_with("__rust_") || f.symbol.starts_with("__rustc::"))
        .map_or(0, |i| i + 1);
    let rest = &all[start..];
    let first_own = rest.iter().position(|f| !f.library).unwrap_or(rest.len());
    let via = first_own.checked_sub(1).map(|i| rest[i].clone());
    let stack = rest[first_own..]
        .iter()
        .filter(|f| !f.library)
        .take(depth)
        .cloned()
        .collect();
    (trace.kind, via, stack)
}

fn report_traces(what: &str, traces: &[Trace], requests: usize, depth: usize) {
    type Key = (Kind, Option<Frame>, Vec<Frame>);
    let mut sites: HashMap<Key, (usize, usize)> = HashMap::new();
    for t in traces {
        let e = sites.entry(site(t, depth)).or_default();
        e.0 += 1;
        e.1 += t.bytes;
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    // Most frequent first, then largest; ties in a stable (textual) order.
    let text = |((_, via, stack), _): &(Key, (usize, usize))| {
        let via = via.as_ref().map(|f| f.at.as_str()).unwrap_or_default();
        let stack: Vec<&str> = stack.iter().map(|f| f.at.as_str()).collect();
        format!("{via} {}", stack.join(" "))
    };
    sites.sort_by(|a, b| {
        (b.1.0, b.1.1)
            .cmp(&(a.1.0, a.1.1))
            .then_with(|| text(a).cmp(&text(b)))
    });
    println!(
        "\n### {what}: {:.2} counted allocations per request ({} over {requests} requests), {} call sites\n",
        traces.len() as f64 / requests as f64,
        traces.len(),
        sites.len()
    );
    println!("```text");
    for ((kind, via, stack), (count, bytes)) in &sites {
        println!(
            "{:>6.2}/req  {:>7.0} B/req  {}{}",
            *count as f64 / requests as f64,
            *bytes as f64 / requests as f64,
            match kind {
                Kind::Alloc => "alloc",
                Kind::Realloc => "realloc",
            },
            via.as_ref()
                .map(|f| format!(" via {} ({})", f.symbol, f.at))
                .unwrap_or_default()
        );
        for f in stack {
            println!("        {}  ({})", f.symbol, f.at);
        }
    }
    println!("```");
}

struct Row {
    log: LogSetup,
    /// The kind of request (`cases` in `main`).
    case: &'static str,
    rounds: Vec<PerRequest>,
}

fn range(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = (format!("{lo:.decimals$}"), format!("{hi:.decimals$}"));
    if lo == hi { lo } else { format!("{lo}–{hi}") }
}

fn print_table(rows: &[Row], settings: &Settings) {
    println!(
        "\nAllocations on the proxy's threads per request (keep-alive TLS HTTP/1.1, \
         {} requests per case after {} warm-up, {} round(s); ranges over rounds):\n",
        settings.requests, settings.warmup, settings.rounds
    );
    println!("| configuration | request | allocations/req | reallocs/req | bytes/req |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.log.name(),
            row.case,
            range(row.rounds.iter().map(|r| r.allocs), 2),
            range(row.rounds.iter().map(|r| r.reallocs), 2),
            range(row.rounds.iter().map(|r| r.bytes), 0),
        );
    }
}

fn main() {
    let settings = Settings::from_env();
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| {
            std::thread::sleep(WATCHDOG);
            eprintln!("allocs bench: still running after {WATCHDOG:?}; giving up");
            std::process::exit(2);
        })
        .expect("spawn watchdog");

    let _log_guard = init_logging();
    let client_tls = Arc::new(client_tls(b"http/1.1"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let body = backend_body();
    let body_len = body.len();
    let backend = runtime.block_on(start_backend(body));
    let denied_len = FORBIDDEN_BODY.len();

    // The kinds of request: the name in the table, the deployment asked
    // for, and the answer the client checks each response against.
    let cases = [
        ("forwarded", FORWARDED_ID, StatusCode::OK, body_len),
        ("denied", DENIED_ID, StatusCode::FORBIDDEN, denied_len),
    ];

    let mut rows = Vec::new();
    for log in LogSetup::ALL {
        let proxy = Proxy::start(backend, log);
        runtime.block_on(async {
            for (case, id, status, len) in cases {
                let mut client =
                    Client::connect(proxy.addr, client_tls.clone(), id, status, len).await;
                client.run(settings.warmup).await;
                if let Some(t) = &settings.trace {
                    let traces = trace(&mut client, t.requests).await;
                    let what = format!("{}, {case}", log.name());
                    report_traces(&what, &traces, t.requests, t.depth);
                    continue;
                }
                let mut per_round = Vec::new();
                for _ in 0..settings.rounds {
                    per_round.push(measure(&mut client, settings.requests).await);
                }
                rows.push(Row {
                    log,
                    case,
                    rounds: per_round,
                });
            }
        });
        proxy.stop();
    }
    if !rows.is_empty() {
        print_table(&rows, &settings);
    }
}

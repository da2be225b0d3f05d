//! Shared harness for the end-to-end data-plane tests.
//!
//! Everything is real and on loopback: an rcgen CA and leaf, a hyper
//! HTTP/1.1 backend started by the test, the proxy itself (`Server::bind`
//! on `127.0.0.1:0`), and a client that writes raw PROXY bytes, speaks TLS
//! with the test CA as its only root, then HTTP/1.1 or HTTP/2 by ALPN.
//! Every network wait is bounded by [`WAIT`].

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis::access_log::MemorySink;
use portcullis::reload::Store;
use portcullis::server::Server;
use portcullis::shutdown::Trigger;
use portcullis_test_kit::pki::TestCa;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Upper bound on any single network wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// The zone every deployment host name lives under.
pub const ZONE: &str = "es.test";

/// Exact SPEC §6 bodies.
pub const FORBIDDEN_BODY: &str = r#"{"ok":false,"message":"Forbidden due to traffic filtering. Please see the Elastic documentation on Traffic Filtering for more information."}"#;
pub const UNKNOWN_BODY: &str = r#"{"ok":false,"message":"Unknown resource."}"#;
pub const MISDIRECTED_BODY: &str = r#"{"ok":false,"message":"Misdirected request."}"#;

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    within_for(WAIT, what, f).await
}

/// Awaits `f`, failing the test if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---------------------------------------------------------------- certificates

/// A throwaway CA and one ECDSA P-256 leaf it signed, shared by every test
/// in the process.
pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = TestCa::named("portcullis e2e test CA");
        // One-label wildcards: `{id}.es.test` and `{alias}.{product}.es.test`.
        let leaf = ca.leaf(&[
            "es.test",
            "*.es.test",
            "*.es.es.test",
            "*.kb.es.test",
            "*.apm.es.test",
            "*.kb.test",
            "*.test",
        ]);
        Pki {
            ca: ca.der(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        }
    })
}

/// A temporary directory (`tempfile`'s), `.0` its path.
pub use portcullis_test_kit::TempDir;

// ---------------------------------------------------------------- bodies

/// Request and response bodies used by the client and the backend.
pub type BoxedBody = UnsyncBoxBody<Bytes, io::Error>;

pub fn empty() -> BoxedBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> BoxedBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// SHA-256 and length of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub sha256: String,
    pub bytes: u64,
}

pub type HashSlot = Arc<Mutex<Option<Hashed>>>;

const CHUNK: usize = 64 * 1024;

/// `len` pseudo-random bytes (xorshift64*), generated 64 KiB at a time and
/// hashed as they go out; never held whole. The hash lands in the slot
/// just before the last chunk is handed over.
pub struct RandomBody {
    state: u64,
    remaining: u64,
    total: u64,
    exact: bool,
    hasher: Sha256,
    slot: HashSlot,
    before_last: Option<Box<dyn FnOnce() + Send>>,
}

impl RandomBody {
    pub fn new(seed: u64, len: u64) -> (Self, HashSlot) {
        let slot = HashSlot::default();
        let body = Self {
            state: seed | 1,
            remaining: len,
            total: len,
            exact: true,
            hasher: Sha256::new(),
            slot: slot.clone(),
            before_last: None,
        };
        (body, slot)
    }

    /// No exact size hint: HTTP/1.1 sends it chunked.
    pub fn chunked(mut self) -> Self {
        self.exact = false;
        self
    }

    /// Runs `f` when the last chunk is about to be handed over.
    pub fn before_last(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.before_last = Some(Box::new(f));
        self
    }

    pub fn boxed(self) -> BoxedBody {
        self.boxed_unsync()
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

impl Body for RandomBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(this.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut chunk = vec![0u8; n];
        this.fill(&mut chunk);
        this.hasher.update(&chunk);
        this.remaining -= n as u64;
        if this.remaining == 0 {
            let digest = std::mem::take(&mut this.hasher).finalize();
            *this.slot.lock().unwrap() = Some(Hashed {
                sha256: hex(&digest),
                bytes: this.total,
            });
            if let Some(f) = this.before_last.take() {
                f();
            }
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Hashes a body frame by frame; `progress` (if any) counts bytes as they
/// arrive.
pub async fn hash_body<B>(mut body: B, progress: Option<&AtomicU64>) -> Result<Hashed, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(chunk) = frame?.data_ref() {
            hasher.update(chunk);
            bytes += chunk.len() as u64;
            if let Some(p) = progress {
                p.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    }
    Ok(Hashed {
        sha256: hex(&hasher.finalize()),
        bytes,
    })
}

// ---------------------------------------------------------------- backend

struct BackendState {
    name: String,
    requests: Arc<AtomicUsize>,
    connections: AtomicUsize,
    /// Bytes of `POST /hash` bodies received so far.
    hash_progress: AtomicU64,
    /// Hash of the last `GET /big` body sent.
    sent: HashSlot,
}

/// A real HTTP/1.1 server on `127.0.0.1:0`.
///
/// - `POST /hash`: streams the body into SHA-256, answers
///   `{"sha256": .., "bytes": n}`.
/// - `GET /slow?ms=N`: sleeps N ms (default 10 s), then echoes.
/// - `GET /big?bytes=N`: streams N pseudo-random bytes.
/// - anything else: echoes JSON `{backend, method, path, query, headers:
///   {name: [values]}, count, body_bytes}`.
pub struct Backend {
    pub addr: SocketAddr,
    /// Every request received, whatever its path.
    pub requests: Arc<AtomicUsize>,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let requests = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            requests: requests.clone(),
            connections: AtomicUsize::new(0),
            hash_progress: AtomicU64::new(0),
            sent: HashSlot::default(),
        });
        let task = tokio::spawn(serve_backend(listener, state.clone()));
        Self {
            addr,
            requests,
            state,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn hash_progress(&self) -> u64 {
        self.state.hash_progress.load(Ordering::SeqCst)
    }

    /// A closure reading [`Self::hash_progress`] later, from anywhere.
    pub fn hash_progress_probe(&self) -> impl Fn() -> u64 + Send + 'static {
        let state = self.state.clone();
        move || state.hash_progress.load(Ordering::SeqCst)
    }

    pub fn last_sent(&self) -> Option<Hashed> {
        self.state.sent.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_backend(listener: TcpListener, state: Arc<BackendState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| backend_handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn json_response(status: StatusCode, value: &Value) -> Response<BoxedBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn backend_handle(
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<BoxedBody>, Infallible> {
    let count = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/hash") => {
            let hashed = hash_body(req.into_body(), Some(&state.hash_progress)).await;
            return Ok(match hashed {
                Ok(h) => json_response(
                    StatusCode::OK,
                    &json!({ "sha256": h.sha256, "bytes": h.bytes }),
                ),
                Err(e) => {
                    json_response(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() }))
                }
            });
        }
        (Method::GET, "/big") => {
            let len = query_u64(&req, "bytes").unwrap_or(0);
            let (body, slot) = RandomBody::new(0xB16_B0D7, len);
            let sent = state.sent.clone();
            let body = body.before_last(move || {
                *sent.lock().unwrap() = slot.lock().unwrap().clone();
            });
            return Ok(Response::new(body.boxed()));
        }
        (_, "/slow") => {
            let ms = query_u64(&req, "ms").unwrap_or(10_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_owned);
    // `?close=1`: answer with `Connection: close`, then close.
    let close = query_u64(&req, "close") == Some(1);
    let body_bytes = hash_body(req.into_body(), None)
        .await
        .map_or(0, |h| h.bytes);
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "backend": state.name,
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "count": count,
            "body_bytes": body_bytes,
        }),
    );
    if close {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

/// A loopback port nothing listens on (bound, read, closed).
/// A data and an admin listener on loopback port 0, for `portcullis::serve`.
pub fn loopback_listeners() -> portcullis::Listeners {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    portcullis::Listeners::bind(&portcullis::settings::ListenAddrs {
        data: vec![any],
        admin: any,
        remote_cluster: Vec::new(),
    })
    .expect("bind loopback port 0")
}

pub fn unused_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    l.local_addr().expect("probe address")
}

// ---------------------------------------------------------------- proxy

/// Per-test proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `required`, `lenient` or `off`.
    pub mode: &'static str,
    pub zones: Vec<String>,
    pub read_timeout: &'static str,
    pub response_timeout: &'static str,
    pub request_header_timeout: &'static str,
    pub idle_timeout: &'static str,
    /// TOML appended to the generated configuration (extra sections, such
    /// as `[remote_cluster]`).
    pub extra_toml: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            mode: "required",
            zones: vec![ZONE.to_owned()],
            read_timeout: "3s",
            response_timeout: "5s",
            request_header_timeout: "10s",
            idle_timeout: "60s",
            extra_toml: String::new(),
        }
    }
}

/// The proxy, serving on `127.0.0.1:<port>` until dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub settings: portcullis::Settings,
    /// Its access log (JSON lines).
    pub access_log: MemorySink,
    /// `[remote_cluster] listen` addresses, bound (empty when none).
    pub remote_cluster: Vec<SocketAddr>,
    pub registry: prometheus::Registry,
    trigger: Trigger,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl TestProxy {
    pub async fn start(options: &ProxyOptions, snapshot: &Value) -> Self {
        let dir = TempDir::new();
        let pki = pki();
        let cert = dir.write("cert.pem", &pki.cert_pem);
        let key = dir.write("key.pem", &pki.key_pem);
        let snapshot_path = dir.write("snapshot.json", snapshot.to_string());
        let zones = options
            .zones
            .iter()
            .map(|z| format!("{z:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let toml = format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
zones = [{zones}]
shutdown_grace = "1s"
request_header_timeout = "{request_header_timeout}"
idle_timeout = "{idle_timeout}"

[proxy_protocol]
mode = "{mode}"
trusted_sources = ["127.0.0.1/32"]
read_timeout = "{read_timeout}"

[[tls.certificates]]
cert = {cert:?}
key = {key:?}

[upstream]
connect_timeout = "2s"
response_timeout = "{response_timeout}"

[snapshot]
path = {snapshot:?}

[log]
access_flush_interval = "5ms"

{extra}
"#,
            extra = options.extra_toml,
            mode = options.mode,
            read_timeout = options.read_timeout,
            response_timeout = options.response_timeout,
            request_header_timeout = options.request_header_timeout,
            idle_timeout = options.idle_timeout,
            cert = cert.display().to_string(),
            key = key.display().to_string(),
            snapshot = snapshot_path.display().to_string(),
        );
        let mut config = portcullis::Config::from_toml(&toml).expect("test config is valid");
        config.log.format = portcullis::access_log::Format::Json;
        let settings = config.settings().expect("test config is valid");
        let store = Arc::new(Store::new());
        apply_snapshot(&store, &settings, snapshot);
        let access_log = MemorySink::default();
        let registry = portcullis::metrics::registry();
        let server = Server::bind(
            &settings,
            store.clone(),
            &registry,
            Some(Box::new(access_log.clone())),
        )
        .expect("bind proxy");
        let addr = server.local_addrs()[0];
        let remote_cluster = server.remote_cluster_addrs();
        let (trigger, shutdown) = portcullis::shutdown::channel();
        let task = tokio::spawn(server.run(shutdown));
        Self {
            addr,
            store,
            settings,
            access_log,
            remote_cluster,
            registry,
            trigger,
            task,
            _dir: dir,
        }
    }

    /// The access-log lines written so far, parsed, once `count` of them
    /// are there (lines are written by a background thread).
    pub async fn access_lines(&self, count: usize) -> Vec<Value> {
        let mut lines = Vec::new();
        eventually(Duration::from_secs(10), "access-log lines", || {
            lines = self.access_log.lines();
            let enough = lines.len() >= count;
            async move { enough }
        })
        .await;
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Applies a new snapshot (its version must be newer).
    pub fn apply(&self, snapshot: &Value) {
        apply_snapshot(&self.store, &self.settings, snapshot);
    }

    pub fn client(&self, sni: &str) -> ClientBuilder {
        ClientBuilder::new(self.addr, sni)
    }
}

fn apply_snapshot(store: &Store, settings: &portcullis::Settings, snapshot: &Value) {
    let loaded =
        portcullis::reload::prepare(snapshot.to_string().as_bytes(), "test", settings.policy)
            .unwrap_or_else(|e| panic!("test snapshot is invalid: {e}"));
    store.apply(loaded).expect("snapshot applies");
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.trigger.drain();
        self.trigger.abort();
        self.task.abort();
    }
}

// ---------------------------------------------------------------- the standard world

pub const OPEN: &str = "open0001";
pub const OFFICE: &str = "ip0001";
pub const MIXED: &str = "mixed0001";
pub const AWS_OTHER: &str = "aws0002";
pub const AZURE: &str = "az0001";
pub const AZURE_OTHER: &str = "az0002";
pub const GCP: &str = "gcp0001";
pub const GCP_OTHER: &str = "gcp0002";
pub const DEAD: &str = "dead0001";
pub const FAILOVER: &str = "failover0001";
/// `office-ips` associated, but `enforcement: dry_run`.
pub const DRY_RUN: &str = "dry0001";
/// Only an empty `vpce` policy: a record, which filters nothing.
pub const RECORD: &str = "record0001";

/// In `office-ips` by default.
pub const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// In no policy.
pub const DENIED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
pub const VPCE: &str = "vpce-0a1b2c3d4e5f67890";
pub const OTHER_VPCE: &str = "vpce-0123456789abcdef0";
pub const AZURE_LINK: u32 = 16_777_301;
pub const GCP_PSC: u64 = 18_446_744_072_646_845_332;

/// `{id}.es.test`
pub fn host(id: &str) -> String {
    format!("{id}.{ZONE}")
}

/// Two backends (es, kb), a dead address, and the proxy in front, with
/// [`Fixture::snapshot`] version 1 applied.
pub struct Fixture {
    pub proxy: TestProxy,
    pub es: Backend,
    pub kb: Backend,
    pub dead: SocketAddr,
}

impl Fixture {
    pub async fn start() -> Self {
        Self::with(ProxyOptions::default()).await
    }

    pub async fn with(options: ProxyOptions) -> Self {
        let es = Backend::start("es").await;
        let kb = Backend::start("kb").await;
        let dead = unused_port();
        let snapshot = world(
            1,
            es.addr,
            kb.addr,
            dead,
            &["203.0.113.0/24", "2001:db8::/32"],
        );
        let proxy = TestProxy::start(&options, &snapshot).await;
        Self {
            proxy,
            es,
            kb,
            dead,
        }
    }

    /// The standard snapshot at `version`, with `office-ips` holding
    /// `office_rules`.
    pub fn snapshot(&self, version: u64, office_rules: &[&str]) -> Value {
        world(version, self.es.addr, self.kb.addr, self.dead, office_rules)
    }

    pub fn client(&self, sni: &str) -> ClientBuilder {
        self.proxy.client(sni)
    }

    /// Backend requests across es and kb.
    pub fn backend_requests(&self) -> usize {
        self.es.requests() + self.kb.requests()
    }

    /// One HTTP/1.1 `GET` on a fresh connection, SNI = host.
    pub async fn get(&self, preamble: Vec<u8>, host: &str, path: &str) -> Reply {
        let mut conn = self.client(host).preamble(preamble).connect().await;
        conn.get(host, path).await
    }
}

fn world(
    version: u64,
    es: SocketAddr,
    kb: SocketAddr,
    dead: SocketAddr,
    office_rules: &[&str],
) -> Value {
    let (es, kb, dead) = (es.to_string(), kb.to_string(), dead.to_string());
    let dep = |id: &str, alias: &str, region: &str, policies: &[&str]| {
        json!({
            "id": id, "alias": alias, "region": region,
            "resources": { "es": { "backends": [es] } },
            "policies": policies,
        })
    };
    let office: Vec<Value> = office_rules
        .iter()
        .map(|s| json!({ "source": s }))
        .collect();
    json!({
        "version": version,
        "deployments": [
            { "id": OPEN, "alias": "open", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es] }, "kb": { "backends": [kb] } },
              "policies": [] },
            { "id": OFFICE, "alias": "office", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es] }, "kb": { "backends": [kb] } },
              "policies": ["office-ips"] },
            dep(MIXED, "mixed", "aws-us-east-1", &["office-ips", "prod-vpce"]),
            dep(AWS_OTHER, "aws-other", "aws-us-east-1", &["other-vpce"]),
            dep(AZURE, "azure", "azure-eastus2", &["az-pe"]),
            dep(AZURE_OTHER, "azure-other", "azure-eastus2", &["az-other"]),
            dep(GCP, "gcp", "gcp-us-central1", &["gcp-psc"]),
            dep(GCP_OTHER, "gcp-other", "gcp-us-central1", &["gcp-other"]),
            { "id": DEAD, "region": "aws-us-east-1",
              "resources": { "es": { "backends": [dead] } }, "policies": [] },
            { "id": FAILOVER, "region": "aws-us-east-1",
              "resources": { "es": { "backends": [dead, es] } }, "policies": [] },
            { "id": DRY_RUN, "region": "aws-us-east-1", "enforcement": "dry_run",
              "resources": { "es": { "backends": [es] } }, "policies": ["office-ips"] },
            dep(RECORD, "record", "aws-us-east-1", &["vpce-record"]),
        ],
        "policies": [
            { "id": "office-ips", "type": "ip", "region": "aws-us-east-1", "rules": office },
            { "id": "prod-vpce", "type": "vpce", "region": "aws-us-east-1",
              "rules": [ { "source": VPCE } ] },
            { "id": "other-vpce", "type": "vpce", "region": "aws-us-east-1",
              "rules": [ { "source": "vpce-0fffffffffffffff0" } ] },
            { "id": "vpce-record", "type": "vpce", "region": "aws-us-east-1", "rules": [] },
            { "id": "az-pe", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": AZURE_LINK, "azure_endpoint_name": "my-pe",
                           "azure_endpoint_guid": "8f3e1c2a-0000-4000-8000-000000000001" } ] },
            { "id": "az-other", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": 42 } ] },
            { "id": "gcp-psc", "type": "gcp_private_service_connect_endpoint",
              "region": "gcp-us-central1", "rules": [ { "source": GCP_PSC.to_string() } ] },
            { "id": "gcp-other", "type": "gcp_private_service_connect_endpoint",
              "region": "gcp-us-central1", "rules": [ { "source": "7" } ] },
        ],
    })
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// How the PROXY bytes go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One write, flushed before the TLS handshake starts.
    Whole,
    /// In the same write as the TLS ClientHello.
    WithClientHello,
    /// One byte per write, a few milliseconds apart.
    Trickle,
}

pub struct ClientBuilder {
    addr: SocketAddr,
    sni: String,
    bind: Option<IpAddr>,
    preamble: Vec<u8>,
    delivery: Delivery,
    proto: Proto,
}

impl ClientBuilder {
    pub fn new(addr: SocketAddr, sni: &str) -> Self {
        Self {
            addr,
            sni: sni.to_owned(),
            bind: None,
            preamble: Vec::new(),
            delivery: Delivery::Whole,
            proto: Proto::H1,
        }
    }

    /// Connect from this local address (e.g. 127.0.0.2, untrusted).
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Raw bytes written before TLS (a PROXY header, or nothing).
    pub fn preamble(mut self, bytes: Vec<u8>) -> Self {
        self.preamble = bytes;
        self
    }

    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    pub fn h2(mut self) -> Self {
        self.proto = Proto::H2;
        self
    }

    pub async fn connect(self) -> Conn {
        let what = format!("connect to {} (sni {})", self.addr, self.sni);
        self.try_connect()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// TCP, PROXY bytes, TLS, HTTP handshake; any failure as text.
    pub async fn try_connect(self) -> Result<Conn, String> {
        let mut tcp = within("TCP connect", tcp_connect(self.addr, self.bind))
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        let mut pending = Vec::new();
        match self.delivery {
            Delivery::Whole => {
                tcp.write_all(&self.preamble)
                    .await
                    .map_err(|e| format!("write PROXY header: {e}"))?;
            }
            Delivery::Trickle => {
                for byte in &self.preamble {
                    tcp.write_all(std::slice::from_ref(byte))
                        .await
                        .map_err(|e| format!("write PROXY byte: {e}"))?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Delivery::WithClientHello => pending = self.preamble.clone(),
        }
        let io = FirstWrite {
            inner: tcp,
            pending,
            merged: false,
            claimed: 0,
        };
        let tls = client_tls(match self.proto {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        });
        let name = ServerName::try_from(self.sni.clone()).expect("valid SNI");
        let stream = within(
            "TLS handshake",
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, io),
        )
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(stream);
        let (sender, driver) = match self.proto {
            Proto::H1 => {
                let (tx, conn) = within("HTTP/1.1 handshake", http1::handshake(io))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                let driver = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H1(tx), driver)
            }
            Proto::H2 => {
                if alpn.as_deref() != Some(b"h2") {
                    return Err(format!("ALPN chose {alpn:?}, not h2"));
                }
                let (tx, conn) = within(
                    "HTTP/2 handshake",
                    http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(io),
                )
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                let driver = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H2(tx), driver)
            }
        };
        Ok(Conn {
            proto: self.proto,
            sender,
            driver,
            wait: WAIT,
        })
    }
}

async fn tcp_connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let tcp = match bind {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Passes I/O through, but puts `pending` in front of the first write so
/// that it shares a segment with the TLS ClientHello.
struct FirstWrite {
    inner: TcpStream,
    pending: Vec<u8>,
    merged: bool,
    claimed: usize,
}

impl AsyncRead for FirstWrite {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FirstWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_empty() && !this.merged {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if !this.merged {
            this.pending.extend_from_slice(buf);
            this.claimed = buf.len();
            this.merged = true;
        }
        while !this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => drop(this.pending.drain(..n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.claimed > 0 {
            let claimed = std::mem::take(&mut this.claimed);
            return Poll::Ready(Ok(claimed));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

enum Sender {
    H1(http1::SendRequest<BoxedBody>),
    H2(http2::SendRequest<BoxedBody>),
}

/// A TLS client trusting the test CA, offering one ALPN protocol.
pub fn client_tls(alpn: &[u8]) -> rustls::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki().ca.clone()).expect("test CA");
        roots
    })
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls
}

/// One client connection; requests on it reuse it (keep-alive / streams).
pub struct Conn {
    proto: Proto,
    sender: Sender,
    driver: JoinHandle<()>,
    /// Bound on each response wait (head, then body).
    wait: Duration,
}

impl Conn {
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Waits up to `wait` for each response (large transfers).
    pub fn patient(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// A request for `host` + `path`: origin form and `Host` for HTTP/1.1,
    /// an absolute URI (`:authority`) for HTTP/2.
    pub fn request(&self, method: Method, host: &str, path: &str) -> http::request::Builder {
        match self.proto {
            Proto::H1 => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, host),
            Proto::H2 => Request::builder()
                .method(method)
                .uri(format!("https://{host}{path}"))
                .version(http::Version::HTTP_2),
        }
    }

    /// Sends and reads the whole response.
    pub async fn send(&mut self, req: Request<BoxedBody>) -> Result<Reply, hyper::Error> {
        let resp = self.send_streaming(req).await?;
        let (parts, body) = resp.into_parts();
        let body = within_for(self.wait, "response body", body.collect())
            .await?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends; returns once the response head is in.
    pub async fn send_streaming(
        &mut self,
        req: Request<BoxedBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::H1(tx) => {
                within("connection ready", tx.ready()).await?;
                within_for(self.wait, "response head", tx.send_request(req)).await
            }
            Sender::H2(tx) => {
                within("connection ready", tx.ready()).await?;
                within_for(self.wait, "response head", tx.send_request(req)).await
            }
        }
    }

    /// `GET host path`; panics if the connection fails.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        let req = self
            .request(Method::GET, host, path)
            .body(empty())
            .expect("request");
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
    }

    /// A handle for concurrent HTTP/2 streams.
    pub fn h2_sender(&self) -> http2::SendRequest<BoxedBody> {
        match &self.sender {
            Sender::H2(tx) => tx.clone(),
            Sender::H1(_) => panic!("not an HTTP/2 connection"),
        }
    }

    /// The connection task has ended (the proxy closed the connection).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    /// A response portcullis made itself: `status`, JSON `{"ok": false,
    /// "message": <non-empty>}`, and, when given, exactly `body`.
    pub fn assert_local(&self, status: StatusCode, body: Option<&str>) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.content_type(), Some("application/json"));
        let v = self.json();
        assert_eq!(v["ok"], false, "{v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {v}"
        );
        if let Some(body) = body {
            assert_eq!(self.text(), body);
        }
    }

    /// A backend echo, after checking the status is 200.
    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text());
        let v = self.json();
        assert!(v["backend"].is_string(), "not a backend echo: {v}");
        Echo(v)
    }
}

/// What the backend saw.
#[derive(Debug)]
pub struct Echo(pub Value);

impl Echo {
    pub fn backend(&self) -> &str {
        self.0["backend"].as_str().unwrap_or_default()
    }

    /// Every value of header `name` (lowercase) as the backend received it.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.0["headers"][name]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn forwarded_for(&self) -> Vec<String> {
        self.header("x-forwarded-for")
    }
}

// ---------------------------------------------------------------- raw TCP

/// A plain TCP connection, to watch the proxy close it.
pub struct Raw {
    tcp: TcpStream,
    opened: Instant,
}

/// How a raw connection ended.
#[derive(Debug)]
pub struct Closed {
    /// From connect to EOF or reset.
    pub after: Duration,
    pub bytes_received: usize,
}

impl Raw {
    pub async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> Self {
        let tcp = within("TCP connect", tcp_connect(addr, bind))
            .await
            .expect("TCP connect");
        Self {
            tcp,
            opened: Instant::now(),
        }
    }

    /// Writes `bytes`; the peer may already have closed, which is fine.
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = within("raw write", self.tcp.write_all(bytes)).await;
    }

    /// Reads until EOF or an error; panics if the connection is still open
    /// after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> Closed {
        let mut bytes_received = 0;
        let mut buf = [0u8; 4096];
        let read_all = async {
            loop {
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes_received += n,
                }
            }
        };
        tokio::time::timeout(limit, read_all)
            .await
            .unwrap_or_else(|_| panic!("connection still open after {limit:?}"));
        Closed {
            after: self.opened.elapsed(),
            bytes_received,
        }
    }
}

// ---------------------------------------------------------------- PROXY headers

/// PROXY v1 lines and v2 headers (the kit's encoder, written from the
/// protocol description) and the CRC32C they are checked with.
#[allow(unused_imports, reason = "each test binary uses a different part")]
pub use portcullis_test_kit::proxy::{
    Crc, TLV_AWS, TLV_AZURE, TLV_CRC32C, TLV_GCP, V2, V2_SIGNATURE, crc32c, v1 as proxy_v1, v1_from,
};

// ---------------------------------------------------------------- the whole process: `portcullis::serve`
//
// Used by the reload and admin-API tests (`tests/reload*.rs`): the real
// `serve`, with a snapshot source, a state directory and the admin API,
// reached over loopback like an operator would reach it.

/// The bearer token written to `[admin] token_file`.
pub const ADMIN_TOKEN: &str = "test-admin-token-5f0c";

/// Where `serve` reads snapshots from.
#[derive(Debug, Clone)]
pub enum SnapshotSource {
    Path(PathBuf),
    Url(String),
}

/// Per-test `serve` settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub source: SnapshotSource,
    pub state_dir: Option<PathBuf>,
    /// `snapshot.max_bytes`; the default when `None`.
    pub max_bytes: Option<usize>,
    pub poll_interval: &'static str,
    /// `admin.body_timeout`; the default when `None`.
    pub admin_body_timeout: Option<&'static str>,
}

impl ServeOptions {
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self {
            source: SnapshotSource::Path(path.into()),
            state_dir: None,
            max_bytes: None,
            poll_interval: "100ms",
            admin_body_timeout: None,
        }
    }

    pub fn url(url: impl Into<String>) -> Self {
        Self {
            source: SnapshotSource::Url(url.into()),
            ..Self::path("unused")
        }
    }

    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = Some(n);
        self
    }

    pub fn admin_body_timeout(mut self, d: &'static str) -> Self {
        self.admin_body_timeout = Some(d);
        self
    }
}

/// `portcullis::serve` running in this process on loopback ports: the data
/// plane at `data`, the admin API at `admin`. Shut down on drop.
pub struct Served {
    pub data: SocketAddr,
    pub admin: SocketAddr,
    trigger: Trigger,
    task: Option<JoinHandle<Result<(), portcullis::Error>>>,
    _files: TempDir,
}

impl Served {
    /// Starts `serve` and waits until `/healthz` answers (not `/readyz`:
    /// a test may want to see it not ready). Ports are picked by binding
    /// port 0 and closing; a rare collision is retried with new ones.
    pub async fn start(options: &ServeOptions) -> Self {
        let files = TempDir::new();
        let pki = pki();
        let cert = files.write("cert.pem", &pki.cert_pem);
        let key = files.write("key.pem", &pki.key_pem);
        let token = files.write("admin.token", format!("{ADMIN_TOKEN}\n"));
        // Ports bound here, before `serve` starts: no collision to retry.
        let listeners = loopback_listeners();
        let data = listeners.data[0].local_addr().expect("data address");
        let admin = listeners.admin.local_addr().expect("admin address");
        let toml = serve_toml(options, data, admin, &cert, &key, &token);
        let settings = portcullis::Config::from_toml(&toml)
            .and_then(|c| c.settings())
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
        let (trigger, shutdown) = portcullis::shutdown::channel();
        let mut task = tokio::spawn(portcullis::serve(settings, listeners, shutdown));
        let deadline = Instant::now() + WAIT;
        loop {
            if task.is_finished() {
                let why = match within("serve to fail", &mut task).await {
                    Ok(Ok(())) => "serve returned".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                panic!("serve did not start: {why}");
            }
            if let Ok(r) = admin_request(admin, Method::GET, "/healthz", &[], None).await
                && r.status == StatusCode::OK
            {
                return Self {
                    data,
                    admin,
                    trigger,
                    task: Some(task),
                    _files: files,
                };
            }
            assert!(
                Instant::now() < deadline,
                "serve: no /healthz within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `serve` and waits until `/readyz` says ready.
    pub async fn ready(options: &ServeOptions) -> Self {
        let served = Self::start(options).await;
        served.wait_ready().await;
        served
    }

    /// Polls `GET /readyz` until 200.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        eventually(WAIT, "GET /readyz answers 200", || async move {
            admin_request(admin, Method::GET, "/readyz", &[], None)
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
        })
        .await;
    }

    /// A data-plane client (PROXY bytes, TLS, HTTP) to this instance.
    pub fn client(&self, sni: &str) -> ClientBuilder {
        ClientBuilder::new(self.data, sni)
    }

    /// One admin request on a fresh connection; panics on transport errors.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Reply {
        admin_request(self.admin, method.clone(), path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"))
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin(Method::GET, path, &[], None).await
    }

    /// `PUT /snapshot` with the right token.
    pub async fn put_snapshot(&self, body: impl Into<Bytes>) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.admin(
            Method::PUT,
            "/snapshot",
            &[("authorization", auth.as_str())],
            Some(body.into()),
        )
        .await
    }

    /// `GET /snapshot`'s `snapshot` object, after checking the status.
    pub async fn snapshot_meta(&self) -> Value {
        let r = self.admin_get("/snapshot").await;
        assert_eq!(r.status, StatusCode::OK, "GET /snapshot: {}", r.text());
        r.json()["snapshot"].clone()
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "GET /metrics: {}", r.text());
        Metrics::parse(&r.text())
    }

    /// Drains, waits for `serve` to return, then stops the admin API.
    pub async fn stop(mut self) {
        self.trigger.drain();
        if let Some(task) = self.task.take() {
            let result = within("serve to return after drain", task)
                .await
                .expect("serve task");
            result.expect("serve returned an error");
        }
        self.trigger.abort();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.trigger.drain();
        self.trigger.abort();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn serve_toml(
    o: &ServeOptions,
    data: SocketAddr,
    admin: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    token: &std::path::Path,
) -> String {
    let source = match &o.source {
        SnapshotSource::Path(p) => format!("path = {:?}", p.display().to_string()),
        SnapshotSource::Url(u) => format!("url = {u:?}\nfetch_timeout = \"2s\""),
    };
    let state_dir = o
        .state_dir
        .as_ref()
        .map(|d| format!("state_dir = {:?}", d.display().to_string()))
        .unwrap_or_default();
    let max_bytes = o
        .max_bytes
        .map(|n| format!("max_bytes = {n}"))
        .unwrap_or_default();
    let body_timeout = o
        .admin_body_timeout
        .map(|d| format!("body_timeout = {d:?}"))
        .unwrap_or_default();
    format!(
        r#"
[server]
listen = ["{data}"]
zones = ["{ZONE}"]
shutdown_grace = "1s"

[proxy_protocol]
mode = "required"
trusted_sources = ["127.0.0.1/32"]
read_timeout = "3s"

[[tls.certificates]]
cert = {cert:?}
key = {key:?}

[upstream]
connect_timeout = "2s"
response_timeout = "5s"

[snapshot]
{source}
poll_interval = "{poll}"
{state_dir}
{max_bytes}

[admin]
listen = "{admin}"
token_file = {token:?}
{body_timeout}
"#,
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        token = token.display().to_string(),
        poll = o.poll_interval,
    )
}

/// A plain HTTP/1.1 connection to the admin API, reusable (keep-alive).
pub struct AdminConn {
    sender: http1::SendRequest<BoxedBody>,
    driver: JoinHandle<()>,
}

impl AdminConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let tcp = within("admin TCP connect", TcpStream::connect(addr))
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (sender, conn) = within(
            "admin HTTP/1.1 handshake",
            http1::handshake(TokioIo::new(tcp)),
        )
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender, driver })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "admin.test");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(body.map_or_else(empty, full))
            .map_err(|e| e.to_string())?;
        within("admin connection ready", self.sender.ready())
            .await
            .map_err(|e| e.to_string())?;
        let resp = within("admin response head", self.sender.send_request(req))
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = within("admin response body", body.collect())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl Drop for AdminConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One admin request on its own connection.
pub async fn admin_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Result<Reply, String> {
    AdminConn::connect(addr)
        .await?
        .send(method, path, headers, body)
        .await
}

/// Polls `check` every 20 ms until it is true; fails the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `path` the way a careful deployer does: a temporary file in the
/// same directory, then `rename` over the old one.
pub fn replace_atomically(path: &std::path::Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).expect("write temporary snapshot");
    std::fs::rename(&tmp, path).expect("rename snapshot into place");
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A small world for the reload tests: `open0001` (no policy), `ip0001`
/// (`office-ips`, always `policies[0]`, with `office_rules`) and
/// `dead0001` (its backend refuses connections).
pub fn small_world(version: u64, es: SocketAddr, dead: SocketAddr, office_rules: &[&str]) -> Value {
    let rules: Vec<Value> = office_rules
        .iter()
        .map(|s| json!({ "source": s }))
        .collect();
    json!({
        "version": version,
        "deployments": [
            { "id": OPEN, "alias": "open", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es.to_string()] } }, "policies": [] },
            { "id": OFFICE, "alias": "office", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es.to_string()] } },
              "policies": ["office-ips"] },
            { "id": DEAD, "region": "aws-us-east-1",
              "resources": { "es": { "backends": [dead.to_string()] } }, "policies": [] },
        ],
        "policies": [
            { "id": "office-ips", "type": "ip", "region": "aws-us-east-1", "rules": rules },
        ],
    })
}

/// One Prometheus sample: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` scrape (text format 0.0.4).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
    /// `# TYPE name kind` lines.
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_sample(line).unwrap_or_else(|| panic!("bad sample line: {line}")));
        }
        Self {
            text: text.to_owned(),
            samples,
            types,
        }
    }

    /// The sum of every sample named `name` whose labels include `labels`
    /// (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        // key="value" pairs; values may hold \" \\ and \n escapes.
        loop {
            body = body.trim_start_matches(',');
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, quoted) = body.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let consumed = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i + 1,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            };
            labels.insert(key.to_owned(), value);
            body = &quoted[consumed..];
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

// ---------------------------------------------------------------- remote cluster (TLS pass-through)

/// The remote-cluster node's own PKI, separate from [`pki`] (the proxy's):
/// a client that trusts only this CA and completes a handshake proves the
/// proxy did not terminate TLS.
pub struct NodePki {
    pub ca: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn node_pki() -> &'static NodePki {
    static NODE: OnceLock<NodePki> = OnceLock::new();
    NODE.get_or_init(|| {
        let ca = TestCa::named("remote-cluster node test CA");
        let leaf = ca.leaf(&["*.es.test", "es.test"]);
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der], leaf.key_der)
        .expect("node certificate");
        NodePki {
            ca: ca.der(),
            server: Arc::new(server),
        }
    })
}

/// A TLS server standing for a deployment's remote-cluster port, on
/// `127.0.0.1:0`: after the handshake it writes `sni=<name>\n` (the SNI it
/// received), echoes every byte, and on the client's EOF writes `bye\n`
/// and closes.
pub struct TlsNode {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsNode {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
        let addr = listener.local_addr().expect("node address");
        let connections = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(node_pki().server.clone());
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or_default().to_owned();
                    if tls
                        .write_all(format!("sni={sni}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tls.write_all(b"bye\n").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS client trusting only the node CA.
pub fn node_client_tls(send_sni: bool) -> Arc<rustls::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(node_pki().ca.clone()).expect("node CA");
        roots
    })
    .with_no_client_auth();
    tls.enable_sni = send_sni;
    Arc::new(tls)
}

/// A client connection through the pass-through listener to a [`TlsNode`].
pub struct RcConn {
    pub tls: tokio_rustls::client::TlsStream<TcpStream>,
    /// What the node reported as the SNI it received.
    pub sni_seen: String,
}

impl RcConn {
    /// PROXY `preamble`, then TLS for `name` (sent as SNI when `send_sni`),
    /// then the node's `sni=` line. `Err` when the proxy closes the
    /// connection instead.
    pub async fn connect(
        addr: SocketAddr,
        preamble: &[u8],
        name: &str,
        send_sni: bool,
    ) -> Result<Self, String> {
        let attempt = async {
            let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            tcp.write_all(preamble).await.map_err(|e| e.to_string())?;
            let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
            let mut tls = tokio_rustls::TlsConnector::from(node_client_tls(send_sni))
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let line = read_line(&mut tls).await?;
            let sni_seen = line
                .strip_prefix("sni=")
                .ok_or_else(|| format!("unexpected first line {line:?}"))?
                .to_owned();
            Ok(Self { tls, sni_seen })
        };
        within("pass-through connect", attempt).await
    }

    /// Writes `bytes` and reads the same number back (the node echoes).
    pub async fn echo(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes).await?;
        let mut back = vec![0u8; bytes.len()];
        self.tls.read_exact(&mut back).await?;
        if back != bytes {
            return Err(io::Error::other("echo differs"));
        }
        Ok(())
    }

    /// Reads to EOF (or an error); panics if still open after `limit`.
    pub async fn read_to_end_within(&mut self, limit: Duration) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let r = tokio::time::timeout(limit, self.tls.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("pass-through connection still open after {limit:?}"));
        r.map(|_| out).map_err(|e| e.to_string())
    }
}

async fn read_line<S: AsyncRead + Unpin>(io: &mut S) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match io.read(&mut byte).await {
            Ok(0) => return Err(format!("closed after {line:?}")),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    String::from_utf8(line).map_err(|e| e.to_string())
}

/// `[remote_cluster]` for [`ProxyOptions::extra_toml`]: one listener on
/// loopback, `filter` as given, and `more` lines.
pub fn remote_cluster_toml(filter: bool, more: &str) -> String {
    format!("[remote_cluster]\nlisten = [\"127.0.0.1:0\"]\nfilter = {filter}\n{more}\n")
}

impl TestProxy {
    /// The first remote-cluster listener.
    pub fn rc_addr(&self) -> SocketAddr {
        *self
            .remote_cluster
            .first()
            .expect("the test configured [remote_cluster] listen")
    }

    /// The proxy's metrics now.
    pub fn metrics(&self) -> Metrics {
        let text = String::from_utf8(portcullis::metrics::render(&self.registry))
            .expect("metrics are UTF-8");
        Metrics::parse(&text)
    }

    /// Starts draining, as SIGTERM does.
    pub fn drain(&self) {
        self.trigger.drain();
    }

    /// The remote-cluster access-log lines (`"message":"connection"`), once
    /// there are `count`.
    pub async fn connection_lines(&self, count: usize) -> Vec<Value> {
        let mut found = Vec::new();
        eventually(Duration::from_secs(10), "remote-cluster log lines", || {
            found = self
                .access_log
                .lines()
                .into_iter()
                .filter(|l| l.contains("\"message\":\"connection\""))
                .collect();
            let enough = found.len() >= count;
            async move { enough }
        })
        .await;
        found
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

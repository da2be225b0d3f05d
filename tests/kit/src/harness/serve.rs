//! The whole process: `portcullis::serve`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use portcullis::shutdown::Trigger;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;
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
    /// `[snapshot.etcd]`: these members, this prefix.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
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
    /// `snapshot.etcd.page_size`; the default when `None`.
    pub etcd_page_size: Option<u32>,
    /// More string settings, `(key, value)`, set last.
    pub extra: Vec<(&'static str, String)>,
}

impl ServeOptions {
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self {
            source: SnapshotSource::Path(path.into()),
            state_dir: None,
            max_bytes: None,
            poll_interval: "100ms",
            admin_body_timeout: None,
            etcd_page_size: None,
            extra: Vec::new(),
        }
    }

    pub fn url(url: impl Into<String>) -> Self {
        Self {
            source: SnapshotSource::Url(url.into()),
            ..Self::path("unused")
        }
    }

    /// Following `prefix` on the etcd members at `endpoints`.
    pub fn etcd(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            source: SnapshotSource::Etcd {
                endpoints,
                prefix: prefix.to_owned(),
            },
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

    pub fn etcd_page_size(mut self, n: u32) -> Self {
        self.etcd_page_size = Some(n);
        self
    }

    /// Sets `key` (a string setting) to `value`.
    pub fn set(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((key, value.into()));
        self
    }

    /// The configuration these options describe, on the test baseline
    /// with an admin token.
    pub fn config(&self, files: &TempDir) -> ProxyConfig {
        let mut config = ProxyConfig::new(files)
            .admin_token(files)
            .set("proxy_protocol.read_timeout", "3s")
            .set("upstream.response_timeout", "5s")
            .set("snapshot.poll_interval", self.poll_interval);
        config = match &self.source {
            SnapshotSource::Path(p) => config.set("snapshot.path", p.display().to_string()),
            SnapshotSource::Url(u) => config
                .set("snapshot.url", u.clone())
                .set("snapshot.fetch_timeout", "2s"),
            SnapshotSource::Etcd { endpoints, prefix } => config
                .set("snapshot.etcd.endpoints", endpoints.clone())
                .set("snapshot.etcd.prefix", prefix.clone())
                .set("snapshot.etcd.connect_timeout", "1s")
                .set("snapshot.etcd.request_timeout", "2s"),
        };
        if let Some(dir) = &self.state_dir {
            config = config.set("snapshot.state_dir", dir.display().to_string());
        }
        if let Some(n) = self.max_bytes {
            config = config.set("snapshot.max_bytes", i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(d) = self.admin_body_timeout {
            config = config.set("admin.body_timeout", d);
        }
        if let Some(n) = self.etcd_page_size {
            config = config.set("snapshot.etcd.page_size", i64::from(n));
        }
        for (key, value) in &self.extra {
            config = config.set(key, value.clone());
        }
        config
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
    /// a test may want to see it not ready).
    pub async fn start(options: &ServeOptions) -> Self {
        let files = TempDir::new();
        let config = options.config(&files);
        Self::start_with(&config, files).await
    }

    /// Starts `serve` with `config` (its files in `files`, kept until drop)
    /// and waits until `/healthz` answers.
    pub async fn start_with(config: &ProxyConfig, files: TempDir) -> Self {
        // Ports bound here, before `serve` starts: no collision to retry.
        let listeners = loopback_listeners();
        let data = listeners.data[0].local_addr().expect("data address");
        let admin = listeners.admin.local_addr().expect("admin address");
        let settings = config.settings();
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
        self.wait_ready_within(WAIT).await;
    }

    /// Polls `GET /readyz` until 200, for at most `limit`.
    pub async fn wait_ready_within(&self, limit: Duration) {
        let admin = self.admin;
        eventually(limit, "GET /readyz answers 200", || async move {
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
            office_ips(office_rules),
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

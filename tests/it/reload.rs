//! Hot reload and the admin API end to end (SPEC §3, §7, §8): the real
//! `portcullis::serve`, fed from a snapshot file or URL, with a state
//! directory and the admin API, driven the way an operator drives it —
//! replacing files, serving a snapshot over HTTP, calling the admin API —
//! while clients keep their connections open. Every test asserts what an
//! operator or a client sees. The reload storm is in `reload_storm.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_test_kit::harness::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::data_plane::connect_over;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A file or URL change must be in force within this: a few 100 ms poll
/// intervals, with room for a slow CI machine.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// `office-ips` allowing [`ALLOWED_V4`] (203.0.113.7) only.
pub(super) const RULES_A: &[&str] = &["203.0.113.0/24"];
/// `office-ips` allowing [`DENIED_V4`] (198.51.100.9) only.
pub(super) const RULES_B: &[&str] = &["198.51.100.0/24"];

/// A backend, a dead address, and a directory for snapshot files.
pub(super) struct World {
    pub(super) es: Backend,
    dead: SocketAddr,
    dir: TempDir,
}

impl World {
    pub(super) async fn new() -> Self {
        Self {
            es: Backend::start("es").await,
            dead: unused_port(),
            dir: TempDir::new(),
        }
    }

    pub(super) fn snapshot(&self, version: u64, rules: &[&str]) -> Value {
        small_world(version, self.es.addr, self.dead, rules)
    }

    /// The snapshot as a file would hold it (pretty, so its hash is not
    /// the hash of a re-serialisation).
    fn bytes(&self, version: u64, rules: &[&str]) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.snapshot(version, rules)).expect("serialise")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// What the file source reads: `snapshot.json` in the directory.
    fn file(&self) -> PathBuf {
        self.path("snapshot.json")
    }

    /// Writes version 1 ([`RULES_A`]) to [`World::file`] and serves from
    /// it, with `more` added to the file source's options; returns once
    /// ready.
    async fn serve_v1_with(&self, more: impl FnOnce(ServeOptions) -> ServeOptions) -> Served {
        std::fs::write(self.file(), self.bytes(1, RULES_A)).unwrap();
        Served::ready(&more(ServeOptions::path(self.file()))).await
    }

    /// [`World::serve_v1_with`] the file source's default options.
    async fn serve_v1(&self) -> Served {
        self.serve_v1_with(|options| options).await
    }

    /// `GET /snapshot`'s `source` for a snapshot read from [`World::file`].
    fn source(&self) -> String {
        file_source(&self.file())
    }
}

/// A keep-alive connection to `ip0001` from `client`.
pub(super) async fn office_conn(p: &Served, client: impl Into<std::net::IpAddr>, h2: bool) -> Conn {
    connect_over(p.client(&host(OFFICE)).preamble(v1_from(client)), h2).await
}

/// [`office_conn`] from [`DENIED_V4`], checked to be denied under
/// [`RULES_A`]: the reload tests then watch it turn allowed.
pub(super) async fn denied_conn(p: &Served, h2: bool) -> Conn {
    let mut conn = office_conn(p, DENIED_V4, h2).await;
    assert_eq!(decision(&mut conn).await, StatusCode::FORBIDDEN);
    conn
}

/// One `GET` to `ip0001` on `conn`: a backend echo (200) or the exact 403.
pub(super) async fn decision(conn: &mut Conn) -> StatusCode {
    let reply = conn.get(&host(OFFICE), "/").await;
    match reply.status {
        StatusCode::OK => assert_eq!(reply.echo().backend(), "es"),
        StatusCode::FORBIDDEN => reply.assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY)),
        other => panic!("unexpected {other}: {}", reply.text()),
    }
    reply.status
}

/// Sends requests on the same `conn` until one gets `want`.
pub(super) async fn until_decision(conn: &mut Conn, want: StatusCode) {
    let deadline = std::time::Instant::now() + RELOAD_WAIT;
    while decision(conn).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "an open connection still does not get {want} after {RELOAD_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.is_closed(), "the connection was closed by the reload");
}

fn reloads(m: &Metrics, result: &str) -> f64 {
    m.sum("portcullis_snapshot_reloads_total", &[("result", result)])
}

fn file_source(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// `GET /snapshot` names `version`, the SHA-256 of `bytes`, and `source`.
async fn assert_meta(p: &Served, version: u64, bytes: &[u8], source: &str) {
    let meta = p.snapshot_meta().await;
    assert_eq!(meta["version"], version, "{meta}");
    assert_eq!(meta["sha256"], sha256_hex(bytes), "{meta}");
    assert_eq!(meta["source"], source, "{meta}");
    assert_eq!(meta["bytes"], bytes.len(), "{meta}");
}

// ------------------------------------------------------------ file source

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_rewritten_in_place_applies_to_open_connections() {
    let w = World::new().await;
    let p = w.serve_v1().await;
    let mut h1 = denied_conn(&p, false).await;
    let mut h2 = denied_conn(&p, true).await;
    assert_meta(&p, 1, &w.bytes(1, RULES_A), &w.source()).await;

    let v7 = w.bytes(7, RULES_B);
    std::fs::write(w.file(), &v7).unwrap();
    until_decision(&mut h1, StatusCode::OK).await;
    until_decision(&mut h2, StatusCode::OK).await;
    assert_meta(&p, 7, &v7, &w.source()).await;
    // The other side of the change: the address v1 allowed is now denied.
    let mut was_allowed = office_conn(&p, ALLOWED_V4, false).await;
    assert_eq!(decision(&mut was_allowed).await, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_replaced_by_atomic_rename_is_picked_up() {
    let w = World::new().await;
    let p = w.serve_v1().await;
    let mut conn = denied_conn(&p, false).await;

    let v2 = w.bytes(2, RULES_B);
    replace_atomically(&w.file(), &v2);
    until_decision(&mut conn, StatusCode::OK).await;
    assert_meta(&p, 2, &v2, &w.source()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_update_is_picked_up() {
    use std::os::unix::fs::symlink;
    let w = World::new().await;
    // What the kubelet lays out for a mounted ConfigMap.
    let cm = w.path("configmap");
    std::fs::create_dir_all(cm.join("..2026_11_23_01")).unwrap();
    std::fs::write(
        cm.join("..2026_11_23_01/snapshot.json"),
        w.bytes(1, RULES_A),
    )
    .unwrap();
    symlink("..2026_11_23_01", cm.join("..data")).unwrap();
    symlink("..data/snapshot.json", cm.join("snapshot.json")).unwrap();
    let path = cm.join("snapshot.json");
    let p = Served::ready(&ServeOptions::path(&path)).await;
    let mut conn = denied_conn(&p, true).await;
    assert_meta(&p, 1, &w.bytes(1, RULES_A), &file_source(&path)).await;

    // The kubelet's update: a new timestamped directory, a new `..data`
    // symlink renamed over the old one, the old directory removed.
    let v2 = w.bytes(2, RULES_B);
    std::fs::create_dir_all(cm.join("..2026_11_23_02")).unwrap();
    std::fs::write(cm.join("..2026_11_23_02/snapshot.json"), &v2).unwrap();
    symlink("..2026_11_23_02", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(cm.join("..2026_11_23_01")).unwrap();

    until_decision(&mut conn, StatusCode::OK).await;
    assert_meta(&p, 2, &v2, &file_source(&path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_stale_files_are_refused_and_counted() {
    let w = World::new().await;
    let path = w.file();
    let v5 = w.bytes(5, RULES_A);
    std::fs::write(&path, &v5).unwrap();
    let p = Served::ready(&ServeOptions::path(&path)).await;
    let mut denied = office_conn(&p, DENIED_V4, false).await;
    let mut allowed = office_conn(&p, ALLOWED_V4, true).await;
    assert_eq!(decision(&mut denied).await, StatusCode::FORBIDDEN);
    let before = p.metrics().await;

    // Would allow everyone, but has a bad CIDR and an unknown policy: the
    // whole snapshot is refused.
    let mut invalid = w.snapshot(6, &["0.0.0.0/0"]);
    invalid["policies"][0]["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "source": "198.51.100.0/33" }));
    invalid["deployments"][1]["policies"]
        .as_array_mut()
        .unwrap()
        .push(json!("no-such-policy"));
    replace_atomically(&path, invalid.to_string());
    let m = wait_for_reloads(&p, "invalid", reloads(&before, "invalid") + 1.0).await;
    assert_eq!(reloads(&m, "applied"), reloads(&before, "applied"));
    assert_eq!(m.sum("portcullis_snapshot_version", &[]), 5.0);
    assert_eq!(decision(&mut denied).await, StatusCode::FORBIDDEN);
    assert_eq!(decision(&mut allowed).await, StatusCode::OK);
    assert_meta(&p, 5, &v5, &file_source(&path)).await;

    // Valid, but not newer than the version in force.
    replace_atomically(&path, w.bytes(5, &["0.0.0.0/0"]));
    let m = wait_for_reloads(&p, "stale", reloads(&before, "stale") + 1.0).await;
    assert_eq!(reloads(&m, "applied"), reloads(&before, "applied"));
    assert_eq!(decision(&mut denied).await, StatusCode::FORBIDDEN);
    assert_meta(&p, 5, &v5, &file_source(&path)).await;

    // The watcher keeps going after refusals: a good newer file applies.
    let v6 = w.bytes(6, RULES_B);
    replace_atomically(&path, &v6);
    until_decision(&mut denied, StatusCode::OK).await;
    assert_eq!(decision(&mut allowed).await, StatusCode::FORBIDDEN);
    assert_meta(&p, 6, &v6, &file_source(&path)).await;
}

/// Waits until `snapshot_reloads_total{result}` reaches `want`, and checks
/// it does not overshoot (each refused file is counted once, not per poll).
async fn wait_for_reloads(p: &Served, result: &str, want: f64) -> Metrics {
    let deadline = std::time::Instant::now() + RELOAD_WAIT;
    loop {
        let m = p.metrics().await;
        if reloads(&m, result) >= want {
            // A few more polls must not count the same file again.
            tokio::time::sleep(Duration::from_millis(350)).await;
            let m = p.metrics().await;
            assert_eq!(reloads(&m, result), want, "{}", m.text);
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot_reloads_total{{result=\"{result}\"}} did not reach {want}:\n{}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------ URL source

/// A control plane serving one snapshot with an ETag, answering 304 to a
/// matching `If-None-Match`.
#[derive(Default)]
struct ControlPlane {
    body: Bytes,
    etag: String,
    /// The `If-None-Match` of every request, in order.
    seen: Vec<Option<String>>,
    bodies_sent: usize,
}

async fn start_control_plane(state: Arc<Mutex<ControlPlane>>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let inm = req
                            .headers()
                            .get(http::header::IF_NONE_MATCH)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let mut s = state.lock().unwrap();
                        s.seen.push(inm.clone());
                        let mut resp = if inm.as_deref() == Some(s.etag.as_str()) {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::NOT_MODIFIED;
                            r
                        } else {
                            s.bodies_sent += 1;
                            Response::new(Full::new(s.body.clone()))
                        };
                        resp.headers_mut()
                            .insert(http::header::ETAG, s.etag.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_source_polls_with_etags_and_applies_changes() {
    let w = World::new().await;
    let v1 = w.bytes(1, RULES_A);
    let state = Arc::new(Mutex::new(ControlPlane {
        body: Bytes::from(v1.clone()),
        etag: "\"v1\"".into(),
        ..ControlPlane::default()
    }));
    let (addr, server) = start_control_plane(state.clone()).await;
    let url = format!("http://{addr}/snapshot");
    let p = Served::ready(&ServeOptions::url(&url)).await;
    let mut conn = denied_conn(&p, false).await;
    assert_meta(&p, 1, &v1, &format!("url:{url}")).await;

    let conditional = |etag: &'static str| {
        let state = state.clone();
        move || {
            let n = state
                .lock()
                .unwrap()
                .seen
                .iter()
                .filter(|s| s.as_deref() == Some(etag))
                .count();
            async move { n >= 2 }
        }
    };
    eventually(
        RELOAD_WAIT,
        "polls carry If-None-Match: \"v1\"",
        conditional("\"v1\""),
    )
    .await;

    let v2 = w.bytes(2, RULES_B);
    {
        let mut s = state.lock().unwrap();
        s.body = Bytes::from(v2.clone());
        s.etag = "\"v2\"".into();
    }
    until_decision(&mut conn, StatusCode::OK).await;
    assert_meta(&p, 2, &v2, &format!("url:{url}")).await;
    eventually(
        RELOAD_WAIT,
        "polls carry If-None-Match: \"v2\"",
        conditional("\"v2\""),
    )
    .await;

    let s = state.lock().unwrap();
    assert_eq!(s.seen[0], None, "the first fetch is unconditional");
    assert_eq!(
        s.bodies_sent, 2,
        "unchanged polls got 304, not the body again: {:?}",
        s.seen
    );
    drop(s);
    server.abort();
}

// ------------------------------------------------------------ PUT /snapshot

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_snapshot_authenticates_validates_and_applies_at_once() {
    let w = World::new().await;
    let max_bytes = 16 * 1024;
    let p = w.serve_v1_with(|o| o.max_bytes(max_bytes)).await;
    let mut conn = denied_conn(&p, true).await;
    let v2 = Bytes::from(w.bytes(2, RULES_B));

    // No token, a wrong token, another scheme: 401 with a challenge.
    let wrong = "Bearer not-the-token".to_owned();
    let basic = format!("Basic {ADMIN_TOKEN}");
    for headers in [
        vec![],
        vec![("authorization", wrong.as_str())],
        vec![("authorization", basic.as_str())],
    ] {
        let r = p
            .admin(Method::PUT, "/snapshot", &headers, Some(v2.clone()))
            .await;
        r.assert_local(StatusCode::UNAUTHORIZED, None);
        let challenge = r.headers.get(http::header::WWW_AUTHENTICATE);
        assert!(
            challenge.is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(decision(&mut conn).await, StatusCode::FORBIDDEN);
    assert_eq!(p.snapshot_meta().await["version"], 1);

    // The right token and a valid snapshot: applied before the answer.
    let r = p.put_snapshot(v2.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["snapshot"]["version"], 2);
    assert_eq!(decision(&mut conn).await, StatusCode::OK);
    assert_meta(&p, 2, &v2, "admin").await;

    // Invalid: every error, each with its JSON path.
    let mut invalid = w.snapshot(3, &["10.0.0.0/33", "0.0.0.0/0"]);
    invalid["deployments"][1]["policies"]
        .as_array_mut()
        .unwrap()
        .push(json!("no-such-policy"));
    let r = p.put_snapshot(invalid.to_string()).await;
    r.assert_local(StatusCode::BAD_REQUEST, None);
    let errors = r.json()["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.len() >= 2, "{}", r.text());
    for e in &errors {
        assert!(e["path"].is_string() && e["message"].is_string(), "{e}");
    }
    let paths: Vec<&str> = errors.iter().filter_map(|e| e["path"].as_str()).collect();
    assert!(paths.contains(&"policies[0].rules[0].source"), "{paths:?}");
    assert!(paths.contains(&"deployments[1].policies[1]"), "{paths:?}");
    assert_eq!(reloads(&p.metrics().await, "invalid"), 1.0);

    // Stale: the running version, and an older one.
    for version in [2, 1] {
        let r = p.put_snapshot(w.bytes(version, &["0.0.0.0/0"])).await;
        r.assert_local(StatusCode::CONFLICT, None);
    }

    // Over snapshot.max_bytes (valid JSON, padded): 413.
    let padded = format!("{}{}", " ".repeat(max_bytes), w.snapshot(4, RULES_A));
    let r = p.put_snapshot(padded).await;
    r.assert_local(StatusCode::PAYLOAD_TOO_LARGE, None);

    let r = p.admin(Method::DELETE, "/snapshot", &[], None).await;
    r.assert_local(StatusCode::METHOD_NOT_ALLOWED, None);
    assert!(r.headers.get(http::header::ALLOW).is_some_and(|v| {
        let v = v.to_str().unwrap();
        v.contains("GET") && v.contains("PUT")
    }));
    p.admin_get("/no-such-endpoint")
        .await
        .assert_local(StatusCode::NOT_FOUND, None);

    // None of the refused snapshots touched what is in force.
    assert_eq!(decision(&mut conn).await, StatusCode::OK);
    let mut was_allowed = office_conn(&p, ALLOWED_V4, false).await;
    assert_eq!(decision(&mut was_allowed).await, StatusCode::FORBIDDEN);
    assert_meta(&p, 2, &v2, "admin").await;
    let m = p.metrics().await;
    assert_eq!(reloads(&m, "applied"), 2.0);
    assert_eq!(reloads(&m, "stale"), 2.0);
}

/// `request_line` to the admin API written by hand: a head with the token,
/// `content-length` and `extra` header lines, then `body` (which may be
/// less than `content-length` says: the rest never comes).
async fn admin_raw(
    p: &Served,
    request_line: &str,
    content_length: usize,
    extra: &[&str],
    body: &[u8],
) -> TcpStream {
    let mut tcp = within("admin TCP connect", TcpStream::connect(p.admin))
        .await
        .expect("admin TCP connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let mut head = format!(
        "{request_line} HTTP/1.1\r\nhost: admin.test\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    within("admin raw write", tcp.write_all(head.as_bytes()))
        .await
        .expect("write the request head");
    if !body.is_empty() {
        within("admin raw write", tcp.write_all(body))
            .await
            .expect("write the request body");
    }
    tcp
}

/// Everything the admin API sends on `tcp` until it closes the connection,
/// which must be within `limit`; and the status of the first response.
async fn answer_then_close(tcp: &mut TcpStream, limit: Duration) -> (StatusCode, String) {
    let mut received = Vec::new();
    // A reset after the answer counts as a close: what came before it is kept.
    let _ = within_for(
        limit,
        "the admin API to answer and close",
        tcp.read_to_end(&mut received),
    )
    .await;
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or_else(|| panic!("no HTTP/1.1 response: {text:?}"));
    (status, text)
}

fn says_connection_close(response: &str) -> bool {
    response
        .lines()
        .any(|l| l.eq_ignore_ascii_case("connection: close"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_declared_over_the_limit_is_refused_without_reading_it() {
    let w = World::new().await;
    let max_bytes = 16 * 1024;
    let p = w.serve_v1_with(|o| o.max_bytes(max_bytes)).await;

    // Only the head is sent. The 413 must come at once, not after a body
    // that never arrives; and with `Expect: 100-continue`, no 100 first.
    // The connection is closed: the body the client may still send is
    // not a next request.
    let refusals = [
        ("PUT /snapshot", max_bytes + 1, None),
        ("PUT /snapshot", max_bytes + 1, Some("expect: 100-continue")),
        ("PUT /snapshot", 600 * 1024 * 1024, None),
        ("POST /explain", 64 * 1024 + 1, None),
    ];
    for (request_line, declared, expect) in refusals {
        let extra: Vec<&str> = expect.into_iter().collect();
        let mut tcp = admin_raw(&p, request_line, declared, &extra, b"").await;
        let (status, text) = answer_then_close(&mut tcp, Duration::from_secs(2)).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{request_line}, {declared} bytes declared, {expect:?}: {text}"
        );
        assert!(says_connection_close(&text), "{text}");
        assert!(text.contains(&format!("{declared} bytes")), "{text}");
    }
    // Without the token, still 401 at once, whatever the length.
    let mut tcp = within("admin TCP connect", TcpStream::connect(p.admin))
        .await
        .expect("admin TCP connect");
    let head = "PUT /snapshot HTTP/1.1\r\nhost: admin.test\r\ncontent-length: 629145600\r\n\r\n";
    within("admin raw write", tcp.write_all(head.as_bytes()))
        .await
        .expect("write the request head");
    let (status, text) = answer_then_close(&mut tcp, Duration::from_secs(2)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");

    // At the limit, the body is read (and judged: spaces are no snapshot).
    let at_limit = vec![b' '; max_bytes];
    let mut tcp = admin_raw(
        &p,
        "PUT /snapshot",
        max_bytes,
        &["connection: close"],
        &at_limit,
    )
    .await;
    let (status, text) = answer_then_close(&mut tcp, WAIT).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");

    assert_eq!(p.snapshot_meta().await["version"], 1);
    assert_eq!(reloads(&p.metrics().await, "applied"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_that_stalls_gets_408_after_body_timeout() {
    let w = World::new().await;
    let body_timeout = Duration::from_millis(500);
    let p = w.serve_v1_with(|o| o.admin_body_timeout("500ms")).await;
    let v2 = w.bytes(2, RULES_B);

    // Half the body, then nothing: 408 once body_timeout has passed with
    // no byte, and the connection closed.
    for (request_line, body) in [
        ("PUT /snapshot", v2.clone()),
        (
            "POST /explain",
            json!({ "host": host(OFFICE), "source": ALLOWED_V4 })
                .to_string()
                .into_bytes(),
        ),
    ] {
        let started = std::time::Instant::now();
        let half = &body[..body.len() / 2];
        let mut tcp = admin_raw(&p, request_line, body.len(), &[], half).await;
        let (status, text) = answer_then_close(&mut tcp, WAIT).await;
        assert_eq!(
            status,
            StatusCode::REQUEST_TIMEOUT,
            "{request_line}: {text}"
        );
        assert!(says_connection_close(&text), "{text}");
        assert!(
            started.elapsed() >= body_timeout,
            "{request_line}: 408 after {:?}, before body_timeout",
            started.elapsed()
        );
    }
    assert_eq!(p.snapshot_meta().await["version"], 1);

    // body_timeout bounds each pause, not the upload: a body arriving in
    // pieces, 150 ms apart, 900 ms in all, is applied.
    let mut tcp = admin_raw(&p, "PUT /snapshot", v2.len(), &["connection: close"], b"").await;
    for piece in v2.chunks(v2.len().div_ceil(6)) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tcp.write_all(piece).await.expect("write a body piece");
    }
    let (status, text) = answer_then_close(&mut tcp, WAIT).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_meta(&p, 2, &v2, "admin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive() {
    let w = World::new().await;
    let p = w.serve_v1().await;

    // RFC 9110 §11.1: the scheme is case-insensitive; one or more blanks
    // may follow it.
    let schemes = ["bearer ", "BEARER ", "bEaReR\t", "Bearer   "];
    for (version, scheme) in (2..).zip(schemes) {
        let auth = format!("{scheme}{ADMIN_TOKEN}");
        let r = p
            .admin(
                Method::PUT,
                "/snapshot",
                &[("authorization", auth.as_str())],
                Some(Bytes::from(w.bytes(version, RULES_B))),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{auth:?}: {}", r.text());
        assert_eq!(r.json()["snapshot"]["version"], version, "{auth:?}");
    }
    // The token is still checked, whatever the scheme's case.
    for auth in ["bearer not-the-token", "BEARER", "bearer\t"] {
        let r = p
            .admin(
                Method::PUT,
                "/snapshot",
                &[("authorization", auth)],
                Some(Bytes::from(w.bytes(9, RULES_A))),
            )
            .await;
        r.assert_local(StatusCode::UNAUTHORIZED, None);
    }
    assert_eq!(p.snapshot_meta().await["version"], 5);
}

// ------------------------------------------------------------ POST /explain

/// `portcullis explain ... --format json`, parsed.
async fn explain_cli(snapshot: &Path, host: &str, source: &str) -> Value {
    let args = [
        "explain",
        "--snapshot",
        &snapshot.display().to_string(),
        "--host",
        host,
        "--source",
        source,
        "--zone",
        ZONE,
        "--format",
        "json",
    ]
    .map(str::to_owned);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .output()
            .expect("run portcullis explain")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("explain --format json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_explain_answers_like_the_explain_command() {
    let w = World::new().await;
    let path = w.file();
    std::fs::write(&path, w.bytes(1, &["192.0.2.0/24", "203.0.113.0/24"])).unwrap();
    let p = Served::ready(&ServeOptions::path(&path)).await;
    let explain = |body: String| {
        p.admin(
            Method::POST,
            "/explain",
            &[("content-type", "application/json")],
            Some(Bytes::from(body)),
        )
    };

    let cases = [
        (host(OFFICE), ALLOWED_V4.to_string(), "allowed", "ip"),
        (host(OFFICE), DENIED_V4.to_string(), "denied", "unmatched"),
        (host(OPEN), DENIED_V4.to_string(), "allowed", "no_policy"),
        (
            "nosuch.es.test".to_owned(),
            DENIED_V4.to_string(),
            "denied",
            "unknown_deployment",
        ),
    ];
    for (h, source, decision, reason) in cases {
        let r = explain(json!({ "host": h, "source": source }).to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.content_type(), Some("application/json"));
        let api = r.json();
        let cli = explain_cli(&path, &h, &source).await;
        assert_eq!(api, cli, "POST /explain and `explain --format json` differ");
        let keys: Vec<&String> = api.as_object().unwrap().keys().collect();
        assert_eq!(keys, EXPLAIN_KEYS, "{api}");
        assert_eq!(
            (api["decision"].as_str(), api["reason"].as_str()),
            (Some(decision), Some(reason)),
            "{h} from {source}: {api}"
        );
    }
    let allowed = explain(json!({ "host": host(OFFICE), "source": ALLOWED_V4 }).to_string()).await;
    assert_eq!(
        allowed.json(),
        json!({ "decision": "allowed", "reason": "ip", "deployment": OFFICE,
                "product": "es", "policy": "office-ips", "rule": 1 })
    );
    let denied = explain(json!({ "host": host(OFFICE), "source": DENIED_V4 }).to_string()).await;
    assert_eq!(
        denied.json(),
        json!({ "decision": "denied", "reason": "unmatched", "deployment": OFFICE,
                "product": "es", "policy": null, "rule": null })
    );

    for (what, body) in [
        (
            "bad JSON",
            r#"{"host": "ip0001.es.test", "source": "#.to_owned(),
        ),
        (
            "bad source IP",
            json!({ "host": host(OFFICE), "source": "203.0.113.300" }).to_string(),
        ),
        (
            "two endpoint kinds",
            json!({ "host": host(OFFICE), "source": ALLOWED_V4,
                    "aws_vpce": VPCE, "azure_link_id": AZURE_LINK })
            .to_string(),
        ),
    ] {
        let r = explain(body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text());
        r.assert_local(StatusCode::BAD_REQUEST, None);
    }
}

// ------------------------------------------------------------ health and readiness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_a_snapshot_is_loadable() {
    let w = World::new().await;
    let path = w.file();
    let p = Served::start(&ServeOptions::path(&path)).await;

    let health = p.admin_get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["ok"], true);
    // Not a start-up race: no snapshot is loadable, so it stays not ready.
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.admin_get("/readyz")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    p.admin_get("/snapshot")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    // The data plane answers, but cannot decide, so forwards nothing.
    let mut conn = office_conn(&p, ALLOWED_V4, false).await;
    conn.get(&host(OFFICE), "/")
        .await
        .assert_local(StatusCode::SERVICE_UNAVAILABLE, None);
    assert_eq!(w.es.requests(), 0);
    assert!(reloads(&p.metrics().await, "unreadable") >= 1.0);

    replace_atomically(&path, w.bytes(1, RULES_A));
    p.wait_ready().await;
    let ready = p.admin_get("/readyz").await;
    assert_eq!(ready.json()["snapshot_version"], 1, "{}", ready.text());
    assert_eq!(p.admin_get("/healthz").await.status, StatusCode::OK);
    // The connection opened while not ready now gets decisions.
    assert_eq!(decision(&mut conn).await, StatusCode::OK);
    assert_eq!(w.es.requests(), 1);
}

// ------------------------------------------------------------ state directory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_a_source_serves_the_saved_snapshot() {
    let w = World::new().await;
    let path = w.file();
    let state = w.path("state");
    std::fs::write(&path, w.bytes(1, RULES_A)).unwrap();
    let options = ServeOptions::path(&path).state_dir(&state);

    let p = Served::ready(&options).await;
    let v2 = w.bytes(2, RULES_B);
    let r = p.put_snapshot(v2.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    p.stop().await;

    // Restarts: the source gone, then the source invalid.
    std::fs::remove_file(&path).unwrap();
    for broken in ["missing", "invalid"] {
        if broken == "invalid" {
            std::fs::write(&path, b"{\"version\": 3, \"deployments\": [").unwrap();
        }
        let p = Served::ready(&options).await;
        let mut denied = office_conn(&p, DENIED_V4, false).await;
        let mut allowed = office_conn(&p, ALLOWED_V4, true).await;
        assert_eq!(
            decision(&mut denied).await,
            StatusCode::OK,
            "{broken}: as v2"
        );
        assert_eq!(
            decision(&mut allowed).await,
            StatusCode::FORBIDDEN,
            "{broken}: as v2"
        );
        let meta = p.snapshot_meta().await;
        assert_eq!(meta["version"], 2, "{broken}: {meta}");
        assert_eq!(meta["sha256"], sha256_hex(&v2), "{broken}: {meta}");
        let source = meta["source"].as_str().unwrap_or_default();
        assert!(source.starts_with("state:"), "{broken}: {meta}");
        let m = p.metrics().await;
        assert_eq!(reloads(&m, "restored"), 1.0, "{broken}:\n{}", m.text);
        assert_eq!(reloads(&m, "applied"), 0.0, "{broken}:\n{}", m.text);
        assert_eq!(m.sum("portcullis_snapshot_version", &[]), 2.0);
        if broken == "invalid" {
            assert_eq!(reloads(&m, "invalid"), 1.0, "{}", m.text);
            // Once the source has a good, newer snapshot again, it wins.
            let v3 = w.bytes(3, RULES_A);
            replace_atomically(&path, &v3);
            until_decision(&mut denied, StatusCode::FORBIDDEN).await;
            assert_meta(&p, 3, &v3, &file_source(&path)).await;
        }
        drop((denied, allowed));
        p.stop().await;
    }
}

// ------------------------------------------------------------ metrics

/// SPEC §8, with the prefix, and each family's type.
const FAMILIES: [(&str, &str); 10] = [
    ("portcullis_requests_total", "counter"),
    ("portcullis_connections_active", "gauge"),
    ("portcullis_connections_total", "counter"),
    ("portcullis_proxy_protocol_errors_total", "counter"),
    ("portcullis_tls_handshake_errors_total", "counter"),
    ("portcullis_upstream_request_duration_seconds", "histogram"),
    ("portcullis_upstream_errors_total", "counter"),
    ("portcullis_snapshot_version", "gauge"),
    ("portcullis_snapshot_loaded_timestamp_seconds", "gauge"),
    ("portcullis_snapshot_reloads_total", "counter"),
];

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn malformed_proxy_header(p: &Served) {
    let mut raw = Raw::connect(p.data, None).await;
    raw.write(b"PROXY NONSENSE 1 2 3\r\n").await;
    raw.closed_within(WAIT).await;
}

async fn plain_http_instead_of_tls(p: &Served) {
    let mut raw = Raw::connect(p.data, None).await;
    let mut bytes = v1_from(ALLOWED_V4);
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: ip0001.es.test\r\n\r\n");
    raw.write(&bytes).await;
    raw.closed_within(WAIT).await;
}

/// Scrapes until `portcullis_connections_total` reaches `ended` (closing
/// is noticed asynchronously).
async fn metrics_after_connections(p: &Served, ended: f64) -> Metrics {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = p.metrics().await;
        let total = m.sum("portcullis_connections_total", &[]);
        if total >= ended {
            assert_eq!(total, ended, "{}", m.text);
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "{}", m.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_spec_families_move_and_carry_no_unbounded_labels() {
    let w = World::new().await;
    let p = w.serve_v1().await;

    // Traffic touching every family: 6 connections in all.
    {
        let mut allowed = office_conn(&p, ALLOWED_V4, false).await;
        assert_eq!(decision(&mut allowed).await, StatusCode::OK);
        assert_eq!(decision(&mut allowed).await, StatusCode::OK);
        let _denied = denied_conn(&p, true).await;
        let mut dead = p
            .client(&host(DEAD))
            .preamble(v1_from(ALLOWED_V4))
            .connect()
            .await;
        dead.get(&host(DEAD), "/")
            .await
            .assert_local(StatusCode::BAD_GATEWAY, None);
        let mut unknown = p
            .client("nosuch.es.test")
            .preamble(v1_from(DENIED_V4))
            .connect()
            .await;
        unknown
            .get("nosuch.es.test", "/")
            .await
            .assert_local(StatusCode::NOT_FOUND, Some(UNKNOWN_BODY));
    }
    malformed_proxy_header(&p).await;
    plain_http_instead_of_tls(&p).await;
    let m1 = metrics_after_connections(&p, 6.0).await;

    for (family, kind) in FAMILIES {
        assert_eq!(
            m1.types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE {family} {kind}\n{}",
            m1.text
        );
    }
    for s in &m1.samples {
        assert!(s.name.starts_with("portcullis_"), "{}", s.name);
    }
    let requests = |m: &Metrics, decision: &str, reason: &str| {
        m.sum(
            "portcullis_requests_total",
            &[
                ("decision", decision),
                ("reason", reason),
                ("product", "es"),
            ],
        )
    };
    assert_eq!(requests(&m1, "allowed", "ip"), 2.0, "{}", m1.text);
    assert_eq!(requests(&m1, "denied", "unmatched"), 1.0, "{}", m1.text);
    assert_eq!(requests(&m1, "allowed", "no_policy"), 1.0, "{}", m1.text);
    assert_eq!(
        m1.sum(
            "portcullis_requests_total",
            &[("reason", "unknown_deployment")]
        ),
        1.0
    );
    assert_eq!(m1.sum("portcullis_connections_active", &[]), 0.0);
    assert_eq!(m1.sum("portcullis_proxy_protocol_errors_total", &[]), 1.0);
    assert_eq!(m1.sum("portcullis_tls_handshake_errors_total", &[]), 1.0);
    assert!(m1.sum("portcullis_upstream_errors_total", &[]) >= 1.0);
    assert!(m1.has("portcullis_upstream_request_duration_seconds_bucket"));
    let forwarded = |m: &Metrics| {
        m.sum(
            "portcullis_upstream_request_duration_seconds_count",
            &[("product", "es")],
        )
    };
    assert!(forwarded(&m1) >= 2.0, "{}", m1.text);
    assert_eq!(m1.sum("portcullis_snapshot_version", &[]), 1.0);
    let loaded_at = m1.sum("portcullis_snapshot_loaded_timestamp_seconds", &[]);
    assert!((now_secs() - loaded_at).abs() < 60.0, "{loaded_at}");
    assert_eq!(reloads(&m1, "applied"), 1.0);

    // No label carries a client address, a deployment id or a host name.
    let unbounded = [
        "203.0.113",
        "198.51.100",
        "127.0.0.1",
        OFFICE,
        OPEN,
        DEAD,
        "nosuch",
        ZONE,
    ];
    for s in &m1.samples {
        for (k, v) in &s.labels {
            assert!(
                !unbounded.iter().any(|u| v.contains(u)),
                "{}{{{k}=\"{v}\"}} carries an unbounded value",
                s.name
            );
        }
    }

    // A second round: the counters move by exactly what happened.
    let mut allowed = office_conn(&p, ALLOWED_V4, true).await;
    for _ in 0..3 {
        assert_eq!(decision(&mut allowed).await, StatusCode::OK);
    }
    malformed_proxy_header(&p).await;
    let r = p.put_snapshot(w.bytes(2, RULES_A)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m2 = metrics_after_connections(&p, 7.0).await;
    assert_eq!(
        requests(&m2, "allowed", "ip") - requests(&m1, "allowed", "ip"),
        3.0
    );
    assert_eq!(requests(&m2, "denied", "unmatched"), 1.0);
    assert_eq!(forwarded(&m2) - forwarded(&m1), 3.0);
    assert_eq!(
        m2.sum("portcullis_connections_active", &[]),
        1.0,
        "the open one"
    );
    assert_eq!(m2.sum("portcullis_proxy_protocol_errors_total", &[]), 2.0);
    assert_eq!(reloads(&m2, "applied"), 2.0);
    assert_eq!(m2.sum("portcullis_snapshot_version", &[]), 2.0);
    assert!(m2.sum("portcullis_snapshot_loaded_timestamp_seconds", &[]) >= loaded_at);
}

// ------------------------------------------------------------ concurrent appliers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_leave_state_and_metrics_matching_the_snapshot_in_force() {
    let w = World::new().await;
    let state = w.path("state");
    let p = Arc::new(w.serve_v1_with(|o| o.state_dir(&state)).await);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(2));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (p, next) = (p.clone(), next.clone());
        let (es, dead) = (w.es.addr, w.dead);
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let v = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let rules = if v % 2 == 0 { RULES_A } else { RULES_B };
                let body = serde_json::to_vec_pretty(&small_world(v, es, dead, rules)).unwrap();
                let r = p.put_snapshot(body).await;
                assert!(
                    matches!(r.status, StatusCode::OK | StatusCode::CONFLICT),
                    "{}",
                    r.text()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let meta = p.snapshot_meta().await;
    let saved = std::fs::read(state.join("snapshot.json")).unwrap();
    let m = p.metrics().await;
    assert_eq!(
        m.sum("portcullis_snapshot_version", &[]),
        meta["version"].as_f64().unwrap(),
        "snapshot_version gauge vs GET /snapshot"
    );
    assert_eq!(
        sha256_hex(&saved),
        meta["sha256"].as_str().unwrap(),
        "the state directory holds another snapshot than the one in force ({meta})"
    );
}

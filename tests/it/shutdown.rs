//! Graceful shutdown of the real binary (issue 5 §3): on SIGTERM or SIGINT
//! portcullis stops accepting, turns `/readyz` to 503, lets requests in
//! flight finish within `server.shutdown_grace`, closes idle keep-alive
//! connections politely (HTTP/1.1 `Connection: close` on the last
//! response, HTTP/2 GOAWAY), then exits 0.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis_test_kit::harness::*;
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_secs(5);
/// How long the in-flight requests take at the backend: well inside the
/// grace period, well after the signal.
const IN_FLIGHT_MS: u64 = 1_500;

/// `portcullis run` as a child process, with its own files. Killed on drop.
struct Process {
    running: RunningBinary,
    _files: TempDir,
}

impl std::ops::Deref for Process {
    type Target = RunningBinary;

    fn deref(&self) -> &RunningBinary {
        &self.running
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut RunningBinary {
        &mut self.running
    }
}

impl Process {
    async fn start(backend: SocketAddr) -> Self {
        let files = TempDir::new();
        let world = small_world(1, backend, unused_port(), &["203.0.113.0/24"]);
        let config = ProxyConfig::new(&files)
            .snapshot(&files, &world)
            .admin_token(&files)
            .set("server.shutdown_grace", format!("{}s", GRACE.as_secs()))
            .write(&files);
        let exe = std::path::Path::new(env!("CARGO_BIN_EXE_portcullis"));
        Self {
            running: RunningBinary::start(exe, &config, &files.0).await,
            _files: files,
        }
    }

    fn client(&self) -> ClientBuilder {
        ClientBuilder::new(self.data, &host(OPEN)).preamble(v1_from(ALLOWED_V4))
    }

    /// Sends signal `name`; returns when, to time the exit against.
    fn signal_now(&self, name: &str) -> Instant {
        let signalled = Instant::now();
        self.signal(name);
        signalled
    }
}

/// Waits until `backend` has received `n` requests in all, so that the
/// slow ones are in flight when the signal is sent.
async fn until_at_backend(backend: &Backend, n: usize, what: &str) {
    eventually(WAIT, what, || {
        let seen = backend.requests();
        async move { seen >= n }
    })
    .await;
}

async fn readyz(admin: SocketAddr) -> Option<StatusCode> {
    admin_request(admin, Method::GET, "/readyz", &[], None)
        .await
        .ok()
        .map(|r| r.status)
}

fn slow_path() -> String {
    format!("/slow?ms={IN_FLIGHT_MS}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_closes_idle_connections_and_exits_zero() {
    let backend = Backend::start("es").await;
    let mut p = Process::start(backend.addr).await;
    let host = host(OPEN);

    // Idle keep-alive connections, one per protocol, each used once.
    let mut idle_h1 = p.client().connect().await;
    let mut idle_h2 = p.client().h2().connect().await;
    for conn in [&mut idle_h1, &mut idle_h2] {
        assert_eq!(conn.get(&host, "/").await.status, StatusCode::OK);
    }
    // Requests in flight when the signal arrives.
    let mut busy_h1 = p.client().connect().await;
    let busy_h2 = p.client().h2().connect().await;
    let (h, path) = (host.clone(), slow_path());
    let in_flight_h1 = tokio::spawn(async move {
        let reply = busy_h1.get(&h, &path).await;
        (reply, busy_h1)
    });
    let mut sender = busy_h2.h2_sender();
    let req = busy_h2
        .request(Method::GET, &host, &slow_path())
        .body(empty())
        .expect("request");
    let in_flight_h2 = tokio::spawn(async move { sender.send_request(req).await });
    // Both requests have reached the backend before the signal.
    until_at_backend(&backend, 4, "both slow requests at the backend").await;

    let signalled = p.signal_now("TERM");

    // Not ready, and no longer accepting, at once.
    let admin = p.admin;
    eventually(
        Duration::from_secs(2),
        "/readyz answers 503",
        || async move { readyz(admin).await == Some(StatusCode::SERVICE_UNAVAILABLE) },
    )
    .await;
    let data = p.data;
    eventually(
        Duration::from_secs(2),
        "the data port refuses",
        || async move { TcpStream::connect(data).await.is_err() },
    )
    .await;
    // Idle connections are closed (HTTP/2 with GOAWAY) without waiting
    // for the grace period.
    eventually(Duration::from_secs(2), "idle connections closed", || {
        let closed = idle_h1.is_closed() && idle_h2.is_closed();
        async move { closed }
    })
    .await;

    // The requests in flight complete; the HTTP/1.1 one says it is the
    // last on its connection.
    let (reply, busy_h1) = within("the in-flight HTTP/1.1 request", in_flight_h1)
        .await
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply
            .headers
            .get(http::header::CONNECTION)
            .map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let h2_reply = within("the in-flight HTTP/2 request", in_flight_h2)
        .await
        .expect("task")
        .expect("the in-flight HTTP/2 request completes");
    assert_eq!(h2_reply.status(), StatusCode::OK);
    eventually(Duration::from_secs(2), "busy connections closed", || {
        let closed = busy_h1.is_closed() && busy_h2.is_closed();
        async move { closed }
    })
    .await;

    // Exits 0 once nothing is open: well before the grace period ends.
    assert_eq!(p.exit_code(GRACE).await, Some(0));
    assert!(
        signalled.elapsed() < GRACE,
        "took {:?}: waited for the grace period instead of the last request",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_nothing_in_flight_exits_zero_at_once() {
    let backend = Backend::start("es").await;
    let mut p = Process::start(backend.addr).await;
    let mut conn = p.client().connect().await;
    assert_eq!(conn.get(&host(OPEN), "/").await.status, StatusCode::OK);
    let signalled = p.signal_now("INT");
    assert_eq!(p.exit_code(GRACE).await, Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outliving_the_grace_period_is_cut_and_the_process_still_exits() {
    let backend = Backend::start("es").await;
    let mut p = Process::start(backend.addr).await;
    let mut conn = p.client().connect().await.patient(GRACE * 3);
    let h = host(OPEN);
    let stuck = tokio::spawn(async move {
        let req = conn
            .request(Method::GET, &h, "/slow?ms=60000")
            .body(empty())
            .expect("request");
        conn.send(req).await.map(|r| r.status)
    });
    until_at_backend(&backend, 1, "the slow request at the backend").await;
    let signalled = p.signal_now("TERM");
    assert_eq!(p.exit_code(GRACE * 2).await, Some(0));
    let waited = signalled.elapsed();
    assert!(
        waited >= GRACE - Duration::from_millis(100) && waited < GRACE * 2,
        "exited after {waited:?}, grace is {GRACE:?}"
    );
    let outcome = within("the cut request", stuck).await.expect("task");
    assert!(
        outcome.is_err(),
        "the request outliving the grace period got {outcome:?}"
    );
}

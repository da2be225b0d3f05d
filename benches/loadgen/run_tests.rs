//! `run` end to end against the demo's plaintext sample backend: every mode
//! stops by itself and counts what the server answered.

use clap::Parser as _;

use super::*;
use crate::stats::Counts;

async fn run(extra: &[&str]) -> (Outcome, Counts) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (trigger, shutdown) = portcullis::shutdown::channel();
    if extra.contains(&"h2") {
        tokio::spawn(h2_backend(listener));
    } else {
        tokio::spawn(portcullis::demo::sample_backend(listener, shutdown));
    }
    let mut argv = vec![
        "portcullis-loadgen",
        "--target",
        &addr,
        "--plaintext",
        "--proxy-protocol",
        "off",
        "--connections",
        "4",
        "--duration",
        "300ms",
        "--timeout",
        "2s",
    ];
    argv.extend_from_slice(extra);
    let args = crate::Args::try_parse_from(argv).unwrap();
    let (plan, settings, sources) = crate::prepare(&args).unwrap();
    let stats = Arc::new(Stats::new().unwrap());
    let started = std::time::Instant::now();
    let outcome = execute(plan, settings, sources, stats.clone()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "did not stop");
    trigger.drain();
    let counts = stats.lock().clone();
    (outcome, counts)
}

/// A plaintext HTTP/2 server answering 200 to everything.
async fn h2_backend(listener: tokio::net::TcpListener) {
    for _ in 0..100 {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"{}"),
                )))
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[tokio::test]
async fn closed_loop_keeps_connections_busy() {
    let (outcome, c) = run(&[]).await;
    assert!(c.status_count(200) > 10, "{:?}", c.status);
    assert_eq!(c.errors(), 0, "{:?}", c.failures);
    assert_eq!(
        outcome.connections_opened, 0,
        "keep-alive: no new connections"
    );
    assert_eq!(c.latency.len(), c.responses());
}

#[tokio::test]
async fn one_request_per_connection_reconnects_every_time() {
    let (outcome, c) = run(&["--requests-per-connection", "1"]).await;
    assert!(c.responses() > 4);
    assert_eq!(c.errors(), 0, "{:?}", c.failures);
    // Each window request beyond the first per slot needed a new one.
    assert!(outcome.connections_opened + 4 >= c.responses());
}

#[tokio::test]
async fn open_loop_sends_exactly_the_scheduled_requests() {
    let (outcome, c) = run(&["--mode", "open", "--rate", "200"]).await;
    assert_eq!(outcome.scheduled(), Some(60));
    assert_eq!(c.responses(), 60);
    assert_eq!(c.errors(), 0, "{:?}", c.failures);
}

#[tokio::test]
async fn idle_connections_are_opened_and_held() {
    let (outcome, c) = run(&["--mode", "idle"]).await;
    let idle = outcome.idle().expect("idle outcome");
    assert_eq!(idle.established, 4);
    assert_eq!(idle.held_at_end, 4);
    assert_eq!(c.status_count(200), 4);
}

#[tokio::test]
async fn http2_streams_share_connections() {
    let (outcome, c) = run(&["--http", "h2", "--h2-streams", "3"]).await;
    assert!(c.status_count(200) > 10, "{:?} {:?}", c.status, c.failures);
    assert_eq!(c.errors(), 0, "{:?}", c.failures);
    assert_eq!(outcome.connections_opened, 0);
    // 12 workers, 4 connections.
    assert_eq!(c.connect.len(), 4);
}

#[tokio::test]
async fn a_server_that_does_not_speak_the_protocol_is_counted_not_fatal() {
    // The server sends nothing and closes: PROXY off, TLS expected.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        for _ in 0..1000 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            drop(tcp);
        }
    });
    let args = crate::Args::try_parse_from([
        "portcullis-loadgen",
        "--target",
        &addr,
        "--insecure",
        "--connections",
        "2",
        "--duration",
        "200ms",
        "--timeout",
        "1s",
    ])
    .unwrap();
    let (plan, settings, sources) = crate::prepare(&args).unwrap();
    let stats = Arc::new(Stats::new().unwrap());
    execute(plan, settings, sources, stats.clone()).await;
    let c = stats.lock();
    assert_eq!(c.responses(), 0);
    assert!(
        c.failures.get(&Failure::Tls).copied().unwrap_or(0) > 0,
        "{:?}",
        c.failures
    );
}

#[test]
fn dispatch_spaces_send_times_evenly() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let total = dispatch(tx, start, 1000.0, Duration::from_millis(50));
    assert_eq!(total, 50);
    let mut times = Vec::new();
    while let Ok(t) = rx.try_recv() {
        times.push(t);
    }
    assert_eq!(times.len(), 50);
    for (i, t) in times.iter().enumerate() {
        assert_eq!(*t - start, Duration::from_millis(i as u64));
    }
}

//! Idle HTTP/1.1 connections give their HTTP buffers back after
//! `server.idle_release_after` and take new ones when the client sends
//! again (`src/server/http1.rs`). The client must never notice: the same
//! connection serves what comes next (a request larger than the first
//! read, an upload, pipelined requests), and the idle and request-header
//! timeouts and a drain apply to a released connection as to any other.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis_test_kit::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long past `idle_release_after` (20 ms): the connection has released.
const PAUSE: Duration = Duration::from_millis(150);

async fn fixture(idle_timeout: &'static str) -> Fixture {
    Fixture::with(ProxyOptions {
        idle_timeout,
        request_header_timeout: "1s",
        extra_toml: "[server]\nidle_release_after = \"20ms\"\n".to_owned(),
        ..ProxyOptions::default()
    })
    .await
}

/// A keep-alive connection from an allowed client, after one request.
async fn used_connection(f: &Fixture) -> Conn {
    let mut conn = f
        .client(&host(OPEN))
        .preamble(v1_from(ALLOWED_V4))
        .connect()
        .await;
    assert_eq!(conn.get(&host(OPEN), "/").await.status, StatusCode::OK);
    conn
}

/// A TLS connection to the proxy from an allowed client, HTTP/1.1.
async fn raw_tls(f: &Fixture) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_h1(f.proxy.addr, &v1_from(ALLOWED_V4), &host(OPEN)).await
}

/// Reads until EOF; returns the status codes of the responses read.
async fn statuses_until_closed(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u16> {
    let mut all = Vec::new();
    let _ = within("responses and EOF", tls.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_connection_serves_what_comes_next_as_the_same_connection() {
    let f = fixture("60s").await;
    let mut conn = used_connection(&f).await;
    for round in 0..3 {
        tokio::time::sleep(PAUSE).await;
        // A head far larger than the first read after the release (2 KiB):
        // the rest stays in the TLS stream for the new HTTP connection.
        let long = format!("/{}?round={round}", "p".repeat(6000));
        let reply = conn.get(&host(OPEN), &long).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.echo().0["path"], long.split('?').next().unwrap_or(""));
        tokio::time::sleep(PAUSE).await;
        // An upload, chunked, as the first thing after a release.
        let (body, sent) = RandomBody::new(round, 300 * 1024);
        let req = conn
            .request(Method::POST, &host(OPEN), "/hash")
            .body(body.chunked().boxed())
            .expect("request");
        let reply = conn.send(req).await.expect("upload answered");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let sent = sent.lock().expect("slot").clone().expect("body produced");
        assert_eq!(reply.json()["sha256"], sent.sha256.as_str());
    }
    assert!(!conn.is_closed());
    // Not one connection ended along the way, and it is counted as
    // released at most once.
    let released = f
        .proxy
        .metrics()
        .sum("portcullis_connections_released", &[]);
    assert!(released <= 1.0, "{released}");
    assert_eq!(
        f.proxy.metrics().sum("portcullis_connections_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_wake_a_released_connection_and_all_are_answered() {
    let f = fixture("60s").await;
    let mut tls = raw_tls(&f).await;
    let get = |path: &str, last: bool| {
        let close = if last { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{close}\r\n", host(OPEN))
    };
    tls.write_all(get("/first", false).as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = within("first response", tls.read(&mut buf))
        .await
        .expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    tokio::time::sleep(PAUSE).await;
    // Three requests in one write, the last closing the connection.
    let three = [get("/a", false), get("/b", false), get("/c", true)].concat();
    tls.write_all(three.as_bytes()).await.expect("write");
    assert_eq!(statuses_until_closed(&mut tls).await, [200, 200, 200]);
    assert_eq!(f.backend_requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_connection_still_times_out_idle_and_trickled_heads() {
    let f = fixture("1s").await;
    // Idle: closed at the idle timeout, counted from the last response.
    let conn = used_connection(&f).await;
    let idle_from = Instant::now();
    eventually(Duration::from_secs(4), "the idle connection closed", || {
        let closed = conn.is_closed();
        async move { closed }
    })
    .await;
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );

    // Trickled: the first byte wakes the released connection and starts
    // the header clock, which cuts it whatever follows.
    let mut tls = raw_tls(&f).await;
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", host(OPEN)).as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    within("first response", tls.read(&mut buf))
        .await
        .expect("read");
    tokio::time::sleep(PAUSE).await;
    let started = Instant::now();
    let mut cut = None;
    for byte in b"GET / HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain([b'a'; 200].iter())
    {
        if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        // The proxy closing shows as EOF or an error on a short read.
        let mut one = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(50), tls.read(&mut one)).await;
        if read.is_ok() {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("the trickling connection was never closed");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(3),
        "cut after {cut:?}; header timeout 1s"
    );
    assert_eq!(f.backend_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_a_released_connection_at_once() {
    let f = fixture("60s").await;
    let conn = used_connection(&f).await;
    tokio::time::sleep(PAUSE).await;
    let released = || {
        f.proxy
            .metrics()
            .sum("portcullis_connections_released", &[])
    };
    assert_eq!(
        released(),
        1.0,
        "the idle connection is counted as released"
    );
    f.proxy.drain();
    eventually(
        Duration::from_secs(2),
        "the released connection closed",
        || {
            let closed = conn.is_closed();
            async move { closed }
        },
    )
    .await;
    assert_eq!(released(), 0.0);
}

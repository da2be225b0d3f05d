//! Client-side timeouts over real sockets (issue 5 §1): a request head
//! trickled in byte by byte (slowloris) is cut at
//! `server.request_header_timeout` however steadily the bytes arrive; an
//! idle keep-alive connection is closed after `server.idle_timeout`,
//! politely (an HTTP/2 GOAWAY, then TLS close_notify); and a connection
//! that keeps sending requests is never closed as idle.

use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_test_kit::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

async fn fixture() -> Fixture {
    Fixture::with(ProxyOptions {
        request_header_timeout: "1s",
        idle_timeout: "1s",
        ..ProxyOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_cut_at_the_header_timeout() {
    let f = fixture().await;
    let mut tls = tls_h1(f.proxy.addr, &v1_from(ALLOWED_V4), &host(OPEN)).await;

    // One byte every 100 ms, never finishing the head: each byte is
    // activity, none of it is a request.
    let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", host(OPEN));
    let started = Instant::now();
    let mut bytes = head.into_bytes();
    bytes.resize(200, b'a');
    let mut cut = None;
    for byte in bytes {
        if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        // The proxy closing shows as EOF or an error on a short read.
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                cut = Some(started.elapsed());
                break;
            }
            Err(_) => {}
        }
    }
    let cut = cut.expect("the proxy never closed the trickling connection (20 s of bytes)");
    assert!(
        cut >= HEADER_TIMEOUT - Duration::from_millis(100) && cut < HEADER_TIMEOUT * 3,
        "closed after {cut:?}; header timeout is {HEADER_TIMEOUT:?}"
    );
    assert_eq!(f.backend_requests(), 0);
}

/// The header clock starts while the connection's watchdog sleeps on a
/// far deadline (a 60 s idle timeout, no release before it): the first
/// byte of the head must bring the cut forward to the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_begun_on_a_connection_idle_under_a_long_timeout_is_still_cut() {
    let f = Fixture::with(ProxyOptions {
        request_header_timeout: "1s",
        idle_timeout: "60s",
        extra_toml: "[server]\nidle_release_after = \"120s\"\n".to_owned(),
        ..ProxyOptions::default()
    })
    .await;
    let mut tls = tls_h1(f.proxy.addr, &v1_from(ALLOWED_V4), &host(OPEN)).await;
    // Idle first, so the watchdog is asleep until the idle deadline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tls.write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
        .await
        .expect("write");
    tls.flush().await.expect("flush");
    let mut buf = [0u8; 1];
    // Bounded: a proxy that missed the header clock would hold the
    // connection for the idle timeout's 60 s.
    let read = tokio::time::timeout(HEADER_TIMEOUT * 5, tls.read(&mut buf)).await;
    let cut = started.elapsed();
    assert!(
        !matches!(read, Err(_) | Ok(Ok(1..))),
        "not cut within {:?}: {read:?}",
        HEADER_TIMEOUT * 5
    );
    assert!(
        cut >= HEADER_TIMEOUT - Duration::from_millis(100),
        "closed after {cut:?}, before the header timeout"
    );
    assert_eq!(f.backend_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let f = fixture().await;
    for h2 in [false, true] {
        let client = f.client(&host(OPEN)).preamble(v1_from(ALLOWED_V4));
        let mut conn = if h2 { client.h2() } else { client }.connect().await;
        assert_eq!(conn.get(&host(OPEN), "/").await.status, StatusCode::OK);
        let idle_from = Instant::now();
        eventually(IDLE_TIMEOUT * 4, "the idle connection closed", || {
            let closed = conn.is_closed();
            async move { closed }
        })
        .await;
        let closed_after = idle_from.elapsed();
        assert!(
            closed_after >= IDLE_TIMEOUT - Duration::from_millis(100),
            "h2={h2}: closed after {closed_after:?}, before the idle timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_use_is_not_closed_as_idle() {
    let f = fixture().await;
    let mut conn = f
        .client(&host(OPEN))
        .preamble(v1_from(ALLOWED_V4))
        .connect()
        .await;
    // Three idle periods' worth of requests, each gap well under one.
    let until = Instant::now() + IDLE_TIMEOUT * 3;
    let mut sent = 0;
    while Instant::now() < until {
        assert_eq!(conn.get(&host(OPEN), "/").await.status, StatusCode::OK);
        sent += 1;
        tokio::time::sleep(IDLE_TIMEOUT / 4).await;
    }
    assert!(!conn.is_closed());
    // A request that outlasts the idle timeout is not idle either.
    let reply = conn.get(&host(OPEN), "/slow?ms=1500").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(sent >= 8, "only {sent} requests");
}

/// HTTP/2 frame types this file reads or writes, and the ACK flag.
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// One HTTP/2 frame on stream 0.
fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a short payload");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// One HTTP/2 frame read.
struct Frame<'a> {
    kind: u8,
    flags: u8,
    payload: &'a [u8],
}

/// The whole frames in `bytes` from `at` on, and where the next begins.
fn frames(bytes: &[u8], mut at: usize) -> (Vec<Frame<'_>>, usize) {
    let mut out = Vec::new();
    while let Some(head) = bytes.get(at..at + 9) {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let Some(payload) = bytes.get(at + 9..at + 9 + len) else {
            break;
        };
        out.push(Frame {
            kind: head[3],
            flags: head[4],
            payload,
        });
        at += 9 + len;
    }
    (out, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_politely() {
    let f = fixture().await;
    for h2 in [false, true] {
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        let mut tls = tls_alpn(f.proxy.addr, &v1_from(ALLOWED_V4), &host(OPEN), alpn).await;
        if h2 {
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .expect("preface");
            tls.write_all(&frame(SETTINGS, 0, &[]))
                .await
                .expect("SETTINGS");
            tls.flush().await.expect("flush");
        }
        let opened = Instant::now();
        let mut received = Vec::new();
        let mut seen = Vec::new();
        let mut parsed = 0;
        let mut buf = [0u8; 4096];
        let end = loop {
            match tokio::time::timeout(IDLE_TIMEOUT * 5, tls.read(&mut buf)).await {
                Err(_) => panic!("h2={h2}: still open after {:?}", IDLE_TIMEOUT * 5),
                Ok(Ok(0)) => break Ok(()),
                Ok(Ok(n)) if h2 => {
                    received.extend_from_slice(&buf[..n]);
                    // As a client does: acknowledge the server's SETTINGS
                    // and answer its PINGs (a graceful shutdown waits for
                    // one to come back before its last GOAWAY).
                    let (new, at) = frames(&received, parsed);
                    let mut replies = Vec::new();
                    for f in new {
                        seen.push(f.kind);
                        match (f.kind, f.flags & ACK) {
                            (SETTINGS, 0) => replies.extend(frame(SETTINGS, ACK, &[])),
                            (PING, 0) => replies.extend(frame(PING, ACK, f.payload)),
                            _ => {}
                        }
                    }
                    parsed = at;
                    if !replies.is_empty() {
                        let _ = tls.write_all(&replies).await;
                        let _ = tls.flush().await;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break Err(e),
            }
        };
        let closed_after = opened.elapsed();
        // rustls reports a TCP close that no close_notify preceded as an
        // error (UnexpectedEof): the connection was cut, not closed.
        assert!(
            end.is_ok(),
            "h2={h2}: closed without close_notify after {closed_after:?}: {end:?}"
        );
        assert!(
            closed_after >= IDLE_TIMEOUT - Duration::from_millis(100),
            "h2={h2}: closed after {closed_after:?}, before the idle timeout"
        );
        if h2 {
            assert_eq!(seen.first(), Some(&SETTINGS), "h2: frames {seen:?}");
            assert_eq!(
                seen.last(),
                Some(&GOAWAY),
                "h2: the last frame before the close: frames {seen:?}"
            );
        }
    }
}

//! The data plane end to end (SPEC §1, §2, §6): real PROXY bytes, real TLS,
//! HTTP/1.1 and HTTP/2, a real backend. Each test asserts what a client
//! sees (status, body) and what the backend does or does not receive.
//! PROXY-protocol handling has its own file, `data_plane_proxy_protocol.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use portcullis_test_kit::harness::*;

/// Bound on a large transfer (debug builds on a small CI machine).
const BIG_WAIT: Duration = Duration::from_secs(120);

fn big_len() -> u64 {
    let mb = std::env::var("PORTCULLIS_TEST_BIG_BODY_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(64);
    mb * 1024 * 1024
}

/// The standard fixture with `adjust` applied to the default proxy options
/// (a shorter timeout, another PROXY mode); shared with
/// `data_plane_proxy_protocol.rs`.
pub(crate) async fn fixture_with(adjust: impl FnOnce(&mut ProxyOptions)) -> Fixture {
    let mut options = ProxyOptions::default();
    adjust(&mut options);
    Fixture::with(options).await
}

/// `builder` connected over HTTP/2 when `h2`, else over HTTP/1.1: the tests
/// that must hold for both protocols loop over `h2` (here and in
/// `reload.rs`).
pub(crate) async fn connect_over(builder: ClientBuilder, h2: bool) -> Conn {
    if h2 { builder.h2() } else { builder }.connect().await
}

/// A keep-alive connection with SNI `sni`, from `client` as a PROXY v1
/// header names it, over HTTP/2 when `h2`.
pub(crate) async fn connect_from(
    f: &Fixture,
    sni: &str,
    client: impl Into<IpAddr>,
    h2: bool,
) -> Conn {
    connect_over(f.client(sni).preamble(v1_from(client)), h2).await
}

fn hashed_reply(reply: &Reply) -> Hashed {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let v = reply.json();
    Hashed {
        sha256: v["sha256"].as_str().expect("sha256").to_owned(),
        bytes: v["bytes"].as_u64().expect("bytes"),
    }
}

// ------------------------------------------------------------ SPEC §6 rows

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_gets_the_exact_403_body() {
    let f = Fixture::start().await;
    let reply = f.get(v1_from(DENIED_V4), &host(OFFICE), "/").await;
    reply.assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
    assert_eq!(f.backend_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_deployment_or_missing_product_gets_404() {
    let f = Fixture::start().await;
    // No such deployment; `open` has no apm resource (by alias and by id).
    for name in ["nosuch.es.test", "open.apm.es.test", "open0001.apm.es.test"] {
        let reply = f.get(v1_from(DENIED_V4), name, "/").await;
        reply.assert_local(StatusCode::NOT_FOUND, Some(UNKNOWN_BODY));
    }
    assert_eq!(f.backend_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_naming_another_deployment_gets_421() {
    let f = Fixture::start().await;
    for h2 in [false, true] {
        let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, h2).await;
        let reply = conn.get(&host(OFFICE), "/").await;
        reply.assert_local(StatusCode::MISDIRECTED_REQUEST, Some(MISDIRECTED_BODY));
        // Another product of the SNI's own deployment is not misdirected.
        assert_eq!(
            conn.get("open.kb.es.test", "/").await.echo().backend(),
            "kb"
        );
    }
    assert_eq!(f.es.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_gets_502() {
    let f = Fixture::start().await;
    let reply = f.get(v1_from(ALLOWED_V4), &host(DEAD), "/").await;
    reply.assert_local(StatusCode::BAD_GATEWAY, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gets_504_after_the_response_timeout() {
    let f = fixture_with(|o| o.response_timeout = "500ms").await;
    let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, false).await;
    let started = Instant::now();
    let reply = conn.get(&host(OPEN), "/slow?ms=8000").await;
    let took = started.elapsed();
    reply.assert_local(StatusCode::GATEWAY_TIMEOUT, None);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "504 after {took:?}, response_timeout is 500ms"
    );
    assert_eq!(f.es.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_without_a_filtering_policy_or_in_dry_run_forward_everything() {
    let f = Fixture::start().await;
    for deployment in [OPEN, RECORD, DRY_RUN] {
        let echo = f
            .get(v1_from(DENIED_V4), &host(deployment), "/")
            .await
            .echo();
        assert_eq!(echo.forwarded_for(), ["198.51.100.9"], "{deployment}");
    }
    // Dry run forwards what enforcement would deny; the same policy on an
    // enforcing deployment denies.
    f.get(v1_from(DENIED_V4), &host(OFFICE), "/")
        .await
        .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
    assert_eq!(f.es.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_stops_reading_an_upload_gets_504() {
    let f = fixture_with(|o| o.response_timeout = "500ms").await;
    let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, true)
        .await
        .patient(Duration::from_secs(6));
    // `/slow` reads nothing for a minute; 32 MiB cannot all sit in the
    // socket buffers on the way, so the upload stalls.
    let (body, _) = RandomBody::new(3, 32 * 1024 * 1024);
    let req = conn
        .request(Method::POST, &host(OPEN), "/slow?ms=60000")
        .body(body.boxed())
        .unwrap();
    let started = Instant::now();
    let reply = conn.send(req).await.expect("answered");
    reply.assert_local(StatusCode::GATEWAY_TIMEOUT, None);
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ------------------------------------------------------------ forwarding

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_request_headers_are_rewritten() {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, false).await;
    let req = conn
        .request(Method::GET, &host(OPEN), "/echo?q=1")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("x-found-cluster", OFFICE)
        .header("connection", "x-custom")
        .header("x-custom", "1")
        .header("te", "trailers")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("authorization", "ApiKey abc")
        .header("x-opaque-id", "e2e")
        .body(empty())
        .unwrap();
    let echo = conn.send(req).await.expect("served").echo();
    assert_eq!(echo.forwarded_for(), ["203.0.113.7"]);
    assert_eq!(echo.header("x-forwarded-proto"), ["https"]);
    for gone in [
        "x-found-cluster",
        "connection",
        "x-custom",
        "te",
        "keep-alive",
        "proxy-authorization",
    ] {
        assert!(echo.header(gone).is_empty(), "{gone} reached the backend");
    }
    assert_eq!(echo.header("authorization"), ["ApiKey abc"]);
    assert_eq!(echo.header("x-opaque-id"), ["e2e"]);
    assert_eq!(echo.header("host"), [host(OPEN)]);
    assert_eq!(echo.0["path"], "/echo");
    assert_eq!(echo.0["query"], "q=1");

    // HTTP/2: the same rewrite, and `:authority` arrives as `Host`.
    let mut conn = connect_from(&f, &host(OPEN), DENIED_V4, true).await;
    let req = conn
        .request(Method::GET, &host(OPEN), "/h2")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-found-cluster", OFFICE)
        .body(empty())
        .unwrap();
    let echo = conn.send(req).await.expect("served").echo();
    assert_eq!(echo.forwarded_for(), ["198.51.100.9"]);
    assert_eq!(echo.header("x-forwarded-proto"), ["https"]);
    assert!(echo.header("x-found-cluster").is_empty());
    assert_eq!(echo.header("host"), [host(OPEN)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_after_each_response_does_not_reach_the_client() {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, false).await;
    for i in 0..4 {
        let reply = conn.get(&host(OPEN), &format!("/c?close=1&i={i}")).await;
        assert!(reply.headers.get("connection").is_none());
        assert_eq!(reply.echo().0["query"], format!("close=1&i={i}"));
    }
    assert!(!conn.is_closed());
    assert_eq!(
        f.es.connections(),
        4,
        "a closed backend connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_request_body_never_reaches_a_backend() {
    let f = Fixture::start().await;
    for h2 in [false, true] {
        for (name, status) in [
            (host(OFFICE), StatusCode::FORBIDDEN),
            ("nosuch.es.test".to_owned(), StatusCode::NOT_FOUND),
        ] {
            // A fresh connection each: HTTP/1.1 may close after a
            // response whose request body was left unread.
            let mut conn = connect_from(&f, ZONE, DENIED_V4, h2).await;
            let req = conn
                .request(Method::POST, &name, "/hash")
                .header("content-type", "application/octet-stream")
                .body(full(vec![0x5a; 4096]))
                .unwrap();
            let reply = conn.send(req).await.expect("answered");
            assert_eq!(reply.status, status, "{}", reply.text());
        }
    }
    assert_eq!(f.backend_requests(), 0);
    assert_eq!(f.es.connections() + f.kb.connections(), 0);
    assert_eq!(f.es.hash_progress(), 0);
}

// ------------------------------------------------------------ routing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_found_cluster_selects_the_deployment_for_the_bare_zone() {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, ZONE, DENIED_V4, false).await;
    let with_header = |conn: &Conn, host: &str, cluster: &str| {
        conn.request(Method::GET, host, "/")
            .header("x-found-cluster", cluster)
            .body(empty())
            .unwrap()
    };
    // The bare zone alone names nothing.
    conn.get(ZONE, "/")
        .await
        .assert_local(StatusCode::NOT_FOUND, Some(UNKNOWN_BODY));

    let echo = conn
        .send(with_header(&conn, ZONE, OPEN))
        .await
        .unwrap()
        .echo();
    assert_eq!(echo.backend(), "es");
    assert!(echo.header("x-found-cluster").is_empty());
    let echo = conn
        .send(with_header(&conn, ZONE, "open.kb"))
        .await
        .unwrap()
        .echo();
    assert_eq!(echo.backend(), "kb");
    // The header really picked `office`: its IP policy denies this client.
    conn.send(with_header(&conn, ZONE, OFFICE))
        .await
        .unwrap()
        .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
    // An IP address as host works the same way.
    let ip_host = f.proxy.addr.to_string();
    let echo = conn
        .send(with_header(&conn, &ip_host, "open0001.kb"))
        .await
        .unwrap()
        .echo();
    assert_eq!(echo.backend(), "kb");
    assert_eq!(f.es.requests() + f.kb.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_forms_select_deployment_and_product() {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, ZONE, ALLOWED_V4, false).await;
    for (name, backend) in [
        ("open0001.es.test", "es"),
        ("open0001.es.es.test", "es"),
        ("open.es.es.test", "es"),
        ("open.kb.es.test", "kb"),
        ("open0001.kb.es.test", "kb"),
        ("Open.KB.Es.Test:9243", "kb"),
        ("office.kb.es.test", "kb"),
    ] {
        let echo = conn.get(name, "/").await.echo();
        assert_eq!(echo.backend(), backend, "{name}");
        assert_eq!(echo.header("host"), [name], "{name}");
    }
    // `{alias}.{zone}` is not a host form (only cluster ids go bare).
    conn.get("open.es.test", "/")
        .await
        .assert_local(StatusCode::NOT_FOUND, Some(UNKNOWN_BODY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_naming_another_host_is_400() {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, false).await;
    let absolute = |target: String| {
        Request::get(format!("https://{target}/abs"))
            .header("host", host(OPEN))
            .body(empty())
            .unwrap()
    };
    let reply = conn.send(absolute(host(OFFICE))).await.unwrap();
    reply.assert_local(StatusCode::BAD_REQUEST, None);
    assert_eq!(f.backend_requests(), 0);
    // Target and Host agreeing: served, in origin form.
    let echo = conn.send(absolute(host(OPEN))).await.unwrap().echo();
    assert_eq!(echo.0["path"], "/abs");
    assert_eq!(echo.header("host"), [host(OPEN)]);
}

// ------------------------------------------------------------ HTTP/2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_serves_allowed_and_denied_requests_on_one_connection() {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, ZONE, DENIED_V4, true).await;
    let echo = conn.get(&host(OPEN), "/a").await.echo();
    assert_eq!(echo.forwarded_for(), ["198.51.100.9"]);
    conn.get(&host(OFFICE), "/b")
        .await
        .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
    assert_eq!(
        conn.get("open.kb.es.test", "/c").await.echo().backend(),
        "kb"
    );
    conn.get("nosuch.es.test", "/d")
        .await
        .assert_local(StatusCode::NOT_FOUND, Some(UNKNOWN_BODY));
    assert_eq!((f.es.requests(), f.kb.requests()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_concurrent_streams_each_get_their_own_answer() {
    let f = Fixture::start().await;
    let conn = connect_from(&f, ZONE, DENIED_V4, true).await;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let mut tx = conn.h2_sender();
            let target = if i % 3 == 0 { OFFICE } else { OPEN };
            let req = conn
                .request(Method::GET, &host(target), &format!("/s{i}"))
                .body(empty())
                .unwrap();
            tokio::spawn(async move {
                let resp = within("stream", tx.send_request(req)).await.unwrap();
                let status = resp.status();
                let body = within("stream body", http_body_util::BodyExt::collect(resp))
                    .await
                    .unwrap()
                    .to_bytes();
                (i, status, body)
            })
        })
        .collect();
    for task in tasks {
        let (i, status, body) = task.await.unwrap();
        if i % 3 == 0 {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(body, FORBIDDEN_BODY.as_bytes());
        } else {
            assert_eq!(status, StatusCode::OK);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["path"], format!("/s{i}"));
        }
    }
    assert_eq!(f.es.requests(), 16);
}

// ------------------------------------------------------------ per-request decisions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_applies_to_the_next_request_on_an_open_connection() {
    let f = Fixture::start().await;
    let mut version = 1;
    for h2 in [false, true] {
        let mut conn = connect_from(&f, &host(OFFICE), ALLOWED_V4, h2).await;
        conn.get(&host(OFFICE), "/1").await.echo();

        version += 1;
        f.proxy.apply(&f.snapshot(version, &["192.0.2.0/24"]));
        conn.get(&host(OFFICE), "/2")
            .await
            .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));

        version += 1;
        f.proxy.apply(&f.snapshot(version, &["203.0.113.0/24"]));
        conn.get(&host(OFFICE), "/3").await.echo();
        assert!(!conn.is_closed(), "h2={h2}: connection was closed");
    }
    assert_eq!(f.es.requests(), 4);
}

// ------------------------------------------------------------ streaming

async fn upload_is_intact(h2: bool) {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, h2)
        .await
        .patient(BIG_WAIT);
    let len = big_len();
    let (body, sent) = RandomBody::new(0x5EED, len);
    // HTTP/1.1 uploads chunked; HTTP/2 with a content-length.
    let body = if h2 { body } else { body.chunked() };
    let probe = f.es.hash_progress_probe();
    let seen = Arc::new(AtomicU64::new(0));
    let seen_at_end = seen.clone();
    let body = body.before_last(move || seen_at_end.store(probe(), Ordering::SeqCst));
    let mut req = conn
        .request(Method::POST, &host(OPEN), "/hash")
        .body(body.boxed())
        .unwrap();
    if h2 {
        req.headers_mut()
            .insert("content-length", len.to_string().parse().unwrap());
    }
    let reply = conn.send(req).await.expect("upload answered");
    let sent = sent.lock().unwrap().clone().expect("body fully produced");
    assert_eq!(hashed_reply(&reply), sent);
    assert_eq!(sent.bytes, len);
    if len >= 32 * 1024 * 1024 {
        // Streamed, not buffered: the backend was already hashing before
        // the client produced its last chunk.
        assert!(
            seen.load(Ordering::SeqCst) > 0,
            "backend received nothing before the upload ended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_intact_over_http1() {
    upload_is_intact(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_intact_over_http2() {
    upload_is_intact(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_intact() {
    let f = Fixture::start().await;
    let len = big_len();
    for h2 in [false, true] {
        let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, h2)
            .await
            .patient(BIG_WAIT);
        let req = conn
            .request(Method::GET, &host(OPEN), &format!("/big?bytes={len}"))
            .body(empty())
            .unwrap();
        let resp = conn.send_streaming(req).await.expect("download answered");
        assert_eq!(resp.status(), StatusCode::OK);
        let got = within_for(BIG_WAIT, "download", hash_body(resp.into_body(), None))
            .await
            .expect("download body");
        assert_eq!(got.bytes, len, "h2={h2}");
        assert_eq!(Some(got), f.es.last_sent(), "h2={h2}");
    }
}

// ------------------------------------------------------------ failover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_passes_over_a_dead_backend() {
    let f = Fixture::start().await;
    let mut conn = connect_from(&f, &host(FAILOVER), ALLOWED_V4, false).await;
    // Round-robin starts at each node in turn; every request still lands.
    for i in 0..6 {
        let echo = conn.get(&host(FAILOVER), &format!("/f{i}")).await.echo();
        assert_eq!(echo.0["path"], format!("/f{i}"));
    }
    for _ in 0..2 {
        f.get(v1_from(ALLOWED_V4), &host(FAILOVER), "/fresh")
            .await
            .echo();
    }
    assert_eq!(f.es.requests(), 8);
}

//! What one request carries and leaves behind (SPEC §6, §9): its
//! `X-Cloud-Request-Id`, its single access-log line (cancelled requests
//! included), the headers the backend gets, a backend that switches
//! protocols unasked, and `GET /_health` on the HTTPS listener.

use std::collections::HashSet;
use std::time::Duration;

use super::data_plane::connect_from;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use portcullis_test_kit::harness::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn request_id(reply: &Reply) -> String {
    let ids: Vec<_> = reply.headers.get_all("x-cloud-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "one X-Cloud-Request-Id: {:?}", reply.headers);
    let id = ids[0].to_str().expect("ASCII id").to_owned();
    assert_eq!(id.len(), 32, "{id}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id_the_backend_and_the_log_see_too() {
    let f = Fixture::start().await;
    let mut seen = HashSet::new();
    for h2 in [false, true] {
        let mut conn = connect_from(&f, &host(OFFICE), ALLOWED_V4, h2).await;
        let mut req = conn.request(Method::GET, &host(OFFICE), "/_search");
        // A client cannot choose its own id.
        req = req.header("x-cloud-request-id", "forged");
        let reply = conn.send(req.body(empty()).unwrap()).await.unwrap();
        let id = request_id(&reply);
        assert_eq!(
            reply.echo().header("x-cloud-request-id"),
            std::slice::from_ref(&id)
        );
        assert!(seen.insert(id));
    }
    // Answered by the proxy itself: denied, unknown, bad request.
    let denied = f.get(v1_from(DENIED_V4), &host(OFFICE), "/").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(seen.insert(request_id(&denied)));
    let unknown = f.get(v1_from(DENIED_V4), "nosuch.es.test", "/").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(seen.insert(request_id(&unknown)));

    let lines = f.proxy.access_lines(4).await;
    assert_eq!(lines.len(), 4);
    let logged: HashSet<String> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(logged, seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_say_who_asked_for_what_and_what_happened() {
    let f = Fixture::start().await;
    let allowed = f
        .get(v1_from(ALLOWED_V4), &host(OFFICE), "/_search?q=x")
        .await;
    assert_eq!(allowed.status, StatusCode::OK);
    let denied = f.get(v1_from(DENIED_V4), &host(OFFICE), "/secret").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let lines = f.proxy.access_lines(2).await;
    let by_path = |p: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {lines:?}"))
    };
    let ok = by_path("/_search");
    assert_eq!(ok["client_ip"], ALLOWED_V4.to_string());
    assert_eq!(ok["host"], host(OFFICE));
    assert_eq!(ok["sni"], host(OFFICE));
    assert_eq!(ok["deployment"], OFFICE);
    assert_eq!(ok["product"], "es");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["version"], "HTTP/1.1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes"], allowed.body.len() as u64);
    assert_eq!(ok["decision"], "allowed");
    assert_eq!(ok["reason"], "ip");
    assert_eq!(ok["policy"], "office-ips");
    assert_eq!(ok["status_reason"], "");
    assert_eq!(ok["target"], "portcullis::access");
    let no = by_path("/secret");
    // A request answered at once names its host from a copy (the
    // request's own bytes are let go before the answer is written).
    assert_eq!(no["host"], host(OFFICE));
    assert_eq!(no["method"], "GET");
    assert_eq!(no["status"], 403);
    assert_eq!(no["bytes"], FORBIDDEN_BODY.len() as u64);
    assert_eq!(no["decision"], "denied");
    assert_eq!(no["reason"], "unmatched");
    assert_eq!(no["status_reason"], "BLOCKED_BY_TRAFFIC_FILTER");
    assert_eq!(no["policy"], "");
}

/// SPEC §9: requests the client resets after they were forwarded get one
/// line each, with status 499.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_the_client_cancels_are_logged_with_499() {
    const STREAMS: usize = 20;
    let f = Fixture::start().await;
    let conn = connect_from(&f, &host(OPEN), ALLOWED_V4, true).await;
    let mut pending = Vec::new();
    for i in 0..STREAMS {
        let mut tx = conn.h2_sender();
        let req = conn
            .request(Method::GET, &host(OPEN), &format!("/slow?ms=30000&i={i}"))
            .body(empty())
            .unwrap();
        pending.push(tokio::spawn(async move {
            within("connection ready", tx.ready()).await.unwrap();
            tx.send_request(req).await
        }));
    }
    // Every request reached the backend; then the client cancels them all
    // (dropping a response future resets its stream).
    eventually(Duration::from_secs(10), "requests forwarded", || {
        let n = f.es.requests();
        async move { n == STREAMS }
    })
    .await;
    for p in &pending {
        p.abort();
    }
    let lines = f.proxy.access_lines(STREAMS).await;
    assert_eq!(lines.len(), STREAMS, "{lines:?}");
    for l in &lines {
        assert_eq!(l["status"], 499, "{l}");
        assert_eq!(l["bytes"], 0, "{l}");
        assert_eq!(l["decision"], "allowed", "{l}");
        assert_eq!(l["version"], "HTTP/2.0", "{l}");
    }
    // The connection is still usable, and its next request is logged
    // normally.
    let mut conn = conn;
    assert_eq!(conn.get(&host(OPEN), "/after").await.status, StatusCode::OK);
    let lines = f.proxy.access_lines(STREAMS + 1).await;
    assert_eq!(lines.last().unwrap()["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_short_by_the_client_is_logged_with_499_and_the_bytes_sent() {
    let f = Fixture::start().await;
    for h2 in [false, true] {
        let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, h2).await;
        let req = conn
            .request(Method::GET, &host(OPEN), "/big?bytes=200000000")
            .body(empty())
            .unwrap();
        let resp = conn.send_streaming(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut read = 0;
        while read < 1_000_000 {
            let frame = within("body", body.frame()).await.unwrap().unwrap();
            read += frame.data_ref().map_or(0, |d| d.len());
        }
        drop(body);
        drop(conn);
    }
    let lines = f.proxy.access_lines(2).await;
    for l in &lines {
        assert_eq!(l["status"], 499, "{l}");
        let bytes = l["bytes"].as_u64().unwrap();
        assert!((1_000_000..200_000_000).contains(&bytes), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_joined_cookies_and_no_client_forwarding_claims() {
    let f = Fixture::start().await;
    for h2 in [false, true] {
        let mut conn = connect_from(&f, &host(OPEN), ALLOWED_V4, h2).await;
        let mut req = conn
            .request(Method::GET, &host(OPEN), "/")
            .header("forwarded", "for=6.6.6.6;proto=http")
            .header("x-real-ip", "6.6.6.6")
            .header("x-forwarded-for", "6.6.6.6");
        req = if h2 {
            // RFC 9113 §8.2.3: HTTP/2 may split cookies into fields.
            req.header("cookie", "a=1").header("cookie", "b=2")
        } else {
            req.header("cookie", "a=1; b=2")
        };
        let echo = conn.send(req.body(empty()).unwrap()).await.unwrap().echo();
        assert_eq!(echo.header("cookie"), ["a=1; b=2"], "h2: {h2}");
        assert!(echo.header("forwarded").is_empty(), "h2: {h2}");
        assert!(echo.header("x-real-ip").is_empty(), "h2: {h2}");
        assert_eq!(echo.forwarded_for(), [ALLOWED_V4.to_string()]);
    }
}

/// A backend that answers every request with `101 Switching Protocols`.
async fn switching_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Bounded: the test makes two requests at most.
        for _ in 0..4 {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nraw bytes from the node",
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrequested_switch_of_protocols_by_the_backend_is_a_502() {
    let f = Fixture::start().await;
    let (node, _backend) = switching_backend().await;
    let mut snapshot = f.snapshot(2, &["203.0.113.0/24"]);
    for d in snapshot["deployments"].as_array_mut().unwrap() {
        if d["id"] == DEAD {
            d["resources"]["es"]["backends"] = serde_json::json!([node.to_string()]);
        }
    }
    f.proxy.apply(&snapshot);
    for h2 in [false, true] {
        let mut conn = connect_from(&f, &host(DEAD), ALLOWED_V4, h2).await;
        let reply = conn.get(&host(DEAD), "/").await;
        reply.assert_local(StatusCode::BAD_GATEWAY, None);
        assert!(!reply.text().contains("raw bytes"), "{}", reply.text());
    }
    let lines = f.proxy.access_lines(2).await;
    for l in &lines {
        assert_eq!(l["status"], 502, "{l}");
        assert_eq!(l["status_reason"], "unexpected_upgrade", "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_on_the_https_listener_are_answered_by_the_proxy() {
    let f = Fixture::start().await;
    let ip_host = f.proxy.addr.to_string();
    for (h2, name) in [
        (false, ip_host.as_str()),
        (true, "es.test"),
        (false, "es.test:9243"),
    ] {
        let mut conn = connect_from(&f, "es.test", DENIED_V4, h2).await;
        let reply = conn.get(name, "/_health").await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        assert_eq!(reply.json(), serde_json::json!({"ok": true}));
        request_id(&reply);
    }
    assert_eq!(f.backend_requests(), 0);
    // On a deployment's host name it is the deployment's own path.
    let reply = f.get(v1_from(ALLOWED_V4), &host(OPEN), "/_health").await;
    assert_eq!(reply.echo().0["path"], "/_health");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_fail_before_the_first_snapshot() {
    let dir = TempDir::new();
    let p = Served::start(&ServeOptions::path(dir.0.join("missing.json"))).await;
    let mut conn = p
        .client("es.test")
        .preamble(v1_from(ALLOWED_V4))
        .connect()
        .await;
    let reply = conn.get("127.0.0.1", "/_health").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["ok"], false);
}

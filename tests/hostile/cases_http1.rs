//! Cases: HTTP/1.1 request smuggling, malformed heads, limits, whose host
//! a request is for, and denied requests that carry bodies.

use super::*;

pub(crate) async fn http_cl_te_smuggled_request_never_reaches_the_backend(w: Arc<World>) {
    // Content-Length says the body runs over the smuggled request;
    // Transfer-Encoding says the body ends at "0\r\n\r\n". Whichever a
    // proxy picks, the backend must see one request, framed one way, and
    // the connection must not carry on to a second.
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {}\r\n\r\n", open_host());
    let body = format!("0\r\n\r\n{smuggled}");
    let request = format!(
        "POST /first HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        open_host(),
        body.len()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    let echo = ex.one(StatusCode::OK).echo();
    assert_eq!(echo.0["path"], "/first");
    assert_eq!(echo.0["body_bytes"], 0);
    // Transfer-Encoding won; the Content-Length that disagreed with it
    // was not passed on.
    assert!(echo.header("content-length").is_empty(), "{:?}", echo.0);
    assert!(ex.closed, "the connection carried on after CL+TE");
    assert_eq!(before.backend_requests_since(&w), 1);
}

pub(crate) async fn http_te_cl_smuggled_request_never_reaches_the_backend(w: Arc<World>) {
    // The reverse order, and a Content-Length shorter than the chunked
    // body: something framing by Content-Length would take the 3-byte
    // chunk-size line as the body and the chunk's data as a request.
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {}\r\n\r\n", open_host());
    let chunk = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let request = format!(
        "POST /first HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{chunk}",
        open_host()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    let echo = ex.one(StatusCode::OK).echo();
    assert_eq!(echo.0["path"], "/first");
    // The whole chunk arrived as the body: the backend framed it the way
    // the proxy did.
    assert_eq!(echo.0["body_bytes"], smuggled.len());
    assert!(echo.header("content-length").is_empty(), "{:?}", echo.0);
    assert!(ex.closed, "the connection carried on after TE+CL");
    assert_eq!(before.backend_requests_since(&w), 1);
}

pub(crate) async fn assert_rejected_head(w: &World, request: &[u8], status: StatusCode) {
    let before = w.counters();
    let ex = h1(w, &denied_client(), request, 1).await;
    ex.assert_parse_error(status);
    before.assert_backend_untouched(w);
}

/// `POST /` to `open` with these extra header lines and this body.
pub(crate) fn post_open(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nHost: {}\r\n{headers}\r\n{body}",
        open_host()
    )
    .into_bytes()
}

pub(crate) async fn http_te_with_chunked_not_last(w: Arc<World>) {
    let request = post_open("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n");
    assert_rejected_head(&w, &request, StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_te_chunked_then_identity_lines(w: Arc<World>) {
    let request = post_open(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "0\r\n\r\n",
    );
    assert_rejected_head(&w, &request, StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_te_with_space_before_colon(w: Arc<World>) {
    let request = post_open(
        "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n",
        "0\r\n\r\n",
    );
    assert_rejected_head(&w, &request, StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_te_in_http_1_0(w: Arc<World>) {
    let request = format!(
        "POST / HTTP/1.0\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        open_host()
    );
    assert_rejected_head(&w, request.as_bytes(), StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_duplicate_content_length_differing(w: Arc<World>) {
    let request = post_open("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!");
    assert_rejected_head(&w, &request, StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_duplicate_content_length_equal_is_one_length(w: Arc<World>) {
    let mut request = post_open("Content-Length: 5\r\nContent-Length: 5\r\n", "hello");
    request.extend_from_slice(
        format!(
            "GET /second HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            open_host()
        )
        .as_bytes(),
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 2).await;
    assert_eq!(ex.responses.len(), 2, "{ex:?}");
    let first = ex.responses[0].echo();
    assert_eq!(first.0["body_bytes"], 5);
    assert_eq!(first.header("content-length"), ["5"]);
    assert_eq!(ex.responses[1].echo().0["path"], "/second");
    assert_eq!(before.backend_requests_since(&w), 2);
}

pub(crate) async fn http_content_length_with_sign(w: Arc<World>) {
    let request = post_open("Content-Length: +5\r\n", "hello");
    assert_rejected_head(&w, &request, StatusCode::BAD_REQUEST).await;
}

/// The whole request goes in one TLS record, so the proxy finds the
/// framing error on its first poll of the body, before the head it is
/// forwarding has been flushed upstream: nothing reaches the backend.
/// (Were the body late, the backend would get the head and then a cut-off
/// body; never the bytes after the broken chunk as a request.)
pub(crate) async fn http_bad_chunk_size(w: Arc<World>) {
    let request = post_open(
        "Transfer-Encoding: chunked\r\n",
        &format!(
            "zz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {}\r\n\r\n",
            open_host()
        ),
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::BAD_REQUEST)
        .assert_local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
    assert!(ex.closed, "the connection carried on after a broken body");
    before.assert_backend_untouched(&w);
}

/// As [`http_bad_chunk_size`], with a size that overflows 64 bits.
pub(crate) async fn http_chunk_size_overflowing_u64(w: Arc<World>) {
    let request = post_open(
        "Transfer-Encoding: chunked\r\n",
        "fffffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::BAD_REQUEST)
        .assert_local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
    assert!(ex.closed);
    before.assert_backend_untouched(&w);
}

// ================================================================ cases: malformed heads

pub(crate) async fn http_obs_fold(w: Arc<World>) {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-Folded: a\r\n  b\r\n\r\n",
        open_host()
    );
    assert_rejected_head(&w, request.as_bytes(), StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_nul_in_header_value(w: Arc<World>) {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-A: a\0b\r\n\r\n",
        open_host()
    );
    assert_rejected_head(&w, request.as_bytes(), StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_space_in_header_name(w: Arc<World>) {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX Forwarded For: 1.2.3.4\r\n\r\n",
        open_host()
    );
    assert_rejected_head(&w, request.as_bytes(), StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_bare_cr_in_header_value(w: Arc<World>) {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-A: a\rX-B: b\r\n\r\n",
        open_host()
    );
    assert_rejected_head(&w, request.as_bytes(), StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_non_ascii_header_name(w: Arc<World>) {
    let mut request = format!("GET / HTTP/1.1\r\nHost: {}\r\n", open_host()).into_bytes();
    request.extend_from_slice(b"X-\xc3\xa9: 1\r\n\r\n");
    assert_rejected_head(&w, &request, StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_junk_after_the_version(w: Arc<World>) {
    let request = format!("GET / HTTP/1.1 junk\r\nHost: {}\r\n\r\n", open_host());
    assert_rejected_head(&w, request.as_bytes(), StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_unknown_version(w: Arc<World>) {
    let request = format!("GET / HTTP/1.7\r\nHost: {}\r\n\r\n", open_host());
    assert_rejected_head(&w, request.as_bytes(), StatusCode::BAD_REQUEST).await;
}

pub(crate) async fn http_header_block_over_64k(w: Arc<World>) {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
        open_host(),
        "a".repeat(70 * 1024)
    );
    assert_rejected_head(
        &w,
        request.as_bytes(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    )
    .await;
}

pub(crate) async fn http_more_than_128_headers(w: Arc<World>) {
    let mut request = format!("GET / HTTP/1.1\r\nHost: {}\r\n", open_host());
    for i in 0..200 {
        request.push_str(&format!("X-H{i}: v\r\n"));
    }
    request.push_str("\r\n");
    assert_rejected_head(
        &w,
        request.as_bytes(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    )
    .await;
}

pub(crate) async fn http_uri_over_the_limit(w: Arc<World>) {
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20 * 1024),
        open_host()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::URI_TOO_LONG)
        .assert_local(StatusCode::URI_TOO_LONG, URI_TOO_LONG_BODY);
    before.assert_backend_untouched(&w);
}

pub(crate) async fn http_uri_over_the_head_limit(w: Arc<World>) {
    // A target longer than the whole head may be (64 KiB) trips the head
    // limit before the URI check can run: 431 from the HTTP parser.
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: {}\r\n\r\n",
        "a".repeat(70 * 1024),
        open_host()
    );
    assert_rejected_head(
        &w,
        request.as_bytes(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    )
    .await;
}

pub(crate) async fn http_h2_preface_on_an_http1_connection(w: Arc<World>) {
    let before = w.counters();
    let ex = h1(
        &w,
        &denied_client(),
        [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat(),
        0,
    )
    .await;
    ex.assert_closed_silently();
    before.assert_backend_untouched(&w);
}

// ================================================================ cases: whose host is it

pub(crate) async fn http_absolute_form_http_scheme_naming_another_host(w: Arc<World>) {
    let request = format!(
        "GET http://{}/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        office_host(),
        open_host()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::BAD_REQUEST)
        .assert_local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
    before.assert_backend_untouched(&w);
}

pub(crate) async fn http_absolute_form_with_userinfo(w: Arc<World>) {
    // Parsers disagree on which side of '@' is the host; the proxy must
    // not pick the permissive one.
    let request = format!(
        "GET https://{}@{}/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        open_host(),
        office_host(),
        office_host()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::BAD_REQUEST)
        .assert_local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
    before.assert_backend_untouched(&w);
}

pub(crate) async fn http_absolute_form_naming_a_denied_deployment_is_filtered(w: Arc<World>) {
    // The target's authority routes (Host agreeing, in another case), and
    // policy applies to what it names.
    let request = format!(
        "POST https://{}/_bulk HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        office_host(),
        office_host().to_ascii_uppercase()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::FORBIDDEN)
        .assert_local(StatusCode::FORBIDDEN, FORBIDDEN_BODY);
    before.assert_backend_untouched(&w);
}

pub(crate) async fn http11_without_host(w: Arc<World>) {
    // RFC 9112 §3.2: a 400, even with a routing hint or an absolute-form
    // target to go by.
    for request in [
        format!("GET / HTTP/1.1\r\nX-Found-Cluster: {OPEN}\r\nConnection: close\r\n\r\n"),
        format!(
            "GET https://{}/ HTTP/1.1\r\nConnection: close\r\n\r\n",
            open_host()
        ),
    ] {
        let before = w.counters();
        let ex = h1(&w, &denied_client(), &request, 1).await;
        ex.one(StatusCode::BAD_REQUEST)
            .assert_local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
        before.assert_backend_untouched(&w);
    }
}

pub(crate) async fn http_host_that_is_not_text(w: Arc<World>) {
    // obs-text passes the HTTP parser but is no host name; routing by the
    // hint and forwarding the junk Host is what used to happen.
    let mut request = b"GET / HTTP/1.1\r\nHost: \xff\xfe.es.test\r\n".to_vec();
    request.extend_from_slice(
        format!("X-Found-Cluster: {OPEN}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::BAD_REQUEST)
        .assert_local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
    before.assert_backend_untouched(&w);
}

pub(crate) async fn http10_without_host_routes_by_x_found_cluster(w: Arc<World>) {
    // HTTP/1.0 has no Host requirement; the hint routes, policy applies.
    for (cluster, allowed) in [(OPEN, true), (OFFICE, false)] {
        let request = format!("GET /ten HTTP/1.0\r\nX-Found-Cluster: {cluster}\r\n\r\n");
        let before = w.counters();
        let ex = h1(&w, &denied_client(), request, 1).await;
        if allowed {
            assert_eq!(ex.one(StatusCode::OK).echo().0["path"], "/ten");
            assert_eq!(before.backend_requests_since(&w), 1);
        } else {
            ex.one(StatusCode::FORBIDDEN)
                .assert_local(StatusCode::FORBIDDEN, FORBIDDEN_BODY);
            before.assert_backend_untouched(&w);
        }
        assert!(ex.closed, "HTTP/1.0 without keep-alive stayed open");
    }
}

pub(crate) async fn http_two_host_headers(w: Arc<World>) {
    // RFC 9112 §3.2: more than one Host line is a 400. Routing by one and
    // forwarding both would let the backend act on the other.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nHost: {}\r\nConnection: close\r\n\r\n",
        open_host(),
        office_host()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::BAD_REQUEST)
        .assert_local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
    before.assert_backend_untouched(&w);
}

pub(crate) async fn http_pipelined_allowed_then_denied(w: Arc<World>) {
    // Each pipelined request gets its own decision.
    let request = format!(
        "GET /a HTTP/1.1\r\nHost: {}\r\n\r\nGET /b HTTP/1.1\r\nHost: {}\r\n\r\nGET /c HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        open_host(),
        office_host(),
        open_host()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 3).await;
    assert_eq!(ex.responses.len(), 3, "{ex:?}");
    assert_eq!(ex.responses[0].echo().0["path"], "/a");
    ex.responses[1].assert_local(StatusCode::FORBIDDEN, FORBIDDEN_BODY);
    assert_eq!(ex.responses[2].echo().0["path"], "/c");
    assert!(ex.closed);
    assert_eq!(before.backend_requests_since(&w), 2);
}

// ================================================================ cases: denied requests with bodies

/// A request that would be served if it reached the backend, as bytes.
pub(crate) fn embedded_request() -> String {
    format!("GET /embedded HTTP/1.1\r\nHost: {}\r\n\r\n", open_host())
}

/// A request that follows a denied body on the same connection.
fn follow_up() -> String {
    format!(
        "GET /after HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        open_host()
    )
}

/// The 403 for the denied request, then the follow-up served: the body
/// (requests and all) was skipped by its framing, never parsed as
/// requests, and only the follow-up reached the backend.
fn assert_denied_then_follow_up(w: &World, before: &Counters, ex: &Exchange) {
    let statuses: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 200], "{ex:?}");
    ex.responses[0].assert_local(StatusCode::FORBIDDEN, FORBIDDEN_BODY);
    assert_eq!(ex.responses[1].echo().0["path"], "/after");
    assert!(ex.rest.is_empty() && ex.closed, "{ex:?}");
    assert_eq!(before.backend_requests_since(w), 1);
}

pub(crate) async fn denied_body_with_content_length_never_reaches_the_backend(w: Arc<World>) {
    let body = embedded_request().repeat(20);
    let request = format!(
        "POST /_bulk HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}{}",
        office_host(),
        body.len(),
        follow_up()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 2).await;
    assert_denied_then_follow_up(&w, &before, &ex);
}

pub(crate) async fn denied_chunked_body_never_reaches_the_backend(w: Arc<World>) {
    let payload = embedded_request();
    let request = format!(
        "POST /_bulk HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{payload}\r\n0\r\n\r\n{}",
        office_host(),
        payload.len(),
        follow_up()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 2).await;
    assert_denied_then_follow_up(&w, &before, &ex);
}

pub(crate) async fn denied_expect_100_continue_gets_no_continue(w: Arc<World>) {
    // The body is announced but held back until the server says 100
    // Continue; a denial must answer without inviting it.
    let request = format!(
        "POST /_bulk HTTP/1.1\r\nHost: {}\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
        office_host()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 1).await;
    ex.one(StatusCode::FORBIDDEN)
        .assert_local(StatusCode::FORBIDDEN, FORBIDDEN_BODY);
    before.assert_backend_untouched(&w);
}

pub(crate) async fn unknown_deployment_body_never_reaches_the_backend(w: Arc<World>) {
    let body = embedded_request();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: nosuch0001.{ZONE}\r\nContent-Length: {}\r\n\r\n{body}{}",
        body.len(),
        follow_up()
    );
    let before = w.counters();
    let ex = h1(&w, &denied_client(), request, 2).await;
    let statuses: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 200], "{ex:?}");
    ex.responses[0].assert_local(StatusCode::NOT_FOUND, UNKNOWN_BODY);
    assert_eq!(ex.responses[1].echo().0["path"], "/after");
    assert_eq!(before.backend_requests_since(&w), 1);
}

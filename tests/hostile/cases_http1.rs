//! Cases: HTTP/1.1 request smuggling, malformed heads, limits, whose host
//! a request is for, and denied requests that carry bodies.

use super::*;

// ================================================================ requests

/// `{start_line}`, `Host:` open, these extra header lines, the blank
/// line, `body`.
pub(crate) fn open_request(start_line: &str, headers: impl AsRef<[u8]>, body: &str) -> Vec<u8> {
    [
        format!("{start_line}\r\nHost: {}\r\n", open_host()).as_bytes(),
        headers.as_ref(),
        b"\r\n",
        body.as_bytes(),
    ]
    .concat()
}

/// `POST /` to `open` with these extra header lines and this body.
pub(crate) fn post_open(headers: &str, body: &str) -> Vec<u8> {
    open_request("POST / HTTP/1.1", headers, body)
}

/// `GET /` to `open` with these extra header lines.
pub(crate) fn get_open(headers: impl AsRef<[u8]>) -> Vec<u8> {
    open_request("GET / HTTP/1.1", headers, "")
}

/// A request hidden in a body, which no backend may see.
pub(crate) fn smuggled_request() -> String {
    format!("GET /smuggled HTTP/1.1\r\nHost: {}\r\n\r\n", open_host())
}

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

// ================================================================ refused as they stand

/// How the one request on a connection is refused.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    /// Hyper's own answer to a head it could not parse: this status, no
    /// body, and the connection closed.
    Unparsed(StatusCode),
    /// The proxy's own JSON answer (SPEC §6): this status, exactly this
    /// body.
    Local(StatusCode, &'static str),
}

const UNPARSED_400: Answer = Answer::Unparsed(StatusCode::BAD_REQUEST);
const UNPARSED_431: Answer = Answer::Unparsed(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
const LOCAL_400: Answer = Answer::Local(StatusCode::BAD_REQUEST, BAD_REQUEST_BODY);
pub(crate) const LOCAL_403: Answer = Answer::Local(StatusCode::FORBIDDEN, FORBIDDEN_BODY);

/// `request` alone on a fresh connection (TLS as `opts`) from
/// [`denied_client`]: refused with `answer`, and nothing reached the
/// backend.
pub(crate) async fn assert_refused_with(
    w: &World,
    opts: &TlsOpts,
    request: impl AsRef<[u8]>,
    answer: Answer,
) -> Exchange {
    let before = w.counters();
    let ex = h1_with(w, &denied_client(), opts, request, 1).await;
    match answer {
        Answer::Unparsed(status) => ex.assert_parse_error(status),
        Answer::Local(status, body) => ex.one(status).assert_local(status, body),
    }
    before.assert_backend_untouched(w);
    ex
}

/// [`assert_refused_with`] over the usual TLS.
pub(crate) async fn assert_refused(
    w: &World,
    request: impl AsRef<[u8]>,
    answer: Answer,
) -> Exchange {
    assert_refused_with(w, &TlsOpts::h1(), request, answer).await
}

/// Requests refused as they stand, whatever their source: one case a
/// row, named by its first column.
fn refused_requests() -> Vec<(&'static str, Vec<u8>, Answer)> {
    let (open, office) = (open_host(), office_host());
    vec![
        // ------------------------------------------------ smuggling
        // A coding hyper would accept and silently drop (RFC 9112 §6.1).
        (
            "http_te_gzip_then_chunked_is_not_implemented",
            post_open(
                "Transfer-Encoding: gzip, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Answer::Local(StatusCode::NOT_IMPLEMENTED, NOT_IMPLEMENTED_BODY),
        ),
        // A tunnel to wherever the backend agrees to: never forwarded.
        (
            "http_connect_is_refused_not_tunnelled",
            open_request(&format!("CONNECT {open}:443 HTTP/1.1"), "", ""),
            Answer::Local(StatusCode::METHOD_NOT_ALLOWED, CONNECT_BODY),
        ),
        // `*` is for OPTIONS only (RFC 9112 §3.2.4).
        (
            "http_get_with_asterisk_target",
            open_request("GET * HTTP/1.1", "", ""),
            LOCAL_400,
        ),
        (
            "http_te_with_chunked_not_last",
            post_open("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"),
            UNPARSED_400,
        ),
        (
            "http_te_chunked_then_identity_lines",
            post_open(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "0\r\n\r\n",
            ),
            UNPARSED_400,
        ),
        (
            "http_te_with_space_before_colon",
            post_open(
                "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n",
                "0\r\n\r\n",
            ),
            UNPARSED_400,
        ),
        (
            "http_te_in_http_1_0",
            open_request(
                "POST / HTTP/1.0",
                "Transfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            UNPARSED_400,
        ),
        (
            "http_duplicate_content_length_differing",
            post_open("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            UNPARSED_400,
        ),
        (
            "http_content_length_with_sign",
            post_open("Content-Length: +5\r\n", "hello"),
            UNPARSED_400,
        ),
        // ------------------------------------------------ malformed heads
        (
            "http_obs_fold",
            get_open("X-Folded: a\r\n  b\r\n"),
            UNPARSED_400,
        ),
        (
            "http_nul_in_header_value",
            get_open("X-A: a\0b\r\n"),
            UNPARSED_400,
        ),
        (
            "http_space_in_header_name",
            get_open("X Forwarded For: 1.2.3.4\r\n"),
            UNPARSED_400,
        ),
        (
            "http_bare_cr_in_header_value",
            get_open("X-A: a\rX-B: b\r\n"),
            UNPARSED_400,
        ),
        (
            "http_non_ascii_header_name",
            get_open(b"X-\xc3\xa9: 1\r\n"),
            UNPARSED_400,
        ),
        (
            "http_junk_after_the_version",
            open_request("GET / HTTP/1.1 junk", "", ""),
            UNPARSED_400,
        ),
        (
            "http_unknown_version",
            open_request("GET / HTTP/1.7", "", ""),
            UNPARSED_400,
        ),
        // ------------------------------------------------ limits
        (
            "http_header_block_over_64k",
            get_open(format!("X-Big: {}\r\n", "a".repeat(70 * 1024))),
            UNPARSED_431,
        ),
        (
            "http_more_than_128_headers",
            get_open((0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()),
            UNPARSED_431,
        ),
        (
            "http_uri_over_the_limit",
            open_request(
                &format!("GET /{} HTTP/1.1", "a".repeat(20 * 1024)),
                "Connection: close\r\n",
                "",
            ),
            Answer::Local(StatusCode::URI_TOO_LONG, URI_TOO_LONG_BODY),
        ),
        // A target longer than the whole head may be (64 KiB) trips the
        // head limit before the URI check can run: 431 from the parser.
        (
            "http_uri_over_the_head_limit",
            open_request(&format!("GET /{} HTTP/1.1", "a".repeat(70 * 1024)), "", ""),
            UNPARSED_431,
        ),
        // ------------------------------------------------ whose host
        (
            "http_absolute_form_http_scheme_naming_another_host",
            open_request(
                &format!("GET http://{office}/ HTTP/1.1"),
                "Connection: close\r\n",
                "",
            ),
            LOCAL_400,
        ),
        // Parsers disagree on which side of '@' is the host; the proxy
        // must not pick the permissive one.
        (
            "http_absolute_form_with_userinfo",
            format!(
                "GET https://{open}@{office}/ HTTP/1.1\r\nHost: {office}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            LOCAL_400,
        ),
        // The target's authority routes (Host agreeing, in another
        // case), and policy applies to what it names.
        (
            "http_absolute_form_naming_a_denied_deployment_is_filtered",
            format!(
                "POST https://{office}/_bulk HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
                office.to_ascii_uppercase()
            )
            .into_bytes(),
            LOCAL_403,
        ),
        // RFC 9112 §3.2: more than one Host line is a 400. Routing by one
        // and forwarding both would let the backend act on the other.
        (
            "http_two_host_headers",
            get_open(format!("Host: {office}\r\nConnection: close\r\n")),
            LOCAL_400,
        ),
        // obs-text passes the HTTP parser but is no host name; routing by
        // the hint and forwarding the junk Host is what used to happen.
        (
            "http_host_that_is_not_text",
            [
                &b"GET / HTTP/1.1\r\nHost: \xff\xfe.es.test\r\n"[..],
                format!("X-Found-Cluster: {OPEN}\r\nConnection: close\r\n\r\n").as_bytes(),
            ]
            .concat(),
            LOCAL_400,
        ),
        // ------------------------------------------------ denied with a body
        // The body is announced but held back until the server says 100
        // Continue; a denial must answer without inviting it.
        (
            "denied_expect_100_continue_gets_no_continue",
            format!(
                "POST /_bulk HTTP/1.1\r\nHost: {office}\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
            )
            .into_bytes(),
            LOCAL_403,
        ),
    ]
}

async fn refused_request(w: Arc<World>, (request, answer): (Vec<u8>, Answer)) {
    assert_refused(&w, request, answer).await;
}

/// [`refused_requests`] as cases.
pub(crate) fn refused_request_cases() -> Vec<(&'static str, Case)> {
    refused_requests()
        .into_iter()
        .map(|(name, request, answer)| (name, row_case(refused_request, (request, answer))))
        .collect()
}

// ================================================================ cases: smuggling

/// `request` is a `POST /first` whose Content-Length and
/// Transfer-Encoding disagree, a smuggled request in its body. Whichever
/// a proxy picks, the backend must see one request, framed one way
/// (chunked: `body_bytes` of body, no Content-Length passed on), and the
/// connection must not carry on to a second (`order`: which header
/// came first).
async fn assert_forwarded_once_as_chunked(
    w: &World,
    order: &str,
    request: String,
    body_bytes: usize,
) {
    let before = w.counters();
    let ex = h1(w, &denied_client(), request, 1).await;
    let echo = ex.one(StatusCode::OK).echo();
    assert_eq!(echo.0["path"], "/first");
    assert_eq!(echo.0["body_bytes"], body_bytes);
    assert!(echo.header("content-length").is_empty(), "{:?}", echo.0);
    assert!(ex.closed, "the connection carried on after {order}");
    assert_eq!(before.backend_requests_since(w), 1);
}

pub(crate) async fn http_cl_te_smuggled_request_never_reaches_the_backend(w: Arc<World>) {
    // Content-Length says the body runs over the smuggled request;
    // Transfer-Encoding says the body ends at "0\r\n\r\n".
    let body = format!("0\r\n\r\n{}", smuggled_request());
    let request = format!(
        "POST /first HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        open_host(),
        body.len()
    );
    assert_forwarded_once_as_chunked(&w, "CL+TE", request, 0).await;
}

pub(crate) async fn http_te_cl_smuggled_request_never_reaches_the_backend(w: Arc<World>) {
    // The reverse order, and a Content-Length shorter than the chunked
    // body: something framing by Content-Length would take the 3-byte
    // chunk-size line as the body and the chunk's data as a request.
    // The whole chunk must arrive as the body.
    let smuggled = smuggled_request();
    let chunk = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let request = format!(
        "POST /first HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{chunk}",
        open_host()
    );
    assert_forwarded_once_as_chunked(&w, "TE+CL", request, smuggled.len()).await;
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

/// A chunked `POST /` whose `body` breaks the chunked framing: the
/// proxy's 400, the connection closed, nothing forwarded.
///
/// The whole request goes in one TLS record, so the proxy finds the
/// framing error on its first poll of the body, before the head it is
/// forwarding has been flushed upstream: nothing reaches the backend.
/// (Were the body late, the backend would get the head and then a cut-off
/// body; never the bytes after the broken chunk as a request.)
async fn assert_broken_chunked_body_refused(w: &World, body: &str) {
    let request = post_open("Transfer-Encoding: chunked\r\n", body);
    let ex = assert_refused(w, request, LOCAL_400).await;
    assert!(ex.closed, "the connection carried on after a broken body");
}

pub(crate) async fn http_bad_chunk_size(w: Arc<World>) {
    let body = format!("zz\r\nhello\r\n0\r\n\r\n{}", smuggled_request());
    assert_broken_chunked_body_refused(&w, &body).await;
}

pub(crate) async fn http_chunk_size_overflowing_u64(w: Arc<World>) {
    assert_broken_chunked_body_refused(&w, "fffffffffffffffffff1\r\nhello\r\n0\r\n\r\n").await;
}

// ================================================================ cases: malformed heads

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
        assert_refused(&w, request, LOCAL_400).await;
    }
}

pub(crate) async fn http10_without_host_routes_by_x_found_cluster(w: Arc<World>) {
    // HTTP/1.0 has no Host requirement; the hint routes, policy applies,
    // and without keep-alive the connection closes either way.
    let ten = |cluster| format!("GET /ten HTTP/1.0\r\nX-Found-Cluster: {cluster}\r\n\r\n");
    let before = w.counters();
    let ex = h1(&w, &denied_client(), ten(OPEN), 1).await;
    let echo = ex.one(StatusCode::OK).echo();
    assert_eq!(echo.0["path"], "/ten");
    // The upstream hop is HTTP/1.1 and must carry a Host: the backend's.
    let host = echo.header("host");
    assert!(
        host.len() == 1 && host[0].parse::<std::net::SocketAddr>().is_ok(),
        "upstream Host {host:?}"
    );
    assert_eq!(before.backend_requests_since(&w), 1);
    assert!(ex.closed, "HTTP/1.0 without keep-alive stayed open");
    let ex = assert_refused(&w, ten(OFFICE), LOCAL_403).await;
    assert!(ex.closed, "HTTP/1.0 without keep-alive stayed open");
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

// ================================================================ cases: refused requests with bodies

/// `refused` (a request with a body), then [`follow_up`], on one
/// connection: the proxy's `status` and exactly `body` for the first,
/// then the follow-up served. The body (requests and all) was skipped by
/// its framing, never parsed as requests, and only the follow-up reached
/// the backend.
async fn assert_refused_then_follow_up(
    w: &World,
    refused: String,
    status: StatusCode,
    body: &str,
) -> Exchange {
    let before = w.counters();
    let ex = h1(w, &denied_client(), refused + &follow_up(), 2).await;
    let statuses: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [status.as_u16(), 200], "{ex:?}");
    ex.responses[0].assert_local(status, body);
    assert_eq!(ex.responses[1].echo().0["path"], "/after");
    assert_eq!(before.backend_requests_since(w), 1);
    ex
}

/// [`assert_refused_then_follow_up`] for a `POST /_bulk` to `office`
/// with these framing headers and this body: 403, and the connection
/// closed after the follow-up with nothing more sent.
async fn assert_denied_then_follow_up(w: &World, framing: String, body: &str) {
    let denied = format!(
        "POST /_bulk HTTP/1.1\r\nHost: {}\r\n{framing}\r\n\r\n{body}",
        office_host()
    );
    let ex = assert_refused_then_follow_up(w, denied, StatusCode::FORBIDDEN, FORBIDDEN_BODY).await;
    assert!(ex.rest.is_empty() && ex.closed, "{ex:?}");
}

pub(crate) async fn denied_body_with_content_length_never_reaches_the_backend(w: Arc<World>) {
    let body = embedded_request().repeat(20);
    let framing = format!("Content-Length: {}", body.len());
    assert_denied_then_follow_up(&w, framing, &body).await;
}

pub(crate) async fn denied_chunked_body_never_reaches_the_backend(w: Arc<World>) {
    let payload = embedded_request();
    let body = format!("{:x}\r\n{payload}\r\n0\r\n\r\n", payload.len());
    assert_denied_then_follow_up(&w, "Transfer-Encoding: chunked".to_owned(), &body).await;
}

pub(crate) async fn unknown_deployment_body_never_reaches_the_backend(w: Arc<World>) {
    let body = embedded_request();
    let refused = format!(
        "POST / HTTP/1.1\r\nHost: nosuch0001.{ZONE}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_refused_then_follow_up(&w, refused, StatusCode::NOT_FOUND, UNKNOWN_BODY).await;
}

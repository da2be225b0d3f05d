//! Hostile input, end to end: malformed PROXY headers, TLS that is not
//! TLS, HTTP/1.1 request smuggling and malformed heads, HTTP/2 floods and
//! limits. Every case asserts its exact outcome (the status and body a
//! client gets, or a silent close and the metric that counted it) and what
//! the backend saw; after the suite the same proxy still serves a correct
//! request, and nothing anywhere in the process panicked.
//!
//! One test runs every case in sequence against one proxy: the backend and
//! metric counters are then deltas a case owns, and the panic hook sees
//! only this suite. Each case runs in its own task under a time limit, and
//! every failure is reported by name at the end.
//!
//! The proxy here is built like `TestProxy`, but with short PROXY-read,
//! TLS-handshake and header timeouts (so the "stalls" cases are quick),
//! small HTTP/2 stream and server-reset limits, and its own metrics
//! registry, which the
//! cases read to tell one kind of refusal from another.
//!
//! This file holds the world, the runner and the list of cases; the
//! cases live in `hostile/cases_*.rs` by layer (the HTTP/1.1 requests
//! refused as they stand as one table, a case a row), and the clients
//! that write what no well-behaved client would (raw TCP and TLS,
//! HTTP/1.1 as bytes, HTTP/2 as frames) in `hostile/raw_*.rs`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis_test_kit::harness::*;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

#[path = "hostile/cases_http1.rs"]
mod cases_http1;
#[path = "hostile/cases_http2.rs"]
mod cases_http2;
#[path = "hostile/cases_proxy_protocol.rs"]
mod cases_proxy_protocol;
#[path = "hostile/cases_tls.rs"]
mod cases_tls;
#[path = "hostile/raw_h1.rs"]
mod raw_h1;
#[path = "hostile/raw_h2.rs"]
mod raw_h2;
#[path = "hostile/raw_net.rs"]
mod raw_net;

use cases_http1::*;
use cases_http2::*;
use cases_proxy_protocol::*;
use cases_tls::*;
use raw_h1::*;
use raw_h2::*;
use raw_net::*;

/// `proxy_protocol.read_timeout` of the proxy under test.
const PROXY_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// `tls.handshake_timeout`.
const TLS_TIMEOUT: Duration = Duration::from_secs(1);
/// `server.http2_max_concurrent_streams`.
const H2_MAX_STREAMS: u32 = 8;
/// `server.http2_max_pending_accept_reset_streams`: the shipped default.
const H2_MAX_PENDING_RESETS: usize = 32;
/// `server.http2_max_local_error_reset_streams`.
const H2_MAX_LOCAL_RESETS: usize = 16;
/// Bound on one case, whatever it does.
const CASE_LIMIT: Duration = Duration::from_secs(20);
/// After the expected responses, how long to watch for more bytes or a
/// close.
const LINGER: Duration = Duration::from_millis(300);
/// A source outside `office-ips`: `open` serves it, `office` denies it.
const UNTRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

const BAD_REQUEST_BODY: &str = r#"{"ok":false,"message":"Bad request."}"#;
const URI_TOO_LONG_BODY: &str = r#"{"ok":false,"message":"Request target too long."}"#;
const NOT_IMPLEMENTED_BODY: &str =
    r#"{"ok":false,"message":"Transfer codings other than chunked are not supported."}"#;
const CONNECT_BODY: &str = r#"{"ok":false,"message":"The CONNECT method is not supported."}"#;

// ================================================================ the world

/// One backend, the proxy in front of it (`small_world`: `open0001` has no
/// policy, `ip0001` admits only 203.0.113.0/24), and its metrics.
struct World {
    addr: SocketAddr,
    es: Backend,
    proxy: TestProxy,
}

impl World {
    async fn start() -> Self {
        let es = Backend::start("es").await;
        let snapshot = small_world(1, es.addr, unused_port(), &["203.0.113.0/24"]);
        let dir = TempDir::new();
        let config = ProxyConfig::new(&dir)
            .set("server.request_header_timeout", "2s")
            .set(
                "server.http2_max_concurrent_streams",
                i64::from(H2_MAX_STREAMS),
            )
            .set(
                "server.http2_max_pending_accept_reset_streams",
                H2_MAX_PENDING_RESETS as i64,
            )
            .set(
                "server.http2_max_local_error_reset_streams",
                H2_MAX_LOCAL_RESETS as i64,
            )
            .set(
                "proxy_protocol.read_timeout",
                format!("{}ms", PROXY_READ_TIMEOUT.as_millis()),
            )
            .set(
                "tls.handshake_timeout",
                format!("{}ms", TLS_TIMEOUT.as_millis()),
            )
            .set("upstream.response_timeout", "5s")
            .set("log.access", false);
        let proxy = TestProxy::start_with(config, dir, &snapshot).await;
        Self {
            addr: proxy.addr,
            es,
            proxy,
        }
    }

    fn metrics(&self) -> Metrics {
        self.proxy.metrics()
    }

    /// What a case compares afterwards.
    fn counters(&self) -> Counters {
        Counters {
            backend_requests: self.es.requests(),
            backend_connections: self.es.connections(),
            metrics: self.metrics(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    ProxyProtocol,
    Tls,
}

impl Refusal {
    fn metric(self) -> &'static str {
        match self {
            Self::ProxyProtocol => "portcullis_proxy_protocol_errors_total",
            Self::Tls => "portcullis_tls_handshake_errors_total",
        }
    }
}

/// `proxy_protocol_errors_total` or `tls_handshake_errors_total`, by kind;
/// all kinds when `kind` is `None`.
fn refusals(m: &Metrics, family: Refusal, kind: Option<&str>) -> f64 {
    let labels: Vec<(&str, &str)> = kind.map(|k| ("kind", k)).into_iter().collect();
    m.sum(family.metric(), &labels)
}

#[derive(Debug, Clone)]
struct Counters {
    backend_requests: usize,
    backend_connections: usize,
    metrics: Metrics,
}

impl Counters {
    /// Nothing reached the backend since `self`.
    fn assert_backend_untouched(&self, w: &World) {
        assert_eq!(
            w.es.requests(),
            self.backend_requests,
            "a request reached the backend"
        );
    }

    fn backend_requests_since(&self, w: &World) -> usize {
        w.es.requests() - self.backend_requests
    }
}

/// Waits (briefly) for exactly one refusal to be counted since `before`,
/// under `family` and `kind`, and checks that nothing reached a backend.
async fn assert_refused_as(w: &World, before: &Counters, family: Refusal, kind: &str) {
    let total_before = refusals(&before.metrics, family, None);
    let deadline = Instant::now() + Duration::from_secs(2);
    let now = loop {
        let now = w.metrics();
        if refusals(&now, family, None) > total_before {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no {family:?} refusal was counted (wanted kind {kind:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delta = |f, k| refusals(&now, f, k) - refusals(&before.metrics, f, k);
    let counted: Vec<&str> = now
        .text
        .lines()
        .filter(|l| l.starts_with(family.metric()))
        .collect();
    assert_eq!(
        (delta(family, None), delta(family, Some(kind))),
        (1.0, 1.0),
        "wanted one {family:?} refusal of kind {kind:?}; now {counted:#?}"
    );
    let other = match family {
        Refusal::ProxyProtocol => Refusal::Tls,
        Refusal::Tls => Refusal::ProxyProtocol,
    };
    assert_eq!(
        delta(other, None),
        0.0,
        "also refused at the {other:?} layer"
    );
    before.assert_backend_untouched(w);
    assert_eq!(
        w.es.connections(),
        before.backend_connections,
        "a backend connection was opened"
    );
}

/// `bytes` on a raw connection (from `bind`; its write side closed when
/// `half_close`): the proxy closes it within `limit`, one `family`
/// refusal of `kind` is counted, and nothing is forwarded. What the
/// proxy sent before closing is the caller's to check.
async fn assert_raw_refused(
    w: &World,
    bind: Option<IpAddr>,
    bytes: &[u8],
    half_close: bool,
    limit: Duration,
    family: Refusal,
    kind: &str,
) -> Ended {
    let before = w.counters();
    let ended = send_raw(w, bind, bytes, half_close, limit).await;
    assert_refused_as(w, &before, family, kind).await;
    ended
}

// ================================================================ afterwards

/// Run last: after all that, the proxy still serves. A fresh HTTP/1.1
/// and HTTP/2 client each get an allowed GET, a denied GET and an allowed
/// upload through.
async fn afterwards_the_proxy_still_serves(w: Arc<World>) {
    let before = w.counters();
    for h2 in [false, true] {
        let builder = ClientBuilder::new(w.addr, ZONE).preamble(v1_from(DENIED_V4));
        let mut conn = if h2 { builder.h2() } else { builder }.connect().await;
        let echo = conn.get(&open_host(), "/still-serving").await.echo();
        assert_eq!(echo.forwarded_for(), ["198.51.100.9"]);
        assert_eq!(echo.0["path"], "/still-serving");
        conn.get(&office_host(), "/")
            .await
            .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
        let req = conn
            .request(Method::POST, &open_host(), "/hash")
            .body(full(vec![7u8; 10_000]))
            .unwrap();
        let reply = conn.send(req).await.expect("POST /hash");
        assert_eq!(reply.json()["bytes"], 10_000);
    }
    assert_eq!(before.backend_requests_since(&w), 4);
}

/// Run last: every connection the suite opened has been closed by its
/// client, and the proxy let go of each; none is stuck (or was lost to a
/// panicking task, which never decrements the gauge).
async fn afterwards_no_connection_is_left_open(w: Arc<World>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = w.metrics().sum("portcullis_connections_active", &[]);
        if open == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections still open in the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ================================================================ the suite

type Case = Box<dyn Fn(Arc<World>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn case<F>(run: impl Fn(Arc<World>) -> F + Send + Sync + 'static) -> Case
where
    F: Future<Output = ()> + Send + 'static,
{
    Box::new(move |w| Box::pin(run(w)))
}

/// A case that is one row of a table: `run` with the row's data.
fn row_case<R, F>(run: fn(Arc<World>, R) -> F, row: R) -> Case
where
    R: Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    case(move |w| run(w, row.clone()))
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), case($name))),*]
    };
}

fn all_cases() -> Vec<(&'static str, Case)> {
    [
        cases![
            // PROXY protocol
            proxy_v2_signature_one_byte_off,
            proxy_v1_signature_misspelt,
            proxy_v1_lowercase_signature,
            proxy_v2_truncated_then_eof,
            proxy_v1_truncated_then_eof,
            proxy_v2_length_field_at_u16_max,
            proxy_v2_payload_one_over_the_cap,
            proxy_v2_payload_at_the_cap_in_tiny_writes_is_served,
            proxy_v2_length_shorter_than_the_addresses,
            proxy_v2_udp_family,
            proxy_v2_unknown_family,
            proxy_v2_version_one,
            proxy_v2_unknown_command,
            proxy_v1_no_crlf_within_107_bytes,
            proxy_v1_unknown_line_over_107_bytes,
            proxy_v1_bare_lf,
            proxy_v1_port_out_of_range,
            proxy_v1_family_and_addresses_disagree,
            proxy_v2_tlv_overruns_the_header,
            proxy_v2_tlv_trailing_fragment,
            proxy_v2_crc_tlv_of_three_bytes,
            proxy_v2_crc_header_flipped_to_local,
            proxy_v2_local_with_a_bad_crc,
            proxy_v2_local_with_a_good_crc_is_served_as_the_peer,
            proxy_untrusted_sender_claiming_an_endpoint,
            proxy_random_garbage,
            proxy_repeated_crlf,
            proxy_v2_local_with_any_family_is_served_as_the_peer,
            // TLS
            tls_plain_http_instead_of_tls,
            tls_handshake_record_of_garbage,
            tls_truncated_client_hello_then_eof,
            tls_truncated_client_hello_then_silence,
            tls_client_hello_offering_only_tls_1_1,
            tls_record_longer_than_the_protocol_allows,
            tls_only_unknown_alpn_offered,
            tls_unknown_sni_outside_the_zone_routes_by_host,
            tls_unknown_deployment_sni_does_not_override_host,
            tls_no_sni,
            // HTTP/1.1 smuggling
            http_cl_te_smuggled_request_never_reaches_the_backend,
            http_te_cl_smuggled_request_never_reaches_the_backend,
            http_duplicate_content_length_equal_is_one_length,
            http_bad_chunk_size,
            http_chunk_size_overflowing_u64,
        ],
        // HTTP/1.1 requests refused as they stand (smuggling, malformed
        // heads, limits, whose host, a denial with a body): a table, one
        // case a row
        refused_request_cases(),
        cases![
            // malformed heads
            http_h2_preface_on_an_http1_connection,
            // whose host
            http11_without_host,
            http10_without_host_routes_by_x_found_cluster,
            http_pipelined_allowed_then_denied,
            // denied requests with bodies
            denied_body_with_content_length_never_reaches_the_backend,
            denied_chunked_body_never_reaches_the_backend,
            unknown_deployment_body_never_reaches_the_backend,
            // HTTP/2
            h2_stream_limit_refuses_the_extra_stream,
            h2_connection_specific_header_is_refused,
            h2_data_beyond_content_length,
            h2_authority_and_host_disagree,
            h2_get_with_asterisk_path,
            h2_header_list_over_the_limit,
            h2_continuation_flood,
            h2_rapid_reset_flood_gets_goaway,
            h2_server_reset_flood_gets_goaway,
            // afterwards
            afterwards_the_proxy_still_serves,
            afterwards_no_connection_is_left_open,
        ],
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Every panic in the process while the suite runs: (location, message).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn record_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| {
                info.payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
            })
            .unwrap_or_default();
        PANICS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((location, message));
        previous(info);
    }));
}

/// Panics raised outside this test's own code (its assertions are in
/// `tests/`): in the proxy, hyper, h2, rustls, tokio...
fn foreign_panics() -> Vec<String> {
    PANICS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(location, _)| !location.starts_with("tests/"))
        .map(|(location, message)| format!("{location}: {message}"))
        .collect()
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "cancelled".to_owned();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_exact_answers_and_nothing_panics() {
    record_panics();
    let started = Instant::now();
    let w = Arc::new(World::start().await);
    let cases = all_cases();
    let hostile = cases
        .iter()
        .filter(|(name, _)| !name.starts_with("afterwards_"))
        .count();
    assert!(hostile >= 40, "only {hostile} hostile cases");
    let mut names: Vec<&str> = cases.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "two cases share a name");

    let mut failures = Vec::new();
    for (name, case) in &cases {
        let t = Instant::now();
        let panics_before = foreign_panics().len();
        let task = tokio::spawn(case(w.clone()));
        let abort = task.abort_handle();
        match tokio::time::timeout(CASE_LIMIT, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {}", panic_text(e))),
            Err(_) => {
                abort.abort();
                failures.push(format!("{name}: hung for {CASE_LIMIT:?}"));
            }
        }
        let foreign = foreign_panics();
        if foreign.len() > panics_before {
            failures.push(format!(
                "{name}: panicked outside the test: {:?}",
                &foreign[panics_before..]
            ));
        }
        eprintln!("case {name}: {:?}", t.elapsed());
    }

    let foreign = foreign_panics();
    eprintln!(
        "{} cases in {:?}; {} failed",
        cases.len(),
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty() && foreign.is_empty(),
        "failed cases:\n  {}\npanics outside the test: {foreign:#?}",
        failures.join("\n  ")
    );
}

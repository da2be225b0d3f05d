//! Cases: bytes that are not TLS, handshakes that stop half-way or ask
//! for what the proxy does not offer, and SNIs that name no deployment.

use super::*;

/// TLS alert descriptions (RFC 8446 §6).
pub(crate) const HANDSHAKE_FAILURE: u8 = 40;
pub(crate) const DECODE_ERROR: u8 = 50;

/// A TLS-layer refusal after a valid PROXY header: closed with `alert`
/// (or nothing) sent and nothing else, counted as `kind`, nothing
/// forwarded. Returns when it closed.
pub(crate) async fn assert_tls_refused(
    w: &World,
    after_header: &[u8],
    half_close: bool,
    kind: &str,
    alert: Option<u8>,
) -> Duration {
    let bytes = [&v1_from(ALLOWED_V4)[..], after_header].concat();
    let limit = TLS_TIMEOUT * 3;
    let ended = assert_raw_refused(w, None, &bytes, half_close, limit, Refusal::Tls, kind).await;
    assert_eq!(alert_only(&ended.received), alert, "alert sent");
    ended.after
}

/// Closed well before the handshake timeout.
pub(crate) fn assert_prompt_tls(after: Duration) {
    assert!(
        after < TLS_TIMEOUT / 2,
        "closed only after {after:?} (handshake timeout {TLS_TIMEOUT:?})"
    );
}

pub(crate) async fn tls_plain_http_instead_of_tls(w: Arc<World>) {
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", open_host());
    let after =
        assert_tls_refused(&w, request.as_bytes(), false, "not_tls", Some(DECODE_ERROR)).await;
    assert_prompt_tls(after);
}

pub(crate) async fn tls_handshake_record_of_garbage(w: Arc<World>) {
    // A handshake record header, then 64 random bytes: the "message"
    // announces a 1.2 MB handshake payload, which rustls refuses without
    // an alert.
    let mut bytes = garbage(5 + 64, 99);
    bytes[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x40]);
    let after = assert_tls_refused(&w, &bytes, false, "not_tls", None).await;
    assert_prompt_tls(after);
}

/// A minimal ClientHello: `version` in the hello, `suites`, no
/// extensions.
pub(crate) fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    body.extend_from_slice(&u16::try_from(suites.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[1, 0]); // compression: null
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut handshake = vec![0x01, len[1], len[2], len[3]];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

pub(crate) async fn tls_truncated_client_hello_then_eof(w: Arc<World>) {
    let hello = client_hello([0x03, 0x03], &[0x1301, 0xc02b]);
    let after = assert_tls_refused(&w, &hello[..hello.len() / 2], true, "eof", None).await;
    assert_prompt_tls(after);
}

pub(crate) async fn tls_truncated_client_hello_then_silence(w: Arc<World>) {
    let hello = client_hello([0x03, 0x03], &[0x1301, 0xc02b]);
    let after = assert_tls_refused(&w, &hello[..hello.len() / 2], false, "timeout", None).await;
    assert!(
        after >= TLS_TIMEOUT - Duration::from_millis(50),
        "closed after {after:?}, before the {TLS_TIMEOUT:?} handshake timeout"
    );
}

pub(crate) async fn tls_client_hello_offering_only_tls_1_1(w: Arc<World>) {
    // TLS 1.1 and its RSA-kx suites only: below the protocol floor.
    let hello = client_hello([0x03, 0x02], &[0x002f, 0x0035]);
    let after = assert_tls_refused(&w, &hello, false, "protocol", Some(HANDSHAKE_FAILURE)).await;
    assert_prompt_tls(after);
}

pub(crate) async fn tls_record_longer_than_the_protocol_allows(w: Arc<World>) {
    // 65535 bytes announced; 2^14 + 256 is the most TLS allows.
    let mut bytes = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    bytes.extend_from_slice(&[0; 512]);
    let after = assert_tls_refused(&w, &bytes, false, "not_tls", Some(DECODE_ERROR)).await;
    assert_prompt_tls(after);
}

pub(crate) async fn tls_only_unknown_alpn_offered(w: Arc<World>) {
    let before = w.counters();
    let opts = TlsOpts::h1().alpn(&[b"spdy/3", b"h3"]);
    let result = tls_connect(&w, &v1_from(ALLOWED_V4), &opts).await;
    match result {
        Err(e) => {
            assert!(
                e.ends_with("received fatal alert: NoApplicationProtocol"),
                "{e}"
            );
            assert_refused_as(&w, &before, Refusal::Tls, "protocol").await;
        }
        Ok(s) => panic!(
            "handshake completed with ALPN {:?}",
            s.get_ref().1.alpn_protocol()
        ),
    }
}

/// Over TLS as `opts`, a GET to `open` and one to `office`, pipelined:
/// the first served (its echo is returned), the second denied, and only
/// the first reached the backend.
async fn allowed_then_denied(w: &World, opts: &TlsOpts) -> Echo {
    let before = w.counters();
    let request = format!(
        "GET /a HTTP/1.1\r\nHost: {}\r\n\r\nGET /b HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        open_host(),
        office_host()
    );
    let ex = h1_with(w, &denied_client(), opts, request, 2).await;
    assert_eq!(ex.responses.len(), 2, "{ex:?}");
    let echo = ex.responses[0].echo();
    ex.responses[1].assert_local(StatusCode::FORBIDDEN, FORBIDDEN_BODY);
    assert_eq!(before.backend_requests_since(w), 1);
    echo
}

pub(crate) async fn tls_unknown_sni_outside_the_zone_routes_by_host(w: Arc<World>) {
    // The default certificate is served; SNI names no deployment, so the
    // Host header routes, and policy still applies to it.
    let opts = TlsOpts::h1().sni(Some("unknown.example.org"));
    allowed_then_denied(&w, &opts).await;
}

pub(crate) async fn tls_unknown_deployment_sni_does_not_override_host(w: Arc<World>) {
    let opts = TlsOpts::h1().sni(Some("nosuch0001.es.test"));
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        office_host()
    );
    assert_refused_with(&w, &opts, request, LOCAL_403).await;
}

pub(crate) async fn tls_no_sni(w: Arc<World>) {
    let echo = allowed_then_denied(&w, &TlsOpts::h1().sni(None)).await;
    assert_eq!(echo.forwarded_for(), ["198.51.100.9"]);
}

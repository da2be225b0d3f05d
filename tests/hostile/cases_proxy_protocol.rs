//! Cases: PROXY headers that are malformed, truncated, oversized, sent
//! by an untrusted peer, or not PROXY headers at all; and three that must
//! still be served.

use super::*;

/// A PROXY-header refusal: closed without a byte, promptly, counted as
/// `kind`, and nothing reached a backend.
pub(crate) async fn assert_header_refused(
    w: &World,
    bind: Option<IpAddr>,
    bytes: &[u8],
    half_close: bool,
    kind: &str,
) -> Duration {
    let limit = Duration::from_secs(3);
    let family = Refusal::ProxyProtocol;
    let ended = assert_raw_refused(w, bind, bytes, half_close, limit, family, kind).await;
    assert!(
        ended.received.is_empty(),
        "the proxy answered: {:?}",
        String::from_utf8_lossy(&ended.received)
    );
    ended.after
}

/// Closed well before the PROXY read timeout: the parser decided on the
/// bytes, not on a clock.
pub(crate) fn assert_prompt(after: Duration) {
    assert!(
        after < PROXY_READ_TIMEOUT / 2,
        "closed only after {after:?} (read timeout {PROXY_READ_TIMEOUT:?})"
    );
}

/// A well-formed v2 `PROXY` header for `source`, with the bytes after the
/// signature editable.
pub(crate) fn v2_from(source: Ipv4Addr) -> Vec<u8> {
    V2::from(source).build()
}

pub(crate) async fn proxy_v2_signature_one_byte_off(w: Arc<World>) {
    let mut header = v2_from(ALLOWED_V4);
    header[10] = b'X'; // "QUIT" → "QUIX"
    let after = assert_header_refused(&w, None, &header, false, "missing").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v1_signature_misspelt(w: Arc<World>) {
    let after = assert_header_refused(
        &w,
        None,
        b"PROXZ TCP4 203.0.113.7 10.0.0.1 40000 9243\r\n",
        false,
        "missing",
    )
    .await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v1_lowercase_signature(w: Arc<World>) {
    assert_header_refused(
        &w,
        None,
        b"proxy TCP4 203.0.113.7 10.0.0.1 40000 9243\r\n",
        false,
        "missing",
    )
    .await;
}

pub(crate) async fn proxy_v2_truncated_then_eof(w: Arc<World>) {
    let header = V2::from(ALLOWED_V4).aws_vpce(VPCE).build();
    let after = assert_header_refused(&w, None, &header[..20], true, "closed").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v1_truncated_then_eof(w: Arc<World>) {
    let header = v1_from(ALLOWED_V4);
    let after = assert_header_refused(&w, None, &header[..12], true, "closed").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v2_length_field_at_u16_max(w: Arc<World>) {
    // Only the 16 fixed bytes: the cap is enforced before any payload is
    // awaited (or buffered).
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let after = assert_header_refused(&w, None, &header, false, "v2_too_long").await;
    assert_prompt(after);
}

/// A v2 header from `source` whose payload is padded with a NOOP TLV
/// (type 0x04) to exactly `payload_len` bytes.
pub(crate) fn v2_padded(source: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    let pad = payload_len - 12 - 3;
    V2::from(source).tlv(0x04, vec![0u8; pad]).build()
}

pub(crate) async fn proxy_v2_payload_one_over_the_cap(w: Arc<World>) {
    let header = v2_padded(ALLOWED_V4, 1025);
    assert_eq!(header.len(), 16 + 1025);
    assert_header_refused(&w, None, &header, false, "v2_too_long").await;
}

pub(crate) async fn proxy_v2_payload_at_the_cap_in_tiny_writes_is_served(w: Arc<World>) {
    // 1024 bytes of payload (the cap; past the reader's inline buffer, so
    // its heap path), 7 bytes per write, then TLS and a request.
    let header = v2_padded(ALLOWED_V4, 1024);
    let before = w.counters();
    let mut tcp = tcp(&w, None).await;
    for piece in header.chunks(7) {
        tcp.write_all(piece).await.expect("write header piece");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut tls = tls_over(tcp, &TlsOpts::h1())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!(
        "GET /padded HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        office_host()
    );
    tls.write_all(request.as_bytes())
        .await
        .expect("write request");
    let ex = read_responses(&mut tls, 1).await;
    let echo = ex.one(StatusCode::OK).echo();
    assert_eq!(echo.forwarded_for(), ["203.0.113.7"]);
    assert_eq!(echo.0["path"], "/padded");
    assert!(ex.closed);
    assert_eq!(before.backend_requests_since(&w), 1);
}

pub(crate) async fn proxy_v2_length_shorter_than_the_addresses(w: Arc<World>) {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 0x08]);
    header.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1]);
    assert_header_refused(&w, None, &header, false, "v2_truncated_addresses").await;
}

pub(crate) async fn proxy_v2_udp_family(w: Arc<World>) {
    let mut header = v2_from(ALLOWED_V4);
    header[13] = 0x12; // UDP over IPv4
    let after = assert_header_refused(&w, None, &header, false, "v2_family").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v2_unknown_family(w: Arc<World>) {
    let mut header = v2_from(ALLOWED_V4);
    header[13] = 0x45;
    assert_header_refused(&w, None, &header[..14], false, "v2_family").await;
}

pub(crate) async fn proxy_v2_version_one(w: Arc<World>) {
    let mut header = v2_from(ALLOWED_V4);
    header[12] = 0x11;
    assert_header_refused(&w, None, &header, false, "v2_version").await;
}

pub(crate) async fn proxy_v2_unknown_command(w: Arc<World>) {
    let mut header = v2_from(ALLOWED_V4);
    header[12] = 0x2f;
    assert_header_refused(&w, None, &header, false, "v2_command").await;
}

pub(crate) async fn proxy_v1_no_crlf_within_107_bytes(w: Arc<World>) {
    let mut line = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 9243".to_vec();
    line.resize(200, b' ');
    let after = assert_header_refused(&w, None, &line, false, "v1_too_long").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v1_unknown_line_over_107_bytes(w: Arc<World>) {
    let line = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
    assert_header_refused(&w, None, line.as_bytes(), false, "v1_too_long").await;
}

pub(crate) async fn proxy_v1_bare_lf(w: Arc<World>) {
    assert_header_refused(
        &w,
        None,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 9243\n",
        false,
        "v1_malformed",
    )
    .await;
}

pub(crate) async fn proxy_v1_port_out_of_range(w: Arc<World>) {
    assert_header_refused(
        &w,
        None,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 9243\r\n",
        false,
        "v1_malformed",
    )
    .await;
}

pub(crate) async fn proxy_v1_family_and_addresses_disagree(w: Arc<World>) {
    assert_header_refused(
        &w,
        None,
        b"PROXY TCP4 2001:db8::1 fd00::1 40000 9243\r\n",
        false,
        "v1_malformed",
    )
    .await;
}

pub(crate) async fn proxy_v2_tlv_overruns_the_header(w: Arc<World>) {
    // A TLV claiming 100 bytes with 5 left in the header.
    let mut header = V2::from(ALLOWED_V4).tlv(0x04, *b"abcde").build();
    let at = 16 + 12 + 1;
    header[at..at + 2].copy_from_slice(&100u16.to_be_bytes());
    assert_header_refused(&w, None, &header, false, "tlv_overrun").await;
}

pub(crate) async fn proxy_v2_tlv_trailing_fragment(w: Arc<World>) {
    // Two bytes after the addresses: too short to be a TLV.
    let mut header = V2::from(ALLOWED_V4).build();
    header.extend_from_slice(&[0x04, 0x00]);
    let len = u16::try_from(header.len() - 16).unwrap();
    header[14..16].copy_from_slice(&len.to_be_bytes());
    assert_header_refused(&w, None, &header, false, "tlv_overrun").await;
}

pub(crate) async fn proxy_v2_crc_tlv_of_three_bytes(w: Arc<World>) {
    let header = V2::from(ALLOWED_V4).tlv(TLV_CRC32C, [1, 2, 3]).build();
    assert_header_refused(&w, None, &header, false, "crc32c_malformed").await;
}

pub(crate) async fn proxy_untrusted_sender_claiming_an_endpoint(w: Arc<World>) {
    // A perfectly valid header, with a matching CRC, naming an endpoint:
    // from an address outside `trusted_sources` it is refused before a
    // byte is read.
    let header = V2::from(ALLOWED_V4).aws_vpce(VPCE).crc(Crc::Good).build();
    let after = assert_header_refused(&w, Some(UNTRUSTED), &header, false, "untrusted").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v2_crc_header_flipped_to_local(w: Arc<World>) {
    // A header naming an endpoint, with a matching CRC, whose command
    // nibble is flipped from PROXY to LOCAL: taken as the balancer's own
    // connection it would lose the endpoint and be judged by the balancer's
    // address. The CRC covers the command byte, so it no longer matches.
    let mut header = V2::from(ALLOWED_V4).aws_vpce(VPCE).crc(Crc::Good).build();
    header[12] = 0x20;
    let after = assert_header_refused(&w, None, &header, false, "crc32c_mismatch").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_v2_local_with_a_bad_crc(w: Arc<World>) {
    // An NLB-shaped health check (LOCAL, UNSPEC, TLVs after the 16 fixed
    // bytes) whose CRC does not match.
    let header = V2::local().aws_vpce(VPCE).crc(Crc::Bad).build();
    let after = assert_header_refused(&w, None, &header, false, "crc32c_mismatch").await;
    assert_prompt(after);
}

/// After `header`, a LOCAL one (the balancer's own connection, such as a
/// health check), a GET to `open` is served with the TCP peer (127.0.0.1)
/// as the client, and reaches the backend once.
async fn assert_served_as_the_peer(w: &World, header: &[u8]) {
    let before = w.counters();
    let ex = h1(
        w,
        header,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            open_host()
        ),
        1,
    )
    .await;
    assert_eq!(ex.one(StatusCode::OK).echo().forwarded_for(), ["127.0.0.1"]);
    assert_eq!(before.backend_requests_since(w), 1);
}

pub(crate) async fn proxy_v2_local_with_a_good_crc_is_served_as_the_peer(w: Arc<World>) {
    // The same health check with a matching CRC is served, and its vendor
    // TLV is not read: the TCP peer is the client.
    let header = V2::local().aws_vpce(VPCE).crc(Crc::Good).build();
    assert_served_as_the_peer(&w, &header).await;
}

/// xorshift bytes, never starting with a PROXY signature byte.
pub(crate) fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    out[0] = 0x7f;
    out
}

pub(crate) async fn proxy_random_garbage(w: Arc<World>) {
    let after = assert_header_refused(&w, None, &garbage(64 * 1024, 7), false, "missing").await;
    assert_prompt(after);
}

pub(crate) async fn proxy_repeated_crlf(w: Arc<World>) {
    // Matches the v2 signature's first four bytes, then not.
    let bytes = b"\r\n\r\n".repeat(100);
    assert_header_refused(&w, None, &bytes, false, "missing").await;
}

pub(crate) async fn proxy_v2_local_with_any_family_is_served_as_the_peer(w: Arc<World>) {
    // LOCAL (a health check) ignores the family byte, per the spec; the
    // TCP peer is the client.
    let header = [&V2_SIGNATURE[..], &[0x20, 0xff, 0x00, 0x00]].concat();
    assert_served_as_the_peer(&w, &header).await;
}

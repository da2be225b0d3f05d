//! Tests for the pure parser: v1, signature detection and the properties
//! that hold across versions. Also the hand-written header builders (see
//! [`v2`]) shared with `v2_tests`, so that every field, broken ones included,
//! can be controlled.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::crc32c::crc32c;
use super::header::*;
use super::parse::parse;

pub(super) const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
pub(super) const PROXY: u8 = 0x21;
pub(super) const LOCAL: u8 = 0x20;
pub(super) const TCP4: u8 = 0x11;
pub(super) const TCP6: u8 = 0x21;
pub(super) const UNSPEC: u8 = 0x00;
pub(super) const UNIX: u8 = 0x31;
/// The start of a TLS 1.x ClientHello record.
pub(super) const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// Builds a v2 header: signature, `ver_cmd`, `fam`, length, `addrs`, TLVs.
pub(super) fn v2(ver_cmd: u8, fam: u8, addrs: &[u8], tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut payload = addrs.to_vec();
    for (kind, value) in tlvs {
        payload.push(*kind);
        payload.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        payload.extend_from_slice(value);
    }
    let mut out = SIG.to_vec();
    out.extend_from_slice(&[ver_cmd, fam]);
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Like [`v2`] with a trailing, correct CRC32C TLV.
pub(super) fn v2_crc(ver_cmd: u8, fam: u8, addrs: &[u8], tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut all = tlvs.to_vec();
    all.push((0x03, &[0; 4]));
    let mut out = v2(ver_cmd, fam, addrs, &all);
    let crc = crc32c(&[&out]).to_be_bytes();
    let at = out.len() - 4;
    out[at..].copy_from_slice(&crc);
    out
}

/// TCP4 address block 192.0.2.1:56324 -> 198.51.100.7:443.
pub(super) const ADDR4: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb];

pub(super) fn addr6() -> Vec<u8> {
    let mut a = "2001:db8::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    a.extend_from_slice(
        &"2001:db8::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    a.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
    a
}

pub(super) fn sa(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

pub(super) fn ok(buf: &[u8]) -> (ProxyHeader, usize) {
    match parse(buf, &Limits::default()) {
        Ok(Parsed::Complete { header, consumed }) => (header, consumed),
        other => panic!("expected Complete for {buf:?}, got {other:?}"),
    }
}

pub(super) fn err(buf: &[u8]) -> ParseError {
    match parse(buf, &Limits::default()) {
        Err(e) => e,
        other => panic!("expected an error for {buf:?}, got {other:?}"),
    }
}

#[test]
fn v1_tcp4() {
    let line = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
    let (h, consumed) = ok(line);
    assert_eq!(consumed, line.len());
    assert_eq!((h.version, h.command), (Version::V1, Command::Proxy));
    assert_eq!(h.source, sa("192.0.2.1:56324"));
    assert_eq!(h.destination, sa("198.51.100.7:443"));
    assert_eq!((h.endpoint, h.crc32c_verified), (None, false));
    assert_eq!(
        ok(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n")
            .0
            .source,
        sa("0.0.0.0:0")
    );
}

#[test]
fn v1_tcp6() {
    let (h, _) = ok(b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 1 65535\r\n");
    assert_eq!(h.source, sa("[2001:db8::1]:1"));
    assert_eq!(h.destination, sa("[::ffff:192.0.2.1]:65535"));
}

#[test]
fn v1_unknown() {
    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        b"PROXY UNKNOWN anything at all, even  double spaces\r\n",
    ] {
        let (h, consumed) = ok(line);
        assert_eq!(consumed, line.len());
        assert_eq!((h.source, h.destination), (None, None));
    }
}

#[test]
fn v1_length_limit() {
    // The spec's worst case is exactly V1_MAX_LEN bytes.
    let ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let longest = format!("PROXY UNKNOWN {ff} {ff} 65535 65535\r\n");
    assert_eq!(longest.len(), V1_MAX_LEN);
    assert_eq!(ok(longest.as_bytes()).1, V1_MAX_LEN);
    let tcp6 = format!("PROXY TCP6 {ff} {ff} 65535 65535\r\n");
    assert_eq!(
        ok(tcp6.as_bytes()).0.source,
        sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")
    );

    let pad = |n: usize| {
        let mut v = b"PROXY UNKNOWN ".to_vec();
        v.resize(n, b'x');
        v
    };
    // No CRLF in the first 107 bytes.
    assert_eq!(err(&pad(V1_MAX_LEN)), ParseError::V1TooLong);
    assert_eq!(err(&pad(500)), ParseError::V1TooLong);
    // CR as the 107th byte: the LF would be the 108th.
    let mut cr_last = pad(V1_MAX_LEN - 1);
    cr_last.extend_from_slice(b"\r\n");
    assert_eq!(err(&cr_last), ParseError::V1TooLong);
    assert_eq!(err(&cr_last[..V1_MAX_LEN]), ParseError::V1TooLong);
    // One byte short of the limit is still waiting.
    assert_eq!(
        parse(&pad(V1_MAX_LEN - 1), &Limits::default()),
        Ok(Parsed::Incomplete {
            total: None,
            max_total: V1_MAX_LEN
        })
    );
}

#[test]
fn v1_malformed() {
    let cases: &[&[u8]] = &[
        b"PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n", // double space
        b"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n", // double space after PROXY
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n", // trailing space
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",    // missing port
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n", // extra field
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 65536\r\n", // port out of range
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 99999\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 123456\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 2\r\n", // sign
        b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 01 2\r\n", // leading zero
        b"PROXY TCP4 192.0.2.1 198.51.100.7 0x1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1a 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n", // v6 under TCP4
        b"PROXY TCP6 2001:db8::1 198.51.100.7 1 2\r\n", // v4 under TCP6
        b"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n",  // octal-looking octet
        b"PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", // zone id
        b"PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n", // case
        b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n", // bare LF
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rX\n", // CR without LF
        b"PROXY UNKNOWN\n",
        b"PROXY \n",
    ];
    for case in cases {
        let e = err(case);
        assert_eq!(
            e.kind(),
            "v1_malformed",
            "{:?}: {e}",
            String::from_utf8_lossy(case)
        );
    }
}

#[test]
fn not_proxy() {
    let limits = Limits::default();
    for buf in [
        CLIENT_HELLO,
        b"GET / HTTP/1.1\r\n",
        b"PROXX",
        b"proxy ",
        b"PROXY\r\n",
        b"\r\n\r\n\0\r\nQUIT\r",
        b"\0",
    ] {
        assert_eq!(parse(buf, &limits), Ok(Parsed::NotProxy), "{buf:?}");
    }
    // The very first byte of a ClientHello is enough.
    assert_eq!(parse(&[0x16], &limits), Ok(Parsed::NotProxy));
    let wait = Ok(Parsed::Incomplete {
        total: None,
        max_total: 16,
    });
    for buf in [&b""[..], b"P", b"PROXY", b"\r", b"\r\n\r\n\0\r\nQUIT"] {
        assert_eq!(parse(buf, &limits), wait, "{buf:?}");
    }
}

#[test]
fn consumed_excludes_trailing_tls_bytes() {
    for header in [
        v2(PROXY, TCP4, &ADDR4, &[(0xEA, b"\x01vpce-0123")]),
        v2_crc(PROXY, TCP6, &addr6(), &[]),
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n".to_vec(),
    ] {
        let mut buf = header.clone();
        buf.extend_from_slice(CLIENT_HELLO);
        assert_eq!(ok(&buf).1, header.len());
        assert_eq!(ok(&buf).0, ok(&header).0);
    }
}

#[test]
fn every_split_is_incomplete_until_the_end() {
    let headers = [
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(LOCAL, UNSPEC, &[], &[]),
        v2(PROXY, TCP4, &ADDR4, &[]),
        v2_crc(
            PROXY,
            TCP6,
            &addr6(),
            &[(0xEA, b"\x01vpce-0a1b2c3d4e5f67890"), (0x01, b"h2")],
        ),
        v2(PROXY, UNIX, &[0; 216], &[(0xEE, &[0x01, 1, 2, 3, 4])]),
    ];
    let limits = Limits::default();
    for header in &headers {
        let want = ok(header);
        assert_eq!(want.1, header.len());
        for cut in 0..header.len() {
            let got = parse(&header[..cut], &limits);
            let Ok(Parsed::Incomplete { total, max_total }) = got else {
                panic!("prefix {cut} of {header:?}: {got:?}");
            };
            assert!(cut < max_total);
            if header.starts_with(SIG) && cut >= 16 {
                assert_eq!((total, max_total), (Some(header.len()), header.len()));
            } else {
                assert_eq!(total, None);
            }
        }
        let mut more = header.clone();
        more.extend_from_slice(CLIENT_HELLO);
        assert_eq!(ok(&more), want);
    }
}

#[test]
fn error_kinds_are_distinct_labels() {
    let all = [
        ParseError::V1Malformed("x"),
        ParseError::V1TooLong,
        ParseError::V2Version(1),
        ParseError::V2Command(2),
        ParseError::V2Family(0x12),
        ParseError::V2TooLong { len: 2, max: 1 },
        ParseError::V2TruncatedAddresses { len: 1, needed: 12 },
        ParseError::TlvOverrun,
        ParseError::TlvVendorMalformed {
            tlv: 0xEA,
            reason: "x",
        },
        ParseError::TlvDuplicate { tlv: 0xEA },
        ParseError::Crc32cMalformed { len: 3 },
        ParseError::Crc32cMismatch {
            expected: 1,
            computed: 2,
        },
    ];
    let mut kinds: Vec<_> = all.iter().map(ParseError::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), all.len());
    assert!(kinds.iter().all(|k| {
        k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }));
}

/// A v1 TCP line with any `N`-byte addresses and any ports.
fn v1_tcp<const N: usize, A>(family: &'static str) -> impl Strategy<Value = Vec<u8>>
where
    A: From<[u8; N]> + std::fmt::Display,
    [u8; N]: Arbitrary,
{
    (
        any::<[u8; N]>(),
        any::<[u8; N]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(move |(s, d, sp, dp)| {
            let (s, d) = (A::from(s), A::from(d));
            format!("PROXY {family} {s} {d} {sp} {dp}\r\n").into_bytes()
        })
}

/// Valid headers of every shape, for the property tests.
fn valid_header() -> impl Strategy<Value = Vec<u8>> {
    let v1 = prop_oneof![
        v1_tcp::<4, std::net::Ipv4Addr>("TCP4"),
        v1_tcp::<16, std::net::Ipv6Addr>("TCP6"),
        "[ -~]{0,90}".prop_map(|rest| format!("PROXY UNKNOWN {rest}\r\n").into_bytes()),
    ];
    let skippable = prop_oneof![
        Just(0x01u8),
        Just(0x02),
        Just(0x04),
        Just(0x05),
        Just(0x20),
        Just(0xE5),
        Just(0xF9)
    ];
    let tlvs = prop::collection::vec((skippable, prop::collection::vec(any::<u8>(), 0..40)), 0..4);
    let addrs = prop_oneof![
        Just((UNSPEC, vec![])),
        prop::collection::vec(any::<u8>(), 12).prop_map(|a| (TCP4, a)),
        prop::collection::vec(any::<u8>(), 36).prop_map(|a| (TCP6, a)),
        prop::collection::vec(any::<u8>(), 216).prop_map(|a| (UNIX, a)),
    ];
    let v2s = (any::<bool>(), addrs, tlvs, any::<bool>(), any::<u64>()).prop_map(
        |(local, (fam, a), tlvs, crc, id)| {
            let gcp = id.to_be_bytes();
            let mut all: Vec<(u8, &[u8])> = tlvs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            all.push((0xE0, &gcp));
            let cmd = if local { LOCAL } else { PROXY };
            if crc {
                v2_crc(cmd, fam, &a, &all)
            } else {
                v2(cmd, fam, &a, &all)
            }
        },
    );
    prop_oneof![v1, v2s]
}

proptest! {
    /// Never panics, and always honours the `Incomplete`/`Complete` contract.
    #[test]
    fn arbitrary_bytes_keep_the_contract(
        buf in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            // Valid signatures followed by garbage reach the deeper code.
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|t| [&SIG[..], &[0x21], &t].concat()),
            prop::collection::vec(any::<u8>(), 0..120).prop_map(|t| [&b"PROXY "[..], &t].concat()),
        ],
        cap in 0usize..2000,
    ) {
        let limits = Limits { v2_max_payload: cap };
        let full = parse(&buf, &limits);
        match full {
            Ok(Parsed::Incomplete { total, max_total }) => {
                prop_assert!(buf.len() < max_total);
                prop_assert!(total.is_none() || total == Some(max_total));
            }
            Ok(Parsed::Complete { consumed, .. }) => prop_assert!(consumed <= buf.len()),
            Ok(Parsed::NotProxy) | Err(_) => {}
        }
        // Decisions are final: a decided prefix gives the same answer.
        for cut in 0..=buf.len() {
            let early = parse(&buf[..cut], &limits);
            if !matches!(early, Ok(Parsed::Incomplete { .. })) {
                prop_assert_eq!(early, full, "cut {}", cut);
                break;
            }
        }
    }

    /// Every strict prefix of a valid header is `Incomplete`, and the header
    /// plus anything after it is `Complete` with exactly its length.
    #[test]
    fn prefixes_of_valid_headers_are_incomplete(header in valid_header(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let limits = Limits::default();
        for cut in 0..header.len() {
            let early = parse(&header[..cut], &limits);
            prop_assert!(matches!(early, Ok(Parsed::Incomplete { max_total, .. }) if cut < max_total), "cut {}: {:?}", cut, early);
        }
        let whole = [&header[..], &tail].concat();
        let parsed = parse(&whole, &limits);
        prop_assert!(matches!(parsed, Ok(Parsed::Complete { consumed, .. }) if consumed == header.len()), "{:?}", parsed);
    }
}

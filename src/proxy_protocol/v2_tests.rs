//! Tests for the v2 binary header: fixed fields, addresses and TLVs.

use super::crc32c::crc32c;
use super::header::*;
use super::parse::parse;
use super::parse_tests::*;
use crate::endpoint::{PrivateEndpoint, VpceId};

fn endpoint(tlvs: &[(u8, &[u8])]) -> Result<Option<PrivateEndpoint>, ParseError> {
    match parse(&v2(PROXY, TCP4, &ADDR4, tlvs), &Limits::default())? {
        Parsed::Complete { header, .. } => Ok(header.endpoint),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn v2_local() {
    let (h, consumed) = ok(&v2(LOCAL, UNSPEC, &[], &[]));
    assert_eq!(consumed, 16);
    assert_eq!(
        (h.version, h.command, h.source, h.endpoint),
        (Version::V2, Command::Local, None, None)
    );
    // The payload is skipped unread, whatever it is, and so is the family
    // ("the family which is ignored", spec 2.2).
    let h = ok(&v2(LOCAL, TCP4, &ADDR4, &[(0xEA, b"\x01vpce-1")])).0;
    assert_eq!(
        (h.command, h.source, h.endpoint),
        (Command::Local, None, None)
    );
    assert_eq!(ok(&v2(LOCAL, 0x12, &[0xff; 3], &[])).1, 19);
    assert_eq!(ok(&v2(LOCAL, TCP6, &[], &[])).1, 16);
    // The length cap still applies.
    let big = v2(LOCAL, UNSPEC, &[0; 1025], &[]);
    assert_eq!(err(&big[..16]).kind(), "v2_too_long");
}

#[test]
fn v2_tcp4_and_tcp6() {
    let (h, consumed) = ok(&v2(PROXY, TCP4, &ADDR4, &[]));
    assert_eq!(consumed, 28);
    assert_eq!((h.version, h.command), (Version::V2, Command::Proxy));
    assert_eq!(h.source, sa("192.0.2.1:56324"));
    assert_eq!(h.destination, sa("198.51.100.7:443"));
    let (h, consumed) = ok(&v2(PROXY, TCP6, &addr6(), &[]));
    assert_eq!(consumed, 52);
    assert_eq!(h.source, sa("[2001:db8::1]:12345"));
    assert_eq!(h.destination, sa("[2001:db8::2]:443"));
}

#[test]
fn v2_unspec_and_unix_have_no_address() {
    let h = ok(&v2(PROXY, UNSPEC, &[], &[])).0;
    assert_eq!((h.source, h.destination), (None, None));
    let h = ok(&v2(
        PROXY,
        UNIX,
        &[b'/'; 216],
        &[(0xE0, &7u64.to_be_bytes())],
    ))
    .0;
    assert_eq!((h.source, h.destination), (None, None));
    assert_eq!(h.endpoint, Some(PrivateEndpoint::GcpPscConnectionId(7)));
}

#[test]
fn v2_fixed_field_errors_are_early() {
    let hdr = v2(PROXY, TCP4, &ADDR4, &[]);
    let with = |i: usize, b: u8| {
        let mut h = hdr.clone();
        h[i] = b;
        h
    };
    // Decided as soon as the offending byte is in.
    assert_eq!(err(&with(12, 0x11)[..13]), ParseError::V2Version(1));
    assert_eq!(err(&with(12, 0x31)[..13]), ParseError::V2Version(3));
    assert_eq!(err(&with(12, 0x22)[..13]), ParseError::V2Command(2));
    for fam in [0x12, 0x22, 0x32, 0x01, 0x10, 0x41, 0xff] {
        assert_eq!(err(&with(13, fam)[..14]), ParseError::V2Family(fam));
    }
    assert_eq!(
        err(&v2(PROXY, TCP4, &ADDR4[..11], &[])).kind(),
        "v2_truncated_addresses"
    );
    assert_eq!(
        err(&v2(PROXY, TCP6, &addr6()[..35], &[])[..16]).kind(),
        "v2_truncated_addresses"
    );
    assert_eq!(
        err(&v2(PROXY, UNIX, &[0; 215], &[])[..16]).kind(),
        "v2_truncated_addresses"
    );
}

#[test]
fn v2_length_cap_is_decided_from_16_bytes() {
    let at_cap = v2(PROXY, TCP4, &ADDR4, &[(0x04, &[0; 1024 - 12 - 3])]);
    assert_eq!(ok(&at_cap).1, 16 + 1024);
    let over = v2(PROXY, TCP4, &ADDR4, &[(0x04, &[0; 1024 - 12 - 2])]);
    assert_eq!(
        err(&over[..16]),
        ParseError::V2TooLong {
            len: 1025,
            max: 1024
        }
    );
    let small = Limits { v2_max_payload: 12 };
    assert_eq!(
        parse(&v2(PROXY, TCP4, &ADDR4, &[]), &small).map(|p| matches!(p, Parsed::Complete { .. })),
        Ok(true)
    );
    assert!(matches!(
        parse(&v2(PROXY, TCP4, &ADDR4, &[(0x04, &[])])[..16], &small),
        Err(ParseError::V2TooLong { len: 15, max: 12 })
    ));
}

#[test]
fn aws_vpce_id_is_case_folded() {
    let got = endpoint(&[(0xEA, b"\x01VPCE-0A1b2C3d4E5f67890")]).unwrap();
    let want = VpceId::parse(b"vpce-0a1b2c3d4e5f67890").unwrap();
    assert_eq!(got, Some(PrivateEndpoint::AwsVpce(want)));
    assert_eq!(got.unwrap().to_string(), "aws-vpce:vpce-0a1b2c3d4e5f67890");
}

#[test]
fn azure_link_id_is_little_endian() {
    let got = endpoint(&[(0xEE, &[0x01, 0x55, 0x00, 0x00, 0x01])]);
    assert_eq!(got, Ok(Some(PrivateEndpoint::AzureLinkId(16_777_301))));
}

#[test]
fn gcp_psc_id_is_big_endian() {
    let got = endpoint(&[(0xE0, &[0xff, 0xff, 0xff, 0xff, 0xc0, 0xa8, 0x63, 0x94])]);
    assert_eq!(
        got,
        Ok(Some(PrivateEndpoint::GcpPscConnectionId(
            18_446_744_072_646_845_332
        )))
    );
}

#[test]
fn malformed_vendor_tlvs() {
    let long_id = [&[0x01][..], &[b'a'; 64]].concat();
    let cases: &[(u8, &[u8])] = &[
        (0xEA, b""),
        (0xEA, b"\x01"),
        (0xEA, b"\x02vpce-1"),
        (0xEA, b"\x01vpce 1"),
        (0xEA, b"\x01vpce-\xff"),
        (0xEA, &long_id),
        (0xEE, &[]),
        (0xEE, &[0x01, 0x55, 0x00, 0x00]),
        (0xEE, &[0x01, 0x55, 0x00, 0x00, 0x01, 0x00]),
        (0xEE, &[0x02, 0x55, 0x00, 0x00, 0x01]),
        (0xE0, &[0; 7]),
        (0xE0, &[0; 9]),
        (0xE0, &[]),
    ];
    for &(kind, value) in cases {
        let e = endpoint(&[(kind, value)]).unwrap_err();
        assert!(
            matches!(e, ParseError::TlvVendorMalformed { tlv, .. } if tlv == kind),
            "{kind:#x} {value:?}: {e}"
        );
        assert_eq!(e.kind(), "tlv_vendor_malformed");
    }
}

#[test]
fn duplicate_endpoint_tlvs_are_ambiguous() {
    let aws: (u8, &[u8]) = (0xEA, b"\x01vpce-1");
    let azure: (u8, &[u8]) = (0xEE, &[0x01, 1, 0, 0, 0]);
    let gcp: (u8, &[u8]) = (0xE0, &[0; 8]);
    for tlvs in [
        [aws, aws],
        [aws, azure],
        [azure, gcp],
        [gcp, gcp],
        [gcp, aws],
    ] {
        let e = endpoint(&tlvs).unwrap_err();
        assert_eq!(e, ParseError::TlvDuplicate { tlv: tlvs[1].0 });
        assert_eq!(e.kind(), "tlv_duplicate");
    }
}

#[test]
fn crc32c_tlv() {
    let good = v2_crc(PROXY, TCP4, &ADDR4, &[(0xEA, b"\x01vpce-1")]);
    let h = ok(&good).0;
    assert!(h.crc32c_verified);
    assert!(h.endpoint.is_some());
    assert!(ok(&v2_crc(PROXY, UNSPEC, &[], &[])).0.crc32c_verified);
    assert!(!ok(&v2(PROXY, TCP4, &ADDR4, &[])).0.crc32c_verified);

    // The CRC TLV need not be last: zero its field wherever it is.
    let mut first = v2(PROXY, TCP4, &ADDR4, &[(0x03, &[0; 4]), (0x04, b"pad")]);
    let crc = crc32c(&[&first]).to_be_bytes();
    first[31..35].copy_from_slice(&crc);
    assert!(ok(&first).0.crc32c_verified);

    // A flipped bit in the addresses, a TLV value or the CRC itself. Byte 31
    // is the AWS subtype: the corruption is reported as such, not as a
    // malformed vendor TLV, because the CRC is checked first.
    let n = good.len();
    for i in [16, 20, 27, 31, 33, n - 4, n - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert_eq!(err(&bad).kind(), "crc32c_mismatch", "byte {i}");
    }

    let two = v2(PROXY, TCP4, &ADDR4, &[(0x03, &[0; 4]), (0x03, &[0; 4])]);
    assert_eq!(err(&two), ParseError::TlvDuplicate { tlv: 0x03 });
    assert_eq!(
        err(&v2(PROXY, TCP4, &ADDR4, &[(0x03, &[0; 3])])),
        ParseError::Crc32cMalformed { len: 3 }
    );
}

#[test]
fn unknown_tlvs_are_skipped() {
    let skipped: &[(u8, &[u8])] = &[
        (0x01, b"h2"),
        (0x02, b"example.com"),
        (0x04, b""),
        (0x05, &[7; 128]),
        (0x20, &[0x01, 0, 0, 0, 0, 0x21, 0, 3, b'1', b'.', b'3']),
        (0x30, b"netns"),
        (0xE1, b"other vendor"),
        (0xEF, b""),
        (0xF0, b"x"),
        (0xFF, b"y"),
        (0x00, b""),
    ];
    let mut tlvs = skipped.to_vec();
    tlvs.insert(3, (0xEE, &[0x01, 0x55, 0x00, 0x00, 0x01]));
    let h = ok(&v2_crc(PROXY, TCP4, &ADDR4, &tlvs)).0;
    assert_eq!(h.endpoint, Some(PrivateEndpoint::AzureLinkId(16_777_301)));
    assert_eq!(endpoint(skipped), Ok(None));
}

#[test]
fn tlv_overrun() {
    let mut valid = v2(PROXY, TCP4, &ADDR4, &[(0x04, b"abcd")]);
    // TLV length one past the payload end (fix up the header length to match).
    valid[30] = 5;
    assert_eq!(err(&valid), ParseError::TlvOverrun);
    // Trailing fragments of 1 and 2 bytes after a valid TLV.
    for fragment in [&[0x04][..], &[0x04, 0x00]] {
        let mut buf = v2(PROXY, TCP4, &ADDR4, &[(0x04, b"")]);
        buf.extend_from_slice(fragment);
        let len = u16::try_from(buf.len() - 16).unwrap().to_be_bytes();
        buf[14..16].copy_from_slice(&len);
        assert_eq!(err(&buf), ParseError::TlvOverrun);
    }
}

// ---- LOCAL headers and their CRC32C TLV (issue 12, item 1)
//
// An AWS NLB health check is `LOCAL`, family UNSPEC, with its TLVs (CRC32C
// included) right after the 16 fixed bytes. A `PROXY` header whose command
// nibble flips to `LOCAL` must not slip through as "the balancer's own
// connection": its CRC covers byte 12, so it no longer matches.

fn local(buf: &[u8]) -> ProxyHeader {
    let (h, consumed) = ok(buf);
    assert_eq!(consumed, buf.len());
    assert_eq!(
        (h.command, h.source, h.destination, h.endpoint),
        (Command::Local, None, None, None),
        "LOCAL means the TCP peer is the client"
    );
    h
}

#[test]
fn v2_local_with_good_crc_is_accepted() {
    // The NLB shape: UNSPEC, TLVs from the first payload byte.
    assert!(local(&v2_crc(LOCAL, UNSPEC, &[], &[])).crc32c_verified);
    let nlb = v2_crc(LOCAL, UNSPEC, &[], &[(0x04, b"pad"), (0x05, b"id")]);
    assert!(local(&nlb).crc32c_verified);
    // A sender that fills the address block: TLVs after it.
    for (fam, addrs) in [
        (TCP4, ADDR4.to_vec()),
        (TCP6, addr6()),
        (UNIX, vec![b'/'; 216]),
    ] {
        let h = local(&v2_crc(LOCAL, fam, &addrs, &[(0x01, b"h2")]));
        assert!(h.crc32c_verified, "family {fam:#x}");
    }
    // HAProxy's reading (TLVs right after the fixed part whatever the
    // family): a TCP4 family byte with no address block, shorter and longer
    // than one.
    assert!(local(&v2_crc(LOCAL, TCP4, &[], &[])).crc32c_verified);
    let long = v2_crc(LOCAL, TCP4, &[], &[(0x04, &[0x03; 20])]);
    assert!(long.len() - 16 > 12);
    assert!(local(&long).crc32c_verified);
    // The CRC TLV need not be last.
    let mut first = v2(LOCAL, UNSPEC, &[], &[(0x03, &[0; 4]), (0x04, b"pad")]);
    let crc = crc32c(&[&first]).to_be_bytes();
    first[19..23].copy_from_slice(&crc);
    assert!(local(&first).crc32c_verified);
}

#[test]
fn v2_local_with_bad_crc_is_refused() {
    let good = v2_crc(LOCAL, UNSPEC, &[], &[(0x04, b"pad")]);
    let n = good.len();
    // The family byte, a TLV value, the CRC itself.
    for i in [13, 19, n - 4, n - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let e = err(&bad);
        assert!(
            matches!(e, ParseError::Crc32cMismatch { .. }),
            "byte {i}: {e}"
        );
        assert_eq!(e.kind(), "crc32c_mismatch");
    }
    // After an address block, too.
    let mut bad = v2_crc(LOCAL, TCP4, &ADDR4, &[]);
    bad[17] ^= 0x80;
    assert_eq!(err(&bad).kind(), "crc32c_mismatch");
    // A CRC TLV that cannot be checked is refused as for PROXY.
    assert_eq!(
        err(&v2(LOCAL, UNSPEC, &[], &[(0x03, &[0; 3])])),
        ParseError::Crc32cMalformed { len: 3 }
    );
    assert_eq!(
        err(&v2(LOCAL, UNSPEC, &[], &[(0x03, &[0; 4]), (0x03, &[0; 4])])),
        ParseError::TlvDuplicate { tlv: 0x03 }
    );
}

#[test]
fn v2_proxy_with_crc_flipped_to_local_is_refused() {
    let aws: (u8, &[u8]) = (0xEA, b"\x01vpce-0a1b2c3d4e5f67890");
    for (fam, addrs) in [
        (TCP4, ADDR4.to_vec()),
        (TCP6, addr6()),
        (UNSPEC, vec![]),
        (UNIX, vec![0; 216]),
    ] {
        let mut flipped = v2_crc(PROXY, fam, &addrs, &[aws]);
        assert!(ok(&flipped).0.crc32c_verified);
        flipped[12] = LOCAL;
        let e = err(&flipped);
        assert!(
            matches!(e, ParseError::Crc32cMismatch { .. }),
            "family {fam:#x}: {e}"
        );
        assert_eq!(e.kind(), "crc32c_mismatch");
    }
}

#[test]
fn v2_local_without_tlvs_is_accepted() {
    for header in [
        v2(LOCAL, UNSPEC, &[], &[]),
        v2(LOCAL, TCP4, &[], &[]),
        v2(LOCAL, TCP6, &[], &[]),
        v2(LOCAL, 0xff, &[], &[]),
        v2(LOCAL, TCP4, &ADDR4, &[]),
        v2(LOCAL, TCP6, &addr6(), &[]),
        v2(LOCAL, UNIX, &[0; 216], &[]),
        // Not a TLV area anywhere: the block is discarded unread.
        v2(LOCAL, 0x12, &[0xff; 3], &[]),
        v2(LOCAL, TCP4, &[0x03; 7], &[]),
    ] {
        assert!(!local(&header).crc32c_verified, "{header:?}");
    }
    // TLVs without a CRC32C, where either reading finds them.
    let h = local(&v2(LOCAL, UNSPEC, &[], &[(0x04, b"pad")]));
    assert!(!h.crc32c_verified);
    let h = local(&v2(LOCAL, TCP4, &ADDR4, &[(0x01, b"h2")]));
    assert!(!h.crc32c_verified);
}

#[test]
fn v2_local_with_aws_vpce_still_has_no_endpoint() {
    let aws: (u8, &[u8]) = (0xEA, b"\x01vpce-0a1b2c3d4e5f67890");
    for header in [
        v2_crc(LOCAL, UNSPEC, &[], &[aws]),
        v2_crc(LOCAL, TCP4, &ADDR4, &[aws]),
        v2_crc(LOCAL, TCP6, &addr6(), &[aws]),
    ] {
        assert!(local(&header).crc32c_verified);
    }
    for header in [
        v2(LOCAL, UNSPEC, &[], &[aws]),
        v2(LOCAL, TCP4, &ADDR4, &[aws]),
        // Vendor TLVs are not interpreted for LOCAL: not even a broken one.
        v2(LOCAL, UNSPEC, &[], &[(0xEA, b"\x02x")]),
        v2(LOCAL, UNSPEC, &[], &[aws, (0xE0, &[0; 8])]),
    ] {
        assert!(!local(&header).crc32c_verified);
    }
}

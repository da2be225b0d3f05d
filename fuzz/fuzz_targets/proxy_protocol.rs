//! Fuzz target: the PROXY protocol parser, `proxy_protocol::parse`.
//!
//! Beyond "never panics", it checks the contract in the parser's module docs
//! on every input, cheaply (a bounded number of re-parses of prefixes):
//!
//! - `Complete { consumed }`: `consumed <= buf.len()`, and parsing exactly
//!   `&buf[..consumed]` gives the same header (no byte after the header
//!   was looked at). A v2 header is `16 + len` bytes; a v1 line ends in CRLF
//!   within `V1_MAX_LEN`.
//! - `Incomplete { total, max_total }`: `buf.len() < max_total`, and
//!   `total`, when known, equals `max_total`.
//! - Decisions are final: every prefix of the input is either `Incomplete`
//!   or gives exactly the answer the whole input gives; in particular a
//!   prefix that starts with a PROXY signature and is `Incomplete` is never
//!   followed by `NotProxy`.
//! - No over-read: a reader that never reads past `max_total` reaches the
//!   same decision as one that has every byte. On a v2 stream no prefix
//!   allows reading past the header (the TLS ClientHello behind it stays
//!   on the socket); v1 has no length field, so a reader may run ahead of
//!   the line, but never past `V1_MAX_LEN` bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy_protocol::{Limits, ParseError, Parsed, V1_MAX_LEN, Version, parse};
use portcullis_test_kit::proxy::{V1_SIGNATURE, V2_SIGNATURE};
const V2_FIXED_LEN: usize = 16;
/// Every prefix up to this length is re-parsed (covers both signatures, the
/// v2 fixed fields and a whole v1 line); longer inputs are sampled at the
/// lengths the parser itself names.
const ALL_PREFIXES_UP_TO: usize = V1_MAX_LEN + 21;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let full = parse(data, &limits);
    check_contract(data, &full);

    if let Ok(Parsed::Complete { header, consumed }) = full {
        let again = parse(&data[..consumed], &limits);
        assert_eq!(
            again,
            Ok(Parsed::Complete { header, consumed }),
            "re-parsing the {consumed}-byte header alone changed the answer"
        );
        match header.version {
            Version::V1 => {
                assert!(consumed <= V1_MAX_LEN, "v1 line of {consumed} bytes");
                assert_eq!(
                    &data[consumed - 2..consumed],
                    b"\r\n",
                    "v1 line without CRLF"
                );
            }
            Version::V2 => {
                let len = usize::from(u16::from_be_bytes([data[14], data[15]]));
                assert_eq!(consumed, V2_FIXED_LEN + len, "v2 consumed != 16 + len");
            }
        }
    }

    // Prefix lengths to check: all short ones, then the lengths a reader
    // following `max_total` would stop at, and their neighbours.
    let mut lens: Vec<usize> = (0..=data.len().min(ALL_PREFIXES_UP_TO)).collect();
    let mut reader_len = 0;
    loop {
        match parse(&data[..reader_len], &limits) {
            Ok(Parsed::Incomplete { max_total, .. }) if max_total.min(data.len()) > reader_len => {
                reader_len = max_total.min(data.len());
                lens.extend([reader_len - 1, reader_len]);
            }
            _ => break,
        }
    }
    if let Ok(Parsed::Complete { consumed, .. }) = full {
        lens.extend([consumed - 1, consumed]);
    }

    for &n in &lens {
        let prefix = &data[..n];
        let got = parse(prefix, &limits);
        check_contract(prefix, &got);
        match got {
            Ok(Parsed::Incomplete { max_total, .. }) => {
                let signed = prefix.starts_with(V1_SIGNATURE) || prefix.starts_with(V2_SIGNATURE);
                assert!(
                    !(signed && full == Ok(Parsed::NotProxy)),
                    "{n}-byte prefix with a PROXY signature was Incomplete, the whole input NotProxy"
                );
                // `max_total` is how far the reader may go *now*, not the
                // header length: before the version is known it is 16 even
                // for a 50-byte v1 line. What must hold is that following
                // it never takes bytes that belong to the application.
                if let Ok(Parsed::Complete { header, consumed }) = full {
                    let bound = match header.version {
                        Version::V2 => consumed,
                        Version::V1 => V1_MAX_LEN,
                    };
                    assert!(
                        max_total <= bound,
                        "{n}-byte prefix allowed reading to {max_total}, past the {:?} bound {bound} \
                         (header is {consumed} bytes)",
                        header.version
                    );
                }
            }
            // A final answer on a prefix must be the answer on everything.
            decided => assert_eq!(
                decided,
                full,
                "{n}-byte prefix decided {decided:?}, the whole {}-byte input {full:?}",
                data.len()
            ),
        }
    }
});

fn check_contract(buf: &[u8], got: &Result<Parsed, ParseError>) {
    match *got {
        Ok(Parsed::Incomplete { total, max_total }) => {
            assert!(
                buf.len() < max_total,
                "Incomplete on {} bytes with max_total {max_total}",
                buf.len()
            );
            if let Some(total) = total {
                assert_eq!(total, max_total, "total known but != max_total");
            }
        }
        Ok(Parsed::Complete { consumed, .. }) => {
            assert!(consumed <= buf.len(), "consumed {consumed} > {}", buf.len());
            assert!(consumed > 0, "empty header");
        }
        Ok(Parsed::NotProxy) => {
            assert!(
                !buf.starts_with(V1_SIGNATURE) && !buf.starts_with(V2_SIGNATURE),
                "NotProxy despite a PROXY signature"
            );
        }
        Err(_) => {
            assert!(
                buf.starts_with(V1_SIGNATURE) || buf.starts_with(V2_SIGNATURE),
                "an error for bytes without a PROXY signature"
            );
        }
    }
}

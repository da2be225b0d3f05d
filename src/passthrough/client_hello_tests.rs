//! ClientHello reader: real ClientHellos written by rustls, hand-built
//! edge cases, and hostile inputs.

use std::sync::Arc;

use super::*;

/// The first flight of a rustls client for `name` (a DNS name, or an IP
/// address, for which rustls sends no SNI).
fn rustls_hello(name: &str, sni: bool) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    config.enable_sni = sni;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), server_name).expect("client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// A ClientHello record with the given extensions, built by hand.
fn synthetic(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    let mut exts = Vec::new();
    for (kind, data) in extensions {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&u16::try_from(data.len()).expect("small").to_be_bytes());
        exts.extend_from_slice(data);
    }
    body.extend_from_slice(&u16::try_from(exts.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&exts);
    record(&handshake(&body))
}

fn handshake(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("small").to_be_bytes();
    let mut out = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
    out.extend_from_slice(body);
    out
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![CONTENT_HANDSHAKE, 3, 1];
    out.extend_from_slice(&u16::try_from(payload.len()).expect("small").to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `server_name` extension data listing `(type, name)` entries.
fn server_names(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&u16::try_from(name.len()).expect("small").to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut out = u16::try_from(list.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&list);
    out
}

fn sni_of(bytes: &[u8]) -> Result<Parsed<'_>, ClientHelloError> {
    parse(bytes)
}

#[test]
fn reads_the_sni_of_a_real_rustls_client_hello() {
    for name in ["abc123.es.example.com", "My-Alias.ES.example.com", "x.y"] {
        let hello = rustls_hello(name, true);
        assert_eq!(
            parse(&hello),
            Ok(Parsed::Complete { sni: Some(name) }),
            "{name}"
        );
    }
}

#[test]
fn a_real_client_hello_without_sni_is_complete_with_none() {
    assert_eq!(
        parse(&rustls_hello("abc.es.example.com", false)),
        Ok(Parsed::Complete { sni: None })
    );
    // rustls never sends an IP address as SNI.
    assert_eq!(
        parse(&rustls_hello("10.0.0.1", true)),
        Ok(Parsed::Complete { sni: None })
    );
}

#[test]
fn every_strict_prefix_is_incomplete_within_the_record() {
    let hello = rustls_hello("abc123.es.example.com", true);
    for n in 0..hello.len() {
        match parse(&hello[..n]) {
            Ok(Parsed::Incomplete { total }) => {
                assert!(
                    total > n && total <= hello.len(),
                    "prefix {n}: total {total}"
                );
            }
            other => panic!("prefix {n}: {other:?}"),
        }
    }
}

#[test]
fn bytes_after_the_record_are_ignored() {
    let mut hello = rustls_hello("abc.es.example.com", true);
    hello.extend_from_slice(b"\x17\x03\x03 more records follow");
    assert_eq!(
        parse(&hello),
        Ok(Parsed::Complete {
            sni: Some("abc.es.example.com")
        })
    );
}

#[test]
fn synthetic_hellos_with_and_without_extensions() {
    let sni = synthetic(&[
        (10, vec![0, 2, 0, 29]),
        (0, server_names(&[(0, b"abc.es.test")])),
        (16, vec![0, 3, 2, b'h', b'2']),
    ]);
    assert_eq!(
        parse(&sni),
        Ok(Parsed::Complete {
            sni: Some("abc.es.test")
        })
    );
    assert_eq!(parse(&synthetic(&[])), Ok(Parsed::Complete { sni: None }));
    // No extensions block at all.
    let mut body = vec![3, 1];
    body.extend_from_slice(&[0; 32]);
    body.extend_from_slice(&[0, 0, 2, 0, 0x2f, 1, 0]);
    assert_eq!(
        parse(&record(&handshake(&body))),
        Ok(Parsed::Complete { sni: None })
    );
    // Another name type first; the host_name entry still counts.
    let other_first = synthetic(&[(0, server_names(&[(7, b"x"), (0, b"abc.es.test")]))]);
    assert_eq!(
        parse(&other_first),
        Ok(Parsed::Complete {
            sni: Some("abc.es.test")
        })
    );
}

#[test]
fn non_tls_and_wrong_records_are_refused_from_the_first_bytes() {
    assert_eq!(sni_of(b"G"), Err(ClientHelloError::NotHandshake));
    assert_eq!(
        sni_of(b"GET / HTTP/1.1\r\n"),
        Err(ClientHelloError::NotHandshake)
    );
    assert_eq!(sni_of(b"PROXY TCP4 "), Err(ClientHelloError::NotHandshake));
    assert_eq!(
        sni_of(&[0x17, 3, 3, 0, 5]),
        Err(ClientHelloError::NotHandshake)
    );
    assert_eq!(sni_of(&[22, 2]), Err(ClientHelloError::RecordVersion));
    assert_eq!(
        sni_of(&[22, 3, 1, 0x40, 1]),
        Err(ClientHelloError::RecordTooLong)
    );
    assert_eq!(
        sni_of(&[22, 3, 1, 0, 3]),
        Err(ClientHelloError::Malformed("record too short"))
    );
    // A ServerHello (type 2) is not a ClientHello.
    assert_eq!(
        sni_of(&[22, 3, 3, 0, 40, 2]),
        Err(ClientHelloError::NotClientHello)
    );
    assert_eq!(sni_of(&[]), Ok(Parsed::Incomplete { total: 5 }));
    assert_eq!(sni_of(&[22, 3]), Ok(Parsed::Incomplete { total: 5 }));
}

#[test]
fn a_client_hello_split_across_records_is_refused_as_fragmented() {
    let hello = rustls_hello("abc.es.example.com", true);
    let payload = &hello[RECORD_HEADER_LEN..];
    let (first, second) = payload.split_at(100);
    let mut split = record(first);
    split.extend_from_slice(&record(second));
    assert_eq!(parse(&split), Err(ClientHelloError::Fragmented));
    // Decided as soon as the handshake header is in.
    assert_eq!(parse(&split[..9]), Err(ClientHelloError::Fragmented));
}

#[test]
fn malformed_server_names_are_refused() {
    let cases: [(&str, Vec<u8>); 6] = [
        ("twice", {
            let e = server_names(&[(0, b"a.es.test")]);
            synthetic(&[(0, e.clone()), (0, e)])
        }),
        (
            "two host names",
            synthetic(&[(0, server_names(&[(0, b"a.es.test"), (0, b"b.es.test")]))]),
        ),
        (
            "non-ASCII",
            synthetic(&[(0, server_names(&[(0, "é.es.test".as_bytes())]))]),
        ),
        (
            "NUL",
            synthetic(&[(0, server_names(&[(0, b"a\0.es.test")]))]),
        ),
        ("empty name", synthetic(&[(0, server_names(&[(0, b"")]))])),
        ("empty list", synthetic(&[(0, vec![0, 0])])),
    ];
    for (what, hello) in cases {
        assert!(
            matches!(parse(&hello), Err(ClientHelloError::Malformed(_))),
            "{what}: {:?}",
            parse(&hello)
        );
    }
    let long = vec![b'a'; 256];
    assert!(matches!(
        parse(&synthetic(&[(0, server_names(&[(0, &long)]))])),
        Err(ClientHelloError::Malformed(_))
    ));
}

#[test]
fn lengths_that_overrun_their_container_are_malformed_not_panics() {
    let hello = rustls_hello("abc123.es.example.com", true);
    // Every single-byte corruption, with every value class that changes
    // lengths: nothing panics, and any name found is in the input.
    for i in 0..hello.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut bad = hello.clone();
            bad[i] = v;
            if let Ok(Parsed::Complete { sni: Some(name) }) = parse(&bad) {
                assert!(
                    bad.windows(name.len()).any(|w| w == name.as_bytes()),
                    "byte {i} = {v}"
                );
            }
        }
    }
    // Extension length pointing past the end.
    let mut bad = synthetic(&[(0, server_names(&[(0, b"a.es.test")]))]);
    let n = bad.len();
    bad[n - 13] = 0xff;
    assert!(matches!(parse(&bad), Err(ClientHelloError::Malformed(_))));
}

#[test]
fn the_largest_possible_record_is_read_in_full() {
    // Padding to fill one 2^14-byte record.
    let base = synthetic(&[(0, server_names(&[(0, b"abc.es.test")]))]);
    let pad = MAX_CLIENT_HELLO_BYTES - base.len() - 4;
    let hello = synthetic(&[
        (0, server_names(&[(0, b"abc.es.test")])),
        (21, vec![0; pad]),
    ]);
    assert_eq!(hello.len(), MAX_CLIENT_HELLO_BYTES);
    assert_eq!(
        parse(&hello),
        Ok(Parsed::Complete {
            sni: Some("abc.es.test")
        })
    );
    assert_eq!(
        parse(&hello[..100]),
        Ok(Parsed::Incomplete {
            total: MAX_CLIENT_HELLO_BYTES
        })
    );
}

#[test]
fn the_committed_fuzz_seeds_parse_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_hello");
    let read =
        |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("seed {name}: {e}"));
    assert_eq!(
        parse(&read("sni")),
        Ok(Parsed::Complete {
            sni: Some("abc123.es.example.com")
        })
    );
    for name in ["no_sni", "no_extensions"] {
        assert_eq!(
            parse(&read(name)),
            Ok(Parsed::Complete { sni: None }),
            "{name}"
        );
    }
    for name in ["bad_sni_twice", "bad_not_tls"] {
        assert!(parse(&read(name)).is_err(), "{name}");
    }
    assert!(matches!(
        parse(&read("truncated")),
        Ok(Parsed::Incomplete { .. })
    ));
}

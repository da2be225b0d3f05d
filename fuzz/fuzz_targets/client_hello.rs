//! Fuzz target: the remote-cluster listener's ClientHello reader,
//! `passthrough::client_hello::parse`.
//!
//! Beyond "never panics", it checks the promises in the reader's module
//! docs on every input, cheaply (a bounded number of re-parses of
//! prefixes):
//!
//! - A server name returned is a slice of the input (its bytes lie inside
//!   `data`: what the backend sees when the ClientHello is replayed), is
//!   non-empty printable ASCII, and at most 255 bytes.
//! - Bounded: `Incomplete { total }` asks for more than it has, and never
//!   for more than one TLS record (`MAX_CLIENT_HELLO_BYTES`).
//! - Decisions are final: a prefix that is refused is refused the same way
//!   with every byte present; a prefix that is complete gives the same
//!   answer as the whole input (nothing past the record is looked at); a
//!   prefix that is incomplete asks for at most what the whole input's
//!   answer needed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::passthrough::client_hello::{MAX_CLIENT_HELLO_BYTES, Parsed, parse};

/// Every prefix up to this length is re-parsed (the record header, the
/// handshake header and the start of the ClientHello body); longer inputs
/// are sampled at the lengths the reader itself names.
const ALL_PREFIXES_UP_TO: usize = 64;

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    match full {
        Ok(Parsed::Complete { sni: Some(name) }) => {
            let input = data.as_ptr_range();
            let got = name.as_bytes().as_ptr_range();
            assert!(
                input.start <= got.start && got.end <= input.end,
                "the server name is not a slice of the input"
            );
            assert!(!name.is_empty() && name.len() <= 255, "name length {}", name.len());
            assert!(
                name.bytes().all(|b| b.is_ascii_graphic()),
                "name is not printable ASCII: {name:?}"
            );
        }
        Ok(Parsed::Complete { sni: None }) | Err(_) => {}
        Ok(Parsed::Incomplete { total }) => {
            assert!(total > data.len(), "asks for {total} with {} bytes", data.len());
            assert!(total <= MAX_CLIENT_HELLO_BYTES, "asks for {total}");
        }
    }

    let mut lengths: Vec<usize> = (0..data.len().min(ALL_PREFIXES_UP_TO)).collect();
    // The record boundary and its neighbours, where the answer changes.
    if let Some(header) = data.get(..5) {
        let record = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        for n in [record.saturating_sub(1), record, record + 1, data.len() / 2] {
            if n < data.len() {
                lengths.push(n);
            }
        }
    }
    for n in lengths {
        let prefix = &data[..n];
        match parse(prefix) {
            Err(e) => assert_eq!(full, Err(e), "prefix {n} refused, whole input not so"),
            Ok(Parsed::Complete { sni }) => assert_eq!(
                full,
                Ok(Parsed::Complete { sni }),
                "prefix {n} complete, whole input different"
            ),
            Ok(Parsed::Incomplete { total }) => {
                assert!(total > n, "prefix {n} asks for only {total}");
                if let Ok(Parsed::Incomplete { total: whole }) = full {
                    assert!(total <= whole, "prefix {n} asks for {total}, whole for {whole}");
                }
            }
        }
    }
});

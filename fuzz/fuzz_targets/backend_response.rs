//! Fuzz target, differential: a backend's response bytes read by
//! portcullis's own HTTP/1.1 client (`forward::client::head` and
//! `forward::client::chunked`, the framing `conn::Reading` applies) and by
//! hyper's client, which portcullis used before.
//!
//! Input: the first byte picks the request method (GET or HEAD, which
//! changes the framing); the rest is everything the backend sends before
//! it closes the connection.
//!
//! Checks, beyond "never panics":
//! - When both read a complete response, they agree on its status, its
//!   reason phrase (when not the canonical one), its header fields and
//!   its body, byte for byte: the two clients cannot be
//!   told apart by a backend that both accept.
//! - portcullis never reads a complete response where hyper finds the
//!   bytes malformed (a parse or framing error, as opposed to the stream
//!   ending early): ours may be stricter than hyper, never laxer.

#![no_main]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use portcullis::forward::client::chunked::{Chunked, Decoded};
use portcullis::forward::client::head::{BodyLength, parse_response};
use tokio::io::AsyncWriteExt;

/// How a client read the bytes.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A whole response: status, a reason phrase of its own, header
    /// fields in order, body.
    Complete(StatusCode, Option<Vec<u8>>, Vec<(String, Vec<u8>)>, Vec<u8>),
    /// The bytes are not a valid response (head or body framing).
    Malformed,
    /// The stream ended before the response did.
    Cut,
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, wire)) = input.split_first() else {
        return;
    };
    let method = if pick & 1 == 0 {
        Method::GET
    } else {
        Method::HEAD
    };
    let ours = ours(wire, &method);
    let theirs = hyper_reads(wire, &method);
    match (&ours, &theirs) {
        (Read::Complete(..), Read::Complete(..)) => {
            assert_eq!(ours, theirs, "the two clients read different responses")
        }
        (Read::Complete(..), Read::Malformed) => {
            panic!("portcullis accepted a response hyper refuses: {ours:?}")
        }
        _ => {}
    }
});

/// Reads `wire` as portcullis's client does.
fn ours(wire: &[u8], method: &Method) -> Read {
    let mut buf = BytesMut::from(wire);
    let mut map = HeaderMap::new();
    let mut fields = Vec::new();
    let head = match parse_response(&mut buf, method, &mut map, &mut fields) {
        Ok(Some(head)) => head,
        Ok(None) => return Read::Cut,
        Err(_) => return Read::Malformed,
    };
    let body = match head.length {
        BodyLength::Empty => Vec::new(),
        BodyLength::Exact(n) => match usize::try_from(n) {
            Ok(n) if n <= buf.len() => buf.split_to(n).to_vec(),
            _ => return Read::Cut,
        },
        BodyLength::UntilClose => buf.to_vec(),
        BodyLength::Chunked => {
            let mut decoder = Chunked::new();
            let mut body = Vec::new();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Decoded::Data(data))) => body.extend_from_slice(&data),
                    Ok(Some(Decoded::End)) => break body,
                    Ok(None) => return Read::Cut,
                    Err(_) => return Read::Malformed,
                }
            }
        }
    };
    Read::Complete(
        head.status,
        head.reason.map(|r| r.to_vec()),
        listed(&head.headers),
        body,
    )
}

/// Reads `wire` with hyper's HTTP/1.1 client over an in-memory stream
/// that ends after it.
fn hyper_reads(wire: &[u8], method: &Method) -> Read {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return Read::Cut;
    };
    runtime.block_on(async {
        let (client, mut server) = tokio::io::duplex(wire.len() + 1024);
        let wire = Bytes::copy_from_slice(wire);
        tokio::spawn(async move {
            // The request is read and thrown away; the backend's bytes go
            // back whatever it was, then the stream ends.
            let _ = server.write_all(&wire).await;
            let _ = server.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut server, &mut sink).await;
        });
        let Ok((mut send, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client)).await
        else {
            return Read::Cut;
        };
        let driven = tokio::spawn(conn);
        let Ok(request) = http::Request::builder()
            .method(method.clone())
            .uri("/")
            .header("host", "backend")
            .body(Empty::new())
        else {
            return Read::Cut;
        };
        let reading = async {
            let response = match send.send_request(request).await {
                Ok(response) => response,
                Err(e) if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() => {
                    return Read::Malformed;
                }
                Err(_) => return Read::Cut,
            };
            let (head, body) = response.into_parts();
            let reason = head
                .extensions
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes().to_vec());
            match body.collect().await {
                Ok(body) => Read::Complete(
                    head.status,
                    reason,
                    listed(&head.headers),
                    body.to_bytes().to_vec(),
                ),
                Err(e) if e.is_parse() => Read::Malformed,
                Err(_) => Read::Cut,
            }
        };
        let read = tokio::time::timeout(Duration::from_secs(5), reading)
            .await
            .unwrap_or(Read::Cut);
        driven.abort();
        read
    })
}

fn listed(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

//! Tests for the async reader, over `tokio::io::duplex` pipes and a real
//! loopback socket.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};

use super::header::{Command, ParseError};
use super::read::*;
use crate::endpoint::PrivateEndpoint;

const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03];
const V1: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
const LB: &str = "10.0.0.5:40000";
const STRANGER: &str = "203.0.113.9:40000";

/// v2 PROXY TCP4 192.0.2.1:56324 -> 198.51.100.7:443 with an Azure TLV.
fn v2_azure() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x14".to_vec();
    h.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb]);
    h.extend_from_slice(&[0xEE, 0x00, 0x05, 0x01, 0x55, 0x00, 0x00, 0x01]);
    h
}

fn settings(mode: Mode) -> Settings {
    Settings::new(
        mode,
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A pipe whose client side has already sent `bytes` and then closed.
async fn sent(bytes: &[u8]) -> DuplexStream {
    let (mut client, server) = duplex(4096);
    client.write_all(bytes).await.unwrap();
    drop(client);
    server
}

/// Reads the header from a pipe that has sent `bytes`, as `peer` with the
/// standard trusted networks; the pipe comes back for what follows.
async fn read(bytes: &[u8], peer: &str, mode: Mode) -> (Result<Accepted, ReadError>, DuplexStream) {
    let mut server = sent(bytes).await;
    let read = read_header(&mut server, addr(peer), &settings(mode)).await;
    (read, server)
}

/// Everything left in the stream after `prefix`, replayed through `Prefixed`.
async fn rest(prefix: Bytes, server: DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    Prefixed::new(prefix, server)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn required_v2_reads_exactly_the_header() {
    let header = v2_azure();
    let (acc, server) = read(&[&header[..], CLIENT_HELLO].concat(), LB, Mode::Required).await;
    let acc = acc.unwrap();
    assert_eq!(acc.client.source, ip("192.0.2.1"));
    assert_eq!(
        acc.client.endpoint,
        Some(PrivateEndpoint::AzureLinkId(16_777_301))
    );
    assert_eq!(acc.header.unwrap().command, Command::Proxy);
    // v2 announces its length: nothing past the header was read.
    assert!(acc.prefix.is_empty());
    assert_eq!(rest(acc.prefix, server).await, CLIENT_HELLO);
}

#[tokio::test]
async fn required_v1_hands_read_ahead_bytes_back() {
    let (acc, server) = read(&[V1, CLIENT_HELLO].concat(), LB, Mode::Required).await;
    let acc = acc.unwrap();
    assert_eq!(acc.client.source, ip("192.0.2.1"));
    assert_eq!(acc.client.endpoint, None);
    assert_eq!(&acc.prefix[..], CLIENT_HELLO);
    assert_eq!(rest(acc.prefix, server).await, CLIENT_HELLO);
}

#[tokio::test]
async fn required_untrusted_peer_is_refused_before_reading() {
    let stream = [&v2_azure()[..], CLIENT_HELLO].concat();
    let (e, server) = read(&stream, STRANGER, Mode::Required).await;
    let e = e.unwrap_err();
    assert!(
        matches!(e, ReadError::Untrusted { peer } if peer == ip("203.0.113.9")),
        "{e}"
    );
    assert_eq!(e.kind(), "untrusted");
    // Not a single byte was consumed.
    assert_eq!(rest(Bytes::new(), server).await, stream);
}

#[tokio::test]
async fn required_without_header_is_missing() {
    let (e, _) = read(CLIENT_HELLO, LB, Mode::Required).await;
    let e = e.unwrap_err();
    assert!(matches!(e, ReadError::Missing));
    assert_eq!(e.kind(), "missing");
}

#[tokio::test]
async fn parse_errors_surface_with_their_kind() {
    let (e, _) = read(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        LB,
        Mode::Required,
    )
    .await;
    let e = e.unwrap_err();
    assert!(matches!(e, ReadError::Parse(ParseError::V1Malformed(_))));
    assert_eq!(e.kind(), "v1_malformed");
    let mut too_long = v2_azure();
    too_long[14..16].copy_from_slice(&[0x04, 0x01]);
    let (e, _) = read(&too_long[..16], LB, Mode::Required).await;
    let e = e.unwrap_err();
    assert_eq!(e.kind(), "v2_too_long");
}

#[tokio::test]
async fn lenient_without_header_replays_everything() {
    for peer in [LB, STRANGER] {
        let (acc, server) = read(CLIENT_HELLO, peer, Mode::Lenient).await;
        let acc = acc.unwrap();
        assert_eq!(acc.client.source, addr(peer).ip());
        assert_eq!(acc.header, None);
        assert!(!acc.prefix.is_empty());
        assert_eq!(rest(acc.prefix, server).await, CLIENT_HELLO);
    }
}

#[tokio::test]
async fn lenient_trusted_header_is_used() {
    let (acc, server) = read(&[&v2_azure()[..], CLIENT_HELLO].concat(), LB, Mode::Lenient).await;
    let acc = acc.unwrap();
    assert_eq!(acc.client.source, ip("192.0.2.1"));
    assert_eq!(rest(acc.prefix, server).await, CLIENT_HELLO);
}

#[tokio::test]
async fn lenient_untrusted_signature_is_refused() {
    for header in [v2_azure(), V1.to_vec()] {
        let (e, _) = read(&header, STRANGER, Mode::Lenient).await;
        let e = e.unwrap_err();
        assert_eq!(e.kind(), "untrusted");
    }
}

#[tokio::test]
async fn off_reads_nothing() {
    let stream = [V1, CLIENT_HELLO].concat();
    let (acc, server) = read(&stream, STRANGER, Mode::Off).await;
    let acc = acc.unwrap();
    assert_eq!(acc.client.source, ip("203.0.113.9"));
    assert_eq!((acc.header, acc.prefix.is_empty()), (None, true));
    assert_eq!(rest(acc.prefix, server).await, stream);
}

#[tokio::test]
async fn mapped_peer_is_canonicalised_and_local_uses_it() {
    // v2 LOCAL, as load balancer health checks send it.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let (acc, _) = read(local, "[::ffff:10.1.2.3]:9", Mode::Required).await;
    let acc = acc.unwrap();
    assert_eq!(acc.client.source, ip("10.1.2.3"));
    assert_eq!(acc.client.endpoint, None);
    assert_eq!(acc.header.unwrap().command, Command::Local);

    let (acc, _) = read(b"PROXY UNKNOWN\r\n", "[2001:db8::7]:9", Mode::Required).await;
    let acc = acc.unwrap();
    assert_eq!(acc.client.source, ip("2001:db8::7"));

    // Mapped, but not into a trusted network.
    let (e, _) = read(local, "[::ffff:203.0.113.9]:9", Mode::Required).await;
    let e = e.unwrap_err();
    assert!(matches!(e, ReadError::Untrusted { peer } if peer == ip("203.0.113.9")));
}

#[tokio::test(start_paused = true)]
async fn silence_times_out() {
    let (_client, mut server) = duplex(64);
    let e = read_header(&mut server, addr(LB), &settings(Mode::Required))
        .await
        .unwrap_err();
    assert!(matches!(e, ReadError::Timeout));
    assert_eq!(e.kind(), "timeout");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_partial_header_times_out() {
    let (mut client, mut server) = duplex(64);
    client.write_all(&v2_azure()[..20]).await.unwrap();
    let mut s = settings(Mode::Lenient);
    s.read_timeout = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let e = read_header(&mut server, addr(LB), &s).await.unwrap_err();
    assert!(matches!(e, ReadError::Timeout));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test]
async fn eof_mid_header_is_closed() {
    for partial in [&v2_azure()[..5], &v2_azure()[..20], &V1[..30], &b""[..]] {
        let (e, _) = read(partial, LB, Mode::Required).await;
        let e = e.unwrap_err();
        assert!(matches!(e, ReadError::Closed), "{partial:?}: {e}");
        assert_eq!(e.kind(), "closed");
    }
}

#[tokio::test]
async fn header_split_into_one_byte_writes() {
    for header in [v2_azure(), V1.to_vec()] {
        let (mut client, mut server) = duplex(1);
        let stream = [&header[..], CLIENT_HELLO].concat();
        let writer = tokio::spawn(async move {
            for byte in stream {
                client.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let acc = read_header(&mut server, addr(LB), &settings(Mode::Required))
            .await
            .unwrap();
        assert_eq!(acc.client.source, ip("192.0.2.1"));
        // Byte-at-a-time delivery means the parser saw the end of the header
        // before any application byte arrived.
        assert!(acc.prefix.is_empty());
        let (got, ()) = tokio::join!(rest(acc.prefix, server), async { writer.await.unwrap() });
        assert_eq!(got, CLIENT_HELLO);
    }
}

#[tokio::test]
async fn headers_larger_than_the_inline_buffer() {
    let mut header = v2_azure();
    let pad = 2000usize;
    header.extend_from_slice(&[0x04, 0x07, 0xd0]);
    header.resize(header.len() + pad, 0);
    let len = u16::try_from(header.len() - 16).unwrap().to_be_bytes();
    header[14..16].copy_from_slice(&len);
    let mut s = settings(Mode::Required);
    s.limits.v2_max_payload = 4096;
    let mut server = sent(&[&header[..], CLIENT_HELLO].concat()).await;
    let acc = read_header(&mut server, addr(LB), &s).await.unwrap();
    assert_eq!(
        acc.client.endpoint,
        Some(PrivateEndpoint::AzureLinkId(16_777_301))
    );
    assert_eq!(rest(acc.prefix, server).await, CLIENT_HELLO);
}

#[tokio::test]
async fn over_real_loopback_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut conn = tokio::net::TcpStream::connect(target).await.unwrap();
        conn.write_all(&[V1, CLIENT_HELLO].concat()).await.unwrap();
        let mut reply = [0; 2];
        conn.read_exact(&mut reply).await.unwrap();
        reply
    });
    let (mut conn, peer) = listener.accept().await.unwrap();
    let s = Settings::new(Mode::Required, vec!["127.0.0.0/8".parse().unwrap()]);
    let acc = read_header(&mut conn, peer, &s).await.unwrap();
    assert_eq!(acc.client.source, ip("192.0.2.1"));
    let mut stream = Prefixed::new(acc.prefix, conn);
    let mut hello = vec![0; CLIENT_HELLO.len()];
    // Bounded, so that a lost prefix fails the test instead of hanging it.
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut hello));
    read.await.expect("ClientHello bytes were lost").unwrap();
    assert_eq!(hello, CLIENT_HELLO);
    // Writes pass through to the socket.
    stream.write_all(b"ok").await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(&client.await.unwrap(), b"ok");
}

#[tokio::test]
async fn prefixed_replays_in_small_reads_then_passes_through() {
    let (mut client, server) = duplex(64);
    client.write_all(b"world").await.unwrap();
    let mut stream = Prefixed::new(Bytes::from_static(b"hello "), server);
    let mut two = [0; 2];
    stream.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"he");
    stream.write_all(b"back").await.unwrap();
    stream.shutdown().await.unwrap();
    let (unread, server) = stream.into_parts();
    assert_eq!(&unread[..], b"llo ");
    let mut stream = Prefixed::new(unread, server);
    let mut got = [0; 9];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"llo world");
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"back");
    assert_eq!(
        stream.is_write_vectored(),
        stream.get_ref().is_write_vectored()
    );
}

#[test]
fn mode_deserializes_from_lowercase_names() {
    for (name, mode) in [
        ("required", Mode::Required),
        ("lenient", Mode::Lenient),
        ("off", Mode::Off),
    ] {
        assert_eq!(
            serde_json::from_str::<Mode>(&format!("\"{name}\"")).unwrap(),
            mode
        );
    }
    assert!(serde_json::from_str::<Mode>("\"Required\"").is_err());
}

#[test]
fn read_error_kinds() {
    let io = ReadError::from(std::io::Error::other("boom"));
    assert_eq!(io.kind(), "io");
    let parse = ReadError::from(ParseError::Crc32cMismatch {
        expected: 1,
        computed: 2,
    });
    assert_eq!(parse.kind(), "crc32c_mismatch");
    assert_eq!(
        parse.to_string(),
        ParseError::Crc32cMismatch {
            expected: 1,
            computed: 2
        }
        .to_string()
    );
}

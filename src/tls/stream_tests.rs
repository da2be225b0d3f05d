//! The unbuffered stream against tokio-rustls's client, over in-memory
//! pipes that split records anywhere and push back on writes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client;

use super::TlsStream;
use crate::tls::testing::TestCa;
use crate::tls::{Acceptor, Settings, handshake, server_config_from_pems};

const NAME: &str = "a.es.example.com";

/// Reads at most `chunk` bytes at a time, so records arrive in pieces.
struct Dribble {
    io: DuplexStream,
    chunk: usize,
}

impl AsyncRead for Dribble {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let chunk = self.chunk.min(buf.remaining());
        let mut small = buf.take(chunk);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut small);
        let n = small.filled().len();

        buf.advance(n);
        polled
    }
}

impl AsyncWrite for Dribble {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct Fixture {
    acceptor: Acceptor,
    client: Arc<ClientConfig>,
}

impl Fixture {
    fn new() -> Self {
        let ca = TestCa::new();
        let leaf = ca.leaf(&[NAME]);
        let config = server_config_from_pems(&[leaf.pems()], &Settings::default()).expect("config");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        Self {
            acceptor: Acceptor::from(config),
            client: Arc::new(client),
        }
    }

    /// A handshaken pair over a pipe of `capacity` bytes, the server
    /// reading `chunk` bytes at a time.
    async fn pair(
        &self,
        capacity: usize,
        chunk: usize,
    ) -> (client::TlsStream<DuplexStream>, TlsStream<Dribble>) {
        let (near, far) = tokio::io::duplex(capacity);
        let server = handshake(
            &self.acceptor,
            Dribble { io: far, chunk },
            std::time::Duration::from_secs(10),
        );
        let name = ServerName::try_from(NAME).expect("name");
        let client = TlsConnector::from(Arc::clone(&self.client)).connect(name, near);
        let (client, server) = tokio::join!(client, server);
        (
            client.expect("client handshake"),
            server.expect("server handshake"),
        )
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap_or(0) ^ seed)
        .collect()
}

/// Neither buffer nor leftover plaintext is held.
fn holds_nothing(stream: &TlsStream<Dribble>) -> bool {
    stream.incoming.capacity() == 0
        && stream.session.plain.capacity() == 0
        && stream.session.outgoing.capacity() == 0
}

#[tokio::test]
async fn records_split_anywhere_arrive_whole_both_ways() {
    let fixture = Fixture::new();
    for (capacity, chunk, reader) in [(64, 1, 7), (1000, 7, 100), (1 << 16, 4096, 1 << 15)] {
        let (mut client, mut server) = fixture.pair(capacity, chunk).await;
        assert_eq!(server.sni(), Some(NAME));

        // Client to server: writes of many sizes, read through a small
        // buffer so plaintext overflows into `plain`.
        let sent = pattern(100_000, 1);
        let writer = async {
            for piece in sent.chunks(9_000) {
                client.write_all(piece).await.expect("client write");
            }
            client.flush().await.expect("client flush");
        };
        let reading = async {
            let mut got = Vec::new();
            let mut buf = vec![0; reader];
            while got.len() < sent.len() {
                let n = server.read(&mut buf).await.expect("server read");
                assert_ne!(n, 0, "early end");
                got.extend_from_slice(&buf[..n]);
            }
            got
        };
        let ((), got) = tokio::join!(writer, reading);
        assert!(got == sent, "capacity {capacity}, chunk {chunk}");

        // Server to client: more than one write's worth at once, through a
        // pipe that takes less, so ciphertext waits in `outgoing`.
        let back = pattern(200_000, 2);
        let writer = async {
            server.write_all(&back).await.expect("server write");
            server.flush().await.expect("server flush");
        };
        let reading = async {
            let mut got = vec![0; back.len()];
            client.read_exact(&mut got).await.expect("client read");
            got
        };
        let ((), got) = tokio::join!(writer, reading);
        assert!(got == back, "capacity {capacity}, chunk {chunk}");
        assert!(holds_nothing(&server), "idle after the exchange");
    }
}

#[tokio::test]
async fn an_idle_connection_holds_no_buffer() {
    let fixture = Fixture::new();
    let (mut client, mut server) = fixture.pair(1 << 16, 1 << 16).await;
    // The handshake, tickets included, left nothing behind.
    assert!(holds_nothing(&server), "after the handshake");
    for round in 0..3u8 {
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        client.flush().await.expect("flush");
        let mut buf = [0; 64];
        let n = server.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        server.write_all(&[round; 600]).await.expect("write");
        server.flush().await.expect("flush");
        let mut reply = [0; 600];
        client.read_exact(&mut reply).await.expect("read");
        assert_eq!(reply, [round; 600]);
        assert!(holds_nothing(&server), "round {round}");
    }
}

#[tokio::test]
async fn close_notify_ends_the_stream_both_ways() {
    let fixture = Fixture::new();
    let (mut client, mut server) = fixture.pair(4096, 4096).await;
    client.write_all(b"last").await.expect("write");
    client.shutdown().await.expect("client close_notify");
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.expect("a clean end");
    assert_eq!(got, b"last");
    // Reads after the end keep seeing it.
    assert_eq!(server.read(&mut [0; 8]).await.expect("still the end"), 0);

    server
        .write_all(b"bye")
        .await
        .expect("write after the peer's end");
    server.shutdown().await.expect("server close_notify");
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .await
        .expect("client sees a clean end");
    assert_eq!(got, b"bye");
    assert!(
        server.write(b"more").await.is_err(),
        "no writes after close"
    );
}

#[tokio::test]
async fn an_end_without_close_notify_is_an_error() {
    let fixture = Fixture::new();
    let (client, mut server) = fixture.pair(4096, 4096).await;
    // The transport ends with no close_notify: a truncation.
    drop(client);
    let err = server.read(&mut [0; 8]).await.expect_err("truncated");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn garbage_after_the_handshake_is_invalid_data() {
    let fixture = Fixture::new();
    let (client, mut server) = fixture.pair(4096, 4096).await;
    let (_, _) = client.get_ref();
    let mut raw = client.into_inner().0;
    // An application-data record that does not decrypt.
    raw.write_all(&[23, 3, 3, 0, 32]).await.expect("write");
    raw.write_all(&[0xAA; 32]).await.expect("write");
    let err = server.read(&mut [0; 8]).await.expect_err("bad record");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let tls = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(matches!(tls, Some(rustls::Error::DecryptError)), "{tls:?}");
    // The alert rustls queued went out: the client reads it.
    let mut alert = [0; 5];
    raw.read_exact(&mut alert).await.expect("alert record");
    assert_eq!(alert[0], 23, "an encrypted alert (TLS 1.3 hides the type)");
}

#[tokio::test]
async fn key_updates_are_followed_both_ways() {
    let fixture = Fixture::new();
    let (mut client, mut server) = fixture.pair(4096, 4096).await;
    for round in 0..3u8 {
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("client key update");
        client.write_all(&[round; 100]).await.expect("write");
        client.flush().await.expect("flush");
        let mut got = [0; 100];
        server
            .read_exact(&mut got)
            .await
            .expect("read after the update");
        assert_eq!(got, [round; 100]);
        // The server answered the update: its next record uses new keys
        // the client can read.
        server.write_all(&[round; 50]).await.expect("write");
        server.flush().await.expect("flush");
        let mut back = [0; 50];
        client.read_exact(&mut back).await.expect("client read");
        assert_eq!(back, [round; 50]);
    }
}

#[tokio::test]
async fn a_resumed_connection_still_knows_its_sni() {
    let fixture = Fixture::new();
    for expect in [HandshakeKind::Full, HandshakeKind::Resumed] {
        let (mut client, mut server) = fixture.pair(1 << 16, 1 << 16).await;
        // Reading makes the client take in the tickets.
        server.write_all(b"x").await.expect("write");
        server.flush().await.expect("flush");
        client.read_exact(&mut [0; 1]).await.expect("read");
        assert_eq!(client.get_ref().1.handshake_kind(), Some(expect));
        assert_eq!(server.sni(), Some(NAME), "{expect:?}");
    }
}

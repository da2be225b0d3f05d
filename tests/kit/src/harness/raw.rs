//! Raw TCP.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// A plain TCP connection, to watch the proxy close it.
pub struct Raw {
    tcp: TcpStream,
    opened: Instant,
}

/// How a raw connection ended.
#[derive(Debug)]
pub struct Closed {
    /// From connect to EOF or reset.
    pub after: Duration,
    pub bytes_received: usize,
}

impl Raw {
    pub async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> Self {
        let tcp = within("TCP connect", tcp_connect(addr, bind))
            .await
            .expect("TCP connect");
        Self {
            tcp,
            opened: Instant::now(),
        }
    }

    /// Writes `bytes`; the peer may already have closed, which is fine.
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = within("raw write", self.tcp.write_all(bytes)).await;
    }

    /// Reads until EOF or an error; panics if the connection is still open
    /// after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> Closed {
        let mut bytes_received = 0;
        let mut buf = [0u8; 4096];
        let read_all = async {
            loop {
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes_received += n,
                }
            }
        };
        tokio::time::timeout(limit, read_all)
            .await
            .unwrap_or_else(|_| panic!("connection still open after {limit:?}"));
        Closed {
            after: self.opened.elapsed(),
            bytes_received,
        }
    }
}

/// A TLS connection (HTTP/1.1 by ALPN) to `addr` after `preamble` (a
/// PROXY header), for tests that write request bytes themselves.
pub async fn tls_h1(
    addr: SocketAddr,
    preamble: &[u8],
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_alpn(addr, preamble, sni, b"http/1.1").await
}

/// [`tls_h1`] offering `alpn` (`h2` for tests that speak HTTP/2 frames
/// themselves).
pub async fn tls_alpn(
    addr: SocketAddr,
    preamble: &[u8],
    sni: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(preamble).await.expect("PROXY header");
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("SNI");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls(alpn)));
    within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake")
}

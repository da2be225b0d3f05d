//! The server side of a TLS handshake, under a deadline.
//!
//! Guarantees: [`handshake`] finishes within its timeout, and every failure
//! maps to one of five [`HandshakeError::kind`] labels, so per-outcome
//! metrics have bounded cardinality no matter what a peer sends.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use tokio::io::{AsyncRead, AsyncWrite};

use super::stream::TlsStream;

/// Accepts TLS connections with one server configuration.
#[derive(Debug, Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
}

impl From<Arc<ServerConfig>> for Acceptor {
    fn from(config: Arc<ServerConfig>) -> Self {
        Self { config }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer did not finish the handshake in time (slow or idle client).
    #[error("TLS handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The peer sent bytes that do not parse as TLS, typically plain HTTP
    /// sent to the TLS port.
    #[error("peer did not send TLS")]
    NotTls(#[source] rustls::Error),
    /// The peer speaks TLS but the handshake failed: no shared version or
    /// cipher suite, an alert from the client, an unexpected message, ...
    #[error("TLS handshake failed")]
    Protocol(#[source] rustls::Error),
    /// The peer closed or reset the connection before the handshake
    /// finished (port scanners, load balancer health checks).
    #[error("peer closed the connection during the TLS handshake")]
    Eof(#[source] io::Error),
    /// Any other I/O failure on the socket.
    #[error("I/O error during the TLS handshake")]
    Io(#[source] io::Error),
}

impl HandshakeError {
    /// A fixed label for metrics: `timeout`, `not_tls`, `protocol`, `eof` or
    /// `io`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::NotTls(_) => "not_tls",
            Self::Protocol(_) => "protocol",
            Self::Eof(_) => "eof",
            Self::Io(_) => "io",
        }
    }

    /// Sorts an error from the stream, which reports rustls' own verdicts
    /// as an [`io::Error`] wrapping a [`rustls::Error`].
    fn from_io(err: io::Error) -> Self {
        let tls = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            // The record layer or a handshake message failed to parse: the
            // peer is not talking TLS (or not TLS we could ever accept).
            Some(tls @ rustls::Error::InvalidMessage(_)) => Self::NotTls(tls.clone()),
            Some(tls) => Self::Protocol(tls.clone()),
            None => match err.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Self::Eof(err),
                _ => Self::Io(err),
            },
        }
    }
}

/// Accepts a TLS connection on `io`, giving up after `timeout`.
///
/// # Errors
///
/// A [`HandshakeError`] when the deadline passes or the handshake fails. On
/// error `io` has been dropped, which closes the connection.
pub async fn handshake<IO>(
    acceptor: &Acceptor,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(Arc::clone(&acceptor.config))
        .map_err(HandshakeError::Protocol)?;
    let mut stream = TlsStream::new(io, conn);
    let handshake = std::future::poll_fn(|cx| stream.poll_handshake(cx));
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(err)) => Err(HandshakeError::from_io(err)),
        Err(_elapsed) => Err(HandshakeError::Timeout(timeout)),
    }
}

/// The SNI the client sent, lowercased by rustls; `None` without SNI.
pub fn sni_of<IO>(stream: &TlsStream<IO>) -> Option<&str>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    stream.sni()
}

/// Whether ALPN settled on HTTP/2; `false` means HTTP/1.1, either
/// negotiated or assumed for clients that offered no ALPN.
pub fn alpn_is_h2<IO>(stream: &TlsStream<IO>) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    stream.alpn_protocol() == Some(b"h2")
}

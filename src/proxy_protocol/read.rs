//! The async shell around [`parse`]: reads a PROXY header off a fresh
//! connection and decides who the client is.
//!
//! Guarantees:
//!
//! - Trust first. In `Required` mode an untrusted peer is refused before a
//!   single byte is read; in `Lenient` mode it is refused as soon as it
//!   presents a PROXY signature. An untrusted peer can never choose its
//!   identity.
//! - No over-read. Reads never go past what the parser allows: nothing past a
//!   v2 header, at most [`V1_MAX_LEN`] bytes for v1. Bytes read past the
//!   header (or, in `Lenient` mode, every byte of a non-PROXY stream) are
//!   returned in [`Accepted::prefix`]; wrap the stream in [`Prefixed`] to
//!   replay them to the TLS layer.
//! - Bounded. The whole header read is under `read_timeout`, and the bytes
//!   live in an inline buffer that only spills to the heap for v2 headers
//!   larger than it (themselves capped by [`Limits::v2_max_payload`]). The
//!   common path allocates nothing but a non-empty `prefix`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::header::{Limits, ParseError, Parsed, ProxyHeader, Signature, V1_MAX_LEN, signature};
use super::parse::parse;
use crate::endpoint::ClientIdentity;

/// How long a new connection may take to deliver its PROXY header. The spec
/// suggests at least 3 s to cover one TCP retransmit.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Inline buffer size: fits any v1 line and every v2 header a cloud load
/// balancer sends (IPv6 addresses, a vendor TLV and a CRC are < 128 bytes).
const INLINE_CAP: usize = 256;
// A v1 line must never need the heap.
const _: () = assert!(INLINE_CAP >= V1_MAX_LEN);

/// Whether connections carry a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every connection must come from a trusted source and start with a
    /// valid header.
    Required,
    /// A header is used if present (from a trusted source); otherwise the
    /// TCP peer is the client. For migrations only: the spec warns that
    /// guessing lets untrusted parties reach the port, so trust still applies.
    Lenient,
    /// No header is expected; nothing is read.
    Off,
}

/// Reader configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// Peers allowed to send a header (the load balancers' addresses).
    pub trusted_sources: Vec<IpNet>,
    pub read_timeout: Duration,
    pub limits: Limits,
}

impl Settings {
    /// Settings with the default timeout and limits.
    #[must_use]
    pub fn new(mode: Mode, trusted_sources: Vec<IpNet>) -> Self {
        Self {
            mode,
            trusted_sources,
            read_timeout: DEFAULT_READ_TIMEOUT,
            limits: Limits::default(),
        }
    }
}

/// The outcome for an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Who the client is, for policy and logging.
    pub client: ClientIdentity,
    /// The header, when one was read.
    pub header: Option<ProxyHeader>,
    /// Bytes read that belong to the application stream; replay them first.
    pub prefix: Bytes,
}

/// Why a connection must be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("timed out waiting for the PROXY header")]
    Timeout,
    #[error("peer {peer} is not trusted to send a PROXY header")]
    Untrusted { peer: IpAddr },
    #[error("connection does not start with a PROXY header")]
    Missing,
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("I/O error while reading the PROXY header")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl ReadError {
    /// A short, fixed label for metrics (bounded cardinality).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Untrusted { .. } => "untrusted",
            Self::Missing => "missing",
            Self::Closed => "closed",
            Self::Io(_) => "io",
            Self::Parse(e) => e.kind(),
        }
    }
}

/// Reads the PROXY header (per `settings.mode`) from a new connection whose
/// TCP peer is `peer`. On success, replay [`Accepted::prefix`] before reading
/// further from `io` (see [`Prefixed`]).
///
/// # Errors
///
/// The connection must be dropped on any error: see [`ReadError`], whose
/// [`kind`](ReadError::kind) is the metric label.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    peer: SocketAddr,
    settings: &Settings,
) -> Result<Accepted, ReadError> {
    // A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; trust
    // lists and policies are written with plain IPv4 networks.
    let peer = peer.ip().to_canonical();
    if settings.mode == Mode::Off {
        return Ok(Accepted::direct(peer, Bytes::new()));
    }
    let trusted = settings
        .trusted_sources
        .iter()
        .any(|net| net.contains(&peer));
    if settings.mode == Mode::Required && !trusted {
        return Err(ReadError::Untrusted { peer });
    }
    tokio::time::timeout(
        settings.read_timeout,
        read_loop(io, peer, trusted, settings),
    )
    .await
    .map_err(|_elapsed| ReadError::Timeout)?
}

async fn read_loop<S: AsyncRead + Unpin>(
    io: &mut S,
    peer: IpAddr,
    trusted: bool,
    settings: &Settings,
) -> Result<Accepted, ReadError> {
    let mut buf = HeaderBuf::new();
    loop {
        let filled = buf.filled();
        // Only reachable in lenient mode: refuse on the signature alone, so
        // an untrusted peer cannot even probe the parser.
        if !trusted && matches!(signature(filled), Signature::V1 | Signature::V2) {
            return Err(ReadError::Untrusted { peer });
        }
        let limit = match parse(filled, &settings.limits)? {
            Parsed::Complete { header, consumed } => {
                // A TCP6 header may carry a mapped IPv4 client; canonicalise
                // it for the same reason as the peer.
                let client = ClientIdentity {
                    source: header.source.map_or(peer, |addr| addr.ip().to_canonical()),
                    endpoint: header.endpoint,
                };
                return Ok(Accepted {
                    client,
                    header: Some(header),
                    prefix: copy_to_bytes(filled.get(consumed..).unwrap_or_default()),
                });
            }
            Parsed::NotProxy => {
                return match settings.mode {
                    Mode::Lenient => Ok(Accepted::direct(peer, copy_to_bytes(filled))),
                    Mode::Required | Mode::Off => Err(ReadError::Missing),
                };
            }
            Parsed::Incomplete { total, max_total } => total.unwrap_or(max_total),
        };
        if buf.read_from(io, limit).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

impl Accepted {
    /// No header: the TCP peer is the client.
    fn direct(peer: IpAddr, prefix: Bytes) -> Self {
        Self {
            client: ClientIdentity {
                source: peer,
                endpoint: None,
            },
            header: None,
            prefix,
        }
    }
}

/// Copies application bytes out of the header buffer; allocates only when
/// there is something to copy.
fn copy_to_bytes(bytes: &[u8]) -> Bytes {
    if bytes.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(bytes)
    }
}

/// The bytes read so far: inline, or on the heap once a v2 header turns out
/// to be larger than [`INLINE_CAP`].
struct HeaderBuf {
    storage: Storage,
    len: usize,
}

#[expect(
    clippy::large_enum_variant,
    reason = "the inline array is the point: no allocation on the common path"
)]
enum Storage {
    Inline([u8; INLINE_CAP]),
    Heap(Box<[u8]>),
}

impl HeaderBuf {
    fn new() -> Self {
        Self {
            storage: Storage::Inline([0; INLINE_CAP]),
            len: 0,
        }
    }

    fn storage(&self) -> &[u8] {
        match &self.storage {
            Storage::Inline(bytes) => bytes,
            Storage::Heap(bytes) => bytes,
        }
    }

    fn filled(&self) -> &[u8] {
        self.storage().get(..self.len).unwrap_or_default()
    }

    /// One read, so that the total buffered never exceeds `limit`. Returns
    /// the byte count (0 at EOF).
    async fn read_from<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        limit: usize,
    ) -> io::Result<usize> {
        if limit > self.storage().len() {
            // `limit` is bounded by `Limits::v2_max_payload` plus 16.
            let mut heap = Vec::with_capacity(limit);
            heap.extend_from_slice(self.filled());
            heap.resize(limit, 0);
            self.storage = Storage::Heap(heap.into_boxed_slice());
        }
        let storage = match &mut self.storage {
            Storage::Inline(bytes) => &mut bytes[..],
            Storage::Heap(bytes) => &mut bytes[..],
        };
        let spare = storage.get_mut(self.len..limit).unwrap_or_default();
        if spare.is_empty() {
            // The parser only asks for more when `len < limit`; reading into
            // an empty slice would otherwise masquerade as EOF.
            return Err(io::Error::other("PROXY parser asked for no further bytes"));
        }
        let n = io.read(spare).await?;
        self.len += n;
        Ok(n)
    }
}

/// A stream that first replays `prefix` (bytes read ahead while looking for
/// a PROXY header) and then reads from the inner stream. Writes pass through.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The part of the prefix not yet replayed, and the inner stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // `split_to` shares the allocation; `n` is within both lengths.
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

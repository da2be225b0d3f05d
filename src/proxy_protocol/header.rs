//! What a PROXY header says, and the signatures that tell v1 from v2:
//! the types [`super::parse()`] and its `v1` and `v2` halves share.

use std::net::SocketAddr;

use crate::endpoint::PrivateEndpoint;

/// Longest v1 line the spec allows, CRLF included (`PROXY UNKNOWN` with two
/// full IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;

/// Default cap on the v2 `len` field. Cloud load balancers send well under
/// 100 bytes; the cap bounds what a trusted-but-broken peer can make us buffer.
pub const DEFAULT_V2_MAX_PAYLOAD: usize = 1024;

pub(super) const V1_SIGNATURE: &[u8] = b"PROXY ";
pub(super) const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the 2-byte length.
pub(super) const V2_FIXED_LEN: usize = 16;

/// Parser limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted v2 payload (`len` field): addresses plus TLVs.
    pub v2_max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            v2_max_payload: DEFAULT_V2_MAX_PAYLOAD,
        }
    }
}

/// PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

/// v2 command. v1 headers are always `Proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// The connection is relayed on behalf of a client.
    Proxy,
    /// The proxy's own connection (health check): use the real endpoints.
    Local,
}

/// A successfully parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    pub command: Command,
    /// `None` for `LOCAL`, v1 `UNKNOWN`, v2 `UNSPEC` and `UNIX`.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// The private endpoint from a cloud vendor TLV, if any.
    pub endpoint: Option<PrivateEndpoint>,
    /// A CRC32C TLV was present and matched.
    pub crc32c_verified: bool,
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet. `total` is `Some(n)` when the full header length
    /// is known (v2 after 16 bytes): the caller must then read exactly up to
    /// `n` bytes and no more. `None`: unknown yet (v1, or < 16 bytes of v2);
    /// the caller may read more, but never beyond `max_total` in total.
    Incomplete {
        total: Option<usize>,
        max_total: usize,
    },
    /// A whole header; it is exactly the first `consumed` bytes.
    Complete {
        header: ProxyHeader,
        consumed: usize,
    },
    /// The bytes cannot be the start of a v1 or v2 header.
    NotProxy,
}

/// Why bytes that start with a PROXY signature are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v1 header has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("unsupported PROXY v2 version {0}")]
    V2Version(u8),
    #[error("unsupported PROXY v2 command {0:#x}")]
    V2Command(u8),
    #[error("unsupported PROXY v2 family/transport {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 payload of {len} bytes exceeds the limit of {max}")]
    V2TooLong { len: usize, max: usize },
    #[error("PROXY v2 payload of {len} bytes cannot hold the {needed}-byte address block")]
    V2TruncatedAddresses { len: usize, needed: usize },
    #[error("PROXY v2 TLV overruns the header")]
    TlvOverrun,
    #[error("malformed PROXY v2 vendor TLV {tlv:#04x}: {reason}")]
    TlvVendorMalformed { tlv: u8, reason: &'static str },
    #[error("PROXY v2 TLV {tlv:#04x} makes the header ambiguous: duplicate")]
    TlvDuplicate { tlv: u8 },
    #[error("PROXY v2 CRC32C TLV must be 4 bytes, got {len}")]
    Crc32cMalformed { len: usize },
    #[error("PROXY v2 CRC32C mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    Crc32cMismatch { expected: u32, computed: u32 },
}

impl ParseError {
    /// A short, fixed label for metrics (bounded cardinality).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::V1Malformed(_) => "v1_malformed",
            Self::V1TooLong => "v1_too_long",
            Self::V2Version(_) => "v2_version",
            Self::V2Command(_) => "v2_command",
            Self::V2Family(_) => "v2_family",
            Self::V2TooLong { .. } => "v2_too_long",
            Self::V2TruncatedAddresses { .. } => "v2_truncated_addresses",
            Self::TlvOverrun => "tlv_overrun",
            Self::TlvVendorMalformed { .. } => "tlv_vendor_malformed",
            Self::TlvDuplicate { .. } => "tlv_duplicate",
            Self::Crc32cMalformed { .. } => "crc32c_malformed",
            Self::Crc32cMismatch { .. } => "crc32c_mismatch",
        }
    }
}

/// How far the bytes match the two signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signature {
    /// Too short to tell; still a prefix of a signature (or empty).
    Partial,
    V1,
    V2,
    NotProxy,
}

/// Classifies `buf` by signature alone. Used by the reader to refuse
/// untrusted peers as soon as they present a signature, before parsing.
pub(super) fn signature(buf: &[u8]) -> Signature {
    for (sig, full) in [(V1_SIGNATURE, Signature::V1), (V2_SIGNATURE, Signature::V2)] {
        let n = buf.len().min(sig.len());
        // The signatures differ in their first byte, so a non-empty buffer
        // can match at most one of them.
        if buf.get(..n) == sig.get(..n) {
            return if n == sig.len() {
                full
            } else {
                Signature::Partial
            };
        }
    }
    Signature::NotProxy
}

/// Source and destination, when the header carries them.
pub(super) type Addresses = (Option<SocketAddr>, Option<SocketAddr>);

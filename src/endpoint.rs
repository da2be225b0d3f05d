//! The client's identity as the load balancer reports it: the source address
//! and, for private-link traffic, the private endpoint it came through.
//!
//! These types cross the data path: the PROXY-protocol parser produces them,
//! policy evaluation and the access log consume them. They are `Copy` and
//! never allocate, so carrying them per request costs nothing.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// Longest AWS VPC endpoint id we accept. Real ids are `vpce-` + 17 hex
/// digits (22 bytes); 63 leaves room for format changes while keeping the id
/// inline and the header parser bounded.
pub const VPCE_ID_MAX_LEN: usize = 63;

/// An AWS VPC endpoint id, stored lowercase (AWS compares them
/// case-insensitively), inline, so a connection carries it without a heap
/// allocation.
///
/// It carries a 64-bit fingerprint of its bytes, computed once when parsed
/// (per connection, not per request); `Hash` writes only the fingerprint,
/// which makes the per-request map lookup cheap, while equality still
/// compares the bytes, so lookups stay exact.
#[derive(Clone, Copy)]
pub struct VpceId {
    fingerprint: u64,
    len: u8,
    bytes: [u8; VPCE_ID_MAX_LEN],
}

/// Why a byte string is not a VPC endpoint id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VpceIdError {
    #[error("VPC endpoint id is empty")]
    Empty,
    #[error("VPC endpoint id is longer than {VPCE_ID_MAX_LEN} bytes")]
    TooLong,
    #[error("VPC endpoint id may only contain ASCII letters, digits and '-'")]
    BadByte,
}

impl VpceId {
    /// Parses an id as it appears in a rule or in the `0xEA` TLV.
    /// Letters are folded to lowercase.
    pub fn parse(raw: &[u8]) -> Result<Self, VpceIdError> {
        if raw.is_empty() {
            return Err(VpceIdError::Empty);
        }
        if raw.len() > VPCE_ID_MAX_LEN {
            return Err(VpceIdError::TooLong);
        }
        let mut bytes = [0u8; VPCE_ID_MAX_LEN];
        for (dst, &b) in bytes.iter_mut().zip(raw) {
            if !(b.is_ascii_alphanumeric() || b == b'-') {
                return Err(VpceIdError::BadByte);
            }
            *dst = b.to_ascii_lowercase();
        }
        let len = raw.len();
        Ok(Self {
            fingerprint: fnv1a(bytes.get(..len).unwrap_or_default()),
            // Bounded by VPCE_ID_MAX_LEN above.
            len: len as u8,
            bytes,
        })
    }

    /// The lowercase id, as bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The lowercase id.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (checked in `parse`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl PartialEq for VpceId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for VpceId {}

impl Hash for VpceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

/// FNV-1a: simple, and good enough as a fingerprint that the map's own
/// (randomly seeded) hasher mixes again.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Debug for VpceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for VpceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The private endpoint a connection arrived through, from the cloud
/// provider's vendor TLV in the PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrivateEndpoint {
    /// AWS PrivateLink: TLV `0xEA`, subtype `0x01`.
    AwsVpce(VpceId),
    /// Azure Private Link: TLV `0xEE`, subtype `0x01`, little-endian LinkID.
    AzureLinkId(u32),
    /// GCP Private Service Connect: TLV `0xE0`, big-endian connection id.
    GcpPscConnectionId(u64),
}

impl fmt::Display for PrivateEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AwsVpce(id) => write!(f, "aws-vpce:{id}"),
            Self::AzureLinkId(id) => write!(f, "azure-link-id:{id}"),
            Self::GcpPscConnectionId(id) => write!(f, "gcp-psc:{id}"),
        }
    }
}

/// Who is asking: what policy evaluation needs to know about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client source address from the PROXY header, or the TCP peer when
    /// there was none (or it was `LOCAL`).
    pub source: IpAddr,
    /// Set when the connection came through a private endpoint.
    pub endpoint: Option<PrivateEndpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpce_ids_fold_case_and_stay_inline() {
        let id = VpceId::parse(b"VPCE-0A1b2C3d4E5f67890").unwrap();
        assert_eq!(id.as_str(), "vpce-0a1b2c3d4e5f67890");
        assert_eq!(id, VpceId::parse(b"vpce-0a1b2c3d4e5f67890").unwrap());
    }

    #[test]
    fn vpce_ids_reject_bad_input() {
        assert_eq!(VpceId::parse(b""), Err(VpceIdError::Empty));
        assert_eq!(VpceId::parse(&[b'a'; 64]), Err(VpceIdError::TooLong));
        assert_eq!(VpceId::parse(b"vpce 1"), Err(VpceIdError::BadByte));
        assert_eq!(VpceId::parse(b"vpce-\xff"), Err(VpceIdError::BadByte));
        assert!(VpceId::parse(&[b'a'; 63]).is_ok());
    }
}

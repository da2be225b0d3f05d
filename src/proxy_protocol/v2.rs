//! PROXY v2: the binary header, its address block and its TLV area.
//!
//! Guarantees: pure, allocation-free and panic-free. The fixed fields are
//! checked as soon as each byte arrives and the length cap before the payload
//! is awaited, so the caller can read exactly the header and no more. Every
//! TLV is bounded by the header it came in (an overrun or a trailing fragment
//! is an error), a CRC32C TLV is verified over the whole header before any
//! vendor TLV is interpreted, and at most one vendor TLV may name the private
//! endpoint, so the client's identity is never ambiguous. `LOCAL` headers
//! have their CRC32C verified too (see [`verify_local_crc32c`]), so that a
//! `PROXY` header whose command nibble was corrupted into `LOCAL` is refused
//! rather than served as the load balancer's own connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::crc32c::crc32c;
use super::header::{
    Addresses, Command, Limits, ParseError, Parsed, ProxyHeader, V2_FIXED_LEN, Version,
};
use crate::endpoint::{PrivateEndpoint, VpceId, VpceIdError};

const TLV_CRC32C: u8 = 0x03;
const TLV_GCP: u8 = 0xE0;
const TLV_AWS: u8 = 0xEA;
const TLV_AZURE: u8 = 0xEE;
const AWS_SUBTYPE_VPCE_ID: u8 = 0x01;
const AZURE_SUBTYPE_LINK_ID: u8 = 0x01;

/// v2 address family and transport (byte 14) that we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Unspec,
    Tcp4,
    Tcp6,
    UnixStream,
}

impl Family {
    fn from_byte(byte: u8) -> Option<Self> {
        // UDP (0x12, 0x22, 0x32) makes no sense in front of a TCP proxy, so
        // it is rejected rather than downgraded to UNSPEC.
        match byte {
            0x00 => Some(Self::Unspec),
            0x11 => Some(Self::Tcp4),
            0x21 => Some(Self::Tcp6),
            0x31 => Some(Self::UnixStream),
            _ => None,
        }
    }

    /// The address block a `LOCAL` header may carry for the family byte
    /// `fam`, by its address-family nibble (the transport nibble does not
    /// change the layout). `None` for UNSPEC, which has none, and for
    /// families the spec does not define.
    fn local_address_len(fam: u8) -> Option<usize> {
        match fam >> 4 {
            0x1 => Some(Self::Tcp4.address_len()),
            0x2 => Some(Self::Tcp6.address_len()),
            0x3 => Some(Self::UnixStream.address_len()),
            _ => None,
        }
    }

    fn address_len(self) -> usize {
        match self {
            Self::Unspec => 0,
            Self::Tcp4 => 2 * 4 + 2 * 2,
            Self::Tcp6 => 2 * 16 + 2 * 2,
            Self::UnixStream => 2 * 108,
        }
    }

    /// Decodes the address block (`block.len() >= self.address_len()`).
    fn decode(self, block: &[u8]) -> Option<Addresses> {
        match self {
            Self::Unspec | Self::UnixStream => Some((None, None)),
            Self::Tcp4 => source_and_destination::<4, Ipv4Addr>(block),
            Self::Tcp6 => source_and_destination::<16, Ipv6Addr>(block),
        }
    }
}

/// The TCP address block: source address, destination address (`N` bytes
/// each), then source and destination ports, all in network order.
fn source_and_destination<const N: usize, A>(block: &[u8]) -> Option<Addresses>
where
    A: From<[u8; N]> + Into<IpAddr>,
{
    let (src, rest) = block.split_first_chunk::<N>()?;
    let (dst, rest) = rest.split_first_chunk::<N>()?;
    let ([s0, s1, d0, d1], _) = rest.split_first_chunk::<4>()?;
    let at = |ip: &[u8; N], port: [u8; 2]| {
        SocketAddr::new(A::from(*ip).into(), u16::from_be_bytes(port))
    };
    Some((Some(at(src, [*s0, *s1])), Some(at(dst, [*d0, *d1]))))
}

/// Parses a buffer that starts with the 12-byte v2 signature.
pub(super) fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, ParseError> {
    const INCOMPLETE: Parsed = Parsed::Incomplete {
        total: None,
        max_total: V2_FIXED_LEN,
    };
    // Each fixed byte is checked as soon as it arrives, to fail fast.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(INCOMPLETE);
    };
    let command = match (ver_cmd >> 4, ver_cmd & 0x0F) {
        (2, 0x0) => Command::Local,
        (2, 0x1) => Command::Proxy,
        (2, other) => return Err(ParseError::V2Command(other)),
        (version, _) => return Err(ParseError::V2Version(version)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(INCOMPLETE);
    };
    // For LOCAL the spec says to discard the protocol block "including the
    // family which is ignored", and senders should then send `len = 0`:
    // rejecting odd families there would fail load balancer health checks.
    // The address block is not interpreted; only a CRC32C TLV is looked for
    // (`verify_local_crc32c`).
    let family = match (command, Family::from_byte(fam)) {
        (Command::Local, _) => None,
        (Command::Proxy, Some(family)) => Some(family),
        (Command::Proxy, None) => return Err(ParseError::V2Family(fam)),
    };
    let Some(&[.., len_hi, len_lo]) = buf.first_chunk::<V2_FIXED_LEN>() else {
        return Ok(INCOMPLETE);
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len > limits.v2_max_payload {
        return Err(ParseError::V2TooLong {
            len,
            max: limits.v2_max_payload,
        });
    }
    let needed = family.map_or(0, Family::address_len);
    if len < needed {
        return Err(ParseError::V2TruncatedAddresses { len, needed });
    }
    let total = V2_FIXED_LEN + len;
    let Some((header, _application_data)) = buf.split_at_checked(total) else {
        return Ok(Parsed::Incomplete {
            total: Some(total),
            max_total: total,
        });
    };
    let mut parsed = ProxyHeader {
        version: Version::V2,
        command,
        source: None,
        destination: None,
        endpoint: None,
        crc32c_verified: false,
    };
    match family {
        Some(family) => {
            let truncated = ParseError::V2TruncatedAddresses { len, needed };
            let payload = header.get(V2_FIXED_LEN..).ok_or(truncated)?;
            let (block, tlvs) = payload.split_at_checked(needed).ok_or(truncated)?;
            (parsed.source, parsed.destination) = family.decode(block).ok_or(truncated)?;
            // The checksum is verified before vendor TLVs are interpreted so
            // that a corrupted header is reported as such, not as a bad TLV.
            parsed.crc32c_verified = verify_crc32c(header, V2_FIXED_LEN + needed, tlvs)?;
            parsed.endpoint = find_endpoint(tlvs)?;
        }
        // LOCAL: no addresses and no endpoint (the TCP peer is the client),
        // whatever the TLVs say; only their checksum counts.
        None => parsed.crc32c_verified = verify_local_crc32c(header, fam)?,
    }
    Ok(Parsed::Complete {
        header: parsed,
        consumed: total,
    })
}

/// One TLV; `value_at` is the value's offset within the TLV area.
struct Tlv<'a> {
    kind: u8,
    value: &'a [u8],
    value_at: usize,
}

/// Walks the TLV area, yielding an error (then stopping) on a TLV that
/// overruns it or on a trailing fragment too short to be a TLV.
struct Tlvs<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Tlvs<'a> {
    fn new(area: &'a [u8]) -> Self {
        Self {
            rest: area,
            offset: 0,
        }
    }
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<Tlv<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = self
            .rest
            .split_first_chunk::<3>()
            .and_then(|(&[kind, hi, lo], after)| {
                let (value, rest) =
                    after.split_at_checked(usize::from(u16::from_be_bytes([hi, lo])))?;
                Some((kind, value, rest))
            });
        let Some((kind, value, rest)) = parsed else {
            self.rest = &[];
            return Some(Err(ParseError::TlvOverrun));
        };
        let value_at = self.offset + 3;
        self.offset = value_at + value.len();
        self.rest = rest;
        Some(Ok(Tlv {
            kind,
            value,
            value_at,
        }))
    }
}

/// Validates the TLV framing and, if a CRC32C TLV is present, the checksum
/// over the whole `header` with the checksum field zeroed. `tlvs_at` is the
/// offset of the TLV area within `header`. Returns whether a CRC was checked.
fn verify_crc32c(header: &[u8], tlvs_at: usize, tlvs: &[u8]) -> Result<bool, ParseError> {
    let mut found = None;
    for tlv in Tlvs::new(tlvs) {
        let tlv = tlv?;
        if tlv.kind != TLV_CRC32C {
            continue;
        }
        if found.is_some() {
            return Err(ParseError::TlvDuplicate { tlv: TLV_CRC32C });
        }
        let value = <[u8; 4]>::try_from(tlv.value).map_err(|_| ParseError::Crc32cMalformed {
            len: tlv.value.len(),
        })?;
        found = Some((tlvs_at + tlv.value_at, u32::from_be_bytes(value)));
    }
    let Some((at, expected)) = found else {
        return Ok(false);
    };
    // The field lies inside `header` by construction; the fallbacks only
    // keep this function total.
    let (before, field_and_after) = header.split_at_checked(at).ok_or(ParseError::TlvOverrun)?;
    let after = field_and_after.get(4..).ok_or(ParseError::TlvOverrun)?;
    let computed = crc32c(&[before, &[0; 4], after]);
    if computed == expected {
        Ok(true)
    } else {
        Err(ParseError::Crc32cMismatch { expected, computed })
    }
}

/// Verifies the CRC32C TLV of a `LOCAL` header, if it has one; `header` is
/// the whole header and `fam` its family byte. Returns whether a CRC was
/// checked.
///
/// The spec has the receiver discard a `LOCAL` header's protocol block
/// (family included), yet a receiver that supports the checksum must verify
/// it and treat a mismatch as invalid. Where the TLVs start is then a
/// question of the sender:
///
/// - AWS NLB health checks (and HAProxy as a sender) use family UNSPEC and
///   put the TLVs right after the 16 fixed bytes, and HAProxy as a receiver
///   (`conn_recv_proxy` since 3.0: "BUG/MINOR: connection: parse PROXY TLV
///   for LOCAL mode") reads them there whatever the family byte says;
/// - a sender that fills the address block (a `PROXY` header whose command
///   nibble was flipped to `LOCAL` is laid out that way) puts them after
///   the block the family names.
///
/// So two places are tried, in this order: (a) after the address block of
/// the family's address-family nibble (TCP4 12 bytes, TCP6 36, UNIX 216),
/// when the payload holds one; (b) the start of the payload. For UNSPEC the
/// two are the same place. A place counts only if it parses as a TLV
/// sequence ending exactly at the header's end. Then:
///
/// - a CRC32C TLV that matches at either place: verified (a legitimate
///   header with a correct CRC is never refused);
/// - otherwise the first place that parses decides: its CRC32C TLV that does
///   not match, is not 4 bytes, or appears twice is an error, as for `PROXY`
///   headers (`crc32c_mismatch`, `crc32c_malformed`, `tlv_duplicate`); no
///   CRC32C TLV there: accepted unverified;
/// - neither place parses (a payload that is not a TLV area, e.g. garbage
///   after an odd family byte): there is no TLV to check, and the block is
///   discarded unread, as before.
///
/// A `PROXY` header with a CRC whose command nibble flipped to `LOCAL` is
/// caught: the first place tried ((a), or (b) for UNSPEC) is exactly the
/// layout its `PROXY` parse accepted, its CRC TLV is found there, and the
/// command byte the CRC covers has changed (only a 1-in-2^32 coincidence at
/// the other place could pass it). Vendor TLVs are not interpreted, nor
/// even validated, for `LOCAL`.
fn verify_local_crc32c(header: &[u8], fam: u8) -> Result<bool, ParseError> {
    let payload = header.get(V2_FIXED_LEN..).unwrap_or_default();
    let mut decision = None;
    for at in [Family::local_address_len(fam), Some(0)]
        .into_iter()
        .flatten()
    {
        let Some(tlvs) = payload.get(at..) else {
            continue;
        };
        if !Tlvs::new(tlvs).all(|tlv| tlv.is_ok()) {
            continue;
        }
        match verify_crc32c(header, V2_FIXED_LEN + at, tlvs) {
            Ok(true) => return Ok(true),
            other => {
                decision.get_or_insert(other);
            }
        }
    }
    decision.unwrap_or(Ok(false))
}

/// The private endpoint named by a vendor TLV. More than one such TLV would
/// leave the client's identity ambiguous, so that is an error.
fn find_endpoint(tlvs: &[u8]) -> Result<Option<PrivateEndpoint>, ParseError> {
    let mut endpoint = None;
    for tlv in Tlvs::new(tlvs) {
        let tlv = tlv?;
        if let Some(found) = vendor_endpoint(tlv.kind, tlv.value)?
            && endpoint.replace(found).is_some()
        {
            return Err(ParseError::TlvDuplicate { tlv: tlv.kind });
        }
    }
    Ok(endpoint)
}

/// Decodes a cloud vendor TLV; `None` for every other type, which is skipped
/// (NOOP, ALPN, authority, unique id, SSL, netns, unknown custom types).
fn vendor_endpoint(kind: u8, value: &[u8]) -> Result<Option<PrivateEndpoint>, ParseError> {
    let malformed = |reason| ParseError::TlvVendorMalformed { tlv: kind, reason };
    match kind {
        TLV_AWS => match value.split_first() {
            Some((&AWS_SUBTYPE_VPCE_ID, id)) => VpceId::parse(id)
                .map(|id| Some(PrivateEndpoint::AwsVpce(id)))
                .map_err(|e| {
                    malformed(match e {
                        VpceIdError::Empty => "empty VPC endpoint id",
                        VpceIdError::TooLong => "VPC endpoint id too long",
                        VpceIdError::BadByte => "bad byte in VPC endpoint id",
                    })
                }),
            Some(_) => Err(malformed("unknown AWS subtype")),
            None => Err(malformed("empty AWS TLV")),
        },
        TLV_AZURE => match value {
            &[AZURE_SUBTYPE_LINK_ID, a, b, c, d] => {
                Ok(Some(PrivateEndpoint::AzureLinkId(u32::from_le_bytes([
                    a, b, c, d,
                ]))))
            }
            _ => Err(malformed("expected subtype 0x01 and a 4-byte LinkID")),
        },
        TLV_GCP => <[u8; 8]>::try_from(value)
            .map(|id| Some(PrivateEndpoint::GcpPscConnectionId(u64::from_be_bytes(id))))
            .map_err(|_| malformed("expected an 8-byte PSC connection id")),
        _ => Ok(None),
    }
}

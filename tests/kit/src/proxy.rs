//! PROXY protocol headers, built byte by byte: v1 text lines and v2 binary
//! headers with TLVs, the CRC32C TLV (right, wrong or absent) and the
//! private endpoint TLVs of the three clouds (SPEC §1.5; AWS `0xEA`, Azure
//! `0xEE`, GCP `0xE0`).
//!
//! Written from the protocol description, not from the proxy's parser, so
//! that feeding these bytes to the parser checks it. The builder can also
//! make headers no sender should (odd family bytes, an address block of any
//! length) for hostile-input tests and fuzz seeds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// CRC32C (Castagnoli) over a whole header.
pub use crc32c::crc32c;

pub const V1_SIGNATURE: &[u8; 6] = b"PROXY ";
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Command nibble: a health check from the load balancer itself.
pub const LOCAL: u8 = 0x0;
/// Command nibble: a relayed connection.
pub const PROXY: u8 = 0x1;
pub const FAMILY_UNSPEC: u8 = 0x00;
pub const FAMILY_TCP4: u8 = 0x11;
pub const FAMILY_TCP6: u8 = 0x21;
pub const FAMILY_UNIX: u8 = 0x31;

pub const TLV_CRC32C: u8 = 0x03;
pub const TLV_GCP: u8 = 0xE0;
pub const TLV_AWS: u8 = 0xEA;
pub const TLV_AZURE: u8 = 0xEE;
/// Subtype byte of the AWS and Azure TLVs: "endpoint id".
const SUBTYPE_ENDPOINT_ID: u8 = 0x01;

/// Where [`V2::from`] and [`v1_from`] say the connection went.
const DEFAULT_SOURCE_PORT: u16 = 40000;
const DEFAULT_DESTINATION_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DEFAULT_DESTINATION_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const DEFAULT_DESTINATION_PORT: u16 = 9243;

/// A private endpoint identity, as a vendor TLV carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    AwsVpce(String),
    AzureLinkId(u32),
    GcpPscId(u64),
}

/// Whether a v2 header carries a CRC32C TLV, and a correct one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crc {
    None,
    Good,
    /// Present, with one bit flipped.
    Bad,
}

/// A PROXY v2 header under construction.
#[derive(Debug, Clone)]
pub struct V2 {
    command: u8,
    family: u8,
    addresses: Vec<u8>,
    tlvs: Vec<(u8, Vec<u8>)>,
    crc: Crc,
}

impl V2 {
    /// `PROXY` from `src` to `dst`, TCP4 or TCP6 by their family.
    ///
    /// Panics when the families differ: a v2 header has one family for both,
    /// so that is a bug in the caller.
    pub fn proxy(src: SocketAddr, dst: SocketAddr) -> Self {
        let mut addresses = Vec::with_capacity(36);
        let family = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                addresses.extend_from_slice(&s.octets());
                addresses.extend_from_slice(&d.octets());
                FAMILY_TCP4
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                addresses.extend_from_slice(&s.octets());
                addresses.extend_from_slice(&d.octets());
                FAMILY_TCP6
            }
            _ => panic!("source {src} and destination {dst}: families differ"),
        };
        addresses.extend_from_slice(&src.port().to_be_bytes());
        addresses.extend_from_slice(&dst.port().to_be_bytes());
        Self {
            command: PROXY,
            family,
            addresses,
            tlvs: Vec::new(),
            crc: Crc::None,
        }
    }

    /// `PROXY` from `src` (port 40000) to a fixed destination of the same
    /// family (`10.0.0.1:9243` or `[fd00::1]:9243`).
    pub fn from(src: impl Into<IpAddr>) -> Self {
        let (src, dst) = default_route(src.into());
        Self::proxy(src, dst)
    }

    /// `LOCAL` (a load balancer health check), family UNSPEC, no address
    /// block.
    pub fn local() -> Self {
        Self {
            command: LOCAL,
            family: FAMILY_UNSPEC,
            addresses: Vec::new(),
            tlvs: Vec::new(),
            crc: Crc::None,
        }
    }

    /// Replaces the command nibble ([`LOCAL`], [`PROXY`] or any other).
    pub fn command(mut self, command: u8) -> Self {
        self.command = command;
        self
    }

    /// Replaces the family byte, whether or not it fits the addresses.
    pub fn family(mut self, family: u8) -> Self {
        self.family = family;
        self
    }

    /// Replaces the address block with `bytes`, as they are.
    pub fn addresses(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.addresses = bytes.into();
        self
    }

    pub fn tlv(mut self, kind: u8, value: impl Into<Vec<u8>>) -> Self {
        self.tlvs.push((kind, value.into()));
        self
    }

    /// AWS PrivateLink: `0xEA`, subtype `0x01`, the id in ASCII.
    pub fn aws_vpce(self, id: &str) -> Self {
        self.tlv(TLV_AWS, [&[SUBTYPE_ENDPOINT_ID], id.as_bytes()].concat())
    }

    /// Azure Private Link: `0xEE`, subtype `0x01`, LinkID little-endian.
    pub fn azure_link_id(self, id: u32) -> Self {
        self.tlv(
            TLV_AZURE,
            [&[SUBTYPE_ENDPOINT_ID][..], &id.to_le_bytes()].concat(),
        )
    }

    /// GCP Private Service Connect: `0xE0`, the connection id big-endian,
    /// no subtype.
    pub fn gcp_psc(self, id: u64) -> Self {
        self.tlv(TLV_GCP, id.to_be_bytes())
    }

    pub fn endpoint(self, endpoint: &Endpoint) -> Self {
        match endpoint {
            Endpoint::AwsVpce(id) => self.aws_vpce(id),
            Endpoint::AzureLinkId(id) => self.azure_link_id(*id),
            Endpoint::GcpPscId(id) => self.gcp_psc(*id),
        }
    }

    /// A CRC32C TLV after the others (or none).
    pub fn crc(mut self, crc: Crc) -> Self {
        self.crc = crc;
        self
    }

    /// The header's bytes. Panics if the payload passes the 16-bit length
    /// field: no test needs that, and the field could not say so.
    pub fn build(&self) -> Vec<u8> {
        let mut payload = self.addresses.clone();
        for (kind, value) in &self.tlvs {
            push_tlv(&mut payload, *kind, value);
        }
        let crc_at = (self.crc != Crc::None).then(|| {
            push_tlv(&mut payload, TLV_CRC32C, &[0; 4]);
            16 + payload.len() - 4
        });
        let mut out = Vec::with_capacity(16 + payload.len());
        out.extend_from_slice(V2_SIGNATURE);
        out.push(0x20 | self.command);
        out.push(self.family);
        let len = u16::try_from(payload.len()).expect("payload fits the length field");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        // The checksum covers the whole header with its own value zeroed.
        if let Some(at) = crc_at {
            let mut crc = crc32c(&out);
            if self.crc == Crc::Bad {
                crc ^= 0x0000_0100;
            }
            out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        }
        out
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    let len = u16::try_from(value.len()).expect("TLV value fits its length field");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// A PROXY v1 line: `PROXY TCP4|TCP6 src dst sport dport\r\n` (the family
/// is the source's). v1 cannot carry endpoints.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v1 line from `ip` (port 40000) to the fixed destination of [`V2::from`].
pub fn v1_from(ip: impl Into<IpAddr>) -> Vec<u8> {
    let (src, dst) = default_route(ip.into());
    v1(src, dst)
}

fn default_route(src: IpAddr) -> (SocketAddr, SocketAddr) {
    let dst: IpAddr = match src {
        IpAddr::V4(_) => DEFAULT_DESTINATION_V4.into(),
        IpAddr::V6(_) => DEFAULT_DESTINATION_V6.into(),
    };
    (
        SocketAddr::new(src, DEFAULT_SOURCE_PORT),
        SocketAddr::new(dst, DEFAULT_DESTINATION_PORT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis::endpoint::PrivateEndpoint;
    use portcullis::proxy_protocol::{Command, Limits, Parsed, ProxyHeader, Version, parse};

    fn parsed(bytes: &[u8]) -> ProxyHeader {
        match parse(bytes, &Limits::default()) {
            Ok(Parsed::Complete { header, consumed }) => {
                assert_eq!(consumed, bytes.len());
                header
            }
            other => panic!("not a complete header: {other:?}"),
        }
    }

    fn endpoint_text(e: &PrivateEndpoint) -> String {
        match e {
            PrivateEndpoint::AwsVpce(id) => format!("aws:{id}"),
            PrivateEndpoint::AzureLinkId(id) => format!("azure:{id}"),
            PrivateEndpoint::GcpPscConnectionId(id) => format!("gcp:{id}"),
        }
    }

    #[test]
    fn v2_round_trips_through_the_portcullis_parser() {
        let cases = [
            (
                "203.0.113.9:4000",
                Some(Endpoint::AwsVpce("vpce-0a1b2c3d4e5f67890".into())),
                "aws:vpce-0a1b2c3d4e5f67890",
            ),
            ("[2001:db8::7:1]:5", None, ""),
            (
                "[2001:db8::7]:5",
                Some(Endpoint::AzureLinkId(16_777_301)),
                "azure:16777301",
            ),
            (
                "198.51.100.1:65535",
                Some(Endpoint::GcpPscId(18_446_744_072_646_845_332)),
                "gcp:18446744072646845332",
            ),
        ];
        for crc in [Crc::None, Crc::Good] {
            for (source, endpoint, expected) in &cases {
                let source: SocketAddr = source.parse().unwrap();
                let (_, dst) = default_route(source.ip());
                let mut v2 = V2::proxy(source, dst).crc(crc);
                if let Some(e) = endpoint {
                    v2 = v2.endpoint(e);
                }
                let header = parsed(&v2.build());
                assert_eq!(header.version, Version::V2);
                assert_eq!(header.command, Command::Proxy);
                assert_eq!(header.source, Some(source));
                assert_eq!(header.destination, Some(dst));
                assert_eq!(header.crc32c_verified, crc == Crc::Good);
                let got = header.endpoint.as_ref().map(endpoint_text);
                assert_eq!(got.as_deref().unwrap_or(""), *expected);
            }
        }
    }

    #[test]
    fn a_bad_crc_and_a_local_header_are_read_as_such() {
        let bad = V2::from(Ipv4Addr::new(203, 0, 113, 7)).crc(Crc::Bad);
        assert!(parse(&bad.build(), &Limits::default()).is_err());
        let local = parsed(&V2::local().crc(Crc::Good).build());
        assert_eq!(local.command, Command::Local);
        assert!(local.crc32c_verified);
    }

    #[test]
    fn v1_round_trips_through_the_portcullis_parser() {
        for source in ["203.0.113.9", "2001:db8::7"] {
            let ip: IpAddr = source.parse().unwrap();
            let header = parsed(&v1_from(ip));
            assert_eq!(header.version, Version::V1);
            assert_eq!(
                header.source,
                Some(SocketAddr::new(ip, DEFAULT_SOURCE_PORT))
            );
        }
    }
}

//! Who each connection claims to be: PROXY v1/v2 header bytes (pure) and
//! the per-connection choice of source address and private endpoint.
//!
//! Sources are drawn from the `--source` CIDRs, or with probability
//! `--denied-share` from the `--denied-source` ones, so a run can mix allowed
//! and denied clients. Endpoint TLVs (AWS `0xEA`, Azure `0xEE`, GCP `0xE0`,
//! SPEC §1.5) are attached to `--endpoint-share` of the connections, cycling
//! through the configured ids.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use portcullis::synth::Rng;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const TLV_AWS: u8 = 0xEA;
const TLV_AZURE: u8 = 0xEE;
const TLV_GCP: u8 = 0xE0;
/// Subtype byte of the AWS and Azure TLVs.
const SUBTYPE_ENDPOINT_ID: u8 = 0x01;

/// A private endpoint identity carried in a vendor TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    AwsVpce(String),
    AzureLinkId(u32),
    GcpPscId(u64),
}

/// What one connection presents to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub source: SocketAddr,
    /// Drawn from the denied ranges.
    pub denied: bool,
    pub endpoint: Option<Endpoint>,
}

/// Picks client identities; one per connection.
#[derive(Debug, Clone)]
pub struct Sources {
    allowed: Vec<IpNet>,
    denied: Vec<IpNet>,
    /// Parts per million of connections drawn from `denied`.
    denied_ppm: usize,
    endpoints: Vec<Endpoint>,
    endpoint_ppm: usize,
}

impl Sources {
    /// `denied_share` and `endpoint_share` are percentages (0–100).
    pub fn new(
        allowed: Vec<IpNet>,
        denied: Vec<IpNet>,
        denied_share: f64,
        endpoints: Vec<Endpoint>,
        endpoint_share: f64,
    ) -> Result<Self, String> {
        if allowed.is_empty() && (denied.is_empty() || denied_share < 100.0) {
            return Err("at least one --source CIDR is needed".into());
        }
        if denied_share > 0.0 && denied.is_empty() {
            return Err("--denied-share needs at least one --denied-source CIDR".into());
        }
        Ok(Self {
            allowed,
            denied,
            denied_ppm: share_ppm(denied_share)?,
            endpoints,
            endpoint_ppm: share_ppm(endpoint_share)?,
        })
    }

    /// The identity for connection number `serial`.
    pub fn pick(&self, rng: &mut Rng, serial: u64) -> ClientIdentity {
        let denied = rng.below(1_000_000) < self.denied_ppm;
        let nets = if denied { &self.denied } else { &self.allowed };
        let net = nets[rng.below(nets.len())];
        let port = 1024 + rng.below(64_512) as u16;
        let endpoint = (!self.endpoints.is_empty() && rng.below(1_000_000) < self.endpoint_ppm)
            .then(|| self.endpoints[(serial % self.endpoints.len() as u64) as usize].clone());
        ClientIdentity {
            source: SocketAddr::new(random_in(net, rng), port),
            denied,
            endpoint,
        }
    }
}

fn share_ppm(percent: f64) -> Result<usize, String> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("share {percent} is not a percentage (0-100)"));
    }
    Ok((percent * 10_000.0).round() as usize)
}

/// A uniformly random address inside `net`.
pub fn random_in(net: IpNet, rng: &mut Rng) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = u32::from(n.hostmask()) & rng.next_u64() as u32;
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
        }
        IpNet::V6(n) => {
            let r = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            let host = u128::from(n.hostmask()) & r;
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
        }
    }
}

/// The destination to announce: the real target, converted to the source's
/// family (a v2 header carries one family for both addresses).
fn destination_like(source: SocketAddr, target: SocketAddr) -> SocketAddr {
    let ip = match (source.ip(), target.ip()) {
        (IpAddr::V4(_), IpAddr::V4(t)) => IpAddr::V4(t),
        (IpAddr::V6(_), IpAddr::V6(t)) => IpAddr::V6(t),
        (IpAddr::V6(_), IpAddr::V4(t)) => IpAddr::V6(t.to_ipv6_mapped()),
        (IpAddr::V4(_), IpAddr::V6(t)) => {
            IpAddr::V4(t.to_ipv4_mapped().unwrap_or(Ipv4Addr::LOCALHOST))
        }
    };
    SocketAddr::new(ip, target.port())
}

/// A PROXY v2 `PROXY` header for a TCP connection from `client` to `target`.
pub fn v2(client: &ClientIdentity, target: SocketAddr) -> Vec<u8> {
    let dst = destination_like(client.source, target);
    let mut payload = Vec::with_capacity(64);
    let family = match (client.source.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            payload.extend_from_slice(&s.octets());
            payload.extend_from_slice(&d.octets());
            V2_TCP4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            payload.extend_from_slice(&s.octets());
            payload.extend_from_slice(&d.octets());
            V2_TCP6
        }
        // `destination_like` always returns the source's family.
        _ => unreachable!("mixed address families"),
    };
    payload.extend_from_slice(&client.source.port().to_be_bytes());
    payload.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(endpoint) = &client.endpoint {
        let (kind, value) = match endpoint {
            Endpoint::AwsVpce(id) => {
                let mut v = vec![SUBTYPE_ENDPOINT_ID];
                v.extend_from_slice(id.as_bytes());
                (TLV_AWS, v)
            }
            Endpoint::AzureLinkId(id) => {
                let mut v = vec![SUBTYPE_ENDPOINT_ID];
                v.extend_from_slice(&id.to_le_bytes());
                (TLV_AZURE, v)
            }
            Endpoint::GcpPscId(id) => (TLV_GCP, id.to_be_bytes().to_vec()),
        };
        payload.push(kind);
        // Endpoint ids are checked to be short when parsed (`parse_endpoint`).
        payload.extend_from_slice(&(value.len() as u16).to_be_bytes());
        payload.extend_from_slice(&value);
    }
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(V2_SIGNATURE);
    out.push(V2_PROXY);
    out.push(family);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A PROXY v1 text header (no TLVs: v1 cannot carry endpoints).
pub fn v1(client: &ClientIdentity, target: SocketAddr) -> Vec<u8> {
    let dst = destination_like(client.source, target);
    let family = if client.source.is_ipv4() {
        "TCP4"
    } else {
        "TCP6"
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.source.ip(),
        dst.ip(),
        client.source.port(),
        dst.port()
    )
    .into_bytes()
}

/// `aws:vpce-…`, `azure:LINKID` or `gcp:PSCID`.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let (kind, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected aws:ID, azure:LINKID or gcp:ID"))?;
    match kind {
        "aws" if !value.is_empty() && value.len() <= 255 && value.is_ascii() => {
            Ok(Endpoint::AwsVpce(value.to_owned()))
        }
        "azure" => value
            .parse()
            .map(Endpoint::AzureLinkId)
            .map_err(|e| format!("{s:?}: {e}")),
        "gcp" => value
            .parse()
            .map(Endpoint::GcpPscId)
            .map_err(|e| format!("{s:?}: {e}")),
        _ => Err(format!(
            "{s:?}: expected aws:ID (ASCII, 1-255 bytes), azure:LINKID or gcp:ID"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis::endpoint::PrivateEndpoint;
    use portcullis::proxy_protocol::{Command, Limits, Parsed, Version, parse};

    fn target() -> SocketAddr {
        "127.0.0.1:9243".parse().unwrap()
    }

    fn parsed(bytes: &[u8]) -> portcullis::proxy_protocol::ProxyHeader {
        match parse(bytes, &Limits::default()) {
            Ok(Parsed::Complete { header, consumed }) => {
                assert_eq!(consumed, bytes.len());
                header
            }
            other => panic!("not a complete header: {other:?}"),
        }
    }

    #[test]
    fn v2_round_trips_through_the_portcullis_parser() {
        let cases = [
            (
                "203.0.113.9:4000",
                Some(Endpoint::AwsVpce("vpce-0a1b2c3d4e5f67890".into())),
            ),
            ("[2001:db8::7:1]:5", None),
            ("[2001:db8::7]:5", Some(Endpoint::AzureLinkId(16_777_301))),
            (
                "198.51.100.1:65535",
                Some(Endpoint::GcpPscId(18_446_744_072_646_845_332)),
            ),
        ];
        for (source, endpoint) in cases {
            let source: SocketAddr = source.parse().unwrap();
            let client = ClientIdentity {
                source,
                denied: false,
                endpoint: endpoint.clone(),
            };
            let header = parsed(&v2(&client, target()));
            assert_eq!(header.version, Version::V2);
            assert_eq!(header.command, Command::Proxy);
            assert_eq!(header.source, Some(source));
            assert_eq!(header.destination.map(|d| d.port()), Some(9243));
            let expected = endpoint.map(|e| match e {
                Endpoint::AwsVpce(id) => format!("aws:{id}"),
                Endpoint::AzureLinkId(id) => format!("azure:{id}"),
                Endpoint::GcpPscId(id) => format!("gcp:{id}"),
            });
            let got = header.endpoint.map(|e| match e {
                PrivateEndpoint::AwsVpce(id) => format!("aws:{id}"),
                PrivateEndpoint::AzureLinkId(id) => format!("azure:{id}"),
                PrivateEndpoint::GcpPscConnectionId(id) => format!("gcp:{id}"),
            });
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn v1_round_trips_through_the_portcullis_parser() {
        for source in ["203.0.113.9:4000", "[2001:db8::7]:5"] {
            let source: SocketAddr = source.parse().unwrap();
            let client = ClientIdentity {
                source,
                denied: false,
                endpoint: None,
            };
            let header = parsed(&v1(&client, target()));
            assert_eq!(header.version, Version::V1);
            assert_eq!(header.source, Some(source));
        }
    }

    #[test]
    fn sources_stay_inside_their_ranges_and_honour_the_denied_share() {
        let allowed: IpNet = "203.0.113.0/24".parse().unwrap();
        let denied: IpNet = "198.18.0.0/15".parse().unwrap();
        let sources = Sources::new(vec![allowed], vec![denied], 25.0, vec![], 0.0).unwrap();
        let mut rng = Rng::new(7);
        let mut denied_count = 0;
        let mut distinct = std::collections::HashSet::new();
        for i in 0..10_000 {
            let c = sources.pick(&mut rng, i);
            let net = if c.denied { denied } else { allowed };
            assert!(net.contains(&c.source.ip()), "{c:?}");
            denied_count += usize::from(c.denied);
            distinct.insert(c.source.ip());
            assert!(c.endpoint.is_none());
        }
        assert!((2_000..3_000).contains(&denied_count), "{denied_count}");
        // Nearly all of the /24 plus ~2500 distinct picks from the /15.
        assert!(distinct.len() > 2_600, "{}", distinct.len());
    }

    #[test]
    fn endpoints_cycle_over_the_configured_share() {
        let sources = Sources::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            vec![],
            0.0,
            vec![Endpoint::AzureLinkId(1), Endpoint::GcpPscId(2)],
            100.0,
        )
        .unwrap();
        let mut rng = Rng::new(1);
        assert_eq!(
            sources.pick(&mut rng, 0).endpoint,
            Some(Endpoint::AzureLinkId(1))
        );
        assert_eq!(
            sources.pick(&mut rng, 1).endpoint,
            Some(Endpoint::GcpPscId(2))
        );
    }

    #[test]
    fn endpoint_arguments() {
        assert_eq!(
            parse_endpoint("aws:vpce-1"),
            Ok(Endpoint::AwsVpce("vpce-1".into()))
        );
        assert_eq!(parse_endpoint("azure:5"), Ok(Endpoint::AzureLinkId(5)));
        assert!(parse_endpoint("gcp:x").is_err());
        assert!(parse_endpoint("aws:").is_err());
        assert!(parse_endpoint("vpce-1").is_err());
        assert!(Sources::new(vec![], vec![], 0.0, vec![], 0.0).is_err());
        assert!(
            Sources::new(
                vec!["10.0.0.0/8".parse().unwrap()],
                vec![],
                5.0,
                vec![],
                0.0
            )
            .is_err()
        );
    }
}

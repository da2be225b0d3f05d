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
pub use portcullis_test_kit::proxy::Endpoint;
use portcullis_test_kit::proxy::{self, V2};
use portcullis_test_kit::synth::Rng;

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
    let header = V2::proxy(client.source, destination_like(client.source, target));
    match &client.endpoint {
        Some(endpoint) => header.endpoint(endpoint).build(),
        None => header.build(),
    }
}

/// A PROXY v1 text header (no TLVs: v1 cannot carry endpoints).
pub fn v1(client: &ClientIdentity, target: SocketAddr) -> Vec<u8> {
    proxy::v1(client.source, destination_like(client.source, target))
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
    fn headers_announce_the_target_in_the_source_family() {
        let cases = [
            ("203.0.113.9:4000", "127.0.0.1:9243"),
            ("[2001:db8::7]:5", "[::ffff:127.0.0.1]:9243"),
        ];
        for (source, destination) in cases {
            let source: SocketAddr = source.parse().unwrap();
            let destination: SocketAddr = destination.parse().unwrap();
            let client = ClientIdentity {
                source,
                denied: false,
                endpoint: Some(Endpoint::GcpPscId(7)),
            };
            let header = parsed(&v2(&client, target()));
            assert_eq!(header.version, Version::V2);
            assert_eq!(header.command, Command::Proxy);
            assert_eq!(
                (header.source, header.destination),
                (Some(source), Some(destination))
            );
            assert_eq!(
                header.endpoint,
                Some(PrivateEndpoint::GcpPscConnectionId(7))
            );
            let header = parsed(&v1(&client, target()));
            assert_eq!(header.version, Version::V1);
            assert_eq!(
                (header.source, header.destination),
                (Some(source), Some(destination))
            );
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

//! Synthetic snapshots for benches and load tests.
//!
//! Deterministic for a given seed (own SplitMix64, so output does not change
//! with a dependency's version). Shapes follow what a hosted fleet looks
//! like: most deployments have zero or one IP policy, policies hold 1–128
//! rules skewed small, prefixes are mostly /24–/32 with some /16–/23 and a
//! share of IPv6, a few organisation-wide policies are shared by many
//! deployments, and private endpoints of all three clouds sit in policies
//! of their own provider's regions.
//!
//! Generated rules never cover [`MISS_V4`] or [`MISS_V6`], so benches and
//! tests can build requests that are certain to miss.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use portcullis::policy::{
    AzureRule, Deployment, Enforcement, GcpRule, IpRule, Policy, Product, Provider, Region,
    Resource, Rules, Snapshot, VpceRule,
};

/// IPv4 block no generated rule covers (RFC 2544 benchmarking range).
pub const MISS_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15);
/// IPv6 block no generated rule covers.
pub const MISS_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0), 48);

/// How big a snapshot to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub deployments: usize,
    pub ip_rules: usize,
    pub endpoint_ids: usize,
}

impl Scale {
    pub const SMALL: Scale = Scale {
        deployments: 100,
        ip_rules: 1_000,
        endpoint_ids: 100,
    };
    pub const MEDIUM: Scale = Scale {
        deployments: 10_000,
        ip_rules: 100_000,
        endpoint_ids: 10_000,
    };
    pub const LARGE: Scale = Scale {
        deployments: 100_000,
        ip_rules: 1_000_000,
        endpoint_ids: 100_000,
    };

    pub fn named(name: &str) -> Option<Scale> {
        match name {
            "small" => Some(Self::SMALL),
            "medium" => Some(Self::MEDIUM),
            "large" => Some(Self::LARGE),
            _ => None,
        }
    }
}

/// SplitMix64: tiny, fast, statistically fine for synthetic data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; 0 for n == 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const REGIONS: [(&str, usize); 5] = [
    ("aws-us-east-1", 35),
    ("aws-eu-west-1", 25),
    ("azure-eastus2", 20),
    ("gcp-us-central1", 15),
    ("gcp-europe-west1", 5),
];

/// Generates a snapshot of about `scale` (exact rule and endpoint counts).
pub fn generate(scale: Scale, seed: u64) -> Snapshot {
    let mut rng = Rng::new(seed);
    let regions: Vec<Region> = REGIONS
        .iter()
        .filter_map(|(r, _)| Region::parse(r))
        .collect();

    // Policies, per region: IP policies until the rule budget is spent,
    // then private connection policies until the endpoint budget is spent.
    let mut policies = Vec::new();
    let mut ip_by_region: Vec<Vec<usize>> = vec![Vec::new(); regions.len()];
    let mut private_by_region: Vec<Vec<usize>> = vec![Vec::new(); regions.len()];
    let mut left = scale.ip_rules;
    while left > 0 {
        let n = policy_size(&mut rng).min(left);
        left -= n;
        let r = pick_region(&mut rng);
        let rules = (0..n).map(|_| ip_rule(&mut rng)).collect();
        ip_by_region[r].push(policies.len());
        policies.push(policy(policies.len(), &regions[r], Rules::Ip(rules)));
    }
    let mut left = scale.endpoint_ids;
    let mut serial = 0u64;
    while left > 0 {
        let n = (1 + rng.below(8)).min(left);
        left -= n;
        let r = pick_region(&mut rng);
        let rules = (0..n)
            .map(|_| {
                serial += 1;
                private_rule(&regions[r], serial, &mut rng)
            })
            .collect::<Vec<_>>();
        let rules = match regions[r].provider() {
            Provider::Aws => Rules::Vpce(rules.into_iter().filter_map(PrivateRule::vpce).collect()),
            Provider::Azure => {
                Rules::Azure(rules.into_iter().filter_map(PrivateRule::azure).collect())
            }
            Provider::Gcp => Rules::Gcp(rules.into_iter().filter_map(PrivateRule::gcp).collect()),
        };
        private_by_region[r].push(policies.len());
        policies.push(policy(policies.len(), &regions[r], rules));
    }

    let deployments = (0..scale.deployments)
        .map(|i| {
            let r = pick_region(&mut rng);
            let mut assoc = Vec::new();
            let ip = &ip_by_region[r];
            let private = &private_by_region[r];
            // 30% open; 50% one IP policy; 10% IP + private; 10% private.
            let roll = rng.below(100);
            if (30..90).contains(&roll) && !ip.is_empty() {
                // A fifth of them use one of the region's first few
                // policies: organisation-wide lists shared by many.
                let k = if rng.chance(20) {
                    rng.below(ip.len().min(8))
                } else {
                    rng.below(ip.len())
                };
                assoc.push(policies_id(ip[k]));
            }
            if roll >= 80 && !private.is_empty() {
                assoc.push(policies_id(private[rng.below(private.len())]));
            }
            deployment(i, &regions[r], assoc, &mut rng)
        })
        .collect();

    Snapshot {
        version: 1,
        deployments,
        policies,
    }
}

fn pick_region(rng: &mut Rng) -> usize {
    let mut roll = rng.below(100);
    for (i, (_, weight)) in REGIONS.iter().enumerate() {
        if roll < *weight {
            return i;
        }
        roll -= weight;
    }
    0
}

/// 1–128 rules, skewed small: half ≤ 8, 30% 9–32, 20% 33–128.
fn policy_size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=4 => 1 + rng.below(8),
        5..=7 => 9 + rng.below(24),
        _ => 33 + rng.below(96),
    }
}

fn policies_id(i: usize) -> String {
    format!("policy-{i:06}")
}

fn policy(i: usize, region: &Region, rules: Rules) -> Policy {
    Policy {
        id: policies_id(i),
        name: None,
        description: None,
        region: region.clone(),
        include_by_default: Some(false),
        rules,
    }
}

fn ip_rule(rng: &mut Rng) -> IpRule {
    let source = if rng.chance(15) {
        // /32–/128, mostly the customary /48, /56, /64 and single hosts.
        let len = [32u8, 48, 48, 56, 56, 64, 64, 64, 128, 128][rng.below(10)];
        let mut a = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        a = (a & !(0xffffu128 << 112)) | (0x2a00u128 << 112); // 2a00::/16, global unicast
        let net = Ipv6Net::new_assert(Ipv6Addr::from(a), len).trunc();
        IpNet::V6(net)
    } else {
        // /16–/32, mostly /32 and /24.
        let len = [32u8, 32, 32, 32, 24, 24, 24, 28, 20, 16][rng.below(10)];
        let mut a = rng.next_u64() as u32;
        // Public-looking first octet, never 198.18/15 (MISS_V4) or
        // 10/8 (backend addresses).
        let first = [13u32, 34, 52, 63, 81, 91, 104, 151, 185, 203][rng.below(10)];
        a = (a & 0x00ff_ffff) | (first << 24);
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(a), len).trunc())
    };
    IpRule {
        source,
        description: rng.chance(30).then(|| "office".to_owned()),
    }
}

enum PrivateRule {
    Vpce(String),
    Azure(u32),
    Gcp(u64),
}

impl PrivateRule {
    fn vpce(self) -> Option<VpceRule> {
        match self {
            Self::Vpce(source) => Some(VpceRule {
                source,
                description: None,
            }),
            _ => None,
        }
    }
    fn azure(self) -> Option<AzureRule> {
        match self {
            Self::Azure(link_id) => Some(AzureRule {
                link_id,
                azure_endpoint_name: Some(format!("pe-{link_id}")),
                azure_endpoint_guid: None,
                description: None,
            }),
            _ => None,
        }
    }
    fn gcp(self) -> Option<GcpRule> {
        match self {
            Self::Gcp(source) => Some(GcpRule {
                source,
                description: None,
            }),
            _ => None,
        }
    }
}

/// `serial` makes ids unique; the random part makes them look real.
fn private_rule(region: &Region, serial: u64, rng: &mut Rng) -> PrivateRule {
    match region.provider() {
        Provider::Aws => PrivateRule::Vpce(format!(
            "vpce-{:05x}{:012x}",
            serial & 0xf_ffff,
            rng.next_u64() & 0xffff_ffff_ffff
        )),
        Provider::Azure => PrivateRule::Azure(0x0100_0000 | (serial as u32 & 0x00ff_ffff)),
        Provider::Gcp => PrivateRule::Gcp((rng.next_u64() << 20) | (serial & 0xf_ffff)),
    }
}

fn deployment(i: usize, region: &Region, policies: Vec<String>, rng: &mut Rng) -> Deployment {
    let id = format!("{:016x}{:016x}", rng.next_u64(), i as u64);
    let alias = rng
        .chance(50)
        .then(|| format!("deployment-{i}-{}", &id[..6]));
    let mut resources = BTreeMap::new();
    resources.insert(Product::Es, resource(3, rng));
    if rng.chance(70) {
        resources.insert(Product::Kb, resource(1, rng));
    }
    if rng.chance(20) {
        resources.insert(Product::Apm, resource(1, rng));
    }
    Deployment {
        id,
        alias,
        region: region.clone(),
        enforcement: if rng.chance(2) {
            Enforcement::DryRun
        } else {
            Enforcement::Enforce
        },
        resources,
        policies,
    }
}

fn resource(nodes: usize, rng: &mut Rng) -> Resource {
    let mut backends: Vec<SocketAddr> = Vec::with_capacity(nodes);
    while backends.len() < nodes {
        let a = 0x0a00_0000 | (rng.next_u64() as u32 & 0x00ff_ffff);
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), 9200);
        if !backends.contains(&addr) {
            backends.push(addr);
        }
    }
    Resource { backends }
}

//! Property test: the compiled matcher agrees with a naive linear reference
//! on random snapshots — nested and overlapping prefixes, /0, /32, /128,
//! IPv4-mapped addresses and rules, empty and record-only policies, all
//! three private endpoint kinds, both `unassociated_private_traffic` modes.
//!
//! Snapshots go through JSON and the validator first, so canonicalisation
//! (mapped rules become IPv4) is covered as well.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portcullis::endpoint::{ClientIdentity, PrivateEndpoint, VpceId};
use portcullis::policy::{
    AzureRule, Deployment, Enforcement, GcpRule, IpRule, Policy, PolicyOptions, PolicySet, Product,
    Region, RequestFacts, Resource, Rules, Snapshot, Target, UnassociatedPrivateTraffic, Verdict,
    VpceRule, decide, parse_snapshot,
};
use portcullis::route::Router;
// The naive linear reference, shared with the snapshot fuzz target.
use portcullis_test_kit::oracle::reference;
use proptest::prelude::*;

pub(super) const V4_BASES: [Ipv4Addr; 6] = [
    Ipv4Addr::new(0, 0, 0, 0),
    Ipv4Addr::new(10, 0, 0, 0),
    Ipv4Addr::new(10, 1, 2, 3),
    Ipv4Addr::new(10, 1, 2, 200),
    Ipv4Addr::new(192, 168, 255, 255),
    Ipv4Addr::new(255, 255, 255, 255),
];
pub(super) const V6_BASES: [Ipv6Addr; 6] = [
    Ipv6Addr::UNSPECIFIED,
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0),
    Ipv6Addr::new(
        0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
    ),
    // IPv4-mapped 10.1.2.3 and 192.168.255.255
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc0a8, 0xffff),
];
const VPCE: [&str; 3] = ["vpce-aaa111", "vpce-bbb222", "vpce-ccc333"];
const AZURE: [u32; 3] = [0, 16777301, u32::MAX];
const GCP: [u64; 3] = [0, 42, u64::MAX];
const REGIONS: [&str; 3] = ["aws-us-east-1", "azure-eastus2", "gcp-us-central1"];

fn ip_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (0..V4_BASES.len(), 0u8..=32)
            .prop_map(|(b, len)| IpNet::V4(Ipv4Net::new(V4_BASES[b], len).unwrap().trunc())),
        (0..V6_BASES.len(), 0u8..=128)
            .prop_map(|(b, len)| IpNet::V6(Ipv6Net::new(V6_BASES[b], len).unwrap().trunc())),
    ]
}

/// A source near one of the bases: flips some low bits, so lookups land
/// inside, at the edges of and just outside generated prefixes.
fn source() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0..V4_BASES.len(), any::<u32>(), 0u32..=32).prop_map(|(b, noise, bits)| {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX >> (32 - bits)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(V4_BASES[b]) ^ (noise & mask)))
        }),
        (0..V6_BASES.len(), any::<u128>(), 0u32..=128).prop_map(|(b, noise, bits)| {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX >> (128 - bits)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(V6_BASES[b]) ^ (noise & mask)))
        }),
        // Mapped forms of v4 sources.
        (0..V4_BASES.len(), any::<u8>()).prop_map(|(b, low)| {
            let v4 = u32::from(V4_BASES[b]) ^ u32::from(low);
            IpAddr::V6(Ipv4Addr::from(v4).to_ipv6_mapped())
        }),
    ]
}

#[derive(Debug, Clone)]
enum PolicySpec {
    Ip { region: usize, rules: Vec<IpNet> },
    Vpce(Vec<usize>),
    Azure(Vec<usize>),
    Gcp(Vec<usize>),
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    let ids = || prop::collection::vec(0..3usize, 0..3);
    prop_oneof![
        3 => (0..3usize, prop::collection::vec(ip_net(), 0..7)).prop_map(|(region, rules)| PolicySpec::Ip { region, rules }),
        1 => ids().prop_map(PolicySpec::Vpce),
        1 => ids().prop_map(PolicySpec::Azure),
        1 => ids().prop_map(PolicySpec::Gcp),
    ]
}

#[derive(Debug, Clone)]
struct DeploymentSpec {
    region: usize,
    dry_run: bool,
    policies: Vec<usize>,
}

fn deployment_spec() -> impl Strategy<Value = DeploymentSpec> {
    (
        0..3usize,
        prop::bool::weighted(0.2),
        prop::collection::vec(0..12usize, 0..4),
    )
        .prop_map(|(region, dry_run, policies)| DeploymentSpec {
            region,
            dry_run,
            policies,
        })
}

#[derive(Debug, Clone)]
struct RequestSpec {
    deployment: usize,
    source: IpAddr,
    /// 0: public; 1..=3 vpce (random case), 4..=6 azure, 7..=9 gcp
    endpoint: usize,
    upper: bool,
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    (0..8usize, source(), 0..10usize, any::<bool>()).prop_map(
        |(deployment, source, endpoint, upper)| RequestSpec {
            deployment,
            source,
            endpoint,
            upper,
        },
    )
}

fn region_of(p: &PolicySpec) -> usize {
    match p {
        PolicySpec::Ip { region, .. } => *region,
        PolicySpec::Vpce(_) => 0,
        PolicySpec::Azure(_) => 1,
        PolicySpec::Gcp(_) => 2,
    }
}

/// `rule` applied to each of `items`, in order.
fn each<T: Copy, R>(items: &[T], rule: impl Fn(T) -> R) -> Vec<R> {
    items.iter().map(|&item| rule(item)).collect()
}

fn build(policies: &[PolicySpec], deployments: &[DeploymentSpec]) -> Snapshot {
    let region = |i: usize| Region::parse(REGIONS[i]).unwrap();
    let policies_model: Vec<Policy> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| Policy {
            id: format!("p{i}"),
            name: None,
            description: None,
            region: region(region_of(p)),
            include_by_default: None,
            // One rule per generated source, or per index into the
            // endpoint id tables.
            rules: match p {
                PolicySpec::Ip { rules, .. } => Rules::Ip(each(rules, |source| IpRule {
                    source,
                    description: None,
                })),
                PolicySpec::Vpce(ids) => Rules::Vpce(each(ids, |i| VpceRule {
                    source: VPCE[i].into(),
                    description: None,
                })),
                PolicySpec::Azure(ids) => Rules::Azure(each(ids, |i| AzureRule {
                    link_id: AZURE[i],
                    azure_endpoint_name: None,
                    azure_endpoint_guid: None,
                    description: None,
                })),
                PolicySpec::Gcp(ids) => Rules::Gcp(each(ids, |i| GcpRule {
                    source: GCP[i],
                    description: None,
                })),
            },
        })
        .collect();
    let deployments = deployments
        .iter()
        .enumerate()
        .map(|(i, d)| {
            // Keep only policies of the deployment's region (SPEC §1.7).
            let assoc = d
                .policies
                .iter()
                .filter(|&&p| p < policies.len() && region_of(&policies[p]) == d.region)
                .map(|p| format!("p{p}"))
                .collect();
            let mut resources = BTreeMap::new();
            resources.insert(
                Product::Es,
                Resource {
                    backends: vec![SocketAddr::from(([10, 0, 0, 1], 9200))],
                },
            );
            Deployment {
                id: format!("d{i}"),
                alias: None,
                region: region(d.region),
                enforcement: if d.dry_run {
                    Enforcement::DryRun
                } else {
                    Enforcement::Enforce
                },
                resources,
                policies: assoc,
            }
        })
        .collect();
    Snapshot {
        version: 1,
        deployments,
        policies: policies_model,
    }
}

fn client(r: &RequestSpec) -> ClientIdentity {
    let endpoint = match r.endpoint {
        0 => None,
        1..=3 => {
            let id = VPCE[r.endpoint - 1];
            let id = if r.upper {
                id.to_ascii_uppercase()
            } else {
                id.to_owned()
            };
            Some(PrivateEndpoint::AwsVpce(
                VpceId::parse(id.as_bytes()).unwrap(),
            ))
        }
        4..=6 => Some(PrivateEndpoint::AzureLinkId(AZURE[r.endpoint - 4])),
        _ => Some(PrivateEndpoint::GcpPscConnectionId(GCP[r.endpoint - 7])),
    };
    ClientIdentity {
        source: r.source,
        endpoint,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compiled_matches_reference(
        policies in prop::collection::vec(policy_spec(), 0..10),
        deployments in prop::collection::vec(deployment_spec(), 1..8),
        requests in prop::collection::vec(request_spec(), 1..40),
        deny_unassociated in any::<bool>(),
    ) {
        let model = build(&policies, &deployments);
        // Through JSON and the validator, as a real snapshot would come.
        let json = serde_json::to_vec(&model).unwrap();
        let snapshot = parse_snapshot(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let options = PolicyOptions {
            unassociated_private_traffic: if deny_unassociated {
                UnassociatedPrivateTraffic::Deny
            } else {
                UnassociatedPrivateTraffic::Allow
            },
        };
        let set = PolicySet::compile(&snapshot, options);
        let router = Router::new(&["example.com"]);
        for r in &requests {
            let d = r.deployment % model.deployments.len();
            let (deployment, product) = router
                .host_target(&set, &format!("d{d}.example.com"))
                .expect("every deployment routes");
            let facts = RequestFacts { target: Target { deployment, product }, client: client(r) };
            let got = decide(&set, &facts);
            // The reference reads the model as generated, before
            // canonicalisation: mapped rules must behave as IPv4.
            let want = reference(&model, options.unassociated_private_traffic, d, &facts.client);
            let got = (got.verdict, got.reason, got.matched.map(|m| (m.policy.get(), m.rule as usize)));
            prop_assert_eq!(got, want, "request {:?}", r);
        }
    }
}

/// The reference itself must treat a mapped rule as IPv4; check that the
/// generator actually produces such cases and the two agree on one.
#[test]
fn mapped_rule_matches_ipv4_and_mapped_sources() {
    let policies = vec![PolicySpec::Ip {
        region: 0,
        rules: vec!["::ffff:10.1.2.0/120".parse().unwrap()],
    }];
    let deployments = vec![DeploymentSpec {
        region: 0,
        dry_run: false,
        policies: vec![0],
    }];
    let model = build(&policies, &deployments);
    let snapshot = parse_snapshot(&serde_json::to_vec(&model).unwrap()).unwrap();
    let Rules::Ip(rules) = &snapshot.policies[0].rules else {
        panic!()
    };
    assert_eq!(rules[0].source.to_string(), "10.1.2.0/24");
    let set = PolicySet::compile(&snapshot, PolicyOptions::default());
    let (deployment, product) = Router::new(&["example.com"])
        .host_target(&set, "d0.example.com")
        .unwrap();
    for (src, allowed) in [
        ("10.1.2.9", true),
        ("::ffff:10.1.2.9", true),
        ("10.1.3.9", false),
    ] {
        let facts = RequestFacts {
            target: Target {
                deployment,
                product,
            },
            client: ClientIdentity {
                source: src.parse().unwrap(),
                endpoint: None,
            },
        };
        assert_eq!(
            decide(&set, &facts).verdict == Verdict::Allowed,
            allowed,
            "{src}"
        );
    }
}

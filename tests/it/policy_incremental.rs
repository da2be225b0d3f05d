//! The incremental compiles answer exactly like `PolicySet::compile`:
//! random sequences of changes (policies of every type added, changed and
//! removed; deployments added, changed, re-aliased, re-associated and
//! removed), applied as the etcd entries apply them (in place, appended,
//! the last moved into a removed one's place), each followed by
//! - `PolicySet::compile_delta` from slots, as the etcd entries compile;
//! - the document written as JSON and read over the set in force, then
//!   compiled over it, as a reload of a whole document compiles;
//! - the document read over no set, as a first load reads it (each policy
//!   compiled as it is read);
//! - a full compile;
//!
//! then the same probes on all: decisions for many requests, name
//! lookups, associations and statistics.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portcullis::endpoint::{ClientIdentity, PrivateEndpoint, VpceId};
use portcullis::policy::compile::{CompiledPolicy, compile_policy};
use portcullis::policy::validate::parse_ip_source;
use portcullis::policy::{
    AzureRule, Counterparts, Decision, Delta, Deployment, DeploymentIndex, Enforcement, Entry,
    GcpRule, IpRule, Policy, PolicyOptions, PolicySet, Product, Region, RequestFacts, Resource,
    Rules, Slot, Snapshot, Target, UnassociatedPrivateTraffic, VpceRule, decide,
    parse_snapshot_over,
};
use portcullis_test_kit::synth::Rng;

const VPCE: [&str; 4] = ["vpce-aaa111", "vpce-bbb222", "vpce-ccc333", "vpce-ddd444"];
const AZURE: [u32; 3] = [0, 16777301, u32::MAX];
const GCP: [u64; 3] = [0, 42, u64::MAX];
/// One region per cloud: a private connection policy lives in its own.
const REGIONS: [&str; 3] = ["aws-us-east-1", "azure-eastus", "gcp-us-central1"];

fn region_named(i: usize) -> Region {
    Region::parse(REGIONS[i % REGIONS.len()]).expect("a region")
}
// The edges the property tests probe, shared.
use super::policy_props::{V4_BASES as V4, V6_BASES as V6};

/// The ids changed (added, replaced or removed) since the last compile.
#[derive(Debug, Default)]
struct Changed {
    policies: HashSet<String>,
    deployments: HashSet<String>,
}

/// The document and what changed since the last compile, changed the way
/// `Entries` changes its snapshot.
struct World {
    doc: Snapshot,
    changed: Changed,
    /// Per entry, as `Entries` tracks it: its index in the set last
    /// compiled (if it was there) and whether it changed since.
    policy_places: Vec<(Option<u32>, bool)>,
    deployment_places: Vec<(Option<u32>, bool)>,
    rng: Rng,
    serial: usize,
}

impl World {
    fn pick(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }

    /// A network in the model's canonical form (IPv4-mapped IPv6 ones as
    /// IPv4), as validation makes it: a document read back from JSON is
    /// then the same document.
    fn net(&mut self) -> IpNet {
        let net = self.any_net();
        parse_ip_source(&net.to_string()).expect("a network with its host bits clear")
    }

    fn any_net(&mut self) -> IpNet {
        if self.rng.chance(75) {
            let base = V4[self.pick(V4.len())];
            let len = [0, 8, 16, 24, 30, 32][self.pick(6)];
            IpNet::V4(Ipv4Net::new(base, len).map_or_else(|_| Ipv4Net::default(), |n| n.trunc()))
        } else {
            let base = V6[self.pick(V6.len())];
            let len = [0, 32, 64, 127, 128][self.pick(5)];
            IpNet::V6(Ipv6Net::new(base, len).map_or_else(|_| Ipv6Net::default(), |n| n.trunc()))
        }
    }

    /// A policy in region `region` (of [`REGIONS`]; a random one when
    /// `None`): `ip`, or the private connection type of its cloud, so
    /// that the document stays valid.
    fn policy(&mut self, id: String, region: Option<usize>) -> Policy {
        let region = region.unwrap_or_else(|| self.pick(REGIONS.len()));
        let n = self.pick(4);
        let rules = match (self.pick(5), region) {
            (0 | 1, _) => Rules::Ip((0..n).map(|_| self.ip_rule()).collect()),
            (_, 0) => Rules::Vpce(
                (0..n)
                    .map(|_| VpceRule {
                        source: VPCE[self.pick(VPCE.len())].into(),
                        description: None,
                    })
                    .collect(),
            ),
            (_, 1) => Rules::Azure(
                (0..n)
                    .map(|_| AzureRule {
                        link_id: AZURE[self.pick(AZURE.len())],
                        azure_endpoint_name: None,
                        azure_endpoint_guid: None,
                        description: None,
                    })
                    .collect(),
            ),
            _ => Rules::Gcp(
                (0..n)
                    .map(|_| GcpRule {
                        source: GCP[self.pick(GCP.len())],
                        description: None,
                    })
                    .collect(),
            ),
        };
        Policy {
            id,
            name: None,
            description: None,
            region: region_named(region),
            include_by_default: None,
            rules,
        }
    }

    fn ip_rule(&mut self) -> IpRule {
        IpRule {
            source: self.net(),
            description: None,
        }
    }

    /// A deployment associating policies of its own region, each once,
    /// as a valid document has them.
    fn deployment(&mut self, id: String) -> Deployment {
        let region = self.pick(REGIONS.len());
        let mut policies: Vec<String> = Vec::new();
        for _ in 0..self.pick(4) {
            if !self.doc.policies.is_empty() {
                let i = self.pick(self.doc.policies.len());
                let p = &self.doc.policies[i];
                if p.region == region_named(region) && !policies.contains(&p.id) {
                    policies.push(p.id.clone());
                }
            }
        }
        let mut resources = BTreeMap::new();
        resources.insert(
            if self.rng.chance(50) {
                Product::Es
            } else {
                Product::Kb
            },
            Resource {
                backends: vec![SocketAddr::from(([10, 0, 0, 1], 9200))],
            },
        );
        self.serial += 1;
        Deployment {
            alias: self
                .rng
                .chance(50)
                .then(|| format!("alias-{}", self.serial)),
            id,
            region: region_named(region),
            enforcement: if self.rng.chance(30) {
                Enforcement::DryRun
            } else {
                Enforcement::Enforce
            },
            resources,
            policies,
        }
    }

    /// One random change, as `Entries` makes it.
    fn change(&mut self) {
        self.serial += 1;
        match self.pick(6) {
            0 => {
                let p = self.policy(format!("p{}", self.serial), None);
                self.changed.policies.insert(p.id.clone());
                self.policy_places.push((None, true));
                self.doc.policies.push(p);
            }
            1 if !self.doc.policies.is_empty() => {
                let i = self.pick(self.doc.policies.len());
                // In its region still: its users' associations stay valid.
                let old = &self.doc.policies[i];
                let region = REGIONS.iter().position(|r| *r == old.region.as_str());
                let p = self.policy(old.id.clone(), region);
                self.changed.policies.insert(p.id.clone());
                self.policy_places[i].1 = true;
                self.doc.policies[i] = p;
            }
            2 if !self.doc.policies.is_empty() => {
                let i = self.pick(self.doc.policies.len());
                let id = self.doc.policies.swap_remove(i).id;
                self.policy_places.swap_remove(i);
                // Its users let go of it first (SPEC: no dangling names).
                for (d, place) in self
                    .doc
                    .deployments
                    .iter_mut()
                    .zip(&mut self.deployment_places)
                {
                    if d.policies.contains(&id) {
                        d.policies.retain(|p| *p != id);
                        self.changed.deployments.insert(d.id.clone());
                        place.1 = true;
                    }
                }
                self.changed.policies.insert(id);
            }
            3 => {
                let d = self.deployment(format!("d{}", self.serial));
                self.changed.deployments.insert(d.id.clone());
                self.deployment_places.push((None, true));
                self.doc.deployments.push(d);
            }
            4 if !self.doc.deployments.is_empty() => {
                let i = self.pick(self.doc.deployments.len());
                let d = self.deployment(self.doc.deployments[i].id.clone());
                self.changed.deployments.insert(d.id.clone());
                self.deployment_places[i].1 = true;
                self.doc.deployments[i] = d;
            }
            5 if !self.doc.deployments.is_empty() => {
                let i = self.pick(self.doc.deployments.len());
                let id = self.doc.deployments.swap_remove(i).id;
                self.deployment_places.swap_remove(i);
                self.changed.deployments.insert(id);
            }
            _ => {}
        }
    }
}

fn clients() -> Vec<ClientIdentity> {
    let mut sources: Vec<IpAddr> = Vec::new();
    for a in V4 {
        let n = u32::from(a);
        for d in [0, 1, 2, 255, 256] {
            sources.push(IpAddr::V4(Ipv4Addr::from(n.wrapping_add(d))));
            sources.push(IpAddr::V4(Ipv4Addr::from(n.wrapping_sub(d))));
        }
    }
    for a in V6 {
        let n = u128::from(a);
        for d in [0, 1, 2, 1 << 64] {
            sources.push(IpAddr::V6(Ipv6Addr::from(n.wrapping_add(d))));
            sources.push(IpAddr::V6(Ipv6Addr::from(n.wrapping_sub(d))));
        }
    }
    sources.push(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()));
    let mut endpoints: Vec<Option<PrivateEndpoint>> = vec![None];
    endpoints.extend(
        VPCE.iter()
            .chain(&["vpce-eee555"])
            .filter_map(|v| VpceId::parse(v.as_bytes()).ok())
            .map(|v| Some(PrivateEndpoint::AwsVpce(v))),
    );
    endpoints.extend(
        AZURE
            .iter()
            .chain(&[7])
            .map(|&a| Some(PrivateEndpoint::AzureLinkId(a))),
    );
    endpoints.extend(
        GCP.iter()
            .chain(&[7])
            .map(|&g| Some(PrivateEndpoint::GcpPscConnectionId(g))),
    );
    let mut out = Vec::new();
    for &source in &sources {
        out.push(ClientIdentity {
            source,
            endpoint: None,
        });
    }
    for endpoint in endpoints.into_iter().flatten() {
        out.push(ClientIdentity {
            source: sources[0],
            endpoint: Some(endpoint),
        });
    }
    out
}

/// A decision with indices replaced by the ids they name.
fn named(set: &PolicySet, d: Decision) -> String {
    let deployment = d
        .target
        .and_then(|t| set.deployment(t.deployment))
        .map(|dep| dep.id.to_string());
    let matched = d
        .matched
        .map(|m| (set.policy(m.policy).map(|p| p.id.to_string()), m.rule));
    format!("{:?} {:?} {deployment:?} {matched:?}", d.verdict, d.reason)
}

fn associated(set: &PolicySet, i: DeploymentIndex) -> Vec<String> {
    set.associated(i).map(|(_, p)| p.id.to_string()).collect()
}

/// Every probe, asked of both sets.
fn assert_same(doc: &Snapshot, full: &PolicySet, incr: &PolicySet, clients: &[ClientIdentity]) {
    assert_eq!(full.stats(), incr.stats());
    assert_eq!(full.version(), incr.version());
    for d in &doc.deployments {
        for (name, alias_ok) in std::iter::once(&d.id)
            .chain(&d.alias)
            .flat_map(|n| [(n, true), (n, false)])
        {
            let (f, i) = (
                full.find_deployment(name, alias_ok),
                incr.find_deployment(name, alias_ok),
            );
            let id = |s: &PolicySet, x: Option<DeploymentIndex>| {
                x.and_then(|x| s.deployment(x)).map(|d| d.id.to_string())
            };
            assert_eq!(id(full, f), id(incr, i), "{name} {alias_ok}");
            let (Some(f), Some(i)) = (f, i) else { continue };
            assert_eq!(associated(full, f), associated(incr, i), "{name}");
            for product in [Product::Es, Product::Kb] {
                assert_eq!(full.has_resource(f, product), incr.has_resource(i, product));
                let facts = |deployment| RequestFacts {
                    target: Target {
                        deployment,
                        product,
                    },
                    client: clients[0],
                };
                for &client in clients {
                    let (ff, fi) = (
                        RequestFacts { client, ..facts(f) },
                        RequestFacts { client, ..facts(i) },
                    );
                    assert_eq!(
                        named(full, decide(full, &ff)),
                        named(incr, decide(incr, &fi)),
                        "{name} {client:?}"
                    );
                }
            }
        }
    }
    for gone in ["d0", "nope", "alias-0"] {
        assert_eq!(
            full.find_deployment(gone, true).is_some(),
            incr.find_deployment(gone, true).is_some()
        );
    }
}

/// The document as slots against the set last compiled, as `Entries`
/// describes it.
fn slots<'a, T>(entries: &'a [T], places: &[(Option<u32>, bool)]) -> Vec<Slot<'a, T>> {
    entries
        .iter()
        .zip(places)
        .map(|(e, &(was, changed))| match (was, changed) {
            (Some(o), false) => Slot::Kept(o),
            _ => Slot::Changed(e, was),
        })
        .collect()
}

/// After a compile: every entry is where the set holds it, unchanged.
fn compiled(places: &mut [(Option<u32>, bool)]) {
    for (i, place) in places.iter_mut().enumerate() {
        *place = (Some(i as u32), false);
    }
}

fn run(seed: u64, options: PolicyOptions) {
    let mut world = World {
        doc: Snapshot {
            version: 1,
            deployments: Vec::new(),
            policies: Vec::new(),
        },
        changed: Changed::default(),
        policy_places: Vec::new(),
        deployment_places: Vec::new(),
        rng: Rng::new(seed),
        serial: 0,
    };
    let clients = clients();
    // A world to start from, compiled whole.
    for _ in 0..30 {
        world.change();
    }
    std::mem::take(&mut world.changed);
    let mut delta_set = PolicySet::compile(&world.doc, options);
    let mut read_set = first_load(&world.doc, options);
    compiled(&mut world.policy_places);
    compiled(&mut world.deployment_places);
    for _ in 0..60 {
        for _ in 0..1 + world.pick(3) {
            world.change();
        }
        world.doc.version += 1;
        let changed = std::mem::take(&mut world.changed);
        // As the etcd entries compile: slots against the set before, the
        // changed policies compiled.
        let policy_forms: Vec<Arc<CompiledPolicy>> = world
            .doc
            .policies
            .iter()
            .map(|p| Arc::new(compile_policy(p)))
            .collect();
        let policies = slots(&policy_forms, &world.policy_places);
        let deployments = slots(&world.doc.deployments, &world.deployment_places);
        let delta = Delta {
            version: world.doc.version,
            policies: &policies,
            deployments: &deployments,
        };
        delta_set = PolicySet::compile_delta(delta, options, &delta_set)
            .expect("the slots describe the set before");
        compiled(&mut world.policy_places);
        compiled(&mut world.deployment_places);
        // As a whole document is reloaded: read over the set in force,
        // only what differs keeps its model.
        read_set = read_over(&world.doc, options, &read_set, &changed);
        let full = PolicySet::compile(&world.doc, options);
        assert_same(&world.doc, &full, &delta_set, &clients);
        assert_same(&world.doc, &full, &read_set, &clients);
        assert_same(
            &world.doc,
            &full,
            &first_load(&world.doc, options),
            &clients,
        );
    }
}

/// `doc`, written as JSON and read over `previous` as a reload reads it,
/// compiled over `previous`. Only entries `changed` names may keep their
/// models: every other one is `previous`'s, unchanged, and is kept.
fn read_over(
    doc: &Snapshot,
    options: PolicyOptions,
    previous: &PolicySet,
    changed: &Changed,
) -> PolicySet {
    let json = serde_json::to_vec(doc).expect("serialisable");
    let counterparts = Counterparts::new(previous, options).expect("the same options");
    let read = parse_snapshot_over(&json, counterparts).expect("a valid document");
    fn modelled<T>(entries: &[Entry<T>], id: impl Fn(&T) -> &str) -> HashSet<String> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Changed(m, _) => Some(id(m).to_owned()),
                Entry::Kept(_) => None,
            })
            .collect()
    }
    let policies = modelled(&read.policies, |p| &p.id);
    let deployments = modelled(&read.deployments, |d| &d.id);
    assert!(
        policies.is_subset(&changed.policies) && deployments.is_subset(&changed.deployments),
        "unchanged entries not kept: {policies:?} {deployments:?} vs {changed:?}"
    );
    read.compile(options, Some(previous))
        .expect("read over this set")
}

/// `doc`, written as JSON and read as a first load reads it: each policy
/// compiled as it is read, the set assembled from them.
fn first_load(doc: &Snapshot, options: PolicyOptions) -> PolicySet {
    let json = serde_json::to_vec(doc).expect("serialisable");
    let read = parse_snapshot_over(&json, Counterparts::none()).expect("a valid document");
    assert_eq!(read.changed(), doc.policies.len() + doc.deployments.len());
    read.compile(options, None).expect("read over no set")
}

#[test]
fn policy_incremental_compiles_answer_like_compile() {
    for seed in 0..40 {
        for traffic in [
            UnassociatedPrivateTraffic::Allow,
            UnassociatedPrivateTraffic::Deny,
        ] {
            let options = PolicyOptions {
                unassociated_private_traffic: traffic,
            };
            run(seed, options);
        }
    }
}

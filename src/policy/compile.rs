//! Compile: a validated [`Snapshot`] → an immutable [`PolicySet`].
//!
//! Built once per snapshot, then only read (from any number of threads).
//! Memory grows with the number of rules, not deployments × rules:
//! - each `ip` policy is compiled once into its own [`Matcher`], shared by
//!   reference (so a set compiled from the previous one reuses the
//!   matchers of the policies a change did not touch);
//! - deployments that associate the same set of policies share one
//!   [`AssociatedSet`]; a set with one `ip` policy uses that policy's
//!   matcher, only a set with several gets a merged matcher of its own;
//! - private endpoint ids go into one hash map per provider, mapping an id
//!   to the (policy, rule) pairs that list it.
//!
//! The decision path is laid out for few dependent memory reads: each
//! deployment has a small [`Hot`] record holding its set, its flags and its
//! IP matcher, so a public-address decision reads that record, then
//! searches one dense slice. Names, backends and other cold data live
//! elsewhere.
//!
//! Host names resolve through one hash map from cluster id / alias to the
//! deployment.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::fingerprint::Fingerprint;
use super::ipset::{Block, Matcher};
use super::model::{Deployment, Enforcement, Policy, PolicyType, Product, Rules, Snapshot};
use crate::backends::Backends;
use crate::endpoint::VpceId;

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Static (config-file) policy behaviour that is not part of a snapshot
/// (`[policy]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyOptions {
    pub unassociated_private_traffic: UnassociatedPrivateTraffic,
}

/// SPEC §1.6: what happens to private-endpoint traffic for a deployment
/// with no filtering policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnassociatedPrivateTraffic {
    /// Allowed, like public traffic (current Elastic Cloud behaviour).
    #[default]
    Allow,
    /// Allowed only when an associated private connection policy lists the
    /// endpoint (the older behaviour).
    Deny,
}

/// Index of a deployment within one [`PolicySet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeploymentIndex(pub(crate) u32);

/// Index of a policy within one [`PolicySet`] (its position in the
/// snapshot's `policies` array).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyIndex(pub(crate) u32);

impl PolicyIndex {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// The compiled form of a snapshot: everything a request decision needs.
#[derive(Debug)]
pub struct PolicySet {
    pub(crate) version: u64,
    pub(crate) options: PolicyOptions,
    /// Per deployment, what a decision reads.
    pub(crate) hot: Box<[Hot]>,
    /// Shared, each and all, so a set compiled from the previous one reuses
    /// what did not change by reference.
    pub(crate) deployments: Arc<[Arc<CompiledDeployment>]>,
    /// Shared each, so a set compiled from the previous one takes an
    /// unchanged policy with one reference count.
    pub(crate) policies: Box<[Arc<CompiledPolicy>]>,
    /// Shared each, so a set compiled from the previous one carries an
    /// unchanged set by reference.
    pub(crate) sets: Box<[Arc<AssociatedSet>]>,
    /// Cluster id or alias → deployment (keys shared with the
    /// deployments', so copying the map copies no string). Shared whole
    /// by the next set when no deployment changed.
    pub(crate) names: Arc<FastMap<Arc<str>, NameEntry>>,
    /// Shared whole by the next set when no private connection policy
    /// changed or moved.
    pub(crate) endpoints: Arc<EndpointMaps>,
    /// Summed while the policies are listed, so [`PolicySet::stats`],
    /// taken at every swap, does not visit a million ranges (7 ms at the
    /// large scale, a third of an etcd change's compile).
    pub(crate) ip_totals: IpTotals,
}

/// The `ip` rules and ranges of a set's policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IpTotals {
    pub(crate) rules: usize,
    pub(crate) ranges: usize,
}

impl IpTotals {
    /// These totals with `p` counted too.
    pub(crate) fn with(self, p: &CompiledPolicy) -> Self {
        match p.ip {
            Some(_) => Self {
                rules: self.rules + p.rule_count as usize,
                ranges: self.ranges + p.ip_ranges as usize,
            },
            None => self,
        }
    }
}

/// Private endpoint id → the (policy, rule) pairs that list it, per
/// provider.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointMaps {
    pub(crate) vpce: FastMap<VpceId, Hits>,
    pub(crate) azure: FastMap<u32, Hits>,
    pub(crate) gcp: FastMap<u64, Hits>,
}

/// The (policy, rule) pairs listing one endpoint id, sorted, so the first
/// one that belongs to a deployment's set is the one to report. Almost
/// every id is listed once; that pair is stored inline.
#[derive(Debug, Clone)]
pub(crate) struct Hits {
    first: (u32, u32),
    more: Box<[(u32, u32)]>,
}

impl Hits {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(u32, u32)> {
        std::iter::once(&self.first).chain(self.more.iter())
    }

    /// The pairs of a sorted, non-empty list (`None` for an empty one).
    pub(crate) fn from_sorted(pairs: &[(u32, u32)]) -> Option<Self> {
        let (&first, more) = pairs.split_first()?;
        Some(Self {
            first,
            more: more.into(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct NameEntry {
    pub(crate) deployment: u32,
    pub(crate) is_alias: bool,
}

/// What a decision reads about a deployment, in one small record: 32
/// bytes, aligned so that no record straddles two cache lines (a decision
/// over many deployments pays a miss per line it reads).
#[derive(Debug)]
#[repr(align(32))]
pub(crate) struct Hot {
    /// The deployment's IP matcher (its set's), laid out flat: its ranges
    /// and where their IPv6 part starts ([`Matcher::parts`]; a `Matcher`
    /// field would pad the record to 40 bytes).
    pub(crate) ip: Block,
    pub(crate) ip_v4_words: u32,
    /// When the set has one `ip` policy (the common case), its index:
    /// the matcher's labels are then that policy's rule indices, and a
    /// match is attributed without reading the set. [`SEVERAL`] otherwise.
    pub(crate) ip_policy: u32,
    pub(crate) set: u32,
    /// At least one associated policy filters (SPEC §1.3).
    pub(crate) filters: bool,
    pub(crate) dry_run: bool,
    /// Bit `Product::index()` set for each resource the deployment has, so
    /// routing can check a resource exists without reading cold data.
    pub(crate) products: u8,
}

/// A deployment as routing, forwarding and logging see it.
#[derive(Debug)]
pub struct CompiledDeployment {
    pub id: Arc<str>,
    pub alias: Option<Arc<str>>,
    pub enforcement: Enforcement,
    resources: [Option<Box<Backends>>; Product::ALL.len()],
    /// Of the model entry it was compiled from.
    pub(crate) fingerprint: Fingerprint,
}

impl CompiledDeployment {
    /// The backend nodes of a resource, if the deployment has it.
    pub fn backends(&self, product: Product) -> Option<&Backends> {
        self.resources.get(product.index())?.as_deref()
    }
}

/// One policy, compiled.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub id: Arc<str>,
    pub kind: PolicyType,
    pub rule_count: u32,
    /// SPEC §1.2.
    pub filters: bool,
    /// For `ip` policies: its rules' ranges, labelled by rule index.
    pub(crate) ip: Option<Matcher>,
    /// How many of `ip`'s ranges a rule covers (for [`Stats`]).
    pub(crate) ip_ranges: u32,
    /// For private connection policies: the endpoint ids it lists, with
    /// their rule index, so a later compile can take them out of the
    /// endpoint maps without the policy's old rules.
    pub(crate) endpoints: Arc<[(EndpointKey, u32)]>,
    /// Of the model entry it was compiled from.
    pub(crate) fingerprint: Fingerprint,
}

/// A private endpoint id, as the endpoint maps key it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EndpointKey {
    Vpce(VpceId),
    Azure(u32),
    Gcp(u64),
}

/// The distinct set of policies some deployments associate.
#[derive(Debug)]
pub(crate) struct AssociatedSet {
    /// Policy indices, ascending.
    pub(crate) policies: Members,
    /// The union of its `ip` policies' rules: labelled by position in
    /// [`AssociatedSet::ip_policies`]' order, each policy's rules after
    /// the earlier ones'.
    pub(crate) ip: Matcher,
    /// Its `ip` policies, ascending, each with the label of its rule 0.
    pub(crate) ip_policies: Box<[(u32, u32)]>,
    /// At least one of them filters: deny by default (SPEC §1.3).
    pub(crate) filters: bool,
}

impl AssociatedSet {
    pub(crate) fn contains(&self, policy: u32) -> bool {
        self.policies.as_slice().binary_search(&policy).is_ok()
    }

    /// Its only `ip` policy, or [`SEVERAL`] (also for none: no label to
    /// attribute then).
    pub(crate) fn single_ip_policy(&self) -> u32 {
        match *self.ip_policies {
            [(p, _)] => p,
            _ => SEVERAL,
        }
    }

    /// The (policy, rule index) an IP matcher label stands for.
    pub(crate) fn rule_of(&self, label: u32) -> Option<(u32, u32)> {
        let i = self
            .ip_policies
            .partition_point(|&(_, first)| first <= label);
        let &(policy, first) = self.ip_policies.get(i.checked_sub(1)?)?;
        Some((policy, label - first))
    }
}

/// [`Hot::ip_policy`] of a set with several `ip` policies (or none).
pub(crate) const SEVERAL: u32 = u32::MAX;

/// Policy indices of a set; up to [`Members::INLINE`] stored inline, so
/// checking membership for a private endpoint reads no extra memory.
#[derive(Debug)]
pub(crate) enum Members {
    Inline {
        len: u8,
        ids: [u32; Members::INLINE],
    },
    Heap(Box<[u32]>),
}

impl Members {
    const INLINE: usize = 4;

    pub(crate) fn new(ids: &[u32]) -> Self {
        let mut inline = [0; Self::INLINE];
        match inline.get_mut(..ids.len()) {
            Some(prefix) => {
                prefix.copy_from_slice(ids);
                Self::Inline {
                    // At most INLINE, so it fits.
                    len: ids.len() as u8,
                    ids: inline,
                }
            }
            None => Self::Heap(ids.into()),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u32] {
        match self {
            Self::Inline { len, ids } => ids.get(..usize::from(*len)).unwrap_or_default(),
            Self::Heap(ids) => ids,
        }
    }
}

/// Counts for summaries and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub deployments: usize,
    pub policies: usize,
    pub policy_sets: usize,
    pub ip_rules: usize,
    pub ip_ranges: usize,
    pub endpoint_ids: usize,
}

impl PolicySet {
    /// Compiles a validated snapshot. Infallible: validation has already
    /// checked every reference.
    pub fn compile(snapshot: &Snapshot, options: PolicyOptions) -> Self {
        let policies = snapshot
            .policies
            .iter()
            .map(|p| Arc::new(compile_policy(p)))
            .collect();
        let deployments: Vec<&Deployment> = snapshot.deployments.iter().collect();
        Self::assemble(snapshot.version, policies, &deployments, options)
    }

    /// Compiles a validated snapshot whose policies are already compiled
    /// (each as its document was read, so that their rules were never held
    /// all at once), as [`PolicySet::compile`] compiles it.
    pub fn assemble(
        version: u64,
        policies: Box<[Arc<CompiledPolicy>]>,
        deployments: &[&Deployment],
        options: PolicyOptions,
    ) -> Self {
        let policy_index: FastMap<&str, u32> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (&*p.id, index_u32(i)))
            .collect();
        let mut endpoints = EndpointLists::default();
        let mut ip_totals = IpTotals::default();
        for (pi, c) in policies.iter().enumerate() {
            endpoints.add(index_u32(pi), &c.endpoints);
            ip_totals = ip_totals.with(c);
        }

        let mut set_index: FastMap<Box<[u32]>, u32> = FastMap::default();
        let mut sets: Vec<Arc<AssociatedSet>> = Vec::new();
        let mut hot = Vec::with_capacity(deployments.len());
        let mut names = FastMap::default();
        names.reserve(deployments.len() * 2);
        let deployments = deployments
            .iter()
            .enumerate()
            .map(|(di, d)| {
                let members = members_of(d, |id| policy_index.get(id).copied());
                let set = match set_index.get(&members) {
                    Some(&s) => s,
                    None => {
                        let s = index_u32(sets.len());
                        sets.push(Arc::new(associated_set(&members, &policies)));
                        set_index.insert(members, s);
                        s
                    }
                };
                if let Some(assoc) = sets.get(set as usize) {
                    hot.push(hot_record(d, assoc, set));
                }
                let compiled = Arc::new(compile_deployment(d));
                name(&mut names, &compiled, index_u32(di));
                compiled
            })
            .collect();
        let endpoints = Arc::new(endpoints.finish());

        Self {
            version,
            options,
            hot: hot.into_boxed_slice(),
            deployments,
            policies,
            sets: sets.into_boxed_slice(),
            names: Arc::new(names),
            endpoints,
            ip_totals,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn options(&self) -> PolicyOptions {
        self.options
    }

    pub fn deployment(&self, i: DeploymentIndex) -> Option<&CompiledDeployment> {
        self.deployments.get(i.0 as usize).map(|d| &**d)
    }

    /// Whether the deployment has the resource (reads only the hot record).
    pub fn has_resource(&self, i: DeploymentIndex, product: Product) -> bool {
        self.hot
            .get(i.0 as usize)
            .is_some_and(|h| h.products & (1 << product.index()) != 0)
    }

    pub fn policy(&self, i: PolicyIndex) -> Option<&CompiledPolicy> {
        self.policies.get(i.get()).map(|p| &**p)
    }

    /// The policies a deployment associates, in snapshot order.
    pub fn associated(
        &self,
        i: DeploymentIndex,
    ) -> impl Iterator<Item = (PolicyIndex, &CompiledPolicy)> {
        let members = self
            .hot
            .get(i.0 as usize)
            .and_then(|h| self.sets.get(h.set as usize))
            .map_or(&[][..], |s| s.policies.as_slice());
        members
            .iter()
            .filter_map(|&p| Some((PolicyIndex(p), &**self.policies.get(p as usize)?)))
    }

    /// Resolves a lowercase cluster id or alias. `alias_ok` is false for the
    /// `{cluster_id}.{Z}` host form, which only takes cluster ids.
    pub fn find_deployment(&self, name: &str, alias_ok: bool) -> Option<DeploymentIndex> {
        let e = self.names.get(name)?;
        (alias_ok || !e.is_alias).then_some(DeploymentIndex(e.deployment))
    }

    pub fn stats(&self) -> Stats {
        Stats {
            deployments: self.deployments.len(),
            policies: self.policies.len(),
            policy_sets: self.sets.len(),
            ip_rules: self.ip_totals.rules,
            ip_ranges: self.ip_totals.ranges,
            endpoint_ids: self.endpoints.vpce.len()
                + self.endpoints.azure.len()
                + self.endpoints.gcp.len(),
        }
    }
}

/// The set of the policies at `members` (ascending indices into
/// `policies`).
pub(crate) fn associated_set(members: &[u32], policies: &[Arc<CompiledPolicy>]) -> AssociatedSet {
    let policy = |p: &u32| policies.get(*p as usize);
    let mut ip_policies = Vec::new();
    let mut parts: Vec<(&Matcher, u32)> = Vec::new();
    let mut next = 0u32;
    for p in members {
        if let Some(c) = policy(p)
            && let Some(m) = &c.ip
        {
            ip_policies.push((*p, next));
            parts.push((m, next));
            next = next.saturating_add(c.rule_count);
        }
    }
    let ip = match parts.as_slice() {
        [] => Matcher::default(),
        [(only, _)] => (*only).clone(),
        // Several `ip` policies: one merged matcher, so a decision is one
        // search whatever the number of policies. Labels count the earlier
        // policies' rules first, so "first policy, first rule" is the
        // lowest.
        _ => Matcher::merge(&parts),
    };
    AssociatedSet {
        policies: Members::new(members),
        ip,
        ip_policies: ip_policies.into_boxed_slice(),
        filters: members.iter().any(|p| policy(p).is_some_and(|c| c.filters)),
    }
}

/// Compiles one policy: its ranges, its endpoint ids into a list.
pub fn compile_policy(p: &Policy) -> CompiledPolicy {
    let mut ip = None;
    let endpoints: Arc<[(EndpointKey, u32)]> = match &p.rules {
        Rules::Ip(rules) => {
            let nets = rules
                .iter()
                .enumerate()
                .map(|(ri, r)| (r.source, index_u32(ri)));
            ip = Some(Matcher::build(nets));
            Arc::new([])
        }
        Rules::Vpce(rules) => rules
            .iter()
            .enumerate()
            // Validation admits only ids VpceId accepts.
            .filter_map(|(ri, r)| {
                let key = VpceId::parse(r.source.as_bytes()).ok()?;
                Some((EndpointKey::Vpce(key), index_u32(ri)))
            })
            .collect(),
        Rules::Azure(rules) => rules
            .iter()
            .enumerate()
            .map(|(ri, r)| (EndpointKey::Azure(r.link_id), index_u32(ri)))
            .collect(),
        Rules::Gcp(rules) => rules
            .iter()
            .enumerate()
            .map(|(ri, r)| (EndpointKey::Gcp(r.source), index_u32(ri)))
            .collect(),
    };
    CompiledPolicy {
        id: p.id.as_str().into(),
        kind: p.rules.policy_type(),
        rule_count: index_u32(p.rules.len()),
        filters: p.rules.filters(),
        ip_ranges: ip.as_ref().map_or(0, |m| index_u32(m.covered())),
        ip,
        endpoints,
        fingerprint: Fingerprint::of(p),
    }
}

/// The indices of the policies a deployment associates (as `index` finds
/// them), ascending, without duplicates.
pub(crate) fn members_of(d: &Deployment, index: impl Fn(&str) -> Option<u32>) -> Box<[u32]> {
    let mut members: Vec<u32> = d.policies.iter().filter_map(|id| index(id)).collect();
    members.sort_unstable();
    members.dedup();
    members.into_boxed_slice()
}

pub(crate) fn hot_record(d: &Deployment, assoc: &AssociatedSet, set: u32) -> Hot {
    Hot::in_set(
        assoc,
        set,
        d.enforcement == Enforcement::DryRun,
        d.resources.keys().fold(0, |bits, p| bits | 1 << p.index()),
    )
}

impl Hot {
    /// The record of a deployment in `assoc` (at index `set`), with its
    /// own flags.
    pub(crate) fn in_set(assoc: &AssociatedSet, set: u32, dry_run: bool, products: u8) -> Self {
        let (ip, ip_v4_words) = assoc.ip.parts();
        Self {
            ip,
            ip_v4_words,
            ip_policy: assoc.single_ip_policy(),
            set,
            filters: assoc.filters,
            dry_run,
            products,
        }
    }
}

pub(crate) fn compile_deployment(d: &Deployment) -> CompiledDeployment {
    let mut resources: [Option<Box<Backends>>; Product::ALL.len()] = Default::default();
    for (product, r) in &d.resources {
        resources[product.index()] = Some(Box::new(Backends::new(&r.backends)));
    }
    CompiledDeployment {
        id: d.id.as_str().into(),
        alias: d.alias.as_deref().map(Into::into),
        enforcement: d.enforcement,
        resources,
        fingerprint: Fingerprint::of(d),
    }
}

/// Enters a deployment's cluster id and alias in the name map.
pub(crate) fn name(names: &mut FastMap<Arc<str>, NameEntry>, d: &CompiledDeployment, di: u32) {
    let entry = |is_alias| NameEntry {
        deployment: di,
        is_alias,
    };
    names.insert(d.id.clone(), entry(false));
    if let Some(alias) = &d.alias {
        names.insert(alias.clone(), entry(true));
    }
}

/// The endpoint maps being built: every (policy, rule) pair listing each
/// id, in policy then rule order.
#[derive(Default)]
struct EndpointLists {
    vpce: FastMap<VpceId, Vec<(u32, u32)>>,
    azure: FastMap<u32, Vec<(u32, u32)>>,
    gcp: FastMap<u64, Vec<(u32, u32)>>,
}

impl EndpointLists {
    fn add(&mut self, pi: u32, endpoints: &[(EndpointKey, u32)]) {
        for &(key, ri) in endpoints {
            let list = match key {
                EndpointKey::Vpce(k) => self.vpce.entry(k).or_default(),
                EndpointKey::Azure(k) => self.azure.entry(k).or_default(),
                EndpointKey::Gcp(k) => self.gcp.entry(k).or_default(),
            };
            list.push((pi, ri));
        }
    }

    fn finish(self) -> EndpointMaps {
        EndpointMaps {
            vpce: finish(self.vpce),
            azure: finish(self.azure),
            gcp: finish(self.gcp),
        }
    }
}

fn finish<K: Eq + std::hash::Hash>(map: FastMap<K, Vec<(u32, u32)>>) -> FastMap<K, Hits> {
    map.into_iter()
        .filter_map(|(k, v)| Some((k, Hits::from_sorted(&v)?)))
        .collect()
}

/// Snapshot sizes are far below 2^32 entries (a JSON document that large
/// could not be loaded); saturate rather than wrap if that ever changes.
pub(crate) fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod layout_tests {
    use super::Hot;

    /// Half a cache line: a decision reads one line per record.
    #[test]
    fn a_hot_record_is_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Hot>(), 32);
        assert_eq!(std::mem::align_of::<Hot>(), 32);
    }
}

#[cfg(test)]
mod stats_tests {
    use super::PolicySet;
    use crate::policy::{PolicyOptions, parse_snapshot};

    /// The totals kept while compiling are what counting the matchers
    /// says (overlapping and adjacent rules, both families, a non-`ip`
    /// policy that counts for nothing).
    #[test]
    fn the_kept_ip_totals_are_the_matchers_counts() {
        let json = r#"{"version": 1, "deployments": [], "policies": [
            {"id": "a", "type": "ip", "region": "aws-us-east-1", "rules": [
                {"source": "10.0.0.0/8"}, {"source": "10.1.0.0/16"},
                {"source": "192.0.2.7"}, {"source": "2001:db8::/32"}]},
            {"id": "b", "type": "ip", "region": "aws-us-east-1", "rules": [
                {"source": "10.0.0.0/9"}, {"source": "10.128.0.0/9"}]},
            {"id": "c", "type": "vpce", "region": "aws-us-east-1",
             "rules": [{"source": "vpce-0123456789abcdef0"}]}
        ]}"#;
        let snapshot = parse_snapshot(json.as_bytes()).expect("valid");
        let set = PolicySet::compile(&snapshot, PolicyOptions::default());
        let counted: usize = set
            .policies
            .iter()
            .filter_map(|p| p.ip.as_ref())
            .map(|m| m.covered())
            .sum();
        let stats = set.stats();
        assert_eq!(stats.ip_rules, 6);
        assert_eq!(stats.ip_ranges, counted);
        assert!(counted > 0, "the test compiles ranges");
    }
}

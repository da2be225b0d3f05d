//! The reference policy decision: SPEC §1 read literally over the snapshot
//! model, one associated policy and one rule at a time, with none of the
//! compiled matcher's structures (range tables, merged sets, hash maps).
//! Property tests and the snapshot fuzz target check `decide` against it.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use portcullis::endpoint::{ClientIdentity, PrivateEndpoint};
use portcullis::policy::{
    Decision, Enforcement, Reason, Rules, Snapshot, UnassociatedPrivateTraffic, Verdict,
};

/// What a decision comes to: the verdict, why, and the matched rule as
/// (index of the policy in `snapshot.policies`, index of the rule in it).
pub type Outcome = (Verdict, Reason, Option<(usize, usize)>);

/// [`Decision`] in the reference's terms.
pub fn outcome(decision: &Decision) -> Outcome {
    (
        decision.verdict,
        decision.reason,
        decision.matched.map(|m| (m.policy.get(), m.rule as usize)),
    )
}

/// The decision for `client` on `snapshot.deployments[deployment]`: the
/// first associated policy (in snapshot order) with a matching rule, its
/// first matching rule; otherwise open if nothing associated filters (and,
/// for private traffic, `mode` allows it), else denied, or would-deny in
/// dry-run.
///
/// Works on a snapshot as built as well as on a validated one: an
/// IPv4-mapped rule is read as the IPv4 network it denotes, and a mapped
/// source as the IPv4 address. Panics if an association names no policy
/// (the validator refuses such a snapshot).
pub fn reference(
    snapshot: &Snapshot,
    mode: UnassociatedPrivateTraffic,
    deployment: usize,
    client: &ClientIdentity,
) -> Outcome {
    let dep = &snapshot.deployments[deployment];
    let mut assoc: Vec<usize> = dep
        .policies
        .iter()
        .map(|id| {
            snapshot
                .policies
                .iter()
                .position(|p| &p.id == id)
                .expect("associations name existing policies")
        })
        .collect();
    assoc.sort_unstable();
    // SPEC §1.2: an `ip` policy always filters, a private connection
    // policy only when it has rules.
    let filtering = assoc.iter().any(|&p| match &snapshot.policies[p].rules {
        Rules::Ip(_) => true,
        other => !other.is_empty(),
    });
    let source = client.source.to_canonical();
    for &p in &assoc {
        let hit = match (&snapshot.policies[p].rules, client.endpoint) {
            (Rules::Ip(rules), None) => rules
                .iter()
                .position(|r| rule_contains(r.source, source))
                .map(|r| (Reason::Ip, r)),
            (Rules::Vpce(rules), Some(PrivateEndpoint::AwsVpce(id))) => rules
                .iter()
                .position(|r| r.source.eq_ignore_ascii_case(id.as_str()))
                .map(|r| (Reason::Vpce, r)),
            (Rules::Azure(rules), Some(PrivateEndpoint::AzureLinkId(id))) => rules
                .iter()
                .position(|r| r.link_id == id)
                .map(|r| (Reason::Azure, r)),
            (Rules::Gcp(rules), Some(PrivateEndpoint::GcpPscConnectionId(id))) => rules
                .iter()
                .position(|r| r.source == id)
                .map(|r| (Reason::Gcp, r)),
            _ => None,
        };
        if let Some((reason, r)) = hit {
            return (Verdict::Allowed, reason, Some((p, r)));
        }
    }
    let open =
        !filtering && (client.endpoint.is_none() || mode == UnassociatedPrivateTraffic::Allow);
    if open {
        return (Verdict::Allowed, Reason::NoPolicy, None);
    }
    let verdict = match dep.enforcement {
        Enforcement::Enforce => Verdict::Denied,
        Enforcement::DryRun => Verdict::WouldDeny,
    };
    (verdict, Reason::Unmatched, None)
}

/// SPEC §1.4 read literally: a mapped source is an IPv4 address, so an
/// IPv4-mapped rule (`::ffff:a.b.c.d/n`, n ≥ 96) denotes IPv4 addresses.
fn rule_contains(rule: IpNet, source: IpAddr) -> bool {
    let rule = match rule {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(rule, IpNet::V4),
            None => rule,
        },
        _ => rule,
    };
    rule.contains(&source)
}

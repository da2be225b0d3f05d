//! Evaluation: the per-request decision, SPEC §1. Pure and allocation-free:
//! `decide(&PolicySet, &RequestFacts) -> Decision`.
//!
//! Semantics, in the order they are applied:
//! - A request through a private endpoint is allowed when a private
//!   connection policy the deployment associates lists that endpoint. `ip`
//!   rules never see it (its source address is a tenant VPC address).
//! - A public request is allowed when an associated `ip` policy has a rule
//!   containing its source address (IPv4-mapped addresses as IPv4).
//! - Otherwise it is allowed only when no associated policy filters — for
//!   private traffic, only when `unassociated_private_traffic = "allow"`.
//! - A denial on a `dry_run` deployment is `would_deny`: forwarded, counted.

use std::fmt;

use super::compile::{
    DeploymentIndex, Hits, Hot, PolicyIndex, PolicySet, SEVERAL, UnassociatedPrivateTraffic,
};
use super::model::Product;
use crate::endpoint::{ClientIdentity, PrivateEndpoint};

/// Which deployment resource a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub deployment: DeploymentIndex,
    pub product: Product,
}

/// What evaluation needs to know about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFacts {
    pub target: Target,
    pub client: ClientIdentity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Denied by policy, forwarded because the deployment is in dry run.
    WouldDeny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::WouldDeny => "would_deny",
        }
    }

    /// Whether the request goes to a backend.
    pub fn forwards(self) -> bool {
        !matches!(self, Self::Denied)
    }
}

/// Why: the `reason` metric label and explain field (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No associated policy filters.
    NoPolicy,
    /// An `ip` rule matched.
    Ip,
    /// A `vpce` rule matched.
    Vpce,
    /// An `azure_private_endpoint` rule matched.
    Azure,
    /// A `gcp_private_service_connect_endpoint` rule matched.
    Gcp,
    /// Filtering policies are associated and none matched.
    Unmatched,
    /// The host named no known deployment or resource.
    UnknownDeployment,
    /// TLS SNI and host name different deployments.
    Misdirected,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Self::NoPolicy,
        Self::Ip,
        Self::Vpce,
        Self::Azure,
        Self::Gcp,
        Self::Unmatched,
        Self::UnknownDeployment,
        Self::Misdirected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicy => "no_policy",
            Self::Ip => "ip",
            Self::Vpce => "vpce",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
            Self::Unmatched => "unmatched",
            Self::UnknownDeployment => "unknown_deployment",
            Self::Misdirected => "misdirected",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule that allowed a request: its policy and its index in the
/// policy's `rules` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: PolicyIndex,
    pub rule: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// `None` when routing failed.
    pub target: Option<Target>,
    pub matched: Option<RuleRef>,
}

impl Decision {
    /// A request that never reached policy evaluation (unknown deployment,
    /// misdirected).
    pub fn unrouted(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Denied,
            reason,
            target: None,
            matched: None,
        }
    }
}

/// Decides one request. See the module documentation for the semantics.
pub fn decide(set: &PolicySet, facts: &RequestFacts) -> Decision {
    let target = facts.target;
    let Some(hot) = set.hot.get(target.deployment.0 as usize) else {
        return Decision::unrouted(Reason::UnknownDeployment);
    };
    let allowed = match facts.client.endpoint {
        Some(endpoint) => match endpoint_match(set, hot, endpoint) {
            Some((reason, rule)) => Some((reason, Some(rule))),
            None if !hot.filters
                && set.options.unassociated_private_traffic
                    == UnassociatedPrivateTraffic::Allow =>
            {
                Some((Reason::NoPolicy, None))
            }
            None => None,
        },
        None if !hot.filters => Some((Reason::NoPolicy, None)),
        None => ip_match(set, hot, facts.client.source).map(|rule| (Reason::Ip, Some(rule))),
    };
    match allowed {
        Some((reason, matched)) => Decision {
            verdict: Verdict::Allowed,
            reason,
            target: Some(target),
            matched,
        },
        None => Decision {
            verdict: if hot.dry_run {
                Verdict::WouldDeny
            } else {
                Verdict::Denied
            },
            reason: Reason::Unmatched,
            target: Some(target),
            matched: None,
        },
    }
}

fn ip_match(set: &PolicySet, hot: &Hot, source: std::net::IpAddr) -> Option<RuleRef> {
    let label = hot.ip.lookup(hot.ip_v4_words, source)?;
    let (policy, rule) = match hot.ip_policy {
        SEVERAL => set.sets.get(hot.set as usize)?.rule_of(label)?,
        only => (only, label),
    };
    Some(RuleRef {
        policy: PolicyIndex(policy),
        rule,
    })
}

fn endpoint_match(
    set: &PolicySet,
    hot: &Hot,
    endpoint: PrivateEndpoint,
) -> Option<(Reason, RuleRef)> {
    let (reason, hits): (Reason, Option<&Hits>) = match endpoint {
        PrivateEndpoint::AwsVpce(id) => (Reason::Vpce, set.endpoints.vpce.get(&id)),
        PrivateEndpoint::AzureLinkId(id) => (Reason::Azure, set.endpoints.azure.get(&id)),
        PrivateEndpoint::GcpPscConnectionId(id) => (Reason::Gcp, set.endpoints.gcp.get(&id)),
    };
    let assoc = set.sets.get(hot.set as usize)?;
    let &(policy, rule) = hits?.iter().find(|(p, _)| assoc.contains(*p))?;
    Some((
        reason,
        RuleRef {
            policy: PolicyIndex(policy),
            rule,
        },
    ))
}

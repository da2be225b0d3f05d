//! Snapshot model: the validated, typed form of a snapshot (SPEC §3).
//!
//! Values of these types only come out of [`super::validate`], which checks
//! every field, or are built by code (the synthetic generator, tests). They
//! serialise back to the SPEC wire format, so `validate(serialise(s)) == s`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

/// A whole snapshot: what the control plane publishes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Snapshot {
    pub version: u64,
    pub deployments: Vec<Deployment>,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Deployment {
    /// Cluster id: a lowercase DNS label.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub region: Region,
    pub enforcement: Enforcement,
    pub resources: BTreeMap<Product, Resource>,
    /// Associated policy ids, duplicates removed, in the order given.
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Resource {
    pub backends: Vec<SocketAddr>,
}

/// What a deployment does with a request its policies deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Answer 403.
    #[default]
    Enforce,
    /// Forward anyway; count and log the request as `would_deny`.
    DryRun,
}

/// A deployment resource kind: a key of a deployment's `resources`.
///
/// The HTTP products ([`Product::HTTP`]) are also the `{product}` label of a
/// host name. [`Product::RemoteCluster`] is the remote-cluster (TLS
/// pass-through) resource: only the pass-through listener routes to it, by
/// SNI; no host name or `X-Found-Cluster` value names it, so an HTTP request
/// can never reach its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    Es,
    Kb,
    Apm,
    Fleet,
    Ent,
    #[serde(rename = "remote_cluster")]
    RemoteCluster,
}

impl Product {
    /// Every resource kind, in index order.
    pub const ALL: [Product; 6] = [
        Self::Es,
        Self::Kb,
        Self::Apm,
        Self::Fleet,
        Self::Ent,
        Self::RemoteCluster,
    ];

    /// The products an HTTP request can name (host label, `X-Found-Cluster`).
    pub const HTTP: [Product; 5] = [Self::Es, Self::Kb, Self::Apm, Self::Fleet, Self::Ent];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es => "es",
            Self::Kb => "kb",
            Self::Apm => "apm",
            Self::Fleet => "fleet",
            Self::Ent => "ent",
            Self::RemoteCluster => "remote_cluster",
        }
    }

    /// Parses the product label of an HTTP host name; expects lowercase
    /// input. Only [`Product::HTTP`] products: `remote_cluster` is not a
    /// host label.
    pub fn parse(label: &str) -> Option<Self> {
        Self::HTTP.into_iter().find(|p| p.as_str() == label)
    }

    /// Parses a snapshot `resources` key: any resource kind.
    pub fn parse_resource(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == key)
    }

    /// Dense index, for per-product arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cloud a region belongs to, from the region's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Aws,
    Azure,
    Gcp,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
        }
    }
}

/// A region name such as `aws-us-east-1`; the prefix names the provider.
/// Shared text: a handful of regions are named by every entry, and holders
/// of many entries (the etcd follower) keep one copy of each.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(Arc<str>);

impl Region {
    /// Accepts `{aws|azure|gcp}-{lowercase letters, digits, '-'}`.
    pub fn parse(s: &str) -> Option<Self> {
        let (prefix, rest) = s.split_once('-')?;
        let valid_rest = !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        (matches!(prefix, "aws" | "azure" | "gcp") && valid_rest).then(|| Self::interned(s))
    }

    /// The text of `s`, shared with the regions parsed before on this
    /// thread: a snapshot names a handful of regions once per entry (163k
    /// times at the large scale), and one allocation each was a tenth of
    /// the parse's calls to malloc.
    fn interned(s: &str) -> Self {
        /// Regions kept per thread: more than any cloud has.
        const KEPT: usize = 128;
        thread_local! {
            static SEEN: std::cell::RefCell<Vec<Arc<str>>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        SEEN.with(|seen| {
            let Ok(mut seen) = seen.try_borrow_mut() else {
                return Self(s.into());
            };
            if let Some(r) = seen.iter().find(|r| &***r == s) {
                return Self(r.clone());
            }
            let r: Arc<str> = s.into();
            if seen.len() < KEPT {
                seen.push(r.clone());
            }
            Self(r)
        })
    }

    pub fn provider(&self) -> Provider {
        match self.0.split_once('-').map(|(p, _)| p) {
            Some("aws") => Provider::Aws,
            Some("azure") => Provider::Azure,
            // `parse` admits only the three prefixes.
            _ => Provider::Gcp,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Policy {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub region: Region,
    /// Control-plane metadata: applies to deployments created later. Kept
    /// and shown, never acted on here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_by_default: Option<bool>,
    #[serde(flatten)]
    pub rules: Rules,
}

/// The rules of a policy; the variant is the policy `type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "rules")]
pub enum Rules {
    #[serde(rename = "ip")]
    Ip(Vec<IpRule>),
    #[serde(rename = "vpce")]
    Vpce(Vec<VpceRule>),
    #[serde(rename = "azure_private_endpoint")]
    Azure(Vec<AzureRule>),
    #[serde(rename = "gcp_private_service_connect_endpoint")]
    Gcp(Vec<GcpRule>),
}

/// The `type` of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    Ip,
    Vpce,
    Azure,
    Gcp,
}

impl PolicyType {
    pub const ALL: [PolicyType; 4] = [Self::Ip, Self::Vpce, Self::Azure, Self::Gcp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Vpce => "vpce",
            Self::Azure => "azure_private_endpoint",
            Self::Gcp => "gcp_private_service_connect_endpoint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The provider a private connection policy belongs to; `None` for `ip`.
    pub fn provider(self) -> Option<Provider> {
        match self {
            Self::Ip => None,
            Self::Vpce => Some(Provider::Aws),
            Self::Azure => Some(Provider::Azure),
            Self::Gcp => Some(Provider::Gcp),
        }
    }
}

impl Rules {
    pub fn policy_type(&self) -> PolicyType {
        match self {
            Self::Ip(_) => PolicyType::Ip,
            Self::Vpce(_) => PolicyType::Vpce,
            Self::Azure(_) => PolicyType::Azure,
            Self::Gcp(_) => PolicyType::Gcp,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Ip(r) => r.len(),
            Self::Vpce(r) => r.len(),
            Self::Azure(r) => r.len(),
            Self::Gcp(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SPEC §1.2: an `ip` policy always filters (even with no rules); a
    /// private connection policy filters only when it has rules.
    pub fn filters(&self) -> bool {
        matches!(self, Self::Ip(_)) || !self.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct IpRule {
    /// Canonical network: host bits clear, IPv4-mapped IPv6 networks
    /// converted to IPv4, single addresses as /32 or /128.
    pub source: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct VpceRule {
    /// The VPC endpoint id, lowercase.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AzureRule {
    pub link_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_endpoint_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_endpoint_guid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct GcpRule {
    /// PSC connection id; written as a decimal string because JSON readers
    /// in other languages lose precision on integers above 2^53.
    #[serde(serialize_with = "u64_as_string")]
    pub source: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn u64_as_string<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

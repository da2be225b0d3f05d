//! Snapshot validation: JSON bytes → [`Snapshot`], or every error at once.
//!
//! A snapshot is refused whole when anything in it is wrong, so the operator
//! needs the complete list, each error with its JSON path
//! (`deployments[3].policies[1]: unknown policy "x"`), not the first one
//! serde trips over. We therefore parse into a `serde_json::Value` and walk
//! it, checking every field; errors in one place do not hide errors in
//! another, and do not cascade (a policy whose rules are broken still
//! counts as existing when deployments reference it).
//!
//! Errors come out in document order, grouped by object: an object's
//! unknown fields first, then its fields in the order written (the parser
//! preserves key order).
//!
//! Decisions worth knowing (also in the README):
//! - Duplicate keys in an object are errors (see [`super::json`]).
//! - Unknown fields are errors: a typo such as `"polices"` must not
//!   silently open a deployment.
//! - A CIDR with host bits set (`10.0.0.1/8`) is an error that proposes the
//!   network (`10.0.0.0/8`): the snapshot is ambiguous, and guessing either
//!   way could widen or narrow access without anyone noticing.
//! - An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the
//!   IPv4 network it denotes, because mapped sources are matched as IPv4.
//! - A deployment listing the same policy twice is not an error; the second
//!   mention is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

use super::model::{
    AzureRule, Deployment, Enforcement, GcpRule, IpRule, Policy, PolicyType, Product, Region,
    Resource, Rules, Snapshot, VpceRule,
};
use crate::endpoint::VpceId;

/// One problem in a snapshot, with the JSON path where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError {
    /// `deployments[3].policies[1]`; empty for whole-document errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a refused snapshot, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotErrors(pub Vec<SnapshotError>);

impl fmt::Display for SnapshotErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid snapshot ({n} error{})",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SnapshotErrors {}

/// Parses and validates snapshot JSON.
pub fn parse_snapshot(json: &[u8]) -> Result<Snapshot, SnapshotErrors> {
    let value: Value = super::json::from_slice(json).map_err(|e| {
        SnapshotErrors(vec![SnapshotError {
            path: String::new(),
            message: format!("invalid JSON: {e}"),
        }])
    })?;
    validate_value(&value)
}

/// Validates an already-parsed JSON document.
pub fn validate_value(root: &Value) -> Result<Snapshot, SnapshotErrors> {
    let mut errs = Errors::default();
    let snapshot = snapshot(root, &mut errs);
    match snapshot {
        Some(s) if errs.0.is_empty() => Ok(s),
        _ => Err(SnapshotErrors(errs.0)),
    }
}

// ---------------------------------------------------------------------------
// Paths and error collection

/// A JSON path as a borrowed chain; rendered only when an error is reported.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn key<'a>(&'a self, k: &'a str) -> Path<'a> {
        Path::Key(self, k)
    }

    fn index(&self, i: usize) -> Path<'_> {
        Path::Index(self, i)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, k) => f.write_str(k),
            Path::Key(p, k) => write!(f, "{p}.{k}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

#[derive(Default)]
struct Errors(Vec<SnapshotError>);

impl Errors {
    fn add(&mut self, path: Path<'_>, message: impl fmt::Display) {
        self.0.push(SnapshotError {
            path: path.to_string(),
            message: message.to_string(),
        });
    }
}

/// An object whose keys have been checked against the allowed set.
struct Obj<'v, 'p> {
    map: &'v Map<String, Value>,
    path: Path<'p>,
}

fn object<'v, 'p>(
    v: &'v Value,
    path: Path<'p>,
    allowed: &[&str],
    errs: &mut Errors,
) -> Option<Obj<'v, 'p>> {
    let Some(map) = v.as_object() else {
        errs.add(path, format!("expected an object, found {}", kind(v)));
        return None;
    };
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            errs.add(
                path.key(key),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            );
        }
    }
    Some(Obj { map, path })
}

impl<'v> Obj<'v, '_> {
    /// An optional field; JSON `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str, errs: &mut Errors) -> Option<&'v Value> {
        let v = self.get(key);
        if v.is_none() {
            errs.add(self.path.key(key), "missing field");
        }
        v
    }

    /// A required array field, with its path (for its elements' errors).
    fn required_array(
        &self,
        key: &'static str,
        errs: &mut Errors,
    ) -> (Path<'_>, Option<&'v Vec<Value>>) {
        let path = self.path.key(key);
        let list = self.required(key, errs).and_then(|v| array(v, path, errs));
        (path, list)
    }

    /// An optional string field (metadata such as descriptions).
    fn opt_string(&self, key: &str, errs: &mut Errors) -> Option<String> {
        let v = self.get(key)?;
        let s = string(v, self.path.key(key), errs)?;
        Some(s.to_owned())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string<'v>(v: &'v Value, path: Path<'_>, errs: &mut Errors) -> Option<&'v str> {
    let s = v.as_str();
    if s.is_none() {
        errs.add(path, format!("expected a string, found {}", kind(v)));
    }
    s
}

fn array<'v>(v: &'v Value, path: Path<'_>, errs: &mut Errors) -> Option<&'v Vec<Value>> {
    let a = v.as_array();
    if a.is_none() {
        errs.add(path, format!("expected an array, found {}", kind(v)));
    }
    a
}

// ---------------------------------------------------------------------------
// The document

fn snapshot(root: &Value, errs: &mut Errors) -> Option<Snapshot> {
    let obj = object(
        root,
        Path::Root,
        &["version", "deployments", "policies"],
        errs,
    )?;
    let version = obj.required("version", errs).and_then(|v| {
        let n = v.as_u64().filter(|&n| n >= 1);
        if n.is_none() {
            errs.add(obj.path.key("version"), "must be a positive integer");
        }
        n
    });

    let (policies_path, policy_values) = obj.required_array("policies", errs);
    let mut headers = Vec::new();
    let mut policies = Vec::new();
    let mut by_id = HashMap::new();
    for (i, v) in policy_values.into_iter().flatten().enumerate() {
        let path = policies_path.index(i);
        let (header, policy) = policy(v, path, errs);
        if let Some(id) = header.id {
            match by_id.get(id) {
                Some(first) => errs.add(
                    path.key("id"),
                    format!("duplicate policy id \"{id}\" (first used by policies[{first}])"),
                ),
                None => {
                    by_id.insert(id, i);
                }
            }
        }
        headers.push(header);
        policies.push(policy);
    }

    let (deployments_path, deployment_values) = obj.required_array("deployments", errs);
    let mut names = HashMap::new();
    let mut deployments = Vec::new();
    for (i, v) in deployment_values.into_iter().flatten().enumerate() {
        let path = deployments_path.index(i);
        deployments.push(deployment(v, path, i, &headers, &by_id, &mut names, errs));
    }

    Some(Snapshot {
        version: version?,
        deployments: deployments.into_iter().collect::<Option<_>>()?,
        policies: policies.into_iter().collect::<Option<_>>()?,
    })
}

/// What deployments need to know about a policy, kept even when the rest of
/// the policy is invalid so that one error does not cause another.
struct PolicyHeader<'v> {
    id: Option<&'v str>,
    region: Option<Region>,
}

// ---------------------------------------------------------------------------
// Policies

fn policy<'v>(
    v: &'v Value,
    path: Path<'_>,
    errs: &mut Errors,
) -> (PolicyHeader<'v>, Option<Policy>) {
    const FIELDS: &[&str] = &[
        "id",
        "type",
        "region",
        "rules",
        "include_by_default",
        "name",
        "description",
    ];
    let empty = PolicyHeader {
        id: None,
        region: None,
    };
    let Some(obj) = object(v, path, FIELDS, errs) else {
        return (empty, None);
    };
    let id = obj
        .required("id", errs)
        .and_then(|v| string(v, path.key("id"), errs))
        .and_then(|id| {
            let ok = !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_whitespace);
            if !ok {
                errs.add(
                    path.key("id"),
                    "must be 1-256 characters without whitespace",
                );
            }
            ok.then_some(id)
        });
    let ty = obj
        .required("type", errs)
        .and_then(|v| string(v, path.key("type"), errs))
        .and_then(|t| {
            let ty = PolicyType::parse(t);
            if ty.is_none() {
                errs.add(
                    path.key("type"),
                    format!(
                        "unknown policy type \"{t}\" (expected ip, vpce, azure_private_endpoint or gcp_private_service_connect_endpoint)"
                    ),
                );
            }
            ty
        });
    let region = obj
        .required("region", errs)
        .and_then(|v| region(v, path.key("region"), errs));
    if let (Some(ty), Some(region)) = (ty, &region)
        && let Some(provider) = ty.provider()
        && provider != region.provider()
    {
        errs.add(
            path.key("region"),
            format!(
                "{} policies belong in {}-* regions, not \"{region}\"",
                ty.as_str(),
                provider.as_str()
            ),
        );
    }
    let include_by_default = obj.get("include_by_default").and_then(|v| {
        let b = v.as_bool();
        if b.is_none() {
            errs.add(
                path.key("include_by_default"),
                format!("expected a boolean, found {}", kind(v)),
            );
        }
        b
    });
    let name = obj.opt_string("name", errs);
    let description = obj.opt_string("description", errs);
    let rules = match (obj.required("rules", errs), ty) {
        (Some(v), Some(ty)) => rules(v, path.key("rules"), ty, errs),
        _ => None,
    };

    let header = PolicyHeader {
        id,
        region: region.clone(),
    };
    let policy = match (id, region, rules) {
        (Some(id), Some(region), Some(rules)) => Some(Policy {
            id: id.to_owned(),
            name,
            description,
            region,
            include_by_default,
            rules,
        }),
        _ => None,
    };
    (header, policy)
}

fn region(v: &Value, path: Path<'_>, errs: &mut Errors) -> Option<Region> {
    let s = string(v, path, errs)?;
    let r = Region::parse(s);
    if r.is_none() {
        errs.add(
            path,
            format!("\"{s}\" is not a region (expected aws-*, azure-* or gcp-*, lowercase)"),
        );
    }
    r
}

fn rules(v: &Value, path: Path<'_>, ty: PolicyType, errs: &mut Errors) -> Option<Rules> {
    let items = array(v, path, errs)?;
    Some(match ty {
        PolicyType::Ip => Rules::Ip(each(items, path, errs, ip_rule)?),
        PolicyType::Vpce => Rules::Vpce(each(items, path, errs, vpce_rule)?),
        PolicyType::Azure => Rules::Azure(each(items, path, errs, azure_rule)?),
        PolicyType::Gcp => Rules::Gcp(each(items, path, errs, gcp_rule)?),
    })
}

/// Validates every element (so every error is reported); `None` if any
/// element was refused.
fn each<'v, T>(
    items: &'v [Value],
    path: Path<'_>,
    errs: &mut Errors,
    mut f: impl FnMut(&'v Value, Path<'_>, &mut Errors) -> Option<T>,
) -> Option<Vec<T>> {
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match f(item, path.index(i), errs) {
            Some(t) => out.push(t),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A `{source, description}` rule (ip, vpce, gcp): its raw source and
/// its description.
fn source_rule<'v>(
    v: &'v Value,
    path: Path<'_>,
    errs: &mut Errors,
) -> Option<(&'v Value, Option<String>)> {
    let obj = object(v, path, &["source", "description"], errs)?;
    let description = obj.opt_string("description", errs);
    Some((obj.required("source", errs)?, description))
}

fn ip_rule(v: &Value, path: Path<'_>, errs: &mut Errors) -> Option<IpRule> {
    let (source, description) = source_rule(v, path, errs)?;
    let source = string(source, path.key("source"), errs)?;
    match parse_ip_source(source) {
        Ok(source) => Some(IpRule {
            source,
            description,
        }),
        Err(msg) => {
            errs.add(path.key("source"), msg);
            None
        }
    }
}

fn vpce_rule(v: &Value, path: Path<'_>, errs: &mut Errors) -> Option<VpceRule> {
    let (source, description) = source_rule(v, path, errs)?;
    let source = string(source, path.key("source"), errs)?;
    let valid = source.len() > "vpce-".len()
        && source
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("vpce-"))
        && VpceId::parse(source.as_bytes()).is_ok();
    if !valid {
        errs.add(
            path.key("source"),
            format!(
                "\"{source}\" is not a VPC endpoint id (expected vpce- followed by letters, digits or '-', at most 63 characters)"
            ),
        );
        return None;
    }
    Some(VpceRule {
        source: source.to_ascii_lowercase(),
        description,
    })
}

fn azure_rule(v: &Value, path: Path<'_>, errs: &mut Errors) -> Option<AzureRule> {
    const FIELDS: &[&str] = &[
        "link_id",
        "azure_endpoint_name",
        "azure_endpoint_guid",
        "description",
    ];
    let obj = object(v, path, FIELDS, errs)?;
    let azure_endpoint_name = obj.opt_string("azure_endpoint_name", errs);
    let azure_endpoint_guid = obj.opt_string("azure_endpoint_guid", errs);
    let description = obj.opt_string("description", errs);
    let v = obj.required("link_id", errs)?;
    let Some(link_id) = v.as_u64().and_then(|n| u32::try_from(n).ok()) else {
        errs.add(
            path.key("link_id"),
            format!(
                "expected a LinkID (an integer from 0 to {}), found {v}",
                u32::MAX
            ),
        );
        return None;
    };
    Some(AzureRule {
        link_id,
        azure_endpoint_name,
        azure_endpoint_guid,
        description,
    })
}

fn gcp_rule(v: &Value, path: Path<'_>, errs: &mut Errors) -> Option<GcpRule> {
    let (v, description) = source_rule(v, path, errs)?;
    // The SPEC writes the id as a decimal string; a JSON integer is exact
    // in serde_json, so accept it too.
    let id = match v {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    let Some(source) = id else {
        errs.add(
            path.key("source"),
            format!(
                "{v} is not a PSC connection id (expected a decimal number from 0 to {})",
                u64::MAX
            ),
        );
        return None;
    };
    Some(GcpRule {
        source,
        description,
    })
}

/// Parses an `ip` rule source: an address or a CIDR, canonicalised.
pub fn parse_ip_source(s: &str) -> Result<IpNet, String> {
    let net = match s.split_once('/') {
        None => match s.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err(format!("\"{s}\" is not an IP address or CIDR")),
        },
        Some((addr, prefix)) => {
            let Ok(addr) = addr.parse::<IpAddr>() else {
                return Err(format!(
                    "\"{s}\" is not a CIDR: \"{addr}\" is not an IP address"
                ));
            };
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "\"{s}\": prefix length \"/{prefix}\" is not a number"
                ));
            }
            let prefix = match prefix.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "\"{s}\": prefix length \"/{prefix}\" is out of range (0-{max})"
                    ));
                }
            };
            let net = match addr {
                IpAddr::V4(a) => Ipv4Net::new(a, prefix).map(IpNet::V4),
                IpAddr::V6(a) => Ipv6Net::new(a, prefix).map(IpNet::V6),
            }
            .map_err(|_| format!("\"{s}\": prefix length out of range"))?;
            if net.trunc() != net {
                return Err(format!(
                    "\"{s}\" has host bits set; write the network \"{}\"",
                    net.trunc()
                ));
            }
            net
        }
    };
    Ok(unmap(net))
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) is the IPv4 network `a.b.c.d/(n-96)`.
fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
    {
        // prefix_len - 96 ≤ 32, so the constructor cannot fail.
        return Ipv4Net::new(v4, v6.prefix_len() - 96)
            .map(IpNet::V4)
            .unwrap_or(IpNet::V4(Ipv4Net::from(Ipv4Addr::UNSPECIFIED)));
    }
    net
}

// ---------------------------------------------------------------------------
// Deployments

/// Which deployment first used a name (as id or alias), for duplicate checks.
type Names<'v> = HashMap<&'v str, usize>;

fn deployment<'v>(
    v: &'v Value,
    path: Path<'_>,
    index: usize,
    policies: &[PolicyHeader<'_>],
    by_id: &HashMap<&str, usize>,
    names: &mut Names<'v>,
    errs: &mut Errors,
) -> Option<Deployment> {
    const FIELDS: &[&str] = &[
        "id",
        "alias",
        "region",
        "enforcement",
        "resources",
        "policies",
    ];
    let obj = object(v, path, FIELDS, errs)?;
    let id = obj
        .required("id", errs)
        .and_then(|v| dns_label(v, path.key("id"), "cluster id", errs));
    let alias = obj
        .get("alias")
        .and_then(|v| dns_label(v, path.key("alias"), "alias", errs));
    for (name, field) in [(id, "id"), (alias, "alias")] {
        let Some(name) = name else { continue };
        match names.get(name) {
            Some(&other) if other != index => errs.add(
                path.key(field),
                format!("\"{name}\" is already used by deployments[{other}] (as its id or alias)"),
            ),
            _ => {
                names.insert(name, index);
            }
        }
    }
    let region = obj
        .required("region", errs)
        .and_then(|v| region(v, path.key("region"), errs));
    let enforcement = match obj.get("enforcement") {
        None => Some(Enforcement::default()),
        Some(v) => match string(v, path.key("enforcement"), errs)? {
            "enforce" => Some(Enforcement::Enforce),
            "dry_run" => Some(Enforcement::DryRun),
            other => {
                errs.add(
                    path.key("enforcement"),
                    format!("unknown enforcement \"{other}\" (expected enforce or dry_run)"),
                );
                None
            }
        },
    };
    let resources = obj
        .required("resources", errs)
        .and_then(|v| resources(v, path.key("resources"), errs));
    let associated = match obj.get("policies") {
        None => Some(Vec::new()),
        Some(v) => associations(
            v,
            path.key("policies"),
            region.as_ref(),
            policies,
            by_id,
            errs,
        ),
    };
    Some(Deployment {
        id: id?.to_owned(),
        alias: alias.map(str::to_owned),
        region: region?,
        enforcement: enforcement?,
        resources: resources?,
        policies: associated?,
    })
}

fn dns_label<'v>(v: &'v Value, path: Path<'_>, what: &str, errs: &mut Errors) -> Option<&'v str> {
    let s = string(v, path, errs)?;
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-');
    if !ok {
        errs.add(
            path,
            format!(
                "\"{s}\" is not a valid {what}: it must be a DNS label of 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        );
    }
    ok.then_some(s)
}

fn resources(v: &Value, path: Path<'_>, errs: &mut Errors) -> Option<BTreeMap<Product, Resource>> {
    let map = match v.as_object() {
        Some(m) => m,
        None => {
            errs.add(path, format!("expected an object, found {}", kind(v)));
            return None;
        }
    };
    if map.is_empty() {
        errs.add(path, "a deployment needs at least one resource");
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (name, v) in map {
        let path = path.key(name);
        let Some(product) = Product::parse_resource(name) else {
            errs.add(
                path,
                format!(
                    "unknown product \"{name}\" (expected es, kb, apm, fleet, ent or remote_cluster)"
                ),
            );
            ok = false;
            continue;
        };
        match resource(v, path, errs) {
            Some(r) => {
                out.insert(product, r);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn resource(v: &Value, path: Path<'_>, errs: &mut Errors) -> Option<Resource> {
    let obj = object(v, path, &["backends"], errs)?;
    let (list_path, list) = obj.required_array("backends", errs);
    let list = list?;
    if list.is_empty() {
        errs.add(list_path, "a resource needs at least one backend");
        return None;
    }
    // Addresses accepted so far: a second listing is refused, not merged,
    // because it usually means a typo in the other one.
    let mut seen: Vec<SocketAddr> = Vec::with_capacity(list.len());
    let backends = each(list, list_path, errs, |v, path, errs| {
        let s = string(v, path, errs)?;
        let refusal = match s.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => format!("\"{s}\": port 0 is not a backend port"),
            Ok(addr) if seen.contains(&addr) => format!("\"{s}\" is listed twice"),
            Ok(addr) => {
                seen.push(addr);
                return Some(addr);
            }
            Err(_) => {
                format!("\"{s}\" is not a backend address (expected ip:port or [ipv6]:port)")
            }
        };
        errs.add(path, refusal);
        None
    })?;
    Some(Resource { backends })
}

fn associations(
    v: &Value,
    path: Path<'_>,
    region: Option<&Region>,
    policies: &[PolicyHeader<'_>],
    by_id: &HashMap<&str, usize>,
    errs: &mut Errors,
) -> Option<Vec<String>> {
    let list = array(v, path, errs)?;
    let ids = each(list, path, errs, |v, path, errs| {
        let id = string(v, path, errs)?;
        let Some(&p) = by_id.get(id) else {
            errs.add(path, format!("unknown policy \"{id}\""));
            return None;
        };
        if let (Some(mine), Some(theirs)) =
            (region, policies.get(p).and_then(|h| h.region.as_ref()))
            && mine != theirs
        {
            errs.add(
                path,
                format!(
                    "policy \"{id}\" is in region \"{theirs}\" but the deployment is in \"{mine}\""
                ),
            );
            return None;
        }
        Some(id)
    })?;
    // An association listed twice is harmless: keep the first.
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.iter().any(|o| o == id) {
            out.push(id.to_owned());
        }
    }
    Some(out)
}

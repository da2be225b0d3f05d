//! The checks of one entry: a raw policy or deployment record → the model,
//! or every problem with its path. Pure: what an entry needs from the
//! others (which policies exist, in which region; which names are taken)
//! comes in as arguments, so the same checks serve a whole document and a
//! single etcd key.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::raw::{
    AzureFields, Fields, Keys, Obj, RawDeployment, RawPolicy, RawResource, RawResources, RawRule,
    Scalar, Shaped, Slot,
};
use super::{Errors, Path};
use crate::endpoint::VpceId;
use crate::policy::compile::FastMap;
use crate::policy::model::{
    AzureRule, Deployment, Enforcement, GcpRule, IpRule, Policy, PolicyType, Product, Region,
    Resource, Rules, VpceRule,
};

// ---------------------------------------------------------------------------
// Shapes and scalars

/// The record in an object slot, after reporting its unknown fields (those
/// outside `allowed`, a bit mask over `T::FIELDS`); `None` when the slot
/// holds no object.
fn object<'s, 'de, T: Fields<'de>>(
    slot: &'s Slot<Obj<'de, T>>,
    allowed: u32,
    path: Path<'_>,
    errs: &mut Errors,
) -> Option<&'s T> {
    let record = match slot {
        Some(Ok(record)) => record,
        Some(Err(kind)) => return errs.expected(path, "an object", kind.phrase()),
        None => return errs.expected(path, "an object", "null"),
    };
    unknown_fields(&record.keys, T::FIELDS, allowed, path, errs);
    Some(&record.fields)
}

/// Reports the fields of an object that are not allowed.
pub(super) fn unknown_fields(
    keys: &Keys<'_>,
    fields: &[&str],
    allowed: u32,
    path: Path<'_>,
    errs: &mut Errors,
) {
    let disallowed = !allowed & ((1 << fields.len()) - 1);
    let refused = keys.not_allowed(fields, disallowed);
    if !refused.is_empty() {
        let names: Vec<&str> = (0..fields.len())
            .filter(|bit| allowed & (1 << bit) != 0)
            .filter_map(|bit| fields.get(bit).copied())
            .collect();
        for key in refused {
            errs.add(
                path.key(key),
                format_args!("unknown field (expected one of: {})", names.join(", ")),
            );
        }
    }
    if keys.more_unknown() > 0 {
        errs.add(
            path,
            format_args!("{} more unknown fields", keys.more_unknown()),
        );
    }
    duplicate_keys(keys, path, errs);
}

/// Reports the keys an object names more than once: either value could
/// be the one meant, so the object is refused rather than read one way.
fn duplicate_keys(keys: &Keys<'_>, path: Path<'_>, errs: &mut Errors) {
    for key in keys.duplicates() {
        errs.add(
            path.key(key),
            "duplicate key: named more than once in this object",
        );
    }
}

/// Every field of `T` allowed.
fn all<'de, T: Fields<'de>>() -> u32 {
    (1 << T::FIELDS.len()) - 1
}

/// A required field: `None` (reported) when absent or `null`.
fn required<'s, 'de>(
    v: &'s Scalar<'de>,
    path: Path<'_>,
    errs: &mut Errors,
) -> Option<&'s Scalar<'de>> {
    if v.is_null() {
        errs.add(path, "missing field");
        return None;
    }
    Some(v)
}

/// A required array or object field.
fn required_slot<'s, T>(
    slot: &'s Slot<T>,
    expected: &str,
    path: Path<'_>,
    errs: &mut Errors,
) -> Option<&'s T> {
    match slot {
        Some(Ok(v)) => Some(v),
        Some(Err(kind)) => errs.expected(path, expected, kind.phrase()),
        None => {
            errs.add(path, "missing field");
            None
        }
    }
}

fn string<'s>(v: &'s Scalar<'_>, path: Path<'_>, errs: &mut Errors) -> Option<&'s str> {
    let s = v.as_str();
    if s.is_none() {
        errs.expected::<()>(path, "a string", v.kind().phrase());
    }
    s
}

/// An optional string field (metadata such as descriptions).
fn opt_string(v: &Scalar<'_>, path: Path<'_>, errs: &mut Errors) -> Option<String> {
    if v.is_null() {
        return None;
    }
    string(v, path, errs).map(str::to_owned)
}

fn region(v: &Scalar<'_>, path: Path<'_>, errs: &mut Errors) -> Option<Region> {
    let s = string(required(v, path, errs)?, path, errs)?;
    let r = Region::parse(s);
    if r.is_none() {
        errs.add(
            path,
            format_args!("\"{s}\" is not a region (expected aws-*, azure-* or gcp-*, lowercase)"),
        );
    }
    r
}

/// Checks every element (so every error is reported); `None` if any
/// element was refused.
fn each<I, T>(
    items: impl IntoIterator<Item = I>,
    path: Path<'_>,
    errs: &mut Errors,
    mut f: impl FnMut(I, Path<'_>, &mut Errors) -> Option<T>,
) -> Option<Vec<T>> {
    let items = items.into_iter();
    let mut out = Vec::with_capacity(items.size_hint().0);
    let mut ok = true;
    for (i, item) in items.enumerate() {
        match f(item, path.index(i), errs) {
            Some(t) => out.push(t),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

// ---------------------------------------------------------------------------
// Policies

/// What deployments need to know about a policy, kept even when the rest of
/// the policy is invalid so that one error does not cause another.
pub(super) struct PolicyHeader<'de> {
    pub id: Option<Cow<'de, str>>,
    pub region: Option<Region>,
}

pub(super) fn policy<'de>(
    slot: Slot<Obj<'de, RawPolicy<'de>>>,
    path: Path<'_>,
    errs: &mut Errors,
) -> (PolicyHeader<'de>, Option<Policy>) {
    let Some(raw) = object(&slot, all::<RawPolicy>(), path, errs) else {
        let empty = PolicyHeader {
            id: None,
            region: None,
        };
        return (empty, None);
    };
    let id = policy_id(&raw.id, path.key("id"), errs);
    let ty = required(&raw.ty, path.key("type"), errs)
        .and_then(|v| string(v, path.key("type"), errs))
        .and_then(|t| {
            let ty = PolicyType::parse(t);
            if ty.is_none() {
                errs.add(
                    path.key("type"),
                    format_args!(
                        "unknown policy type \"{t}\" (expected ip, vpce, azure_private_endpoint or gcp_private_service_connect_endpoint)"
                    ),
                );
            }
            ty
        });
    let region = region(&raw.region, path.key("region"), errs);
    if let (Some(ty), Some(region)) = (ty, &region)
        && let Some(provider) = ty.provider()
        && provider != region.provider()
    {
        errs.add(
            path.key("region"),
            format_args!(
                "{} policies belong in {}-* regions, not \"{region}\"",
                ty.as_str(),
                provider.as_str()
            ),
        );
    }
    let include_by_default = match &raw.include_by_default {
        Scalar::Null => None,
        v => {
            let b = v.as_bool();
            if b.is_none() {
                errs.expected::<()>(
                    path.key("include_by_default"),
                    "a boolean",
                    v.kind().phrase(),
                );
            }
            b
        }
    };
    let name = opt_string(&raw.name, path.key("name"), errs);
    let description = opt_string(&raw.description, path.key("description"), errs);
    let rules = required_slot(&raw.rules, "an array", path.key("rules"), errs)
        .zip(ty)
        .and_then(|(items, ty)| rules(items, path.key("rules"), ty, errs));

    let policy = match (&id, &region, rules) {
        (Some(id), Some(region), Some(rules)) => Some(Policy {
            id: id.clone().into_owned(),
            name,
            description,
            region: region.clone(),
            include_by_default,
            rules,
        }),
        _ => None,
    };
    (PolicyHeader { id, region }, policy)
}

fn policy_id<'de>(v: &Scalar<'de>, path: Path<'_>, errs: &mut Errors) -> Option<Cow<'de, str>> {
    let Scalar::Str(id) = required(v, path, errs)? else {
        return errs.expected(path, "a string", v.kind().phrase());
    };
    let ok = !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_whitespace);
    if !ok {
        errs.add(path, "must be 1-256 characters without whitespace");
    }
    ok.then(|| id.clone())
}

type RawRules<'de> = [Shaped<Obj<'de, RawRule<'de>>>];
type RuleSlot<'de> = Slot<Obj<'de, RawRule<'de>>>;

fn rules(items: &RawRules<'_>, path: Path<'_>, ty: PolicyType, errs: &mut Errors) -> Option<Rules> {
    let items = items.iter().map(|Shaped(slot)| slot);
    Some(match ty {
        PolicyType::Ip => Rules::Ip(each(items, path, errs, ip_rule)?),
        PolicyType::Vpce => Rules::Vpce(each(items, path, errs, vpce_rule)?),
        PolicyType::Azure => Rules::Azure(each(items, path, errs, azure_rule)?),
        PolicyType::Gcp => Rules::Gcp(each(items, path, errs, gcp_rule)?),
    })
}

/// A `{source, description}` rule (ip, vpce, gcp): its raw source and
/// its description.
fn source_rule<'s, 'de>(
    slot: &'s RuleSlot<'de>,
    path: Path<'_>,
    errs: &mut Errors,
) -> Option<(&'s Scalar<'de>, Option<String>)> {
    let raw = object(slot, RawRule::SOURCE_RULE, path, errs)?;
    let description = opt_string(&raw.description, path.key("description"), errs);
    Some((
        required(&raw.source, path.key("source"), errs)?,
        description,
    ))
}

fn ip_rule(slot: &RuleSlot<'_>, path: Path<'_>, errs: &mut Errors) -> Option<IpRule> {
    let (source, description) = source_rule(slot, path, errs)?;
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

fn vpce_rule(slot: &RuleSlot<'_>, path: Path<'_>, errs: &mut Errors) -> Option<VpceRule> {
    let (source, description) = source_rule(slot, path, errs)?;
    let source = string(source, path.key("source"), errs)?;
    let valid = source.len() > "vpce-".len()
        && source
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("vpce-"))
        && VpceId::parse(source.as_bytes()).is_ok();
    if !valid {
        errs.add(
            path.key("source"),
            format_args!(
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

fn azure_rule(slot: &RuleSlot<'_>, path: Path<'_>, errs: &mut Errors) -> Option<AzureRule> {
    let raw = object(slot, RawRule::AZURE_RULE, path, errs)?;
    let absent = AzureFields::default();
    let azure = raw.azure.as_deref().unwrap_or(&absent);
    let azure_endpoint_name = opt_string(
        &azure.azure_endpoint_name,
        path.key("azure_endpoint_name"),
        errs,
    );
    let azure_endpoint_guid = opt_string(
        &azure.azure_endpoint_guid,
        path.key("azure_endpoint_guid"),
        errs,
    );
    let description = opt_string(&raw.description, path.key("description"), errs);
    let v = required(&azure.link_id, path.key("link_id"), errs)?;
    let Some(link_id) = v.as_u64().and_then(|n| u32::try_from(n).ok()) else {
        errs.add(
            path.key("link_id"),
            format_args!(
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

fn gcp_rule(slot: &RuleSlot<'_>, path: Path<'_>, errs: &mut Errors) -> Option<GcpRule> {
    let (v, description) = source_rule(slot, path, errs)?;
    // The SPEC writes the id as a decimal string; a JSON integer is exact
    // in serde_json, so accept it too.
    let id = match v {
        Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        Scalar::U64(n) => Some(*n),
        _ => None,
    };
    let Some(source) = id else {
        errs.add(
            path.key("source"),
            format_args!(
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
    // Nearly every rule is a valid network written plainly: read on a fast
    // path (see `ip_source`), which hands anything else to the general one.
    match super::ip_source::canonical(s.as_bytes()) {
        Some(net) => Ok(net),
        None => parse_ip_source_general(s),
    }
}

/// [`parse_ip_source`] through the standard parsers: any address family,
/// and the error messages.
pub(super) fn parse_ip_source_general(s: &str) -> Result<IpNet, String> {
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
pub(super) type Names<'de> = FastMap<Cow<'de, str>, usize>;

/// A deployment checked except for its policy associations, which need
/// every policy of the document (they may come later in it).
pub(super) struct Unassociated<'de> {
    /// Everything but `policies`, when all of that is valid.
    pub deployment: Option<Deployment>,
    pub region: Option<Region>,
    pub policies: Slot<Vec<Scalar<'de>>>,
}

impl Unassociated<'_> {
    /// The policy ids it associates, as [`associations`] returns them when
    /// every one exists in the right region; `None` when the list is not a
    /// list of strings (an error [`associations`] reports).
    pub(super) fn associated(&self) -> Option<Vec<String>> {
        match &self.policies {
            None => Some(Vec::new()),
            Some(Err(_)) => None,
            Some(Ok(list)) => {
                let ids: Option<Vec<&str>> = list.iter().map(Scalar::as_str).collect();
                Some(first_mentions(ids?.into_iter()))
            }
        }
    }
}

pub(super) fn deployment<'de>(
    mut slot: Slot<Obj<'de, RawDeployment<'de>>>,
    path: Path<'_>,
    index: usize,
    names: &mut Names<'de>,
    errs: &mut Errors,
) -> Option<Unassociated<'de>> {
    // Checked later, against every policy of the document.
    let policies = match &mut slot {
        Some(Ok(d)) => d.fields.policies.take(),
        _ => None,
    };
    let raw = object(&slot, all::<RawDeployment>(), path, errs)?;
    let id = required(&raw.id, path.key("id"), errs)
        .and_then(|v| dns_label(v, path.key("id"), "cluster id", errs));
    let alias = (!raw.alias.is_null())
        .then(|| dns_label(&raw.alias, path.key("alias"), "alias", errs))
        .flatten();
    for (name, field) in [(&id, "id"), (&alias, "alias")] {
        let Some(name) = name else { continue };
        match names.get(name) {
            Some(&other) if other != index => errs.add(
                path.key(field),
                format_args!(
                    "\"{name}\" is already used by deployments[{other}] (as its id or alias)"
                ),
            ),
            _ => {
                names.insert(name.clone(), index);
            }
        }
    }
    let region = region(&raw.region, path.key("region"), errs);
    let enforcement = match &raw.enforcement {
        Scalar::Null => Some(Enforcement::default()),
        v => match string(v, path.key("enforcement"), errs) {
            Some("enforce") => Some(Enforcement::Enforce),
            Some("dry_run") => Some(Enforcement::DryRun),
            Some(other) => {
                errs.add(
                    path.key("enforcement"),
                    format_args!("unknown enforcement \"{other}\" (expected enforce or dry_run)"),
                );
                None
            }
            None => None,
        },
    };
    let resources = required_slot(&raw.resources, "an object", path.key("resources"), errs)
        .and_then(|r| resources(r, path.key("resources"), errs));
    let deployment = match (id, region.clone(), enforcement, resources) {
        (Some(id), Some(region), Some(enforcement), Some(resources)) => Some(Deployment {
            id: id.into_owned(),
            alias: alias.map(Cow::into_owned),
            region,
            enforcement,
            resources,
            policies: Vec::new(),
        }),
        _ => None,
    };
    Some(Unassociated {
        deployment,
        region,
        policies,
    })
}

fn dns_label<'de>(
    v: &Scalar<'de>,
    path: Path<'_>,
    what: &str,
    errs: &mut Errors,
) -> Option<Cow<'de, str>> {
    let Scalar::Str(s) = v else {
        return errs.expected(path, "a string", v.kind().phrase());
    };
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
            format_args!(
                "\"{s}\" is not a valid {what}: it must be a DNS label of 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        );
    }
    ok.then(|| s.clone())
}

fn resources(
    raw: &Obj<'_, RawResources<'_>>,
    path: Path<'_>,
    errs: &mut Errors,
) -> Option<BTreeMap<Product, Resource>> {
    let written = raw.keys.in_order(RawResources::FIELDS);
    if written.is_empty() && raw.keys.more_unknown() == 0 {
        errs.add(path, "a deployment needs at least one resource");
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = raw.keys.more_unknown() == 0;
    for (bit, name) in written {
        let path = path.key(name);
        let (Some(product), Some(slot)) = (
            bit.and_then(|b| Product::ALL.get(b).copied()),
            bit.and_then(|b| raw.fields.by_product.get(b)),
        ) else {
            errs.add(
                path,
                format_args!(
                    "unknown product \"{name}\" (expected es, kb, apm, fleet, ent or remote_cluster)"
                ),
            );
            ok = false;
            continue;
        };
        match resource(slot, path, errs) {
            Some(r) => {
                out.insert(product, r);
            }
            None => ok = false,
        }
    }
    if raw.keys.more_unknown() > 0 {
        errs.add(
            path,
            format_args!("{} more unknown products", raw.keys.more_unknown()),
        );
    }
    if raw.keys.duplicates().next().is_some() {
        duplicate_keys(&raw.keys, path, errs);
        ok = false;
    }
    ok.then_some(out)
}

fn resource(
    slot: &Slot<Obj<'_, RawResource<'_>>>,
    path: Path<'_>,
    errs: &mut Errors,
) -> Option<Resource> {
    let raw = object(slot, all::<RawResource>(), path, errs)?;
    let list_path = path.key("backends");
    let list = required_slot(&raw.backends, "an array", list_path, errs)?;
    if list.is_empty() {
        errs.add(list_path, "a resource needs at least one backend");
        return None;
    }
    // Addresses accepted so far: a second listing is refused, not merged,
    // because it usually means a typo in the other one.
    let mut seen: Vec<SocketAddr> = Vec::with_capacity(list.len());
    let backends = each(list, list_path, errs, |v, path, errs| {
        let s = string(v, path, errs)?;
        // Nearly every backend is `a.b.c.d:port`, read on a fast path
        // (`ip_source`); the standard parser reads the rest.
        let parsed = match super::ip_source::backend_v4(s.as_bytes()) {
            Some(addr) => Ok(addr),
            None => s.parse::<SocketAddr>(),
        };
        let refusal = match parsed {
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

/// A deployment's policy associations, checked against the policies that
/// exist: `policy(id)` is `None` for an unknown policy, else the policy's
/// region (`None` when the policy's own region is invalid: that is
/// reported there, not again here).
pub(super) fn associations<'r>(
    slot: Slot<Vec<Scalar<'_>>>,
    path: Path<'_>,
    region: Option<&Region>,
    policy: impl Fn(&str) -> Option<Option<&'r Region>>,
    errs: &mut Errors,
) -> Option<Vec<String>> {
    let list = match slot {
        None => return Some(Vec::new()),
        Some(Err(kind)) => return errs.expected(path, "an array", kind.phrase()),
        Some(Ok(list)) => list,
    };
    let ids = each(&list, path, errs, |v, path, errs| {
        let id = string(v, path, errs)?;
        let Some(theirs) = policy(id) else {
            errs.add(path, format_args!("unknown policy \"{id}\""));
            return None;
        };
        if let (Some(mine), Some(theirs)) = (region, theirs)
            && mine != theirs
        {
            errs.add(
                path,
                format_args!(
                    "policy \"{id}\" is in region \"{theirs}\" but the deployment is in \"{mine}\""
                ),
            );
            return None;
        }
        Some(id)
    })?;
    Some(first_mentions(ids.into_iter()))
}

/// The ids in order, each kept at its first mention: an association listed
/// twice is harmless.
fn first_mentions<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.iter().any(|o| o == id) {
            out.push(id.to_owned());
        }
    }
    out
}

//! Explain: route and decide a described request, and say why, for people
//! (`portcullis explain`, text) and programs (`--format json`,
//! `POST /explain`). Same code as the data plane: [`Router::evaluate`],
//! and [`Local::for_decision`] for the answer a refusal gets.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::endpoint::{ClientIdentity, PrivateEndpoint};
use crate::policy::{Decision, PolicySet, Reason, Rules, Snapshot, Verdict};
use crate::response::Local;
use crate::route::{RouteInput, Router};

/// A request to explain.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub host: &'a str,
    pub sni: Option<&'a str>,
    pub found_cluster: Option<&'a str>,
    pub client: ClientIdentity,
}

/// Routes and decides `query` exactly as the data plane does.
pub fn explain(set: &PolicySet, router: &Router, query: &Query<'_>) -> Decision {
    let input = RouteInput {
        host: Some(query.host),
        found_cluster: query.found_cluster,
        sni: query.sni,
    };
    router.evaluate(set, &input, query.client)
}

/// The JSON form (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JsonDecision<'a> {
    pub decision: &'static str,
    pub reason: &'static str,
    pub deployment: Option<&'a str>,
    pub product: Option<&'static str>,
    pub policy: Option<&'a str>,
    pub rule: Option<u32>,
}

pub fn to_json<'a>(set: &'a PolicySet, d: &Decision) -> JsonDecision<'a> {
    JsonDecision {
        decision: d.verdict.as_str(),
        reason: d.reason.as_str(),
        deployment: d
            .target
            .and_then(|t| set.deployment(t.deployment))
            .map(|dep| &*dep.id),
        product: d.target.map(|t| t.product.as_str()),
        policy: d.matched.and_then(|m| set.policy(m.policy)).map(|p| &*p.id),
        rule: d.matched.map(|m| m.rule),
    }
}

/// The text form. The first line starts with the decision. `snapshot`, when
/// given, adds the matched rule's text.
pub fn to_text(
    set: &PolicySet,
    snapshot: Option<&Snapshot>,
    query: &Query<'_>,
    d: &Decision,
) -> String {
    let mut out = String::new();
    let who = describe_client(&query.client);
    // "allowed (ip_match): 203.0.113.7 → deployment abc (prod), product es"
    let headline = |out: &mut String, to: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{} ({}): {who} → {to}", d.verdict.as_str(), d.reason);
    };
    let Some(target) = d.target else {
        let why = match d.reason {
            Reason::Misdirected => {
                "the TLS server name names a different deployment than the request"
            }
            _ => "no known deployment resource matches the host or X-Found-Cluster",
        };
        let status = Local::for_decision(d).map_or(0, |l| l.status().as_u16());
        headline(&mut out, &query.host);
        let _ = writeln!(out, "  answer: {status}; {why}");
        return out;
    };
    let Some(dep) = set.deployment(target.deployment) else {
        return out;
    };
    let name = match &dep.alias {
        Some(a) => format!("{} ({a})", dep.id),
        None => dep.id.to_string(),
    };
    headline(
        &mut out,
        &format_args!("deployment {name}, product {}", target.product),
    );
    match (d.reason, d.matched) {
        (_, Some(m)) => {
            let policy = set.policy(m.policy);
            let id = policy.map_or("?", |p| &*p.id);
            let kind = policy.map_or("?", |p| p.kind.as_str());
            let _ = write!(out, "  matched: policy \"{id}\" ({kind}), rule {}", m.rule);
            if let Some(rule) = snapshot.and_then(|s| rule_text(s, m.policy.get(), m.rule)) {
                let _ = write!(out, ": {rule}");
            }
            out.push('\n');
        }
        (Reason::NoPolicy, None) => {
            let _ = writeln!(
                out,
                "  why: no associated policy filters traffic (private connection policies without rules are records only)"
            );
        }
        _ => {
            let filtering = set
                .associated(target.deployment)
                .filter(|(_, p)| p.filters)
                .count();
            if filtering == 0 {
                let _ = writeln!(
                    out,
                    "  why: no filtering policy is associated, and unassociated_private_traffic = \"deny\" refuses private-endpoint traffic"
                );
            } else {
                let _ = writeln!(
                    out,
                    "  why: {filtering} associated filtering polic{} and no rule matches",
                    if filtering == 1 { "y" } else { "ies" }
                );
            }
            if query.client.endpoint.is_some() {
                let _ = writeln!(
                    out,
                    "  note: ip rules never match traffic that arrived through a private endpoint"
                );
            }
        }
    }
    if d.verdict == Verdict::WouldDeny {
        let _ = writeln!(
            out,
            "  enforcement: dry_run — the request is forwarded, and counted and logged as would_deny"
        );
    }
    let associated: Vec<String> = set
        .associated(target.deployment)
        .map(|(_, p)| {
            format!(
                "{} ({}, {} rule{}{})",
                p.id,
                p.kind.as_str(),
                p.rule_count,
                if p.rule_count == 1 { "" } else { "s" },
                if p.filters { "" } else { ", record only" }
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "  associated policies: {}",
        if associated.is_empty() {
            "none".to_owned()
        } else {
            associated.join(", ")
        }
    );
    out
}

fn describe_client(c: &ClientIdentity) -> String {
    match c.endpoint {
        Some(e) => format!("{} via private endpoint {e}", c.source),
        None => c.source.to_string(),
    }
}

fn rule_text(s: &Snapshot, policy: usize, rule: u32) -> Option<String> {
    let rule = rule as usize;
    let (source, description) = match &s.policies.get(policy)?.rules {
        Rules::Ip(r) => r
            .get(rule)
            .map(|r| (r.source.to_string(), &r.description))?,
        Rules::Vpce(r) => r.get(rule).map(|r| (r.source.clone(), &r.description))?,
        Rules::Azure(r) => r.get(rule).map(|r| {
            let name = r.azure_endpoint_name.as_deref().unwrap_or("");
            (
                format!("link_id {} {name}", r.link_id)
                    .trim_end()
                    .to_owned(),
                &r.description,
            )
        })?,
        Rules::Gcp(r) => r
            .get(rule)
            .map(|r| (r.source.to_string(), &r.description))?,
    };
    Some(match description {
        Some(d) => format!("{source} \"{d}\""),
        None => source,
    })
}

/// Builds the client identity from explain arguments.
pub fn client(source: IpAddr, endpoint: Option<PrivateEndpoint>) -> ClientIdentity {
    ClientIdentity { source, endpoint }
}

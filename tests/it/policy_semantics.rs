//! SPEC §1 (policy semantics) and §2 (routing), rule by rule, through the
//! same path the data plane uses: route, then decide.

use std::net::IpAddr;

use portcullis::endpoint::{ClientIdentity, PrivateEndpoint, VpceId};
use portcullis::explain::{self, Query};
use portcullis::policy::{
    Decision, PolicyOptions, PolicySet, Reason, UnassociatedPrivateTraffic, Verdict, parse_snapshot,
};
use portcullis::route::Router;
use serde_json::json;

const ZONE: &str = "es.example.com";

/// Deployments, all in aws-us-east-1 unless noted:
/// - `open`: no policies
/// - `records`: only a record-only vpce policy (no rules)
/// - `iponly`: office-ips
/// - `empty-ip`: an ip policy with zero rules
/// - `both`: office-ips + prod-vpce + records
/// - `union`: office-ips + partner-ips (union across policies)
/// - `dry`: office-ips, dry_run
/// - `az` (azure-eastus2): az-pe; `gcp` (gcp-us-central1): gcp-psc
fn snapshot() -> serde_json::Value {
    let dep = |id: &str, region: &str, policies: &[&str]| {
        json!({
            "id": id, "alias": format!("{id}-alias"), "region": region,
            "resources": { "es": { "backends": ["10.0.0.1:9200"] }, "kb": { "backends": ["10.0.0.2:5601"] } },
            "policies": policies,
        })
    };
    let mut dry = dep("dry", "aws-us-east-1", &["office-ips"]);
    dry["enforcement"] = json!("dry_run");
    json!({
        "version": 7,
        "deployments": [
            dep("open", "aws-us-east-1", &[]),
            dep("records", "aws-us-east-1", &["record-vpce"]),
            dep("iponly", "aws-us-east-1", &["office-ips"]),
            dep("empty-ip", "aws-us-east-1", &["no-ips"]),
            dep("both", "aws-us-east-1", &["office-ips", "prod-vpce", "record-vpce"]),
            dep("union", "aws-us-east-1", &["partner-ips", "office-ips"]),
            dry,
            dep("az", "azure-eastus2", &["az-pe"]),
            dep("gcp", "gcp-us-central1", &["gcp-psc"]),
        ],
        "policies": [
            { "id": "office-ips", "type": "ip", "region": "aws-us-east-1", "include_by_default": false,
              "rules": [ { "source": "203.0.113.0/24", "description": "HQ" }, { "source": "2001:db8::/32" },
                         { "source": "198.51.100.7" } ] },
            { "id": "partner-ips", "type": "ip", "region": "aws-us-east-1",
              "rules": [ { "source": "192.0.2.0/25" } ] },
            { "id": "no-ips", "type": "ip", "region": "aws-us-east-1", "rules": [] },
            { "id": "prod-vpce", "type": "vpce", "region": "aws-us-east-1",
              "rules": [ { "source": "vpce-0a1b2c3d4e5f67890" } ] },
            { "id": "record-vpce", "type": "vpce", "region": "aws-us-east-1", "rules": [] },
            { "id": "az-pe", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": 16777301, "azure_endpoint_name": "my-pe" } ] },
            { "id": "gcp-psc", "type": "gcp_private_service_connect_endpoint", "region": "gcp-us-central1",
              "rules": [ { "source": "18446744072646845332" } ] }
        ]
    })
}

struct World {
    set: PolicySet,
    router: Router,
}

fn world(options: PolicyOptions) -> World {
    let snapshot = parse_snapshot(snapshot().to_string().as_bytes()).expect("valid snapshot");
    World {
        set: PolicySet::compile(&snapshot, options),
        router: Router::new(&[ZONE, "vpce.us-east-1.aws.example.com"]),
    }
}

fn public(ip: &str) -> ClientIdentity {
    ClientIdentity {
        source: ip.parse().unwrap(),
        endpoint: None,
    }
}

fn vpce(id: &str) -> ClientIdentity {
    ClientIdentity {
        source: "10.11.12.13".parse().unwrap(),
        endpoint: Some(PrivateEndpoint::AwsVpce(
            VpceId::parse(id.as_bytes()).unwrap(),
        )),
    }
}

fn private(endpoint: PrivateEndpoint) -> ClientIdentity {
    ClientIdentity {
        // Deliberately an address an `ip` rule covers: it must not count.
        source: "203.0.113.9".parse().unwrap(),
        endpoint: Some(endpoint),
    }
}

/// (verdict, reason, matched policy id, rule index)
type Summary = (Verdict, Reason, Option<String>, Option<u32>);

/// Allowed: the deployment has no filtering policy (rule 1).
const NO_POLICY: Summary = (Allowed, NoPolicy, None, None);
/// Denied: no rule of the deployment's policies admits the client.
const UNMATCHED: Summary = (Denied, Unmatched, None, None);

/// Allowed by rule `rule` of policy `policy`, of kind `reason`.
fn admitted(reason: Reason, policy: &str, rule: u32) -> Summary {
    (Allowed, reason, Some(policy.to_owned()), Some(rule))
}

impl World {
    fn ask(&self, host: &str, client: ClientIdentity) -> Decision {
        self.ask_with(host, None, None, client)
    }

    fn ask_with(
        &self,
        host: &str,
        sni: Option<&str>,
        found_cluster: Option<&str>,
        client: ClientIdentity,
    ) -> Decision {
        let q = Query {
            host,
            sni,
            found_cluster,
            client,
        };
        explain::explain(&self.set, &self.router, &q)
    }

    fn summary(&self, d: &Decision) -> Summary {
        let j = explain::to_json(&self.set, d);
        (d.verdict, d.reason, j.policy.map(str::to_owned), j.rule)
    }

    fn deployment(&self, d: &Decision) -> Option<String> {
        explain::to_json(&self.set, d).deployment.map(str::to_owned)
    }

    /// Each (deployment id, client) gets its expected summary; a failure
    /// names the case.
    fn expect(&self, cases: &[(&str, ClientIdentity, Summary)]) {
        for (id, client, want) in cases {
            let got = self.summary(&self.ask(&host(id), *client));
            assert_eq!(&got, want, "{id} from {client:?}");
        }
    }

    /// Every client in `clients` gets `want` from deployment `id`.
    fn expect_all(&self, id: &str, clients: &[ClientIdentity], want: Summary) {
        let cases: Vec<_> = clients.iter().map(|&c| (id, c, want.clone())).collect();
        self.expect(&cases);
    }
}

fn host(id: &str) -> String {
    format!("{id}.{ZONE}")
}

use Reason::*;
use Verdict::*;

#[test]
fn rule_1_no_filtering_policy_allows_everything() {
    let w = world(PolicyOptions::default());
    let clients = [public("198.18.0.1"), public("::1"), vpce("vpce-anything")];
    w.expect_all("open", &clients, NO_POLICY);
}

#[test]
fn rule_2_record_only_private_policy_does_not_filter() {
    let w = world(PolicyOptions::default());
    let clients = [public("198.18.0.1"), vpce("vpce-unlisted")];
    w.expect_all("records", &clients, NO_POLICY);
}

#[test]
fn rule_2_ip_policy_without_rules_filters_everything() {
    let w = world(PolicyOptions::default());
    let clients = [public("203.0.113.9"), vpce("vpce-0a1b2c3d4e5f67890")];
    w.expect_all("empty-ip", &clients, UNMATCHED);
}

#[test]
fn rule_3_deny_by_default_and_union_across_policies_and_types() {
    let w = world(PolicyOptions::default());
    let office = |rule| admitted(Ip, "office-ips", rule);
    w.expect(&[
        ("iponly", public("198.18.0.1"), UNMATCHED),
        ("iponly", public("203.0.113.200"), office(0)),
        ("iponly", public("198.51.100.7"), office(2)),
        ("iponly", public("198.51.100.8"), UNMATCHED),
        // Either policy of a union admits; the first in snapshot order reports.
        ("union", public("192.0.2.1"), admitted(Ip, "partner-ips", 0)),
        ("union", public("203.0.113.1"), office(0)),
        ("union", public("192.0.2.128"), UNMATCHED),
        // Across types: ip and vpce on one deployment.
        ("both", public("203.0.113.1"), office(0)),
        (
            "both",
            vpce("vpce-0a1b2c3d4e5f67890"),
            admitted(Vpce, "prod-vpce", 0),
        ),
        ("both", vpce("vpce-ffffffffffffffff0"), UNMATCHED),
    ]);
}

#[test]
fn rule_4_ip_rules_never_match_private_endpoint_traffic() {
    // 203.0.113.9 is in office-ips, but the request came through a VPC
    // endpoint that no policy lists.
    let c = private(PrivateEndpoint::AwsVpce(
        VpceId::parse(b"vpce-unlisted").unwrap(),
    ));
    let w = world(PolicyOptions::default());
    w.expect(&[("iponly", c, UNMATCHED), ("both", c, UNMATCHED)]);
}

#[test]
fn rule_4_ipv4_mapped_sources_match_ipv4_rules_and_ipv6_rules_match_ipv6() {
    let office = |rule| admitted(Ip, "office-ips", rule);
    let cases = [
        (public("::ffff:203.0.113.5"), office(0)),
        (public("::ffff:198.51.100.7"), office(2)),
        (public("::ffff:198.18.0.1"), UNMATCHED),
        (public("2001:db8:1234::1"), office(1)),
        (public("2001:db9::1"), UNMATCHED),
    ];
    let w = world(PolicyOptions::default());
    w.expect(&cases.map(|(client, want)| ("iponly", client, want)));
}

#[test]
fn rule_5_vpce_ids_compare_case_insensitively() {
    let w = world(PolicyOptions::default());
    let ids = [
        "vpce-0a1b2c3d4e5f67890",
        "VPCE-0A1B2C3D4E5F67890",
        "Vpce-0a1B2c3D4e5F67890",
    ];
    w.expect_all("both", &ids.map(vpce), admitted(Vpce, "prod-vpce", 0));
}

#[test]
fn rule_5_azure_link_ids_and_gcp_psc_ids() {
    let azure = |link_id| private(PrivateEndpoint::AzureLinkId(link_id));
    let gcp = |psc_id| private(PrivateEndpoint::GcpPscConnectionId(psc_id));
    let listed_elsewhere = private(PrivateEndpoint::AwsVpce(
        VpceId::parse(b"vpce-0a1b2c3d4e5f67890").unwrap(),
    ));
    let w = world(PolicyOptions::default());
    w.expect(&[
        ("az", azure(16777301), admitted(Azure, "az-pe", 0)),
        ("az", azure(16777302), UNMATCHED),
        (
            "gcp",
            gcp(18446744072646845332),
            admitted(Gcp, "gcp-psc", 0),
        ),
        ("gcp", gcp(18446744072646845333), UNMATCHED),
        // An endpoint listed by some other deployment's policy does not admit.
        ("iponly", listed_elsewhere, UNMATCHED),
        // Public traffic to a private-only deployment is denied.
        ("az", public("203.0.113.9"), UNMATCHED),
    ]);
}

#[test]
fn rule_6_unassociated_private_traffic_deny() {
    let w = world(PolicyOptions {
        unassociated_private_traffic: UnassociatedPrivateTraffic::Deny,
    });
    let listed = vpce("vpce-0a1b2c3d4e5f67890");
    w.expect(&[
        // Private traffic now needs an associated listing...
        ("open", listed, UNMATCHED),
        ("records", listed, UNMATCHED),
        ("both", listed, admitted(Vpce, "prod-vpce", 0)),
        // ...while public traffic keeps rule 1.
        ("open", public("198.18.0.1"), NO_POLICY),
        ("records", public("198.18.0.1"), NO_POLICY),
    ]);
}

#[test]
fn rule_9_dry_run_gives_would_deny_and_keeps_allows() {
    let w = world(PolicyOptions::default());
    let d = w.ask(&host("dry"), public("198.18.0.1"));
    assert_eq!(w.summary(&d), (WouldDeny, Unmatched, None, None));
    assert!(d.verdict.forwards());
    w.expect(&[("dry", public("203.0.113.1"), admitted(Ip, "office-ips", 0))]);
    assert!(
        !w.ask(&host("iponly"), public("198.18.0.1"))
            .verdict
            .forwards()
    );
}

#[test]
fn routing_host_forms() {
    let w = world(PolicyOptions::default());
    let who = |h: &str| {
        let d = w.ask(h, public("198.18.0.1"));
        (
            w.deployment(&d),
            d.target.map(|t| t.product.as_str()),
            d.reason,
        )
    };
    let found = |id: &str, p: &'static str| (Some(id.to_owned()), Some(p), NoPolicy);
    assert_eq!(who("open-alias.es.es.example.com"), found("open", "es"));
    assert_eq!(who("open-alias.kb.es.example.com"), found("open", "kb"));
    assert_eq!(who("open.kb.es.example.com"), found("open", "kb"));
    assert_eq!(who("open.es.example.com"), found("open", "es"));
    // Case, port and trailing dot do not matter.
    assert_eq!(
        who("OPEN-Alias.KB.Es.Example.Com:9243"),
        found("open", "kb")
    );
    assert_eq!(who("open.es.example.com.:443"), found("open", "es"));
    // A second zone.
    assert_eq!(
        who("open.vpce.us-east-1.aws.example.com"),
        found("open", "es")
    );
    assert_eq!(
        who("open-alias.kb.vpce.us-east-1.aws.example.com"),
        found("open", "kb")
    );
    let unknown = (None, None, UnknownDeployment);
    // No `{alias}.{Z}` form; unknown names, products, zones and resources.
    assert_eq!(who("open-alias.es.example.com"), unknown);
    assert_eq!(who("nope.es.example.com"), unknown);
    assert_eq!(who("open.xyz.es.example.com"), unknown);
    assert_eq!(who("open.apm.es.example.com"), unknown);
    assert_eq!(who("open.es.other.com"), unknown);
    assert_eq!(who("a.open.kb.es.example.com"), unknown);
    assert_eq!(who("es.example.com"), unknown);
    assert_eq!(who("127.0.0.1:9243"), unknown);
}

#[test]
fn routing_x_found_cluster_only_when_host_is_not_a_deployment() {
    let w = world(PolicyOptions::default());
    let who =
        |h: &str, hdr: &str| w.deployment(&w.ask_with(h, None, Some(hdr), public("198.18.0.1")));
    assert_eq!(who("es.example.com", "open"), Some("open".into()));
    assert_eq!(who("127.0.0.1", "open-alias.kb"), Some("open".into()));
    assert_eq!(who("[::1]:9243", "OPEN.kb"), Some("open".into()));
    // The alias form needs a product.
    assert_eq!(who("es.example.com", "open-alias"), None);
    // A deployment host name wins over the header.
    assert_eq!(
        who("records.es.example.com", "open"),
        Some("records".into())
    );
}

#[test]
fn routing_sni_naming_another_deployment_is_misdirected() {
    let w = world(PolicyOptions::default());
    let ask = |sni: &str, h: &str| w.ask_with(h, Some(sni), None, public("198.18.0.1")).reason;
    assert_eq!(
        ask("records.es.example.com", "open.es.example.com"),
        Misdirected
    );
    assert_eq!(
        ask("records.es.example.com", "open-alias.kb.es.example.com"),
        Misdirected
    );
    // Same deployment, other product, or an SNI that names no deployment.
    assert_eq!(
        ask("open.es.example.com", "open-alias.kb.es.example.com"),
        NoPolicy
    );
    assert_eq!(ask("es.example.com", "open.es.example.com"), NoPolicy);
    assert_eq!(ask("whatever.example.org", "open.es.example.com"), NoPolicy);
    // The header cannot escape the SNI either.
    let d = w.ask_with(
        "es.example.com",
        Some("records.es.example.com"),
        Some("open"),
        public("1.1.1.1"),
    );
    assert_eq!(d.reason, Misdirected);
}

#[test]
fn deployments_with_the_same_policy_set_share_one_compiled_set() {
    let w = world(PolicyOptions::default());
    let s = w.set.stats();
    assert_eq!(s.deployments, 9);
    // open, records, iponly(+dry), empty-ip, both, union, az, gcp
    assert_eq!(s.policy_sets, 8);
}

#[test]
fn explain_text_names_the_rule_and_starts_with_the_decision() {
    let w = world(PolicyOptions::default());
    let snapshot = parse_snapshot(snapshot().to_string().as_bytes()).unwrap();
    let q = Query {
        host: "iponly.es.example.com",
        sni: None,
        found_cluster: None,
        client: public("203.0.113.77"),
    };
    let d = explain::explain(&w.set, &w.router, &q);
    let text = explain::to_text(&w.set, Some(&snapshot), &q, &d);
    assert!(text.starts_with("allowed"), "{text}");
    assert!(
        text.contains("policy \"office-ips\" (ip), rule 0: 203.0.113.0/24 \"HQ\""),
        "{text}"
    );
    let q = Query {
        client: public("198.18.0.1"),
        host: "dry.es.example.com",
        ..q
    };
    let d = explain::explain(&w.set, &w.router, &q);
    assert!(explain::to_text(&w.set, None, &q, &d).starts_with("would_deny"));
    let q = Query {
        host: "nope.es.example.com",
        ..q
    };
    let d = explain::explain(&w.set, &w.router, &q);
    assert!(explain::to_text(&w.set, None, &q, &d).starts_with("denied (unknown_deployment)"));
}

#[test]
fn a_target_from_another_snapshot_is_refused_not_panicking() {
    let w = world(PolicyOptions::default());
    let small = parse_snapshot(
        json!({"version": 1, "deployments": [], "policies": []})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let empty = PolicySet::compile(&small, PolicyOptions::default());
    let d = w.ask(&host("open"), public("1.2.3.4"));
    let facts = portcullis::policy::RequestFacts {
        target: d.target.unwrap(),
        client: public("1.2.3.4"),
    };
    assert_eq!(
        portcullis::policy::decide(&empty, &facts).reason,
        UnknownDeployment
    );
    let _: IpAddr = facts.client.source;
}

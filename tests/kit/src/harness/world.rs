//! The standard world.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{Value, json};

use super::*;

pub const OPEN: &str = "open0001";
pub const OFFICE: &str = "ip0001";
pub const MIXED: &str = "mixed0001";
pub const AWS_OTHER: &str = "aws0002";
pub const AZURE: &str = "az0001";
pub const AZURE_OTHER: &str = "az0002";
pub const GCP: &str = "gcp0001";
pub const GCP_OTHER: &str = "gcp0002";
pub const DEAD: &str = "dead0001";
pub const FAILOVER: &str = "failover0001";
/// `office-ips` associated, but `enforcement: dry_run`.
pub const DRY_RUN: &str = "dry0001";
/// Only an empty `vpce` policy: a record, which filters nothing.
pub const RECORD: &str = "record0001";

/// In `office-ips` by default.
pub const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// In no policy.
pub const DENIED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
pub const VPCE: &str = "vpce-0a1b2c3d4e5f67890";
pub const OTHER_VPCE: &str = "vpce-0123456789abcdef0";
pub const AZURE_LINK: u32 = 16_777_301;
pub const GCP_PSC: u64 = 18_446_744_072_646_845_332;

/// `{id}.es.test`
pub fn host(id: &str) -> String {
    format!("{id}.{ZONE}")
}

/// Two backends (es, kb), a dead address, and the proxy in front, with
/// [`Fixture::snapshot`] version 1 applied.
pub struct Fixture {
    pub proxy: TestProxy,
    pub es: Backend,
    pub kb: Backend,
    pub dead: SocketAddr,
}

impl Fixture {
    pub async fn start() -> Self {
        Self::with(ProxyOptions::default()).await
    }

    pub async fn with(options: ProxyOptions) -> Self {
        let es = Backend::start("es").await;
        let kb = Backend::start("kb").await;
        let dead = unused_port();
        let snapshot = world(
            1,
            es.addr,
            kb.addr,
            dead,
            &["203.0.113.0/24", "2001:db8::/32"],
        );
        let proxy = TestProxy::start(&options, &snapshot).await;
        Self {
            proxy,
            es,
            kb,
            dead,
        }
    }

    /// The standard snapshot at `version`, with `office-ips` holding
    /// `office_rules`.
    pub fn snapshot(&self, version: u64, office_rules: &[&str]) -> Value {
        world(version, self.es.addr, self.kb.addr, self.dead, office_rules)
    }

    pub fn client(&self, sni: &str) -> ClientBuilder {
        self.proxy.client(sni)
    }

    /// Backend requests across es and kb.
    pub fn backend_requests(&self) -> usize {
        self.es.requests() + self.kb.requests()
    }

    /// One HTTP/1.1 `GET` on a fresh connection, SNI = host.
    pub async fn get(&self, preamble: Vec<u8>, host: &str, path: &str) -> Reply {
        let mut conn = self.client(host).preamble(preamble).connect().await;
        conn.get(host, path).await
    }
}

fn world(
    version: u64,
    es: SocketAddr,
    kb: SocketAddr,
    dead: SocketAddr,
    office_rules: &[&str],
) -> Value {
    let (es, kb, dead) = (es.to_string(), kb.to_string(), dead.to_string());
    let dep = |id: &str, alias: &str, region: &str, policies: &[&str]| {
        json!({
            "id": id, "alias": alias, "region": region,
            "resources": { "es": { "backends": [es] } },
            "policies": policies,
        })
    };
    json!({
        "version": version,
        "deployments": [
            { "id": OPEN, "alias": "open", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es] }, "kb": { "backends": [kb] } },
              "policies": [] },
            { "id": OFFICE, "alias": "office", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es] }, "kb": { "backends": [kb] } },
              "policies": ["office-ips"] },
            dep(MIXED, "mixed", "aws-us-east-1", &["office-ips", "prod-vpce"]),
            dep(AWS_OTHER, "aws-other", "aws-us-east-1", &["other-vpce"]),
            dep(AZURE, "azure", "azure-eastus2", &["az-pe"]),
            dep(AZURE_OTHER, "azure-other", "azure-eastus2", &["az-other"]),
            dep(GCP, "gcp", "gcp-us-central1", &["gcp-psc"]),
            dep(GCP_OTHER, "gcp-other", "gcp-us-central1", &["gcp-other"]),
            { "id": DEAD, "region": "aws-us-east-1",
              "resources": { "es": { "backends": [dead] } }, "policies": [] },
            { "id": FAILOVER, "region": "aws-us-east-1",
              "resources": { "es": { "backends": [dead, es] } }, "policies": [] },
            { "id": DRY_RUN, "region": "aws-us-east-1", "enforcement": "dry_run",
              "resources": { "es": { "backends": [es] } }, "policies": ["office-ips"] },
            dep(RECORD, "record", "aws-us-east-1", &["vpce-record"]),
        ],
        "policies": [
            office_ips(office_rules),
            { "id": "prod-vpce", "type": "vpce", "region": "aws-us-east-1",
              "rules": [ { "source": VPCE } ] },
            { "id": "other-vpce", "type": "vpce", "region": "aws-us-east-1",
              "rules": [ { "source": "vpce-0fffffffffffffff0" } ] },
            { "id": "vpce-record", "type": "vpce", "region": "aws-us-east-1", "rules": [] },
            { "id": "az-pe", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": AZURE_LINK, "azure_endpoint_name": "my-pe",
                           "azure_endpoint_guid": "8f3e1c2a-0000-4000-8000-000000000001" } ] },
            { "id": "az-other", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": 42 } ] },
            { "id": "gcp-psc", "type": "gcp_private_service_connect_endpoint",
              "region": "gcp-us-central1", "rules": [ { "source": GCP_PSC.to_string() } ] },
            { "id": "gcp-other", "type": "gcp_private_service_connect_endpoint",
              "region": "gcp-us-central1", "rules": [ { "source": "7" } ] },
        ],
    })
}

/// The fields of an explanation in JSON (`explain --format json`,
/// `POST /explain`), in order.
pub const EXPLAIN_KEYS: [&str; 6] = [
    "decision",
    "reason",
    "deployment",
    "product",
    "policy",
    "rule",
];

/// The `office-ips` policy (`aws-us-east-1`) admitting `sources`.
pub(super) fn office_ips(sources: &[&str]) -> Value {
    let rules: Vec<Value> = sources.iter().map(|s| json!({ "source": s })).collect();
    json!({ "id": "office-ips", "type": "ip", "region": "aws-us-east-1", "rules": rules })
}

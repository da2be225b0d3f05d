//! `portcullis publish` (SPEC §3.1), run as the built binary against a
//! real etcd (the kit's `EtcdCluster`): one key per entry, then only what
//! changed, in the order that keeps every state valid; `--dry-run` and an
//! invalid file write nothing; exit codes 0, 1 and 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use http::Method;
use portcullis::policy::{Snapshot, SnapshotErrors, parse_snapshot, validate_value};
use portcullis::publish::{self, PublishError};
use portcullis::reload::etcd::{self, EtcdSettings};
use portcullis_test_kit::TempDir;

use super::cli::{assert_exit, stderr, stdout};
use portcullis_test_kit::harness::etcd::EtcdCluster;
use portcullis_test_kit::harness::{ProxyConfig, RunningBinary, WAIT, admin_request};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const PREFIX: &str = "/portcullis/";
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/snapshot.example.json");
/// The example's deployments.
const MAIN: &str = "d53192a1f0e54c0bb2c1b0c6a6f6e2f1";
const OPEN: &str = "0a1b2c3d4e5f40718293a4b5c6d7e8f9";

fn example() -> Value {
    let text = std::fs::read_to_string(EXAMPLE).expect("read the example snapshot");
    serde_json::from_str(&text).expect("example snapshot JSON")
}

/// The example, changed: one policy edited and one dropped, one
/// deployment dropped and one added; the rest as it was.
fn changed() -> Value {
    let mut doc = example();
    let policies = doc["policies"].as_array_mut().expect("policies");
    policies.retain(|p| p["id"] != "gcp-psc");
    for p in policies.iter_mut().filter(|p| p["id"] == "az-pe") {
        p["rules"][0]["azure_endpoint_name"] = json!("renamed-pe");
    }
    let deployments = doc["deployments"].as_array_mut().expect("deployments");
    deployments.retain(|d| d["id"] != OPEN);
    deployments.push(json!({
        "id": "new0001", "region": "azure-eastus2",
        "resources": { "es": { "backends": ["127.0.0.1:9200"] } },
        "policies": ["az-pe"]
    }));
    doc
}

/// `n` ip policies and no deployment.
fn many_policies(n: usize) -> Value {
    let policies: Vec<Value> = (0..n)
        .map(|i| {
            json!({ "id": format!("p{i:05}"), "type": "ip", "region": "aws-us-east-1",
                    "rules": [ { "source": "10.0.0.0/8" } ] })
        })
        .collect();
    json!({ "version": 1, "policies": policies, "deployments": [] })
}

/// `n` deployments, deployment `i` associated with policy `{name}{i}`,
/// and those policies.
fn paired(n: usize, name: &str) -> Value {
    let policies: Vec<Value> = (0..n)
        .map(|i| {
            json!({ "id": format!("{name}{i:03}"), "type": "ip", "region": "aws-us-east-1",
                    "rules": [ { "source": "10.0.0.0/8" } ] })
        })
        .collect();
    let deployments: Vec<Value> = (0..n)
        .map(|i| {
            json!({ "id": format!("d{i:03}"), "region": "aws-us-east-1",
                    "resources": { "es": { "backends": ["127.0.0.1:9200"] } },
                    "policies": [format!("{name}{i:03}")] })
        })
        .collect();
    json!({ "version": 1, "policies": policies, "deployments": deployments })
}

/// A one-member cluster and a directory for snapshot files.
struct World {
    cluster: EtcdCluster,
    dir: TempDir,
}

impl World {
    /// A world with the example snapshot published; the revision after it.
    async fn with_example() -> (Self, i64) {
        let w = Self::start().await;
        let out = w.publish(&w.file("first.json", &example()), &[]).await;
        assert_exit(&out, 0, "publish");
        let revision = w.cluster.revision().await;
        (w, revision)
    }

    async fn start() -> Self {
        Self {
            cluster: EtcdCluster::start(1).await,
            dir: TempDir::new(),
        }
    }

    fn file(&self, name: &str, doc: &Value) -> PathBuf {
        self.dir.write(name, doc.to_string())
    }

    /// `portcullis publish --snapshot FILE --etcd ENDPOINTS` and `more`.
    async fn publish(&self, snapshot: &Path, more: &[&str]) -> Output {
        publish_to(&self.cluster.endpoints().join(","), snapshot, more).await
    }

    /// Every key under the prefix: its value (as JSON, or the raw string)
    /// and mod revision.
    async fn stored(&self) -> BTreeMap<String, (Value, i64)> {
        self.cluster
            .get_prefix(PREFIX)
            .await
            .into_iter()
            .map(|(key, value, revision)| (key, (json_or_string(&value), revision)))
            .collect()
    }

    /// What [`World::stored`] returned at `revision`.
    async fn stored_at(&self, revision: i64) -> BTreeMap<String, (Value, i64)> {
        let mut client = self.cluster.client().await;
        let options = GetOptions::new().with_prefix().with_revision(revision);
        let read = client
            .get(PREFIX, Some(options))
            .await
            .expect("read at a revision");
        read.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (key, (json_or_string(kv.value()), kv.mod_revision()))
            })
            .collect()
    }
}

fn json_or_string(value: &[u8]) -> Value {
    serde_json::from_slice(value)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(value).into()))
}

async fn publish_to(endpoints: &str, snapshot: &Path, more: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(["publish", "--snapshot"])
        .arg(snapshot)
        .args(["--etcd", endpoints])
        .args(more)
        .output()
        .await
        .expect("run portcullis publish")
}

/// The entries stored under the prefix, as a snapshot.
fn as_snapshot(stored: &BTreeMap<String, (Value, i64)>) -> Snapshot {
    by_id(validate_stored(stored).expect("the stored entries form a valid snapshot"))
}

/// The entries stored under the prefix, validated as one snapshot.
fn validate_stored(stored: &BTreeMap<String, (Value, i64)>) -> Result<Snapshot, SnapshotErrors> {
    let under = |folder: &str| -> Vec<Value> {
        let folder = format!("{PREFIX}{folder}");
        stored
            .iter()
            .filter(|(k, _)| k.starts_with(&folder))
            .map(|(_, (v, _))| v.clone())
            .collect()
    };
    let doc = json!({ "version": 1, "policies": under("policies/"),
                      "deployments": under("deployments/") });
    validate_value(&doc)
}

/// `doc` as a snapshot comparable with [`as_snapshot`]'s.
fn parsed(doc: &Value) -> Snapshot {
    by_id(parse_snapshot(doc.to_string().as_bytes()).expect("valid snapshot"))
}

/// Entries sorted by id, version 1: etcd keeps no order and no version.
fn by_id(mut s: Snapshot) -> Snapshot {
    s.version = 1;
    s.policies.sort_by(|a, b| a.id.cmp(&b.id));
    s.deployments.sort_by(|a, b| a.id.cmp(&b.id));
    s
}

fn key(folder: &str, id: &str) -> String {
    format!("{PREFIX}{folder}/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_one_key_per_entry_then_only_what_changed() {
    let w = World::start().await;
    // Not an entry: publish leaves it alone and says so.
    w.cluster.put(&format!("{PREFIX}settings"), "keep me").await;
    let first = w.file("first.json", &example());
    let out = w.publish(&first, &[]).await;
    assert_exit(&out, 0, "first publish");
    let revision = w.cluster.revision().await;
    assert_eq!(
        stdout(&out),
        format!(
            "+ policy az-pe\n+ policy gcp-psc\n+ policy office-ips\n+ policy prod-vpce\n\
             + deployment {OPEN}\n+ deployment {MAIN}\n\
             published to {PREFIX}: 6 added, 0 changed, 0 removed, 0 unchanged; etcd revision {revision}\n"
        )
    );
    assert!(
        stderr(&out).contains(&format!("{PREFIX}settings: not an entry")),
        "{}",
        stderr(&out)
    );
    let before = w.stored().await;
    assert_eq!(as_snapshot(&before), parsed(&example()));
    assert_eq!(before[&format!("{PREFIX}settings")].0, "keep me");

    let second = w.file("second.json", &changed());
    let out = w.publish(&second, &[]).await;
    assert_exit(&out, 0, "second publish");
    let deleted = format!("- deployment {OPEN}");
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>()[..4],
        [
            "~ policy az-pe",
            "+ deployment new0001",
            deleted.as_str(),
            "- policy gcp-psc",
        ]
    );
    let after = w.stored().await;
    assert_eq!(as_snapshot(&after), parsed(&changed()));
    // Only the changed keys were written.
    for unchanged in [
        key("policies", "office-ips"),
        key("policies", "prod-vpce"),
        key("deployments", MAIN),
        format!("{PREFIX}settings"),
    ] {
        assert_eq!(after[&unchanged].1, before[&unchanged].1, "{unchanged}");
    }
    let edited = key("policies", "az-pe");
    assert!(after[&edited].1 > before[&edited].1, "{edited} rewritten");
    assert!(!after.contains_key(&key("policies", "gcp-psc")));
    assert!(!after.contains_key(&key("deployments", OPEN)));

    // The same file again: nothing to write.
    let revision = w.cluster.revision().await;
    let out = w.publish(&second, &[]).await;
    assert_exit(&out, 0, "publishing the same file again");
    assert_eq!(
        stdout(&out),
        format!(
            "published to {PREFIX}: 0 added, 0 changed, 0 removed, 5 unchanged; etcd revision {revision}\n"
        )
    );
    assert_eq!(w.cluster.revision().await, revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_difference_and_writes_nothing() {
    let (w, revision) = World::with_example().await;
    let out = w
        .publish(&w.file("second.json", &changed()), &["--dry-run"])
        .await;
    assert_exit(&out, 0, "dry run");
    assert_eq!(
        stdout(&out),
        format!(
            "~ policy az-pe\n+ deployment new0001\n- deployment {OPEN}\n- policy gcp-psc\n\
             dry run, nothing written to {PREFIX}: 1 to add, 1 to change, 2 to remove, 3 unchanged (etcd revision {revision})\n"
        )
    );
    assert_eq!(w.cluster.revision().await, revision, "nothing written");
    assert_eq!(as_snapshot(&w.stored().await), parsed(&example()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_missing_file_exits_1_and_writes_nothing() {
    let (w, revision) = World::with_example().await;
    let mut invalid = changed();
    invalid["deployments"][0]["policies"] = json!(["office-ips", "no-such-policy"]);
    invalid["policies"][0]["rules"][0]["source"] = json!("not-a-cidr");
    let out = w.publish(&w.file("invalid.json", &invalid), &[]).await;
    assert_exit(&out, 1, "invalid file");
    let err = stderr(&out);
    assert!(err.contains("invalid snapshot (2 errors)"), "{err}");
    assert!(
        err.contains("deployments[0].policies[1]: unknown policy \"no-such-policy\""),
        "{err}"
    );
    assert_eq!(stdout(&out), "");

    let out = w.publish(&w.dir.path("missing.json"), &[]).await;
    assert_exit(&out, 1, "missing file");
    assert!(stderr(&out).contains("missing.json"), "{}", stderr(&out));
    assert_eq!(w.cluster.revision().await, revision, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_goes_in_transactions_of_at_most_128_entries() {
    let w = World::start().await;
    let n = 128 * 10 + 5;
    let revision = w.cluster.revision().await;
    let out = w
        .publish(&w.file("many.json", &many_policies(n)), &[])
        .await;
    assert_exit(&out, 0, "publish");
    // One revision per transaction: 11 transactions.
    assert_eq!(w.cluster.revision().await, revision + 11);
    assert_eq!(w.stored().await.len(), n);
    let err = stderr(&out);
    assert!(
        err.contains("publish: 10 of 11 transactions written"),
        "{err}"
    );
    assert!(
        err.contains("publish: 11 of 11 transactions written"),
        "{err}"
    );
    assert_eq!(stdout(&out).lines().count(), n + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_leaves_a_valid_snapshot_in_etcd() {
    let w = World::start().await;
    let n = 150;
    let first = w.file("old.json", &paired(n, "old"));
    assert_exit(&w.publish(&first, &[]).await, 0, "first publish");
    let start = w.cluster.revision().await;
    // Every deployment moves to a new policy and the old ones go: 150 new
    // policies, 150 changed deployments, 150 deleted policies. In any
    // other order a state in between would name a missing policy.
    let second = w.file("new.json", &paired(n, "new"));
    assert_exit(&w.publish(&second, &[]).await, 0, "second publish");
    let end = w.cluster.revision().await;
    assert_eq!(end - start, 4, "450 entries: 4 transactions");
    for revision in start + 1..=end {
        let state = w.stored_at(revision).await;
        if let Err(e) = validate_stored(&state) {
            panic!("at revision {revision}, {} keys: {e}", state.len());
        }
    }
    assert_eq!(as_snapshot(&w.stored().await), parsed(&paired(n, "new")));
}

/// `GET /snapshot`'s `snapshot` object.
async fn served(proxy: &RunningBinary) -> Value {
    let reply = admin_request(proxy.admin, Method::GET, "/snapshot", &[], None)
        .await
        .expect("GET /snapshot");
    let body: Value = serde_json::from_slice(&reply.body).expect("JSON body");
    body["snapshot"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_following_the_prefix_serves_what_publish_wrote() {
    let w = World::start().await;
    let first = w.file("first.json", &example());
    assert_exit(&w.publish(&first, &[]).await, 0, "first publish");
    let config = ProxyConfig::new(&w.dir)
        .set("snapshot.etcd.endpoints", w.cluster.endpoints())
        .set("snapshot.etcd.prefix", PREFIX)
        .write(&w.dir);
    let exe = Path::new(BIN);
    let proxy = RunningBinary::start(exe, &config, &w.dir.0).await;
    let snapshot = served(&proxy).await;
    assert_eq!(snapshot["source"], "etcd");
    assert_eq!(snapshot["version"], w.cluster.revision().await);
    assert_eq!(
        (&snapshot["deployments"], &snapshot["policies"]),
        (&json!(2), &json!(4))
    );

    let second = w.file("second.json", &changed());
    assert_exit(&w.publish(&second, &[]).await, 0, "second publish");
    let revision = w.cluster.revision().await;
    let deadline = Instant::now() + WAIT;
    let snapshot = loop {
        let snapshot = served(&proxy).await;
        if snapshot["version"] == revision {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "still serving {snapshot}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (&snapshot["deployments"], &snapshot["policies"]),
        (&json!(2), &json!(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_write_stops_publishing_instead_of_being_overwritten() {
    let w = World::start().await;
    let settings = EtcdSettings::new(w.cluster.endpoints(), PREFIX);
    let mut client = etcd::connect(&settings, &settings.endpoints)
        .await
        .expect("connect");
    let snapshot = parse_snapshot(example().to_string().as_bytes()).expect("valid");
    let plan = publish::prepare(&mut client, &settings, &snapshot)
        .await
        .expect("plan");
    // Someone else writes a key the plan adds, after it was read.
    let theirs = key("policies", "office-ips");
    w.cluster.put(&theirs, "theirs").await;
    let written = publish::write(&mut client, &settings, &plan, |_| {}).await;
    assert!(
        matches!(written, Err(PublishError::Conflict { written: 0, .. })),
        "{written:?}"
    );
    let stored = w.stored().await;
    assert_eq!(stored.len(), 1, "only theirs: {stored:?}");
    assert_eq!(stored[&theirs].0, "theirs");
}

#[tokio::test]
async fn etcd_unreachable_exits_1_with_the_reason() {
    let dir = TempDir::new();
    let snapshot = dir.write("s.json", example().to_string());
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = publish_to(&endpoint, &snapshot, &["--timeout", "3s"]).await;
    assert_exit(&out, 1, "etcd down");
    let err = stderr(&out);
    assert!(
        err.contains("error: reading /portcullis/ from etcd"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    let dir = TempDir::new();
    let snapshot = dir.write("s.json", example().to_string());
    for (args, says) in [
        (&["--etcd", "127.0.0.1:2379"][..], "http://host:port"),
        (
            &["--etcd", "http://127.0.0.1:1", "--prefix", ""],
            "must not be empty",
        ),
        (
            &["--etcd", "http://127.0.0.1:1", "--user", "u"],
            "--password-file",
        ),
        (
            &["--etcd", "http://127.0.0.1:1", "--cert-file", "c"],
            "--key-file",
        ),
        (&[], "--etcd"),
    ] {
        let out = tokio::process::Command::new(BIN)
            .args(["publish", "--snapshot"])
            .arg(&snapshot)
            .args(args)
            .output()
            .await
            .expect("run portcullis publish");
        assert_exit(&out, 2, &format!("{args:?}"));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

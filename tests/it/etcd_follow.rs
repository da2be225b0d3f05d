//! The etcd source end to end (SPEC §3.1): the real `portcullis::serve`
//! following a prefix in a real etcd cluster on loopback, while clients
//! keep connections open. Entries are written with etcd's own client, one
//! transaction per change, the way `portcullis publish` writes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Txn, TxnOp};
use http::StatusCode;
use portcullis::reload::etcd::keys::{self, Kind};
use portcullis_test_kit::harness::etcd::EtcdCluster;
use portcullis_test_kit::harness::*;
use serde_json::{Value, json};

use super::data_plane::connect_over;
use super::reload::{RULES_A, RULES_B, World, decision, denied_conn, until_decision};

const PREFIX: &str = "/portcullis/";
/// A change in etcd must be in force within this (a watch event, one
/// compile; or a reconnect with backoff after an outage).
const FOLLOW_WAIT: Duration = Duration::from_secs(15);

/// Writes every entry of `snapshot` in one transaction; returns its
/// revision.
async fn put_world(client: &mut Client, snapshot: &Value) -> i64 {
    let mut ops = Vec::new();
    for (kind, list) in [
        (Kind::Policy, "policies"),
        (Kind::Deployment, "deployments"),
    ] {
        for entry in snapshot[list].as_array().expect(list) {
            let id = entry["id"].as_str().expect("id");
            ops.push(TxnOp::put(
                keys::key(PREFIX, kind, id),
                entry.to_string(),
                None,
            ));
        }
    }
    let txn = client.txn(Txn::new().and_then(ops)).await.expect("txn");
    txn.header().expect("header").revision()
}

/// A cluster of `members`, the reload tests' world version 1 written to it
/// (one transaction: its revision comes back too), and a client.
async fn a_world_in_etcd(members: usize) -> (EtcdCluster, World, Client, i64) {
    let cluster = EtcdCluster::start(members).await;
    let w = World::new().await;
    let mut etcd = cluster.client().await;
    let revision = put_world(&mut etcd, &w.snapshot(1, RULES_A)).await;
    (cluster, w, etcd, revision)
}

async fn put(client: &mut Client, kind: Kind, id: &str, value: &Value) -> i64 {
    let r = client
        .put(keys::key(PREFIX, kind, id), value.to_string(), None)
        .await
        .expect("put");
    r.header().expect("header").revision()
}

fn office_ips(rules: &[&str]) -> Value {
    let rules: Vec<Value> = rules.iter().map(|r| json!({ "source": r })).collect();
    json!({"id": "office-ips", "type": "ip", "region": "aws-us-east-1", "rules": rules})
}

/// `GET /snapshot`, whole (the `etcd` status and `errors` are beside
/// `snapshot`).
async fn snapshot_reply(p: &Served) -> Value {
    let r = p.admin_get("/snapshot").await;
    serde_json::from_slice(&r.body).expect("JSON")
}

/// Waits until `GET /snapshot` satisfies `check`.
async fn until_snapshot(p: &Served, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + FOLLOW_WAIT;
    loop {
        let v = snapshot_reply(p).await;
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {FOLLOW_WAIT:?}; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A keep-alive connection to deployment `id` (its host as SNI) from
/// [`ALLOWED_V4`].
async fn conn_to(p: &Served, id: &str) -> Conn {
    connect_over(p.client(&host(id)).preamble(v1_from(ALLOWED_V4)), false).await
}

async fn serve(
    cluster_endpoints: Vec<String>,
    more: impl FnOnce(ServeOptions) -> ServeOptions,
) -> Served {
    let p = Served::start(&more(ServeOptions::etcd(cluster_endpoints, PREFIX))).await;
    p.wait_ready_within(FOLLOW_WAIT).await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_prefix_and_a_change_reaches_the_next_request_on_an_open_connection() {
    let (cluster, w, mut etcd, revision) = a_world_in_etcd(1).await;
    let p = serve(cluster.endpoints(), |o| o).await;

    let v = snapshot_reply(&p).await;
    assert_eq!(v["snapshot"]["source"], "etcd", "{v}");
    assert_eq!(v["snapshot"]["version"], revision, "{v}");
    assert_eq!(v["snapshot"]["deployments"], 3, "{v}");
    assert_eq!(v["errors"], json!([]), "{v}");
    assert_eq!(v["etcd"]["endpoint"], cluster.endpoints()[0], "{v}");

    let mut conn = denied_conn(&p, false).await;
    let changed = put(&mut etcd, Kind::Policy, "office-ips", &office_ips(RULES_B)).await;
    until_decision(&mut conn, StatusCode::OK).await;
    let v = until_snapshot(&p, "the change's revision in force", |v| {
        v["snapshot"]["version"] == changed && v["etcd"]["behind"] == 0
    })
    .await;
    assert_eq!(v["etcd"]["connected"], true, "{v}");
    let ready = p.admin_get("/readyz").await;
    let ready: Value = serde_json::from_slice(&ready.body).expect("JSON");
    assert_eq!(ready["snapshot_version"], changed, "{ready}");
    assert_eq!(ready["etcd"]["revision"], changed, "{ready}");

    // One source of truth: a pushed document is refused.
    let pushed = p
        .put_snapshot(w.snapshot(1_000_000, RULES_A).to_string())
        .await;
    assert_eq!(pushed.status, StatusCode::CONFLICT);
}

/// The initial read comes in pages (`snapshot.etcd.page_size`), never one
/// response; one key a page here, so the world takes a page per entry,
/// and every entry of it is in force at the revision of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_read_comes_in_pages() {
    let (cluster, w, _etcd, revision) = a_world_in_etcd(1).await;
    let snapshot = w.snapshot(1, RULES_A);
    let keys = snapshot["policies"].as_array().map_or(0, Vec::len)
        + snapshot["deployments"].as_array().map_or(0, Vec::len);
    assert!(keys > 2, "the world needs several pages ({keys} keys)");
    let p = serve(cluster.endpoints(), |o| o.etcd_page_size(1)).await;
    let v = snapshot_reply(&p).await;
    assert_eq!(v["snapshot"]["version"], revision, "{v}");
    assert_eq!(
        v["snapshot"]["deployments"],
        snapshot["deployments"].as_array().map_or(0, Vec::len),
        "{v}"
    );
    assert_eq!(
        v["snapshot"]["policies"],
        snapshot["policies"].as_array().map_or(0, Vec::len),
        "{v}"
    );
    assert_eq!(v["errors"], json!([]), "{v}");
    // Read whole: the filtering policy, from one page, applies to the
    // deployment, from another.
    denied_conn(&p, false).await;
    let mut open = conn_to(&p, OPEN).await;
    assert_eq!(open.get(&host(OPEN), "/").await.status, StatusCode::OK);
}

/// A member that speaks only TLS, accepts only clients with a certificate
/// its CA signed, and has authentication on: the proxy reaches it with
/// `ca_file`, `cert_file`/`key_file` and `user`/`password_file`, reads
/// the prefix and follows a change written after authentication was
/// turned on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_member_over_tls_with_a_client_certificate_and_a_password() {
    let cluster = EtcdCluster::start_tls(1).await;
    let w = World::new().await;
    let mut etcd = cluster.client().await;
    put_world(&mut etcd, &w.snapshot(1, RULES_A)).await;
    const PASSWORD: &str = "a test password";
    cluster.enable_auth(PASSWORD).await;
    let tls = cluster.tls().expect("started with TLS");
    let dir = TempDir::new();
    let password_file = dir.write("etcd.password", format!("{PASSWORD}\n"));
    let path = |p: &std::path::Path| p.display().to_string();
    let p = serve(cluster.endpoints(), |o| {
        o.set("snapshot.etcd.ca_file", path(&tls.ca_file))
            .set("snapshot.etcd.cert_file", path(&tls.cert_file))
            .set("snapshot.etcd.key_file", path(&tls.key_file))
            .set("snapshot.etcd.user", "root")
            .set("snapshot.etcd.password_file", path(&password_file))
    })
    .await;
    let v = snapshot_reply(&p).await;
    assert_eq!(v["etcd"]["endpoint"], cluster.endpoint(0), "{v}");
    assert!(cluster.endpoint(0).starts_with("https://"), "{v}");

    let mut conn = denied_conn(&p, false).await;
    let mut signed_in = cluster.client_as("root", PASSWORD).await;
    put(
        &mut signed_in,
        Kind::Policy,
        "office-ips",
        &office_ips(RULES_B),
    )
    .await;
    until_decision(&mut conn, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_entry_is_refused_alone_and_recovers() {
    let (cluster, w, mut etcd, _) = a_world_in_etcd(1).await;
    let p = serve(cluster.endpoints(), |o| o).await;
    let mut office = denied_conn(&p, false).await;

    // A bad CIDR: refused, listed, counted; the last valid version stays.
    put(
        &mut etcd,
        Kind::Policy,
        "office-ips",
        &office_ips(&["198.51.100.0/33"]),
    )
    .await;
    // A deployment naming a policy that does not exist: never served.
    let stranger = json!({"id": "new0001", "region": "aws-us-east-1",
        "resources": {"es": {"backends": [w.es.addr.to_string()]}}, "policies": ["missing"]});
    put(&mut etcd, Kind::Deployment, "new0001", &stranger).await;
    let v = until_snapshot(&p, "two refused entries", |v| {
        v["errors"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    let keys: Vec<&str> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "/portcullis/deployments/new0001",
            "/portcullis/policies/office-ips"
        ],
        "{v}"
    );
    assert!(v["errors"].to_string().contains("unknown policy"), "{v}");
    let m = p.metrics().await;
    assert_eq!(m.sum("portcullis_snapshot_invalid_entries", &[]), 2.0);
    assert_eq!(
        decision(&mut office).await,
        StatusCode::FORBIDDEN,
        "the last valid office-ips"
    );
    let mut open = conn_to(&p, OPEN).await;
    assert_eq!(open.get(&host(OPEN), "/").await.status, StatusCode::OK);
    let mut new = conn_to(&p, "new0001").await;
    assert_eq!(
        new.get(&host("new0001"), "/").await.status,
        StatusCode::NOT_FOUND
    );

    // Fixed: in force at once, and no longer listed.
    put(&mut etcd, Kind::Policy, "office-ips", &office_ips(RULES_B)).await;
    put(
        &mut etcd,
        Kind::Deployment,
        "new0001",
        &json!({"id": "new0001", "region": "aws-us-east-1",
        "resources": {"es": {"backends": [w.es.addr.to_string()]}}, "policies": []}),
    )
    .await;
    until_decision(&mut office, StatusCode::OK).await;
    until_snapshot(&p, "no refused entries", |v| v["errors"] == json!([])).await;
    assert_eq!(new.get(&host("new0001"), "/").await.status, StatusCode::OK);
    let m = p.metrics().await;
    assert_eq!(m.sum("portcullis_snapshot_invalid_entries", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_under_load_fails_no_request() {
    let (mut cluster, _world, _etcd, _) = a_world_in_etcd(3).await;
    // The leader's endpoint first, so the proxy follows through the member
    // that dies and has to move to another.
    let leader = cluster.leader().await;
    let mut endpoints = cluster.endpoints();
    endpoints.swap(0, leader);
    let p = Arc::new(serve(endpoints, |o| o).await);
    let v = snapshot_reply(&p).await;
    assert_eq!(v["etcd"]["endpoint"], cluster.endpoint(leader), "{v}");

    // Clients on keep-alive connections, all the way through.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (p, stop, served, failed) = (p.clone(), stop.clone(), served.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut conn = conn_to(&p, OPEN).await;
            while !stop.load(Ordering::Relaxed) {
                let status = conn.get(&host(OPEN), "/").await.status;
                let counter = if status == StatusCode::OK {
                    &served
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(leader).await;
    // A change after the kill still arrives, through the survivors (the
    // harness's put retries across the election).
    let mut conn = denied_conn(&p, false).await;
    let key = keys::key(PREFIX, Kind::Policy, "office-ips");
    cluster.put(&key, office_ips(RULES_B).to_string()).await;
    until_decision(&mut conn, StatusCode::OK).await;
    let dead = cluster.endpoint(leader);
    until_snapshot(&p, "following through a surviving member", |v| {
        v["etcd"]["connected"] == true && v["etcd"]["endpoint"] != dead.as_str()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let served = served.load(Ordering::Relaxed);
    assert!(served > 50, "only {served} requests were served");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the leader died"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outage_restart_serves_the_saved_state_then_resumes() {
    let (mut cluster, _world, etcd, revision) = a_world_in_etcd(1).await;
    let state = TempDir::new();
    let with_state = |o: ServeOptions| o.state_dir(&state.0);
    let p = serve(cluster.endpoints(), with_state).await;
    until_snapshot(&p, "the prefix in force", |v| {
        v["snapshot"]["version"] == revision
    })
    .await;
    // Saved after the swap, in the background.
    let saved = state.0.join("snapshot.json");
    eventually(FOLLOW_WAIT, "the state saved", || {
        let there = saved.exists();
        async move { there }
    })
    .await;
    drop(etcd);

    // etcd gone, and the proxy restarted: the saved state serves.
    cluster.kill_all().await;
    p.stop().await;
    let p = serve(cluster.endpoints(), with_state).await;
    let v = snapshot_reply(&p).await;
    assert_eq!(v["snapshot"]["version"], revision, "{v}");
    assert!(
        v["snapshot"]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("state:")),
        "{v}"
    );
    let mut conn = denied_conn(&p, false).await;

    // etcd back, with a change made while it was away: followed again.
    cluster.restart_all().await;
    let mut etcd = cluster.client().await;
    let changed = put(&mut etcd, Kind::Policy, "office-ips", &office_ips(RULES_B)).await;
    until_decision(&mut conn, StatusCode::OK).await;
    until_snapshot(&p, "following again", |v| {
        v["snapshot"]["version"] == changed && v["snapshot"]["source"] == "etcd"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_while_disconnected_reads_the_prefix_again() {
    let (mut cluster, _world, _etcd, _) = a_world_in_etcd(3).await;
    // The proxy knows one member only, so killing it disconnects it.
    let p = serve(vec![cluster.endpoint(0)], |o| o).await;
    let mut conn = denied_conn(&p, false).await;
    cluster.kill(0).await;

    // While it is away: a change, a deletion, then the history compacted
    // (the harness's writes retry across an election, if member 0 led).
    let policy = keys::key(PREFIX, Kind::Policy, "office-ips");
    cluster.put(&policy, office_ips(RULES_B).to_string()).await;
    let last = cluster
        .delete(&keys::key(PREFIX, Kind::Deployment, DEAD))
        .await;
    cluster.compact(last).await;

    cluster.restart(0).await;
    until_decision(&mut conn, StatusCode::OK).await;
    until_snapshot(&p, "the compacted-away changes in force", |v| {
        v["snapshot"]["version"] == last && v["snapshot"]["deployments"] == 2
    })
    .await;
    let mut dead = conn_to(&p, DEAD).await;
    assert_eq!(
        dead.get(&host(DEAD), "/").await.status,
        StatusCode::NOT_FOUND
    );
}

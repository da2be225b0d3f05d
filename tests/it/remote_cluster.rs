//! Remote-cluster traffic (SPEC §2.1): the TLS pass-through listener.
//!
//! The node behind the proxy is a real TLS server with its own CA; clients
//! trust only that CA, so every completed handshake proves the proxy did
//! not terminate TLS. The node reports the SNI it received and echoes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_test_kit::harness::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

const RC_OPEN: &str = "rc0001";
const RC_OFFICE: &str = "rc0002";
const RC_DRY: &str = "rc0003";
/// Has an `es` resource only.
const ES_ONLY: &str = "es0001";
const RC_FAILOVER: &str = "rcfail01";
const RC_DEAD: &str = "rcdead01";
/// Removed by [`world`] from version 2 on.
const RC_GONE: &str = "gone0001";
/// In `office-ips` only up to version 1.
const REVOKED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);

fn world(version: u64, node: SocketAddr, dead: SocketAddr) -> Value {
    let (node, dead) = (node.to_string(), dead.to_string());
    let mut rules = vec![json!({ "source": "203.0.113.0/24" })];
    let mut deployments = vec![
        json!({ "id": RC_OPEN, "alias": "rc-open", "region": "aws-us-east-1",
                "resources": { "es": { "backends": [node] },
                               "remote_cluster": { "backends": [node] } },
                "policies": [] }),
        json!({ "id": RC_OFFICE, "alias": "rc-office", "region": "aws-us-east-1",
                "resources": { "remote_cluster": { "backends": [node] } },
                "policies": ["office-ips"] }),
        json!({ "id": RC_DRY, "region": "aws-us-east-1", "enforcement": "dry_run",
                "resources": { "remote_cluster": { "backends": [node] } },
                "policies": ["office-ips"] }),
        json!({ "id": ES_ONLY, "region": "aws-us-east-1",
                "resources": { "es": { "backends": [node] } }, "policies": [] }),
        json!({ "id": RC_FAILOVER, "region": "aws-us-east-1",
                "resources": { "remote_cluster": { "backends": [dead, node] } },
                "policies": [] }),
        json!({ "id": RC_DEAD, "region": "aws-us-east-1",
                "resources": { "remote_cluster": { "backends": [dead] } }, "policies": [] }),
    ];
    if version < 2 {
        rules.push(json!({ "source": REVOKED_V4.to_string() }));
        deployments.push(json!({ "id": RC_GONE, "region": "aws-us-east-1",
            "resources": { "remote_cluster": { "backends": [node] } }, "policies": [] }));
    }
    json!({
        "version": version,
        "deployments": deployments,
        "policies": [
            { "id": "office-ips", "type": "ip", "region": "aws-us-east-1", "rules": rules },
        ],
    })
}

struct Rig {
    proxy: TestProxy,
    node: TlsNode,
    dead: SocketAddr,
}

impl Rig {
    async fn start(filter: bool, more_toml: &str) -> Self {
        let node = TlsNode::start().await;
        let dead = unused_port();
        let options = ProxyOptions {
            extra_toml: remote_cluster_toml(filter, more_toml),
            ..ProxyOptions::default()
        };
        let proxy = TestProxy::start(&options, &world(1, node.addr, dead)).await;
        Self { proxy, node, dead }
    }

    async fn connect(&self, from: impl Into<IpAddr>, name: &str) -> Result<RcConn, String> {
        RcConn::connect(self.proxy.rc_addr(), &v1_from(from), name, true).await
    }

    /// A connection from [`ALLOWED_V4`] spliced to `rc0001`, which has no
    /// filtering policy: for the tests of the splice itself.
    async fn spliced_open(&self) -> RcConn {
        self.connect(ALLOWED_V4, &host(RC_OPEN))
            .await
            .expect("spliced")
    }

    fn count(&self, result: &str) -> f64 {
        self.proxy.metrics().sum(
            "portcullis_remote_cluster_connections_total",
            &[("result", result)],
        )
    }

    fn ends(&self, end: &str) -> f64 {
        self.proxy.metrics().sum(
            "portcullis_remote_cluster_connection_ends_total",
            &[("end", end)],
        )
    }

    async fn no_connection_open(&self) {
        eventually(WAIT, "remote_cluster_connections_active = 0", || {
            let active = self
                .proxy
                .metrics()
                .sum("portcullis_remote_cluster_connections_active", &[]);
            async move { active == 0.0 }
        })
        .await;
    }
}

/// The log line for deployment `id` (the only one expected).
fn line_for<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["deployment"] == id).collect();
    assert_eq!(found.len(), 1, "lines for {id}: {lines:?}");
    found[0]
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn spliced_byte_for_byte_to_a_node_with_its_own_certificate() {
    let rig = Rig::start(false, "").await;
    // filter = false: policies are not consulted, even for a denied source.
    let payload = pseudo_random(256 * 1024);
    for name in [host(RC_OPEN), "rc-office.es.test".to_owned()] {
        let mut conn = rig.connect(DENIED_V4, &name).await.expect("spliced");
        assert_eq!(conn.sni_seen, name, "the node saw the client's SNI");
        conn.echo(&payload).await.expect("echoed through the proxy");
        conn.tls.shutdown().await.expect("close_notify");
        let rest = conn
            .read_to_end_within(WAIT)
            .await
            .expect("clean end of stream");
        assert_eq!(rest, b"bye\n");
    }
    assert_eq!(rig.node.connections(), 2);
    assert_eq!(rig.count("spliced"), 2.0);
    let m = rig.proxy.metrics();
    for direction in ["client_to_backend", "backend_to_client"] {
        let bytes = m.sum(
            "portcullis_remote_cluster_bytes_total",
            &[("direction", direction)],
        );
        assert!(bytes >= 2.0 * payload.len() as f64, "{direction}: {bytes}");
    }
    let lines = rig.proxy.connection_lines(2).await;
    for (id, sni) in [
        (RC_OPEN, host(RC_OPEN)),
        (RC_OFFICE, "rc-office.es.test".to_owned()),
    ] {
        let l = line_for(&lines, id);
        assert_eq!(l["target"], "portcullis::remote_cluster");
        assert_eq!(l["message"], "connection");
        assert_eq!(l["sni"], sni.as_str());
        assert_eq!(l["client_ip"], DENIED_V4.to_string());
        assert_eq!(l["backend"], rig.node.addr.to_string());
        assert_eq!(l["decision"], "allowed");
        assert_eq!(l["reason"], "unfiltered");
        assert_eq!(l["end"], "client_closed");
        let up = l["bytes_client_to_backend"].as_u64().expect("bytes up");
        let down = l["bytes_backend_to_client"].as_u64().expect("bytes down");
        assert!(up > payload.len() as u64, "ClientHello and payload: {up}");
        assert!(down > payload.len() as u64, "handshake and echo: {down}");
        assert!(l["duration_ms"].as_f64().is_some());
    }
    assert_eq!(rig.ends("client_closed"), 2.0);
    rig.no_connection_open().await;
}

#[tokio::test]
async fn with_filter_policies_decide_at_connect_time() {
    let rig = Rig::start(true, "").await;
    let office = "rc-office.es.test";

    let mut allowed = rig.connect(ALLOWED_V4, office).await.expect("allowed");
    allowed.echo(b"hello").await.expect("echo");

    let before = rig.node.connections();
    let denied = rig.connect(DENIED_V4, office).await;
    assert!(denied.is_err(), "a denied client is closed");
    assert_eq!(rig.node.connections(), before, "never reaches a node");
    assert_eq!(rig.count("denied"), 1.0);

    // dry_run: would be denied, spliced anyway and counted.
    let mut dry = rig
        .connect(DENIED_V4, &host(RC_DRY))
        .await
        .expect("dry run");
    dry.echo(b"dry").await.expect("echo");
    assert_eq!(rig.count("would_deny"), 1.0);

    // No filtering policy: allowed.
    let mut open = rig.connect(DENIED_V4, &host(RC_OPEN)).await.expect("open");
    open.echo(b"open").await.expect("echo");
    assert_eq!(rig.count("spliced"), 2.0);

    drop((allowed, dry, open));
    let lines = rig.proxy.connection_lines(4).await;
    let allowed = lines
        .iter()
        .find(|l| l["deployment"] == RC_OFFICE && l["end"] == "client_closed")
        .expect("allowed line");
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["reason"], "ip");
    assert_eq!(allowed["policy"], "office-ips");
    let denied: Vec<&Value> = lines.iter().filter(|l| l["end"] == "denied").collect();
    assert_eq!(denied.len(), 1, "{lines:?}");
    assert_eq!(denied[0]["decision"], "denied");
    assert_eq!(denied[0]["reason"], "unmatched");
    assert_eq!(denied[0]["client_ip"], DENIED_V4.to_string());
    assert_eq!(denied[0]["backend"], "");
    assert_eq!(line_for(&lines, RC_DRY)["decision"], "would_deny");
    assert_eq!(line_for(&lines, RC_OPEN)["reason"], "no_policy");
}

/// One streaming connection: echoes 1 KiB round trips until told to stop.
struct Stream {
    rounds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<std::io::Result<RcConn>>,
}

fn stream(mut conn: RcConn, stop: Arc<AtomicBool>) -> Stream {
    let rounds = Arc::new(AtomicU64::new(0));
    let count = rounds.clone();
    let task = tokio::spawn(async move {
        let payload = pseudo_random(1024);
        while !stop.load(Ordering::Relaxed) {
            conn.echo(&payload).await?;
            count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(conn)
    });
    Stream { rounds, task }
}

#[tokio::test]
async fn a_new_snapshot_revokes_only_the_connections_it_denies_within_a_second() {
    let rig = Rig::start(true, "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut keep = Vec::new();
    for i in 0..16u8 {
        let from = Ipv4Addr::new(203, 0, 113, 10 + i);
        let name = if i % 2 == 0 {
            "rc-office.es.test".to_owned()
        } else {
            host(RC_OPEN)
        };
        let conn = rig.connect(from, &name).await.expect("allowed");
        keep.push(stream(conn, stop.clone()));
    }
    let revoked_policy = stream(
        rig.connect(REVOKED_V4, "rc-office.es.test")
            .await
            .expect("allowed by v1"),
        stop.clone(),
    );
    let revoked_gone = stream(
        rig.connect(ALLOWED_V4, &host(RC_GONE))
            .await
            .expect("v1 has it"),
        stop.clone(),
    );
    eventually(WAIT, "every stream flowing", || {
        let flowing = keep
            .iter()
            .chain([&revoked_policy, &revoked_gone])
            .all(|s| s.rounds.load(Ordering::Relaxed) >= 5);
        async move { flowing }
    })
    .await;

    let applied = Instant::now();
    rig.proxy.apply(&world(2, rig.node.addr, rig.dead));
    let before: Vec<u64> = keep
        .iter()
        .map(|s| s.rounds.load(Ordering::Relaxed))
        .collect();
    for s in [revoked_policy, revoked_gone] {
        let r = within_for(Duration::from_secs(1), "revoked connection closed", s.task)
            .await
            .expect("task ran");
        assert!(r.is_err(), "the revoked connection was cut");
    }
    let closed_after = applied.elapsed();
    assert!(closed_after < Duration::from_secs(1), "{closed_after:?}");

    // The others keep streaming, untouched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (s, before) in keep.iter().zip(&before) {
        let now = s.rounds.load(Ordering::Relaxed);
        assert!(now > *before + 3, "still flowing: {before} -> {now}");
    }
    stop.store(true, Ordering::Relaxed);
    for s in keep {
        let conn = within("stream stops", s.task)
            .await
            .expect("task ran")
            .expect("never cut");
        drop(conn);
    }
    assert_eq!(rig.ends("revoked"), 2.0);
    let lines = rig.proxy.connection_lines(18).await;
    let revoked: Vec<&Value> = lines.iter().filter(|l| l["end"] == "revoked").collect();
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    assert!(revoked.iter().any(|l| l["deployment"] == RC_GONE));
    assert!(
        revoked
            .iter()
            .any(|l| l["client_ip"] == REVOKED_V4.to_string())
    );
    assert!(
        revoked
            .iter()
            .all(|l| l["bytes_backend_to_client"].as_u64() > Some(5 * 1024))
    );
}

#[tokio::test]
async fn half_close_passes_the_eof_on_and_the_answer_still_arrives() {
    let rig = Rig::start(false, "").await;
    let mut conn = rig.spliced_open().await;
    conn.tls.write_all(b"ping").await.expect("write");
    // close_notify, then FIN: the client will send nothing more.
    conn.tls.shutdown().await.expect("half-close");
    // The node only answers `bye` once it has seen the EOF, so this proves
    // the EOF went through and the other direction kept flowing.
    let rest = conn.read_to_end_within(WAIT).await.expect("clean end");
    assert_eq!(rest, b"pingbye\n");
    let lines = rig.proxy.connection_lines(1).await;
    assert_eq!(lines[0]["end"], "client_closed");
    rig.no_connection_open().await;
}

#[tokio::test]
async fn refused_connections_never_reach_a_node_and_are_counted_and_logged() {
    let rig = Rig::start(false, "").await;
    let addr = rig.proxy.rc_addr();

    let no_sni = RcConn::connect(addr, &v1_from(ALLOWED_V4), &host(RC_OPEN), false).await;
    assert!(no_sni.is_err());
    for name in ["nope.es.test", "rc0001.kb.es.test", "rc0001.example.com"] {
        assert!(rig.connect(ALLOWED_V4, name).await.is_err(), "{name}");
    }
    assert!(rig.connect(ALLOWED_V4, &host(ES_ONLY)).await.is_err());

    // Untrusted PROXY sender (only 127.0.0.1 is trusted).
    let mut untrusted = Raw::connect(addr, Some(Ipv4Addr::new(127, 0, 0, 2).into())).await;
    untrusted.write(&v1_from(ALLOWED_V4)).await;
    untrusted.closed_within(WAIT).await;

    // Not TLS at all.
    let mut http = Raw::connect(addr, None).await;
    http.write(&v1_from(ALLOWED_V4)).await;
    http.write(b"GET / HTTP/1.1\r\nHost: rc0001.es.test\r\n\r\n")
        .await;
    let closed = http.closed_within(WAIT).await;
    assert_eq!(closed.bytes_received, 0);

    assert_eq!(
        rig.node.connections(),
        0,
        "no refused connection reached the node"
    );
    for (result, n) in [
        ("no_sni", 1.0),
        ("unknown_deployment", 3.0),
        ("no_resource", 1.0),
        ("proxy_protocol", 1.0),
        ("client_hello", 1.0),
        ("spliced", 0.0),
    ] {
        assert_eq!(rig.count(result), n, "{result}");
    }
    // One line per connection that got past the PROXY header.
    let lines = rig.proxy.connection_lines(6).await;
    let ends: Vec<&str> = lines.iter().filter_map(|l| l["end"].as_str()).collect();
    for end in [
        "no_sni",
        "unknown_deployment",
        "no_resource",
        "client_hello",
    ] {
        assert!(ends.contains(&end), "{end}: {ends:?}");
    }
    let no_resource = lines
        .iter()
        .find(|l| l["end"] == "no_resource")
        .expect("no_resource line");
    assert_eq!(no_resource["deployment"], ES_ONLY);
    assert_eq!(no_resource["decision"], "denied");
    let not_tls = lines
        .iter()
        .find(|l| l["end"] == "client_hello")
        .expect("client_hello line");
    assert_eq!(not_tls["reason"], "not_tls");
    rig.no_connection_open().await;
}

#[tokio::test]
async fn connect_failures_fail_over_to_the_next_node_then_refuse() {
    let rig = Rig::start(false, "").await;
    for _ in 0..4 {
        let mut conn = rig
            .connect(ALLOWED_V4, &host(RC_FAILOVER))
            .await
            .expect("fails over to the live node");
        conn.echo(b"x").await.expect("echo");
    }
    assert!(rig.connect(ALLOWED_V4, &host(RC_DEAD)).await.is_err());
    assert_eq!(rig.count("connect_failed"), 1.0);
    assert_eq!(rig.count("spliced"), 4.0);
    let lines = rig.proxy.connection_lines(5).await;
    let failed = line_for(&lines, RC_DEAD);
    assert_eq!(failed["end"], "connect_failed");
    assert_eq!(failed["decision"], "allowed");
    assert_eq!(failed["backend"], "");
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let rig = Rig::start(false, "idle_timeout = \"400ms\"").await;
    let mut idle = rig.spliced_open().await;
    let mut busy = rig.spliced_open().await;
    let started = Instant::now();
    for _ in 0..10 {
        busy.echo(b"tick")
            .await
            .expect("busy connection stays open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = idle.read_to_end_within(WAIT).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    // The proxy closes both directions; TLS sees an EOF without
    // close_notify, which rustls reports as an error.
    assert!(rest.is_err() || rest.is_ok_and(|r| r.is_empty()));
    let lines = rig.proxy.connection_lines(1).await;
    assert_eq!(lines[0]["end"], "idle_timeout");
    assert!(lines[0]["duration_ms"].as_f64() >= Some(400.0));
    busy.echo(b"still")
        .await
        .expect("busy connection stays open");
}

#[tokio::test]
async fn drain_closes_the_listener_and_cuts_spliced_connections_after_the_grace() {
    let rig = Rig::start(false, "").await;
    let addr = rig.proxy.rc_addr();
    let mut conn = rig.spliced_open().await;
    let drained = Instant::now();
    rig.proxy.drain();
    eventually(WAIT, "listener closed", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    // Within the grace (1 s in the test config) the connection still works.
    conn.echo(b"during the grace").await.expect("still spliced");
    let _ = conn.read_to_end_within(WAIT).await;
    assert!(
        drained.elapsed() >= Duration::from_millis(900),
        "cut only after the grace"
    );
    let lines = rig.proxy.connection_lines(1).await;
    assert_eq!(lines[0]["end"], "shutdown");
}

#[tokio::test]
async fn the_https_listener_never_routes_to_a_remote_cluster_resource() {
    let rig = Rig::start(false, "").await;
    for h in [
        host(RC_OFFICE),
        "rc-office.remote_cluster.es.test".to_owned(),
        "rc0002.remote_cluster.es.test".to_owned(),
    ] {
        // SNI: the zone apex (the test certificate covers it), so only the
        // host names the deployment.
        let mut conn = rig
            .proxy
            .client(ZONE)
            .preamble(v1_from(ALLOWED_V4))
            .connect()
            .await;
        conn.get(&h, "/")
            .await
            .assert_local(StatusCode::NOT_FOUND, Some(UNKNOWN_BODY));
    }
    assert_eq!(rig.node.connections(), 0);
}

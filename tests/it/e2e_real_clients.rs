//! End to end with real clients (issue 7): HAProxy from the distribution
//! plays the cloud load balancer (`mode tcp`, `send-proxy-v2`) in front of
//! portcullis, which forwards to a backend answering like Elasticsearch.
//! The official `elasticsearch` Python client and curl (HTTP/1.1 and
//! HTTP/2) talk through it:
//!
//! - an allowed client gets results;
//! - a denied client gets the 403, which the Python client surfaces as
//!   `AuthorizationException` carrying the JSON body (SPEC §6);
//! - a policy change through `PUT /snapshot` flips a live client from
//!   allowed to denied on the connection it already has open.
//!
//! Needs `haproxy`, `curl` with HTTP/2 and the Python client in
//! `target/e2e-venv` — `.ci/setup` installs all three. Override with
//! `PORTCULLIS_E2E_HAPROXY`, `PORTCULLIS_E2E_CURL`, `PORTCULLIS_E2E_PYTHON`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_test_kit::harness::*;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// The whole test, including the Python interpreter's start-up.
const BOUND: Duration = Duration::from_secs(90);
/// Any one external command.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

const LOCALHOST_ONLY: &str = "127.0.0.1/32";
/// A documentation range no test client uses.
const NOBODY: &str = "192.0.2.0/24";

fn tool(env: &str, default: impl Into<PathBuf>) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

fn python() -> PathBuf {
    tool(
        "PORTCULLIS_E2E_PYTHON",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-venv/bin/python"),
    )
}

/// `office` is filtered to loopback clients, `closed` to nobody here.
fn snapshot(version: u64, es: SocketAddr, office_rule: &str) -> Value {
    json!({
        "version": version,
        "deployments": [
            { "id": "office0001", "alias": "office", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es.to_string()] } },
              "policies": ["office-ips"] },
            { "id": "closed0001", "alias": "closed", "region": "aws-us-east-1",
              "resources": { "es": { "backends": [es.to_string()] } },
              "policies": ["nobody"] },
        ],
        "policies": [
            { "id": "office-ips", "type": "ip", "region": "aws-us-east-1",
              "rules": [{ "source": office_rule }] },
            { "id": "nobody", "type": "ip", "region": "aws-us-east-1",
              "rules": [{ "source": NOBODY }] },
        ],
    })
}

/// Answers like an Elasticsearch node: the root endpoint and `_search`,
/// with the product header the official clients insist on.
async fn elasticsearch_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<Incoming>| async move {
                    let body = if req.uri().path().ends_with("/_search") {
                        json!({
                            "took": 3, "timed_out": false,
                            "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
                            "hits": { "total": { "value": 2, "relation": "eq" }, "max_score": 1.0,
                                      "hits": [
                                          { "_index": "logs", "_id": "1", "_score": 1.0, "_source": { "msg": "a" } },
                                          { "_index": "logs", "_id": "2", "_score": 1.0, "_source": { "msg": "b" } },
                                      ] },
                        })
                    } else {
                        json!({
                            "name": "instance-0000000001", "cluster_name": "e2e-office",
                            "version": { "number": "8.19.0", "build_flavor": "default" },
                            "tagline": "You Know, for Search",
                        })
                    };
                    let response = Response::builder()
                        .header("content-type", "application/json")
                        .header("x-elastic-product", "Elasticsearch")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .expect("static response");
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// HAProxy as the cloud load balancer. Killed on drop.
struct LoadBalancer {
    addr: SocketAddr,
    /// Held for `kill_on_drop`.
    _child: Child,
}

impl LoadBalancer {
    async fn start(dir: &TempDir, portcullis: SocketAddr) -> Self {
        // Debian installs it in /usr/sbin, which a non-root PATH may lack.
        let sbin = Path::new("/usr/sbin/haproxy");
        let default = if sbin.exists() {
            sbin
        } else {
            Path::new("haproxy")
        };
        let haproxy = tool("PORTCULLIS_E2E_HAPROXY", default);
        let mut last = String::new();
        // The port is picked by binding port 0 and closing; retried on the
        // rare collision.
        for _ in 0..5 {
            let addr = unused_port();
            let config = dir.write(
                "haproxy.cfg",
                format!(
                    "global\n    maxconn 256\n\
                     defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
                     frontend lb\n    bind {addr}\n    default_backend portcullis\n\
                     backend portcullis\n    server p1 {portcullis} send-proxy-v2\n"
                ),
            );
            let mut child = Command::new(&haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}); run .ci/setup to install HAProxy",
                        haproxy.display()
                    )
                });
            for _ in 0..200 {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("haproxy exited with {status}");
                    break;
                }
                if TcpStream::connect(addr).await.is_ok() {
                    return Self {
                        addr,
                        _child: child,
                    };
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = child.kill().await;
        }
        panic!("HAProxy did not start: {last}");
    }
}

/// Runs a command to completion within `COMMAND_LIMIT`; returns stdout.
async fn run(what: &str, command: &mut Command) -> String {
    let output = within_for(COMMAND_LIMIT, what, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One curl request through the load balancer; returns (status, HTTP
/// version, body).
async fn curl(
    lb: SocketAddr,
    ca: &Path,
    alias: &str,
    http: &str,
    bind: &str,
) -> (u16, String, Value) {
    let host = format!("{alias}.es.{ZONE}");
    let out = run(
        &format!("curl {http} {host}"),
        Command::new(tool("PORTCULLIS_E2E_CURL", "curl"))
            .args(["-sS", "--max-time", "10", http, "--cacert"])
            .arg(ca)
            .args(["--interface", bind, "--resolve"])
            .arg(format!("{host}:{}:{}", lb.port(), lb.ip()))
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://{host}:{}/logs/_search", lb.port())),
    )
    .await;
    let (body, trailer) = out.rsplit_once('\n').expect("curl -w line");
    let (code, version) = trailer.split_once(' ').expect("code and version");
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("curl body ({e}): {body}"));
    (code.parse().expect("status code"), version.to_owned(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_through_a_proxy_protocol_load_balancer() {
    within_for(BOUND, "the end-to-end test", end_to_end()).await;
}

async fn end_to_end() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run .ci/setup to create the Python client's venv",
        python.display()
    );
    let dir = TempDir::new();
    let es = elasticsearch_backend().await;
    let initial = dir.write(
        "snapshot.json",
        serde_json::to_vec(&snapshot(1, es, LOCALHOST_ONLY)).expect("json"),
    );
    // Version 2 no longer lists 127.0.0.1: the live client must be denied.
    let flip = dir.write(
        "flip.json",
        serde_json::to_vec(&snapshot(2, es, NOBODY)).expect("json"),
    );
    let ca = dir.write(
        "ca.pem",
        pem::encode(&pem::Pem::new("CERTIFICATE", pki().ca.to_vec())),
    );
    let p = Served::ready(&ServeOptions::path(&initial)).await;
    let lb = LoadBalancer::start(&dir, p.data).await;

    // curl, both protocols, through the load balancer from 127.0.0.1.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (status, got, body) = curl(lb.addr, &ca, "office", flag, "127.0.0.1").await;
        assert_eq!(
            (status, got.as_str()),
            (200, version),
            "curl {flag}: {body}"
        );
        assert_eq!(body["hits"]["total"]["value"], 2, "curl {flag}: {body}");
    }
    // The same deployment from another source address: HAProxy passes it
    // on in the PROXY header, and the policy denies it.
    for flag in ["--http1.1", "--http2"] {
        let (status, _, body) = curl(lb.addr, &ca, "office", flag, "127.0.0.2").await;
        assert_eq!(status, 403, "curl {flag} from 127.0.0.2: {body}");
        assert_eq!(body.to_string(), FORBIDDEN_BODY);
    }

    // The official Python client.
    let args = json!({
        "zone": ZONE,
        "lb_host": lb.addr.ip().to_string(),
        "lb_port": lb.addr.port(),
        "ca": ca,
        "admin": format!("http://{}", p.admin),
        "token": ADMIN_TOKEN,
        "flip_snapshot": flip,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/es_client.py");
    let out = run(
        "the Python Elasticsearch client",
        Command::new(&python).arg(&script).arg(args.to_string()),
    )
    .await;
    let seen: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("client output ({e}): {out}"));

    assert_eq!(seen["info"], "e2e-office", "{seen}");
    for search in seen["allowed"].as_array().expect("allowed searches") {
        assert_eq!(search["hits"], 2, "allowed search: {seen}");
    }
    let forbidden: Value = serde_json::from_str(FORBIDDEN_BODY).expect("json");
    for step in ["closed", "after_flip"] {
        let denied = &seen[step];
        assert_eq!(denied["error"], "AuthorizationException", "{step}: {seen}");
        assert_eq!(denied["status"], 403, "{step}: {seen}");
        assert_eq!(denied["body"], forbidden, "{step}: {seen}");
    }
    assert_eq!(seen["flip_status"], 200, "{seen}");
    assert_eq!(
        seen["office_connections"], 1,
        "the flip must reach the client on the connection it had open: {seen}"
    );
    assert_eq!(p.snapshot_meta().await["version"], 2);

    // And curl after the flip, on a new connection: denied too.
    let (status, _, _) = curl(lb.addr, &ca, "office", "--http2", "127.0.0.1").await;
    assert_eq!(status, 403);
    drop(lb);
    p.stop().await;
}

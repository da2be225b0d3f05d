//! `portcullis demo`: the real proxy, out of the box, on loopback.
//!
//! Writes a self-signed certificate, a sample snapshot and a config into a
//! temporary directory, starts a small backend that answers like
//! Elasticsearch's root endpoint, prints `curl` lines, and runs [`serve`]
//! exactly as `portcullis run` would. The sample snapshot has an open
//! deployment and a filtered one (an IP policy that does not list loopback,
//! and a VPC-endpoint policy), so one curl line gets 200 and the other 403.
//!
//! [`serve`]: crate::serve

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::access_log::Format;
use crate::config::Config;
use crate::error::Error;
use crate::shutdown::{Phase, Shutdown};

pub const ZONE: &str = "localhost";
pub const OPEN: &str = "open-deployment";
pub const FILTERED: &str = "filtered-deployment";

/// Ports the demo uses.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    pub proxy: u16,
    pub admin: u16,
}

/// Runs the demo until `shutdown` drains.
pub async fn run(ports: DemoPorts, log_format: Format, shutdown: Shutdown) -> Result<(), Error> {
    let backend = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Other(format!("cannot start the sample backend: {e}")))?;
    let backend_addr = backend
        .local_addr()
        .map_err(|e| Error::Other(format!("sample backend: {e}")))?;
    tokio::spawn(sample_backend(backend, shutdown.clone()));

    // Removed when dropped, after `serve` returns: tempfile picks a fresh
    // name (two demos can run side by side) and cleans up.
    let dir = tempfile::Builder::new()
        .prefix("portcullis-demo-")
        .tempdir()
        .map_err(|e| Error::Other(format!("cannot create a temporary directory: {e}")))?;
    let token = random_token();
    let mut config = write_files(dir.path(), ports, backend_addr, &token)?;
    config.log.format = log_format;
    println!("{}", instructions(ports, dir.path(), &token));
    let result = crate::run(config, shutdown).await;
    drop(dir);
    result
}

fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    std::fs::write(&path, contents)
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// The certificate, snapshot, admin token and config the demo runs with.
fn write_files(
    dir: &Path,
    ports: DemoPorts,
    backend: SocketAddr,
    token: &str,
) -> Result<Config, Error> {
    let names = [ZONE, "*.localhost", "*.es.localhost", "*.kb.localhost"].map(str::to_owned);
    let cert = crate::tls::self_signed(&names)?;
    let cert_path = write_file(dir, "cert.pem", &cert.cert_pem)?;
    let key_path = write_file(dir, "key.pem", &cert.key_pem)?;
    let snapshot_path = write_file(dir, "snapshot.json", &sample_snapshot(backend))?;
    let token_path = write_file(dir, "admin.token", token)?;
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:{proxy}"]
zones = ["{ZONE}"]

[proxy_protocol]
# curl --haproxy-protocol sends a v1 header; plain curl sends none.
mode = "lenient"
trusted_sources = ["127.0.0.0/8", "::1/128"]

[[tls.certificates]]
cert = "{cert}"
key = "{key}"

[snapshot]
path = "{snapshot}"

[admin]
listen = "127.0.0.1:{admin}"
token_file = "{token}"
"#,
        proxy = ports.proxy,
        admin = ports.admin,
        cert = toml_path(&cert_path),
        key = toml_path(&key_path),
        snapshot = toml_path(&snapshot_path),
        token = toml_path(&token_path),
    );
    let config_path = write_file(dir, "portcullis.toml", &toml)?;
    Ok(Config::load(&config_path)?)
}

fn toml_path(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// An open deployment and a filtered one; both use the sample backend.
pub fn sample_snapshot(backend: SocketAddr) -> String {
    serde_json::json!({
        "version": 1,
        "deployments": [
            {
                "id": "0a1b2c3d4e5f40718293a4b5c6d7e8f9",
                "alias": OPEN,
                "region": "aws-us-east-1",
                "resources": { "es": { "backends": [backend.to_string()] } },
                "policies": []
            },
            {
                "id": "d53192a1f0e54c0bb2c1b0c6a6f6e2f1",
                "alias": FILTERED,
                "region": "aws-us-east-1",
                "resources": { "es": { "backends": [backend.to_string()] } },
                "policies": ["office-ips", "prod-vpce"]
            }
        ],
        "policies": [
            {
                "id": "office-ips", "type": "ip", "region": "aws-us-east-1",
                "rules": [ { "source": "203.0.113.0/24", "description": "HQ" } ]
            },
            {
                "id": "prod-vpce", "type": "vpce", "region": "aws-us-east-1",
                "rules": [ { "source": "vpce-0a1b2c3d4e5f67890" } ]
            }
        ]
    })
    .to_string()
}

fn instructions(ports: DemoPorts, dir: &Path, token: &str) -> String {
    let port = ports.proxy;
    let line = |alias: &str| {
        let host = format!("{alias}.es.{ZONE}");
        format!(
            "curl -sk --haproxy-protocol --resolve {host}:{port}:127.0.0.1 https://{host}:{port}/"
        )
    };
    let admin = format!("http://127.0.0.1:{}", ports.admin);
    format!(
        "portcullis demo: proxy on https://127.0.0.1:{port}, admin API on {admin}, files in {}\n\n\
         Allowed (open deployment, no policy) — expect 200 and an Elasticsearch banner:\n  {}\n\n\
         Denied (IP policy lists only 203.0.113.0/24, you are 127.0.0.1) — expect 403:\n  {}\n\n\
         Why, and which rule:\n  curl -s {admin}/explain -d '{{\"host\": \"{FILTERED}.es.{ZONE}\", \"source\": \"127.0.0.1\"}}'\n\n\
                  Change the policy live: edit {}/snapshot.json and raise \"version\" (picked up within 2 s), or PUT it:\n  curl -s -X PUT -H 'Authorization: Bearer {token}' --data-binary @{}/snapshot.json {admin}/snapshot\n\n\
         Add -i to see status lines. Ctrl-C stops the demo.\n",
        dir.display(),
        line(OPEN),
        line(FILTERED),
        dir.display(),
        dir.display(),
    )
}

/// A token for the demo's admin API. `RandomState` is seeded from the OS's
/// randomness; good enough for a loopback demo, and no extra dependency.
fn random_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    (0..2u64)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// Answers every request like Elasticsearch's `GET /`.
pub async fn sample_backend(listener: TcpListener, mut shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.reached(Phase::Draining) => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let cluster = req
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.split('.').next())
                    .unwrap_or("demo")
                    .to_owned();
                let body = serde_json::json!({
                    "name": "instance-0000000000",
                    "cluster_name": cluster,
                    "cluster_uuid": "Zbq4dQz8R4-5e3y6cQyV6A",
                    "version": { "number": "8.15.0", "build_flavor": "default", "lucene_version": "9.11.1" },
                    "tagline": "You Know, for Search",
                    "forwarded_for": req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
                });
                let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, std::convert::Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

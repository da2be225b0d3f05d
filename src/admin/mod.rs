//! The admin API (SPEC §7), on its own listener (loopback by default).
//!
//! | endpoint | |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once a snapshot is loaded and the listeners are bound; 503 before, and while draining |
//! | `GET /snapshot` | the snapshot in force: version, SHA-256, load time, source, counts |
//! | `PUT /snapshot` | apply a snapshot (bearer token): 200, 400 with every error, 401, 409 stale, 413 too large |
//! | `POST /explain` | `{"host", "source", "aws_vpce" \| "azure_link_id" \| "gcp_psc_id", "sni", "found_cluster"}` → the decision, as `explain --format json` prints it |
//!
//! Every answer is JSON except `/metrics`. Bad requests get a 4xx with a
//! message saying what was wrong.

mod explain_api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::reload::{ApplyError, Origin, Reloader};
use crate::route::Router;
use crate::shutdown::{Phase, Shutdown};

/// Admin clients are people and scrapers; a few dozen connections is
/// plenty, and the cap keeps a misbehaving one from exhausting memory.
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_EXPLAIN_BYTES: usize = 64 * 1024;

/// Whether the proxy should receive traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// What the admin API needs.
pub struct Admin {
    pub reloader: Arc<Reloader>,
    pub registry: Registry,
    pub router: Router,
    pub readiness: Arc<Readiness>,
    /// SHA-256 of the bearer token; `None`: `PUT /snapshot` is disabled.
    token: Option<[u8; 32]>,
    pub max_snapshot_bytes: usize,
}

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot read the admin token file {path}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin token file {0} is empty")]
    EmptyToken(String),
}

impl Admin {
    pub fn new(
        reloader: Arc<Reloader>,
        registry: Registry,
        router: Router,
        readiness: Arc<Readiness>,
        token_file: Option<&Path>,
        max_snapshot_bytes: usize,
    ) -> Result<Self, AdminError> {
        let token = match token_file {
            None => None,
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| AdminError::TokenFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(AdminError::EmptyToken(path.display().to_string()));
                }
                Some(Sha256::digest(token.as_bytes()).into())
            }
        };
        Ok(Self {
            reloader,
            registry,
            router,
            readiness,
            token,
            max_snapshot_bytes,
        })
    }

    fn ready(&self) -> Result<u64, &'static str> {
        if self.readiness.draining.load(Ordering::Acquire) {
            return Err("draining");
        }
        if !self.readiness.listening.load(Ordering::Acquire) {
            return Err("listeners not bound yet");
        }
        self.reloader
            .store()
            .current()
            .map(|s| s.meta.version)
            .ok_or("no snapshot loaded")
    }

    /// Checks `Authorization: Bearer <token>` in constant time (comparing
    /// SHA-256 digests, so neither content nor length leaks through timing).
    fn authorized(&self, req: &Request<Incoming>) -> Result<(), &'static str> {
        let Some(expected) = &self.token else {
            return Err("PUT /snapshot is disabled: set admin.token_file");
        };
        let offered = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("missing bearer token")?;
        let digest: [u8; 32] = Sha256::digest(offered.trim().as_bytes()).into();
        let diff = digest
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err("invalid bearer token")
        }
    }
}

/// Serves the admin API on `listener` until the process stops. It keeps
/// answering while the data plane drains, so `/readyz` can say so.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: Shutdown) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.reached(Phase::Abort) => return,
        };
        let Ok((tcp, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            drop(permit);
        });
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(
                &admin.registry,
            ))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::TEXT_FORMAT),
            );
            r
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, json!({"ok": true})),
        (&Method::GET, "/readyz") => match admin.ready() {
            Ok(version) => reply(
                StatusCode::OK,
                json!({"ok": true, "snapshot_version": version}),
            ),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"ok": false, "message": why}),
            ),
        },
        (&Method::GET, "/snapshot") => match admin.reloader.store().current() {
            Some(s) => reply(StatusCode::OK, json!({"ok": true, "snapshot": s.meta})),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no snapshot loaded"),
        },
        (&Method::PUT, "/snapshot") => put_snapshot(admin, req, peer).await,
        (&Method::POST, "/explain") => match read_body(req, MAX_EXPLAIN_BYTES).await {
            Ok(body) => explain_api::explain(admin, &body),
            Err(r) => r,
        },
        (_, "/metrics" | "/healthz" | "/readyz") => not_allowed("GET"),
        (_, "/snapshot") => not_allowed("GET, PUT"),
        (_, "/explain") => not_allowed("POST"),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint (try /metrics, /healthz, /readyz, /snapshot, /explain)",
        ),
    }
}

async fn put_snapshot(
    admin: &Admin,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if let Err(why) = admin.authorized(&req) {
        tracing::warn!(%peer, why, "PUT /snapshot refused");
        let mut r = error(StatusCode::UNAUTHORIZED, why);
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let body = match read_body(req, admin.max_snapshot_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match admin.reloader.apply(body, Origin::Admin).await {
        Ok(meta) => reply(StatusCode::OK, json!({"ok": true, "snapshot": meta})),
        Err(ApplyError::Invalid(errors)) => {
            let list: Vec<_> = errors
                .0
                .iter()
                .map(|e| json!({"path": e.path, "message": e.message}))
                .collect();
            reply(
                StatusCode::BAD_REQUEST,
                json!({"ok": false, "message": format!("invalid snapshot ({} errors)", list.len()), "errors": list}),
            )
        }
        Err(e @ ApplyError::Stale { .. }) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ ApplyError::TooLarge { .. }) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
        }
        Err(e @ ApplyError::Internal(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// The request body, up to `limit` bytes; a 413 or 400 response otherwise.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body over the {limit}-byte limit"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, json!({"ok": false, "message": message}))
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed (allowed: {allow})"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

//! The admin API (SPEC §7), on its own listener (loopback by default).
//!
//! | endpoint | |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once a snapshot is loaded and the listeners are bound; 503 before, and while draining |
//! | `GET /snapshot` | the snapshot in force: version, SHA-256, load time, source, counts |
//! | `PUT /snapshot` | apply a snapshot (bearer token): 200, 400 with every error, 401, 408 body stalled, 409 stale, 413 too large |
//! | `POST /explain` | `{"host", "source", "aws_vpce" \| "azure_link_id" \| "gcp_psc_id", "sni", "found_cluster"}` → the decision, as `explain --format json` prints it |
//!
//! Every answer is JSON except `/metrics`. Bad requests get a 4xx with a
//! message saying what was wrong.
//!
//! Limits: a request head must arrive within [`HEADER_TIMEOUT`] (an idle
//! keep-alive connection is closed after it too). A request body larger
//! than its limit (`snapshot.max_bytes` for `PUT /snapshot`) is refused
//! with 413 as soon as its `Content-Length` says so, without reading it;
//! a chunked one as soon as it grows past the limit. A body that makes no
//! progress for `admin.body_timeout` gets 408. Both close the connection,
//! since what is left of the body is still on the wire.

mod explain_api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::reload::{ApplyError, Origin, Reloader, etcd};
use crate::route::Router;
use crate::shutdown::{Phase, Shutdown};

/// Admin clients are people and scrapers; a few dozen connections is
/// plenty, and the cap keeps a misbehaving one from exhausting memory.
const MAX_CONNECTIONS: usize = 64;
/// From the start of a request head (or of the wait for the next one on
/// a keep-alive connection) to its last byte; the connection is closed
/// after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Longest pause while reading a request body (`admin.body_timeout`).
    pub body_timeout: Duration,
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
        body_timeout: Duration,
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
            body_timeout,
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

    /// Checks `Authorization: Bearer <token>` (see [`bearer_token`]) in
    /// constant time (comparing SHA-256 digests, so neither content nor
    /// length leaks through timing).
    fn authorized(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(expected) = &self.token else {
            return Err("PUT /snapshot is disabled: set admin.token_file");
        };
        let offered = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or("missing bearer token")?;
        let digest: [u8; 32] = Sha256::digest(offered.as_bytes()).into();
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

/// The token of an `Authorization` value using the `Bearer` scheme
/// (RFC 6750 §2.1): the scheme name in any case (RFC 9110 §11.1), one or
/// more spaces or tabs, then the token; whitespace around the token is
/// ignored. `None` for another scheme or no token.
fn bearer_token(value: &str) -> Option<&str> {
    const WS: [char; 2] = [' ', '\t'];
    let (scheme, rest) = value.trim_start_matches(WS).split_once(WS)?;
    let token = rest.trim_matches(WS);
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
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
        (&Method::GET, "/readyz") => {
            let (status, mut body) = match admin.ready() {
                Ok(version) => (
                    StatusCode::OK,
                    json!({"ok": true, "snapshot_version": version}),
                ),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ok": false, "message": why}),
                ),
            };
            if let Some(etcd) = admin.reloader.etcd_status() {
                body["etcd"] = etcd_json(&etcd);
            }
            reply(status, body)
        }
        (&Method::GET, "/snapshot") => match admin.reloader.store().current() {
            Some(s) => {
                let mut body = json!({"ok": true, "snapshot": s.meta});
                // The etcd source: which revision is in force, how far
                // behind, from where, and the entries refused (SPEC §3.1).
                if let Some(etcd) = admin.reloader.etcd_status() {
                    body["etcd"] = etcd_json(&etcd);
                    body["errors"] = json!(etcd.invalid_entries);
                }
                reply(StatusCode::OK, body)
            }
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no snapshot loaded"),
        },
        (&Method::PUT, "/snapshot") => put_snapshot(admin, req, peer).await,
        (&Method::POST, "/explain") => {
            match read_body(req.into_body(), MAX_EXPLAIN_BYTES, admin.body_timeout).await {
                Ok(body) => explain_api::explain(admin, &body),
                Err(e) => e.response(),
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => not_allowed("GET"),
        (_, "/snapshot") => not_allowed("GET, PUT"),
        (_, "/explain") => not_allowed("POST"),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint (try /metrics, /healthz, /readyz, /snapshot, /explain)",
        ),
    }
}

/// How following etcd goes, for `/readyz` and `GET /snapshot`.
fn etcd_json(s: &etcd::Status) -> serde_json::Value {
    json!({
        "endpoint": s.endpoint,
        "connected": s.connected,
        "revision": s.revision,
        "seen_revision": s.seen_revision,
        "behind": s.behind(),
        "invalid_entries": s.invalid_entries.len(),
        "error": s.error,
    })
}

async fn put_snapshot(
    admin: &Admin,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if let Err(why) = admin.authorized(req.headers()) {
        tracing::warn!(%peer, why, "PUT /snapshot refused");
        let mut r = error(StatusCode::UNAUTHORIZED, why);
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    if admin.reloader.etcd_status().is_some() {
        // A document put here would be replaced by the next etcd change,
        // or (with a higher version) stall following: one source of truth.
        return error(
            StatusCode::CONFLICT,
            "the snapshot follows etcd ([snapshot.etcd]): write it there with `portcullis publish`",
        );
    }
    let body = match read_body(
        req.into_body(),
        admin.max_snapshot_bytes,
        admin.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%peer, why = %e, status = e.status().as_u16(), "PUT /snapshot refused");
            return e.response();
        }
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

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body of {declared} bytes (Content-Length) is over the {limit}-byte limit")]
    DeclaredTooLarge { declared: u64, limit: usize },
    #[error("request body over the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("the request body stalled: nothing received for {0:?} (admin.body_timeout)")]
    Stalled(Duration),
    #[error("cannot read the request body: {0}")]
    Read(#[source] hyper::Error),
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::DeclaredTooLarge { .. } | Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Stalled(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Read(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The error answer, with `Connection: close`: the rest of the body is
    /// unread (or unreadable), so the connection cannot carry another
    /// request.
    fn response(&self) -> Response<Full<Bytes>> {
        let mut r = error(self.status(), &self.to_string());
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        r
    }
}

/// The request body, up to `limit` bytes, each piece arriving within
/// `idle` of the previous one (of the call, for the first).
///
/// A `Content-Length` over `limit` is refused before anything is read
/// (hyper sends no `100 Continue` then). The body is copied into one
/// buffer as it arrives, sized from `Content-Length` when there is one,
/// so peak memory is about the body's size, not twice it.
async fn read_body(mut body: Incoming, limit: usize, idle: Duration) -> Result<Bytes, BodyError> {
    // hyper's size hint is exact for a Content-Length body, 0.. otherwise.
    let declared = body.size_hint().lower();
    let capacity = match usize::try_from(declared) {
        Ok(n) if n <= limit => n,
        _ => return Err(BodyError::DeclaredTooLarge { declared, limit }),
    };
    let mut buf = BytesMut::with_capacity(capacity);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers (chunked bodies) carry nothing the admin API uses.
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - buf.len() {
                return Err(BodyError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
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

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_takes_any_blank_run() {
        for value in [
            "Bearer t0k-en",
            "bearer t0k-en",
            "BEARER t0k-en",
            "bEaReR t0k-en",
            "Bearer   t0k-en",
            "Bearer\tt0k-en",
            "Bearer \t t0k-en \t",
            " Bearer t0k-en",
        ] {
            assert_eq!(bearer_token(value), Some("t0k-en"), "{value:?}");
        }
        // token68 may end in '=' padding.
        assert_eq!(bearer_token("bearer YWJj=="), Some("YWJj=="));
    }

    #[test]
    fn other_schemes_and_missing_tokens_are_not_bearer_tokens() {
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer \t ",
            "Bearert0k-en",
            "Bearer-t0k-en",
            "Basic t0k-en",
            "Bear t0k-en",
            "Bearerx t0k-en",
            "t0k-en",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}

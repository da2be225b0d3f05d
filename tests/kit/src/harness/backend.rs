//! Backend.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

struct BackendState {
    name: String,
    requests: Arc<AtomicUsize>,
    connections: AtomicUsize,
    /// Bytes of `POST /hash` bodies received so far.
    hash_progress: AtomicU64,
    /// Hash of the last `GET /big` body sent.
    sent: HashSlot,
}

/// A real HTTP/1.1 server on `127.0.0.1:0`.
///
/// - `POST /hash`: streams the body into SHA-256, answers
///   `{"sha256": .., "bytes": n}`.
/// - `GET /slow?ms=N`: sleeps N ms (default 10 s), then echoes.
/// - `GET /big?bytes=N`: streams N pseudo-random bytes.
/// - anything else: echoes JSON `{backend, method, path, query, headers:
///   {name: [values]}, count, body_bytes}`.
pub struct Backend {
    pub addr: SocketAddr,
    /// Every request received, whatever its path.
    pub requests: Arc<AtomicUsize>,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let requests = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            requests: requests.clone(),
            connections: AtomicUsize::new(0),
            hash_progress: AtomicU64::new(0),
            sent: HashSlot::default(),
        });
        let task = tokio::spawn(serve_backend(listener, state.clone()));
        Self {
            addr,
            requests,
            state,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn hash_progress(&self) -> u64 {
        self.state.hash_progress.load(Ordering::SeqCst)
    }

    /// A closure reading [`Self::hash_progress`] later, from anywhere.
    pub fn hash_progress_probe(&self) -> impl Fn() -> u64 + Send + 'static {
        let state = self.state.clone();
        move || state.hash_progress.load(Ordering::SeqCst)
    }

    pub fn last_sent(&self) -> Option<Hashed> {
        self.state.sent.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_backend(listener: TcpListener, state: Arc<BackendState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| backend_handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn json_response(status: StatusCode, value: &Value) -> Response<BoxedBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn backend_handle(
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<BoxedBody>, Infallible> {
    let count = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/hash") => {
            let hashed = hash_body(req.into_body(), Some(&state.hash_progress)).await;
            return Ok(match hashed {
                Ok(h) => json_response(
                    StatusCode::OK,
                    &json!({ "sha256": h.sha256, "bytes": h.bytes }),
                ),
                Err(e) => {
                    json_response(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() }))
                }
            });
        }
        (Method::GET, "/big") => {
            let len = query_u64(&req, "bytes").unwrap_or(0);
            let (body, slot) = RandomBody::new(0xB16_B0D7, len);
            let sent = state.sent.clone();
            let body = body.before_last(move || {
                *sent.lock().unwrap() = slot.lock().unwrap().clone();
            });
            return Ok(Response::new(body.boxed()));
        }
        (_, "/slow") => {
            let ms = query_u64(&req, "ms").unwrap_or(10_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_owned);
    // `?close=1`: answer with `Connection: close`, then close.
    let close = query_u64(&req, "close") == Some(1);
    let body_bytes = hash_body(req.into_body(), None)
        .await
        .map_or(0, |h| h.bytes);
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "backend": state.name,
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "count": count,
            "body_bytes": body_bytes,
        }),
    );
    if close {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

/// A loopback port nothing listens on (bound, read, closed).
/// A data and an admin listener on loopback port 0, for `portcullis::serve`.
pub fn loopback_listeners() -> portcullis::Listeners {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    portcullis::Listeners::bind(&portcullis::settings::ListenAddrs {
        data: vec![any],
        admin: any,
        remote_cluster: Vec::new(),
    })
    .expect("bind loopback port 0")
}

pub fn unused_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    l.local_addr().expect("probe address")
}

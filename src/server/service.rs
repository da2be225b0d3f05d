//! Per request: check → route → decide → answer or forward (SPEC §1.8, §2,
//! §6), and the request's access-log record (SPEC §9).
//!
//! The snapshot is loaded once, after the request head is read; the request
//! keeps that snapshot (an `Arc`) until its response is done, so a reload
//! never changes a decision half-way, and the next request on the same
//! connection sees the new snapshot.
//!
//! Every request gets exactly one access-log line, written when its
//! [`Record`] is dropped: after the response body's last byte, or, if the
//! client goes away first (HTTP/2 `RST_STREAM`, a closed connection), when
//! hyper drops the request's future or its response body. Those lines say
//! status 499 and the bytes sent so far.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Proxy;
use super::activity::{Activity, RequestGuard};
use crate::access_log::{AccessLog, FormattedOrigin, Line, Origin, clock};
use crate::endpoint::ClientIdentity;
use crate::forward::client::BackendError;
use crate::forward::frame::PolledFrame;
use crate::forward::headers::X_FOUND_CLUSTER;
use crate::forward::{Forwarded, ResponseBody};
use crate::policy::{Decision, Target};
use crate::reload::Loaded;
use crate::request_id::{self, RequestId};
use crate::response::Local;
use crate::route::RouteInput;

/// What every request on a connection shares.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: ClientIdentity,
    /// `X-Forwarded-For` for every request on the connection.
    pub forwarded_for: http::HeaderValue,
    pub peer: SocketAddr,
    pub sni: Option<Box<str>>,
    pub activity: Arc<Activity>,
    /// Who connected, formatted for the access log (`None` when it is off).
    pub log_origin: Option<FormattedOrigin>,
}

impl ConnInfo {
    /// Who connected, as the access log names them.
    pub fn origin(&self) -> Origin<'_> {
        Origin {
            client_ip: self.client.source,
            peer: self.peer,
            endpoint: self.client.endpoint,
            sni: self.sni.as_deref().unwrap_or(""),
        }
    }
}

/// The status logged for a request whose client went away before its
/// response was complete (nginx's convention).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Handles one request. Never fails: every outcome is a response.
///
/// Everything up to the decision runs here, at once: checks, routing and
/// the policy decision are synchronous. A request portcullis answers
/// itself (denied, health, malformed, not ready) is answered before this
/// returns; only a forwarded one leaves work to wait on.
pub fn handle(proxy: Arc<Proxy>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Handled {
    let guard = conn.activity.request_started();
    let id = proxy.request_ids.next();
    let id_value = id.header_value();
    // Dropped with the returned future if the client cancels before the
    // response head: that still writes the request's line.
    let mut record = Record::start(&proxy, &conn, &req, id);
    match route(&proxy, &conn, &req, &mut record) {
        Routed::Answer(local) => {
            let (mut head, body) = req.into_parts();
            // The request's header map, emptied, carries the answer's
            // headers: no map to allocate for a 403.
            let response = local.response_in(std::mem::take(&mut head.headers));
            Handled::Ready {
                response: Some(served(response, id_value, record, guard)),
                body: Some(body),
            }
        }
        Routed::Forward(snapshot, target) => Handled::Forwarding(Box::pin(async move {
            let response = forward(
                &proxy,
                &conn,
                req,
                &snapshot,
                target,
                &mut record,
                &id_value,
            )
            .await;
            served(response, id_value, record, guard)
        })),
    }
}

/// The future of [`handle`]. `Unpin` without boxing a request that is
/// answered at once: hyper's HTTP/1.1 idle release (`http1.rs`) needs an
/// `Unpin` service future, and boxing every request's future cost an
/// allocation (3.4 KB) even for a 403. (The answer is not boxed to even
/// out the variants: that box is the allocation this type avoids.)
#[allow(clippy::large_enum_variant)]
pub enum Handled {
    /// Answered; `None` once taken. The request's body, unread, is
    /// dropped with it, when hyper first polls this future, as it was
    /// when the whole request ran in the future. Dropped earlier, inside
    /// hyper's call of the service, hyper finds the body abandoned before
    /// it has written the response and closes the connection rather than
    /// skip the body and serve the next request (`tests/hostile`,
    /// `denied_body_with_content_length_never_reaches_the_backend`).
    Ready {
        response: Option<Response<Served>>,
        body: Option<Incoming>,
    },
    /// Waiting on a backend.
    Forwarding(Pin<Box<dyn Future<Output = Response<Served>> + Send>>),
}

// hyper keeps a slot the size of the service future for as long as an
// HTTP/1.1 connection is being served (`in_flight`); 536 bytes today,
// where the boxed future was 3.4 KB.
const _: () = assert!(std::mem::size_of::<Handled>() <= 640);

impl Future for Handled {
    type Output = Result<Response<Served>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Ready { response, body } => match response.take() {
                Some(r) => {
                    drop(body.take());
                    Poll::Ready(Ok(r))
                }
                // Polled again after it answered: a caller bug, not the
                // client's; hyper never does.
                None => Poll::Pending,
            },
            Self::Forwarding(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

/// The response as served: its request id header, and a body that ends
/// the request's record.
fn served(
    mut response: Response<ResponseBody>,
    id_value: HeaderValue,
    mut record: Record,
    guard: RequestGuard,
) -> Response<Served> {
    response
        .headers_mut()
        .insert(request_id::HEADER.clone(), id_value);
    record.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Served {
            inner: body,
            guard,
            record: Some(record),
        },
    )
}

/// What [`route`] decided: an answer now, or forwarding to `target`'s
/// backends in `snapshot`. (The request stays with the caller: moving it
/// in and out showed as copies in the instruction counts.)
enum Routed {
    Answer(Local),
    Forward(Arc<Loaded>, Target),
}

/// Checks, routes and decides (everything but forwarding).
fn route(proxy: &Proxy, conn: &ConnInfo, req: &Request<Incoming>, record: &mut Record) -> Routed {
    if let Some(local) = check_request(proxy, req) {
        return Routed::Answer(local);
    }
    let host = request_host(req);
    let found_cluster = req
        .headers()
        .get(&X_FOUND_CLUSTER)
        .and_then(|v| v.to_str().ok());
    if req.uri().path() == HEALTH_PATH
        && matches!(*req.method(), Method::GET | Method::HEAD)
        && found_cluster.is_none()
        && proxy.router.is_infrastructure_host(host)
    {
        return Routed::Answer(health(proxy));
    }

    // One snapshot for the whole request.
    let Some(snapshot) = proxy.snapshot.current() else {
        return Routed::Answer(Local::NotReady);
    };
    let input = RouteInput {
        host,
        found_cluster,
        sni: conn.sni.as_deref(),
    };
    let decision = proxy.router.evaluate(&snapshot.set, &input, conn.client);
    record.decision = Some(decision);
    record.snapshot = Some(snapshot.clone());
    proxy.metrics.request(&decision);

    if let Some(refused) = Local::for_decision(&decision) {
        // The request body is never read, so never sent anywhere.
        return Routed::Answer(refused);
    }
    match decision.target {
        Some(target) => Routed::Forward(snapshot, target),
        None => Routed::Answer(Local::UnknownResource),
    }
}

/// Forwards a request [`route`] allowed, and answers for the backend.
async fn forward(
    proxy: &Proxy,
    conn: &ConnInfo,
    req: Request<Incoming>,
    snapshot: &Loaded,
    target: Target,
    record: &mut Record,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    // Looked up here, once: the future owns the snapshot they live in.
    // A deployment without the product asked for is answered here too
    // (rare: it costs this path's box, which a local answer avoids).
    let Some(backends) = snapshot
        .set
        .deployment(target.deployment)
        .and_then(|d| d.backends(target.product))
    else {
        return Local::UnknownResource.response();
    };
    let fwd = Forwarded {
        client: &conn.forwarded_for,
        request_id,
    };
    let sent = Instant::now();
    let result = proxy.forwarder.forward(backends, req, fwd).await;
    match result {
        Ok(response) => {
            proxy
                .upstream_metrics
                .observe(target.product, sent.elapsed().as_secs_f64());
            response
        }
        Err(e) => {
            proxy.upstream_metrics.error(&e);
            tracing::warn!(error = %e, kind = e.kind(), client_ip = %conn.client.source, "forwarding failed");
            record.upstream_error = Some(e.kind());
            Local::for_forward_error(&e).response()
        }
    }
}

/// `GET /_health` on the HTTPS listener (SPEC §6), for load balancers'
/// health checks, which name no deployment.
const HEALTH_PATH: &str = "/_health";

fn health(proxy: &Proxy) -> Local {
    if proxy.draining.load(Ordering::Relaxed) {
        Local::Draining
    } else if proxy.snapshot.is_loaded() {
        Local::Healthy
    } else {
        Local::NotReady
    }
}

/// Limits and consistency checks before routing.
fn check_request(proxy: &Proxy, req: &Request<Incoming>) -> Option<Local> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > proxy.http.max_uri_bytes {
        return Some(Local::UriTooLong);
    }
    // A proxy that forwarded CONNECT would open a tunnel to wherever the
    // backend agrees to; HTTP/2 CONNECT is already refused by hyper.
    if req.method() == Method::CONNECT {
        return Some(Local::MethodNotAllowed);
    }
    // `*` is the target of server-wide OPTIONS only (RFC 9112 §3.2.4,
    // RFC 9113 §8.3.1); anything else with it is malformed.
    if req.uri().path() == "*" && req.method() != Method::OPTIONS {
        return Some(Local::BadRequest);
    }
    if let Some(local) = check_transfer_coding(req) {
        return Some(local);
    }
    // RFC 9112 §3.2: one Host line, with a valid value, and HTTP/1.1 must
    // send it. With two, we would route by the first while the backend
    // (which gets both) may act on the second; with an unreadable one we
    // would route by `X-Found-Cluster` and forward the junk. Caught by
    // tests/hostile.rs `http_two_host_headers`.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Some(Local::BadRequest),
        (Some(host), None) if host.to_str().is_err() => return Some(Local::BadRequest),
        (None, _) if req.version() == Version::HTTP_11 => return Some(Local::BadRequest),
        _ => {}
    }
    // An absolute-form target (`GET https://a/ HTTP/1.1`) or an HTTP/2
    // :authority must name the same host as a `Host` header, if both are
    // given; otherwise which one routes is ambiguous, and a mismatch is a
    // classic way to slip past host-based policy.
    if let (Some(authority), Some(host)) = (req.uri().authority(), req.headers().get(header::HOST))
        && !host
            .to_str()
            .is_ok_and(|h| h.eq_ignore_ascii_case(authority.as_str()))
    {
        return Some(Local::BadRequest);
    }
    None
}

/// RFC 9112 §6.1: a proxy that does not understand a transfer coding
/// answers 501. hyper accepts any list that ends in `chunked` and decodes
/// only the chunking, so `gzip, chunked` would reach the backend as plain
/// chunked with its coding silently dropped.
fn check_transfer_coding(req: &Request<Incoming>) -> Option<Local> {
    let mut codings = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(Local::NotImplemented),
    }
}

fn host_header(req: &Request<Incoming>) -> Option<&HeaderValue> {
    req.headers().get(header::HOST)
}

/// The host the request is for: the target's authority (HTTP/2, or an
/// HTTP/1.1 absolute-form target), else `Host`.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    host_of(req.uri(), host_header(req))
}

/// [`request_host`] from a request's parts (the access-log record keeps
/// clones of them).
fn host_of<'a>(uri: &'a Uri, host: Option<&'a HeaderValue>) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|v| v.to_str().ok()))
}

/// What the access log says about one request (SPEC §9), filled in as the
/// request goes; its line is written when it is dropped.
struct Record {
    /// `None` when the access log is off: nothing else here is read then.
    log: Option<Logging>,
    id: RequestId,
    conn: Arc<ConnInfo>,
    method: Method,
    /// The host and path the line names.
    target: LoggedTarget,
    version: Version,
    snapshot: Option<Arc<Loaded>>,
    decision: Option<Decision>,
    status: u16,
    bytes: u64,
    /// The response reached its end (or has no body to send).
    complete: bool,
    upstream_error: Option<&'static str>,
}

/// The log a request's line goes to and when the request started: the
/// clock is read only for the line, nothing else needs it (its wall-clock
/// time comes from [`clock::wall_time`], without a second read).
struct Logging {
    log: AccessLog,
    started: Instant,
}

impl Record {
    fn start(proxy: &Proxy, conn: &Arc<ConnInfo>, req: &Request<Incoming>, id: RequestId) -> Self {
        let log = proxy.access_log.clone().map(|log| Logging {
            log,
            started: Instant::now(),
        });
        let on = log.is_some();
        Self {
            log,
            id,
            conn: conn.clone(),
            method: req.method().clone(),
            target: if on {
                LoggedTarget::of(req.uri(), host_header(req))
            } else {
                LoggedTarget::None
            },
            version: req.version(),
            snapshot: None,
            decision: None,
            status: 0,
            bytes: 0,
            complete: false,
            upstream_error: None,
        }
    }

    /// Responses that never have a body: hyper may not poll theirs.
    fn bodiless(&self) -> bool {
        self.method == Method::HEAD
            || self.status == StatusCode::NO_CONTENT.as_u16()
            || self.status == StatusCode::NOT_MODIFIED.as_u16()
            || (100..200).contains(&self.status)
    }

    fn status_reason(&self) -> &'static str {
        self.decision
            .as_ref()
            .and_then(Local::for_decision)
            .and_then(Local::status_reason)
            .or(self.upstream_error)
            .unwrap_or("")
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let Some(Logging { log, started }) = &self.log else {
            return;
        };
        let d = self.decision;
        let set = self.snapshot.as_ref().map(|s| &s.set);
        let deployment = d
            .and_then(|d| d.target)
            .and_then(|t| set?.deployment(t.deployment))
            .map_or("", |dep| &*dep.id);
        let policy = d
            .and_then(|d| d.matched)
            .and_then(|m| set?.policy(m.policy))
            .map_or("", |p| &*p.id);
        let (host, path) = self.target.host_and_path();
        log.log(&Line {
            time: clock::wall_time(started.into_std()),
            duration: started.elapsed(),
            request_id: self.id.as_str(),
            origin: self.conn.origin(),
            formatted_origin: self.conn.log_origin.as_ref(),
            host,
            deployment,
            product: d.and_then(|d| d.target).map_or("", |t| t.product.as_str()),
            method: self.method.as_str(),
            path,
            version: version_str(self.version),
            status: if self.complete {
                self.status
            } else {
                CLIENT_CLOSED_REQUEST
            },
            bytes: self.bytes,
            decision: d.map_or("", |d| d.verdict.as_str()),
            reason: d.map_or("", |d| d.reason.as_str()),
            status_reason: self.status_reason(),
            policy,
        });
    }
}

/// The host and path an access-log line names.
enum LoggedTarget {
    /// The access log is off.
    None,
    /// Clones of the request's own `Uri` and `Host`: reference counts on
    /// hyper's read buffer, for a host and path too long to copy.
    Shared { uri: Uri, host: Option<HeaderValue> },
    /// Copies (see [`LoggedTarget::of`]).
    Copied(CopiedTarget),
}

/// Host and path copied into the record: `bytes[..host]` then
/// `bytes[host..host + path]`, both UTF-8 (copied from `str`s).
struct CopiedTarget {
    host: u8,
    path: u8,
    bytes: [u8; COPIED_TARGET],
}

/// Room for the host and path copied: the same 128 bytes the shared
/// clones take, so the record does not grow.
const COPIED_TARGET: usize = 126;

impl LoggedTarget {
    /// The request's host and path, copied into the record when they fit
    /// (nearly always), else shared. A copy of some fifty bytes costs less
    /// than the reference counts taken and given back on the head's bytes
    /// (four atomic operations a request), and holds nothing of the
    /// request's head: once a request answered at once has let go of it,
    /// hyper reads the next request into the buffer it has instead of
    /// allocating another (8 KiB) while the answer is still in flight.
    fn of(uri: &Uri, host: Option<&HeaderValue>) -> Self {
        let copied = CopiedTarget::new(host_of(uri, host).unwrap_or(""), uri.path());
        copied.map_or_else(
            || Self::Shared {
                uri: uri.clone(),
                host: host.cloned(),
            },
            Self::Copied,
        )
    }

    fn host_and_path(&self) -> (&str, &str) {
        match self {
            Self::None => ("", ""),
            Self::Shared { uri, host } => (host_of(uri, host.as_ref()).unwrap_or(""), uri.path()),
            Self::Copied(c) => {
                let host = usize::from(c.host);
                let text = |range: std::ops::Range<usize>| {
                    c.bytes
                        .get(range)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or("")
                };
                (text(0..host), text(host..host + usize::from(c.path)))
            }
        }
    }
}

impl CopiedTarget {
    /// `host` and `path` copied, when they fit.
    fn new(host: &str, path: &str) -> Option<Self> {
        let (host_len, path_len) = (
            u8::try_from(host.len()).ok()?,
            u8::try_from(path.len()).ok()?,
        );
        let mut bytes = [0; COPIED_TARGET];
        bytes
            .get_mut(..host.len())?
            .copy_from_slice(host.as_bytes());
        bytes
            .get_mut(host.len()..host.len() + path.len())?
            .copy_from_slice(path.as_bytes());
        Some(Self {
            host: host_len,
            path: path_len,
            bytes,
        })
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The response body as served: counts bytes, keeps the request in flight
/// on its connection, and ends the request's record when done (or when
/// dropped unfinished: the client went away).
pub struct Served {
    inner: ResponseBody,
    guard: RequestGuard,
    record: Option<Record>,
}

impl Served {
    fn finish(&mut self, complete: bool) {
        if let Some(mut r) = self.record.take() {
            r.complete = complete || r.bodiless();
            // Dropping it writes the line.
        }
        // Idle from here on (if this was the last request in flight).
        self.guard = RequestGuard::none();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl Body for Served {
    type Data = Bytes;
    type Error = BackendError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame<BackendError> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(r)) = (f.data_ref(), self.record.as_mut()) {
                    r.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Some(Err(_)) => {
                // The backend broke off the response: the client did not
                // cancel it, so the backend's status stands.
                if let Some(r) = self.record.as_mut() {
                    r.upstream_error = Some("response_body");
                }
                self.finish(true);
            }
            None => self.finish(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target of a request for `uri` with `host`, and the same
    /// target shared (clones of the request's own).
    fn target(uri: &str, host: Option<&str>) -> (LoggedTarget, LoggedTarget) {
        let uri: Uri = uri.parse().expect("a test URI");
        let host = host.map(|h| HeaderValue::from_str(h).expect("a test host"));
        let target = LoggedTarget::of(&uri, host.as_ref());
        (target, LoggedTarget::Shared { uri, host })
    }

    #[test]
    fn a_copied_target_names_what_the_shared_one_names() {
        for (uri, host) in [
            ("/index/_search?q=a", Some("abc.es.example.com")),
            ("/", Some("abc.es.example.com:9243")),
            ("/", None),
            ("https://abc.es.example.com/x", Some("abc.es.example.com")),
            ("*", Some("h")),
        ] {
            let (copied, shared) = target(uri, host);
            assert!(matches!(copied, LoggedTarget::Copied(_)));
            assert_eq!(copied.host_and_path(), shared.host_and_path(), "{uri}");
        }
    }

    #[test]
    fn a_target_too_long_to_copy_stays_shared() {
        let fits = format!("/{}", "a".repeat(COPIED_TARGET - 1 - "h".len()));
        assert!(matches!(
            target(&fits, Some("h")).0,
            LoggedTarget::Copied(_)
        ));
        let long = format!("{fits}a");
        let (kept, _) = target(&long, Some("h"));
        assert!(matches!(kept, LoggedTarget::Shared { .. }));
        assert_eq!(kept.host_and_path(), ("h", long.as_str()));
    }
}

//! Per request: route → decide → answer or forward (SPEC §1.8, §2, §6).
//!
//! The snapshot is loaded once, after the request head is read; the request
//! keeps that snapshot (an `Arc`) until its response is done, so a reload
//! never changes a decision half-way, and the next request on the same
//! connection sees the new snapshot.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Proxy;
use super::activity::RequestGuard;
use super::connection::ConnInfo;
use crate::forward::headers::X_FOUND_CLUSTER;
use crate::forward::{ForwardError, Forwarded, ResponseBody};
use crate::policy::{Decision, Reason, RequestFacts, Verdict, decide};
use crate::reload::Loaded;
use crate::response::Local;
use crate::route::RouteInput;

/// Handles one request. Never fails: every outcome is a response.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Served>, Infallible> {
    let guard = conn.activity.request_started();
    let started = Instant::now();
    let mut record = Record {
        started,
        time: SystemTime::now(),
        conn: conn.clone(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        host: host_header(&req).cloned(),
        snapshot: None,
        decision: None,
        status: 0,
        bytes: 0,
        upstream: None,
    };
    let response = respond(&proxy, &conn, req, &mut record).await;
    record.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        Served {
            inner: body,
            guard,
            record: Some(record),
            proxy,
        },
    ))
}

async fn respond(
    proxy: &Proxy,
    conn: &ConnInfo,
    req: Request<Incoming>,
    record: &mut Record,
) -> Response<ResponseBody> {
    if let Some(local) = check_request(proxy, &req) {
        return local.response();
    }
    let host = request_host(&req);
    let found_cluster = req
        .headers()
        .get(&X_FOUND_CLUSTER)
        .and_then(|v| v.to_str().ok());

    // One snapshot for the whole request.
    let Some(snapshot) = proxy.snapshot.current() else {
        return Local::NotReady.response();
    };
    let input = RouteInput {
        host,
        found_cluster,
        sni: conn.sni.as_deref(),
    };
    let decision = match proxy.router.route(&snapshot.set, &input) {
        Ok(target) => decide(
            &snapshot.set,
            &RequestFacts {
                target,
                client: conn.client,
            },
        ),
        Err(e) => Decision::unrouted(e.reason()),
    };
    record.decision = Some(decision);
    record.snapshot = Some(snapshot.clone());
    proxy.metrics.request(&decision);

    let backends = match (decision.verdict, decision.target) {
        (Verdict::Denied, _) | (_, None) => {
            // The request body is never read, so never sent anywhere.
            return match decision.reason {
                Reason::UnknownDeployment => Local::UnknownResource,
                Reason::Misdirected => Local::Misdirected,
                _ => Local::Forbidden,
            }
            .response();
        }
        (_, Some(target)) => match snapshot
            .set
            .deployment(target.deployment)
            .and_then(|d| d.backends(target.product))
        {
            Some(b) => b,
            None => return Local::UnknownResource.response(),
        },
    };
    let product = decision.target.map(|t| t.product);
    let host = host.map(str::to_owned);
    let fwd = Forwarded {
        client: conn.client.source,
        host: host.as_deref(),
    };
    let sent = Instant::now();
    let result = proxy.forwarder.forward(backends, req, fwd).await;
    match result {
        Ok(response) => {
            if let Some(p) = product {
                proxy
                    .upstream_metrics
                    .observe(p, sent.elapsed().as_secs_f64());
            }
            record.upstream = Some(Ok(()));
            response
        }
        Err(e) => {
            proxy.upstream_metrics.error(e.kind());
            tracing::warn!(error = %e, kind = e.kind(), client_ip = %conn.client.source, "forwarding failed");
            let local = match &e {
                ForwardError::ResponseTimeout(_) => Local::GatewayTimeout,
                ForwardError::RequestBodyTimeout(_) => Local::RequestTimeout,
                ForwardError::NoHealthyBackend => Local::NoHealthyBackend,
                ForwardError::RequestBody(_) => Local::BadRequest,
                _ => Local::BadGateway,
            };
            record.upstream = Some(Err(e.kind()));
            local.response()
        }
    }
}

/// Limits and consistency checks before routing.
fn check_request(proxy: &Proxy, req: &Request<Incoming>) -> Option<Local> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > proxy.http.max_uri_bytes {
        return Some(Local::UriTooLong);
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

fn host_header(req: &Request<Incoming>) -> Option<&HeaderValue> {
    req.headers().get(header::HOST)
}

/// The host the request is for: the target's authority (HTTP/2, or an
/// HTTP/1.1 absolute-form target), else `Host`.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host_header(req).and_then(|v| v.to_str().ok()))
}

/// What the access log says about one request (SPEC §9), filled in as the
/// request goes and written when the response body is done.
struct Record {
    started: Instant,
    time: SystemTime,
    conn: Arc<ConnInfo>,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    snapshot: Option<Arc<Loaded>>,
    decision: Option<Decision>,
    status: u16,
    bytes: u64,
    upstream: Option<Result<(), &'static str>>,
}

impl Record {
    fn emit(&self, version: Version) {
        let d = self.decision;
        let set = self.snapshot.as_ref().map(|s| &s.set);
        let deployment = d
            .and_then(|d| d.target)
            .and_then(|t| set?.deployment(t.deployment))
            .map(|dep| &*dep.id);
        let policy = d
            .and_then(|d| d.matched)
            .and_then(|m| set?.policy(m.policy))
            .map(|p| &*p.id);
        let status_reason = match d {
            Some(d) if d.verdict == Verdict::Denied && d.target.is_some() => {
                "BLOCKED_BY_TRAFFIC_FILTER"
            }
            Some(d) if d.reason == Reason::UnknownDeployment => "UNKNOWN_RESOURCE",
            Some(d) if d.reason == Reason::Misdirected => "MISDIRECTED",
            _ => match self.upstream {
                Some(Err(kind)) => kind,
                _ => "",
            },
        };
        let endpoint = self.conn.client.endpoint.map(|e| e.to_string());
        tracing::info!(
            target: "portcullis::access",
            time = %humanish_time(self.time),
            client_ip = %self.conn.client.source,
            peer = %self.conn.peer,
            endpoint = endpoint.as_deref().unwrap_or(""),
            sni = self.conn.sni.as_deref().unwrap_or(""),
            host = self
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
                .unwrap_or(""),
            deployment = deployment.unwrap_or(""),
            product = d.and_then(|d| d.target).map_or("", |t| t.product.as_str()),
            method = self.method.as_str(),
            path = self.uri.path(),
            version = ?version,
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            decision = d.map_or("", |d| d.verdict.as_str()),
            reason = d.map_or("", |d| d.reason.as_str()),
            status_reason,
            policy = policy.unwrap_or(""),
            "request"
        );
    }
}

/// RFC 3339 UTC with milliseconds, without a date-time dependency.
fn humanish_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The response body as served: counts bytes, keeps the request in flight
/// on its connection, and writes the access log line when done.
pub struct Served {
    inner: ResponseBody,
    guard: RequestGuard,
    record: Option<Record>,
    proxy: Arc<Proxy>,
}

impl Served {
    fn finish(&mut self) {
        if let Some(r) = self.record.take()
            && self.proxy.access_log
        {
            r.emit(if r.conn.h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            });
        }
        // Idle from here on (if this was the last request in flight).
        self.guard = RequestGuard::none();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for Served {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(r)) = (f.data_ref(), self.record.as_mut()) {
                    r.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Some(Err(_)) | None => self.finish(),
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

    #[test]
    fn formats_utc_times() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(humanish_time(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            humanish_time(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(humanish_time(leap), "2000-02-29T00:00:00.000Z");
    }
}

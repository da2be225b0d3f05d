//! Responses portcullis answers itself (SPEC §6). Bodies are static bytes:
//! answering a rejected request allocates nothing but the response head.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::forward::{ForwardError, ResponseBody};
use crate::policy::{Decision, Reason, Verdict};

/// A request answered here instead of by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Denied by policy.
    Forbidden,
    /// No such deployment or resource.
    UnknownResource,
    /// SNI and host name different deployments.
    Misdirected,
    /// No snapshot loaded yet: we cannot decide, so we do not forward.
    NotReady,
    /// Every backend node refused or failed.
    BadGateway,
    /// The backend did not answer in time.
    GatewayTimeout,
    /// The request cannot be routed (e.g. an absolute-form target naming a
    /// different host than `Host`).
    BadRequest,
    /// The request target is longer than `server.max_uri_bytes`.
    UriTooLong,
    /// The client stopped sending its request body.
    RequestTimeout,
    /// Every node of the resource is ejected.
    NoHealthyBackend,
    /// HTTP/1.1 `CONNECT`: never tunnelled.
    MethodNotAllowed,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1).
    NotImplemented,
    /// `GET /_health` while ready.
    Healthy,
    /// `GET /_health` while draining.
    Draining,
}

const FORBIDDEN: &[u8] = br#"{"ok":false,"message":"Forbidden due to traffic filtering. Please see the Elastic documentation on Traffic Filtering for more information."}"#;
const UNKNOWN: &[u8] = br#"{"ok":false,"message":"Unknown resource."}"#;
const MISDIRECTED: &[u8] = br#"{"ok":false,"message":"Misdirected request."}"#;
const NOT_READY: &[u8] =
    br#"{"ok":false,"message":"The proxy has no policy snapshot loaded yet."}"#;
const BAD_GATEWAY: &[u8] =
    br#"{"ok":false,"message":"The deployment's nodes could not be reached."}"#;
const GATEWAY_TIMEOUT: &[u8] =
    br#"{"ok":false,"message":"The deployment's node did not answer in time."}"#;
const BAD_REQUEST: &[u8] = br#"{"ok":false,"message":"Bad request."}"#;
const URI_TOO_LONG: &[u8] = br#"{"ok":false,"message":"Request target too long."}"#;
const NO_HEALTHY_BACKEND: &[u8] =
    br#"{"ok":false,"message":"No healthy node is available for this deployment resource."}"#;
const METHOD_NOT_ALLOWED: &[u8] =
    br#"{"ok":false,"message":"The CONNECT method is not supported."}"#;
const NOT_IMPLEMENTED: &[u8] =
    br#"{"ok":false,"message":"Transfer codings other than chunked are not supported."}"#;
const HEALTHY: &[u8] = br#"{"ok":true}"#;
const DRAINING: &[u8] = br#"{"ok":false,"message":"The proxy is shutting down."}"#;
const REQUEST_TIMEOUT: &[u8] = br#"{"ok":false,"message":"The request body stopped arriving."}"#;

static JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Local {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UnknownResource => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Healthy => StatusCode::OK,
            Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn body(self) -> &'static [u8] {
        match self {
            Self::Forbidden => FORBIDDEN,
            Self::UnknownResource => UNKNOWN,
            Self::Misdirected => MISDIRECTED,
            Self::NotReady => NOT_READY,
            Self::BadGateway => BAD_GATEWAY,
            Self::GatewayTimeout => GATEWAY_TIMEOUT,
            Self::BadRequest => BAD_REQUEST,
            Self::UriTooLong => URI_TOO_LONG,
            Self::RequestTimeout => REQUEST_TIMEOUT,
            Self::NoHealthyBackend => NO_HEALTHY_BACKEND,
            Self::MethodNotAllowed => METHOD_NOT_ALLOWED,
            Self::NotImplemented => NOT_IMPLEMENTED,
            Self::Healthy => HEALTHY,
            Self::Draining => DRAINING,
        }
    }

    /// The answer to a request its decision does not forward; `None` for
    /// one it does. The one mapping from decisions to answers: serving,
    /// the access log and `explain` all use it.
    pub fn for_decision(d: &Decision) -> Option<Self> {
        match (d.verdict, d.target) {
            (Verdict::Denied, _) | (_, None) => Some(match d.reason {
                Reason::UnknownDeployment => Self::UnknownResource,
                Reason::Misdirected => Self::Misdirected,
                _ => Self::Forbidden,
            }),
            _ => None,
        }
    }

    /// The access log's `status_reason` for answers routing or policy
    /// chose (SPEC §9).
    pub fn status_reason(self) -> Option<&'static str> {
        match self {
            Self::Forbidden => Some("BLOCKED_BY_TRAFFIC_FILTER"),
            Self::UnknownResource => Some("UNKNOWN_RESOURCE"),
            Self::Misdirected => Some("MISDIRECTED"),
            _ => None,
        }
    }

    /// The answer to a request that could not be forwarded.
    pub fn for_forward_error(e: &ForwardError) -> Self {
        match e {
            ForwardError::ResponseTimeout(_) => Self::GatewayTimeout,
            ForwardError::RequestBodyTimeout(_) => Self::RequestTimeout,
            ForwardError::NoHealthyBackend => Self::NoHealthyBackend,
            // The client stopped sending; it will likely never read this.
            ForwardError::RequestBody(_) => Self::BadRequest,
            ForwardError::Connect(..)
            | ForwardError::ConnectTimeout(_)
            | ForwardError::Backend(_)
            | ForwardError::UnexpectedUpgrade => Self::BadGateway,
        }
    }

    pub fn response(self) -> Response<ResponseBody> {
        self.response_in(HeaderMap::new())
    }

    /// The answer, its headers written into `headers` (emptied first):
    /// the request's map, reused, saves allocating one.
    pub fn response_in(self, mut headers: HeaderMap) -> Response<ResponseBody> {
        headers.clear();
        headers.insert(CONTENT_TYPE, JSON.clone());
        let mut r = Response::new(ResponseBody::local(Bytes::from_static(self.body())));
        *r.status_mut() = self.status();
        *r.headers_mut() = headers;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_with_ok_false() {
        for l in [
            Local::Forbidden,
            Local::UnknownResource,
            Local::Misdirected,
            Local::NotReady,
            Local::BadGateway,
            Local::GatewayTimeout,
            Local::BadRequest,
            Local::UriTooLong,
            Local::RequestTimeout,
            Local::NoHealthyBackend,
            Local::MethodNotAllowed,
            Local::NotImplemented,
            Local::Draining,
        ] {
            let v: serde_json::Value = serde_json::from_slice(l.body()).unwrap();
            assert_eq!(v["ok"], false);
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(l.response().headers()[CONTENT_TYPE], "application/json");
            // A reused map keeps nothing of what it held.
            let mut reused = HeaderMap::new();
            reused.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
            let r = l.response_in(reused);
            assert_eq!(r.headers().len(), 1);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(r.status(), l.status());
        }
        let v: serde_json::Value = serde_json::from_slice(Local::Healthy.body()).unwrap();
        assert_eq!(v, serde_json::json!({"ok": true}));
    }
}

//! Header rewriting between client and backend (SPEC §6). Pure functions
//! over `http` types.
//!
//! Towards the backend: hop-by-hop headers and any header the client named
//! in `Connection` are removed; `X-Forwarded-For` is replaced by the client
//! address portcullis established (never appended to: the client's own
//! value is untrusted), `X-Forwarded-Proto: https` is set, and
//! `X-Found-Cluster` (a routing hint for us) is removed, and so are the
//! client's own `Forwarded` and `X-Real-IP` claims (stripped rather than
//! rewritten: `X-Forwarded-For` already carries the address we trust, and a
//! second header saying the same thing is one more to keep right).
//! `X-Cloud-Request-Id` carries the request's id. The request goes
//! upstream as HTTP/1.1 in origin form with a `Host` header; HTTP/2
//! `cookie` fields are joined into one line.
//!
//! Towards the client: hop-by-hop headers from the backend are removed.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Version};

use crate::request_id;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FOUND_CLUSTER: HeaderName = HeaderName::from_static("x-found-cluster");

/// RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies
/// still see in the wild. `name` is lowercase, as `HeaderName::as_str`
/// gives it. (A `match` on strings is a switch on the length and one
/// comparison: this runs for every header of every request and response.)
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// What the client may not tell the backend itself: our routing hint and
/// forwarding claims, never passed on (SPEC §6; the backend learns the
/// client from `X-Forwarded-For`, which we set).
fn client_claim(name: &str) -> bool {
    matches!(
        name,
        "x-found-cluster" | "x-forwarded-for" | "x-real-ip" | "forwarded"
    )
}

static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, hop_by_hop);
}

/// Removes the headers `doomed` names (given lowercase names), and those
/// listed in `Connection`.
///
/// The headers are scanned once and a name removed only when present: a
/// request or response carries a handful of headers, and removing each of
/// thirteen names whether there or not (a hash and a probe each) was the
/// largest share of the proxy's own instructions per request.
fn strip(headers: &mut HeaderMap, doomed: fn(&str) -> bool) {
    // Names listed in Connection go first, while Connection is still there.
    // Collected only when present: the common values (`keep-alive`,
    // `close`) name no header of the message, and parse nothing.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|token| headers.contains_key(*token))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // Each removal rescans: there are rarely more than one or two.
    while let Some(name) = headers.keys().find(|k| doomed(k.as_str())).cloned() {
        headers.remove(name);
    }
}

/// The tokens a message's `Connection` fields list (RFC 9110 §7.6.1), as
/// written (compare them ignoring case).
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// What the request rewrite needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// `X-Forwarded-For`: the client address (from the PROXY header, or the
    /// TCP peer), made once per connection with [`client_header_value`].
    pub client: &'a HeaderValue,
    /// `X-Cloud-Request-Id`, sent to the backend too.
    pub request_id: &'a HeaderValue,
}

/// Rewrites a client request's head for the backend. `fallback_host` is
/// the `Host` to send when the client named none (HTTP/1.0).
pub fn rewrite_request(
    parts: &mut http::request::Parts,
    fwd: Forwarded<'_>,
    fallback_host: impl FnOnce() -> Option<HeaderValue>,
) {
    strip(&mut parts.headers, |name| {
        hop_by_hop(name) || client_claim(name)
    });
    parts
        .headers
        .insert(X_FORWARDED_FOR.clone(), fwd.client.clone());
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HTTPS.clone());
    parts
        .headers
        .insert(request_id::HEADER.clone(), fwd.request_id.clone());
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 names the host in :authority; the upstream hop is
        // HTTP/1.1, which needs a Host line.
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(fallback_host);
        if let Some(host) = host {
            parts.headers.insert(header::HOST, host);
        }
    }
    parts.version = Version::HTTP_11;
    parts.uri = origin_form(&parts.uri, &parts.method);
}

/// RFC 9113 §8.2.3: HTTP/2 clients may split `cookie` into one field per
/// cookie; towards HTTP/1.1 they are joined with `"; "` into one line.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for c in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(c.as_bytes());
    }
    // Made of valid header values and "; ": always valid.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Rewrites a backend response's headers for the client. (The backend's
/// HTTP version is not passed on: it describes the upstream hop only, and
/// an HTTP/1.0 backend's answer would make hyper downgrade the client's
/// response and close its keep-alive connection.)
pub fn rewrite_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// The request target as an HTTP/1.1 origin-form URI (`/path?query`).
fn origin_form(uri: &Uri, method: &Method) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let pq = uri.path_and_query().cloned().unwrap_or_else(|| {
        PathAndQuery::from_static(if method == Method::OPTIONS { "*" } else { "/" })
    });
    Uri::from(pq)
}

/// The `X-Forwarded-For` value for a client. Made once per connection:
/// its clones share one allocation.
pub fn client_header_value(ip: IpAddr) -> HeaderValue {
    // An IP address is at most 45 bytes of text (an IPv4-mapped IPv6
    // address written out in full); the buffer becomes the allocation.
    let mut buf = [0u8; 48];
    let len = {
        let mut w = &mut buf[..];
        let before = w.len();
        let _ = std::io::Write::write_fmt(&mut w, format_args!("{ip}"));
        before - w.len()
    };
    // `from_owner`: the bytes and their reference count in one allocation,
    // so cloning the value per request allocates nothing.
    let bytes = bytes::Bytes::from_owner(buf).slice(..len);
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(build: http::request::Builder) -> http::request::Parts {
        build.body(()).unwrap().into_parts().0
    }

    /// Rewrites `parts` for a backend as the forwarder does, for a client
    /// at `client`; `fallback` is the backend address used as `Host` when
    /// the request names none.
    fn rewrite(
        parts: &mut http::request::Parts,
        client: &str,
        request_id: &'static str,
        fallback: Option<&'static str>,
    ) {
        let fwd = Forwarded {
            client: &client_header_value(client.parse().unwrap()),
            request_id: &HeaderValue::from_static(request_id),
        };
        rewrite_request(parts, fwd, || fallback.map(HeaderValue::from_static));
    }

    #[test]
    fn replaces_forwarding_headers_and_strips_hop_by_hop() {
        let mut parts = request(
            http::Request::get("/_search?q=1")
                .header("host", "abc.es.example.com")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-for", "7.7.7.7")
                .header("x-forwarded-proto", "http")
                .header("x-found-cluster", "other")
                .header("connection", "keep-alive, x-secret")
                .header("x-secret", "s")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers")
                .header("upgrade", "websocket")
                .header("proxy-authorization", "Basic x")
                .header("forwarded", "for=6.6.6.6")
                .header("x-real-ip", "6.6.6.6")
                .header("x-cloud-request-id", "forged")
                .header("authorization", "ApiKey y"),
        );
        rewrite(&mut parts, "2001:db8::7", "id-1", None);
        let h = &parts.headers;
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["2001:db8::7"]
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        for gone in [
            "x-found-cluster",
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(
            h.get_all("x-cloud-request-id").iter().collect::<Vec<_>>(),
            ["id-1"]
        );
        assert_eq!(h["authorization"], "ApiKey y");
        assert_eq!(h["host"], "abc.es.example.com");
        assert_eq!(parts.uri, "/_search?q=1");
        assert_eq!(parts.version, Version::HTTP_11);
    }

    #[test]
    fn http2_requests_get_origin_form_and_a_host_header() {
        let mut parts = request(
            http::Request::post("https://abc.es.example.com:9243/_bulk")
                .version(Version::HTTP_2)
                .header("content-length", "10"),
        );
        rewrite(&mut parts, "192.0.2.1", "id-2", Some("10.0.0.5:9200"));
        assert_eq!(parts.uri, "/_bulk");
        // From :authority, not the fallback.
        assert_eq!(parts.headers["host"], "abc.es.example.com:9243");
        assert_eq!(parts.headers["content-length"], "10");
        assert_eq!(parts.version, Version::HTTP_11);
    }

    #[test]
    fn split_http2_cookies_are_joined_for_http11() {
        let mut parts = request(
            http::Request::get("https://abc.es.example.com/")
                .version(Version::HTTP_2)
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .header("cookie", "c=3"),
        );
        rewrite(&mut parts, "192.0.2.1", "id", None);
        assert_eq!(
            parts.headers.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3"]
        );
    }

    #[test]
    fn http10_requests_without_host_get_the_fallback() {
        let mut parts = request(http::Request::get("/").version(Version::HTTP_10));
        rewrite(&mut parts, "192.0.2.1", "id", Some("10.0.0.5:9200"));
        assert_eq!(parts.headers["host"], "10.0.0.5:9200");
    }

    /// What `strip` replaced: every listed name removed whether present
    /// or not, after the names `Connection` lists.
    fn strip_by_removing_each(headers: &mut HeaderMap, doomed: &[&str]) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        for name in doomed {
            headers.remove(*name);
        }
    }

    proptest::proptest! {
        #[test]
        fn one_scan_strips_what_removing_each_name_stripped(
            fields in proptest::collection::vec((0usize..15, 0usize..7), 0..12),
        ) {
            const NAMES: [&str; 15] = [
                "connection", "keep-alive", "te", "upgrade", "transfer-encoding",
                "x-a-name-longer-than-any-hop-by-hop-one",
                "x-forwarded-for", "forwarded", "x-found-cluster", "x-secret",
                "host", "authorization", "content-type", "x-opaque-id", "accept",
            ];
            const CONNECTION: [&str; 7] = [
                "keep-alive", "close", "X-Secret", "Keep-Alive, x-secret", "te, ,upgrade",
                "x-opaque-id", "X-A-Name-Longer-Than-Any-Hop-By-Hop-One",
            ];
            let mut headers = HeaderMap::new();
            for (name, value) in fields {
                let value = if NAMES[name] == "connection" { CONNECTION[value] } else { "v" };
                headers.append(NAMES[name], HeaderValue::from_static(value));
            }
            const HOP_BY_HOP: [&str; 9] = [
                "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
            ];
            const CLAIMS: [&str; 4] = ["x-found-cluster", "x-forwarded-for", "x-real-ip", "forwarded"];
            let both: Vec<&str> = HOP_BY_HOP.iter().chain(&CLAIMS).copied().collect();
            type Case<'a> = (fn(&str) -> bool, &'a [&'a str]);
            let cases: [Case<'_>; 2] = [
                (hop_by_hop, &HOP_BY_HOP),
                (|n| hop_by_hop(n) || client_claim(n), &both),
            ];
            for (doomed, names) in cases {
                let (mut ours, mut theirs) = (headers.clone(), headers.clone());
                strip(&mut ours, doomed);
                strip_by_removing_each(&mut theirs, names);
                proptest::prop_assert_eq!(ours, theirs);
            }
        }
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut parts = http::Response::builder()
            .header("connection", "close")
            .header("transfer-encoding", "chunked")
            .header("content-type", "application/json")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        rewrite_response(&mut parts.headers);
        assert!(!parts.headers.contains_key("connection"));
        assert!(!parts.headers.contains_key("transfer-encoding"));
        assert_eq!(parts.headers["content-type"], "application/json");
    }
}

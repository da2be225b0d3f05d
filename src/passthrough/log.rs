//! The remote-cluster access-log line: one per connection that got past
//! the PROXY header, written when it ends. Pure: a [`ConnectionLine`] in,
//! bytes appended, with the access log's own helpers, in its format.
//!
//! - JSON: `{"timestamp":…,"level":"INFO","message":"connection","time":…,
//!   "client_ip":…,"peer":…,"endpoint":…,"sni":…,"deployment":…,
//!   "backend":…,"decision":…,"reason":…,"policy":…,
//!   "bytes_client_to_backend":n,"bytes_backend_to_client":n,
//!   "duration_ms":…,"end":…,"target":"portcullis::remote_cluster"}`
//! - text: `{timestamp}  INFO portcullis::remote_cluster: connection time=…
//!   client_ip=… …` (strings quoted).
//!
//! `message` and `target` tell these lines from request lines
//! (`"message":"request"`, `portcullis::access`).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::access_log::format::{Fields, socket_addr};
use crate::access_log::{Format, Origin};

pub const TARGET: &str = "portcullis::remote_cluster";

/// Everything one connection line says.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLine<'a> {
    /// When the connection was accepted.
    pub time: SystemTime,
    pub duration: Duration,
    pub origin: Origin<'a>,
    pub deployment: &'a str,
    /// The backend node, once connected.
    pub backend: Option<SocketAddr>,
    /// `allowed`, `denied`, `would_deny`.
    pub decision: &'a str,
    /// The policy reason (SPEC §8), `unfiltered` with `filter = false`, or
    /// why the connection was refused before a decision.
    pub reason: &'a str,
    /// The policy that allowed it, if one did.
    pub policy: &'a str,
    pub client_to_backend: u64,
    pub backend_to_client: u64,
    /// Why it ended: an `End` or a refusal label.
    pub end: &'a str,
}

/// Appends `line` and a newline to `out`.
pub fn write(format: Format, line: &ConnectionLine<'_>, out: &mut Vec<u8>) {
    let l = line;
    let mut f = Fields::begin(format, out, l.time, l.duration, "connection", TARGET);
    f.origin(&l.origin);
    f.str("deployment", l.deployment);
    f.quoted("backend", |o| {
        if let Some(b) = l.backend {
            socket_addr(b, o);
        }
    });
    f.str("decision", l.decision);
    f.str("reason", l.reason);
    f.str("policy", l.policy);
    f.num("bytes_client_to_backend", l.client_to_backend);
    f.num("bytes_backend_to_client", l.backend_to_client);
    f.millis("duration_ms", l.duration);
    f.token("end", |o| o.extend_from_slice(l.end.as_bytes()));
    f.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> ConnectionLine<'static> {
        ConnectionLine {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_micros(1_500_250),
            origin: Origin {
                client_ip: std::net::IpAddr::from([203, 0, 113, 7]),
                peer: SocketAddr::from(([10, 0, 0, 1], 40000)),
                endpoint: None,
                sni: "abc.es.test\"x",
            },
            deployment: "abc",
            backend: Some(SocketAddr::from(([10, 1, 0, 5], 9400))),
            decision: "allowed",
            reason: "ip",
            policy: "office",
            client_to_backend: 517,
            backend_to_client: 1 << 40,
            end: "client_closed",
        }
    }

    #[test]
    fn json_line_parses_and_names_its_target() {
        let mut out = Vec::new();
        write(Format::Json, &line(), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["message"], "connection");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["sni"], "abc.es.test\"x");
        assert_eq!(v["backend"], "10.1.0.5:9400");
        assert_eq!(v["bytes_backend_to_client"], 1u64 << 40);
        assert_eq!(v["duration_ms"], 1500.25);
        assert_eq!(v["end"], "client_closed");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn text_line_has_every_field() {
        let mut out = Vec::new();
        write(Format::Text, &line(), &mut out);
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.contains("INFO portcullis::remote_cluster: connection time=2023-11-14T22:13:20.000Z client_ip=203.0.113.7 peer=10.0.0.1:40000 endpoint=\"\" sni=\"abc.es.test\\\"x\" deployment=\"abc\" backend=\"10.1.0.5:9400\" decision=\"allowed\" reason=\"ip\" policy=\"office\" bytes_client_to_backend=517 bytes_backend_to_client=1099511627776 duration_ms=1500.250 end=client_closed\n"),
            "{text}"
        );
    }
}

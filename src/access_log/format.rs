//! Access-log line formatting (SPEC §9): pure, `Line` in, bytes appended.
//!
//! Written by hand rather than through `serde_json` or `core::fmt`: a line
//! is about twenty fields, most of them short strings and integers, and the
//! generic machinery (a `Formatter` per field, dynamic dispatch, padding
//! logic) cost several microseconds per request in profiles. Here numbers go
//! through `itoa`, times through a fixed-width writer, and strings through
//! one escaping loop; nothing allocates once the output buffer has grown to
//! a line's size.
//!
//! Both formats keep the fields and the field order of the lines portcullis
//! wrote through `tracing` before, so log pipelines keep working:
//!
//! - JSON: `{"timestamp":…,"level":"INFO","message":"request","time":…,
//!   "request_id":…,…,"target":"portcullis::access"}`
//! - text: `{timestamp}  INFO portcullis::access: request time=… client_ip=…
//!   endpoint="…" …` (strings quoted, as tracing's text format does).

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::endpoint::PrivateEndpoint;

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Who connected: the same fields, in the same order, on a request line
/// and on a remote-cluster connection line.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub client_ip: IpAddr,
    /// The TCP peer: the load balancer.
    pub peer: SocketAddr,
    pub endpoint: Option<PrivateEndpoint>,
    pub sni: &'a str,
}

/// [`Origin`]'s fields as a line writes them, formatted once per
/// connection: every line of a keep-alive connection names the same
/// client, load balancer, endpoint and server name, so each copies them
/// instead of writing two addresses and escaping the name again (about a
/// fifth of a line's instructions).
#[derive(Debug, Clone)]
pub struct FormattedOrigin {
    format: Format,
    fields: Box<[u8]>,
}

impl FormattedOrigin {
    pub fn new(format: Format, origin: &Origin<'_>) -> Self {
        let mut fields = Vec::new();
        Fields {
            format,
            out: &mut fields,
            target: "",
        }
        .origin(origin);
        Self {
            format,
            fields: fields.into_boxed_slice(),
        }
    }
}

/// Everything one access-log line says, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// When the request started (its headers were read).
    pub time: SystemTime,
    /// How long it took, to the end of the response (or the cancellation).
    pub duration: Duration,
    pub request_id: &'a str,
    pub origin: Origin<'a>,
    /// `origin` formatted beforehand, used when it was made in the line's
    /// format.
    pub formatted_origin: Option<&'a FormattedOrigin>,
    pub host: &'a str,
    pub deployment: &'a str,
    /// Names portcullis chose (`&'static`) and the method, which `http`
    /// accepts only as a token: none has a byte to escape, so they are
    /// written without looking for one ([`Fields::known`]).
    pub product: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: &'static str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    pub decision: &'static str,
    pub reason: &'static str,
    pub status_reason: &'static str,
    pub policy: &'a str,
}

/// Appends `line` and a newline to `out`.
pub fn write(format: Format, line: &Line<'_>, out: &mut Vec<u8>) {
    let l = line;
    let mut f = Fields::begin(format, out, l.time, l.duration, "request", super::TARGET);
    f.token("request_id", |o| {
        o.extend_from_slice(l.request_id.as_bytes())
    });
    match l.formatted_origin {
        Some(o) if o.format == format => f.out.extend_from_slice(&o.fields),
        _ => f.origin(&l.origin),
    }
    f.strs(&[("host", l.host), ("deployment", l.deployment)]);
    f.known("product", l.product);
    f.known("method", l.method);
    f.str("path", l.path);
    f.token("version", |o| o.extend_from_slice(l.version.as_bytes()));
    f.num("status", l.status);
    f.num("bytes", l.bytes);
    f.millis("duration_ms", l.duration);
    f.known("decision", l.decision);
    f.known("reason", l.reason);
    f.known("status_reason", l.status_reason);
    f.str("policy", l.policy);
    f.end();
}

/// Writes one line field by field in either format, so every kind of line
/// (requests here, remote-cluster connections in `passthrough`) is laid
/// out the same way:
///
/// - JSON: `{"timestamp":…,"level":"INFO","message":…,"time":…, fields…,
///   "target":…}`
/// - text: `{timestamp}  INFO {target}: {message} time=… key=value…`, the
///   shape of `tracing`'s text format (strings quoted, tokens bare).
pub struct Fields<'o> {
    format: Format,
    out: &'o mut Vec<u8>,
    target: &'static str,
}

impl<'o> Fields<'o> {
    /// Starts a line for an event that began at `time` and took
    /// `duration` (the line's timestamp is its end).
    pub fn begin(
        format: Format,
        out: &'o mut Vec<u8>,
        time: SystemTime,
        duration: Duration,
        message: &'static str,
        target: &'static str,
    ) -> Self {
        match format {
            Format::Json => {
                out.extend_from_slice(b"{\"timestamp\":\"");
                rfc3339(time + duration, 6, out);
                out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"");
                out.extend_from_slice(message.as_bytes());
                out.extend_from_slice(b"\",\"time\":\"");
                rfc3339(time, 3, out);
                out.push(b'"');
            }
            Format::Text => {
                rfc3339(time + duration, 6, out);
                out.extend_from_slice(b"  INFO ");
                out.extend_from_slice(target.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(message.as_bytes());
                out.extend_from_slice(b" time=");
                rfc3339(time, 3, out);
            }
        }
        Self {
            format,
            out,
            target,
        }
    }

    #[inline(always)]
    fn key(&mut self, key: &str) {
        match self.format {
            Format::Json => {
                self.out.extend_from_slice(b",\"");
                self.out.extend_from_slice(key.as_bytes());
                self.out.extend_from_slice(b"\":");
            }
            Format::Text => {
                self.out.push(b' ');
                self.out.extend_from_slice(key.as_bytes());
                self.out.push(b'=');
            }
        }
    }

    /// A string from the request or the snapshot: quoted and escaped.
    #[inline(always)]
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        json_str(value, self.out);
    }

    /// A string with no byte to escape (see [`Line`]): quoted like
    /// [`Fields::str`], without the search for one.
    #[inline(always)]
    pub fn known(&mut self, key: &str, value: &str) {
        debug_assert!(!any_escaped(value.as_bytes()), "{key} = {value:?}");
        self.quoted(key, |o| o.extend_from_slice(value.as_bytes()));
    }

    /// Several strings in a row.
    #[inline(always)]
    pub fn strs(&mut self, fields: &[(&str, &str)]) {
        for &(key, value) in fields {
            self.str(key, value);
        }
    }

    /// The client, its load balancer, its private endpoint and its TLS
    /// server name.
    pub fn origin(&mut self, o: &Origin<'_>) {
        self.token("client_ip", |out| ip(o.client_ip, out));
        self.token("peer", |out| socket_addr(o.peer, out));
        self.quoted("endpoint", |out| endpoint(o.endpoint, out));
        self.str("sni", o.sni);
    }

    /// A value made of characters that need no escaping (an address, an
    /// id): quoted in JSON, bare in text.
    #[inline(always)]
    pub fn token(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        match self.format {
            Format::Json => self.quoted_value(write),
            Format::Text => write(self.out),
        }
    }

    /// Like [`Fields::token`], but quoted in text too (it may be empty).
    #[inline(always)]
    pub fn quoted(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        self.quoted_value(write);
    }

    #[inline(always)]
    fn quoted_value(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.out.push(b'"');
        write(self.out);
        self.out.push(b'"');
    }

    #[inline(always)]
    pub fn num(&mut self, key: &str, n: impl itoa::Integer) {
        self.key(key);
        int(n, self.out);
    }

    #[inline(always)]
    pub fn millis(&mut self, key: &str, d: Duration) {
        self.key(key);
        millis(d, self.out);
    }

    /// Ends the line (newline included).
    pub fn end(self) {
        match self.format {
            Format::Json => {
                self.out.extend_from_slice(b",\"target\":\"");
                self.out.extend_from_slice(self.target.as_bytes());
                self.out.extend_from_slice(b"\"}\n");
            }
            Format::Text => self.out.push(b'\n'),
        }
    }
}

fn int(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with microsecond precision (`0.120`).
fn millis(d: Duration, out: &mut Vec<u8>) {
    // u64 arithmetic: 128-bit division is a libcall, and this runs per line.
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    int(micros / 1000, out);
    out.push(b'.');
    pad(micros % 1000, 3, out);
}

/// `n` zero-padded to `width` digits (n < 10^width, width ≤ 8).
fn pad(n: impl Into<u64>, width: usize, out: &mut Vec<u8>) {
    let mut digits = [b'0'; 8];
    let mut n = (n.into() % 10_u64.pow(width as u32)) as u32;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// A JSON string literal; also tracing's quoted text value for the ASCII
/// strings these fields hold.
fn json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every value needs no escaping at all: say so with one pass
    // over words of eight bytes, without an early exit, then copy the
    // value whole.
    if !any_escaped(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    // Find the next byte that needs escaping, and copy the runs in between
    // whole.
    while let Some(i) = bytes[start..]
        .iter()
        .position(|&b| ESCAPE[usize::from(b)])
        .map(|i| start + i)
    {
        out.extend_from_slice(&bytes[start..i]);
        let b = bytes[i];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Non-zero exactly when a byte of `w` is one [`ESCAPE`] marks. (Which
/// bits are set can be off, since a borrow runs into the bytes above a
/// match; whether any is set is exact.)
fn escape_bits(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x20 (ASCII bytes only: `!w & HIGH`).
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    // A byte equal to `b`: it is zero in `w ^ b`.
    let equal = |b: u8| {
        let x = w ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    control | equal(b'"') | equal(b'\\') | equal(0x7f)
}

/// Whether any byte of `bytes` is one [`ESCAPE`] marks: a word of eight
/// bytes at a time, the last word overlapping the one before it (a tail
/// padded into a word took a `memcpy` call per string); a string shorter
/// than a word, byte by byte.
fn any_escaped(bytes: &[u8]) -> bool {
    let Some(last) = bytes.last_chunk::<8>() else {
        return bytes.iter().any(|&b| ESCAPE[usize::from(b)]);
    };
    let mut found = escape_bits(u64::from_le_bytes(*last));
    for word in bytes.chunks_exact(8) {
        if let Some(w) = word.first_chunk::<8>() {
            found |= escape_bits(u64::from_le_bytes(*w));
        }
    }
    found != 0
}

/// Bytes `json_str` escapes: `"`, `\`, control characters and DEL.
static ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        // Written digit by digit into one stack buffer and copied once: an
        // address is on every line, twice.
        IpAddr::V4(v4) => {
            let mut text = [0u8; 16];
            let mut len = 0;
            for octet in v4.octets() {
                let [a, b, c, n] = OCTETS[usize::from(octet)];
                // Four bytes written, `n` digits and a dot kept.
                if let Some(at) = text.get_mut(len..len + 4) {
                    at.copy_from_slice(&[a, b, c, b'.']);
                    at.copy_within(3.., usize::from(n));
                }
                len += usize::from(n) + 1;
            }
            out.extend_from_slice(&text[..len - 1]);
        }
        // IPv6's canonical form (RFC 5952 zero compression) is what
        // `Display` gets right; rare enough on this path to use it.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Every octet's decimal digits, left-aligned, and their count.
static OCTETS: [[u8; 4]; 256] = {
    let mut t = [[0; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let n = i as u8;
        t[i] = match n {
            0..=9 => [b'0' + n, 0, 0, 1],
            10..=99 => [b'0' + n / 10, b'0' + n % 10, 0, 2],
            _ => [b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10, 3],
        };
        i += 1;
    }
    t
};

pub fn socket_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => ip(IpAddr::V4(*a.ip()), out),
        SocketAddr::V6(a) => {
            out.push(b'[');
            ip(IpAddr::V6(*a.ip()), out);
            out.push(b']');
        }
    }
    out.push(b':');
    int(addr.port(), out);
}

pub fn endpoint(e: Option<PrivateEndpoint>, out: &mut Vec<u8>) {
    match e {
        None => {}
        Some(PrivateEndpoint::AwsVpce(id)) => {
            out.extend_from_slice(b"aws-vpce:");
            // Lowercase letters, digits and '-' only (checked when parsed).
            out.extend_from_slice(id.as_bytes());
        }
        Some(PrivateEndpoint::AzureLinkId(id)) => {
            out.extend_from_slice(b"azure-link-id:");
            int(id, out);
        }
        Some(PrivateEndpoint::GcpPscConnectionId(id)) => {
            out.extend_from_slice(b"gcp-psc:");
            int(id, out);
        }
    }
}

/// RFC 3339 UTC with `frac` fractional digits (3 or 6):
/// `2026-11-18T11:06:40.123Z`. A clock before 1970 reads as the epoch; one
/// past 9999 leaves the field empty.
///
/// Every line has two timestamps, and a busy proxy writes thousands of
/// lines within the same second: the date and time to the second come from
/// a per-thread copy of the last second formatted (by `humantime`), so a
/// line costs only its fractional digits.
pub fn rfc3339(t: SystemTime, frac: usize, out: &mut Vec<u8>) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let Some(second) = SECOND.with(|cached| {
        let (at, text) = cached.get();
        if at == Some(since.as_secs()) {
            return Some(text);
        }
        let text = to_the_second(since.as_secs())?;
        cached.set((Some(since.as_secs()), text));
        Some(text)
    }) else {
        return;
    };
    out.extend_from_slice(&second);
    out.push(b'.');
    let micros = since.subsec_micros();
    if frac == 3 {
        pad(micros / 1000, 3, out);
    } else {
        pad(micros, 6, out);
    }
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS`.
type Second = [u8; 19];

thread_local! {
    /// The second [`rfc3339`] formatted last on this thread.
    static SECOND: std::cell::Cell<(Option<u64>, Second)> =
        const { std::cell::Cell::new((None, [0; 19])) };
}

/// The date and time of `secs` after the epoch, or `None` past 9999.
fn to_the_second(secs: u64) -> Option<Second> {
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
    // humantime writes `YYYY-MM-DDTHH:MM:SSZ` for years up to 9999 and
    // refuses later ones (a `Display` error, not a panic).
    // (Through `fmt::Write`: `io::Write::write_fmt` panics on a `Display`
    // error.)
    let mut text = String::with_capacity(20);
    std::fmt::Write::write_fmt(
        &mut text,
        format_args!("{}", humantime::format_rfc3339_seconds(t)),
    )
    .ok()?;
    text.as_bytes().get(..19)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::VpceId;

    fn at(millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
    }

    fn sample() -> Line<'static> {
        Line {
            time: at(1_795_000_000_123),
            duration: Duration::from_micros(120_228),
            request_id: "0123456789abcdef0123456789abcdef",
            origin: Origin {
                client_ip: "203.0.113.9".parse().unwrap(),
                peer: "127.0.0.1:43316".parse().unwrap(),
                endpoint: Some(PrivateEndpoint::AwsVpce(
                    VpceId::parse(b"vpce-0a1b2c3d4e5f67890").unwrap(),
                )),
                sni: "ip-only.es.example.com",
            },
            formatted_origin: None,
            host: "ip-only.es.example.com",
            deployment: "1b2c3d4e5f6a40718293a4b5c6d7e8f9",
            product: "es",
            method: "GET",
            path: "/_search",
            version: "HTTP/1.1",
            status: 403,
            bytes: 140,
            decision: "denied",
            reason: "unmatched",
            status_reason: "BLOCKED_BY_TRAFFIC_FILTER",
            policy: "",
        }
    }

    fn line(format: Format, l: &Line<'_>) -> String {
        let mut out = Vec::new();
        write(format, l, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines_are_json_with_every_field_in_order() {
        let text = line(Format::Json, &sample());
        assert!(text.ends_with("}\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "message",
                "time",
                "request_id",
                "client_ip",
                "peer",
                "endpoint",
                "sni",
                "host",
                "deployment",
                "product",
                "method",
                "path",
                "version",
                "status",
                "bytes",
                "duration_ms",
                "decision",
                "reason",
                "status_reason",
                "policy",
                "target"
            ]
        );
        assert_eq!(v["timestamp"], "2026-11-18T11:06:40.243228Z");
        assert_eq!(v["time"], "2026-11-18T11:06:40.123Z");
        assert_eq!(v["endpoint"], "aws-vpce:vpce-0a1b2c3d4e5f67890");
        assert_eq!(v["status"], 403);
        assert_eq!(v["bytes"], 140);
        assert_eq!(v["duration_ms"], 120.228);
        assert_eq!(v["status_reason"], "BLOCKED_BY_TRAFFIC_FILTER");
        assert_eq!(v["target"], "portcullis::access");
    }

    #[test]
    fn text_lines_read_like_tracing_text() {
        let text = line(Format::Text, &sample());
        assert_eq!(
            text,
            "2026-11-18T11:06:40.243228Z  INFO portcullis::access: request \
             time=2026-11-18T11:06:40.123Z request_id=0123456789abcdef0123456789abcdef \
             client_ip=203.0.113.9 peer=127.0.0.1:43316 \
             endpoint=\"aws-vpce:vpce-0a1b2c3d4e5f67890\" sni=\"ip-only.es.example.com\" \
             host=\"ip-only.es.example.com\" deployment=\"1b2c3d4e5f6a40718293a4b5c6d7e8f9\" \
             product=\"es\" method=\"GET\" path=\"/_search\" version=HTTP/1.1 status=403 \
             bytes=140 duration_ms=120.228 decision=\"denied\" reason=\"unmatched\" \
             status_reason=\"BLOCKED_BY_TRAFFIC_FILTER\" policy=\"\"\n"
        );
    }

    #[test]
    fn an_origin_formatted_beforehand_gives_the_same_line() {
        let names = ["ip-only.es.example.com", "a\"b\\c\u{1}", ""];
        for sni in names {
            let l = Line {
                origin: Origin {
                    sni,
                    ..sample().origin
                },
                ..sample()
            };
            for format in [Format::Json, Format::Text] {
                let origin = FormattedOrigin::new(format, &l.origin);
                let with = Line {
                    formatted_origin: Some(&origin),
                    ..l
                };
                assert_eq!(line(format, &with), line(format, &l), "{format:?} {sni:?}");
            }
        }
        // Made for the other format, it is not used: the line is still
        // all of one format.
        let json = FormattedOrigin::new(Format::Json, &sample().origin);
        let l = Line {
            formatted_origin: Some(&json),
            ..sample()
        };
        assert_eq!(line(Format::Text, &l), line(Format::Text, &sample()));
    }

    #[test]
    fn strings_are_escaped_so_a_client_cannot_forge_fields_or_lines() {
        let l = Line {
            path: "/a\"b\\c\nd\u{1}\u{7f}é",
            host: "h\",\"status\":200",
            ..sample()
        };
        let text = line(Format::Json, &l);
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\nd\u{1}\u{7f}é");
        assert_eq!(v["host"], "h\",\"status\":200");
        assert_eq!(v["status"], 403);
        assert_eq!(line(Format::Text, &l).matches('\n').count(), 1);
    }

    #[test]
    fn addresses_and_endpoints_of_every_kind() {
        let at = |client_ip: &str, peer: &str, endpoint| Line {
            origin: Origin {
                client_ip: client_ip.parse().unwrap(),
                peer: peer.parse().unwrap(),
                endpoint,
                ..sample().origin
            },
            ..sample()
        };
        let l = at(
            "2001:db8::7",
            "[::1]:9",
            Some(PrivateEndpoint::GcpPscConnectionId(u64::MAX)),
        );
        let v: serde_json::Value = serde_json::from_str(&line(Format::Json, &l)).unwrap();
        assert_eq!(v["client_ip"], "2001:db8::7");
        assert_eq!(v["peer"], "[::1]:9");
        assert_eq!(v["endpoint"], "gcp-psc:18446744073709551615");
        let l = at(
            "203.0.113.9",
            "127.0.0.1:43316",
            Some(PrivateEndpoint::AzureLinkId(16_777_301)),
        );
        let v: serde_json::Value = serde_json::from_str(&line(Format::Json, &l)).unwrap();
        assert_eq!(v["endpoint"], "azure-link-id:16777301");
        let l = at("203.0.113.9", "127.0.0.1:43316", None);
        let v: serde_json::Value = serde_json::from_str(&line(Format::Json, &l)).unwrap();
        assert_eq!(v["endpoint"], "");
    }

    #[test]
    fn formats_utc_times() {
        let mut out = Vec::new();
        rfc3339(SystemTime::UNIX_EPOCH, 3, &mut out);
        out.push(b' ');
        // 2000-02-29, a leap day in a century year divisible by 400.
        rfc3339(at(951_782_400_000), 3, &mut out);
        out.push(b' ');
        rfc3339(at(253_402_300_799_999), 6, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000Z 2000-02-29T00:00:00.000Z 9999-12-31T23:59:59.999000Z"
        );
    }

    #[test]
    fn times_past_9999_leave_the_field_empty_and_times_before_1970_read_as_the_epoch() {
        let mut out = Vec::new();
        rfc3339(at(253_402_300_800_000), 3, &mut out);
        assert_eq!(out, b"");
        rfc3339(SystemTime::UNIX_EPOCH - Duration::from_secs(5), 6, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn the_cached_second_follows_the_clock_both_ways() {
        let mut out = Vec::new();
        for millis in [1_795_000_000_999, 1_795_000_001_000, 1_795_000_000_001] {
            rfc3339(at(millis), 3, &mut out);
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-18T11:06:40.999Z 2026-11-18T11:06:41.000Z 2026-11-18T11:06:40.001Z "
        );
    }

    proptest::proptest! {
        #[test]
        fn every_string_round_trips_through_json(
            s in "[\\x00-\\x7f\\u{80}-\\u{10ffff}]{0,40}",
        ) {
            let mut out = Vec::new();
            json_str(&s, &mut out);
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn the_word_test_and_the_table_agree_on_every_byte_at_every_place() {
        for b in 0..=u8::MAX {
            for len in 1..=17 {
                for at in 0..len {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = b;
                    assert_eq!(
                        any_escaped(&bytes),
                        ESCAPE[usize::from(b)],
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!any_escaped(b""));
    }

    #[test]
    fn ipv4_addresses_of_every_octet_width() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "203.0.113.9",
            "10.200.3.47",
        ] {
            let mut out = Vec::new();
            ip(text.parse().unwrap(), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn durations_in_milliseconds() {
        let mut out = Vec::new();
        millis(Duration::from_nanos(999), &mut out);
        out.push(b' ');
        millis(Duration::from_micros(1_234_567), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "0.000 1234.567");
    }
}

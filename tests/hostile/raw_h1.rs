//! HTTP/1.1 by hand: requests are bytes, written as is over TLS;
//! responses are parsed as they arrive, and whether the proxy closed
//! the connection is part of the answer.

use super::*;

/// One parsed HTTP/1.1 response.
#[derive(Clone)]
pub(crate) struct RawResponse {
    /// "HTTP/1.0" or "HTTP/1.1".
    pub(crate) version: String,
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A response portcullis wrote itself (SPEC §6): JSON, exactly `body`.
    pub(crate) fn assert_local(&self, status: StatusCode, body: &str) {
        assert_eq!(self.status, status.as_u16(), "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.text(), body);
    }

    /// The backend's echo, after checking the status.
    pub(crate) fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "body: {}", self.text());
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()));
        assert_eq!(v["backend"], "es", "not a backend echo: {v}");
        Echo(v)
    }
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {:?}", self.status, self.headers, self.text())
    }
}

/// What came back on one raw connection.
pub(crate) struct Exchange {
    pub(crate) responses: Vec<RawResponse>,
    /// Bytes after the last whole response.
    pub(crate) rest: Vec<u8>,
    /// The proxy closed the connection (otherwise it was still open after
    /// the expected responses and a short linger).
    pub(crate) closed: bool,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} then {:?}, {}",
            self.responses,
            String::from_utf8_lossy(&self.rest),
            if self.closed { "closed" } else { "open" }
        )
    }
}

impl Exchange {
    /// Exactly one response, with `status`.
    pub(crate) fn one(&self, status: StatusCode) -> &RawResponse {
        assert!(self.rest.is_empty(), "trailing bytes: {:?}", self.rest);
        let statuses: Vec<u16> = self.responses.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [status.as_u16()],
            "responses: {:?}",
            self.responses
        );
        &self.responses[0]
    }

    /// Hyper's own answer to a request head it could not parse: `status`,
    /// no body, and the connection closed.
    pub(crate) fn assert_parse_error(&self, status: StatusCode) {
        let r = self.one(status);
        assert_eq!(r.header("content-length"), Some("0"), "{r:?}");
        assert!(r.body.is_empty());
        assert!(self.closed, "the connection stayed open after {status}");
    }

    pub(crate) fn assert_closed_silently(&self) {
        assert!(
            self.responses.is_empty() && self.rest.is_empty(),
            "the proxy answered: {self:?}"
        );
        assert!(self.closed, "the connection stayed open");
    }
}

/// Parses as many whole responses as `buf` holds.
pub(crate) fn parse_responses(mut buf: &[u8]) -> (Vec<RawResponse>, Vec<u8>) {
    let mut out = Vec::new();
    while let Some((response, used)) = parse_response(buf) {
        out.push(response);
        buf = &buf[used..];
    }
    (out, buf.to_vec())
}

pub(crate) fn parse_response(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let rest = &buf[head_end..];
    let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        (rest.get(..len)?.to_vec(), len)
    } else if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = std::str::from_utf8(&rest[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // No trailers from hyper: just the final CRLF.
                rest.get(at..at + 2)?;
                at += 2;
                break;
            }
            body.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
        (body, at)
    } else {
        // Delimited by close: whole only once the connection is closed,
        // which the caller learns separately; take what is there.
        (rest.to_vec(), rest.len())
    };
    Some((
        RawResponse {
            version: status_line.get(..8)?.to_owned(),
            status,
            headers,
            body,
        },
        head_end + used,
    ))
}

impl RawResponse {
    /// The server said it closes the connection after this response
    /// (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub(crate) fn closes(&self) -> bool {
        match self.header("connection") {
            Some(c) => c.eq_ignore_ascii_case("close"),
            None => self.version == "HTTP/1.0",
        }
    }
}

/// Reads responses until the proxy closes, or until `expect` whole
/// responses are in and nothing more comes for [`LINGER`]. When none is
/// expected, or the last one announced a close, waits for the close
/// itself (bounded): how soon it comes is not the question.
pub(crate) async fn read_responses<S: AsyncRead + Unpin>(io: &mut S, expect: usize) -> Exchange {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let closed = loop {
        let responses = parse_responses(&got).0;
        let announced_close = responses.last().is_some_and(RawResponse::closes);
        let until = if expect > 0 && responses.len() >= expect && !announced_close {
            (tokio::time::Instant::now() + LINGER).min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, io.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let (responses, rest) = parse_responses(&got);
    Exchange {
        responses,
        rest,
        closed,
    }
}

/// PROXY header, TLS (ALPN http/1.1, SNI = the bare zone, which names no
/// deployment), then `request` written as is.
pub(crate) async fn h1(
    w: &World,
    preamble: &[u8],
    request: impl AsRef<[u8]>,
    expect: usize,
) -> Exchange {
    h1_with(w, preamble, &TlsOpts::h1(), request, expect).await
}

pub(crate) async fn h1_with(
    w: &World,
    preamble: &[u8],
    opts: &TlsOpts,
    request: impl AsRef<[u8]>,
    expect: usize,
) -> Exchange {
    let mut tls = tls_connect(w, preamble, opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The proxy may answer and close before reading everything.
    let _ = tls.write_all(request.as_ref()).await;
    let _ = tls.flush().await;
    read_responses(&mut tls, expect).await
}

/// A client whose source `open` admits and `office` denies.
pub(crate) fn denied_client() -> Vec<u8> {
    v1_from(DENIED_V4)
}

pub(crate) fn open_host() -> String {
    host(OPEN)
}

pub(crate) fn office_host() -> String {
    host(OFFICE)
}

//! The message heads of the backend hop: writing a request head, reading
//! a response head and how its body is delimited (RFC 9112 §3, §4, §6).
//! Pure functions over buffers; the connection ([`super::conn`]) does
//! the I/O.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

use crate::forward::headers::connection_tokens;

/// The most header fields a backend's response head may have (hyper's
/// client had the same limit).
pub const MAX_HEADERS: usize = 100;

/// The largest response head read from a backend: a head that has not
/// ended by then is refused rather than buffered further.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a backend's response head was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("the response head is not valid HTTP/1.x: {0}")]
    Syntax(httparse::Error),
    #[error("the response head is longer than {MAX_HEAD_BYTES} bytes")]
    TooLong,
    #[error("the response head has an invalid header name or value")]
    InvalidHeader,
    #[error("the response has an invalid or ambiguous Content-Length")]
    InvalidContentLength,
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body: a response to HEAD, a 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Exact(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the backend closes the connection.
    UntilClose,
}

/// A backend's response head, parsed.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The reason phrase, when it is not the status's canonical one (it
    /// is passed on to the client, as hyper's client and server did).
    pub reason: Option<Bytes>,
    pub length: BodyLength,
    /// The connection may carry another request after this response's
    /// body.
    pub keep_alive: bool,
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (its head says so, or says nothing and there is none).
    None,
    /// `Content-Length` bytes.
    Exact(u64),
    /// Chunked: a body whose length is not known up front.
    Chunked,
}

/// Writes `req`'s head to `out` in origin form, and says how its body
/// follows.
///
/// The body's framing comes from the body itself, not from the head the
/// client sent: `exact` is the body's known length (`None` when it
/// streams with no length). A `Content-Length` the head carries is
/// replaced by that length, so what the backend is told always matches
/// what it gets (the upstream hop cannot be desynchronised by a length
/// header that disagrees with the body). `Transfer-Encoding` is
/// hop-by-hop and was removed before this.
pub fn encode_request<B>(
    req: &Request<B>,
    exact: Option<u64>,
    out: &mut Vec<u8>,
) -> RequestFraming {
    let framing = match exact {
        Some(0) if !req.headers().contains_key(header::CONTENT_LENGTH) => RequestFraming::None,
        Some(n) => RequestFraming::Exact(n),
        None => RequestFraming::Chunked,
    };
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Exact(n) => {
            out.extend_from_slice(b"content-length: ");
            let mut digits = itoa::Buffer::new();
            out.extend_from_slice(digits.format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Appends the line that starts a chunk of `len` bytes.
pub fn chunk_start(len: usize, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// The end of a chunked body: the last chunk and no trailers.
pub const CHUNKED_END: &[u8] = b"0\r\n\r\n";

/// Where a head's header fields lie in its bytes: kept by the connection
/// between responses, so that the head is parsed once and its bytes then
/// frozen and shared by the header values, without a table of offsets on
/// the stack to clear for every response (or `unsafe`).
pub type Fields = Vec<(Range<usize>, Range<usize>)>;

/// Reads the response head at the front of `buf`, answering a request
/// with `method`. Interim (1xx) responses before it are skipped, except
/// 101, which is returned for the caller to refuse. `Ok(None)`: the head
/// is not complete yet; nothing was consumed.
///
/// The head's bytes are taken off `buf`; header values point into them
/// (no copy). `headers` is a map to fill, cleared: the request's, reused
/// as hyper reuses its maps. `fields` is scratch space.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    headers: &mut HeaderMap,
    fields: &mut Fields,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        let Some(parsed) = parse_one(buf, fields)? else {
            return Ok(None);
        };
        let head = buf.split_to(parsed.len).freeze();
        let status = parsed.status;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        headers.clear();
        headers.reserve(fields.len());
        for (name, value) in fields.iter() {
            // Offsets into these very bytes; checked all the same.
            let (Some(name), Some(_)) = (head.get(name.clone()), head.get(value.clone())) else {
                return Err(HeadError::InvalidHeader);
            };
            let name = HeaderName::from_bytes(name).map_err(|_| HeadError::InvalidHeader)?;
            let value = HeaderValue::from_maybe_shared(head.slice(value.clone()))
                .map_err(|_| HeadError::InvalidHeader)?;
            headers.append(name, value);
        }
        let length = body_length(method, status, headers)?;
        let version = parsed.version;
        let keep_alive = length != BodyLength::UntilClose
            && keeps_alive(version, headers)
            // RFC 9112 §6.1: with both, the connection must close after.
            && !(headers.contains_key(header::TRANSFER_ENCODING)
                && headers.contains_key(header::CONTENT_LENGTH));
        let reason = head
            .get(parsed.reason.clone())
            .filter(|r| Some(*r) != status.canonical_reason().map(str::as_bytes))
            .map(|r| head.slice_ref(r));
        return Ok(Some(ResponseHead {
            status,
            version,
            headers: std::mem::take(headers),
            reason,
            length,
            keep_alive,
        }));
    }
}

/// A complete head's length, status and version; its fields' offsets
/// are in `fields`.
struct Parsed {
    len: usize,
    status: StatusCode,
    version: Version,
    reason: Range<usize>,
}

fn parse_one(buf: &[u8], fields: &mut Fields) -> Result<Option<Parsed>, HeadError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        Ok(_) => return Err(HeadError::TooLong),
        Err(e) => return Err(HeadError::Syntax(e)),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Syntax(httparse::Error::Status))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let offsets = |s: &[u8]| {
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        start..start.wrapping_add(s.len())
    };
    let reason = offsets(response.reason.unwrap_or_default().as_bytes());
    fields.clear();
    fields.extend(
        response
            .headers
            .iter()
            .map(|f| (offsets(f.name.as_bytes()), offsets(f.value))),
    );
    Ok(Some(Parsed {
        len,
        status,
        version,
        reason,
    }))
}

/// RFC 9112 §6.3, for a response to `method`.
fn body_length(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<BodyLength, HeadError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyLength::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Chunked only when it is the final coding; any other coding is
        // delimited by the close of the connection.
        return Ok(if last_coding_is_chunked(headers) {
            BodyLength::Chunked
        } else {
            BodyLength::UntilClose
        });
    }
    match content_length(headers)? {
        Some(n) => Ok(BodyLength::Exact(n)),
        None => Ok(BodyLength::UntilClose),
    }
}

fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    let last = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next());
    last.is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The one length every `Content-Length` field and list member states,
/// or an error when they disagree or one is not a number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| HeadError::InvalidContentLength)?;
        for member in text.split(',') {
            let member = member.trim();
            if member.is_empty() || !member.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::InvalidContentLength);
            }
            let n: u64 = member
                .parse()
                .map_err(|_| HeadError::InvalidContentLength)?;
            match length {
                Some(seen) if seen != n => return Err(HeadError::InvalidContentLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// Whether the backend keeps the connection open after this response
/// (RFC 9112 §9.3).
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token));
    match version {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    }
}

/// A head parsed from `raw`, and what is left after it.
#[cfg(test)]
fn parse_all(
    raw: &[u8],
    method: &Method,
) -> Result<Option<(ResponseHead, bytes::Bytes)>, HeadError> {
    let mut buf = BytesMut::from(raw);
    let mut headers = HeaderMap::new();
    Ok(parse_response(&mut buf, method, &mut headers, &mut Vec::new())?.map(|h| (h, buf.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ResponseHead {
        parse_all(raw.as_bytes(), &Method::GET)
            .expect("valid")
            .expect("complete")
            .0
    }

    #[test]
    fn a_response_head_is_parsed_and_taken_off_the_buffer() {
        let (h, rest) = parse_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nX-Elastic-Product: Elasticsearch\r\n\r\n{}next",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.length, BodyLength::Exact(2));
        assert!(h.keep_alive);
        assert_eq!(h.headers["x-elastic-product"], "Elasticsearch");
        assert_eq!(h.headers.len(), 3);
        assert_eq!(&rest[..], b"{}next");
    }

    #[test]
    fn only_a_reason_phrase_of_the_backends_own_is_kept() {
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").reason, None);
        assert_eq!(head("HTTP/1.1 404 Not Found\r\n\r\n").reason, None);
        assert_eq!(
            head("HTTP/1.1 200 Fine Thanks\r\n\r\n").reason.as_deref(),
            Some(&b"Fine Thanks"[..])
        );
        assert_eq!(
            head("HTTP/1.1 299 \r\n\r\n").reason.as_deref(),
            Some(&b""[..])
        );
    }

    #[test]
    fn a_partial_head_consumes_nothing() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-len";
        let mut buf = BytesMut::from(&raw[..]);
        let mut headers = HeaderMap::new();
        assert!(
            parse_response(&mut buf, &Method::GET, &mut headers, &mut Vec::new())
                .unwrap()
                .is_none()
        );
        assert_eq!(buf.len(), raw.len());
    }

    #[test]
    fn interim_responses_are_skipped_but_101_is_not() {
        let (h, _) = parse_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            &Method::PUT,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(!h.headers.contains_key("link"));
        let h = head("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n");
        assert_eq!(h.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(h.length, BodyLength::Empty);
    }

    #[test]
    fn the_body_length_follows_rfc_9112() {
        let cases: &[(&Method, &str, BodyLength, bool)] = &[
            (
                &Method::HEAD,
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
                BodyLength::Empty,
                true,
            ),
            (
                &Method::GET,
                "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
                BodyLength::Empty,
                true,
            ),
            (
                &Method::GET,
                "HTTP/1.1 304 Not Modified\r\n\r\n",
                BodyLength::Empty,
                true,
            ),
            (
                &Method::GET,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                BodyLength::Chunked,
                true,
            ),
            (
                &Method::GET,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
                BodyLength::Chunked,
                true,
            ),
            (
                &Method::GET,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                BodyLength::UntilClose,
                false,
            ),
            (
                &Method::GET,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                BodyLength::Chunked,
                false,
            ),
            (
                &Method::GET,
                "HTTP/1.1 200 OK\r\n\r\n",
                BodyLength::UntilClose,
                false,
            ),
            (
                &Method::GET,
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                BodyLength::Exact(5),
                true,
            ),
            (
                &Method::GET,
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\n",
                BodyLength::Exact(5),
                false,
            ),
            (
                &Method::GET,
                "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n",
                BodyLength::Exact(5),
                false,
            ),
            (
                &Method::GET,
                "HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 5\r\n\r\n",
                BodyLength::Exact(5),
                true,
            ),
        ];
        for (method, raw, length, keep_alive) in cases {
            let (h, _) = parse_all(raw.as_bytes(), method).unwrap().unwrap();
            assert_eq!((h.length, h.keep_alive), (*length, *keep_alive), "{raw}");
        }
    }

    #[test]
    fn bad_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                parse_all(raw.as_bytes(), &Method::GET).err(),
                Some(HeadError::InvalidContentLength),
                "{raw}"
            );
        }
        for raw in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(
                parse_all(raw.as_bytes(), &Method::GET).is_err(),
                "{raw:?} accepted"
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long.len() < MAX_HEAD_BYTES {
            long.extend_from_slice(format!("x: {}\r\n", "y".repeat(1000)).as_bytes());
        }
        assert_eq!(
            parse_all(&long, &Method::GET).err(),
            Some(HeadError::TooLong)
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"x: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse_all(&many, &Method::GET).is_err());
    }

    fn encoded(req: Request<()>, exact: Option<u64>) -> (String, RequestFraming) {
        let mut out = Vec::new();
        let framing = encode_request(&req, exact, &mut out);
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn a_request_head_states_the_length_of_the_body_it_has() {
        let req = |cl: Option<&str>| {
            let mut b = Request::post("/i/_doc?refresh=true").header("host", "h");
            if let Some(cl) = cl {
                b = b.header("content-length", cl);
            }
            b.body(()).unwrap()
        };
        assert_eq!(
            encoded(req(None), Some(0)),
            (
                "POST /i/_doc?refresh=true HTTP/1.1\r\nhost: h\r\n\r\n".into(),
                RequestFraming::None
            )
        );
        assert_eq!(
            encoded(req(Some("0")), Some(0)).0,
            "POST /i/_doc?refresh=true HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
        );
        // The body's own length wins over a header that disagrees.
        assert_eq!(
            encoded(req(Some("99")), Some(12)),
            (
                "POST /i/_doc?refresh=true HTTP/1.1\r\nhost: h\r\ncontent-length: 12\r\n\r\n"
                    .into(),
                RequestFraming::Exact(12)
            )
        );
        assert_eq!(
            encoded(req(Some("5")), None),
            (
                "POST /i/_doc?refresh=true HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                RequestFraming::Chunked
            )
        );
        let mut start = Vec::new();
        chunk_start(4096, &mut start);
        assert_eq!(start, b"1000\r\n");
    }
}

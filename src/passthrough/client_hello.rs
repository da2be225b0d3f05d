//! Stage: remote-cluster listener, after the PROXY header and before
//! routing. A pure reader of the TLS ClientHello's server name (SNI), in the
//! manner of linkerd2-proxy's `detect_sni`: the bytes received so far in,
//! a decision out.
//!
//! Guarantees:
//!
//! - Pure, no allocation, no panics, no `unsafe`: every read is a checked
//!   slice access, every length is checked against what encloses it.
//! - Bounded: it never asks for more than one TLS record
//!   ([`MAX_CLIENT_HELLO_BYTES`], 5 + 2^14 bytes); a ClientHello split
//!   across several handshake records is refused as
//!   [`ClientHelloError::Fragmented`] (no mainstream TLS stack sends one).
//! - Monotone: for a strict prefix of a well-formed ClientHello the answer
//!   is always [`Parsed::Incomplete`], with a `total` that never exceeds
//!   the record's length; a refusal is final.
//! - The server name returned is a slice of the input (never copied or
//!   normalised): exactly the bytes the backend will see when the
//!   ClientHello is replayed.

/// TLS record header: type, legacy version, length.
pub const RECORD_HEADER_LEN: usize = 5;
/// Largest TLSPlaintext fragment (RFC 8446 §5.1).
pub const MAX_RECORD_PAYLOAD: usize = 1 << 14;
/// The most bytes [`parse`] ever needs: one full record.
pub const MAX_CLIENT_HELLO_BYTES: usize = RECORD_HEADER_LEN + MAX_RECORD_PAYLOAD;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HEADER_LEN: usize = 4;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// A DNS name is at most 253 bytes (255 on the wire); anything longer names
/// no deployment.
const MAX_HOST_NAME_LEN: usize = 255;

/// What the bytes received so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete ClientHello; `sni` is its `host_name`, if it sent one.
    Complete { sni: Option<&'a str> },
    /// Not enough bytes yet: at least `total` bytes in all are needed.
    Incomplete { total: usize },
}

/// Why the bytes are not a ClientHello this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    #[error("not a TLS handshake record")]
    NotHandshake,
    #[error("unsupported TLS record version")]
    RecordVersion,
    #[error("TLS record longer than 2^14 bytes")]
    RecordTooLong,
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("the ClientHello spans several TLS records")]
    Fragmented,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

impl ClientHelloError {
    /// A short, fixed label for logs.
    pub fn kind(self) -> &'static str {
        match self {
            Self::NotHandshake => "not_tls",
            Self::RecordVersion => "record_version",
            Self::RecordTooLong => "record_too_long",
            Self::NotClientHello => "not_client_hello",
            Self::Fragmented => "fragmented",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// Reads the server name out of the ClientHello at the start of `input`.
///
/// # Errors
///
/// The bytes are not (or not only within one record) a TLS ClientHello.
pub fn parse(input: &[u8]) -> Result<Parsed<'_>, ClientHelloError> {
    // Refuse as early as the first bytes allow, so a non-TLS client is
    // told off without waiting for the timeout.
    if input.first().is_some_and(|&t| t != CONTENT_HANDSHAKE) {
        return Err(ClientHelloError::NotHandshake);
    }
    if input.get(1).is_some_and(|&major| major != 3) {
        return Err(ClientHelloError::RecordVersion);
    }
    let Some(header) = input.get(..RECORD_HEADER_LEN) else {
        return Ok(Parsed::Incomplete {
            total: RECORD_HEADER_LEN,
        });
    };
    let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if record_len > MAX_RECORD_PAYLOAD {
        return Err(ClientHelloError::RecordTooLong);
    }
    if record_len < HANDSHAKE_HEADER_LEN {
        return Err(ClientHelloError::Malformed("record too short"));
    }
    let total = RECORD_HEADER_LEN + record_len;
    let payload = input.get(RECORD_HEADER_LEN..).unwrap_or_default();
    if payload
        .first()
        .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
    {
        return Err(ClientHelloError::NotClientHello);
    }
    if let Some(len) = payload.get(1..HANDSHAKE_HEADER_LEN) {
        let body_len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
        if HANDSHAKE_HEADER_LEN + body_len > record_len {
            return Err(ClientHelloError::Fragmented);
        }
    }
    let Some(record) = payload.get(..record_len) else {
        return Ok(Parsed::Incomplete { total });
    };
    let mut handshake = Reader(record);
    handshake.u8("handshake type")?;
    let body_len = handshake.u24("handshake length")?;
    // Anything after the ClientHello in the same record is not ours to read.
    let body = handshake.take(body_len, "handshake length")?;
    client_hello_sni(body).map(|sni| Parsed::Complete { sni })
}

/// The `host_name` in a ClientHello body (after the handshake header).
fn client_hello_sni(body: &[u8]) -> Result<Option<&str>, ClientHelloError> {
    let mut r = Reader(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    let session_id = r.u8("session id length")?;
    if session_id > 32 {
        return Err(ClientHelloError::Malformed(
            "session id longer than 32 bytes",
        ));
    }
    r.take(usize::from(session_id), "session id")?;
    let suites = r.u16("cipher suites length")?;
    if suites == 0 || suites % 2 != 0 {
        return Err(ClientHelloError::Malformed("cipher suites length"));
    }
    r.take(usize::from(suites), "cipher suites")?;
    let methods = r.u8("compression methods length")?;
    if methods == 0 {
        return Err(ClientHelloError::Malformed("no compression method"));
    }
    r.take(usize::from(methods), "compression methods")?;
    if r.0.is_empty() {
        return Ok(None); // no extensions at all (TLS 1.0 style)
    }
    let ext_len = r.u16("extensions length")?;
    let mut exts = Reader(r.take(usize::from(ext_len), "extensions")?);
    if !r.0.is_empty() {
        return Err(ClientHelloError::Malformed("bytes after the extensions"));
    }
    let mut sni = None;
    let mut seen = false;
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let len = exts.u16("extension length")?;
        let data = exts.take(usize::from(len), "extension data")?;
        if kind == EXT_SERVER_NAME {
            if seen {
                return Err(ClientHelloError::Malformed("server_name sent twice"));
            }
            seen = true;
            sni = server_name(data)?;
        }
    }
    Ok(sni)
}

/// The `host_name` entry of a `server_name` extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Result<Option<&str>, ClientHelloError> {
    let mut r = Reader(data);
    let list_len = r.u16("server name list length")?;
    let mut list = Reader(r.take(usize::from(list_len), "server name list")?);
    if !r.0.is_empty() || list.0.is_empty() {
        return Err(ClientHelloError::Malformed("server name list length"));
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8("server name type")?;
        let len = list.u16("server name length")?;
        let name = list.take(usize::from(len), "server name")?;
        if kind != NAME_TYPE_HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err(ClientHelloError::Malformed("two host names"));
        }
        host = Some(host_name(name)?);
    }
    Ok(host)
}

/// A host name is non-empty printable ASCII (RFC 6066: "ASCII encoding,
/// without a trailing dot" in spirit; routing checks the rest).
fn host_name(name: &[u8]) -> Result<&str, ClientHelloError> {
    if name.is_empty() || name.len() > MAX_HOST_NAME_LEN || !name.iter().all(u8::is_ascii_graphic) {
        return Err(ClientHelloError::Malformed(
            "host name is not printable ASCII",
        ));
    }
    std::str::from_utf8(name).map_err(|_| ClientHelloError::Malformed("host name"))
}

/// A cursor over bytes whose reads fail (as malformed) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if n > self.0.len() {
            return Err(ClientHelloError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ClientHelloError> {
        match self.take(1, what)? {
            &[b] => Ok(b),
            _ => Err(ClientHelloError::Malformed(what)),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ClientHelloError> {
        match self.take(2, what)? {
            &[a, b] => Ok(u16::from_be_bytes([a, b])),
            _ => Err(ClientHelloError::Malformed(what)),
        }
    }

    fn u24(&mut self, what: &'static str) -> Result<usize, ClientHelloError> {
        match self.take(3, what)? {
            &[a, b, c] => Ok(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)),
            _ => Err(ClientHelloError::Malformed(what)),
        }
    }
}

#[cfg(test)]
#[path = "client_hello_tests.rs"]
mod tests;

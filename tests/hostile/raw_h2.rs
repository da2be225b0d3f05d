//! HTTP/2 by hand: frames, the simplest HPACK there is, and just enough
//! decoding to read a response's `:status`.

use super::*;

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const CONTINUATION: u8 = 0x9;
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const CANCEL: u32 = 0x8;
pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
pub(crate) const REFUSED_STREAM: u32 = 0x7;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug, Clone)]
pub(crate) struct H2Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: Vec<u8>,
}

impl H2Frame {
    /// GOAWAY's last-stream-id.
    pub(crate) fn last_stream_id(&self) -> u32 {
        let b = &self.payload[..4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
    }

    pub(crate) fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        let b = &self.payload[at..at + 4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The `:status` of a response HEADERS frame, when it is the first
    /// field and encoded the way h2 encodes it: a static table entry (200,
    /// 204, 206, 304, 400, 404, 500), or a literal with the `:status` name
    /// and a three-digit value, raw or Huffman-coded.
    pub(crate) fn status(&self) -> Option<u16> {
        let value = match self.payload.as_slice() {
            [0x88, ..] => return Some(200),
            [0x89, ..] => return Some(204),
            [0x8a, ..] => return Some(206),
            [0x8b, ..] => return Some(304),
            [0x8c, ..] => return Some(400),
            [0x8d, ..] => return Some(404),
            [0x8e, ..] => return Some(500),
            // Literal with incremental indexing (0x48) or without (0x08),
            // name index 8; then the value's length, top bit = Huffman.
            [0x48 | 0x08, len, rest @ ..] => {
                let n = usize::from(len & 0x7f);
                let bytes = rest.get(..n)?;
                if len & 0x80 == 0 {
                    String::from_utf8(bytes.to_vec()).ok()?
                } else {
                    huffman_digits(bytes)?
                }
            }
            _ => return None,
        };
        value.parse().ok()
    }
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B:
/// '0'-'2' are the 5-bit codes 0-2, '3'-'9' the 6-bit codes 25-31),
/// with at most 7 bits of all-ones padding.
pub(crate) fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let mut bits = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1 == 1))
        .peekable();
    let mut out = String::new();
    loop {
        let rest: Vec<bool> = bits.clone().collect();
        if rest.len() < 8 && rest.iter().all(|b| *b) {
            return Some(out);
        }
        let code5 = rest
            .iter()
            .take(5)
            .fold(0u8, |acc, b| acc << 1 | u8::from(*b));
        let code6 = rest
            .iter()
            .take(6)
            .fold(0u8, |acc, b| acc << 1 | u8::from(*b));
        let (digit, used) = match (code5, code6) {
            (0..=2, _) if rest.len() >= 5 => (code5, 5),
            (_, 25..=31) if rest.len() >= 6 => (code6 - 22, 6),
            _ => return None,
        };
        out.push(char::from(b'0' + digit));
        for _ in 0..used {
            bits.next();
        }
    }
}

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame fits");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix; `first` holds the pattern bits.
pub(crate) fn hpack_int(out: &mut Vec<u8>, n: u32, first: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of "literal without indexing, new name" fields, no
/// Huffman: the simplest HPACK there is.
pub(crate) fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 7, 0, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 7, 0, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

pub(crate) fn get_block(authority: &str, path: &str) -> Vec<u8> {
    request_block("GET", authority, path, &[])
}

/// A request's header block: the pseudo-header fields (`https`), then
/// `fields`.
pub(crate) fn request_block(
    method: &str,
    authority: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> Vec<u8> {
    let pseudo = [
        (":method", method),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
    ];
    hpack(&[&pseudo[..], fields].concat())
}

/// A HEADERS frame that carries all of `block` and ends the stream.
pub(crate) fn whole_request(stream: u32, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, END_STREAM | END_HEADERS, stream, block)
}

/// A raw HTTP/2 connection over TLS (ALPN h2).
pub(crate) struct H2 {
    pub(crate) io: TlsStream<TcpStream>,
    pub(crate) buf: Vec<u8>,
    /// The proxy's SETTINGS, as (identifier, value).
    pub(crate) settings: Vec<(u16, u32)>,
}

impl H2 {
    /// Connects, sends the preface and empty SETTINGS, reads the proxy's
    /// SETTINGS and acknowledges them.
    pub(crate) async fn connect(w: &World, preamble: &[u8]) -> Self {
        let io = tls_connect(w, preamble, &TlsOpts::h2())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut h2 = Self {
            io,
            buf: Vec::new(),
            settings: Vec::new(),
        };
        h2.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
            .await;
        loop {
            let f = h2
                .next(WAIT)
                .await
                .unwrap_or_else(|e| panic!("h2 handshake: {e}"))
                .expect("closed during the h2 handshake");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                h2.settings = f
                    .payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
                break;
            }
        }
        h2.send(&frame(SETTINGS, ACK, 0, &[])).await;
        h2
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        // The proxy may have closed already; the reads will tell.
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    /// The next frame; `Ok(None)` at EOF, `Err` if none within `limit`.
    pub(crate) async fn next(&mut self, limit: Duration) -> Result<Option<H2Frame>, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = H2Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Ok(Some(f));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return Err(format!("no frame within {limit:?}")),
                Ok(Ok(0) | Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame `pick` accepts, skipping the others; fails on a
    /// GOAWAY it does not accept, at EOF, or when nothing comes within
    /// [`WAIT`].
    pub(crate) async fn next_where(&mut self, pick: impl Fn(&H2Frame) -> bool) -> H2Frame {
        loop {
            let f = self.next(WAIT).await.expect("a frame").expect("open");
            if pick(&f) {
                return f;
            }
            assert_ne!(f.kind, GOAWAY, "{f:?}");
        }
    }

    /// Frames until EOF or until nothing comes for `quiet`.
    pub(crate) async fn drain(&mut self, quiet: Duration) -> (Vec<H2Frame>, bool) {
        let mut frames = Vec::new();
        loop {
            match self.next(quiet).await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, true),
                Err(_) => return (frames, false),
            }
        }
    }
}

//! The chunked transfer coding (RFC 9112 §7.1) of backend responses, read
//! incrementally by the proxy's HTTP/1.1 client.
//!
//! The backend connection is pooled and reused for other clients' requests,
//! so a framing mistake here hands one client's bytes to the next. Hence:
//!
//! - Strict framing: every line ends in CRLF; a bare LF, a CR without its
//!   LF, or anything but CRLF after chunk data is an error, never guessed
//!   at. The decoder stops exactly after the trailer section's empty line;
//!   the bytes behind it are left in the buffer untouched.
//! - Bounded: framing bytes are consumed as they are read (nothing but a
//!   few counters is kept), and every unbounded part of the grammar has a
//!   limit, checked byte by byte so an unterminated line fails before its
//!   end arrives: [`MAX_SIZE_LINE`] per chunk-size line,
//!   [`MAX_EXTENSION_BYTES`] of extensions per body, [`MAX_TRAILER_BYTES`]
//!   of trailer section.
//! - Streaming and zero-copy: chunk data is handed out as soon as it is
//!   buffered, split off the read buffer.
//! - Deterministic: the outcome depends only on the bytes, not on how they
//!   were split across reads. No panics, no `unsafe`.
//!
//! Chunk extensions and trailer fields are read past and discarded: the
//! proxy forwards neither.

use bytes::{Buf, Bytes, BytesMut};

/// The longest chunk-size line accepted: size digits (leading zeros
/// included), whitespace and extensions, not counting the CRLF.
pub const MAX_SIZE_LINE: usize = 4096;
/// The most chunk-extension bytes (everything on a size line after the
/// digits) accepted in one body, so a backend cannot keep us reading
/// extensions instead of data.
pub const MAX_EXTENSION_BYTES: usize = 64 * 1024;
/// The longest trailer section accepted, its CRLFs and final empty line
/// included.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// One step of a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes, split off the front of the read buffer (no copy); never
    /// empty.
    Data(Bytes),
    /// The last chunk and the trailer section (discarded) have been read;
    /// the bytes after them in the buffer belong to what follows on the
    /// connection.
    End,
}

/// Why the bytes are not a chunked body this decoder accepts. Each is
/// final: the connection's framing is lost and it must not be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// The size line does not start with a hex digit, or has something
    /// other than whitespace, `;` or CRLF after its digits.
    #[error("invalid chunk size: expected hex digits, then optional whitespace and extensions")]
    InvalidSize,
    /// More than 16 significant hex digits: the size does not fit in u64.
    #[error("chunk size overflows 64 bits")]
    SizeOverflow,
    /// The size line (size and extensions) is longer than [`MAX_SIZE_LINE`].
    #[error("chunk-size line longer than {MAX_SIZE_LINE} bytes")]
    SizeLineTooLong,
    /// The body's extensions add up to more than [`MAX_EXTENSION_BYTES`].
    #[error("chunk extensions exceed {MAX_EXTENSION_BYTES} bytes in one body")]
    ExtensionsTooLong,
    /// Chunk data is followed by something other than CRLF: the chunk is
    /// longer than its size said.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    /// A bare LF, or a CR not followed by LF, where a line must end in CRLF.
    #[error("line not ended by CRLF (bare CR or LF)")]
    InvalidLineEnding,
    /// The trailer section is longer than [`MAX_TRAILER_BYTES`].
    #[error("trailer section longer than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLong,
}

/// An incremental decoder of one chunked body: feed it the bytes read from
/// the connection with [`Chunked::decode`].
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Extension bytes seen so far in this body (see [`MAX_EXTENSION_BYTES`]).
    extension_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between chunks' data: reading framing bytes one at a time.
    Framing(Framing),
    /// Inside a chunk's data: this many bytes of it still to come.
    Data { remaining: u64 },
    /// `End` returned.
    Done,
    /// An error returned; it is returned again.
    Failed(ChunkedError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Size(SizeLine),
    /// Chunk data read; its CR must come next.
    DataCr,
    /// Chunk data and CR read; its LF must come next.
    DataLf,
    /// After the last chunk: `used` bytes of the trailer section read.
    Trailer {
        used: usize,
        at: TrailerAt,
    },
}

/// A chunk-size line read so far (the line's bytes themselves are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SizeLine {
    value: u64,
    /// Bytes of the line before its CR.
    len: usize,
    at: SizeAt,
}

/// Where in a chunk-size line the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum SizeAt {
    #[default]
    Digits,
    /// Whitespace after the digits, before any `;`.
    Space,
    /// After the first `;`: extension content, skipped up to the CR.
    Extension,
    /// CR read; its LF must come next.
    Lf,
}

/// Where in the trailer section the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailerAt {
    LineStart,
    /// Inside a field line.
    Line,
    /// A field line's CR read.
    LineLf,
    /// The final empty line's CR read.
    EndLf,
}

impl Chunked {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        Self {
            state: State::Framing(Framing::Size(SizeLine::default())),
            extension_bytes: 0,
        }
    }

    /// Decodes from the front of `buf`, removing the bytes it has used
    /// (framing bytes are dropped, data bytes are returned with
    /// `split_to(..).freeze()`).
    ///
    /// `Ok(None)`: `buf` holds no further complete step; read more bytes and
    /// call again (everything usable has been consumed, so `buf` can be
    /// reused/reserved; in fact it is then empty, as a partial line is
    /// consumed as it is read). After `End` has been returned, further calls
    /// return `Ok(Some(Decoded::End))` and consume nothing. After an error,
    /// every further call returns an error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ChunkedError> {
        match self.state {
            State::Failed(error) => return Err(error),
            State::Done => return Ok(Some(Decoded::End)),
            State::Framing(_) | State::Data { .. } => {}
        }
        match self.skip_framing(buf) {
            Ok(used) => buf.advance(used),
            Err(error) => {
                self.state = State::Failed(error);
                return Err(error);
            }
        }
        match self.state {
            State::Done => Ok(Some(Decoded::End)),
            State::Data { remaining } if !buf.is_empty() => {
                let (take, left) = take_data(remaining, buf.len());
                self.state = match left {
                    0 => State::Framing(Framing::DataCr),
                    remaining => State::Data { remaining },
                };
                Ok(Some(Decoded::Data(buf.split_to(take).freeze())))
            }
            _ => Ok(None),
        }
    }

    /// True once `End` was returned.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Steps through framing bytes at the front of `bytes` until chunk data
    /// or the end of the body is reached; returns how many were used.
    fn skip_framing(&mut self, bytes: &[u8]) -> Result<usize, ChunkedError> {
        for (used, &byte) in bytes.iter().enumerate() {
            let State::Framing(framing) = self.state else {
                return Ok(used);
            };
            self.state = step(framing, byte, &mut self.extension_bytes)?;
        }
        Ok(bytes.len())
    }
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

/// How many of `buffered` bytes belong to a chunk with `remaining` bytes to
/// come, and how many of the chunk are left after them.
fn take_data(remaining: u64, buffered: usize) -> (usize, u64) {
    // A `remaining` too large for usize is larger than any buffer.
    let take = usize::try_from(remaining).map_or(buffered, |r| r.min(buffered));
    // `take <= remaining`, so this neither wraps nor saturates.
    (take, remaining.saturating_sub(take as u64))
}

/// The state after one framing byte.
fn step(framing: Framing, byte: u8, extension_bytes: &mut usize) -> Result<State, ChunkedError> {
    match (framing, byte) {
        (Framing::Size(line), _) => size_byte(line, byte, extension_bytes),
        (Framing::DataCr, b'\r') => Ok(State::Framing(Framing::DataLf)),
        (Framing::DataCr, b'\n') => Err(ChunkedError::InvalidLineEnding),
        (Framing::DataCr, _) => Err(ChunkedError::MissingCrlf),
        (Framing::DataLf, b'\n') => Ok(State::Framing(Framing::Size(SizeLine::default()))),
        (Framing::DataLf, _) => Err(ChunkedError::InvalidLineEnding),
        (Framing::Trailer { used, at }, _) => trailer_byte(used, at, byte),
    }
}

/// One byte of a chunk-size line: `1*HEXDIG *(SP / HTAB) [";" ext...] CRLF`,
/// extension content being anything but CR and LF.
fn size_byte(
    mut line: SizeLine,
    byte: u8,
    extension_bytes: &mut usize,
) -> Result<State, ChunkedError> {
    match (line.at, byte) {
        (SizeAt::Lf, b'\n') => return Ok(line_read(line.value)),
        (SizeAt::Lf, _) | (_, b'\n') => return Err(ChunkedError::InvalidLineEnding),
        // No digits at all.
        (SizeAt::Digits, b'\r' | b' ' | b'\t' | b';') if line.len == 0 => {
            return Err(ChunkedError::InvalidSize);
        }
        (_, b'\r') => {
            line.at = SizeAt::Lf;
            return Ok(State::Framing(Framing::Size(line)));
        }
        _ => {}
    }
    line.len += 1;
    if line.len > MAX_SIZE_LINE {
        return Err(ChunkedError::SizeLineTooLong);
    }
    line.at = match (line.at, byte) {
        (SizeAt::Digits, _) if byte.is_ascii_hexdigit() => {
            line.value = push_hex_digit(line.value, byte).ok_or(ChunkedError::SizeOverflow)?;
            SizeAt::Digits
        }
        (SizeAt::Digits | SizeAt::Space, b' ' | b'\t') => SizeAt::Space,
        (SizeAt::Digits | SizeAt::Space, b';') | (SizeAt::Extension, _) => SizeAt::Extension,
        _ => return Err(ChunkedError::InvalidSize),
    };
    if line.at != SizeAt::Digits {
        *extension_bytes += 1;
        if *extension_bytes > MAX_EXTENSION_BYTES {
            return Err(ChunkedError::ExtensionsTooLong);
        }
    }
    Ok(State::Framing(Framing::Size(line)))
}

/// `value` with one more hex digit, or `None` when it no longer fits (more
/// than 16 significant digits; leading zeros are free).
fn push_hex_digit(value: u64, byte: u8) -> Option<u64> {
    let digit = char::from(byte).to_digit(16)?;
    value.checked_mul(16)?.checked_add(u64::from(digit))
}

/// After a complete size line: the chunk's data, or the trailer section
/// after the last chunk.
fn line_read(size: u64) -> State {
    match size {
        0 => State::Framing(Framing::Trailer {
            used: 0,
            at: TrailerAt::LineStart,
        }),
        remaining => State::Data { remaining },
    }
}

/// One byte of the trailer section: field lines ended by CRLF (their
/// content not checked beyond holding no CR or LF), then an empty line.
fn trailer_byte(used: usize, at: TrailerAt, byte: u8) -> Result<State, ChunkedError> {
    let used = used + 1;
    if used > MAX_TRAILER_BYTES {
        return Err(ChunkedError::TrailersTooLong);
    }
    let at = match (at, byte) {
        (TrailerAt::LineStart, b'\r') => TrailerAt::EndLf,
        (TrailerAt::Line, b'\r') => TrailerAt::LineLf,
        (TrailerAt::LineLf, b'\n') => TrailerAt::LineStart,
        (TrailerAt::EndLf, b'\n') => return Ok(State::Done),
        (TrailerAt::LineLf | TrailerAt::EndLf, _) | (_, b'\n') => {
            return Err(ChunkedError::InvalidLineEnding);
        }
        (TrailerAt::LineStart | TrailerAt::Line, _) => TrailerAt::Line,
    };
    Ok(State::Framing(Framing::Trailer { used, at }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// How a run of `decode` calls ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        End,
        NeedMore,
        Error(ChunkedError),
    }

    /// A decode run: the data returned, how it ended, and what was left in
    /// the buffer after the end (empty otherwise: after an error the
    /// buffer's contents depend on where the reads were split).
    #[derive(Debug, PartialEq, Eq)]
    struct Run {
        data: Vec<u8>,
        outcome: Outcome,
        rest: Vec<u8>,
    }

    /// Calls `decode` until it needs more, ends or fails.
    fn drain(decoder: &mut Chunked, buf: &mut BytesMut, data: &mut Vec<u8>) -> Option<Outcome> {
        loop {
            match decoder.decode(buf) {
                Ok(Some(Decoded::Data(bytes))) => {
                    assert!(!bytes.is_empty(), "empty Data");
                    data.extend_from_slice(&bytes);
                }
                Ok(Some(Decoded::End)) => return Some(Outcome::End),
                Ok(None) => return None,
                Err(error) => return Some(Outcome::Error(error)),
            }
        }
    }

    /// Feeds `pieces` one after the other, as reads from a socket would.
    /// After the end or an error, the remaining pieces are still appended
    /// (the caller would stop reading; `rest` shows they were not touched).
    fn run_feeds<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Run {
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut outcome = None;
        for piece in pieces {
            buf.extend_from_slice(piece);
            if outcome.is_none() {
                outcome = drain(&mut decoder, &mut buf, &mut data);
                if outcome.is_none() {
                    assert!(buf.is_empty(), "Ok(None) left {} bytes", buf.len());
                }
            }
        }
        let outcome = outcome.unwrap_or(Outcome::NeedMore);
        let rest = match outcome {
            Outcome::End => buf.to_vec(),
            Outcome::NeedMore | Outcome::Error(_) => Vec::new(),
        };
        Run {
            data,
            outcome,
            rest,
        }
    }

    fn run(input: &[u8]) -> Run {
        run_feeds([input])
    }

    fn run_bytewise(input: &[u8]) -> Run {
        run_feeds(input.chunks(1))
    }

    fn ended(data: &[u8], rest: &[u8]) -> Run {
        Run {
            data: data.to_vec(),
            outcome: Outcome::End,
            rest: rest.to_vec(),
        }
    }

    fn outcome(input: &[u8]) -> Outcome {
        let whole = run(input);
        assert_eq!(
            run_bytewise(input).outcome,
            whole.outcome,
            "split changed the outcome"
        );
        whole.outcome
    }

    fn failed(error: ChunkedError) -> Outcome {
        Outcome::Error(error)
    }

    #[test]
    fn simple_body() {
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n0\r\n\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Data(Bytes::from_static(b"hello"))))
        );
        assert!(!decoder.is_done());
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::End)));
        assert!(decoder.is_done());
        assert!(buf.is_empty());
        // End is sticky and consumes nothing.
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::End)));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn multiple_chunks() {
        let input = b"3\r\nabc\r\n1\r\nd\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        assert_eq!(run(input), ended(b"abcd0123456789abcdef", b""));
    }

    #[test]
    fn hex_digits_in_either_case() {
        let body = [b'x'; 0x1f];
        for size in ["1f", "1F", "001F", "01f"] {
            let mut input = format!("{size}\r\n").into_bytes();
            input.extend_from_slice(&body);
            input.extend_from_slice(b"\r\n0\r\n\r\n");
            assert_eq!(run(&input), ended(&body, b""), "{size}");
        }
        let mut input = b"aBcD\r\n".to_vec();
        input.resize(input.len() + 0xabcd, b'y');
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(run(&input).data.len(), 0xabcd);
    }

    #[test]
    fn largest_size_and_leading_zeros() {
        // 16 significant digits fit; leading zeros do not count.
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::from(&b"0000FFFFFFFFFFFFFFFF\r\nab"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Data(Bytes::from_static(b"ab"))))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(
            decoder.state,
            State::Data {
                remaining: u64::MAX - 2
            }
        );
        assert_eq!(run(b"00000000000000000000000000\r\n\r\n"), ended(b"", b""));
    }

    #[test]
    fn extensions_are_skipped() {
        let input = b"5;name=value\r\nhello\r\n\
            6 ;a=\"quoted; \\\"x\\\" =\";flag\t; b = token \r\n world\r\n\
            1\t \t\r\n!\r\n\
            0;last=\"\"\r\n\r\n";
        assert_eq!(run(input), ended(b"hello world!", b""));
        assert_eq!(run_bytewise(input), ended(b"hello world!", b""));
    }

    #[test]
    fn trailers_are_skipped() {
        let input = b"2\r\nok\r\n0\r\nX-Checksum: abc\r\nX-Other:\t v \r\n\r\nnext";
        assert_eq!(run(input), ended(b"ok", b"next"));
    }

    #[test]
    fn byte_by_byte_gives_the_same_data() {
        let input =
            b"4;x=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\nGET";
        let whole = run(input);
        assert_eq!(whole, ended(b"Wikipedia in\r\n\r\nchunks.", b"GET"));
        assert_eq!(run_bytewise(input), whole);
    }

    #[test]
    fn data_streams_before_the_chunk_is_complete() {
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::from(&b"b\r\nhel"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Data(Bytes::from_static(b"hel"))))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"lo world\r\n0\r");
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Data(Bytes::from_static(b"lo world"))))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        // The partial last-chunk line was consumed, not kept.
        assert!(buf.is_empty());
        buf.extend_from_slice(b"\n\r\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::End)));
    }

    #[test]
    fn bytes_after_end_stay_in_the_buffer() {
        let input = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            run(input),
            ended(b"abc", b"HTTP/1.1 204 No Content\r\n\r\n")
        );
        assert_eq!(
            run_bytewise(input),
            ended(b"abc", b"HTTP/1.1 204 No Content\r\n\r\n")
        );
    }

    #[test]
    fn invalid_sizes() {
        for input in [
            &b"g\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b" 5\r\n",
            b"+5\r\n",
            b"0x5\r\n",
            b"5 x\r\n",
            b"5 5\r\n",
            b"5=\r\n",
            b"-1\r\n",
        ] {
            assert_eq!(
                outcome(input),
                failed(ChunkedError::InvalidSize),
                "{input:?}"
            );
        }
        // Whitespace after the size, with or without extensions, is fine.
        assert_eq!(outcome(b"1 \r\nx\r\n0\t\r\n\r\n"), Outcome::End);
    }

    #[test]
    fn size_overflow() {
        // 17 significant digits.
        assert_eq!(
            outcome(b"10000000000000000\r\n"),
            failed(ChunkedError::SizeOverflow)
        );
        assert_eq!(
            outcome(b"FFFFFFFFFFFFFFFFF"),
            failed(ChunkedError::SizeOverflow)
        );
        assert_eq!(
            outcome(b"0000000000000000FFFFFFFFFFFFFFFF0"),
            failed(ChunkedError::SizeOverflow)
        );
    }

    #[test]
    fn missing_crlf_after_data() {
        assert_eq!(
            outcome(b"5\r\nhelloX\r\n"),
            failed(ChunkedError::MissingCrlf)
        );
        // Data longer than its size: the extra byte is where CRLF must be.
        assert_eq!(
            outcome(b"4\r\nhello\r\n0\r\n\r\n"),
            failed(ChunkedError::MissingCrlf)
        );
        // The data before the error was handed out; nothing after it.
        assert_eq!(run(b"4\r\nhello\r\n").data, b"hell");
        assert_eq!(
            outcome(b"5\r\nhello\rX"),
            failed(ChunkedError::InvalidLineEnding)
        );
    }

    #[test]
    fn bare_lf_or_cr_is_an_error() {
        for input in [
            // In the size line.
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;a=b\nhello\r\n",
            b"5 \n",
            b"\n",
            b"5\r\r\n",
            b"5;a\rb\r\n",
            // After data.
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\r\n",
            // In the last-chunk line and the trailers.
            b"0\n\r\n",
            b"0\r\n\n",
            b"0\r\nX-A: 1\n\r\n",
            b"0\r\nX-A: 1\r\n\n",
            b"0\r\nX-A: 1\rx\r\n\r\n",
            b"0\r\n\rx",
        ] {
            assert_eq!(
                outcome(input),
                failed(ChunkedError::InvalidLineEnding),
                "{input:?}"
            );
        }
    }

    #[test]
    fn size_line_limit() {
        let line = |len: usize| {
            let mut line = b"1;".to_vec();
            line.resize(len, b'e');
            line
        };
        let mut fits = line(MAX_SIZE_LINE);
        fits.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(run(&fits), ended(b"x", b""));

        // Detected before the line's CRLF arrives, with the line consumed.
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::from(&line(MAX_SIZE_LINE)[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
        buf.extend_from_slice(b"e");
        assert_eq!(decoder.decode(&mut buf), Err(ChunkedError::SizeLineTooLong));

        assert_eq!(outcome(&line(5000)), failed(ChunkedError::SizeLineTooLong));
        // Leading zeros count too.
        assert_eq!(
            outcome(&vec![b'0'; MAX_SIZE_LINE + 1]),
            failed(ChunkedError::SizeLineTooLong)
        );
    }

    #[test]
    fn cumulative_extension_limit() {
        // Each line: "1;" and 3999 more extension bytes = 4000 extension bytes.
        let mut chunk = b"1;".to_vec();
        chunk.resize(2 + 3999, b'e');
        chunk.extend_from_slice(b"\r\nx\r\n");
        let fit = MAX_EXTENSION_BYTES / 4000;
        let mut input = chunk.repeat(fit);
        input.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(run(&input).outcome, Outcome::End);

        let input = chunk.repeat(fit + 1);
        let whole = run(&input);
        assert_eq!(whole.outcome, failed(ChunkedError::ExtensionsTooLong));
        assert_eq!(whole.data, vec![b'x'; fit]);
        assert_eq!(run_bytewise(&input), whole);
    }

    #[test]
    fn trailer_limit() {
        let trailers = |len: usize| {
            // Field lines of 100 bytes with their CRLF, then a last one to
            // make up `len` with the final empty line.
            let mut section = Vec::new();
            while section.len() + 100 + 2 <= len {
                section.extend_from_slice(&[b'a'; 98]);
                section.extend_from_slice(b"\r\n");
            }
            let last = len - section.len() - 2;
            if last > 0 {
                section.resize(section.len() + last - 2, b'b');
                section.extend_from_slice(b"\r\n");
            }
            section.extend_from_slice(b"\r\n");
            assert_eq!(section.len(), len);
            let mut input = b"0\r\n".to_vec();
            input.extend_from_slice(&section);
            input
        };
        assert_eq!(run(&trailers(MAX_TRAILER_BYTES)).outcome, Outcome::End);
        assert_eq!(
            outcome(&trailers(MAX_TRAILER_BYTES + 1)),
            failed(ChunkedError::TrailersTooLong)
        );
        // An endless trailer line fails once past the limit, before its CRLF.
        let mut endless = b"0\r\nX: ".to_vec();
        endless.resize(3 + MAX_TRAILER_BYTES + 1, b'v');
        assert_eq!(outcome(&endless), failed(ChunkedError::TrailersTooLong));
    }

    #[test]
    fn errors_are_final() {
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::from(&b"z"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ChunkedError::InvalidSize));
        let mut good = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert_eq!(decoder.decode(&mut good), Err(ChunkedError::InvalidSize));
        assert!(!decoder.is_done());
    }

    #[test]
    fn empty_buffer_needs_more() {
        let mut decoder = Chunked::default();
        assert_eq!(decoder.decode(&mut BytesMut::new()), Ok(None));
        assert_eq!(run(b"5\r\nhel").outcome, Outcome::NeedMore);
        assert_eq!(run(b"0\r\nX: y\r\n").outcome, Outcome::NeedMore);
    }

    #[test]
    fn take_data_is_bounded_by_both() {
        assert_eq!(take_data(10, 3), (3, 7));
        assert_eq!(take_data(3, 10), (3, 0));
        assert_eq!(take_data(u64::MAX, 5), (5, u64::MAX - 5));
    }

    /// A chunk-extension, valid per RFC 9112 (with BWS around `;` and `=`).
    fn extension() -> impl Strategy<Value = String> {
        let token = "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,8}";
        let quoted = r#""([ \t!#-\[\]-~]|\\[ -~]){0,12}""#;
        let bws = "[ \t]{0,2}";
        (
            bws,
            token,
            prop::option::of((bws, bws, prop_oneof![token, quoted])),
        )
            .prop_map(|(ws, name, value)| match value {
                None => format!("{ws};{name}"),
                Some((before, after, value)) => format!("{ws};{name}{before}={after}{value}"),
            })
    }

    /// A chunk as sent: its data, and how its size line is spelled.
    fn chunk() -> impl Strategy<Value = (Vec<u8>, bool, usize, Vec<String>)> {
        (
            prop::collection::vec(any::<u8>(), 1..80),
            any::<bool>(),
            0..3usize,
            prop::collection::vec(extension(), 0..3),
        )
    }

    fn size_line(size: usize, upper: bool, zeros: usize, extensions: &[String]) -> Vec<u8> {
        let digits = if upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        format!("{}{digits}{}\r\n", "0".repeat(zeros), extensions.concat()).into_bytes()
    }

    /// Splits `input` at the given points (sorted, possibly repeated).
    fn split_at<'a>(input: &'a [u8], points: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([input.len()]) {
            pieces.push(&input[start..cut]);
            start = cut;
        }
        pieces
    }

    /// Inputs that get past the first byte more often than random bytes
    /// do: framing characters, hex digits and a few others.
    fn chunked_like() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop::sample::select(vec![
            &b"0"[..],
            b"1",
            b"3",
            b"a",
            b"F",
            b"\r\n",
            b"\r",
            b"\n",
            b" ",
            b";",
            b"=",
            b"\"",
            b"x",
            b"\\",
            b"0\r\n\r\n",
            b"X: y\r\n",
        ]);
        prop::collection::vec(pieces, 0..48).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any valid chunked encoding, split anywhere, decodes to its data,
        /// ends exactly when its last byte arrives and leaves what follows.
        #[test]
        fn valid_encodings_round_trip(
            chunks in prop::collection::vec(chunk(), 0..8),
            last in (any::<bool>(), 0..3usize, prop::collection::vec(extension(), 0..3)),
            trailers in prop::collection::vec("[A-Za-z-]{1,10}:[ \t]?[ -~]{0,20}", 0..4),
            suffix in prop::collection::vec(any::<u8>(), 0..16),
            points in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut encoded = Vec::new();
            let mut body = Vec::new();
            for (data, upper, zeros, extensions) in &chunks {
                encoded.extend(size_line(data.len(), *upper, *zeros, extensions));
                encoded.extend_from_slice(data);
                encoded.extend_from_slice(b"\r\n");
                body.extend_from_slice(data);
            }
            let (upper, zeros, extensions) = last;
            encoded.extend(size_line(0, upper, zeros, &extensions));
            for field in &trailers {
                encoded.extend_from_slice(field.as_bytes());
                encoded.extend_from_slice(b"\r\n");
            }
            encoded.extend_from_slice(b"\r\n");
            let end_at = encoded.len();
            encoded.extend_from_slice(&suffix);

            let mut decoder = Chunked::new();
            let mut buf = BytesMut::new();
            let mut data = Vec::new();
            let mut fed = 0;
            let mut ended = false;
            for piece in split_at(&encoded, &points) {
                buf.extend_from_slice(piece);
                fed += piece.len();
                if ended {
                    prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::End)));
                    continue;
                }
                let result = drain(&mut decoder, &mut buf, &mut data);
                let all_fed = fed >= end_at;
                prop_assert_eq!(result, all_fed.then_some(Outcome::End), "after {} bytes", fed);
                ended = all_fed;
            }
            prop_assert!(decoder.is_done());
            prop_assert_eq!(&data, &body);
            prop_assert_eq!(&buf[..], &suffix[..]);
        }

        /// Arbitrary bytes never panic, and the result does not depend on
        /// how they are split.
        #[test]
        fn splitting_never_changes_the_result(
            input in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), chunked_like()],
            points in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let whole = run(&input);
            prop_assert_eq!(&run_feeds(split_at(&input, &points)), &whole);
            prop_assert_eq!(&run_bytewise(&input), &whole);
        }
    }
}

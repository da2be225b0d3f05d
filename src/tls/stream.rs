//! The server side of a TLS connection on rustls's unbuffered API, holding
//! no buffer while nothing is in flight.
//!
//! rustls's buffered connection (what `tokio-rustls` drives) keeps a 4 KiB
//! record buffer for as long as the connection lives, and allocates a
//! fresh `Vec` for every record it sends. Most of a proxy's connections are
//! idle most of the time, so that buffer is a third of what an idle
//! connection costs. Here the connection owns its record I/O instead:
//!
//! - **Reading.** Ciphertext is read into a per-thread scratch buffer and
//!   decrypted in place there. Only what is left over (the start of a
//!   record that has not all arrived, or records beyond what the reader
//!   had room for) is copied into the connection's own `incoming` buffer,
//!   which is freed as soon as it is empty again.
//! - **Writing.** Plaintext is encrypted into a per-thread scratch buffer
//!   and written to the socket from there. Only what the socket does not
//!   take at once is kept, in `outgoing`, and the next write waits for it
//!   to drain (so at most one write's worth is ever held).
//! - **Plaintext** decrypted beyond what the reader had room for waits in
//!   `plain`, also freed once read.
//!
//! A keep-alive connection between requests therefore holds rustls's
//! connection state and nothing else.
//!
//! Behaviour towards the peer and towards hyper is that of `tokio-rustls`:
//! the same handshake, close_notify on shutdown, an `UnexpectedEof` error
//! when the peer closes without close_notify, rustls's errors as
//! `InvalidData` I/O errors wrapping the [`rustls::Error`], and a fatal
//! alert sent (best effort) before such an error is returned.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::resolver;

/// The largest TLS record on the wire: 2^14 bytes of plaintext, the most
/// expansion TLS 1.2 allows (2048 bytes) and the 5-byte header. A read of
/// this size always completes the record in progress.
const MAX_RECORD: usize = 16_384 + 2_048 + 5;

/// Plaintext encrypted per write: four full records, so a large response
/// body goes out in 64 KiB writes rather than one syscall per record.
const MAX_PLAIN_PER_WRITE: usize = 4 * 16_384;

/// Room for [`MAX_PLAIN_PER_WRITE`] once encrypted, with room to spare for
/// each record's header, tag and content type.
const WRITE_SCRATCH: usize = MAX_PLAIN_PER_WRITE + 4 * 256;

/// Room first offered for a handshake message; rustls says how much it
/// needs when that is not enough (a certificate chain).
const HANDSHAKE_ROOM: usize = 1024;

/// Per-thread buffers every connection on the thread reads into and
/// encrypts into: a connection never needs them across an await, so one
/// pair per worker serves them all.
struct Scratch {
    read: Box<[u8]>,
    write: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        read: vec![0; MAX_RECORD].into_boxed_slice(),
        write: vec![0; WRITE_SCRATCH],
    });
}

/// A server TLS connection over `IO`; see the module documentation.
pub struct TlsStream<IO> {
    io: IO,
    session: Session,
    /// Ciphertext received and not yet processed: an incomplete record, or
    /// records beyond what the reader had room for. Usually empty, and then
    /// without an allocation.
    incoming: Vec<u8>,
}

/// Everything of the connection but its I/O and unprocessed input.
struct Session {
    conn: UnbufferedServerConnection,
    /// Decrypted application data not yet read, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext not yet written to the socket, from `outgoing_at` on.
    outgoing: Vec<u8>,
    outgoing_at: usize,
    /// The peer sent close_notify: reads see the end of the stream.
    peer_closed: bool,
    /// We queued close_notify: nothing more may be written.
    sent_close: bool,
    /// The client's SNI as rustls normalised it (see [`resolver`]).
    sni: Option<Box<str>>,
}

/// What a caller wants of one pass over the input.
enum Intent<'a, 'b> {
    /// Finish the handshake; leave application data in rustls for the
    /// first read.
    Handshake,
    /// Decrypt application data into this buffer.
    Read(&'a mut ReadBuf<'b>),
    /// Encrypt this plaintext into `out`.
    Write {
        plain: &'a [u8],
        out: &'a mut Vec<u8>,
    },
    /// Encrypt close_notify into `out`.
    Close { out: &'a mut Vec<u8> },
}

/// Where a pass over the input stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every complete record was processed; more input is needed.
    NeedInput,
    /// The reader's buffer is full, or (handshaking) application data is
    /// waiting for the first read.
    Readable,
    /// `n` bytes of ciphertext were written to the intent's `out`.
    Encrypted(usize),
    /// The peer sent close_notify (reported once).
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

impl Session {
    /// Runs rustls over `input` until the intent is met or more input is
    /// needed. Returns how many bytes of `input` are done with (to be
    /// removed from its front) and where it stopped.
    fn process(
        &mut self,
        input: &mut [u8],
        intent: &mut Intent<'_, '_>,
    ) -> (usize, Result<Stop, rustls::Error>) {
        let mut done = 0;
        loop {
            let input = &mut input[done..];
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(input);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.encode_alert();
                    return (done + discard, Err(e));
                }
            };
            let stop = match state {
                // Left in rustls while handshaking: the next pass hands it
                // over first.
                ConnectionState::ReadTraffic(_) if matches!(intent, Intent::Handshake) => {
                    Some(Stop::Readable)
                }
                // A reader takes what fits; the rest, and all of it when
                // the pass is for a write, waits in `plain`.
                ConnectionState::ReadTraffic(mut traffic) => {
                    let mut reader = match intent {
                        Intent::Read(buf) => Some(buf),
                        _ => None,
                    };
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => return (done + discard, Err(e)),
                        };
                        discard += record.discard;
                        let mut rest = record.payload;
                        if let Some(buf) = reader.as_deref_mut() {
                            let take = rest.len().min(buf.remaining());
                            buf.put_slice(&rest[..take]);
                            rest = &rest[take..];
                        }
                        self.plain.extend_from_slice(rest);
                    }
                    reader
                        .is_some_and(|buf| buf.remaining() == 0)
                        .then_some(Stop::Readable)
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, &mut encode);
                    None
                }
                // The encoded records wait in `outgoing`, which every
                // caller drains before it waits on the socket.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => match intent {
                    Intent::Write { plain, out } => {
                        match encrypt_with(out, |out| traffic.encrypt(plain, out)) {
                            Ok(n) => Some(Stop::Encrypted(n)),
                            Err(e) => return (done + discard, Err(e)),
                        }
                    }
                    Intent::Close { out } => {
                        match encrypt_with(out, |out| traffic.queue_close_notify(out)) {
                            Ok(n) => {
                                self.sent_close = true;
                                Some(Stop::Encrypted(n))
                            }
                            Err(e) => return (done + discard, Err(e)),
                        }
                    }
                    Intent::Handshake | Intent::Read(_) => Some(Stop::NeedInput),
                },
                ConnectionState::BlockedHandshake => Some(Stop::NeedInput),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    matches!(intent, Intent::Read(_)).then_some(Stop::PeerClosed)
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Stop::Closed)
                }
                // The server config never accepts 0-RTT data, and any state
                // a later rustls adds is one this code cannot handle.
                _ => {
                    return (
                        done + discard,
                        Err(rustls::Error::General(
                            "unexpected TLS connection state".into(),
                        )),
                    );
                }
            };
            done += discard;
            if let Some(stop) = stop {
                return (done, Ok(stop));
            }
        }
    }

    /// After a fatal error rustls may queue an alert saying why; encode it
    /// so the caller's drain sends it (best effort).
    ///
    /// Only queued records are asked for, and with no input: handing rustls
    /// input again after an error would have it process (and answer) the
    /// same bad record twice.
    fn encode_alert(&mut self) {
        for _ in 0..4 {
            if !self.conn.wants_write() {
                return;
            }
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, &mut encode);
                }
                _ => return,
            }
        }
    }

    /// Copies waiting plaintext into `buf`; whether there was any.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let waiting = &self.plain[self.plain_at..];
        if waiting.is_empty() {
            return false;
        }
        let take = waiting.len().min(buf.remaining());
        buf.put_slice(&waiting[..take]);
        self.plain_at += take;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        true
    }

    /// Writes `outgoing` to `io` until it is empty (then freed) or the
    /// socket pushes back.
    fn poll_drain<IO>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncWrite + Unpin,
    {
        while self.outgoing_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.outgoing[self.outgoing_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_at += n;
        }
        if !self.outgoing.is_empty() {
            self.outgoing = Vec::new();
            self.outgoing_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends `ciphertext` at once as far as the socket takes it and keeps
    /// the rest in `outgoing`, behind anything already waiting there.
    fn send<IO>(&mut self, io: &mut IO, cx: &mut Context<'_>, ciphertext: &[u8]) -> io::Result<()>
    where
        IO: AsyncWrite + Unpin,
    {
        let mut sent = 0;
        if self.outgoing_at == self.outgoing.len() {
            while sent < ciphertext.len() {
                match Pin::new(&mut *io).poll_write(cx, &ciphertext[sent..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => sent += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.outgoing.extend_from_slice(&ciphertext[sent..]);
        Ok(())
    }
}

/// Encodes a handshake record at the end of `out`, growing it as rustls
/// asks.
fn encode_into(
    out: &mut Vec<u8>,
    encode: &mut EncodeTlsData<'_, rustls::server::ServerConnectionData>,
) {
    let start = out.len();
    let mut room = HANDSHAKE_ROOM;
    loop {
        out.resize(start + room, 0);
        match encode.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// Runs `encrypt` into `out`, growing it once if rustls needs more room.
fn encrypt_with(
    out: &mut Vec<u8>,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<usize, rustls::Error> {
    match encrypt(out) {
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(required_size, 0);
            encrypt(out).map_err(encrypt_error)
        }
        result => result.map_err(encrypt_error),
    }
}

fn encrypt_error(e: EncryptError) -> rustls::Error {
    match e {
        EncryptError::EncryptExhausted => rustls::Error::EncryptError,
        EncryptError::InsufficientSize(_) => {
            rustls::Error::General("encryption buffer too small".into())
        }
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Removes the first `done` bytes of `buf`, freeing it once empty.
fn consume(buf: &mut Vec<u8>, done: usize) {
    if done >= buf.len() {
        *buf = Vec::new();
    } else {
        buf.drain(..done);
    }
}

impl<IO> TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// A connection about to handshake on `io`.
    pub(super) fn new(io: IO, conn: UnbufferedServerConnection) -> Self {
        Self {
            io,
            session: Session {
                conn,
                plain: Vec::new(),
                plain_at: 0,
                outgoing: Vec::new(),
                outgoing_at: 0,
                peer_closed: false,
                sent_close: false,
                sni: None,
            },
            incoming: Vec::new(),
        }
    }

    /// The SNI the client sent, lowercased by rustls; `None` without SNI.
    pub fn sni(&self) -> Option<&str> {
        self.session.sni.as_deref()
    }

    /// The protocol ALPN settled on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.session.conn.alpn_protocol()
    }

    /// The underlying I/O.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Drives the handshake to its end.
    ///
    /// Reading goes on while the socket pushes back on a write, as it must:
    /// a peer may itself be waiting to finish a write before it reads. What
    /// is still unsent at the end (TLS 1.3 session tickets, which a client
    /// reads only with its first response) goes out with the first read or
    /// write.
    pub(super) fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stop = self.process_held(&mut Intent::Handshake);
        loop {
            if let Err(e) = stop {
                let _ = self.session.poll_drain(&mut self.io, cx);
                return Poll::Ready(Err(invalid_data(e)));
            }
            if let Poll::Ready(Err(e)) = self.session.poll_drain(&mut self.io, cx) {
                return Poll::Ready(Err(e));
            }
            if !self.session.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            stop = match ready!(self.poll_read_io(cx, &mut Intent::Handshake))? {
                Some(stop) => stop,
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tls handshake eof",
                    )));
                }
            };
        }
    }

    /// One pass over the input already held, with the SNI noted if the
    /// pass read the ClientHello.
    fn process_held(&mut self, intent: &mut Intent<'_, '_>) -> Result<Stop, rustls::Error> {
        let handshaking = self.session.conn.is_handshaking();
        if handshaking {
            resolver::forget_seen_name();
        }
        let (done, stop) = self.session.process(&mut self.incoming, intent);
        consume(&mut self.incoming, done);
        if handshaking {
            self.note_sni();
        }
        stop
    }

    fn note_sni(&mut self) {
        if let Some(name) = resolver::take_seen_name() {
            self.session.sni = Some(name);
        }
    }

    /// Reads from the socket and runs one pass over what arrived: `None`
    /// at the end of the stream.
    ///
    /// The bytes are read into the thread's scratch buffer and processed
    /// there; only what the pass leaves is copied into `incoming`. When
    /// `incoming` already holds the start of a record, the new bytes join
    /// it there instead.
    fn poll_read_io(
        &mut self,
        cx: &mut Context<'_>,
        intent: &mut Intent<'_, '_>,
    ) -> Poll<io::Result<Option<Result<Stop, rustls::Error>>>> {
        let handshaking = self.session.conn.is_handshaking();
        let polled = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch.read);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            if handshaking {
                resolver::forget_seen_name();
            }
            let stop = if self.incoming.is_empty() {
                let arrived = &mut scratch.read[..n];
                let (done, stop) = self.session.process(arrived, intent);
                if done < n {
                    self.incoming.extend_from_slice(&arrived[done..]);
                }
                stop
            } else {
                self.incoming.extend_from_slice(&scratch.read[..n]);
                let (done, stop) = self.session.process(&mut self.incoming, intent);
                consume(&mut self.incoming, done);
                stop
            };
            Poll::Ready(Ok(Some(stop)))
        });
        if handshaking {
            self.note_sni();
        }
        polled
    }
}

impl<IO> AsyncRead for TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || this.session.take_plain(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let mut stop = if this.session.peer_closed {
            Ok(Stop::PeerClosed)
        } else {
            this.process_held(&mut Intent::Read(buf))
        };
        loop {
            // Records rustls wants sent while reading (a key update's
            // answer, an alert) go out now if the socket takes them, or
            // with the next write or flush.
            let _ = this.session.poll_drain(&mut this.io, cx);
            let stopped = stop.map_err(invalid_data)?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            match stopped {
                Stop::PeerClosed | Stop::Closed => return Poll::Ready(Ok(())),
                Stop::NeedInput | Stop::Readable | Stop::Encrypted(_) => {}
            }
            stop = match ready!(this.poll_read_io(cx, &mut Intent::Read(buf)))? {
                Some(stop) => stop,
                // rustls's own reader reports an end without close_notify
                // (a truncation attack, or a careless client) this way.
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
            };
        }
    }
}

impl<IO> AsyncWrite for TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // At most one write's ciphertext waits: the next waits for it.
        ready!(this.session.poll_drain(&mut this.io, cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.session.sent_close {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let plain = &buf[..buf.len().min(MAX_PLAIN_PER_WRITE)];
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let out = &mut scratch.write;
            let stop = this.process_held(&mut Intent::Write { plain, out });
            match stop {
                Ok(Stop::Encrypted(n)) => {
                    this.session.send(&mut this.io, cx, &out[..n])?;
                    Poll::Ready(Ok(plain.len()))
                }
                Ok(Stop::Closed) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Ok(_) => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                Err(e) => {
                    let _ = this.session.poll_drain(&mut this.io, cx);
                    Poll::Ready(Err(invalid_data(e)))
                }
            }
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.session.poll_drain(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.session.sent_close {
            // Marked sent even if it cannot be: a connection rustls has
            // closed or failed has no close_notify to send.
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let out = &mut scratch.write;
                match this.process_held(&mut Intent::Close { out }) {
                    Ok(Stop::Encrypted(n)) => this.session.outgoing.extend_from_slice(&out[..n]),
                    _ => this.session.sent_close = true,
                }
            });
        }
        ready!(this.session.poll_drain(&mut this.io, cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            // Shutting down a socket the peer already reset is no failure.
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;

//! One keep-alive HTTP/1.1 connection to a backend node, driven by the
//! request that uses it: [`Conn::send`] writes the request and reads the
//! response head, then [`Reading`] reads the body as the client's side
//! asks for it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use http_body::{Body, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::chunked::{Chunked, ChunkedError, Decoded};
use super::head::{self, BodyLength, HeadError, RequestFraming, ResponseHead};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much room a read asks for. A search response of a few KB arrives
/// in one read; a larger body streams through in reads of this size.
const READ_CHUNK: usize = 8 * 1024;

/// Why a backend exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("writing to the backend failed")]
    Write(#[source] io::Error),
    #[error("reading from the backend failed")]
    Read(#[source] io::Error),
    #[error("the backend closed the connection before its response was complete")]
    Closed,
    #[error("the backend's response head was refused")]
    Head(#[from] HeadError),
    #[error("the backend's chunked response body was refused")]
    Chunked(#[from] ChunkedError),
}

/// Why [`Conn::send`] got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request head could not be written: nothing of the request
    /// was delivered, so it may go to another connection, body intact.
    #[error("the request could not be written to the backend")]
    Unsent(#[source] BackendError),
    #[error(transparent)]
    Backend(BackendError),
    /// The client's request body failed while it was being sent.
    #[error("the request body could not be read from the client")]
    RequestBody(#[source] BoxError),
}

/// A connection and the buffers it keeps between requests.
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    /// Bytes read from the backend and not yet used.
    read: BytesMut,
    /// The request head (and chunk framing) being written.
    write: Vec<u8>,
    /// The map the next response head is parsed into: the last request's,
    /// emptied, so a request's map is reused rather than a new one grown
    /// for every response (as hyper does on both of its sides).
    spare: HeaderMap,
    /// Scratch space for parsing response heads.
    fields: head::Fields,
}

impl Conn {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            read: BytesMut::new(),
            write: Vec::new(),
            spare: HeaderMap::new(),
            fields: Vec::new(),
        }
    }

    /// The backend closed the idle connection, or wrote to it unasked:
    /// either way it can carry no request. Costs no system call unless
    /// the socket was reported readable since its last read.
    pub fn is_closed(&self) -> bool {
        !self.read.is_empty()
            || !matches!(self.tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes `req` and reads the response head. The request stays the
    /// caller's so that it can go elsewhere when none of it was sent
    /// ([`SendError::Unsent`]); its header map is kept for the response.
    ///
    /// A request with a body goes out with the body's first piece, in one
    /// write: a body that fails at once (malformed chunking, a reset
    /// stream) means no request reaches the backend at all. The body is
    /// then written as the client sends it, while the backend is listened
    /// to: an interim response (`100 Continue`) is passed over, and a final
    /// response before the body's end stops the upload (the connection then
    /// closes after the response, its request unfinished).
    pub async fn send<B>(&mut self, req: &mut Request<B>) -> Result<ResponseHead, SendError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let body = req.body();
        let exact = if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        let framing = head::encode_request(req, exact, &mut self.write);
        let method = req.method().clone();
        if framing == RequestFraming::None {
            self.tcp
                .write_all(&self.write)
                .await
                .map_err(|e| SendError::Unsent(BackendError::Write(e)))?;
            self.take_map(req.headers_mut());
            return self.read_head(&method).await.map_err(SendError::Backend);
        }
        let chunked = framing == RequestFraming::Chunked;
        let early = self.upload(req.body_mut(), chunked, &method).await?;
        self.take_map(req.headers_mut());
        if let Some(mut early) = early {
            // The backend has not read the whole request: the connection
            // cannot carry another.
            early.keep_alive = false;
            return Ok(early);
        }
        self.read_head(&method).await.map_err(SendError::Backend)
    }

    /// Keeps a sent request's header map for the next response. Emptied
    /// at once, so that an idle connection keeps nothing of the client's
    /// request alive (its values share the client connection's read
    /// buffer).
    fn take_map(&mut self, headers: &mut HeaderMap) {
        self.spare = std::mem::take(headers);
        self.spare.clear();
    }

    /// Sends the head waiting in `write` with the body; `Some` when the
    /// backend answered before the body ended.
    ///
    /// Reading, writing and taking the body's next frame run side by
    /// side, so that a backend which stops reading the upload to answer
    /// early is heard even while a write waits.
    async fn upload<B>(
        &mut self,
        body: &mut B,
        chunked: bool,
        method: &Method,
    ) -> Result<Option<ResponseHead>, SendError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let Self {
            tcp,
            read,
            write,
            spare,
            fields,
        } = self;
        let (mut rd, mut wr) = tcp.split();
        // What is left to write, in order: `write[at..]` (the head, chunk
        // framing), `data` (a frame's bytes, not copied), `tail` (the CRLF
        // after a chunk).
        let mut out = Pending::default();
        // The head waits for the body's first piece and goes out with it:
        // a body that fails at once means no request reaches the backend.
        let mut head_held = true;
        let mut sent_any = false;
        let mut body_done = false;
        loop {
            if out.is_empty(write) && body_done {
                return Ok(None);
            }
            let slices = out.slices(write);
            tokio::select! {
                // The backend spoke: an interim response is consumed and
                // the upload goes on; a final one ends it.
                n = read_more(&mut rd, read) => {
                    let failed = match n {
                        Ok(0) => BackendError::Closed,
                        Ok(_) if sent_any => {
                            let head = head::parse_response(read, method, spare, fields)
                                .map_err(|e| SendError::Backend(e.into()))?;
                            if head.is_some() {
                                return Ok(head);
                            }
                            continue;
                        }
                        // Spoken to before it was asked: unusable.
                        Ok(_) => BackendError::Closed,
                        Err(e) => BackendError::Read(e),
                    };
                    // Closed (or broken) before any of the request went
                    // out and before the body gave up a piece: the caller
                    // may send it elsewhere, whole. (A piece taken but not
                    // yet written would be missing there.)
                    return Err(if head_held { SendError::Unsent(failed) } else { SendError::Backend(failed) });
                }
                n = wr.write_vectored(&slices), if !head_held && !out.is_empty(write) => {
                    match n {
                        Ok(0) => return Err(SendError::Backend(BackendError::Write(io::ErrorKind::WriteZero.into()))),
                        Ok(n) => out.advance(n, write),
                        Err(e) => return Err(SendError::Backend(BackendError::Write(e))),
                    }
                    sent_any = true;
                }
                frame = body.frame(), if !body_done && (head_held || out.is_empty(write)) => {
                    head_held = false;
                    match frame {
                        None => {
                            body_done = true;
                            if chunked {
                                write.extend_from_slice(head::CHUNKED_END);
                            }
                        }
                        Some(Err(e)) => return Err(SendError::RequestBody(e.into())),
                        Some(Ok(frame)) => {
                            // Trailers are not passed on.
                            if let Ok(data) = frame.into_data()
                                && !data.is_empty()
                            {
                                if chunked {
                                    head::chunk_start(data.len(), write);
                                    out.tail = b"\r\n";
                                }
                                out.data = data;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, BackendError> {
        loop {
            if let Some(head) =
                head::parse_response(&mut self.read, method, &mut self.spare, &mut self.fields)?
            {
                return Ok(head);
            }
            match read_more(&mut self.tcp, &mut self.read).await {
                Ok(0) => return Err(BackendError::Closed),
                Ok(_) => {}
                Err(e) => return Err(BackendError::Read(e)),
            }
        }
    }

    /// Reads more of the response into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_more(&mut self.tcp, &mut self.read, cx)
    }
}

/// Reads what `rd` has into `buf`, making room first; `Ok(0)` at the end
/// of the stream. The one read of the backend's bytes, for the head and
/// the body alike.
fn poll_read_more<R>(
    rd: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        // Reclaims the buffer's own memory when the bytes handed out of
        // it are gone, as they are once the client's side has copied them.
        buf.reserve(READ_CHUNK);
    }
    // Through `AsyncRead`, which notices a short read drained the socket
    // and so saves the next read's `EAGAIN` system call.
    tokio_util::io::poll_read_buf(Pin::new(rd), cx, buf)
}

async fn read_more<R>(rd: &mut R, buf: &mut BytesMut) -> io::Result<usize>
where
    R: tokio::io::AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| poll_read_more(rd, buf, cx)).await
}

/// What an upload has left to write: the front of the connection's write
/// buffer, then a frame's data, then a chunk's CRLF.
#[derive(Default)]
struct Pending {
    /// How much of the write buffer has been written.
    at: usize,
    data: Bytes,
    tail: &'static [u8],
}

impl Pending {
    fn slices<'a>(&'a self, write: &'a [u8]) -> [io::IoSlice<'a>; 3] {
        [
            io::IoSlice::new(write.get(self.at..).unwrap_or_default()),
            io::IoSlice::new(&self.data),
            io::IoSlice::new(self.tail),
        ]
    }

    fn is_empty(&self, write: &[u8]) -> bool {
        write.len() <= self.at && self.data.is_empty() && self.tail.is_empty()
    }

    /// `n` more bytes were written.
    fn advance(&mut self, mut n: usize, write: &mut Vec<u8>) {
        let buffered = write.len().saturating_sub(self.at);
        let step = n.min(buffered);
        self.at += step;
        n -= step;
        if self.at >= write.len() {
            write.clear();
            self.at = 0;
        }
        let step = n.min(self.data.len());
        self.data.advance(step);
        n -= step;
        self.tail = self.tail.get(n..).unwrap_or_default();
    }
}

/// A response body as it is read off its connection.
#[derive(Debug)]
pub struct Reading {
    state: State,
    /// The connection can carry another request after the body.
    keep_alive: bool,
}

#[derive(Debug)]
enum State {
    Exact(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl Reading {
    pub fn new(head: &ResponseHead) -> Self {
        let state = match head.length {
            BodyLength::Empty | BodyLength::Exact(0) => State::Done,
            BodyLength::Exact(n) => State::Exact(n),
            BodyLength::Chunked => State::Chunked(Chunked::new()),
            BodyLength::UntilClose => State::UntilClose,
        };
        Self {
            state,
            keep_alive: head.keep_alive,
        }
    }

    /// The next piece of the body, read from `conn`.
    pub fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BackendError>>> {
        loop {
            let buffered = conn.read.len();
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Exact(left) if buffered > 0 => {
                    let n = usize::try_from(*left).map_or(buffered, |left| left.min(buffered));
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                    return Poll::Ready(Some(Ok(conn.read.split_to(n).freeze())));
                }
                State::UntilClose if buffered > 0 => {
                    return Poll::Ready(Some(Ok(conn.read.split().freeze())));
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Some(Decoded::Data(data))) => return Poll::Ready(Some(Ok(data))),
                    Ok(Some(Decoded::End)) => {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(self.failed(e.into())))),
                },
                State::Exact(_) | State::UntilClose => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.state, State::UntilClose) => {
                    self.state = State::Done;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(self.failed(BackendError::Closed)))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(self.failed(BackendError::Read(e))))),
            }
        }
    }

    fn failed(&mut self, e: BackendError) -> BackendError {
        self.state = State::Done;
        self.keep_alive = false;
        e
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Exact(n) => SizeHint::with_exact(n),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }

    /// The body was read to its end and the connection is ready for the
    /// next request: nothing more arrived after the body.
    pub fn reusable(&self, conn: &Conn) -> bool {
        self.keep_alive && self.is_end_stream() && conn.read.is_empty()
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;

//! HTTP/1.1 connections that give their buffers back while idle.
//!
//! hyper's HTTP/1.1 connection keeps an 8 KiB read buffer and an 8 KiB
//! write buffer for as long as it lives, idle or not, with no knob to
//! shrink them. Most of a proxy's connections are idle most of the time
//! (a load balancer holds them open between a client's bursts), so that
//! is most of what an idle connection costs.
//!
//! So a connection idle for `server.idle_release_after` is taken apart:
//! hyper is asked to finish without closing (its `graceful_shutdown` of an
//! idle connection sends nothing), and gives back the TLS stream, any
//! bytes it had read ahead, and the service. The connection then waits on
//! the TLS stream alone; when the client sends again, a new hyper
//! connection is built over the stream with those first bytes replayed in
//! front of it. The client sees one keep-alive connection throughout.
//!
//! Nothing is lost in the hand-over: hyper is only asked while no request
//! is in flight and no request header has begun, and whatever it had read
//! by then comes back in `read_buf` and is replayed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1::{self, Connection, Parts};
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Proxy;
use super::activity::{Activity, ActivityIo};
use super::metrics::ConnectionEnd;
use super::watchdog::{Watched, drive};
use crate::proxy_protocol::Prefixed;
use crate::settings::{HttpSettings, Timeouts};
use crate::shutdown::{Phase, Shutdown};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What hyper needs of a service to serve HTTP/1.1 with it and hand it
/// back when the connection releases.
pub(super) trait Service:
    HttpService<
        Incoming,
        Future: Unpin,
        Error: Into<BoxError>,
        ResBody: Body<Error: Into<BoxError>> + 'static,
    > + Unpin
{
}

impl<T> Service for T where
    T: HttpService<
            Incoming,
            Future: Unpin,
            Error: Into<BoxError>,
            ResBody: Body<Error: Into<BoxError>> + 'static,
        > + Unpin
{
}

/// How a watched hyper connection finished: released (its parts), closed
/// (`None`), or cut short (the `connections_total{result}` label).
type Finished<S, Svc> = Result<Option<Parts<Io<S>, Svc>>, ConnectionEnd>;

/// What hyper reads from and writes to: the stream, with bytes read while
/// the connection was parked replayed first.
type Io<S> = TokioIo<Prefixed<ActivityIo<S>>>;

/// Serves HTTP/1.1 on `stream` until the connection ends: `Ok` when it
/// closed in the ordinary way, else the `connections_total{result}` label.
///
/// This future is the connection's state while it is parked, so it keeps
/// nothing large of its own: the hyper connection and the futures that
/// run it are built by plain functions and boxed, and live only while
/// they run. (An async fn keeps room for any large value it holds across
/// an await, even after it has moved on.)
pub(super) fn serve<S, Svc>(
    stream: ActivityIo<S>,
    service: Svc,
    activity: Arc<Activity>,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
) -> impl Future<Output = Result<(), ConnectionEnd>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Svc: Service,
{
    // The stream goes in boxed, and is moved out of the box at once: its
    // argument's room stays reserved for as long as the future runs.
    serve_unboxing(Box::new(stream), service, activity, proxy, shutdown)
}

async fn serve_unboxing<S, Svc>(
    stream: Box<ActivityIo<S>>,
    mut service: Svc,
    activity: Arc<Activity>,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
) -> Result<(), ConnectionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Svc: Service,
{
    // Moved out by a call: moved out in place, the empty box would stay
    // allocated until the future ends.
    let mut stream = unboxed(stream);
    let builder = builder(&proxy.http);
    let mut replay = Bytes::new();
    loop {
        let served = served(
            &builder, stream, service, replay, &activity, &proxy, &shutdown,
        );
        (stream, service, replay) = match served.await? {
            Some(parts) => {
                // hyper's buffers are freed: counted for the trim.
                crate::memory::note_release();
                taken_apart(parts)
            }
            None => return Ok(()),
        };
        if !replay.is_empty() {
            continue;
        }
        let timeouts = proxy.http.timeouts;
        let released = proxy.metrics.connection_released();
        let parked = Box::pin(park(&mut stream, &activity, timeouts, shutdown.clone())).await;
        drop(released);
        match parked {
            Parked::Woke(bytes) => replay = bytes,
            Parked::Failed => return Err(ConnectionEnd::HttpError),
            Parked::Close => {
                return closed::<S, Svc>(stream, activity, &proxy, shutdown)
                    .await
                    .map(drop);
            }
        }
    }
}

#[expect(
    clippy::boxed_local,
    reason = "the box is what keeps the caller's future small"
)]
fn unboxed<T>(boxed: Box<T>) -> T {
    *boxed
}

/// A hyper connection over `stream`, with `replay` read first, under the
/// watchdog.
fn served<'a, S, Svc>(
    builder: &http1::Builder,
    stream: ActivityIo<S>,
    service: Svc,
    replay: Bytes,
    activity: &Arc<Activity>,
    proxy: &'a Proxy,
    shutdown: &Shutdown,
) -> Pin<Box<impl Future<Output = Finished<S, Svc>> + 'a>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'a,
    Svc: Service + 'a,
{
    let conn = builder.serve_connection(TokioIo::new(Prefixed::new(replay, stream)), service);
    Box::pin(drive(
        Http1::watched(conn),
        activity.clone(),
        proxy,
        shutdown.clone(),
    ))
}

/// A released connection's stream, service and unread bytes.
fn taken_apart<S, Svc>(parts: Parts<Io<S>, Svc>) -> (ActivityIo<S>, Svc, Bytes) {
    let Parts {
        io,
        read_buf,
        service,
        ..
    } = parts;
    let (unread, stream) = io.into_inner().into_parts();
    // hyper read `read_buf` from the front of the replayed bytes or the
    // stream; what it never read of the replay comes after.
    (stream, service, join(read_buf, unread))
}

/// The stream closed as hyper closes a connection (TLS close_notify, then
/// FIN), under the same watchdog.
fn closed<'a, S, Svc>(
    stream: ActivityIo<S>,
    activity: Arc<Activity>,
    proxy: &'a Proxy,
    shutdown: Shutdown,
) -> Pin<Box<impl Future<Output = Finished<S, Svc>> + 'a>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'a,
    Svc: Service + 'a,
{
    let io = TokioIo::new(Prefixed::new(Bytes::new(), stream));
    Box::pin(drive(
        Http1::<S, Svc>::closing(io),
        activity,
        proxy,
        shutdown,
    ))
}

/// hyper's HTTP/1.1 server as the data path configures it.
fn builder(h: &HttpSettings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The watchdog enforces header and idle timeouts separately.
        .header_read_timeout(None)
        // A request head over the limit gets 431; the buffer must hold a
        // full head plus some body.
        .max_header_size(h.max_header_bytes)
        .max_buf_size((h.max_header_bytes * 2).max(16 * 1024))
        .max_headers(h.max_headers)
        // One flat buffer per response instead of a vector of slices:
        // rustls's `write_vectored` collects the slices into a fresh `Vec`
        // on every write. Copying a response's bytes once more costs less
        // than that allocation (and encryption copies them anyway).
        .writev(false)
        .keep_alive(true);
    builder
}

fn join(first: Bytes, then: Bytes) -> Bytes {
    match (first.is_empty(), then.is_empty()) {
        (true, _) => then,
        (_, true) => first,
        _ => [first, then].concat().into(),
    }
}

/// How a parked connection stopped waiting.
#[derive(Debug)]
enum Parked {
    /// The client sent these bytes: the start of its next request.
    Woke(Bytes),
    /// Idle timeout, drain, or the client closed: close politely.
    Close,
    /// The stream failed.
    Failed,
}

/// Waits on the stream alone for the client's next bytes, the idle
/// timeout or a drain.
async fn park<S>(
    stream: &mut ActivityIo<S>,
    activity: &Activity,
    timeouts: Timeouts,
    mut shutdown: Shutdown,
) -> Parked
where
    S: AsyncRead + Unpin,
{
    let (deadline, _) = activity.next_deadline(timeouts.without_release());
    tokio::select! {
        read = std::future::poll_fn(|cx| read_some(Pin::new(&mut *stream), cx)) => match read {
            Ok(bytes) if bytes.is_empty() => Parked::Close,
            Ok(bytes) => Parked::Woke(bytes),
            Err(e) => {
                tracing::debug!(error = %e, "connection ended with an error");
                Parked::Failed
            }
        },
        () = tokio::time::sleep_until(deadline) => Parked::Close,
        () = shutdown.reached(Phase::Draining) => Parked::Close,
    }
}

/// The first bytes a parked connection's client sends (empty at the end
/// of the stream).
///
/// The buffer lives on the stack for one poll, so a parked connection
/// holds none between polls; whatever of a larger request does not fit
/// stays in the TLS stream for hyper to read.
fn read_some<S: AsyncRead>(
    stream: Pin<&mut S>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<Bytes>> {
    let mut buf = [0u8; 2048];
    let mut read = ReadBuf::new(&mut buf);
    ready!(stream.poll_read(cx, &mut read))?;
    Poll::Ready(Ok(Bytes::copy_from_slice(read.filled())))
}

/// One hyper HTTP/1.1 connection, which on finishing either hands back
/// its parts (asked to release) or closes the stream (done, or asked to
/// close); or, for a parked connection, only the closing.
struct Http1<S, Svc>
where
    Svc: HttpService<Incoming>,
{
    conn: Option<Connection<Io<S>, Svc>>,
    /// Hand back the parts instead of closing.
    release: bool,
    closing: Option<Io<S>>,
}

impl<S, Svc> Http1<S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Svc: Service,
{
    fn watched(conn: Connection<Io<S>, Svc>) -> Watched<Self> {
        Watched {
            conn: Box::pin(Self {
                conn: Some(conn),
                release: false,
                closing: None,
            }),
            close: Self::close,
            release: Some(Self::release),
            closing: false,
        }
    }

    fn closing(io: Io<S>) -> Watched<Self> {
        Watched {
            conn: Box::pin(Self {
                conn: None,
                release: false,
                closing: Some(io),
            }),
            close: Self::close,
            release: None,
            closing: true,
        }
    }

    fn close(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.release = false;
        if let Some(conn) = this.conn.as_mut() {
            Pin::new(conn).graceful_shutdown();
        }
    }

    fn release(self: Pin<&mut Self>) {
        let this = self.get_mut();
        if let Some(conn) = this.conn.as_mut() {
            this.release = true;
            Pin::new(conn).graceful_shutdown();
        }
    }
}

impl<S, Svc> Future for Http1<S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Svc: Service,
{
    /// `Some`: released, here are the parts; `None`: closed.
    type Output = Result<Option<Parts<Io<S>, Svc>>, hyper::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(conn) = this.conn.as_mut() {
            ready!(conn.poll_without_shutdown(cx))?;
            let parts = this.conn.take().map(Connection::into_parts);
            match parts {
                Some(parts) if this.release => return Poll::Ready(Ok(Some(parts))),
                Some(parts) => this.closing = Some(parts.io),
                None => {}
            }
        }
        if let Some(io) = this.closing.as_mut() {
            // A failure to close is the client's business: the connection
            // is over either way, and counted as closed.
            let _ = ready!(hyper::rt::Write::poll_shutdown(Pin::new(io), cx));
            this.closing = None;
        }
        Poll::Ready(Ok(None))
    }
}

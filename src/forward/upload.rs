//! [`UpstreamBody`]: the client's request body on its way to the backend.
//! It streams frame by frame, never buffering a whole body, and records
//! its [`Progress`]: when a frame was last handed to the backend
//! connection, whether it has ended, and whether it is waiting for the
//! client. The forwarder's response timeout runs from the last progress,
//! so a long upload that keeps moving is not a slow backend, a backend
//! that stops reading is one, and a client that stops sending is told so.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::frame::PolledFrame;

/// How a request body's delivery is going; shared by the body, which
/// updates it, and the forwarder, which times out on it.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    /// Milliseconds after `epoch` when a frame was last handed over (or
    /// the body created).
    last_ms: AtomicU64,
    ended: AtomicBool,
    /// The last poll found no data from the client yet.
    waiting_on_client: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    /// When the body last moved.
    pub fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }

    /// Every frame has been handed to the backend connection.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The body is stuck because the client sends nothing, rather than
    /// because the backend reads nothing.
    pub fn waiting_on_client(&self) -> bool {
        !self.ended() && self.waiting_on_client.load(Ordering::Acquire)
    }
}

/// The client's request body, forwarded.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    /// `None` for a request with no body (most of them): nothing to
    /// watch, and nothing allocated to watch it.
    progress: Option<Arc<Progress>>,
}

/// What the forwarder watches of a request body while it waits for the
/// response.
#[derive(Debug)]
pub enum Watch {
    /// The request had no body: it was whole when it was sent.
    Empty {
        sent: Instant,
    },
    Streaming(Arc<Progress>),
}

impl Watch {
    /// When the body last moved.
    pub fn last(&self) -> Instant {
        match self {
            Self::Empty { sent } => *sent,
            Self::Streaming(p) => p.last(),
        }
    }

    /// See [`Progress::waiting_on_client`].
    pub fn waiting_on_client(&self) -> bool {
        match self {
            Self::Empty { .. } => false,
            Self::Streaming(p) => p.waiting_on_client(),
        }
    }
}

impl UpstreamBody {
    pub fn new(inner: Incoming) -> (Self, Watch) {
        if inner.is_end_stream() {
            let watch = Watch::Empty {
                sent: Instant::now(),
            };
            return (
                Self {
                    inner,
                    progress: None,
                },
                watch,
            );
        }
        let progress = Arc::new(Progress::new());
        (
            Self {
                inner,
                progress: Some(progress.clone()),
            },
            Watch::Streaming(progress),
        )
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame<hyper::Error> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Some(p) = &self.progress else {
            return polled;
        };
        p.waiting_on_client
            .store(polled.is_pending(), Ordering::Release);
        let frame = ready!(polled);
        p.touch();
        if frame.is_none() || self.inner.is_end_stream() {
            p.ended.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

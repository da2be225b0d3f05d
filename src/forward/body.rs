//! [`ResponseBody`]: what the client receives: a backend response body,
//! which returns its connection to the pool after its last frame, or a
//! small local body (403, 404, ...) from static bytes. It streams frame by
//! frame (as the request body does, [`super::upload`]), so memory per
//! request is bounded by hyper's frame buffers whatever the body size.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::frame::PolledFrame;
use super::pool::Lease;

/// A response body for the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// From a backend; the lease goes back to the pool at the end.
    Upstream {
        inner: Incoming,
        lease: Option<Lease>,
    },
    /// Generated here.
    Local(Option<Bytes>),
}

impl ResponseBody {
    pub fn local(bytes: Bytes) -> Self {
        Self::Local(Some(bytes))
    }

    pub fn upstream(inner: Incoming, lease: Lease) -> Self {
        let mut body = Self::Upstream {
            inner,
            lease: Some(lease),
        };
        body.release_if_done();
        body
    }

    /// A backend body that has ended frees its connection for reuse.
    fn release_if_done(&mut self) {
        if let Self::Upstream { inner, lease } = self
            && inner.is_end_stream()
            && let Some(lease) = lease.take()
        {
            lease.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        match &mut *self {
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream { inner, lease } => {
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
                match &frame {
                    // An error leaves the connection in an unknown state:
                    // dropping the lease closes it.
                    Some(Err(_)) => drop(lease.take()),
                    None => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    Some(Ok(_)) => self.release_if_done(),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Local(bytes) => bytes.is_none(),
            Self::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

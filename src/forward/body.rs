//! [`ResponseBody`]: what the client receives: a backend response body,
//! read off its connection as the client's side asks for it, which returns
//! the connection to the pool after its last byte, or a small local body
//! (403, 404, ...) from static bytes. It streams piece by piece (as the
//! request body does, [`super::upload`]), so memory per request is bounded
//! by the connection's read buffer whatever the body size.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::client::{BackendError, Reading};
use super::frame::PolledFrame;
use super::pool::Lease;

/// A response body for the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// From a backend, read off the leased connection; the lease goes
    /// back to the pool at the end (or is dropped, closing the
    /// connection, when the body failed or the connection cannot be
    /// reused).
    Upstream {
        reading: Reading,
        lease: Option<Lease>,
    },
    /// Generated here.
    Local(Option<Bytes>),
}

impl ResponseBody {
    pub fn local(bytes: Bytes) -> Self {
        Self::Local(Some(bytes))
    }

    pub fn upstream(reading: Reading, lease: Lease) -> Self {
        let mut body = Self::Upstream {
            reading,
            lease: Some(lease),
        };
        body.release_if_done();
        body
    }

    /// A backend body that has ended frees its connection for reuse, when
    /// the response left it fit to carry another request.
    fn release_if_done(&mut self) {
        if let Self::Upstream { reading, lease } = self
            && reading.is_end_stream()
            && let Some(mut lease) = lease.take()
            && reading.reusable(lease.conn())
        {
            lease.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BackendError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame<BackendError> {
        match &mut *self {
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream { reading, lease } => {
                let Some(conn) = lease.as_mut().map(Lease::conn) else {
                    return Poll::Ready(None);
                };
                let polled = ready!(reading.poll_data(conn, cx));
                match &polled {
                    // An error leaves the connection in an unknown state:
                    // dropping the lease closes it.
                    Some(Err(_)) => drop(lease.take()),
                    None | Some(Ok(_)) => self.release_if_done(),
                }
                Poll::Ready(polled.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Local(bytes) => bytes.is_none(),
            Self::Upstream { reading, .. } => reading.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Upstream { reading, .. } => reading.size_hint(),
        }
    }
}

//! Bodies.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use sha2::{Digest, Sha256};

use super::*;

/// Request and response bodies used by the client and the backend.
pub type BoxedBody = UnsyncBoxBody<Bytes, io::Error>;

pub fn empty() -> BoxedBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> BoxedBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// SHA-256 and length of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub sha256: String,
    pub bytes: u64,
}

pub type HashSlot = Arc<Mutex<Option<Hashed>>>;

const CHUNK: usize = 64 * 1024;

/// `len` pseudo-random bytes (xorshift64*), generated 64 KiB at a time and
/// hashed as they go out; never held whole. The hash lands in the slot
/// just before the last chunk is handed over.
pub struct RandomBody {
    state: u64,
    remaining: u64,
    total: u64,
    exact: bool,
    hasher: Sha256,
    slot: HashSlot,
    before_last: Option<Box<dyn FnOnce() + Send>>,
}

impl RandomBody {
    pub fn new(seed: u64, len: u64) -> (Self, HashSlot) {
        let slot = HashSlot::default();
        let body = Self {
            state: seed | 1,
            remaining: len,
            total: len,
            exact: true,
            hasher: Sha256::new(),
            slot: slot.clone(),
            before_last: None,
        };
        (body, slot)
    }

    /// No exact size hint: HTTP/1.1 sends it chunked.
    pub fn chunked(mut self) -> Self {
        self.exact = false;
        self
    }

    /// Runs `f` when the last chunk is about to be handed over.
    pub fn before_last(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.before_last = Some(Box::new(f));
        self
    }

    pub fn boxed(self) -> BoxedBody {
        self.boxed_unsync()
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

impl Body for RandomBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(this.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut chunk = vec![0u8; n];
        this.fill(&mut chunk);
        this.hasher.update(&chunk);
        this.remaining -= n as u64;
        if this.remaining == 0 {
            let digest = std::mem::take(&mut this.hasher).finalize();
            *this.slot.lock().unwrap() = Some(Hashed {
                sha256: hex(&digest),
                bytes: this.total,
            });
            if let Some(f) = this.before_last.take() {
                f();
            }
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Hashes a body frame by frame; `progress` (if any) counts bytes as they
/// arrive.
pub async fn hash_body<B>(mut body: B, progress: Option<&AtomicU64>) -> Result<Hashed, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(chunk) = frame?.data_ref() {
            hasher.update(chunk);
            bytes += chunk.len() as u64;
            if let Some(p) = progress {
                p.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    }
    Ok(Hashed {
        sha256: hex(&hasher.finalize()),
        bytes,
    })
}

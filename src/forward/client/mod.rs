//! portcullis's HTTP/1.1 client for the backend hop.
//!
//! hyper's client runs every backend connection as a task of its own: a
//! request crosses to it over a channel, its response comes back over a
//! oneshot, and the response body over another channel, so each forwarded
//! request paid for two task hand-offs, three allocations and a second
//! copy of hyper's HTTP/1.1 machinery. Here the request's own future
//! writes to the connection and reads the response head
//! ([`Conn::send`]), and the response body is read off the connection as
//! the client's side polls it ([`Reading`]); the connection itself, with
//! its buffers, goes back to the pool after the body's last byte.
//!
//! Only what the backend hop needs: HTTP/1.1 requests in origin form,
//! responses delimited by length, chunks or close (RFC 9112 §6.3), interim
//! responses passed over, and strict framing: a response that could be
//! read two ways is refused, and a connection is reused only when its
//! response ended exactly where its framing said.

pub mod chunked;
mod conn;
pub mod head;

pub use conn::{BackendError, Conn, Reading, SendError};
pub use head::ResponseHead;

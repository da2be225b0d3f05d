//! The one signature every body the proxy passes on shares.

use std::task::Poll;

use bytes::Bytes;
use http_body::Frame;

/// What `Body::poll_frame` returns for every body the proxy passes on: the
/// backend's response ([`super::body`]), the client's upload
/// ([`super::upload`]) and the response as served and logged. `E` is the
/// side that can fail: the client's ([`hyper::Error`]) or the backend's
/// ([`super::client::BackendError`]).
pub type PolledFrame<E> = Poll<Option<Result<Frame<Bytes>, E>>>;

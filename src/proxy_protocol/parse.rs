//! PROXY protocol header parsing (v1 text and v2 binary) as a pure function
//! over the bytes received so far.
//!
//! [`parse`] does no I/O and never allocates or panics, whatever the input.
//! What its answer promises:
//!
//! - `Complete { consumed, .. }`: `consumed` is exactly the header length and
//!   `consumed <= buf.len()`; no byte after it (the TLS ClientHello) was looked
//!   at for the decision.
//! - `Incomplete { total, max_total }`: `buf.len() < max_total`, and when
//!   `total` is known it equals `max_total`. A caller that never reads past
//!   `max_total` never pulls application bytes off a v2 connection, and at most
//!   [`V1_MAX_LEN`] bytes in all for v1 (v1 has no length field to tell where
//!   the line ends).
//! - Decisions are final: once the answer is `NotProxy`, `Complete` or an
//!   error, more bytes of the same stream give the same answer, and every
//!   strict prefix of a valid header is `Incomplete`. The v2 fixed fields are
//!   checked as soon as each byte arrives (and the length cap before waiting
//!   for the payload), so a broken sender is refused without waiting for the
//!   read timeout; a v1 line is only judged once its CRLF is in, as the spec
//!   requires.
//!
//! The reference is haproxy's `doc/proxy-protocol.txt`; deliberate departures
//! and choices are noted where they are made.

use super::header::{Limits, ParseError, Parsed, Signature, V2_FIXED_LEN, signature};
use super::{v1, v2};

/// Parses the start of a connection. See the module docs for the contract.
///
/// # Errors
///
/// The bytes start with a PROXY signature but are not a valid header; the
/// connection must be dropped.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, ParseError> {
    match signature(buf) {
        Signature::NotProxy => Ok(Parsed::NotProxy),
        // Until the version is known, 16 bytes is safe for both: a v2 header
        // is at least that long and a v1 line is read by `max_total` anyway.
        Signature::Partial => Ok(Parsed::Incomplete {
            total: None,
            max_total: V2_FIXED_LEN,
        }),
        Signature::V1 => v1::parse(buf),
        Signature::V2 => v2::parse(buf, limits),
    }
}

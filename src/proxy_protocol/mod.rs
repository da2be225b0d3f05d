//! PROXY protocol (v1 and v2) on accepted connections: who the client really
//! is when we sit behind a cloud load balancer (AWS NLB/PrivateLink, Azure
//! Private Link, GCP PSC).
//!
//! The work is split so that the part that touches untrusted bytes is easy to
//! test exhaustively:
//!
//! - [`parse()`] is a pure function from the bytes received so far to a
//!   decision (incomplete / complete / not PROXY / error). No I/O, no
//!   allocation, no panics. It dispatches on the signature to `v1` (the text
//!   line) and `v2` (the binary header, its TLVs, the cloud vendor TLVs).
//! - [`crc32c`] is the checksum the v2 `CRC32C` TLV needs.
//! - [`read`] is the thin async shell: trust checks, timeout, reading exactly
//!   as many bytes as the parser allows, and [`Prefixed`] to hand read-ahead
//!   bytes back to the TLS layer.

pub mod crc32c;
pub mod header;
pub mod parse;
pub mod read;
mod v1;
mod v2;

pub use header::{
    Command, DEFAULT_V2_MAX_PAYLOAD, Limits, ParseError, Parsed, ProxyHeader, V1_MAX_LEN, Version,
};
pub use parse::parse;
pub use read::{Accepted, DEFAULT_READ_TIMEOUT, Mode, Prefixed, ReadError, Settings, read_header};

#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod read_tests;
#[cfg(test)]
mod v2_tests;

//! What portcullis's integration tests, benches, fuzz targets and load
//! generator share, written once:
//!
//! - [`proxy`]: PROXY v1 lines and v2 headers (CRC32C, the cloud endpoint
//!   TLVs, and deliberately malformed ones), built from the spec rather than
//!   from the proxy's parser, so a round trip checks the parser;
//! - [`pki`]: a throwaway CA and the leaf certificates it signs;
//! - [`oracle`]: the policy decision as SPEC §1 reads, one rule at a time,
//!   to check the compiled matcher against;
//! - [`synth`]: seeded synthetic snapshots of fleet-like shape;
//! - [`TempDir`]: a temporary directory with a file-writing helper;
//! - [`harness`]: the integration tests' world: a real backend, the proxy
//!   (in process or as the binary), and clients that speak to it.
//!
//! It depends on the `portcullis` library for the snapshot model, so it is
//! for code outside the crate only: a `#[cfg(test)]` module inside `src/`
//! that used it would see a second copy of every portcullis type. (The
//! unit tests compile [`pki`]'s file by path instead: it needs no
//! portcullis type.)

#![forbid(unsafe_code)]

pub mod harness;
pub mod oracle;
pub mod pki;
pub mod proxy;
pub mod synth;
mod tempdir;

pub use tempdir::TempDir;

//! Shared harness for the end-to-end data-plane tests.
//!
//! Everything is real and on loopback: an rcgen CA and leaf, a hyper
//! HTTP/1.1 backend started by the test, the proxy itself (`Server::bind`
//! on `127.0.0.1:0`), and a client that writes raw PROXY bytes, speaks TLS
//! with the test CA as its only root, then HTTP/1.1 or HTTP/2 by ALPN.
//! Every network wait is bounded by [`WAIT`].

mod backend;
mod binary;
mod body;
mod certs;
mod client;
mod config;
pub mod etcd;
mod raw;
mod remote_cluster;
mod serve;
mod test_proxy;
mod world;

pub use backend::*;
pub use binary::*;
pub use body::*;
pub use certs::*;
pub use client::*;
pub use config::*;
pub use raw::*;
pub use remote_cluster::*;
pub use serve::*;
pub use test_proxy::*;
pub use world::*;

/// PROXY v1 lines and v2 headers (the kit's encoder, written from the
/// protocol description) and the CRC32C they are checked with.
pub use crate::proxy::{
    Crc, TLV_AWS, TLV_AZURE, TLV_CRC32C, TLV_GCP, V2, V2_SIGNATURE, crc32c, v1 as proxy_v1, v1_from,
};

use std::future::Future;
use std::time::Duration;

/// Upper bound on any single network wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// The zone every deployment host name lives under.
pub const ZONE: &str = "es.test";

/// Exact SPEC §6 bodies.
pub const FORBIDDEN_BODY: &str = r#"{"ok":false,"message":"Forbidden due to traffic filtering. Please see the Elastic documentation on Traffic Filtering for more information."}"#;
pub const UNKNOWN_BODY: &str = r#"{"ok":false,"message":"Unknown resource."}"#;
pub const MISDIRECTED_BODY: &str = r#"{"ok":false,"message":"Misdirected request."}"#;

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    within_for(WAIT, what, f).await
}

/// Awaits `f`, failing the test if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

//! The etcd snapshot source (SPEC §3.1): one key per deployment and per
//! policy under a prefix, read once in pages and then followed with a
//! watch; each entry validated on its own.
//!
//! - [`keys`]: the key layout, shared with `portcullis publish`;
//! - [`client`]: settings and connecting;
//! - [`entries`]: the pure core, what a batch of changes does to the
//!   entries in force;
//! - [`read`]: reading the prefix in pages at one revision, shared with
//!   `portcullis publish`;
//! - [`follow`]: the read-then-watch loop.

pub mod client;
pub mod entries;
pub mod follow;
pub mod keys;
pub mod read;

pub use client::{EtcdError, EtcdSettings, connect};
pub use follow::{Status, follow};

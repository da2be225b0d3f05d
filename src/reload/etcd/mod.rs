//! The etcd snapshot source (SPEC §3.1): one key per deployment and per
//! policy under a prefix, followed with a watch.

pub mod keys;

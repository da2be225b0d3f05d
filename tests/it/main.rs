//! The integration tests, one binary: the proxy in process (and, for the
//! command line, shutdown and the shipped configs, as the real binary)
//! against real backends and clients on loopback. The world they share is
//! `portcullis_test_kit::harness`. `tests/hostile.rs` is a binary of its
//! own: it installs a process-wide panic hook and fails on any panic
//! outside test code, which other tests running beside it could trip.

mod cli;
mod data_plane;
mod data_plane_proxy_protocol;
mod data_plane_requests;
mod deploy_files;
mod e2e_real_clients;
mod etcd_cluster;
mod etcd_follow;
mod etcd_publish;
mod faults;
mod idle_release;
mod policy_incremental;
mod policy_props;
mod policy_semantics;
mod reload;
mod reload_storm;
mod remote_cluster;
mod shutdown;
mod snapshot_validation;
mod timeouts;

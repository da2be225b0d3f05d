//! portcullis: the data-plane ingress filter in front of hosted
//! Elasticsearch deployments.
//!
//! Modules follow a connection through the proxy:
//! [`server`] accepts it, [`proxy_protocol`] learns who the client is
//! ([`endpoint`]), [`tls`] terminates TLS, [`route`] finds the deployment,
//! [`policy`] decides, [`forward`] carries allowed requests to the backend
//! and [`response`] answers the rest. [`passthrough`] is the remote-cluster
//! listener: TLS not terminated, routed by SNI, spliced. [`reload`] keeps the policy snapshot
//! current, [`metrics`] and [`explain`] make it observable.

// Three audited exceptions, `memory::release_free_memory` and
// `memory::fix_allocator_thresholds` (FFI calls into the C allocator) and
// `background::set_idle_policy` (one system call); everything else is
// safe Rust.
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod backends;
pub mod background;
pub mod config;
pub mod demo;
pub mod endpoint;
pub mod error;
pub mod explain;
pub mod forward;
pub mod memory;
pub mod metrics;
pub mod passthrough;
pub mod policy;
pub mod proxy_protocol;
pub mod publish;
pub mod reload;
pub mod request_id;
pub mod response;
pub mod route;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod tls;

use std::sync::Arc;

pub use config::Config;
pub use error::Error;
pub use settings::{Listeners, Settings};
pub use shutdown::Shutdown;

use access_log::AccessLog;
use admin::{Admin, Readiness};
use reload::{Opened, Reloader, SnapshotMetrics, StateDir, Store};
use route::Router;
use server::Server;
use shutdown::Phase;

/// Loads `config` into [`Settings`], binds its listeners, and runs
/// [`serve`]: what `portcullis run` and `portcullis demo` do.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let settings = config.settings()?;
    let listeners = Listeners::bind(&settings.listen)?;
    serve(settings, listeners, shutdown).await
}

/// Runs the proxy on `listeners` until `shutdown` completes.
///
/// Start-up order: the admin API first (so `/healthz` answers during
/// boot), then the data plane; the snapshot is loaded in the background,
/// and until one is in force requests get 503 and `/readyz` says not
/// ready.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let registry = metrics::registry();
    let store = Arc::new(Store::new());
    let snapshot = &settings.snapshot;
    let reloader = Arc::new(Reloader::new(
        store.clone(),
        settings.policy,
        snapshot.state_dir.clone().map(StateDir::new),
        snapshot.max_bytes,
        SnapshotMetrics::register(&registry).map_err(server::ServerError::from)?,
    ));
    // Opened before anything is served: a URL that cannot be fetched from
    // is a configuration error, reported at once.
    let source = Opened::new(&snapshot.source, snapshot.max_bytes)?;

    let readiness = Arc::new(Readiness::default());
    let Listeners {
        data,
        admin: admin_listener,
        remote_cluster,
    } = listeners;
    let access_sink =
        (settings.log.access.is_some() && AccessLog::enabled_by_filter()).then(AccessLog::stdout);
    let server = Server::new(
        &settings,
        data,
        remote_cluster,
        store,
        &registry,
        access_sink,
    )?;
    let admin = Admin::new(
        reloader.clone(),
        registry,
        Router::new(&settings.server.zones),
        readiness.clone(),
        settings.admin.token_file.as_deref(),
        snapshot.max_bytes,
        settings.admin.body_timeout,
    )?;
    if let Ok(addr) = admin_listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(admin),
        shutdown.clone(),
    ));
    for addr in server.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    for addr in server.remote_cluster_addrs() {
        tracing::info!(%addr, filter = settings.remote_cluster.filter, "remote-cluster pass-through listening");
    }
    readiness.set_listening();

    let reload_now = Arc::new(tokio::sync::Notify::new());
    spawn_sighup(reload_now.clone());
    let poll = settings.snapshot.poll_interval;
    let watcher = tokio::spawn(
        reloader
            .clone()
            .run(source, poll, reload_now, shutdown.clone()),
    );
    let draining = {
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.reached(Phase::Draining).await;
            readiness.set_draining();
        })
    };
    server.run(shutdown).await;
    watcher.abort();
    draining.abort();
    Ok(())
}

/// SIGHUP: read the snapshot source now.
fn spawn_sighup(now: Arc<tokio::sync::Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reading the snapshot source now");
                    now.notify_one();
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; snapshots reload on the poll interval only")
        }
    }
}

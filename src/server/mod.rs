//! The data plane: listeners, the accept loop, and what every connection
//! shares ([`Proxy`]).
//!
//! - Connections over `server.max_connections` are accepted and closed at
//!   once (counted as `connections_total{result="limit"}`): cheaper than
//!   leaving them in the kernel backlog, and the load balancer sees a fast
//!   failure it can retry elsewhere.
//! - Accept errors such as running out of file descriptors back off
//!   (1 ms doubling to 1 s) instead of spinning.
//! - On drain, listeners close (the port stops answering), open
//!   connections are asked to finish (HTTP/1.1 closes after the current
//!   response, HTTP/2 sends GOAWAY), and after `server.shutdown_grace`
//!   whatever is left is dropped.
//! - The remote-cluster pass-through listeners (`[remote_cluster] listen`,
//!   [`crate::passthrough`]) share the connection limit, the drain and the
//!   grace period with the HTTPS listeners.

mod activity;
mod connection;
mod http1;
mod metrics;
mod service;
mod watchdog;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

pub use metrics::{ConnectionEnd, ServerMetrics};

use crate::access_log::{self, AccessLog, WriterThread};
use crate::forward::metrics::UpstreamMetrics;
use crate::forward::{ActiveChecks, Forwarder};
use crate::passthrough::PassThrough;
use crate::proxy_protocol;
use crate::reload::Store;
use crate::request_id::RequestIds;
use crate::route::Router;
use crate::settings::{self, BindError, HttpSettings, Settings};
use crate::shutdown::{self, Phase, Shutdown};
use crate::tls::{self, TlsError};

const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often to look whether idle connections released enough memory to
/// hand back to the OS (`memory::trim_after_releases`). Rarely: a trim
/// takes the allocator's locks for a moment, and on connections that go
/// idle and wake all the time (1000 connections, a request each every
/// 0.5 s) trimming every second showed in p99.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Everything connections and requests share.
pub struct Proxy {
    pub(crate) snapshot: Arc<Store>,
    pub(crate) router: Router,
    pub(crate) forwarder: Forwarder,
    pub(crate) proxy_protocol: proxy_protocol::Settings,
    pub(crate) tls: tls::Acceptor,
    pub(crate) tls_handshake_timeout: Duration,
    pub(crate) http: HttpSettings,
    pub(crate) metrics: ServerMetrics,
    pub(crate) upstream_metrics: UpstreamMetrics,
    /// `None` when the access log is off.
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) request_ids: RequestIds,
    /// Set once draining starts: `/_health` answers 503 from then on.
    pub(crate) draining: AtomicBool,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot register metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the access log")]
    AccessLog(#[from] access_log::StartError),
}

/// Bound listeners, ready to run.
pub struct Server {
    proxy: Arc<Proxy>,
    access_log: Option<WriterThread>,
    listeners: Vec<TcpListener>,
    /// The remote-cluster pass-through and its listeners, when configured.
    remote_cluster: Option<(Arc<PassThrough>, Vec<TcpListener>)>,
    health_checks: Option<ActiveChecks>,
    max_connections: usize,
    grace: Duration,
}

impl Server {
    /// The data plane on `data` (HTTPS) and `remote_cluster`
    /// (pass-through) listeners, already bound. The access log goes to
    /// `access_sink` when `settings.log.access` is on and a sink is given
    /// (`serve` passes stdout; tests and benches a sink they read back).
    pub fn new(
        settings: &Settings,
        data: Vec<TcpListener>,
        remote_cluster: Vec<TcpListener>,
        store: Arc<Store>,
        registry: &Registry,
        access_sink: Option<access_log::Sink>,
    ) -> Result<Self, ServerError> {
        let tls = tls::server_config(&settings.tls)?;
        let s = &settings.server;
        let upstream = &settings.upstream;
        let (access_log, access_thread) = match (settings.log.access, access_sink) {
            (Some(writer), Some(sink)) => {
                let (log, thread) = AccessLog::start(settings.log.format, writer, sink, registry)?;
                (Some(log), Some(thread))
            }
            _ => (None, None),
        };
        let remote_cluster = if remote_cluster.is_empty() {
            None
        } else {
            let pass = PassThrough::new(
                settings.remote_cluster,
                upstream.pool.ejection,
                settings.proxy_protocol.clone(),
                Router::new(&s.zones),
                store.clone(),
                access_log.clone(),
                registry,
            )?;
            Some((Arc::new(pass), remote_cluster))
        };
        let proxy = Proxy {
            snapshot: store,
            router: Router::new(&s.zones),
            forwarder: Forwarder::new(upstream.pool, upstream.response_timeout),
            proxy_protocol: settings.proxy_protocol.clone(),
            tls: tls::Acceptor::from(tls),
            tls_handshake_timeout: settings.tls.handshake_timeout,
            http: s.http,
            metrics: ServerMetrics::register(registry)?,
            upstream_metrics: UpstreamMetrics::register(registry)?,
            access_log,
            request_ids: RequestIds::new(),
            draining: AtomicBool::new(false),
        };
        Ok(Self {
            proxy: Arc::new(proxy),
            access_log: access_thread,
            listeners: data,
            remote_cluster,
            health_checks: upstream.health_checks.clone(),
            max_connections: s.max_connections,
            grace: s.shutdown_grace,
        })
    }

    /// [`Server::new`] on `settings.listen`'s data and remote-cluster
    /// addresses, bound here (the admin address is not this server's).
    pub fn bind(
        settings: &Settings,
        store: Arc<Store>,
        registry: &Registry,
        access_sink: Option<access_log::Sink>,
    ) -> Result<Self, ServerError> {
        let data = settings::bind(&settings.listen.data)?;
        let remote_cluster = settings::bind(&settings.listen.remote_cluster)?;
        Self::new(settings, data, remote_cluster, store, registry, access_sink)
    }

    /// The bound addresses (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound remote-cluster pass-through addresses (port 0 resolved);
    /// empty when there is no `[remote_cluster] listen`.
    pub fn remote_cluster_addrs(&self) -> Vec<SocketAddr> {
        self.remote_cluster
            .iter()
            .flat_map(|(_, listeners)| listeners.iter().filter_map(|l| l.local_addr().ok()))
            .collect()
    }

    /// Serves until `shutdown` drains, then finishes open connections
    /// within the grace period.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let (inner, conns) = shutdown::channel();
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.max_connections));
        for listener in self.listeners {
            tracker.spawn(accept_loop(
                self.proxy.clone(),
                listener,
                limit.clone(),
                tracker.clone(),
                conns.clone(),
            ));
        }
        let mut pass_sweeper = None;
        if let Some((pass, listeners)) = self.remote_cluster.take() {
            for listener in listeners {
                tracker.spawn(accept_loop(
                    pass.clone(),
                    listener,
                    limit.clone(),
                    tracker.clone(),
                    conns.clone(),
                ));
            }
            let every = (pass.pool().settings().connect_timeout).max(Duration::from_secs(1));
            pass_sweeper = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    pass.pool().sweep();
                }
            }));
        }
        let sweeper = tokio::spawn(sweep_pool(self.proxy.clone()));
        let trimmer = tokio::spawn(crate::memory::trim_after_releases(TRIM_EVERY));
        let checker = self
            .health_checks
            .map(|checks| tokio::spawn(check_backends(self.proxy.clone(), checks)));

        shutdown.reached(Phase::Draining).await;
        self.proxy.draining.store(true, Ordering::Relaxed);
        tracing::info!(grace = ?self.grace, "draining: listeners closed, finishing open connections");
        inner.drain();
        tracker.close();
        tokio::select! {
            () = tracker.wait() => {}
            () = tokio::time::sleep(self.grace) => {
                tracing::warn!(open = tracker.len(), "grace period over, closing remaining connections");
            }
            () = shutdown.reached(Phase::Abort) => {}
        }
        inner.abort();
        tracker.wait().await;
        sweeper.abort();
        trimmer.abort();
        if let Some(s) = pass_sweeper {
            s.abort();
        }
        if let Some(c) = checker {
            c.abort();
        }
        // Every request has ended (or was dropped, which logs it too):
        // write the last lines before the process exits.
        if let Some(mut thread) = self.access_log.take() {
            let _ =
                tokio::task::spawn_blocking(move || thread.close(access_log::CLOSE_TIMEOUT)).await;
        }
    }
}

/// What an accept loop hands its connections to: the HTTPS proxy or the
/// remote-cluster pass-through.
trait Handler: Send + Sync + 'static {
    /// A connection was closed at once: `server.max_connections` reached.
    fn over_limit(&self);
    /// Serves one accepted connection to its end, holding its permit
    /// until then.
    ///
    /// The permit comes in here rather than being held by a wrapper
    /// around this future: an async block that awaits a future it
    /// captured keeps room for that future twice, and this one is the
    /// connection's state for as long as it is open.
    fn serve(self: Arc<Self>, accepted: Accepted) -> impl Future<Output = ()> + Send;
}

/// A connection as the accept loop hands it over.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
    /// Its slot under `server.max_connections`, held until it ends.
    permit: OwnedSemaphorePermit,
}

impl Accepted {
    fn into_parts(self) -> (TcpStream, SocketAddr, Shutdown, OwnedSemaphorePermit) {
        (self.tcp, self.peer, self.shutdown, self.permit)
    }
}

impl Handler for Proxy {
    fn over_limit(&self) {
        self.metrics.connection_ended(ConnectionEnd::Limit);
    }

    async fn serve(self: Arc<Self>, accepted: Accepted) {
        let (tcp, peer, shutdown, _permit) = accepted.into_parts();
        let _open = self.metrics.connection_opened();
        connection::serve(self, tcp, peer, shutdown).await;
    }
}

impl Handler for PassThrough {
    fn over_limit(&self) {
        PassThrough::over_limit(self);
    }

    async fn serve(self: Arc<Self>, accepted: Accepted) {
        let (tcp, peer, shutdown, _permit) = accepted.into_parts();
        PassThrough::serve(self, tcp, peer, shutdown).await;
    }
}

async fn accept_loop<H: Handler>(
    handler: Arc<H>,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::ZERO;
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.reached(Phase::Draining) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::ZERO;
                a
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: accepting again at
                // once would fail again and spin a core.
                backoff = (backoff * 2).clamp(Duration::from_millis(1), ACCEPT_BACKOFF_MAX);
                tracing::warn!(error = %e, backoff = ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            handler.over_limit();
            drop(tcp);
            continue;
        };
        let accepted = Accepted {
            tcp,
            peer,
            shutdown: shutdown.clone(),
            permit,
        };
        tracker.spawn(handler.clone().serve(accepted));
    }
}

/// Errors that concern one connection (the peer went away before we
/// accepted it), not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn check_backends(proxy: Arc<Proxy>, checks: ActiveChecks) {
    let mut tick = tokio::time::interval(checks.interval);
    loop {
        tick.tick().await;
        proxy.forwarder.pool().check_nodes(&checks).await;
    }
}

async fn sweep_pool(proxy: Arc<Proxy>) {
    let every = (proxy.forwarder.pool().settings().idle_timeout / 2).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        proxy.forwarder.pool().sweep();
    }
}

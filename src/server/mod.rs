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
mod metrics;
mod service;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

pub use activity::Timeouts;
pub use metrics::ServerMetrics;

use crate::access_log::{self, AccessLog, WriterThread};
use crate::config::Config;
use crate::forward::metrics::UpstreamMetrics;
use crate::forward::{ActiveChecks, Ejection, Forwarder, PoolSettings};
use crate::passthrough::PassThrough;
use crate::proxy_protocol;
use crate::reload::Store;
use crate::request_id::RequestIds;
use crate::route::Router;
use crate::shutdown::{self, Phase, Shutdown};

/// Accept backlog: bursts of new connections from a load balancer wait
/// here rather than being refused by the kernel.
const LISTEN_BACKLOG: i32 = 4096;
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// HTTP limits and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub timeouts: Timeouts,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_accept_resets: usize,
    pub h2_max_local_error_resets: usize,
}

/// Everything connections and requests share.
pub struct Proxy {
    pub(crate) snapshot: Arc<Store>,
    pub(crate) router: Router,
    pub(crate) forwarder: Forwarder,
    pub(crate) proxy_protocol: proxy_protocol::Settings,
    pub(crate) tls: TlsAcceptor,
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
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
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
    /// Binds every `server.listen` address. The access log (unless
    /// `log.access = false`, or a `tracing` filter turns the
    /// `portcullis::access` target off) goes to stdout.
    pub fn bind(
        config: &Config,
        tls: Arc<rustls::ServerConfig>,
        store: Arc<Store>,
        registry: &Registry,
    ) -> Result<Self, ServerError> {
        let sink = (config.log.access && AccessLog::enabled_by_filter()).then(AccessLog::stdout);
        Self::bind_with_access_log(config, tls, store, registry, sink)
    }

    /// [`Server::bind`] with the access log going to `sink` (`None`: off),
    /// for tests and benches that read it back.
    pub fn bind_with_access_log(
        config: &Config,
        tls: Arc<rustls::ServerConfig>,
        store: Arc<Store>,
        registry: &Registry,
        access_sink: Option<access_log::Sink>,
    ) -> Result<Self, ServerError> {
        let s = &config.server;
        let ejection = Ejection {
            after_failures: config.upstream.eject_after_failures,
            base: config.upstream.eject_base,
            max: config.upstream.eject_max,
        };
        let (access_log, access_thread) = match access_sink {
            Some(sink) => {
                let (log, thread) = AccessLog::start(
                    config.log.format,
                    config.log.writer_settings(),
                    sink,
                    registry,
                )?;
                (Some(log), Some(thread))
            }
            None => (None, None),
        };
        let remote_cluster = match config.remote_cluster.listen.as_slice() {
            [] => None,
            addrs => {
                let pass = PassThrough::new(
                    config.remote_cluster_settings(),
                    ejection,
                    config.proxy_protocol_settings(),
                    Router::new(&s.zones),
                    store.clone(),
                    access_log.clone(),
                    registry,
                )?;
                let listeners = bind_all(addrs)?;
                Some((Arc::new(pass), listeners))
            }
        };
        let proxy = Proxy {
            snapshot: store,
            router: Router::new(&s.zones),
            forwarder: Forwarder::new(
                PoolSettings {
                    connect_timeout: config.upstream.connect_timeout,
                    idle_timeout: config.upstream.idle_timeout,
                    max_idle_per_backend: config.upstream.max_idle_per_backend,
                    ejection,
                },
                config.upstream.response_timeout,
            ),
            proxy_protocol: config.proxy_protocol_settings(),
            tls: TlsAcceptor::from(tls),
            tls_handshake_timeout: config.tls.handshake_timeout,
            http: HttpSettings {
                timeouts: Timeouts {
                    idle: s.idle_timeout,
                    request_header: s.request_header_timeout,
                },
                max_header_bytes: s.max_header_bytes,
                max_headers: s.max_headers,
                max_uri_bytes: s.max_uri_bytes,
                h2_max_concurrent_streams: s.http2_max_concurrent_streams,
                h2_max_pending_accept_resets: s.http2_max_pending_accept_reset_streams,
                h2_max_local_error_resets: s.http2_max_local_error_reset_streams,
            },
            metrics: ServerMetrics::register(registry)?,
            upstream_metrics: UpstreamMetrics::register(registry)?,
            access_log,
            request_ids: RequestIds::new(),
            draining: AtomicBool::new(false),
        };
        let listeners = bind_all(&s.listen)?;
        Ok(Self {
            proxy: Arc::new(proxy),
            access_log: access_thread,
            listeners,
            remote_cluster,
            health_checks: config
                .upstream
                .health_check_interval
                .map(|interval| ActiveChecks {
                    interval,
                    path: config.upstream.health_check_path.clone(),
                    timeout: config.upstream.health_check_timeout,
                }),
            max_connections: s.max_connections,
            grace: s.shutdown_grace,
        })
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

fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ServerError> {
    addrs
        .iter()
        .map(|&addr| listen(addr).map_err(|source| ServerError::Bind { addr, source }))
        .collect()
}

/// What an accept loop hands its connections to: the HTTPS proxy or the
/// remote-cluster pass-through.
trait Handler: Send + Sync + 'static {
    /// A connection was closed at once: `server.max_connections` reached.
    fn over_limit(&self);
    /// Serves one accepted connection to its end.
    fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send;
}

impl Handler for Proxy {
    fn over_limit(&self) {
        self.metrics.connection_ended("limit");
    }

    async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, shutdown: Shutdown) {
        let _open = self.metrics.connection_opened();
        connection::serve(self, tcp, peer, shutdown).await;
    }
}

impl Handler for PassThrough {
    fn over_limit(&self) {
        PassThrough::over_limit(self);
    }

    fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send {
        PassThrough::serve(self, tcp, peer, shutdown)
    }
}

/// A listening socket with SO_REUSEADDR, a deep backlog, and IPv6 sockets
/// kept IPv6-only (so `0.0.0.0:p` and `[::]:p` can both be listed).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
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
        let serve = handler.clone().serve(tcp, peer, shutdown.clone());
        tracker.spawn(async move {
            serve.await;
            drop(permit);
        });
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

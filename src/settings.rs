//! What the runtime takes: typed settings, built once from the
//! configuration file by [`crate::config`], and the listeners bound for
//! them.
//!
//! Nothing below `config/` reads TOML or keeps a default of its own: every
//! default is a named constant next to the code it tunes, filled in by
//! `config/` when the file leaves a key out. A settings value is valid by
//! construction where the type can say so (one snapshot source, never two
//! or none); the cross-field rules are checked on the way in.
//!
//! [`crate::serve`] takes these plus listeners that are already bound, so a
//! test binds port 0 itself and knows its ports before the proxy starts.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::access_log;
use crate::forward::{ActiveChecks, PoolSettings};
use crate::passthrough;
use crate::policy::PolicyOptions;
use crate::proxy_protocol;
pub use crate::reload::SnapshotSource;
use crate::tls;

/// Everything [`crate::serve`] needs besides its listeners.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: ListenAddrs,
    pub server: ServerSettings,
    pub proxy_protocol: proxy_protocol::Settings,
    pub tls: tls::Settings,
    pub upstream: UpstreamSettings,
    pub snapshot: SnapshotSettings,
    pub admin: AdminSettings,
    pub policy: PolicyOptions,
    pub log: LogSettings,
    pub remote_cluster: passthrough::Settings,
}

/// Where to listen; [`Listeners::bind`] turns them into sockets.
#[derive(Debug, Clone)]
pub struct ListenAddrs {
    /// HTTPS listeners (`server.listen`).
    pub data: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// Remote-cluster pass-through listeners; none when empty.
    pub remote_cluster: Vec<SocketAddr>,
}

/// The HTTPS data plane.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Zone suffixes deployment host names live under (SPEC §2).
    pub zones: Vec<String>,
    /// Connections beyond this are accepted and closed at once.
    pub max_connections: usize,
    /// How long open connections get to finish once draining starts.
    pub shutdown_grace: Duration,
    pub http: HttpSettings,
}

/// Connections to the deployments' nodes.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub pool: PoolSettings,
    /// Until the response head arrives.
    pub response_timeout: Duration,
    /// `None`: passive ejection only.
    pub health_checks: Option<ActiveChecks>,
}

/// Where snapshots come from, and what to do with them.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub source: SnapshotSource,
    pub poll_interval: Duration,
    /// Largest snapshot accepted from any source, `PUT /snapshot` included.
    pub max_bytes: usize,
    /// Where the last applied snapshot is kept for the next start.
    pub state_dir: Option<PathBuf>,
}

/// The admin API (besides its listener).
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Bearer token for `PUT /snapshot`; without it, `PUT` is refused.
    pub token_file: Option<PathBuf>,
    /// Longest pause while reading a request body.
    pub body_timeout: Duration,
}

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

/// The timeouts a connection's watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No request in flight for this long: the connection is closed.
    pub idle: Duration,
    /// From a request's first byte to its last header byte (slowloris).
    pub request_header: Duration,
    /// HTTP/1.1: no request in flight for this long, and the connection
    /// gives back its HTTP buffers until the client sends again. `None`:
    /// never (HTTP/2, or a connection already closing).
    pub idle_release: Option<Duration>,
}

impl Timeouts {
    /// These timeouts without the buffer release.
    pub fn without_release(self) -> Self {
        Self {
            idle_release: None,
            ..self
        }
    }
}

/// Operational and access logs.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub format: access_log::Format,
    /// `None`: no access log.
    pub access: Option<access_log::WriterSettings>,
}

/// Sockets [`crate::serve`] accepts on, bound before it starts.
#[derive(Debug)]
pub struct Listeners {
    pub data: Vec<TcpListener>,
    pub admin: TcpListener,
    pub remote_cluster: Vec<TcpListener>,
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

impl Listeners {
    /// Binds every address in `addrs` (with the data plane's accept
    /// backlog). Needs a Tokio runtime.
    pub fn bind(addrs: &ListenAddrs) -> Result<Self, BindError> {
        Ok(Self {
            data: bind(&addrs.data)?,
            admin: bind_one(addrs.admin)?,
            remote_cluster: bind(&addrs.remote_cluster)?,
        })
    }
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, BindError> {
    listen(addr).map_err(|source| BindError { addr, source })
}

/// Binds each of `addrs`.
pub fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, BindError> {
    addrs.iter().map(|&addr| bind_one(addr)).collect()
}

/// Accept backlog: bursts of new connections from a load balancer wait
/// here rather than being refused by the kernel.
const LISTEN_BACKLOG: i32 = 4096;

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

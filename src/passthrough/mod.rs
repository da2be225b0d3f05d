//! Remote-cluster traffic (SPEC §2.1): a TLS pass-through listener routed
//! by SNI. Cross-cluster search and replication authenticate end to end
//! with mTLS, so the proxy never terminates TLS here; it only learns the
//! client (PROXY header), the server name (ClientHello) and the deployment.
//!
//! A connection, in order:
//!
//! 1. PROXY header, under the HTTPS listener's `[proxy_protocol]` rules
//!    ([`crate::proxy_protocol::read_header`]);
//! 2. the ClientHello, read but not consumed ([`client_hello::parse`],
//!    bounded by `client_hello_max_bytes` and `client_hello_timeout`);
//! 3. routing: `{cluster_id}.{Z}` or `{alias}.{Z}` → the deployment's
//!    `remote_cluster` resource;
//! 4. with `filter = true`, the deployment's policies decide
//!    ([`crate::policy::decide`], `dry_run` included); with `false` they
//!    are not consulted;
//! 5. connect to a node (round-robin, connect-failure ejection: the
//!    forwarder's [`Pool`] logic), replay the ClientHello, splice
//!    ([`splice`]).
//!
//! Guarantees: a refused connection (no SNI, unknown deployment, no
//! resource, denied, ...) never reaches a backend; every connection is
//! counted once in `remote_cluster_connections_total{result}`; every one
//! that got past the PROXY header gets one access-log line when it ends;
//! with `filter = true`, an open connection that a newly applied snapshot
//! would deny (or whose deployment or resource is gone) is closed as soon
//! as the swap is observed (`revoked`). Open connections survive drain
//! until the shutdown grace ends.

pub mod client_hello;
mod log;
pub mod metrics;
mod splice;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::Registry;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

pub use client_hello::{ClientHelloError, MAX_CLIENT_HELLO_BYTES, Parsed};
pub use log::{ConnectionLine, TARGET};
pub use metrics::{End, Outcome, PassthroughMetrics};

use crate::access_log::{AccessLog, Origin};
use crate::endpoint::ClientIdentity;
use crate::forward::{Ejection, ForwardError, Pool, PoolSettings};
use crate::policy::{PolicySet, Product, RequestFacts, Target, Verdict, decide};
use crate::proxy_protocol::{self, ReadError};
use crate::reload::Store;
use crate::route::Router;
use crate::shutdown::{Phase, Shutdown};

/// From the end of the PROXY header to a complete ClientHello; the PROXY
/// read timeout's default, for the same reason (one TCP retransmit).
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = proxy_protocol::DEFAULT_READ_TIMEOUT;
/// One full TLS record: any ClientHello a TLS stack sends in one record.
pub const DEFAULT_CLIENT_HELLO_MAX_BYTES: usize = MAX_CLIENT_HELLO_BYTES;
pub const MIN_CLIENT_HELLO_MAX_BYTES: usize = 512;
pub const MAX_CLIENT_HELLO_MAX_BYTES: usize = MAX_CLIENT_HELLO_BYTES;
/// 15 minutes. Cross-cluster replication keeps its connections busy (a
/// follower long-polls the leader at least every minute, `read_poll_timeout`)
/// and Elasticsearch re-opens an idle remote-cluster connection on demand,
/// so this only ever closes connections nobody is using, and bounds how
/// long a peer that vanished without a FIN holds a connection slot.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Per direction, per connection: HAProxy's `tune.bufsize`, and what a
/// TCP segment train of a busy stream delivers per read.
pub const DEFAULT_BUFFER_BYTES: usize = 16 * 1024;
pub const MIN_BUFFER_BYTES: usize = 1024;
pub const MAX_BUFFER_BYTES: usize = 1024 * 1024;

/// Pass-through behaviour (`[remote_cluster]`, plus `[upstream]
/// connect_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub filter: bool,
    pub client_hello_timeout: Duration,
    pub client_hello_max_bytes: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub buffer_bytes: usize,
}

/// Why a connection was not spliced.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("PROXY header refused")]
    ProxyProtocol(#[source] ReadError),
    #[error("no usable ClientHello")]
    ClientHello(#[source] HelloError),
    #[error("the ClientHello names no server")]
    NoSni,
    #[error("the server name names no deployment")]
    UnknownDeployment,
    #[error("the deployment has no remote_cluster resource")]
    NoResource,
    #[error("denied by the deployment's policies")]
    Denied,
    #[error("no backend node accepted the connection")]
    ConnectFailed(#[source] ForwardError),
    #[error("the proxy is shutting down")]
    Shutdown,
}

impl Refused {
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::ProxyProtocol(_) => Outcome::ProxyProtocol,
            Self::ClientHello(_) => Outcome::ClientHello,
            Self::NoSni => Outcome::NoSni,
            Self::UnknownDeployment => Outcome::UnknownDeployment,
            Self::NoResource => Outcome::NoResource,
            Self::Denied => Outcome::Denied,
            Self::ConnectFailed(_) => Outcome::ConnectFailed,
            Self::Shutdown => Outcome::Shutdown,
        }
    }

    /// The access log's `reason` when no policy decided.
    fn reason(&self) -> &'static str {
        match self {
            Self::ProxyProtocol(e) => e.kind(),
            Self::ClientHello(e) => e.kind(),
            Self::ConnectFailed(e) => e.kind(),
            other => other.outcome().as_str(),
        }
    }
}

/// Why the ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the ClientHello is larger than {0} bytes")]
    TooLarge(usize),
    #[error("connection closed before a complete ClientHello")]
    Closed,
    #[error("I/O error while reading the ClientHello")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Parse(#[from] ClientHelloError),
}

impl HelloError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::TooLarge(_) => "too_large",
            Self::Closed => "closed",
            Self::Io(_) => "io",
            Self::Parse(e) => e.kind(),
        }
    }
}

/// Reads until `buf` (which may already hold bytes read past the PROXY
/// header) holds a complete ClientHello; returns its SNI. Reads never go
/// past the ClientHello's record, nor past `max_bytes`.
async fn read_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Option<Box<str>>, HelloError> {
    let read = async {
        loop {
            let total = match client_hello::parse(buf)? {
                Parsed::Complete { sni } => return Ok(sni.map(Box::from)),
                Parsed::Incomplete { total } if total > max_bytes => {
                    return Err(HelloError::TooLarge(max_bytes));
                }
                Parsed::Incomplete { total } => total,
            };
            let start = buf.len();
            buf.resize(total, 0);
            let n = io.read(buf.get_mut(start..).unwrap_or_default()).await?;
            buf.truncate(start + n);
            if n == 0 {
                return Err(HelloError::Closed);
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HelloError::Timeout(timeout))?
}

/// What the log line of a connection says, filled in as it goes.
struct Record {
    time: SystemTime,
    started: Instant,
    peer: SocketAddr,
    client: Option<ClientIdentity>,
    sni: Box<str>,
    deployment: Box<str>,
    backend: Option<SocketAddr>,
    decision: &'static str,
    reason: &'static str,
    policy: Box<str>,
}

/// A connection ready to splice.
struct Routed {
    client: ClientIdentity,
    backend: TcpStream,
    /// The ClientHello (and anything read with it), to replay.
    hello: Vec<u8>,
    /// Swaps since the decision was made.
    swaps: watch::Receiver<u64>,
}

/// The remote-cluster listener's shared state.
pub struct PassThrough {
    settings: Settings,
    store: Arc<Store>,
    router: Router,
    /// Its own nodes (remote-cluster ports), with the forwarder's
    /// round-robin walk and ejection logic; never actively health-checked
    /// over HTTP.
    pool: Pool,
    proxy_protocol: proxy_protocol::Settings,
    metrics: PassthroughMetrics,
    access_log: Option<AccessLog>,
}

impl std::fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassThrough")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PassThrough {
    pub fn new(
        settings: Settings,
        ejection: Ejection,
        proxy_protocol: proxy_protocol::Settings,
        router: Router,
        store: Arc<Store>,
        access_log: Option<AccessLog>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            pool: Pool::new(PoolSettings {
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.idle_timeout,
                max_idle_per_backend: 0,
                ejection,
            }),
            settings,
            store,
            router,
            proxy_protocol,
            metrics: PassthroughMetrics::register(registry)?,
            access_log,
        })
    }

    /// The node table, to sweep periodically.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A connection refused at once: the connection limit was reached.
    pub fn over_limit(&self) {
        self.metrics.outcome(Outcome::Limit);
    }

    /// Serves one accepted connection to its end.
    pub async fn serve(self: Arc<Self>, mut tcp: TcpStream, peer: SocketAddr, shutdown: Shutdown) {
        let _open = self.metrics.opened();
        let _ = tcp.set_nodelay(true);
        let mut rec = Record {
            time: SystemTime::now(),
            started: Instant::now(),
            peer,
            client: None,
            sni: Box::default(),
            deployment: Box::default(),
            backend: None,
            decision: "",
            reason: "",
            policy: Box::default(),
        };
        let mut abort = shutdown.clone();
        let routed = tokio::select! {
            r = self.route(&mut tcp, &mut rec) => r,
            () = abort.reached(Phase::Abort) => Err(Refused::Shutdown),
        };
        let routed = match routed {
            Ok(r) => r,
            Err(e) => {
                self.metrics.outcome(e.outcome());
                tracing::debug!(%peer, sni = &*rec.sni, error = %e, reason = e.reason(), "remote-cluster connection refused");
                if rec.decision.is_empty() {
                    rec.decision = Verdict::Denied.as_str();
                    rec.reason = e.reason();
                }
                self.log(&rec, (0, 0), e.outcome().as_str());
                return;
            }
        };
        self.metrics
            .outcome(if rec.decision == Verdict::WouldDeny.as_str() {
                Outcome::WouldDeny
            } else {
                Outcome::Spliced
            });
        let Routed {
            client,
            backend,
            hello,
            mut swaps,
        } = routed;
        let _ = backend.set_nodelay(true);
        let progress = splice::Progress::default();
        let stop = async {
            let revoked = async {
                if self.settings.filter {
                    self.revoked(&mut swaps, &rec.deployment, client).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = abort.reached(Phase::Abort) => End::Shutdown,
                () = revoked => End::Revoked,
            }
        };
        let end = splice::run(
            tcp,
            backend,
            splice::Splice {
                first: hello,
                buffer_bytes: self.settings.buffer_bytes,
                idle_timeout: self.settings.idle_timeout,
                progress: &progress,
                client_to_backend: &self.metrics.client_to_backend,
                backend_to_client: &self.metrics.backend_to_client,
            },
            stop,
        )
        .await;
        self.metrics.ended(end);
        tracing::debug!(%peer, deployment = &*rec.deployment, end = end.as_str(), "remote-cluster connection ended");
        self.log(&rec, progress.totals(), end.as_str());
    }

    /// PROXY header → ClientHello → deployment → decision → backend.
    async fn route(&self, tcp: &mut TcpStream, rec: &mut Record) -> Result<Routed, Refused> {
        let accepted = proxy_protocol::read_header(tcp, rec.peer, &self.proxy_protocol)
            .await
            .map_err(Refused::ProxyProtocol)?;
        let client = accepted.client;
        rec.client = Some(client);
        let mut hello = Vec::with_capacity(accepted.prefix.len().max(2048));
        hello.extend_from_slice(&accepted.prefix);
        let sni = read_client_hello(
            tcp,
            &mut hello,
            self.settings.client_hello_max_bytes,
            self.settings.client_hello_timeout,
        )
        .await
        .map_err(Refused::ClientHello)?
        .ok_or(Refused::NoSni)?;
        rec.sni = sni;

        // Subscribed before the snapshot is read: a swap after this
        // decision is always seen by the revocation watch.
        let mut swaps = self.store.subscribe();
        swaps.borrow_and_update();
        let loaded = self.store.current().ok_or(Refused::UnknownDeployment)?;
        let set = &loaded.set;
        let deployment = self
            .router
            .remote_cluster_deployment(set, &rec.sni)
            .ok_or(Refused::UnknownDeployment)?;
        let compiled = set
            .deployment(deployment)
            .ok_or(Refused::UnknownDeployment)?;
        rec.deployment = (*compiled.id).into();
        let backends = compiled
            .backends(Product::RemoteCluster)
            .ok_or(Refused::NoResource)?;
        if self.settings.filter {
            let d = decide(
                set,
                &RequestFacts {
                    target: Target {
                        deployment,
                        product: Product::RemoteCluster,
                    },
                    client,
                },
            );
            rec.decision = d.verdict.as_str();
            rec.reason = d.reason.as_str();
            if let Some(p) = d.matched.and_then(|m| set.policy(m.policy)) {
                rec.policy = (*p.id).into();
            }
            if d.verdict == Verdict::Denied {
                return Err(Refused::Denied);
            }
        } else {
            rec.decision = Verdict::Allowed.as_str();
            rec.reason = "unfiltered";
        }
        let (addr, backend) = self
            .pool
            .connect_stream(backends.nodes(), backends.next_start())
            .await
            .map_err(Refused::ConnectFailed)?;
        rec.backend = Some(addr);
        Ok(Routed {
            client,
            backend,
            hello,
            swaps,
        })
    }

    /// Resolves when a newly applied snapshot no longer accepts this
    /// connection: its deployment is gone, has no `remote_cluster`
    /// resource, or its policies deny `client` (`would_deny` still passes).
    async fn revoked(&self, swaps: &mut watch::Receiver<u64>, id: &str, client: ClientIdentity) {
        loop {
            if swaps.changed().await.is_err() {
                // The store is gone: nothing will change any more.
                return std::future::pending().await;
            }
            let Some(loaded) = self.store.current() else {
                continue;
            };
            if !still_accepted(&loaded.set, id, client) {
                tracing::info!(
                    deployment = id,
                    client_ip = %client.source,
                    version = loaded.meta.version,
                    "remote-cluster connection revoked by the new snapshot"
                );
                return;
            }
        }
    }

    fn log(&self, rec: &Record, (up, down): (u64, u64), end: &str) {
        let (Some(log), Some(client)) = (&self.access_log, rec.client) else {
            return;
        };
        let line = ConnectionLine {
            time: rec.time,
            duration: rec.started.elapsed(),
            origin: Origin {
                client_ip: client.source,
                peer: rec.peer,
                endpoint: client.endpoint,
                sni: &rec.sni,
            },
            deployment: &rec.deployment,
            backend: rec.backend,
            decision: rec.decision,
            reason: rec.reason,
            policy: &rec.policy,
            client_to_backend: up,
            backend_to_client: down,
            end,
        };
        let format = log.format();
        log.log_with(|out| log::write(format, &line, out));
    }
}

/// Whether `set` still accepts a connection from `client` to deployment
/// `id`'s remote-cluster resource.
pub fn still_accepted(set: &PolicySet, id: &str, client: ClientIdentity) -> bool {
    let Some(deployment) = set.find_deployment(id, false) else {
        return false;
    };
    if !set.has_resource(deployment, Product::RemoteCluster) {
        return false;
    }
    let facts = RequestFacts {
        target: Target {
            deployment,
            product: Product::RemoteCluster,
        },
        client,
    };
    decide(set, &facts).verdict.forwards()
}

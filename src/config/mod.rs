//! Static configuration (SPEC §4): serde types, defaults, loading.
//!
//! A TOML file, then environment overrides `PORTCULLIS__SECTION__KEY`
//! (e.g. `PORTCULLIS__PROXY_PROTOCOL__MODE=lenient`; lists comma-separated).
//! Unknown keys and bad values are refused at start with the offending key
//! named. Every timeout and limit has a named default below; relative paths
//! are relative to the working directory.

pub mod duration;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::access_log;
use crate::forward::{ActiveChecks, Ejection, PoolSettings};
use crate::passthrough;
use crate::policy::PolicyOptions;
use crate::proxy_protocol;
use crate::reload::PolledSource;
use crate::reload::etcd::EtcdSettings;
use crate::settings::{
    AdminSettings, HttpSettings, ListenAddrs, LogSettings, ServerSettings, Settings,
    SnapshotSettings, SnapshotSource, Timeouts, UpstreamSettings,
};
use crate::tls;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9243";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Connections beyond this are accepted and closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// From the first byte of a request to its last header byte (slowloris).
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection (no request in flight) is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An HTTP/1.1 connection with no request in flight for this long frees
/// its read and write buffers (16 KiB) until the client sends again. Long
/// enough that a client sending request after request never pays for new
/// buffers; short enough that connections a load balancer holds open
/// between bursts cost little more than their TLS state.
pub const DEFAULT_IDLE_RELEASE_AFTER: Duration = Duration::from_millis(250);
/// Request line plus headers, HTTP/1.1; header list, HTTP/2.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// HAProxy's limit (`tune.http.maxhdr` 101), and the most hyper parses
/// into arrays on the stack: above 100 it allocates 8 KiB of header arrays
/// on the heap for every request.
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_URI_BYTES: usize = 16 * 1024;
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may reset before the server has accepted them; bounds
/// HTTP/2 "rapid reset" floods (CVE-2023-44487).
pub const DEFAULT_H2_MAX_PENDING_ACCEPT_RESETS: usize = 32;
/// Streams the proxy may reset because the client broke the protocol on
/// them (malformed headers, flow-control abuse, ...) before it closes the
/// connection with GOAWAY; bounds "MadeYouReset" floods (CVE-2025-8671),
/// where the client makes the server do the resetting. hyper's own
/// default, made explicit so that it is visible and tunable here.
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// In-flight requests get this long to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Until the response headers arrive. Long: Elasticsearch searches and
/// bulk requests can legitimately take minutes.
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_MAX_IDLE_PER_BACKEND: usize = 256;
/// Consecutive connect failures that eject a backend node.
pub const DEFAULT_EJECT_AFTER_FAILURES: u32 = 3;
/// First ejection period; doubles with each ejection in a row.
pub const DEFAULT_EJECT_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_EJECT_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_SNAPSHOT_POLL_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_SNAPSHOT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A snapshot file, download or `PUT /snapshot` body larger than this is
/// refused. Sized from the largest snapshot benchmarked: the `large` scale
/// of `portcullis-gen-snapshot` (100k deployments, 1M IP rules) is about
/// 75 MB of JSON, and `benches/compare.sh` re-applies a ~71 MiB one through
/// `PUT /snapshot`. 128 MiB (134 MB) is ~1.8x that: room to grow, while
/// still bounding the memory one snapshot can take (the whole body is
/// buffered before it is parsed, and the parse tree and compiled tables
/// come on top). Raise it deliberately for a larger fleet.
pub const DEFAULT_SNAPSHOT_MAX_BYTES: usize = 128 * 1024 * 1024;
/// Admin API: the longest a request body (`PUT /snapshot`, `POST /explain`)
/// may go without a single byte arriving. It bounds each pause, not the
/// whole upload, so a large snapshot over a slow link still goes through,
/// while a stalled client gets 408 and its connection is closed.
pub const DEFAULT_ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolConfig,
    pub tls: tls::Settings,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub policy: PolicyOptions,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub remote_cluster: RemoteClusterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Zone suffixes deployment host names live under (SPEC §2).
    pub zones: Vec<String>,
    pub max_connections: usize,
    #[serde(deserialize_with = "duration::deserialize")]
    pub request_header_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// An idle HTTP/1.1 connection frees its HTTP buffers after this long.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_release_after: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_pending_accept_reset_streams: usize,
    pub http2_max_local_error_reset_streams: usize,
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                DEFAULT_LISTEN
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9243))),
            ],
            zones: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_header_timeout: DEFAULT_REQUEST_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            idle_release_after: DEFAULT_IDLE_RELEASE_AFTER,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            http2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            http2_max_pending_accept_reset_streams: DEFAULT_H2_MAX_PENDING_ACCEPT_RESETS,
            http2_max_local_error_reset_streams: DEFAULT_H2_MAX_LOCAL_ERROR_RESETS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolConfig {
    pub mode: proxy_protocol::Mode,
    /// Load balancers allowed to send a PROXY header.
    pub trusted_sources: Vec<IpNet>,
    #[serde(deserialize_with = "duration::deserialize")]
    pub read_timeout: Duration,
    /// Cap on the v2 header's payload length (addresses + TLVs).
    pub max_v2_payload: usize,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        Self {
            mode: proxy_protocol::Mode::Required,
            trusted_sources: Vec::new(),
            read_timeout: proxy_protocol::DEFAULT_READ_TIMEOUT,
            max_v2_payload: proxy_protocol::DEFAULT_V2_MAX_PAYLOAD,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub response_timeout: Duration,
    /// Pooled keep-alive connections to backends idle longer are closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    pub eject_after_failures: u32,
    #[serde(deserialize_with = "duration::deserialize")]
    pub eject_base: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub eject_max: Duration,
    /// Active health checks every this long; off when unset.
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub health_check_interval: Option<Duration>,
    pub health_check_path: String,
    #[serde(deserialize_with = "duration::deserialize")]
    pub health_check_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            max_idle_per_backend: DEFAULT_UPSTREAM_MAX_IDLE_PER_BACKEND,
            eject_after_failures: DEFAULT_EJECT_AFTER_FAILURES,
            eject_base: DEFAULT_EJECT_BASE,
            eject_max: DEFAULT_EJECT_MAX,
            health_check_interval: None,
            health_check_path: "/".to_owned(),
            health_check_timeout: DEFAULT_HEALTH_CHECK_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    /// Follow a prefix in an etcd cluster (SPEC §3.1).
    pub etcd: Option<EtcdSettings>,
    #[serde(deserialize_with = "duration::deserialize")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub fetch_timeout: Duration,
    pub max_bytes: usize,
    /// Extra PEM CA bundle trusted for an https `url` (the system store is
    /// trusted too).
    pub ca_file: Option<PathBuf>,
    /// Where the last applied snapshot is kept, to start from when the
    /// source is unavailable at boot.
    pub state_dir: Option<PathBuf>,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            path: None,
            url: None,
            etcd: None,
            poll_interval: DEFAULT_SNAPSHOT_POLL_INTERVAL,
            fetch_timeout: DEFAULT_SNAPSHOT_FETCH_TIMEOUT,
            max_bytes: DEFAULT_SNAPSHOT_MAX_BYTES,
            ca_file: None,
            state_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin API's own listener; loopback by default, because it
    /// exposes snapshot contents and (with a token) accepts new ones.
    pub listen: SocketAddr,
    /// Bearer token for `PUT /snapshot`; without it, `PUT` is refused.
    pub token_file: Option<PathBuf>,
    /// Longest pause while reading a request body: 408 and close after it.
    #[serde(deserialize_with = "duration::deserialize")]
    pub body_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9901))),
            token_file: None,
            body_timeout: DEFAULT_ADMIN_BODY_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One access-log line per request (SPEC §9).
    pub access: bool,
    /// Access-log lines are written at least this often...
    #[serde(deserialize_with = "duration::deserialize")]
    pub access_flush_interval: Duration,
    /// ...or as soon as this many bytes are waiting.
    pub access_batch_bytes: usize,
    /// At most this many bytes of lines wait for a slow stdout; further
    /// lines are dropped and counted
    /// (`portcullis_access_log_dropped_lines_total`).
    pub access_max_buffered_bytes: usize,
    /// `text` or `json`, for operational and access logs alike;
    /// `--log-format` on the command line wins.
    pub format: access_log::Format,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            access: true,
            access_flush_interval: access_log::DEFAULT_FLUSH_INTERVAL,
            access_batch_bytes: access_log::DEFAULT_BATCH_BYTES,
            access_max_buffered_bytes: access_log::DEFAULT_MAX_BUFFERED_BYTES,
            format: access_log::Format::default(),
        }
    }
}

/// The remote-cluster TLS pass-through listener (SPEC §2.1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteClusterConfig {
    /// Pass-through listeners (Elastic Cloud uses 9400); none when empty.
    pub listen: Vec<SocketAddr>,
    /// Apply the deployment's policies at connect time, and close a
    /// connection a later snapshot would deny.
    pub filter: bool,
    /// From the end of the PROXY header to a complete ClientHello.
    #[serde(deserialize_with = "duration::deserialize")]
    pub client_hello_timeout: Duration,
    /// Largest ClientHello (TLS record included) read while looking for
    /// the SNI.
    pub client_hello_max_bytes: usize,
    /// A spliced connection with no byte in either direction for this long
    /// is closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// Splice buffer per direction, per connection.
    pub buffer_bytes: usize,
}

impl Default for RemoteClusterConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            filter: false,
            client_hello_timeout: passthrough::DEFAULT_CLIENT_HELLO_TIMEOUT,
            client_hello_max_bytes: passthrough::DEFAULT_CLIENT_HELLO_MAX_BYTES,
            idle_timeout: passthrough::DEFAULT_IDLE_TIMEOUT,
            buffer_bytes: passthrough::DEFAULT_BUFFER_BYTES,
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Load {
        path: String,
        #[source]
        source: Box<config::ConfigError>,
    },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Keys whose environment override is a comma-separated list.
const LIST_KEYS: [&str; 4] = [
    "server.listen",
    "server.zones",
    "proxy_protocol.trusted_sources",
    "remote_cluster.listen",
];

impl Config {
    /// Loads `path` (TOML), applies `PORTCULLIS__*` environment overrides,
    /// and checks the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env = LIST_KEYS.iter().fold(
            config::Environment::with_prefix("PORTCULLIS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(","),
            |env, key| env.with_list_parse_key(key),
        );
        let loaded = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(env)
            .build()
            .and_then(config::Config::try_deserialize::<Config>)
            .map_err(|source| ConfigError::Load {
                path: path.display().to_string(),
                source: Box::new(source),
            })?;
        loaded.check()?;
        Ok(loaded)
    }

    /// Parses TOML text (no environment), for tests and the demo.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let loaded = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize::<Config>)
            .map_err(|source| ConfigError::Load {
                path: "<inline>".into(),
                source: Box::new(source),
            })?;
        loaded.check()?;
        Ok(loaded)
    }

    /// Cross-field checks serde cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.server.listen.is_empty() {
            errors.push("server.listen: at least one address is needed".to_owned());
        }
        if self
            .server
            .zones
            .iter()
            .all(|z| z.trim_matches('.').is_empty())
        {
            errors.push(
                "server.zones: at least one zone is needed (deployment host names are {id}.{zone})"
                    .to_owned(),
            );
        }
        if self.server.max_connections == 0 {
            errors.push("server.max_connections must be at least 1".to_owned());
        }
        if !self.upstream.health_check_path.starts_with('/') {
            errors.push("upstream.health_check_path must start with '/'".to_owned());
        }
        if self
            .upstream
            .health_check_interval
            .is_some_and(|d| d.is_zero())
        {
            errors.push("upstream.health_check_interval must be greater than zero".to_owned());
        }
        if self.log.access_max_buffered_bytes < self.log.access_batch_bytes {
            errors.push(
                "log.access_max_buffered_bytes must be at least log.access_batch_bytes".to_owned(),
            );
        }
        if self.server.max_header_bytes < 8192 {
            errors.push("server.max_header_bytes must be at least 8192".to_owned());
        }
        for (key, d) in [
            (
                "server.request_header_timeout",
                self.server.request_header_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            (
                "proxy_protocol.read_timeout",
                self.proxy_protocol.read_timeout,
            ),
            ("tls.handshake_timeout", self.tls.handshake_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            ("snapshot.poll_interval", self.snapshot.poll_interval),
            ("snapshot.fetch_timeout", self.snapshot.fetch_timeout),
            ("log.access_flush_interval", self.log.access_flush_interval),
            ("admin.body_timeout", self.admin.body_timeout),
            (
                "remote_cluster.client_hello_timeout",
                self.remote_cluster.client_hello_timeout,
            ),
            (
                "remote_cluster.idle_timeout",
                self.remote_cluster.idle_timeout,
            ),
        ] {
            if d.is_zero() {
                errors.push(format!("{key} must be greater than zero"));
            }
        }
        if self.proxy_protocol.mode == proxy_protocol::Mode::Required
            && self.proxy_protocol.trusted_sources.is_empty()
        {
            errors.push(
                "proxy_protocol.trusted_sources is empty: in required mode no connection could be accepted; list the load balancers' addresses".to_owned(),
            );
        }
        let rc = &self.remote_cluster;
        if !(passthrough::MIN_CLIENT_HELLO_MAX_BYTES..=passthrough::MAX_CLIENT_HELLO_MAX_BYTES)
            .contains(&rc.client_hello_max_bytes)
        {
            errors.push(format!(
                "remote_cluster.client_hello_max_bytes must be between {} and {} (one TLS record)",
                passthrough::MIN_CLIENT_HELLO_MAX_BYTES,
                passthrough::MAX_CLIENT_HELLO_MAX_BYTES
            ));
        }
        if !(passthrough::MIN_BUFFER_BYTES..=passthrough::MAX_BUFFER_BYTES)
            .contains(&rc.buffer_bytes)
        {
            errors.push(format!(
                "remote_cluster.buffer_bytes must be between {} and {}",
                passthrough::MIN_BUFFER_BYTES,
                passthrough::MAX_BUFFER_BYTES
            ));
        }
        // Port 0 (an ephemeral port, as tests use) cannot clash.
        if let Some(addr) = rc
            .listen
            .iter()
            .find(|a| a.port() != 0 && self.server.listen.contains(a))
        {
            errors.push(format!(
                "remote_cluster.listen: {addr} is also in server.listen"
            ));
        }
        if self.tls.certificates.is_empty() {
            errors.push("tls.certificates: at least one certificate is needed".to_owned());
        }
        let sources = [
            self.snapshot.path.is_some(),
            self.snapshot.url.is_some(),
            self.snapshot.etcd.is_some(),
        ];
        if sources.into_iter().filter(|&set| set).count() != 1 {
            errors.push(ONE_SOURCE.to_owned());
        }
        if let Some(etcd) = &self.snapshot.etcd {
            errors.extend(etcd.problems());
        }
        if let Some(url) = &self.snapshot.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "snapshot.url: \"{url}\" is not an http:// or https:// URL"
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// The typed settings the runtime takes: the one place TOML sections
    /// become [`Settings`]. Checks first, so what comes out is valid.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.check()?;
        let snapshot = &self.snapshot;
        let source = match (&snapshot.path, &snapshot.url, &snapshot.etcd) {
            (Some(path), None, None) => SnapshotSource::Polled(PolledSource::File(path.clone())),
            (None, Some(url), None) => SnapshotSource::Polled(PolledSource::Url {
                url: url.clone(),
                fetch_timeout: snapshot.fetch_timeout,
                ca_file: snapshot.ca_file.clone(),
            }),
            (None, None, Some(etcd)) => SnapshotSource::Etcd(etcd.clone()),
            // `check` refused both and neither; say so again rather than
            // trust that.
            _ => return Err(ConfigError::Invalid(vec![ONE_SOURCE.to_owned()])),
        };
        let s = &self.server;
        let u = &self.upstream;
        let rc = &self.remote_cluster;
        let pp = &self.proxy_protocol;
        Ok(Settings {
            listen: ListenAddrs {
                data: s.listen.clone(),
                admin: self.admin.listen,
                remote_cluster: rc.listen.clone(),
            },
            server: ServerSettings {
                zones: s.zones.clone(),
                max_connections: s.max_connections,
                shutdown_grace: s.shutdown_grace,
                http: HttpSettings {
                    timeouts: Timeouts {
                        idle: s.idle_timeout,
                        request_header: s.request_header_timeout,
                        idle_release: Some(s.idle_release_after),
                    },
                    max_header_bytes: s.max_header_bytes,
                    max_headers: s.max_headers,
                    max_uri_bytes: s.max_uri_bytes,
                    h2_max_concurrent_streams: s.http2_max_concurrent_streams,
                    h2_max_pending_accept_resets: s.http2_max_pending_accept_reset_streams,
                    h2_max_local_error_resets: s.http2_max_local_error_reset_streams,
                },
            },
            proxy_protocol: proxy_protocol::Settings {
                mode: pp.mode,
                trusted_sources: pp.trusted_sources.clone(),
                read_timeout: pp.read_timeout,
                limits: proxy_protocol::Limits {
                    v2_max_payload: pp.max_v2_payload,
                },
            },
            tls: self.tls.clone(),
            upstream: UpstreamSettings {
                pool: PoolSettings {
                    connect_timeout: u.connect_timeout,
                    idle_timeout: u.idle_timeout,
                    max_idle_per_backend: u.max_idle_per_backend,
                    ejection: Ejection {
                        after_failures: u.eject_after_failures,
                        base: u.eject_base,
                        max: u.eject_max,
                    },
                },
                response_timeout: u.response_timeout,
                health_checks: u.health_check_interval.map(|interval| ActiveChecks {
                    interval,
                    path: u.health_check_path.clone(),
                    timeout: u.health_check_timeout,
                }),
            },
            snapshot: SnapshotSettings {
                source,
                poll_interval: snapshot.poll_interval,
                max_bytes: snapshot.max_bytes,
                state_dir: snapshot.state_dir.clone(),
            },
            admin: AdminSettings {
                token_file: self.admin.token_file.clone(),
                body_timeout: self.admin.body_timeout,
            },
            policy: self.policy,
            log: LogSettings {
                format: self.log.format,
                access: self.log.access.then(|| access_log::WriterSettings {
                    batch_bytes: self.log.access_batch_bytes.max(1),
                    flush_interval: self.log.access_flush_interval,
                    max_buffered_bytes: self.log.access_max_buffered_bytes,
                }),
            },
            remote_cluster: passthrough::Settings {
                filter: rc.filter,
                client_hello_timeout: rc.client_hello_timeout,
                client_hello_max_bytes: rc.client_hello_max_bytes,
                connect_timeout: u.connect_timeout,
                idle_timeout: rc.idle_timeout,
                buffer_bytes: rc.buffer_bytes,
            },
        })
    }
}

/// The rule [`SnapshotSource`] makes a type.
const ONE_SOURCE: &str = "snapshot: set exactly one of path, url or [snapshot.etcd]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/portcullis.toml"
        ));
        let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.zones.len(), 2);
        assert_eq!(c.proxy_protocol.mode, proxy_protocol::Mode::Required);
        assert_eq!(
            c.upstream.eject_after_failures,
            DEFAULT_EJECT_AFTER_FAILURES
        );
        assert_eq!(c.upstream.health_check_interval, None);
    }

    const MINIMAL: &str = r#"
        [server]
        zones = ["es.example.com"]
        [proxy_protocol]
        trusted_sources = ["10.0.0.0/8"]
        [[tls.certificates]]
        cert = "c.pem"
        key = "k.pem"
        [snapshot]
        path = "s.json"
    "#;

    #[test]
    fn defaults_fill_everything_else() {
        let c = Config::from_toml(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.server.listen,
            [DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.server.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.admin.body_timeout, DEFAULT_ADMIN_BODY_TIMEOUT);
        assert_eq!(c.snapshot.max_bytes, DEFAULT_SNAPSHOT_MAX_BYTES);
        assert!(c.log.access);
        assert!(
            c.remote_cluster.listen.is_empty(),
            "no pass-through listener by default"
        );
        assert!(!c.remote_cluster.filter);
        assert_eq!(
            c.remote_cluster.idle_timeout,
            passthrough::DEFAULT_IDLE_TIMEOUT
        );
    }

    #[test]
    fn remote_cluster_section_is_checked() {
        let on = format!(
            "{MINIMAL}\n[remote_cluster]\nlisten = [\"127.0.0.1:9400\"]\nfilter = true\nidle_timeout = \"2m\"\n"
        );
        let c = Config::from_toml(&on).unwrap_or_else(|e| panic!("{e}"));
        let s = c
            .settings()
            .unwrap_or_else(|e| panic!("{e}"))
            .remote_cluster;
        assert!(s.filter);
        assert_eq!(s.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.connect_timeout, DEFAULT_UPSTREAM_CONNECT_TIMEOUT);
        for (bad, key) in [
            (
                "client_hello_max_bytes = 10",
                "remote_cluster.client_hello_max_bytes",
            ),
            (
                "client_hello_max_bytes = 100000",
                "remote_cluster.client_hello_max_bytes",
            ),
            ("buffer_bytes = 0", "remote_cluster.buffer_bytes"),
            ("idle_timeout = \"0s\"", "remote_cluster.idle_timeout"),
            (
                "client_hello_timeout = \"0s\"",
                "remote_cluster.client_hello_timeout",
            ),
            ("listen = [\"0.0.0.0:9243\"]", "also in server.listen"),
        ] {
            let text = format!("{MINIMAL}\n[remote_cluster]\n{bad}\n");
            let e = Config::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let typo = format!("{MINIMAL}\n[upstream]\nconect_timeout = \"1s\"\n");
        let e = Config::from_toml(&typo).unwrap_err().to_string();
        assert!(e.contains("conect_timeout"), "{e}");
        let bad = format!("{MINIMAL}\n[upstream]\nconnect_timeout = \"1 fortnight\"\n");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown duration unit"), "{e}");
        let zero = MINIMAL.replace("[server]", "[server]\nmax_connections = 0");
        let e = Config::from_toml(&zero).unwrap_err().to_string();
        assert!(e.contains("server.max_connections"), "{e}");
    }

    #[test]
    fn ocsp_is_an_optional_per_certificate_key() {
        let c = Config::from_toml(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.tls.certificates[0].ocsp, None);
        let with = MINIMAL.replace(
            "key = \"k.pem\"",
            "key = \"k.pem\"\nocsp = \"certs/c.ocsp.der\"",
        );
        let c = Config::from_toml(&with).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.tls.certificates[0].ocsp.as_deref(),
            Some(Path::new("certs/c.ocsp.der"))
        );
    }

    #[test]
    fn ocsp_file_is_read_with_its_certificate_and_a_bad_one_is_named() {
        let dir = crate::tls::testing::TempDir::new();
        let pair = tls::self_signed(&["a.es.example.com".to_owned()]).expect("generates");
        let cert = dir.write("c.pem", &pair.cert_pem);
        let key = dir.write("k.pem", &pair.key_pem);
        let settings_with = |ocsp: &Path| {
            let text = MINIMAL
                .replace("\"c.pem\"", &format!("\"{}\"", cert.display()))
                .replace(
                    "key = \"k.pem\"",
                    &format!("key = \"{}\"\nocsp = \"{}\"", key.display(), ocsp.display()),
                );
            Config::from_toml(&text)
                .unwrap_or_else(|e| panic!("{e}"))
                .tls
        };

        let good = dir.write("c.ocsp.der", [0x30, 0x03, 0x0a, 0x01, 0x06]);
        tls::server_config(&settings_with(&good)).unwrap_or_else(|e| panic!("{e}"));

        let missing = dir.path("absent.ocsp.der");
        let e = tls::server_config(&settings_with(&missing)).expect_err("missing file");
        assert_eq!(e.to_string(), format!("cannot read {}", missing.display()));

        let empty = dir.write("empty.ocsp.der", "");
        let e = tls::server_config(&settings_with(&empty)).expect_err("empty file");
        assert_eq!(
            e.to_string(),
            format!(
                "OCSP response file {} is unusable: it is empty",
                empty.display()
            )
        );
    }

    #[test]
    fn required_mode_needs_trusted_sources_and_one_snapshot_source() {
        let untrusted = MINIMAL.replace("trusted_sources = [\"10.0.0.0/8\"]", "");
        let e = Config::from_toml(&untrusted).unwrap_err().to_string();
        assert!(e.contains("proxy_protocol.trusted_sources"), "{e}");
        let both = MINIMAL.replace(
            "path = \"s.json\"",
            "path = \"s.json\"\nurl = \"https://cp/s\"",
        );
        let e = Config::from_toml(&both).unwrap_err().to_string();
        assert!(
            e.contains("exactly one of path, url or [snapshot.etcd]"),
            "{e}"
        );
    }
}

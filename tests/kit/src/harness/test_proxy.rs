//! Proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis::access_log::MemorySink;
use portcullis::reload::Store;
use portcullis::server::Server;
use portcullis::shutdown::Trigger;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::*;

/// Per-test proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `required`, `lenient` or `off`.
    pub mode: &'static str,
    pub zones: Vec<String>,
    pub read_timeout: &'static str,
    pub response_timeout: &'static str,
    pub request_header_timeout: &'static str,
    pub idle_timeout: &'static str,
    /// TOML appended to the generated configuration (extra sections, such
    /// as `[remote_cluster]`).
    pub extra_toml: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            mode: "required",
            zones: vec![ZONE.to_owned()],
            read_timeout: "3s",
            response_timeout: "5s",
            request_header_timeout: "10s",
            idle_timeout: "60s",
            extra_toml: String::new(),
        }
    }
}

/// The proxy, serving on `127.0.0.1:<port>` until dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub settings: portcullis::Settings,
    /// Its access log (JSON lines).
    pub access_log: MemorySink,
    /// `[remote_cluster] listen` addresses, bound (empty when none).
    pub remote_cluster: Vec<SocketAddr>,
    pub registry: prometheus::Registry,
    pub(super) trigger: Trigger,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl TestProxy {
    pub async fn start(options: &ProxyOptions, snapshot: &Value) -> Self {
        let dir = TempDir::new();
        let config = ProxyConfig::new(&dir)
            .set("server.zones", options.zones.clone())
            .set(
                "server.request_header_timeout",
                options.request_header_timeout,
            )
            .set("server.idle_timeout", options.idle_timeout)
            .set("proxy_protocol.mode", options.mode)
            .set("proxy_protocol.read_timeout", options.read_timeout)
            .set("upstream.response_timeout", options.response_timeout)
            .merge(&options.extra_toml);
        Self::start_with(config, dir, snapshot).await
    }

    /// The data plane with `config` (its files in `dir`, kept until drop),
    /// `snapshot` in force, and its access log (JSON, flushed every 5 ms)
    /// in [`TestProxy::access_log`].
    pub async fn start_with(config: ProxyConfig, dir: TempDir, snapshot: &Value) -> Self {
        let settings = config
            .snapshot(&dir, snapshot)
            .set("log.access_flush_interval", "5ms")
            .set("log.format", "json")
            .settings();
        let store = Arc::new(Store::new());
        apply_snapshot(&store, &settings, snapshot);
        let access_log = MemorySink::default();
        let registry = portcullis::metrics::registry();
        let server = Server::bind(
            &settings,
            store.clone(),
            &registry,
            Some(Box::new(access_log.clone())),
        )
        .expect("bind proxy");
        let addr = server.local_addrs()[0];
        let remote_cluster = server.remote_cluster_addrs();
        let (trigger, shutdown) = portcullis::shutdown::channel();
        let task = tokio::spawn(server.run(shutdown));
        Self {
            addr,
            store,
            settings,
            access_log,
            remote_cluster,
            registry,
            trigger,
            task,
            _dir: dir,
        }
    }

    /// The access-log lines written so far, parsed, once `count` of them
    /// are there (lines are written by a background thread).
    pub async fn access_lines(&self, count: usize) -> Vec<Value> {
        logged_lines(&self.access_log, count, "access-log lines", |_| true).await
    }

    /// Applies a new snapshot (its version must be newer).
    pub fn apply(&self, snapshot: &Value) {
        apply_snapshot(&self.store, &self.settings, snapshot);
    }

    pub fn client(&self, sni: &str) -> ClientBuilder {
        ClientBuilder::new(self.addr, sni)
    }
}

fn apply_snapshot(store: &Store, settings: &portcullis::Settings, snapshot: &Value) {
    let loaded =
        portcullis::reload::prepare(snapshot.to_string().as_bytes(), "test", settings.policy)
            .unwrap_or_else(|e| panic!("test snapshot is invalid: {e}"));
    store.apply(loaded).expect("snapshot applies");
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.trigger.drain();
        self.trigger.abort();
        self.task.abort();
    }
}

/// The lines of `sink` that `keep` selects, parsed as JSON, once there are
/// `count` of them (lines are written by a background thread).
pub(crate) async fn logged_lines(
    sink: &MemorySink,
    count: usize,
    what: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(Duration::from_secs(10), what, || {
        found = sink.lines().into_iter().filter(|l| keep(l)).collect();
        let enough = found.len() >= count;
        async move { enough }
    })
    .await;
    found
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

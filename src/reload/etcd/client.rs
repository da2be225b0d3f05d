//! Reaching the etcd cluster: `[snapshot.etcd]` settings and one `connect`,
//! shared by the follower and `portcullis publish`.
//!
//! etcd-client (tonic underneath) balances requests over every endpoint
//! and reconnects by itself; what it cannot know is how long this product
//! is willing to wait, so every call here is bounded by `request_timeout`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// `[snapshot.etcd]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, one per cluster member.
    pub endpoints: Vec<String>,
    /// Every key of the snapshot is under this prefix.
    pub prefix: String,
    /// Dialling one endpoint.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub connect_timeout: Duration,
    /// One read, one page of the initial read, or one transaction.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub request_timeout: Duration,
    /// Keys per page of the initial read: the prefix is never read in one
    /// response, which etcd would have to build whole in its memory.
    pub page_size: u32,
    /// PEM CA bundle for `https://` endpoints (the system store is trusted
    /// too).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for clusters that require them.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user; the password is read from `password_file` (one line).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

pub const DEFAULT_PREFIX: &str = "/portcullis/";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            page_size: DEFAULT_PAGE_SIZE,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password_file: None,
        }
    }
}

impl EtcdSettings {
    /// Settings for `endpoints` and `prefix`, the rest defaults.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            prefix: prefix.to_owned(),
            ..Self::default()
        }
    }

    /// Every problem with these settings, as `snapshot.etcd.*` messages.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.endpoints.is_empty() {
            out.push("snapshot.etcd.endpoints: list at least one endpoint".to_owned());
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                out.push(format!(
                    "snapshot.etcd.endpoints: \"{e}\" is not an http:// or https:// URL"
                ));
            }
        }
        if self.prefix.is_empty() {
            out.push(
                "snapshot.etcd.prefix: must not be empty (it would claim the whole keyspace)"
                    .to_owned(),
            );
        }
        if self.page_size == 0 {
            out.push("snapshot.etcd.page_size must be greater than zero".to_owned());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            out.push("snapshot.etcd: set both cert_file and key_file, or neither".to_owned());
        }
        if self.user.is_some() != self.password_file.is_some() {
            out.push("snapshot.etcd: set both user and password_file, or neither".to_owned());
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                out.push(format!("snapshot.etcd.{key} must be greater than zero"));
            }
        }
        out
    }
}

/// Why etcd could not be reached or answered.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
}

/// Bounds one etcd call by `limit`.
pub async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(EtcdError::Etcd),
        Err(_) => Err(EtcdError::Timeout(limit)),
    }
}

/// Connects to `endpoints` (tonic balances requests over them), with the
/// TLS and credentials of `s`.
pub async fn connect(s: &EtcdSettings, endpoints: &[String]) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(s.connect_timeout)
        // A dead member behind a live TCP connection is noticed by
        // keep-alives, not by waiting for the next event.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(file)) = (&s.user, &s.password_file) {
        let password = read(file)?;
        let password = String::from_utf8_lossy(&password).trim_end().to_owned();
        options = options.with_user(user.clone(), password);
    }
    if endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &s.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    let connect = Client::connect(endpoints, Some(options));
    within(s.connect_timeout + s.request_timeout, connect).await
}

fn read(path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::File {
        path: path.to_owned(),
        source,
    })
}

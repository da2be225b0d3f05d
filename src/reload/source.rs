//! Where snapshots come from: a file, or a URL polled with ETags.
//!
//! The file source watches by polling `stat` (through symlinks) every
//! `poll_interval`: size, modification time, inode and device. That catches
//! an in-place write, an atomic rename, and a Kubernetes ConfigMap update,
//! which swaps a `..data` symlink so the path resolves to a new inode. No
//! inotify: polling survives every way a file can be replaced, including
//! the directory itself being swapped, at the cost of up to one interval of
//! delay (SIGHUP forces an immediate read).

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::etcd::EtcdSettings;
use super::fetch::{FetchError, FetchSettings, Fetched, Fetcher};
use super::state::read_capped;

/// Exactly one source: the type cannot hold two, or none.
#[derive(Debug, Clone)]
pub enum SnapshotSource {
    /// A whole document, read again every `poll_interval`.
    Polled(PolledSource),
    /// A prefix in an etcd cluster, one key per entry, followed with a
    /// watch (SPEC §3.1).
    Etcd(EtcdSettings),
}

/// A source of whole snapshot documents.
#[derive(Debug, Clone)]
pub enum PolledSource {
    File(PathBuf),
    /// Polled with ETags.
    Url {
        url: String,
        /// The whole request: resolve, connect, TLS, head and body.
        fetch_timeout: Duration,
        /// Extra PEM CA bundle trusted for an https URL, on top of the
        /// system store.
        ca_file: Option<PathBuf>,
    },
}

/// A snapshot source, open.
#[derive(Debug)]
pub enum Source {
    File(FileSource),
    /// Boxed: one per process, and much larger than the file variant.
    Url(Box<Fetcher>),
}

#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    max_bytes: usize,
    seen: Option<Fingerprint>,
}

/// What `stat` says about the file the path currently resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    device: u64,
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch the snapshot")]
    Fetch(#[from] FetchError),
}

impl SourceError {
    /// A bounded label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "not_found"
            }
            Self::File { .. } => "io",
            Self::Fetch(e) => e.kind(),
        }
    }
}

impl Source {
    /// The source `settings` names; fails only on a URL that cannot be
    /// fetched from (malformed, unsupported scheme, unreadable CA file).
    pub fn new(settings: &PolledSource, max_bytes: usize) -> Result<Self, FetchError> {
        Ok(match settings {
            PolledSource::File(path) => Self::file(path.clone(), max_bytes),
            PolledSource::Url {
                url,
                fetch_timeout,
                ca_file,
            } => Self::Url(Box::new(Fetcher::new(
                url,
                FetchSettings {
                    timeout: *fetch_timeout,
                    max_bytes,
                    ca_file: ca_file.clone(),
                },
            )?)),
        })
    }

    pub fn file(path: PathBuf, max_bytes: usize) -> Self {
        Self::File(FileSource {
            path,
            max_bytes,
            seen: None,
        })
    }

    /// `file:/path` or `url:https://...`, for logs and `GET /snapshot`.
    pub fn describe(&self) -> String {
        match self {
            Self::File(f) => format!("file:{}", f.path.display()),
            Self::Url(u) => format!("url:{}", u.url()),
        }
    }

    /// The snapshot bytes if they (may) have changed since the last poll;
    /// `force` reads them regardless.
    pub async fn poll(&mut self, force: bool) -> Result<Option<Bytes>, SourceError> {
        match self {
            Self::File(f) => f.poll(force).await,
            Self::Url(u) => {
                if force {
                    u.forget_etag();
                }
                match u.fetch().await? {
                    Fetched::NotModified => Ok(None),
                    Fetched::Body(b) => Ok(Some(b)),
                }
            }
        }
    }
}

impl FileSource {
    async fn poll(&mut self, force: bool) -> Result<Option<Bytes>, SourceError> {
        let path = self.path.clone();
        let max = self.max_bytes;
        let seen = self.seen;
        // stat and read are blocking; a large snapshot takes milliseconds.
        let read = tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&path)?;
            let now = Fingerprint {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode: meta.ino(),
                device: meta.dev(),
            };
            if !force && seen == Some(now) {
                return Ok((now, None));
            }
            read_capped(&path, max).map(|b| (now, Some(Bytes::from(b))))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
            Ok((fingerprint, bytes)) => {
                self.seen = Some(fingerprint);
                Ok(bytes)
            }
            Err(source) => Err(SourceError::File {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

//! Snapshot reloading: every source (file, URL, `PUT /snapshot`, SIGHUP,
//! the state directory at boot) goes through one pipeline:
//!
//! read → parse → validate → compile (on a blocking thread, off the async
//! workers) → version check → one atomic swap ([`store`]).
//!
//! A refused snapshot (unreadable, invalid, stale) leaves the running one in
//! force, is logged with every error, and counted. An applied snapshot is
//! saved to the state directory, if one is configured; at boot, when the
//! source cannot provide a valid snapshot, the saved one is used, and with
//! neither the proxy stays not-ready (503) rather than serve without policy.
//! The snapshot a swap retires is freed on a blocking thread once the last
//! request using it has finished, so freeing a large one never stalls a
//! request.

pub mod etcd;
pub mod fetch;
pub mod metrics;
pub mod source;
pub mod state;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

pub use metrics::{Reload, SnapshotMetrics};
pub use source::{PolledSource, SnapshotSource, Source, SourceError};
pub use state::StateDir;
pub use store::{ApplyError, Leftovers, Loaded, Meta, Store, prepare, prepare_over};

use crate::policy::PolicyOptions;
use crate::shutdown::{Phase, Shutdown};

/// Polling backs off to at most this after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where a snapshot being applied came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A configured source (`file:...`, `url:...`).
    Source(String),
    /// `PUT /snapshot`.
    Admin,
    /// The state directory, at boot.
    State(String),
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Self::Source(s) => s.clone(),
            Self::Admin => "admin".to_owned(),
            Self::State(path) => format!("state:{path}"),
        }
    }
}

/// A configured source, opened: whole documents polled, or an etcd prefix
/// followed.
#[derive(Debug)]
pub enum Opened {
    Polled(Source),
    Etcd(etcd::EtcdSettings),
}

impl Opened {
    /// Fails only on a URL that cannot be fetched from (see [`Source::new`]).
    pub fn new(source: &SnapshotSource, max_bytes: usize) -> Result<Self, fetch::FetchError> {
        Ok(match source {
            SnapshotSource::Polled(p) => Self::Polled(Source::new(p, max_bytes)?),
            SnapshotSource::Etcd(e) => Self::Etcd(e.clone()),
        })
    }
}

/// Applies snapshots to the store.
#[derive(Debug)]
pub struct Reloader {
    store: Arc<Store>,
    options: PolicyOptions,
    state: Option<StateDir>,
    max_bytes: usize,
    metrics: SnapshotMetrics,
    /// Serialises the commit step (swap, metrics, state file) so that
    /// concurrent sources cannot leave the version gauge or the saved
    /// snapshot behind the snapshot in force. Compiling stays concurrent.
    commit: tokio::sync::Mutex<()>,
    /// How following etcd goes, when that is the source.
    etcd: std::sync::Mutex<Option<etcd::Status>>,
}

impl Reloader {
    pub fn new(
        store: Arc<Store>,
        options: PolicyOptions,
        state: Option<StateDir>,
        max_bytes: usize,
        metrics: SnapshotMetrics,
    ) -> Self {
        Self {
            store,
            options,
            state,
            max_bytes,
            metrics,
            commit: tokio::sync::Mutex::new(()),
            etcd: std::sync::Mutex::new(None),
        }
    }

    /// How following etcd goes (`None` for the other sources).
    pub fn etcd_status(&self) -> Option<etcd::Status> {
        self.etcd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Updates the etcd status (the follower's), and the gauge of refused
    /// entries with it.
    pub(crate) fn update_etcd(&self, update: impl FnOnce(&mut etcd::Status)) {
        let mut guard = self
            .etcd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let status = guard.get_or_insert_with(etcd::Status::default);
        update(status);
        self.metrics.invalid_entries(status.invalid_entries.len());
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The pipeline. Returns what was applied, or why nothing was.
    pub async fn apply(&self, bytes: Bytes, origin: Origin) -> Result<Meta, ApplyError> {
        let started = Instant::now();
        let source = origin.describe();
        if bytes.len() > self.max_bytes {
            self.metrics.refused(Reload::Invalid);
            let e = ApplyError::TooLarge {
                bytes: bytes.len(),
                limit: self.max_bytes,
            };
            tracing::warn!(%source, error = %e, "snapshot refused");
            return Err(e);
        }
        let options = self.options;
        let src = source.clone();
        let keep = self.keeps_state();
        // The set in force: a document that changes little compiles little.
        let previous = self.store.current();
        // At idle priority (see `background`): requests come first.
        let prepared = crate::background::run(move || {
            let previous = previous.as_ref().map(|l| &l.set);
            prepare_over(bytes, keep, &src, options, previous)
        })
        .await
        .map_err(|e| ApplyError::Internal(e.to_string()))
        .and_then(|r| r);
        let (loaded, bytes, leftovers) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.metrics.refused(e.result());
                log_refused(&source, &e);
                // Gives the refused document's pages back.
                tokio::spawn(crate::background::trim());
                return Err(e);
            }
        };
        let committed = self.commit(loaded, bytes, origin, started).await;
        // The model it was compiled from, freed after the swap.
        drop(leftovers);
        committed
    }

    /// The commit step for a snapshot already compiled from `bytes` (the
    /// document the state directory keeps): swap, metrics, log, save.
    ///
    /// `state` is the document to save in the state directory; `None` when
    /// the caller saves on its own schedule (the etcd follower, whose
    /// document would cost more to write than a change costs to apply).
    pub async fn commit(
        &self,
        loaded: impl Into<Arc<Loaded>>,
        state: Option<Bytes>,
        origin: Origin,
        started: Instant,
    ) -> Result<Meta, ApplyError> {
        let loaded = loaded.into();
        let source = origin.describe();
        let meta = loaded.meta.clone();
        let _commit = self.commit.lock().await;
        let retired = match self.store.apply(loaded) {
            Ok(old) => old,
            Err(e) => {
                self.metrics.refused(e.result());
                log_refused(&source, &e);
                return Err(e);
            }
        };
        let result = if matches!(origin, Origin::State(_)) {
            Reload::Restored
        } else {
            Reload::Applied
        };
        self.metrics.applied(result, meta.version, meta.loaded_at);
        tracing::info!(
            %source,
            version = meta.version,
            previous = retired.as_ref().map(|r| r.meta.version),
            sha256 = %meta.sha256,
            deployments = meta.stats.deployments,
            policies = meta.stats.policies,
            ip_rules = meta.stats.ip_rules,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot {result}"
        );
        if let Some(old) = retired {
            retire(old);
        }
        if let (Some(bytes), false) = (state, matches!(origin, Origin::State(_))) {
            self.save_state(bytes).await;
        }
        Ok(meta)
    }

    /// Writes `bytes` to the state directory, if one is configured.
    pub async fn save_state(&self, bytes: Bytes) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let saved = tokio::task::spawn_blocking(move || state.save(&bytes)).await;
        if let Ok(Err(e)) | Err(e) = saved.map_err(std::io::Error::other) {
            tracing::warn!(error = %e, "cannot save the snapshot to the state directory");
        }
    }

    /// Whether a state directory is configured.
    pub fn keeps_state(&self) -> bool {
        self.state.is_some()
    }

    /// Keeps the store following `source` until shutdown: the first
    /// snapshot (or the state directory's), then every change. `now` (SIGHUP)
    /// reads a polled source at once; etcd is followed continuously.
    pub async fn run(
        self: Arc<Self>,
        source: Opened,
        poll_interval: Duration,
        now: Arc<Notify>,
        shutdown: Shutdown,
    ) {
        match source {
            Opened::Polled(mut source) => {
                self.initial(&mut source).await;
                self.watch(source, poll_interval, now, shutdown).await;
            }
            Opened::Etcd(settings) => etcd::follow(self, settings, shutdown).await,
        }
    }

    /// At boot: the source's snapshot, else the state directory's. Returns
    /// whether a snapshot is in force.
    pub async fn initial(&self, source: &mut Source) -> bool {
        match source.poll(true).await {
            Ok(Some(bytes)) => {
                if self
                    .apply(bytes, Origin::Source(source.describe()))
                    .await
                    .is_ok()
                {
                    return true;
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.refused(Reload::Unreadable);
                tracing::warn!(source = %source.describe(), error = %error_chain(&e), "snapshot source unavailable at start");
            }
        }
        self.restore().await
    }

    /// At boot, when the source has no valid snapshot: the state
    /// directory's. Returns whether a snapshot is in force.
    pub async fn restore(&self) -> bool {
        let Some(state) = &self.state else {
            tracing::error!(
                "no valid snapshot and no state directory: not ready until a snapshot is loaded"
            );
            return false;
        };
        let dir = state.clone();
        let max = self.max_bytes;
        let saved = tokio::task::spawn_blocking(move || dir.load(max))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match saved {
            Ok(Some(bytes)) => {
                let origin = Origin::State(state.path().display().to_string());
                let ok = self.apply(Bytes::from(bytes), origin).await.is_ok();
                if ok {
                    tracing::warn!(
                        "serving the last good snapshot from the state directory until the source provides one"
                    );
                }
                ok
            }
            Ok(None) => {
                tracing::error!(
                    "no valid snapshot, and none saved in the state directory: not ready"
                );
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state directory: not ready");
                false
            }
        }
    }

    /// Polls `source` every `interval` (at once on `now`), applying what
    /// changed, until shutdown. Failures back off up to a minute.
    pub async fn watch(
        &self,
        mut source: Source,
        interval: Duration,
        now: Arc<Notify>,
        mut shutdown: Shutdown,
    ) {
        let mut delay = interval;
        let mut failing: Option<&'static str> = None;
        loop {
            let force = tokio::select! {
                () = tokio::time::sleep(delay) => false,
                () = now.notified() => true,
                () = shutdown.reached(Phase::Draining) => return,
            };
            match source.poll(force).await {
                Ok(bytes) => {
                    if let Some(kind) = failing.take() {
                        tracing::info!(source = %source.describe(), after = kind, "snapshot source readable again");
                    }
                    delay = interval;
                    if let Some(bytes) = bytes
                        && !self.is_current(&bytes)
                    {
                        let _ = self.apply(bytes, Origin::Source(source.describe())).await;
                    }
                }
                Err(e) => {
                    self.metrics.refused(Reload::Unreadable);
                    // Logged when the failure starts or changes, not every poll.
                    if failing != Some(e.kind()) {
                        tracing::warn!(source = %source.describe(), error = %error_chain(&e), "cannot read the snapshot source; keeping the snapshot in force");
                        failing = Some(e.kind());
                    }
                    delay = (delay * 2).min(MAX_BACKOFF.max(interval));
                }
            }
        }
    }

    /// Whether `bytes` are exactly the snapshot in force (a touched file or
    /// a refreshed ConfigMap with the same content is not a reload).
    fn is_current(&self, bytes: &[u8]) -> bool {
        self.store.current().is_some_and(|c| {
            let digest = Sha256::digest(bytes);
            store::hex(&digest) == c.meta.sha256
        })
    }
}

fn log_refused(source: &str, e: &ApplyError) {
    match e {
        ApplyError::Invalid(errors) => {
            tracing::warn!(%source, errors = errors.0.len(), "snapshot refused: invalid; the running snapshot stays in force");
            for err in &errors.0 {
                tracing::warn!(%source, error = %err, "snapshot error");
            }
        }
        _ => {
            tracing::warn!(%source, error = %e, "snapshot refused; the running snapshot stays in force")
        }
    }
}

/// Frees a replaced snapshot on a background thread once no request uses
/// it (a few milliseconds for a large set, which a request worker must
/// not spend).
fn retire(old: Arc<Loaded>) {
    tokio::spawn(async move {
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(loaded) => {
                    crate::background::dispose(loaded);
                    return;
                }
                Err(shared) => {
                    old = shared;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

/// "error: cause: root cause", for one-line logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

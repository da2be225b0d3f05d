//! The current snapshot: one atomically swapped pointer to everything that
//! changes together (policies, host names, backends), so a request never
//! sees half of one snapshot and half of another.
//!
//! Requests load it once, after their headers are read (SPEC §1.8), and
//! keep what they loaded until they finish; a swap affects the next request
//! on every connection. A snapshot is applied only after it parsed,
//! validated and compiled, and only if its version is newer.
//!
//! Long-lived connections that must follow policy changes (the filtered
//! remote-cluster pass-through, SPEC §2.1) [`subscribe`](Store::subscribe)
//! to the version of every swap.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwapOption, Guard};
use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::metrics::Reload;
use crate::policy::{
    Counterparts, PolicyOptions, PolicySet, SnapshotErrors, Stats, parse_snapshot,
    parse_snapshot_over,
};

/// A compiled snapshot and what is known about it.
#[derive(Debug)]
pub struct Loaded {
    pub set: PolicySet,
    pub meta: Meta,
}

/// Shown by `GET /snapshot` and logged on every reload.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub version: u64,
    /// SHA-256 of the snapshot bytes, hex: compare with `sha256sum` to see
    /// which file a fleet member runs. Empty for the etcd source, whose
    /// state is named by its revision (`version`).
    pub sha256: String,
    /// Unix seconds.
    pub loaded_at: f64,
    /// Where it came from: `file:/path`, `url:https://...`, `admin`, `state`.
    pub source: String,
    pub bytes: usize,
    #[serde(flatten)]
    pub stats: Stats,
}

/// Why a snapshot was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Invalid(#[from] SnapshotErrors),
    #[error("stale snapshot: version {offered} is not newer than the running version {running}")]
    Stale { offered: u64, running: u64 },
    #[error("snapshot is {bytes} bytes, over the {limit}-byte limit (snapshot.max_bytes)")]
    TooLarge { bytes: usize, limit: usize },
    #[error("internal error while compiling the snapshot: {0}")]
    Internal(String),
}

impl ApplyError {
    /// The `snapshot_reloads_total{result}` label.
    pub fn result(&self) -> Reload {
        match self {
            Self::Invalid(_) | Self::TooLarge { .. } | Self::Internal(_) => Reload::Invalid,
            Self::Stale { .. } => Reload::Stale,
        }
    }
}

/// Parses, validates and compiles snapshot bytes. CPU-heavy for large
/// snapshots: call it off the async workers (`background::run`).
pub fn prepare(
    bytes: &[u8],
    source: &str,
    options: PolicyOptions,
) -> Result<Loaded, SnapshotErrors> {
    let digest = DocumentDigest::of(bytes);
    let snapshot = parse_snapshot(bytes)?;
    let set = PolicySet::compile(&snapshot, options);
    Ok(compiled(set, Some(digest), source))
}

/// [`prepare`] for a document that replaces `previous` (the set in force;
/// none at a first load): the document is read over `previous`, so an
/// entry it holds unchanged is never kept as a model nor compiled again
/// (see `policy::fingerprint`), and each new or changed policy is compiled
/// as it is read. A reload that changes little then holds little more than
/// the set in force and the document: the large snapshot re-applied peaks
/// at 1.8× the settled size instead of 2.8×, and a first load at 228 MiB
/// instead of 318 (`benches/reload.sh`).
///
/// Takes the document and gives it back only when `keep` (the state
/// directory saves it once it is in force): otherwise it is freed as soon
/// as it is parsed, before the compile allocates the new set. What the
/// read kept of the changed entries is handed back as [`Leftovers`], to be
/// freed after the swap.
pub fn prepare_over(
    bytes: Bytes,
    keep: bool,
    source: &str,
    options: PolicyOptions,
    previous: Option<&PolicySet>,
) -> Result<(Loaded, Option<Bytes>, Leftovers), ApplyError> {
    let started = Instant::now();
    let digest = DocumentDigest::of(&bytes);
    let hashed = started.elapsed();
    // Over a set compiled with other options nothing can be reused: read
    // as a first load is.
    let over = previous.and_then(|p| Counterparts::new(p, options).map(|c| (p, c)));
    let (previous, over) = match over {
        Some((p, c)) => (Some(p), c),
        None => (None, Counterparts::none()),
    };
    let read = parse_snapshot_over(&bytes, over).map_err(ApplyError::Invalid)?;
    let parsed = started.elapsed();
    let kept = keep.then_some(bytes);
    let changed = read.changed();
    let set = crate::memory::on_own_thread(|| read.compile(options, previous));
    // Not reached: the document was read over this very set (or none).
    let set = set
        .ok_or_else(|| ApplyError::Internal("the document was read over another set".to_owned()))?;
    tracing::debug!(
        hash_ms = hashed.as_millis() as u64,
        parse_ms = (parsed - hashed).as_millis() as u64,
        compile_ms = (started.elapsed() - parsed).as_millis() as u64,
        changed_entries = changed,
        "snapshot prepared"
    );
    let loaded = compiled(set, Some(digest), source);
    Ok((loaded, kept, Leftovers(Some(Box::new(read)))))
}

/// What a reload leaves to free once its set is in force: what its read
/// kept of the changed entries (at a first load, every deployment's model;
/// freeing the large snapshot's whole model took about 150 ms). Dropping it
/// frees it and returns free memory to the OS (see `memory`) on a
/// background thread, so neither delays the swap nor a request.
pub struct Leftovers(Option<Box<dyn Send>>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        crate::background::dispose(self.0.take());
    }
}

/// What a loaded snapshot records of the document it came from.
#[derive(Debug, Clone)]
pub struct DocumentDigest {
    sha256: String,
    bytes: usize,
}

impl DocumentDigest {
    pub fn of(document: &[u8]) -> Self {
        Self {
            sha256: hex(&Sha256::digest(document)),
            bytes: document.len(),
        }
    }
}

/// A compiled set with its metadata; `document` describes the document it
/// was compiled from, if there was one: the etcd source compiles entries,
/// and its state is named by its revision alone.
pub fn compiled(set: PolicySet, document: Option<DocumentDigest>, source: &str) -> Loaded {
    let (sha256, bytes) = document.map_or((String::new(), 0), |d| (d.sha256, d.bytes));
    let meta = Meta {
        version: set.version(),
        sha256,
        loaded_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        source: source.to_owned(),
        bytes,
        stats: set.stats(),
    };
    Loaded { set, meta }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Holds the current snapshot.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Loaded>,
    /// Serialises appliers so the version check and the swap are one step.
    apply: Mutex<()>,
    /// The version of the snapshot in force, sent after every swap (0
    /// before the first).
    swapped: watch::Sender<u64>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot, cheaply, for one request.
    pub fn load(&self) -> Guard<Option<Arc<Loaded>>> {
        self.current.load()
    }

    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Installs `next` if its version is newer than the running one (any
    /// version, for the first). Returns the snapshot it replaced.
    pub fn apply(&self, next: impl Into<Arc<Loaded>>) -> Result<Option<Arc<Loaded>>, ApplyError> {
        let next = next.into();
        let _serial = self.apply.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = self.current.load().as_ref()
            && next.meta.version <= running.meta.version
        {
            return Err(ApplyError::Stale {
                offered: next.meta.version,
                running: running.meta.version,
            });
        }
        let version = next.meta.version;
        let previous = self.current.swap(Some(next));
        // After the swap: a subscriber woken by this sees the new snapshot.
        self.swapped.send_replace(version);
        Ok(previous)
    }

    /// Observes swaps: the receiver changes (to the new version) each time
    /// a snapshot is applied. Cheap; one per long-lived connection is fine.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.swapped.subscribe()
    }
}

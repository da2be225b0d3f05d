//! Following a prefix (SPEC §3.1): read it in pages at one revision, apply
//! it, then watch from the next revision and apply each watch response
//! (all events of one or more revisions) as one swap.
//!
//! One endpoint at a time, so `GET /snapshot` can say which one is in
//! use: a failure moves on to the next endpoint after a backoff. A watch
//! resumes from the revision after the last one applied; when etcd has
//! compacted that revision away, the prefix is read again whole.
//!
//! While etcd is unreachable the state in force keeps serving. At boot,
//! when etcd cannot be read, the state directory's snapshot (the last
//! state in force, saved with its revision as `version`) is served until
//! etcd answers.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use serde::Serialize;

use super::client::{EtcdError, EtcdSettings, connect, within};
use super::entries::{Change, Entries, Refused};
use super::read::{PrefixState, read_prefix};
use crate::memory::on_own_thread;
use crate::reload::store::{Loaded, compiled};
use crate::reload::{ApplyError, Origin, Reload, Reloader};
use crate::shutdown::{Phase, Shutdown};

/// First retry after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the watch asks etcd for its current revision (to report how
/// far behind the state in force is, and to notice a silent stream).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// A watch that has answered nothing for this long is given up.
const SILENT_LIMIT: Duration = Duration::from_secs(20);
/// The state directory is written at most this often (see
/// `Follower::save_if_due`).
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// `source` in `GET /snapshot` and the logs (SPEC §3.1).
const SOURCE: &str = "etcd";

/// How following goes, for `GET /snapshot` and `/readyz`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    /// The endpoint in use (or last tried).
    pub endpoint: Option<String>,
    /// Whether a watch is open.
    pub connected: bool,
    /// The revision in force.
    pub revision: i64,
    /// The newest revision etcd has reported.
    pub seen_revision: i64,
    /// Refused entries: their last valid version (if any) stays in force.
    pub invalid_entries: Vec<Refused>,
    /// The last failure, until the next success.
    pub error: Option<String>,
}

impl Status {
    /// How many revisions the state in force is behind what etcd reported.
    pub fn behind(&self) -> i64 {
        (self.seen_revision - self.revision).max(0)
    }
}

/// Why a following session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("revision {wanted} was compacted (oldest kept: {oldest}); reading the prefix again")]
    Compacted { wanted: i64, oldest: i64 },
    #[error("etcd cancelled the watch: {0}")]
    Cancelled(String),
    #[error("the watch stream ended")]
    Ended,
    #[error("the watch said nothing for {0:?}")]
    Silent(Duration),
    #[error("compiling the entries failed: {0}")]
    Internal(String),
}

/// Follows `settings`' prefix until shutdown, applying through `reloader`.
pub async fn follow(reloader: Arc<Reloader>, settings: EtcdSettings, mut shutdown: Shutdown) {
    let mut f = Follower {
        entries: new_entries(&settings.prefix, &reloader),
        reloader,
        settings,
        applied: None,
        endpoint: 0,
        saved: None,
        saving: None,
        base: None,
    };
    f.reloader.update_etcd(|_| {});
    let mut restore_tried = false;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let ended = tokio::select! {
            e = f.session() => e,
            () = shutdown.reached(Phase::Draining) => return,
        };
        let endpoint = f.current_endpoint().to_owned();
        let error = crate::reload::error_chain(&ended);
        tracing::warn!(%endpoint, %error, "etcd: following interrupted; the state in force keeps serving");
        f.reloader.update_etcd(|s| {
            s.connected = false;
            s.error = Some(error);
        });
        if !restore_tried && !f.reloader.store().is_loaded() {
            restore_tried = true;
            f.reloader.restore().await;
        }
        if let SessionError::Compacted { .. } = ended {
            // Not the endpoint's fault: read again at once, from it.
            continue;
        }
        // A session that ran a while was healthy: start the backoff over.
        if started.elapsed() > MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        }
        f.endpoint = f.endpoint.wrapping_add(1);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.reached(Phase::Draining) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

struct Follower {
    reloader: Arc<Reloader>,
    settings: EtcdSettings,
    entries: Entries,
    /// The revision in force from etcd; `None` until the prefix was read
    /// (or after a compaction made reading it again necessary).
    applied: Option<i64>,
    /// Index of the endpoint in use, modulo the list's length.
    endpoint: usize,
    /// The revision last saved to the state directory, and when.
    saved: Option<(i64, Instant)>,
    /// The save under way, if any.
    saving: Option<tokio::task::JoinHandle<()>>,
    /// The set last compiled from `entries` (swapped in or not): the next
    /// change compiles from it, reusing what the change did not touch.
    /// `None` until the first compile and after a whole read.
    base: Option<Arc<Loaded>>,
}

impl Follower {
    fn current_endpoint(&self) -> &str {
        let list = &self.settings.endpoints;
        list.get(self.endpoint % list.len().max(1))
            .map_or("", String::as_str)
    }

    /// Connects, reads the prefix if needed, then watches. Returns only
    /// when following cannot go on.
    async fn session(&mut self) -> SessionError {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(e) => {
                // Compacted: the revision to resume from is gone. Internal:
                // the entries or the set compiled from them were lost.
                // Either way, only a fresh read of the prefix goes on.
                if let SessionError::Compacted { .. } | SessionError::Internal(_) = e {
                    self.applied = None;
                }
                e
            }
        }
    }

    async fn session_inner(&mut self) -> Result<std::convert::Infallible, SessionError> {
        let endpoint = self.current_endpoint().to_owned();
        self.reloader
            .update_etcd(|s| s.endpoint = Some(endpoint.clone()));
        let mut client = connect(&self.settings, std::slice::from_ref(&endpoint)).await?;
        let from = match self.applied {
            Some(revision) => revision + 1,
            None => self.read_prefix(&mut client).await? + 1,
        };
        self.watch(&mut client, from).await
    }

    /// Reads the whole prefix at one revision, page by page, and applies
    /// it. Returns the revision read.
    async fn read_prefix(&mut self, client: &mut Client) -> Result<i64, SessionError> {
        let started = Instant::now();
        let PrefixState { revision, kvs } = read_prefix(client, &self.settings).await?;
        let batch: Vec<(String, Change)> = kvs
            .iter()
            .map(|kv| {
                let value = Bytes::copy_from_slice(kv.value());
                (key_string(kv.key()), Change::Put(value))
            })
            .collect();
        tracing::info!(
            prefix = %self.settings.prefix,
            revision,
            keys = batch.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "etcd: prefix read"
        );
        // The values are copied out: free the read before the compile, so
        // its pages are free when the compile trims.
        drop(kvs);
        // A fresh read replaces everything: keys deleted while we were away
        // are simply absent. The entries it replaces (163k stubs at the
        // large scale) are freed off the request workers.
        let stale = std::mem::replace(
            &mut self.entries,
            new_entries(&self.settings.prefix, &self.reloader),
        );
        // Nothing to free at start-up: no trim beside the first compile.
        if !stale.is_empty() {
            crate::background::dispose(stale);
        }
        self.apply(batch, revision, true).await?;
        Ok(revision)
    }

    async fn watch(
        &mut self,
        client: &mut Client,
        from: i64,
    ) -> Result<std::convert::Infallible, SessionError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let limit = self.settings.request_timeout;
        let prefix = self.settings.prefix.clone();
        let watched = within(limit, client.watch(prefix, Some(options))).await?;
        let (mut watcher, mut stream) = watched.split();
        self.reloader.update_etcd(|s| {
            s.connected = true;
            s.error = None;
        });
        tracing::info!(endpoint = %self.current_endpoint(), from, "etcd: watching");
        let mut heard = Instant::now();
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = progress.tick() => {
                    if heard.elapsed() > SILENT_LIMIT {
                        return Err(SessionError::Silent(SILENT_LIMIT));
                    }
                    self.save_if_due(false).await?;
                    within(limit, watcher.request_progress()).await?;
                    continue;
                }
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => return Err(SessionError::Ended),
                Err(e) => return Err(EtcdError::Etcd(e).into()),
            };
            heard = Instant::now();
            self.handle(response, from).await?;
        }
    }

    async fn handle(&mut self, response: WatchResponse, from: i64) -> Result<(), SessionError> {
        if response.compact_revision() > 0 {
            return Err(SessionError::Compacted {
                wanted: self.applied.map_or(from, |r| r + 1),
                oldest: response.compact_revision(),
            });
        }
        if response.canceled() {
            return Err(SessionError::Cancelled(response.cancel_reason().to_owned()));
        }
        let header_revision = response.header().map_or(0, |h| h.revision());
        self.reloader
            .update_etcd(|s| s.seen_revision = s.seen_revision.max(header_revision));
        let events = response.events();
        let Some(revision) = events
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .max()
        else {
            return Ok(()); // created, or a progress notification
        };
        let batch: Vec<(String, Change)> = events
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                let change = match e.event_type() {
                    EventType::Put => Change::Put(Bytes::copy_from_slice(kv.value())),
                    EventType::Delete => Change::Delete,
                };
                Some((key_string(kv.key()), change))
            })
            .collect();
        self.apply(batch, revision, false).await
    }

    /// Applies one batch at `revision` as one swap (off the async workers:
    /// validation and compiling are CPU work).
    async fn apply(
        &mut self,
        batch: Vec<(String, Change)>,
        revision: i64,
        whole: bool,
    ) -> Result<(), SessionError> {
        let started = Instant::now();
        let before: Vec<Refused> = self.entries.refused();
        let mut entries = std::mem::take(&mut self.entries);
        let options = self.reloader.options;
        let keep_unchanged = !whole && self.reloader.store().is_loaded();
        // A whole read starts the entries over: nothing to reuse.
        let base = if whole { None } else { self.base.take() };
        // At idle priority (see `background`): requests come first.
        let worked = crate::background::run(move || {
            let applied = entries.apply(batch);
            if keep_unchanged && applied.changed == 0 {
                return (entries, applied, base, Ok(None));
            }
            let version = u64::try_from(revision).unwrap_or(0);
            let set = if whole {
                // The whole world: compiled, then the entries' indexes
                // copied, each on a thread (and so an arena) of its own,
                // away from the values read and the models, which are freed
                // now; their pages then go back whole (see `memory`).
                let shared = std::sync::Mutex::new(&mut entries);
                let set = on_own_thread(|| {
                    let mut e = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    e.compile(version, options, None)
                });
                let indexed: &Entries = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
                if let Some(set) = &set {
                    let copy = on_own_thread(|| indexed.compacted(set));
                    entries = copy;
                }
                // The read's values and models, and the entries before
                // their copy, were freed: their pages go back now, from
                // this thread (measured: trimming after this thread had
                // ended left 188 MiB resident instead of 158).
                crate::memory::release_free_memory();
                set
            } else {
                // From the set compiled before, with the models of the
                // entries changed since: nothing else of the world is held
                // twice.
                entries.compile(version, options, base.as_ref().map(|b| &b.set))
            };
            drop(base);
            let Some(set) = set else {
                return (entries, applied, None, Err(()));
            };
            let loaded = Arc::new(compiled(set, None, SOURCE));
            (entries, applied, Some(loaded.clone()), Ok(Some(loaded)))
        })
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))?;
        let (entries, applied, base, compiled) = worked;
        self.entries = entries;
        self.base = base;
        let compiled = compiled.map_err(|()| {
            SessionError::Internal("the entries no longer match the set compiled from them".into())
        })?;
        let refused = self.entries.refused();
        for r in refused.iter().filter(|r| !before.contains(r)) {
            tracing::warn!(key = %r.key, error = %r.message, "etcd: entry refused; its last valid version (if any) stays in force");
        }
        if let Some(loaded) = compiled {
            match self
                .reloader
                .commit(loaded, None, Origin::Source(SOURCE.to_owned()), started)
                .await
            {
                // The same revision again (restored from the state
                // directory, or read again after a reconnect): in force.
                Ok(_) => {}
                Err(ApplyError::Stale { offered, running }) if offered == running => {}
                Err(e) => {
                    // Logged by the reloader; etcd is still the source, so
                    // keep following (a newer revision will apply).
                    tracing::warn!(error = %e, revision, "etcd: revision not applied");
                }
            }
        } else if applied.refused > 0 {
            // Nothing changed in force: every change was refused.
            self.reloader.metrics.refused(Reload::Invalid);
        }
        self.applied = Some(revision);
        self.reloader.update_etcd(|s| {
            s.revision = revision;
            s.seen_revision = s.seen_revision.max(revision);
            s.invalid_entries = refused;
        });
        self.save_if_due(whole).await
    }

    /// Saves the state in force to the state directory, after the swap and
    /// off the swap's path: at most every [`SAVE_EVERY`] (a large state
    /// takes a few hundred milliseconds to write), at once after a whole
    /// read, and by the progress tick when changes have stopped.
    async fn save_if_due(&mut self, now: bool) -> Result<(), SessionError> {
        let Some(revision) = self.applied else {
            return Ok(());
        };
        let due = now || self.saved.is_none_or(|(_, at)| at.elapsed() >= SAVE_EVERY);
        let pending = self.saved.is_none_or(|(r, _)| r != revision);
        let busy = self.saving.as_ref().is_some_and(|t| !t.is_finished());
        if !self.reloader.keeps_state() || !due || !pending || busy {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.entries);
        let version = u64::try_from(revision).unwrap_or(0);
        // The values as etcd sent them, joined: a few tens of milliseconds
        // at the large scale, off the async workers.
        let (entries, document) = crate::background::run(move || {
            let document = entries.state_document(version);
            (entries, document)
        })
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))?;
        self.entries = entries;
        self.saved = Some((revision, Instant::now()));
        let Some(document) = document else {
            tracing::warn!("etcd: the entries keep no values; the state is not saved");
            return Ok(());
        };
        let reloader = self.reloader.clone();
        self.saving = Some(tokio::spawn(async move {
            reloader.save_state(Bytes::from(document)).await;
        }));
        Ok(())
    }
}

/// Entries that keep their values when the state is saved.
fn new_entries(prefix: &str, reloader: &Reloader) -> Entries {
    let entries = Entries::new(prefix);
    if reloader.keeps_state() {
        entries.keeping_values()
    } else {
        entries
    }
}

fn key_string(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

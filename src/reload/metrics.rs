//! Snapshot metrics, observed by the reloader.

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct SnapshotMetrics {
    version: IntGauge,
    loaded_at: Gauge,
    reloads: IntCounterVec,
    invalid_entries: IntGauge,
}

impl SnapshotMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            version: IntGauge::new(
                "snapshot_version",
                "Version of the snapshot in force (0: none)",
            )?,
            loaded_at: Gauge::new(
                "snapshot_loaded_timestamp_seconds",
                "Unix time the snapshot in force was applied",
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "snapshot_reloads_total",
                    "Snapshot loads by result: applied, restored (from the state directory), invalid, stale, unreadable",
                ),
                &["result"],
            )?,
            invalid_entries: IntGauge::new(
                "snapshot_invalid_entries",
                "Entries of the etcd source refused on their own (their last valid version, if any, stays in force)",
            )?,
        };
        registry.register(Box::new(m.version.clone()))?;
        registry.register(Box::new(m.loaded_at.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.invalid_entries.clone()))?;
        Ok(m)
    }

    pub fn applied(&self, result: Reload, version: u64, loaded_at: f64) {
        self.count(result);
        self.version.set(i64::try_from(version).unwrap_or(i64::MAX));
        self.loaded_at.set(loaded_at);
    }

    pub fn invalid_entries(&self, n: usize) {
        self.invalid_entries
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn refused(&self, result: Reload) {
        self.count(result);
    }

    fn count(&self, result: Reload) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
    }
}

/// What became of one reload attempt: `snapshot_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Applied,
    /// The state directory's snapshot, at start.
    Restored,
    Invalid,
    /// Not newer than the snapshot in force.
    Stale,
    /// The source could not be read.
    Unreadable,
}

impl Reload {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Restored => "restored",
            Self::Invalid => "invalid",
            Self::Stale => "stale",
            Self::Unreadable => "unreadable",
        }
    }
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

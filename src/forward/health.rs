//! Backend node health: passive ejection, and optional active checks.
//!
//! Passive: after `eject_after` consecutive connect failures a node is
//! ejected (skipped by new requests) for a backoff that doubles with each
//! ejection, from `eject_base` up to `eject_max`, and resets on the first
//! success. When the backoff ends the node gets requests again, so a
//! recovered node rejoins without any probe traffic. Active checks, when
//! enabled, GET a path on every node in use and eject or restore it by the
//! answer (any HTTP answer below 500 counts as alive: an Elasticsearch node
//! with security on answers 401).
//!
//! All state is atomics: checking a node costs one load on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Passive ejection settings (`[upstream]`).
#[derive(Debug, Clone, Copy)]
pub struct Ejection {
    pub after_failures: u32,
    pub base: Duration,
    pub max: Duration,
}

/// Active health-check settings (`[upstream] health_check_*`).
#[derive(Debug, Clone)]
pub struct ActiveChecks {
    pub interval: Duration,
    pub path: String,
    pub timeout: Duration,
}

/// One node's health.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    failures: AtomicU32,
    /// Ejections in a row, for the backoff.
    level: AtomicU32,
    /// Milliseconds after `epoch` until which the node is ejected.
    ejected_until: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            level: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether new requests should skip this node.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) > self.now_ms()
    }

    /// A connect succeeded, or an active check found the node alive.
    pub fn succeeded(&self) {
        // Cheap when healthy: only write when something is set.
        if self.failures.load(Ordering::Relaxed) != 0 || self.level.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.level.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Release);
        }
    }

    /// A connect failed. Returns the ejection period when this failure
    /// ejected the node.
    pub fn failed(&self, e: &Ejection) -> Option<Duration> {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < e.after_failures.max(1) {
            return None;
        }
        Some(self.eject(e))
    }

    /// Ejects now (an active check failed, or too many failures).
    pub fn eject(&self, e: &Ejection) -> Duration {
        self.failures.store(0, Ordering::Relaxed);
        let level = self.level.fetch_add(1, Ordering::AcqRel).min(16);
        let period = e.base.saturating_mul(1 << level).min(e.max);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Release);
        period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Ejection = Ejection {
        after_failures: 2,
        base: Duration::from_secs(1),
        max: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn ejects_after_n_failures_with_doubling_backoff() {
        let h = Health::default();
        assert_eq!(h.failed(&E), None);
        assert!(!h.is_ejected());
        assert_eq!(h.failed(&E), Some(Duration::from_secs(1)));
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!h.is_ejected(), "back after the backoff");
        h.failed(&E);
        assert_eq!(h.failed(&E), Some(Duration::from_secs(2)));
        h.failed(&E);
        assert_eq!(h.failed(&E), Some(Duration::from_secs(4)));
        h.failed(&E);
        assert_eq!(h.failed(&E), Some(Duration::from_secs(5)), "capped");
        h.succeeded();
        assert!(!h.is_ejected());
        h.failed(&E);
        assert_eq!(
            h.failed(&E),
            Some(Duration::from_secs(1)),
            "reset by success"
        );
    }
}

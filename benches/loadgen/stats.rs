//! What a run measured: latency histograms (HdrHistogram, microseconds),
//! status and failure counts, and the CPU time and resident memory of the
//! server processes named with `--measure-pid`, read from `/proc`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::client::Failure;

/// Highest latency kept exactly; longer ones are recorded as this.
const MAX_TRACKED_US: u64 = 600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Counters and histograms, shared by all tasks of a run. The lock is only
/// held to record, never across an await.
pub struct Stats(Mutex<Counts>);

#[derive(Clone)]
pub struct Counts {
    /// Request latency. Open loop: from the intended send time (free of
    /// coordinated omission). Otherwise: from the actual send.
    pub latency: Histogram<u64>,
    /// From the actual send to the end of the response (open loop only
    /// differs from `latency`).
    pub service: Histogram<u64>,
    /// TCP connect to HTTP handshake done (PROXY header and TLS included).
    pub connect: Histogram<u64>,
    pub status: BTreeMap<u16, u64>,
    pub failures: BTreeMap<Failure, u64>,
    pub body_bytes: u64,
    /// Keep-alive connections found closed by the server and replaced.
    pub reconnects: u64,
    /// Connections per negotiated TLS version, suite and group.
    pub tls: BTreeMap<String, u64>,
}

impl Stats {
    pub fn new() -> Result<Self, String> {
        let h = || {
            Histogram::new_with_bounds(1, MAX_TRACKED_US, SIGNIFICANT_DIGITS)
                .map_err(|e| format!("histogram: {e}"))
        };
        Ok(Self(Mutex::new(Counts {
            latency: h()?,
            service: h()?,
            connect: h()?,
            status: BTreeMap::new(),
            failures: BTreeMap::new(),
            body_bytes: 0,
            reconnects: 0,
            tls: BTreeMap::new(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Counts> {
        // A panic while recording cannot leave the counts half-updated in a
        // way that matters for a report.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn response(&self, status: u16, body_bytes: u64, latency: Duration, service: Duration) {
        let mut c = self.lock();
        *c.status.entry(status).or_default() += 1;
        c.body_bytes += body_bytes;
        c.latency.saturating_record(micros(latency));
        c.service.saturating_record(micros(service));
    }

    /// A scheduled request that never got a response still counts in the
    /// latency percentiles (with the time it had waited so far), so a
    /// stalled server cannot hide behind missing samples.
    pub fn unanswered(&self, failure: Failure, waited: Option<Duration>) {
        let mut c = self.lock();
        *c.failures.entry(failure).or_default() += 1;
        if let Some(w) = waited {
            c.latency.saturating_record(micros(w));
        }
    }

    pub fn failure(&self, failure: Failure) {
        *self.lock().failures.entry(failure).or_default() += 1;
    }

    pub fn connected(&self, took: Duration, negotiated: Option<&str>) {
        let mut c = self.lock();
        c.connect.saturating_record(micros(took));
        if let Some(n) = negotiated {
            match c.tls.get_mut(n) {
                Some(count) => *count += 1,
                None => {
                    c.tls.insert(n.to_owned(), 1);
                }
            }
        }
    }

    pub fn reconnect(&self) {
        self.lock().reconnects += 1;
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Counts {
    pub fn responses(&self) -> u64 {
        self.status.values().sum()
    }

    pub fn errors(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn status_count(&self, status: u16) -> u64 {
        self.status.get(&status).copied().unwrap_or(0)
    }

    pub fn other_status(&self) -> u64 {
        self.responses() - self.status_count(200) - self.status_count(403)
    }
}

/// p50/p90/p99/p99.9/max and mean of a histogram, in microseconds.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p99_9": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// CPU time and memory of the processes under test, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime of all threads, microseconds.
    pub cpu_us: u64,
    /// utime alone: the process's own code (stime is the kernel's work for
    /// it: on loopback that includes the receiving side of what it sends).
    pub user_us: u64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// Linux reports `/proc/PID/stat` times in USER_HZ ticks, which is 100 on
/// every architecture's ABI.
const USER_HZ: u64 = 100;

pub fn sample(pids: &[u32]) -> Result<ProcSample, String> {
    let mut total = ProcSample::default();
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        let (utime, stime) =
            cpu_ticks(&stat).ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
        total.cpu_us += (utime + stime) * (1_000_000 / USER_HZ);
        total.user_us += utime * (1_000_000 / USER_HZ);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        total.rss_kib += rss_kib(&status).ok_or_else(|| format!("/proc/{pid}/status: no VmRSS"))?;
    }
    Ok(total)
}

/// utime and stime: fields 14 and 15, counted after the parenthesised
/// command name (which may itself contain spaces and parentheses).
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 3 4 20 0 4 0 100 1000000 300 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some((250, 75)));
        let status = "Name:\tnginx\nVmPeak:\t  1000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(rss_kib(status), Some(5120));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(&[std::process::id()]).unwrap();
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn unanswered_requests_count_in_the_percentiles() {
        let stats = Stats::new().unwrap();
        for _ in 0..98 {
            stats.response(200, 10, Duration::from_millis(1), Duration::from_millis(1));
        }
        stats.unanswered(Failure::NotSent, Some(Duration::from_secs(2)));
        stats.unanswered(Failure::NotSent, Some(Duration::from_secs(2)));
        let c = stats.lock();
        assert_eq!(c.errors(), 2);
        assert!(c.latency.value_at_quantile(0.99) >= 1_900_000);
        assert_eq!(c.status_count(200), 98);
        assert_eq!(c.other_status(), 0);
    }
}

//! The run's report: human-readable text or one JSON object, and the
//! `--fail-on-errors` / `--expect-status` checks used by CI smoke runs.
//! [`compare`]: the `report` subcommand, which turns many runs' JSON into
//! benches/compare.sh's results.

pub mod compare;
mod markdown;
mod results;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::Args;
use crate::client::{HttpVersion, ProxyMode};
use crate::run::{Mode, Outcome};
use crate::stats::{Counts, percentiles};

pub struct Report<'a> {
    pub args: &'a Args,
    pub counts: &'a Counts,
    pub outcome: &'a Outcome,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Closed => "closed",
        Mode::Open => "open",
        Mode::Idle => "idle",
    }
}

fn proxy_name(p: ProxyMode) -> &'static str {
    match p {
        ProxyMode::V2 => "v2",
        ProxyMode::V1 => "v1",
        ProxyMode::Off => "off",
    }
}

fn http_name(h: HttpVersion) -> &'static str {
    match h {
        HttpVersion::H1 => "http/1.1",
        HttpVersion::H2 => "h2",
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Report<'_> {
    fn elapsed_s(&self) -> f64 {
        self.outcome.elapsed.as_secs_f64().max(1e-9)
    }

    fn rps(&self) -> f64 {
        self.counts.responses() as f64 / self.elapsed_s()
    }

    /// The denominator for CPU per request: idle runs send one per
    /// connection during the ramp.
    fn server_cpu_us(&self) -> Option<u64> {
        self.outcome
            .server
            .map(|s| s.after.cpu_us.saturating_sub(s.before.cpu_us))
    }

    fn rss_per_connection_bytes(&self) -> Option<f64> {
        let idle = self.outcome.idle()?;
        let (before, held) = (idle.rss_before_kib?, idle.rss_held_kib?);
        (idle.established > 0)
            .then(|| (held as f64 - before as f64) * 1024.0 / idle.established as f64)
    }

    pub fn json(&self) -> Value {
        let a = self.args;
        let c = self.counts;
        let o = self.outcome;
        let mut status_all = Map::new();
        for (code, n) in &c.status {
            status_all.insert(code.to_string(), json!(n));
        }
        let mut error_kinds = Map::new();
        for (f, n) in &c.failures {
            error_kinds.insert(f.label().to_owned(), json!(n));
        }
        let tls: Map<String, Value> = c.tls.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
        let mut out = json!({
            "mode": mode_name(a.mode),
            "target": a.target.to_string(),
            "host": a.host,
            "http": http_name(a.http),
            "tls": !a.plaintext,
            "proxy_protocol": proxy_name(a.proxy_protocol),
            "connections": a.connections,
            "h2_streams": a.h2_streams,
            "requests_per_connection": a.requests_per_connection,
            "rate": a.rate,
            "duration_s": a.duration.as_secs_f64(),
            "elapsed_s": round1(self.elapsed_s() * 1000.0) / 1000.0,
            "requests": c.responses(),
            "rps": round1(self.rps()),
            "status": {
                "200": c.status_count(200),
                "403": c.status_count(403),
                "other": c.other_status(),
            },
            "status_all": status_all,
            "errors": c.errors(),
            "error_kinds": error_kinds,
            "reconnects": c.reconnects,
            "connections_opened": o.connections_opened,
            "connections_per_s": round1(o.connections_opened as f64 / self.elapsed_s()),
            "body_bytes": c.body_bytes,
            "latency_us": percentiles(&c.latency),
            "connect_us": percentiles(&c.connect),
            "tls_negotiated": tls,
            "scheduled": o.scheduled(),
            "warnings": o.warnings,
        });
        if a.mode == Mode::Open {
            out["service_us"] = percentiles(&c.service);
        }
        if let (Some(cpu), Some(server)) = (self.server_cpu_us(), o.server) {
            let user = server.after.user_us.saturating_sub(server.before.user_us);
            let per = |v: u64, n: u64| (n > 0).then(|| round1(v as f64 / n as f64));
            out["server"] = json!({
                "pids": a.measure_pids,
                "cpu_us": cpu,
                "user_us": user,
                "cpu_us_per_request": per(cpu, c.responses()),
                "user_us_per_request": per(user, c.responses()),
                "cpu_us_per_connection": per(cpu, o.connections_opened),
                "user_us_per_connection": per(user, o.connections_opened),
                "cpu_share": round1(cpu as f64 / 1e6 / self.elapsed_s() * 100.0) / 100.0,
                "rss_kib_before": o.server.map(|s| s.before.rss_kib),
                "rss_kib_after": o.server.map(|s| s.after.rss_kib),
            });
        }
        if let Some(idle) = o.idle() {
            out["idle"] = json!({
                "established": idle.established,
                "held_at_end": idle.held_at_end,
                "rss_kib_before": idle.rss_before_kib,
                "rss_kib_held": idle.rss_held_kib,
                "rss_kib_end": idle.rss_end_kib,
                "rss_bytes_per_connection": self.rss_per_connection_bytes().map(|b| b.round()),
            });
        }
        out
    }

    pub fn text(&self) -> String {
        let a = self.args;
        let c = self.counts;
        let o = self.outcome;
        let mut s = String::new();
        let load = match a.mode {
            Mode::Closed => format!("closed loop, {} connections", a.connections),
            Mode::Open => format!(
                "open loop at {}/s, {} connections",
                a.rate.unwrap_or(0.0),
                a.connections
            ),
            Mode::Idle => format!("idle, {} connections", a.connections),
        };
        let _ = writeln!(
            s,
            "portcullis-loadgen: {load}, {}{}, PROXY {}, {}, {:.1}s{} → {}",
            http_name(a.http),
            if a.http == HttpVersion::H2 && a.h2_streams > 1 {
                format!(" ×{} streams", a.h2_streams)
            } else {
                String::new()
            },
            proxy_name(a.proxy_protocol),
            if a.plaintext { "plaintext" } else { "TLS" },
            if a.mode == Mode::Idle {
                a.duration.as_secs_f64()
            } else {
                self.elapsed_s()
            },
            if a.mode == Mode::Idle { " hold" } else { "" },
            a.target
        );
        let _ = writeln!(
            s,
            "  requests     {} ({:.1}/s)   200: {}   403: {}   other: {}",
            c.responses(),
            self.rps(),
            c.status_count(200),
            c.status_count(403),
            c.other_status()
        );
        let kinds: Vec<String> = c
            .failures
            .iter()
            .map(|(f, n)| format!("{} {n}", f.label()))
            .collect();
        let _ = writeln!(
            s,
            "  errors       {}{}",
            c.errors(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        );
        if let Some(n) = o.scheduled() {
            let _ = writeln!(s, "  scheduled    {n}");
        }
        let line = |s: &mut String, name: &str, h: &hdrhistogram::Histogram<u64>| {
            if !h.is_empty() {
                let _ = writeln!(
                    s,
                    "  {name:<12} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (µs)",
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.9),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    h.max()
                );
            }
        };
        line(
            &mut s,
            if a.mode == Mode::Open {
                "latency*"
            } else {
                "latency"
            },
            &c.latency,
        );
        if a.mode == Mode::Open {
            line(&mut s, "service", &c.service);
            let _ = writeln!(s, "  (* from the intended send time)");
        }
        let _ = writeln!(
            s,
            "  connections  {} opened in the window ({:.1}/s), {} reconnects",
            o.connections_opened,
            o.connections_opened as f64 / self.elapsed_s(),
            c.reconnects
        );
        line(&mut s, "connect", &c.connect);
        for (params, n) in &c.tls {
            let _ = writeln!(s, "  tls          {params}: {n} connections");
        }
        if let Some(cpu) = self.server_cpu_us() {
            let mut parts = vec![format!("CPU {:.3}s", cpu as f64 / 1e6)];
            if c.responses() > 0 {
                parts.push(format!(
                    "{:.1} µs/request",
                    cpu as f64 / c.responses() as f64
                ));
            }
            if o.connections_opened > 0 {
                parts.push(format!(
                    "{:.1} µs/connection",
                    cpu as f64 / o.connections_opened as f64
                ));
            }
            let _ = writeln!(s, "  server       {}", parts.join(", "));
        }
        if let Some(idle) = o.idle() {
            let _ = writeln!(
                s,
                "  idle         {} established, {} still open at the end",
                idle.established, idle.held_at_end
            );
            if let (Some(before), Some(held), Some(per)) = (
                idle.rss_before_kib,
                idle.rss_held_kib,
                self.rss_per_connection_bytes(),
            ) {
                let _ = writeln!(
                    s,
                    "  server RSS   {before} KiB → {held} KiB: {:.0} bytes per idle connection",
                    per
                );
            }
        }
        s
    }

    /// Problems for `--fail-on-errors` / `--expect-status`.
    pub fn check(&self, fail_on_errors: bool, expect: &[u16]) -> Vec<String> {
        let mut problems = Vec::new();
        if fail_on_errors && self.counts.errors() > 0 {
            problems.push(format!("{} errors", self.counts.errors()));
        }
        for code in expect {
            if self.counts.status_count(*code) == 0 {
                problems.push(format!("no {code} response"));
            }
        }
        problems
    }
}

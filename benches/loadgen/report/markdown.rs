//! The comparison table (`target/compare/results.md`) from `results.json`'s
//! value: one row per metric, one column per proxy, and where portcullis
//! has a target, how it stands against the best of the others.

use std::fmt::Write as _;

use serde_json::Value;

use super::results::{at, f64_at};

/// A number as the table shows it: `–` for none, integers from 100 up (or
/// down from −100), one decimal below.
fn num(v: &Value) -> String {
    match v {
        Value::Null => "–".to_owned(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.abs() >= 100.0 => format!("{}", x.round()),
            Some(x) => {
                let s = format!("{}", (x * 10.0).round() / 10.0);
                if s.contains('.') { s } else { s + ".0" }
            }
            None => n.to_string(),
        },
        other => text(other),
    }
}

/// A value inside a sentence: strings as they are, numbers without a
/// needless fraction, `null` for nothing.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && x.fract() == 0.0 && x.abs() < 1e17 => {
                format!("{}", x as i64)
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// `a / b` as `0.98×`, `–` when either is missing or `b` is zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{}×", (a / b * 100.0).round() / 100.0),
        _ => "–".to_owned(),
    }
}

/// Log lines received against responses counted, flagged below 98%.
fn log_cell(v: &Value) -> String {
    if v.is_null() {
        return "–".to_owned();
    }
    let (lines, responses) = (at(v, &["lines"]), at(v, &["responses"]));
    let short = matches!((lines.as_f64(), responses.as_f64()),
        (Some(l), Some(r)) if r > 0.0 && l < 0.98 * r);
    format!(
        "{} / {}{}",
        text(lines),
        text(responses),
        if short { " ⚠" } else { "" }
    )
}

/// A proxy's name as the table shows it.
fn display_name(proxy: &str) -> &str {
    if proxy == "haproxy" { "HAProxy" } else { proxy }
}

/// One cell per proxy: a number from its figures, or text made from them.
enum Cell<'a> {
    Num(&'a [&'a str]),
    Text(&'a dyn Fn(&Value) -> String),
}

struct Table<'a> {
    r: &'a Value,
    proxies: &'a [String],
    out: String,
}

impl Table<'_> {
    fn row(&mut self, label: &str, cell: Cell<'_>, target: Option<String>) {
        let cells: Vec<String> = self
            .proxies
            .iter()
            .map(|p| {
                let figures = at(self.r, &[p]);
                match &cell {
                    Cell::Num(path) => num(at(figures, path)),
                    Cell::Text(f) => f(figures),
                }
            })
            .collect();
        let target = match target {
            Some(t) if self.proxies.iter().any(|p| p == "portcullis") => format!(" | {t} |"),
            _ => " | |".to_owned(),
        };
        let _ = writeln!(self.out, "| {label} | {}{target}", cells.join(" | "));
    }

    /// portcullis's figure at `path` against the lowest of the others'.
    fn vs_best(&self, path: &[&str], what: &str) -> String {
        let best = self
            .proxies
            .iter()
            .filter(|p| *p != "portcullis")
            .filter_map(|p| f64_at(at(self.r, &[p]), path))
            .min_by(f64::total_cmp);
        let ours = f64_at(at(self.r, &["portcullis"]), path);
        format!("{} {what}", ratio(ours, best))
    }

    /// portcullis's figure at `path` against nginx's.
    fn vs_nginx(&self, path: &[&str], what: &str) -> String {
        let of = |p: &str| f64_at(at(self.r, &[p]), path);
        format!("{} {what}", ratio(of("portcullis"), of("nginx")))
    }
}

impl Table<'_> {
    /// portcullis and each other proxy measured at once, on one core: the
    /// others' CPU per keep-alive request, portcullis's against each, and
    /// the ratios against the target (the worse of the medians counts: the
    /// target is against the better proxy).
    fn versus_row(&mut self, mm: &str) {
        let versus = at(self.r, &["versus"]);
        let others: Vec<&String> = self
            .proxies
            .iter()
            .filter(|p| !at(versus, &[p]).is_null())
            .collect();
        if others.is_empty() {
            return;
        }
        let median = |v: &Value| match at(v, &["median"]) {
            Value::Null => "–".to_owned(),
            m => num(m),
        };
        let ours = others
            .iter()
            .map(|o| median(at(versus, &[o, "portcullis_cpu_us_per_request"])))
            .collect::<Vec<_>>()
            .join(" / ");
        let mut ratios = Vec::new();
        let mut worst: Option<f64> = None;
        for o in &others {
            let r = at(versus, &[o, "ratio"]);
            ratios.push(format!(
                "{}× ({} to {}) of {}",
                text(at(r, &["median"])),
                text(at(r, &["min"])),
                text(at(r, &["max"])),
                display_name(o)
            ));
            if let Some(m) = f64_at(r, &["median"]) {
                worst = Some(worst.map_or(m, |w: f64| w.max(m)));
            }
        }
        let verdict = match worst {
            Some(w) if w <= 0.90 => "met",
            Some(_) => "missed",
            None => "–",
        };
        let label = format!(
            "**CPU µs per keep-alive request, side by side with portcullis** (both access logs {mm}, the same seconds on one core; portcullis's against each in turn): median of {} pairs",
            text(at(self.r, &["settings", "versus_pairs"]))
        );
        let cells: Vec<String> = self
            .proxies
            .iter()
            .map(|p| {
                if p == "portcullis" {
                    ours.clone()
                } else {
                    median(at(versus, &[p, "cpu_us_per_request"]))
                }
            })
            .collect();
        let _ = writeln!(
            self.out,
            "| {label} | {} | {} (≤ 0.90×: {verdict}) |",
            cells.join(" | "),
            ratios.join(", ")
        );
    }

    /// The access log's cost measured side by side (log on and off at
    /// once, on one core): median and range per proxy, portcullis's median
    /// against its target. No rows when no proxy ran such pairs.
    fn side_by_side_rows(&mut self) {
        let key = "access_log_cost_side_by_side";
        if self.proxies.iter().all(|p| at(self.r, &[p, key]).is_null()) {
            return;
        }
        let pairs = text(at(self.r, &["settings", "log_pairs"]));
        for (figure, label) in [
            (
                "cpu_us_per_request",
                "**access log cost, on and off side by side**, CPU µs per keep-alive request",
            ),
            ("user_us_per_request", "… of which user space"),
        ] {
            let cell = |p: &Value| {
                let f = at(p, &[key, figure]);
                match at(f, &["median"]) {
                    Value::Null => "–".to_owned(),
                    median => format!(
                        "{} ({} to {})",
                        num(median),
                        num(at(f, &["min"])),
                        num(at(f, &["max"]))
                    ),
                }
            };
            let target = (figure == "cpu_us_per_request").then(|| {
                let ours = f64_at(self.r, &["portcullis", key, figure, "median"]);
                match ours {
                    Some(x) if x <= 0.5 => "≤ 0.5 µs: met".to_owned(),
                    Some(_) => "≤ 0.5 µs: missed".to_owned(),
                    None => "–".to_owned(),
                }
            });
            self.row(
                &format!("{label}: median (range) of {pairs} pairs"),
                Cell::Text(&cell),
                target,
            );
        }
    }
}

/// The rows of a closed-loop phase (keep-alive or new connections): per
/// access-log mode its rate and CPU cost (portcullis against the best of
/// the others, bold and against its target in the main mode), then the
/// user-space share and, with both modes, what the access log costs.
struct PhaseRows<'a> {
    phase: &'a str,
    rate_label: String,
    rate: &'a str,
    /// Whether to show how busy the proxy's core was.
    cpu_share: bool,
    /// What the CPU time is per: "keep-alive request".
    per: &'a str,
    cpu: &'a str,
    /// portcullis's target in the main mode.
    target: &'a str,
    user: &'a str,
    user_label: &'a str,
    /// The access log's cost under `access_log_cost`.
    cost: &'a str,
}

impl Table<'_> {
    /// `(modes, main mode)`: the access-log modes that ran, and the one the
    /// targets are for.
    fn phase_rows<'a>(&mut self, (modes, mm): (&[String], &str), p: &PhaseRows<'a>) {
        for m in modes {
            self.row(
                &format!("{}, access log {m}", p.rate_label),
                Cell::Num(&[p.phase, m, p.rate]),
                None,
            );
        }
        let all_modes = modes.join(" / ");
        let on_off = |figure: &'a str| {
            move |proxy: &Value| {
                modes
                    .iter()
                    .map(|m| num(at(proxy, &[p.phase, m, figure])))
                    .collect::<Vec<_>>()
                    .join(" / ")
            }
        };
        if p.cpu_share {
            let share = on_off("cpu_share");
            self.row(
                &format!("proxy CPU share during it (1.0 = core saturated), log {all_modes}"),
                Cell::Text(&share),
                None,
            );
        }
        for m in modes {
            let main = m == mm;
            let path = [p.phase, m.as_str(), p.cpu];
            let what = if main {
                format!("of best ({})", p.target)
            } else {
                format!("of best, log {m}")
            };
            let target = self.vs_best(&path, &what);
            let label = format!("CPU µs per {}, access log {m}", p.per);
            self.row(
                &if main { format!("**{label}**") } else { label },
                Cell::Num(&path),
                Some(target),
            );
        }
        let user = on_off(p.user);
        let target = self.vs_best(&[p.phase, mm, p.user], &format!("of best, log {mm}"));
        self.row(
            &format!("{}, log {all_modes}", p.user_label),
            Cell::Text(&user),
            Some(target),
        );
        if modes.len() == 2 {
            self.row(
                &format!("**access log cost (on − off), µs per {}**", p.per),
                Cell::Num(&["access_log_cost", p.cost]),
                None,
            );
        }
    }
}

/// The whole markdown report, `proxies` in column order.
pub fn markdown(r: &Value, proxies: &[String]) -> String {
    let s = |path: &[&str]| text(at(r, path));
    let modes: Vec<String> = at(r, &["settings", "access_log", "modes"])
        .as_array()
        .map(|m| m.iter().map(text).collect())
        .unwrap_or_default();
    let mm = s(&["settings", "access_log", "idle_open_reload"]);
    let mml = if mm == "on" {
        "access log on"
    } else {
        "access log off"
    };
    let both = modes.len() == 2;
    let logs_on = modes.iter().any(|m| m == "on");
    let mut t = Table {
        r,
        proxies,
        out: String::new(),
    };
    let o = &mut t.out;
    let _ = writeln!(o, "## portcullis vs nginx vs HAProxy\n");
    let _ = writeln!(
        o,
        "{} cores ({}), kernel {}; nginx {}, HAProxy {}, OpenSSL {}; portcullis {}. Each proxy pinned to core 0 (one worker) and the only one under load; load generator and backend (nginx `return 200`, ~600 B) on core 1. TLS 1.3, ECDSA P-256, X25519, full handshakes. 10 000-CIDR allow list, {}% of clients from a denied range (403). {} s per phase; CPU and memory: best of {} runs (fresh process each); open-loop latency: median of {} interleaved runs.\n",
        s(&["machine", "cores"]),
        s(&["machine", "cpu"]),
        s(&["machine", "kernel"]),
        s(&["machine", "nginx"]),
        s(&["machine", "haproxy"]),
        s(&["machine", "openssl"]),
        s(&["machine", "portcullis"]),
        s(&["settings", "denied_share_percent"]),
        s(&["settings", "duration_s"]),
        s(&["settings", "repeat"]),
        s(&["settings", "open_repeat"]),
    );
    let which = if both {
        "on and off: the keep-alive and new-connection phases run once with each (a fresh process each); idle memory and the open loop run with the log on, as operators run them. Targets compare portcullis with the better of nginx and HAProxy, log on.".to_owned()
    } else {
        format!(
            "{} in every phase.",
            modes.first().map_or("", String::as_str)
        )
    };
    let _ = writeln!(
        o,
        "Access logs {which} Log on: nginx {}; HAProxy {}; portcullis {}. Same fields in all three (time, request id, client address, SNI, host, deployment, method, path, status, bytes, duration, decision, reason, status reason, policy). The log line counts below are what each log actually received.\n",
        s(&["settings", "access_log", "nginx"]),
        s(&["settings", "access_log", "haproxy"]),
        s(&["settings", "access_log", "portcullis"]),
    );
    let names: Vec<&str> = proxies.iter().map(|p| display_name(p)).collect();
    let _ = writeln!(
        o,
        "| metric | {} | portcullis vs target |",
        names.join(" | ")
    );
    let aligns = vec!["---:"; proxies.len()];
    let _ = writeln!(o, "|---|{}|---|", aligns.join("|"));

    let main = (modes.as_slice(), mm.as_str());
    t.phase_rows(
        main,
        &PhaseRows {
            phase: "keepalive",
            rate_label: format!(
                "keep-alive req/s (closed loop, {} conns)",
                s(&["settings", "keepalive_connections"])
            ),
            rate: "rps",
            cpu_share: true,
            per: "keep-alive request",
            cpu: "cpu_us_per_request",
            target: "≤ 0.90×",
            user: "user_us_per_request",
            user_label: "… of which user space (utime; the rest is kernel TCP)",
            cost: "keepalive_cpu_us_per_request",
        },
    );
    t.side_by_side_rows();
    t.versus_row(&mm);
    t.phase_rows(
        main,
        &PhaseRows {
            phase: "newconn",
            rate_label: format!(
                "new TLS connections/s (1 request each, {} conns)",
                s(&["settings", "newconn_connections"])
            ),
            rate: "per_s",
            cpu_share: false,
            per: "new TLS connection",
            cpu: "cpu_us_per_connection",
            target: "≤ 0.55×",
            user: "user_us_per_connection",
            user_label: "… of which user space",
            cost: "newconn_cpu_us_per_connection",
        },
    );
    let target = t.vs_nginx(&["idle", "rss_bytes_per_connection"], "of nginx (≤ 0.75×)");
    t.row(
        &format!(
            "**RSS bytes per idle TLS connection** ({} held, {mml})",
            s(&["settings", "idle_connections"])
        ),
        Cell::Num(&["idle", "rss_bytes_per_connection"]),
        Some(target),
    );
    let held = |p: &Value| match at(p, &["idle", "connections_held"]) {
        Value::Null => "–".to_owned(),
        v => text(v),
    };
    t.row(
        "idle connections still open after the hold",
        Cell::Text(&held),
        None,
    );
    let open = format!("open loop {}/s, {mml}", s(&["settings", "open_rate"]));
    t.row(
        &format!("{open}: p50 µs"),
        Cell::Num(&["open", "p50_us"]),
        None,
    );
    let target = t.vs_nginx(&["open", "p99_us"], "of nginx (≤ 1×)");
    t.row(
        &format!("{open}: **p99 µs**"),
        Cell::Num(&["open", "p99_us"]),
        Some(target),
    );
    t.row(
        &format!("{open}: p99.9 µs"),
        Cell::Num(&["open", "p99_9_us"]),
        None,
    );
    t.row(
        &format!("{open}: max µs"),
        Cell::Num(&["open", "max_us"]),
        None,
    );
    if logs_on {
        for (label, phase) in [
            ("idle (1 request per connection)", "idle"),
            ("keep-alive", "keepalive"),
            ("new TLS connection", "newconn"),
            ("open loop", "open"),
            ("side-by-side (log on)", "logpair"),
            ("side by side with portcullis", "versus"),
        ] {
            let path = ["access_log_lines", phase];
            if proxies.iter().all(|p| at(at(r, &[p]), &path).is_null()) {
                continue;
            }
            let cell = |p: &Value| log_cell(at(p, &path));
            t.row(
                &format!("access log lines received / responses, {label} runs"),
                Cell::Text(&cell),
                None,
            );
        }
    }
    let errors = |p: &Value| text(at(p, &["errors"]));
    t.row("errors (all phases)", Cell::Text(&errors), None);
    let status = |p: &Value| {
        let n = |k: &str| text(at(p, &["status", k]));
        format!("{} / {} / {}", n("200"), n("403"), n("other"))
    };
    t.row("responses 200 / 403 / other", Cell::Text(&status), None);
    let o = &mut t.out;
    if logs_on {
        let _ = writeln!(
            o,
            "\n⚠ marks a log that received fewer than 98% as many lines as the load generator counted responses (a dropping or misconfigured log makes a proxy look cheap). A few more lines than responses is normal: requests in flight when a run ends are logged but not counted."
        );
    }
    let reload = at(r, &["reload"]);
    if !reload.is_null() {
        reload_section(o, r, reload, mml);
    }
    let _ = writeln!(
        o,
        "\nOther load on the proxy core (share of core 0 busy with anything but the proxy, per run; high values mean a noisy run): {}.",
        other_load(r, proxies).join(", ")
    );
    t.out
}

fn reload_section(o: &mut String, r: &Value, reload: &Value, mml: &str) {
    let s = |path: &[&str]| text(at(reload, path));
    let mib = f64_at(reload, &["snapshot_bytes"]).map_or(0.0, |b| (b / 1_048_576.0).floor());
    let _ = writeln!(o, "\n### portcullis: reload under load\n");
    let _ = writeln!(
        o,
        "{} IP rules ({} synthetic snapshot + the bench list), {mib} MiB, `PUT /snapshot` with a new version every second (or back-to-back when a PUT takes longer): {} of {} applied, mean PUT {} s. Open loop at {}/s, {mml}.\n",
        s(&["ip_rules"]),
        s(&["scale"]),
        s(&["applied"]),
        s(&["puts"]),
        s(&["mean_put_seconds"]),
        text(at(r, &["settings", "open_rate"])),
    );
    let _ = writeln!(
        o,
        "| run | req/s | p50 µs | p99 µs | p99.9 µs | max µs | errors | access log lines |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, key) in [("quiet", "quiet"), ("reloading every 1 s", "reloading")] {
        for run in at(reload, &[key]).as_array().into_iter().flatten() {
            let v = |path: &[&str]| text(at(run, path));
            let lines = match at(run, &["access_log_lines"]) {
                Value::Null => "–".to_owned(),
                l => text(l),
            };
            let latency = ["p50", "p99", "p99_9", "max"].map(|q| v(&["latency_us", q]));
            let _ = writeln!(
                o,
                "| {label} | {} | {} | {} | {lines} |",
                v(&["rps"]),
                latency.join(" | "),
                v(&["errors"]),
            );
        }
    }
}

/// Per run (idle ones aside), the share of core 0 that was busy with
/// something other than the proxy (for a side-by-side pair, other than
/// the two processes of the pair).
fn other_load(r: &Value, proxies: &[String]) -> Vec<String> {
    let share = |run: &Value| f64_at(run, &["server", "cpu_share"]).unwrap_or(0.0);
    let other = |run: &Value, proxies: f64| {
        let busy = f64_at(run, &["core0_busy"]).unwrap_or(0.0);
        format!("{}", ((busy - proxies) * 100.0).round() / 100.0)
    };
    let mut out = Vec::new();
    for p in proxies {
        let groups = at(r, &[p, "runs"]).as_array().into_iter().flatten();
        for group in groups.filter_map(Value::as_array) {
            for run in group {
                let phase = at(run, &["phase"]);
                let what = match phase.as_str() {
                    Some("idle") => continue,
                    Some("logpair") if at(run, &["access_log"]) != "on" => continue,
                    Some("logpair") => {
                        let twin = group.iter().find(|t| {
                            at(t, &["access_log"]) == "off"
                                && at(t, &["pair"]) == at(run, &["pair"])
                        });
                        let both = share(run) + twin.map_or(0.0, share);
                        format!("pair {} {}", text(at(run, &["pair"])), other(run, both))
                    }
                    // A pair with another proxy: told once, on portcullis's side.
                    Some("versus") if p != "portcullis" => continue,
                    Some("versus") => {
                        let against = at(run, &["against"]).as_str().unwrap_or("");
                        let groups = at(r, &[against, "runs"]).as_array().into_iter().flatten();
                        let partner = groups.filter_map(Value::as_array).flatten().find(|t| {
                            at(t, &["phase"]) == "versus" && at(t, &["pair"]) == at(run, &["pair"])
                        });
                        let both = share(run) + partner.map_or(0.0, share);
                        format!(
                            "{against} pair {} {}",
                            text(at(run, &["pair"])),
                            other(run, both)
                        )
                    }
                    _ => format!(
                        "log {} {}",
                        text(at(run, &["access_log"])),
                        other(run, share(run))
                    ),
                };
                out.push(format!("{p} {} {what}", text(phase)));
            }
        }
    }
    for key in ["quiet", "reloading"] {
        for run in at(r, &["reload", key]).as_array().into_iter().flatten() {
            out.push(format!(
                "portcullis {} {}",
                text(at(run, &["phase"])),
                other(run, share(run))
            ));
        }
    }
    out
}

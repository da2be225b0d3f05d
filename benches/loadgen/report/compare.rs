//! `portcullis-loadgen report …`: benches/compare.sh's bookkeeping, so the
//! script only starts and stops processes.
//!
//! - `report run`: checks one run's `--json` output, adds what the script
//!   measured around it (phase, access-log mode and lines, how busy the
//!   proxy's core was), writes it to the raw directory and prints a
//!   one-line summary (and a warning for a log that missed lines);
//! - `report rate`: the open-loop rate, from the keep-alive runs;
//! - `report results`: every raw run folded into `results.json` and the
//!   markdown table `results.md` (also printed).
//!
//! Raw runs are files `<proxy>-<phase>-<mode>-<n>.json` in one directory.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::markdown::{markdown, text};
use super::results::{self, How, Machine, PROXY_PHASES, Reload, Settings, at, best, f64_at};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check and annotate one run's JSON, write it, print a summary line
    Run(RunArgs),
    /// Print the open-loop rate (a quarter of the slowest proxy's best
    /// keep-alive rate, a multiple of 500/s) and that slowest rate
    Rate(RateArgs),
    /// Write results.json and results.md from the raw runs; print the table
    Results(Box<ResultsArgs>),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The load generator's `--json` output
    input: PathBuf,
    /// Where the annotated run goes
    #[arg(long)]
    out: PathBuf,
    /// Proxy name, for the summary line
    #[arg(long)]
    proxy: String,
    /// idle, keepalive, newconn, open, reload-quiet, reload-busy
    #[arg(long)]
    phase: String,
    /// Whether the proxy's access log was on: on or off
    #[arg(long)]
    access_log: String,
    /// Lines the access log received during the run (with the log on)
    #[arg(long)]
    access_log_lines: Option<u64>,
    /// Share of core 0's time that was busy during the run (0–1)
    #[arg(long)]
    core0_busy: f64,
    /// Which side-by-side pair the run belongs to (phase logpair: a log-on
    /// run and a log-off run over the same seconds)
    #[arg(long)]
    pair: Option<u64>,
    /// The proxy measured at the same time (phase versus)
    #[arg(long)]
    against: Option<String>,
}

#[derive(Args, Debug)]
pub struct RateArgs {
    /// Directory of raw runs
    #[arg(long)]
    raw: PathBuf,
    /// Space-separated proxy names
    #[arg(long)]
    proxies: String,
    /// The access-log mode of the keep-alive runs to read
    #[arg(long)]
    access_log: String,
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// Directory of raw runs
    #[arg(long)]
    raw: PathBuf,
    /// Directory for results.json and results.md
    #[arg(long)]
    out: PathBuf,
    /// Space-separated proxy names, in column order
    #[arg(long)]
    proxies: String,
    /// Space-separated access-log modes of the keep-alive and
    /// new-connection phases
    #[arg(long)]
    modes: String,
    /// Access-log mode of the idle, open-loop and reload phases
    #[arg(long)]
    main_mode: String,
    /// Seconds per phase
    #[arg(long)]
    duration: f64,
    /// Fresh processes per proxy and mode (CPU and memory: best of them)
    #[arg(long)]
    repeat: u64,
    /// Open-loop runs per proxy (latency: their median)
    #[arg(long)]
    open_repeat: u64,
    /// Side-by-side log on/off runs per proxy
    #[arg(long, default_value_t = 0)]
    log_pairs: u64,
    /// Side-by-side runs of portcullis with each other proxy
    #[arg(long, default_value_t = 0)]
    versus_pairs: u64,
    /// Connections of the keep-alive and open-loop phases
    #[arg(long)]
    connections: u64,
    /// Connections of the new-connection phase
    #[arg(long)]
    newconn_connections: u64,
    /// Connections the idle phase held
    #[arg(long)]
    idle_connections: u64,
    /// Open-loop requests per second
    #[arg(long)]
    rate: f64,
    /// Percentage of clients from a denied range
    #[arg(long)]
    denied_share: f64,
    /// portcullis's --log-format (json, text)
    #[arg(long)]
    portcullis_log_format: String,
    /// When the results were made (UTC, ISO 8601)
    #[arg(long)]
    date: String,
    /// Versions of what was measured (portcullis: its commit)
    #[arg(long)]
    nginx_version: String,
    #[arg(long)]
    haproxy_version: String,
    #[arg(long)]
    openssl_version: String,
    #[arg(long)]
    portcullis_version: String,
    /// Snapshot scale of the reload phase; without it, no reload section
    #[arg(long, requires_all = ["reload_snapshot", "reload_puts", "reload_applied", "reload_mean_put_seconds"])]
    reload_scale: Option<String>,
    /// The snapshot the reload phase PUT (its IP rules and size are reported)
    #[arg(long)]
    reload_snapshot: Option<PathBuf>,
    /// `PUT /snapshot` requests sent during the reload phase
    #[arg(long)]
    reload_puts: Option<u64>,
    /// Of those, how many were applied (200)
    #[arg(long)]
    reload_applied: Option<u64>,
    /// Mean time of an applied PUT, seconds
    #[arg(long)]
    reload_mean_put_seconds: Option<f64>,
}

/// Runs `command`; what it prints goes to stdout.
pub fn execute(command: Command) -> Result<(), String> {
    match command {
        Command::Run(a) => {
            let run = read_json(&a.input)?;
            let run = annotate(
                run,
                &a.phase,
                &a.access_log,
                a.access_log_lines,
                a.core0_busy,
                Pairing {
                    pair: a.pair,
                    against: a.against.clone(),
                },
            )
            .map_err(|e| format!("{}: {e}", a.input.display()))?;
            write(&a.out, &json_text(&run)?)?;
            println!("{}", summary(&a.proxy, &run));
            if let Some(w) = log_warning(&a.proxy, &run) {
                println!("{w}");
            }
            Ok(())
        }
        Command::Rate(a) => {
            let proxies = words(&a.proxies);
            let mut rates = Vec::new();
            for (proxy, runs) in raw_runs(&a.raw, &proxies)? {
                let runs: Vec<&Value> = runs
                    .iter()
                    .filter(|r| at(r, &["phase"]) == "keepalive")
                    .filter(|r| at(r, &["access_log"]) == a.access_log.as_str())
                    .collect();
                let rps = best(&runs, &["rps"], How::Max)
                    .as_f64()
                    .ok_or_else(|| format!("{proxy}: no keep-alive run to take a rate from"))?;
                rates.push(rps);
            }
            let (rate, slowest) =
                results::open_rate(&rates).ok_or("no proxies to take a rate from")?;
            println!("{rate} {}", text(&results::number(slowest)));
            Ok(())
        }
        Command::Results(a) => {
            let settings = Settings {
                proxies: words(&a.proxies),
                duration_s: a.duration,
                repeat: a.repeat,
                open_repeat: a.open_repeat,
                log_pairs: a.log_pairs,
                versus_pairs: a.versus_pairs,
                keepalive_connections: a.connections,
                newconn_connections: a.newconn_connections,
                idle_connections: a.idle_connections,
                open_rate: a.rate,
                denied_share_percent: a.denied_share,
                modes: words(&a.modes),
                main_mode: a.main_mode.clone(),
                portcullis_log_format: a.portcullis_log_format.clone(),
            };
            let machine = Machine {
                date: a.date.clone(),
                nginx: a.nginx_version.clone(),
                haproxy: a.haproxy_version.clone(),
                openssl: a.openssl_version.clone(),
                portcullis: a.portcullis_version.clone(),
                ..this_machine()
            };
            let mut runs = raw_runs(&a.raw, &settings.proxies)?;
            let reload = reload(&a, &mut runs)?;
            for (_, r) in &mut runs {
                r.retain(|r| PROXY_PHASES.contains(&at(r, &["phase"]).as_str().unwrap_or("")));
            }
            let value = results::results(&machine, &settings, &runs, reload.as_ref());
            let table = markdown(&value, &settings.proxies);
            write(&a.out.join("results.json"), &json_text(&value)?)?;
            write(&a.out.join("results.md"), &table)?;
            print!("{table}");
            Ok(())
        }
    }
}

/// Which side-by-side run a run was: its pair and the proxy measured at
/// the same time (none for a run alone on its core).
#[derive(Debug, Clone, Default)]
pub struct Pairing {
    pub pair: Option<u64>,
    pub against: Option<String>,
}

/// The run with the script's measurements added; an error if it is not
/// the load generator's JSON (a run that failed before reporting).
pub fn annotate(
    mut run: Value,
    phase: &str,
    access_log: &str,
    lines: Option<u64>,
    core0_busy: f64,
    pairing: Pairing,
) -> Result<Value, String> {
    let Some(fields) = run.as_object_mut().filter(|o| o.contains_key("rps")) else {
        return Err("not a load generator report (no \"rps\")".into());
    };
    fields.insert("phase".into(), json!(phase));
    fields.insert("access_log".into(), json!(access_log));
    fields.insert("access_log_lines".into(), json!(lines));
    fields.insert("core0_busy".into(), results::number(core0_busy));
    if let Some(pair) = pairing.pair {
        fields.insert("pair".into(), json!(pair));
    }
    if let Some(against) = pairing.against {
        fields.insert("against".into(), json!(against));
    }
    Ok(run)
}

/// One line for the script's log.
pub fn summary(proxy: &str, run: &Value) -> String {
    let v = |path: &[&str]| text(at(run, path));
    let or_dash = |path: &[&str]| match at(run, path) {
        Value::Null | Value::Bool(false) => "-".to_owned(),
        other => text(other),
    };
    format!(
        "{proxy} {} (log {}): {} req/s, {} µs/req, {} µs/conn, p99 {} µs, errors {}, 200/403/other {}/{}/{}, idle B/conn {}, log lines {} for {} responses, core0 busy {}",
        v(&["phase"]),
        v(&["access_log"]),
        v(&["rps"]),
        or_dash(&["server", "cpu_us_per_request"]),
        or_dash(&["server", "cpu_us_per_connection"]),
        or_dash(&["latency_us", "p99"]),
        v(&["errors"]),
        v(&["status", "200"]),
        v(&["status", "403"]),
        v(&["status", "other"]),
        or_dash(&["idle", "rss_bytes_per_connection"]),
        or_dash(&["access_log_lines"]),
        v(&["requests"]),
        v(&["core0_busy"]),
    )
}

/// A log that received nothing makes a proxy look cheap: say so loudly.
pub fn log_warning(proxy: &str, run: &Value) -> Option<String> {
    let requests = f64_at(run, &["requests"])?;
    let lines = f64_at(run, &["access_log_lines"])?;
    (at(run, &["access_log"]) == "on" && requests > 0.0 && lines < 0.98 * requests).then(|| {
        format!(
            "WARNING: {proxy} {}: the access log received {lines} lines for {requests} responses",
            text(at(run, &["phase"]))
        )
    })
}

/// Each proxy's raw runs, in file-name order (phase, mode, repetition).
fn raw_runs(dir: &Path, proxies: &[String]) -> Result<Vec<(String, Vec<Value>)>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    proxies
        .iter()
        .map(|proxy| {
            let prefix = format!("{proxy}-");
            let runs = files
                .iter()
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .map(|f| read_json(f))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((proxy.clone(), runs))
        })
        .collect()
}

/// The reload section, when the script ran that phase: portcullis's
/// reload runs (taken out of its list) and the snapshot's size.
fn reload(a: &ResultsArgs, runs: &mut [(String, Vec<Value>)]) -> Result<Option<Reload>, String> {
    let (Some(scale), Some(snapshot), Some(puts), Some(applied), Some(mean)) = (
        &a.reload_scale,
        &a.reload_snapshot,
        a.reload_puts,
        a.reload_applied,
        a.reload_mean_put_seconds,
    ) else {
        return Ok(None);
    };
    let (ip_rules, snapshot_bytes) = snapshot_size(snapshot)?;
    let ours: &[Value] = runs
        .iter()
        .find(|(p, _)| p == "portcullis")
        .map_or(&[], |(_, r)| r.as_slice());
    let of_phase = |phase: &str| -> Vec<Value> {
        ours.iter()
            .filter(|r| at(r, &["phase"]) == phase)
            .cloned()
            .collect()
    };
    Ok(Some(Reload {
        scale: scale.clone(),
        ip_rules,
        snapshot_bytes,
        puts,
        applied,
        mean_put_seconds: mean,
        quiet: of_phase("reload-quiet"),
        reloading: of_phase("reload-busy"),
    }))
}

/// IP rules and bytes of a snapshot file, reading no more of it than the
/// rule lists.
fn snapshot_size(path: &Path) -> Result<(u64, u64), String> {
    #[derive(Deserialize)]
    struct Snapshot {
        policies: Vec<Policy>,
    }
    #[derive(Deserialize)]
    struct Policy {
        #[serde(rename = "type")]
        kind: String,
        rules: Vec<IgnoredAny>,
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s: Snapshot =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let rules = s
        .policies
        .iter()
        .filter(|p| p.kind == "ip")
        .map(|p| p.rules.len() as u64)
        .sum();
    Ok((rules, bytes.len() as u64))
}

/// Name, kernel, cores and load of this machine, from `/proc`; what cannot
/// be read is left empty.
fn this_machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
        .unwrap_or_default();
    let loadavg = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
        loadavg_at_end: loadavg,
        ..Machine::default()
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn json_text(v: &Value) -> Result<String, String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

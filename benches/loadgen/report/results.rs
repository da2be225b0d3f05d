//! benches/compare.sh's results: every run's JSON (the load generator's
//! `--json` object as `report run` annotated it) folded into per-proxy
//! figures, best of the repeats for CPU and memory, the median for
//! open-loop latency, per access-log mode. Pure: runs in, one JSON value
//! out, which `results.json` holds and the markdown table is made from.

use serde_json::{Map, Value, json};

/// The phases measured for every proxy; the reload phases are portcullis's
/// alone and reported apart.
pub const PROXY_PHASES: [&str; 6] = ["idle", "keepalive", "newconn", "open", "logpair", "versus"];

/// The value at `path` in `v`, `Null` where any step is missing.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .unwrap_or(&Value::Null)
}

pub fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    at(v, path).as_f64()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

/// `x` as JSON, a whole number written without a fraction (as the jq
/// version of this report wrote them, and as the table reads best).
pub fn number(x: f64) -> Value {
    // 2^53: every integer below it is exact in an f64.
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Debug, Clone, Copy)]
pub enum How {
    Min,
    Max,
    Median,
}

/// The best of the runs' numbers at `path` (missing ones ignored), or
/// `Null` when no run has one. Min and max keep the run's own number.
pub fn best(runs: &[&Value], path: &[&str], how: How) -> Value {
    let mut found: Vec<(f64, &Value)> = runs
        .iter()
        .map(|r| at(r, path))
        .filter_map(|v| Some((v.as_f64()?, v)))
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = found.len();
    match (how, found.first(), found.last()) {
        (_, None, _) | (_, _, None) => Value::Null,
        (How::Min, Some((_, v)), _) | (How::Max, _, Some((_, v))) => (*v).clone(),
        (How::Median, ..) if n % 2 == 1 => found[n / 2].1.clone(),
        (How::Median, ..) => number((found[n / 2 - 1].0 + found[n / 2].0) / 2.0),
    }
}

fn phase(run: &Value) -> &str {
    str_at(run, &["phase"])
}

fn access_log(run: &Value) -> &str {
    str_at(run, &["access_log"])
}

fn runs_of<'a>(runs: &'a [Value], phase_: &str, mode: &str) -> Vec<&'a Value> {
    runs.iter()
        .filter(|r| phase(r) == phase_ && access_log(r) == mode)
        .collect()
}

fn sum(runs: &[&Value], path: &[&str]) -> Value {
    if runs.is_empty() {
        return Value::Null;
    }
    number(runs.iter().filter_map(|r| f64_at(r, path)).sum())
}

/// `a − b` to one decimal, `Null` unless both are numbers.
fn diff(a: &Value, b: &Value) -> Value {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => number(round1(a - b)),
        _ => Value::Null,
    }
}

/// Per access-log mode ("on", "off"), the figures of one phase, or `Null`
/// for a mode that did not run.
fn per_mode(runs: &[Value], phase_: &str, figures: impl Fn(&[&Value]) -> Value) -> Value {
    let mut out = Map::new();
    for mode in ["on", "off"] {
        let runs = runs_of(runs, phase_, mode);
        let v = if runs.is_empty() {
            Value::Null
        } else {
            figures(&runs)
        };
        out.insert(mode.to_owned(), v);
    }
    Value::Object(out)
}

/// Lines the access log received over the runs of a phase with the log on.
fn logged(runs: &[Value], phase_: &str) -> Value {
    let runs = runs_of(runs, phase_, "on");
    if runs.is_empty() {
        return Value::Null;
    }
    let lines: f64 = runs
        .iter()
        .map(|r| f64_at(r, &["access_log_lines"]).unwrap_or(0.0))
        .sum();
    json!({
        "lines": number(lines),
        "responses": sum(&runs, &["requests"]),
        "runs": runs.len(),
    })
}

/// The access log's cost from the side-by-side runs (phase `logpair`): per
/// pair, the CPU per request of the process with the log on minus that of
/// its twin with the log off, measured over the same seconds on the same
/// core; their median, range and each. `Null` without a whole pair.
fn paired_cost(runs: &[Value]) -> Value {
    let side = |mode: &str| -> std::collections::BTreeMap<u64, &Value> {
        runs_of(runs, "logpair", mode)
            .into_iter()
            .filter_map(|r| Some((at(r, &["pair"]).as_u64()?, r)))
            .collect()
    };
    let off = side("off");
    let pairs: Vec<(&Value, &Value)> = side("on")
        .into_iter()
        .filter_map(|(n, on)| Some((on, *off.get(&n)?)))
        .collect();
    if pairs.is_empty() {
        return Value::Null;
    }
    let differences = |path: &[&str]| {
        spread(
            pairs
                .iter()
                .filter_map(|(on, off)| {
                    Some(number(round1(f64_at(on, path)? - f64_at(off, path)?)))
                })
                .collect(),
        )
    };
    json!({
        "pairs": pairs.len(),
        "cpu_us_per_request": differences(&["server", "cpu_us_per_request"]),
        "user_us_per_request": differences(&["server", "user_us_per_request"]),
    })
}

/// The median, least and greatest of `each` (and `each`), `Null` parts
/// when it is empty.
fn spread(each: Vec<Value>) -> Value {
    let all: Vec<&Value> = each.iter().collect();
    json!({
        "median": best(&all, &[], How::Median),
        "min": best(&all, &[], How::Min),
        "max": best(&all, &[], How::Max),
        "each": each,
    })
}

/// portcullis side by side with each other proxy (phase `versus`): per
/// pair, portcullis's CPU per keep-alive request over the other's, both
/// measured over the same seconds on the same core.
fn versus(runs: &[(String, Vec<Value>)]) -> Value {
    let of = |proxy: &str| -> Vec<&Value> {
        runs.iter()
            .filter(|(p, _)| p == proxy)
            .flat_map(|(_, r)| r.iter())
            .filter(|r| phase(r) == "versus")
            .collect()
    };
    let ours = of("portcullis");
    let mut out = Map::new();
    for (other, _) in runs.iter().filter(|(p, _)| p != "portcullis") {
        let theirs = of(other);
        let cpu = |r: &Value| f64_at(r, &["server", "cpu_us_per_request"]);
        let pairs: Vec<(f64, f64)> = ours
            .iter()
            .filter(|r| at(r, &["against"]) == other.as_str())
            .filter_map(|p| {
                let o = theirs
                    .iter()
                    .find(|o| at(o, &["pair"]) == at(p, &["pair"]))?;
                Some((cpu(p)?, cpu(o)?))
            })
            .filter(|&(_, o)| o > 0.0)
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let ratios = pairs
            .iter()
            .map(|(p, o)| number((p / o * 100.0).round() / 100.0))
            .collect();
        let ours_cpu = pairs.iter().map(|&(p, _)| number(p)).collect();
        let theirs_cpu = pairs.iter().map(|&(_, o)| number(o)).collect();
        out.insert(
            other.clone(),
            json!({
                "pairs": pairs.len(),
                "ratio": spread(ratios),
                "portcullis_cpu_us_per_request": spread(ours_cpu),
                "cpu_us_per_request": spread(theirs_cpu),
            }),
        );
    }
    Value::Object(out)
}

/// One proxy's figures from all its runs of [`PROXY_PHASES`], sorted by
/// file name (the order `runs` keeps).
pub fn proxy_results(runs: &[Value]) -> Value {
    // The idle and open-loop phases run in one access-log mode only.
    let main = runs
        .iter()
        .find(|r| matches!(phase(r), "open" | "idle"))
        .map_or(Value::Null, |r| at(r, &["access_log"]).clone());
    let main_mode = main.as_str().unwrap_or("");
    let keepalive = per_mode(runs, "keepalive", |r| {
        json!({
            "rps": best(r, &["rps"], How::Max),
            "cpu_us_per_request": best(r, &["server", "cpu_us_per_request"], How::Min),
            "user_us_per_request": best(r, &["server", "user_us_per_request"], How::Min),
            "cpu_share": best(r, &["server", "cpu_share"], How::Max),
            "p99_us": best(r, &["latency_us", "p99"], How::Min),
        })
    });
    let newconn = per_mode(runs, "newconn", |r| {
        json!({
            "per_s": best(r, &["connections_per_s"], How::Max),
            "cpu_us_per_connection": best(r, &["server", "cpu_us_per_connection"], How::Min),
            "user_us_per_connection": best(r, &["server", "user_us_per_connection"], How::Min),
        })
    });
    let idle = runs_of(runs, "idle", main_mode);
    let open = runs_of(runs, "open", main_mode);
    let all: Vec<&Value> = runs.iter().collect();
    let access_log_cost = json!({
        "keepalive_cpu_us_per_request": diff(
            at(&keepalive, &["on", "cpu_us_per_request"]),
            at(&keepalive, &["off", "cpu_us_per_request"]),
        ),
        "keepalive_user_us_per_request": diff(
            at(&keepalive, &["on", "user_us_per_request"]),
            at(&keepalive, &["off", "user_us_per_request"]),
        ),
        "newconn_cpu_us_per_connection": diff(
            at(&newconn, &["on", "cpu_us_per_connection"]),
            at(&newconn, &["off", "cpu_us_per_connection"]),
        ),
    });
    let mut by_phase: Vec<&str> = runs.iter().map(phase).collect();
    by_phase.sort_unstable();
    by_phase.dedup();
    let grouped: Vec<Value> = by_phase
        .iter()
        .map(|p| Value::Array(runs.iter().filter(|r| phase(r) == *p).cloned().collect()))
        .collect();
    json!({
        "keepalive": keepalive,
        "newconn": newconn,
        "idle": {
            "access_log": main,
            "rss_bytes_per_connection": best(&idle, &["idle", "rss_bytes_per_connection"], How::Min),
            "connections_held": best(&idle, &["idle", "held_at_end"], How::Max),
        },
        "open": {
            "access_log": main,
            "p50_us": best(&open, &["latency_us", "p50"], How::Median),
            "p99_us": best(&open, &["latency_us", "p99"], How::Median),
            "p99_9_us": best(&open, &["latency_us", "p99_9"], How::Median),
            "max_us": best(&open, &["latency_us", "max"], How::Median),
        },
        "access_log_lines": {
            "idle": logged(runs, "idle"),
            "keepalive": logged(runs, "keepalive"),
            "newconn": logged(runs, "newconn"),
            "open": logged(runs, "open"),
            "logpair": logged(runs, "logpair"),
            "versus": logged(runs, "versus"),
        },
        "errors": sum(&all, &["errors"]),
        "status": {
            "200": sum(&all, &["status", "200"]),
            "403": sum(&all, &["status", "403"]),
            "other": sum(&all, &["status", "other"]),
        },
        "runs": grouped,
        "access_log_cost": access_log_cost,
        "access_log_cost_side_by_side": paired_cost(runs),
    })
}

/// The machine the comparison ran on.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: u64,
    pub loadavg_at_end: String,
    pub nginx: String,
    pub haproxy: String,
    pub openssl: String,
    pub portcullis: String,
}

/// How the comparison ran (the script's options).
#[derive(Debug, Clone)]
pub struct Settings {
    pub proxies: Vec<String>,
    pub duration_s: f64,
    pub repeat: u64,
    pub open_repeat: u64,
    /// Side-by-side log on/off runs per proxy.
    pub log_pairs: u64,
    /// Side-by-side runs of portcullis with each other proxy.
    pub versus_pairs: u64,
    pub keepalive_connections: u64,
    pub newconn_connections: u64,
    pub idle_connections: u64,
    pub open_rate: f64,
    pub denied_share_percent: f64,
    /// Access-log modes of the keep-alive and new-connection phases.
    pub modes: Vec<String>,
    /// The access-log mode of the idle, open-loop and reload phases.
    pub main_mode: String,
    pub portcullis_log_format: String,
}

/// portcullis under `PUT /snapshot` reloads.
#[derive(Debug, Clone)]
pub struct Reload {
    pub scale: String,
    pub ip_rules: u64,
    pub snapshot_bytes: u64,
    pub puts: u64,
    pub applied: u64,
    pub mean_put_seconds: f64,
    pub quiet: Vec<Value>,
    pub reloading: Vec<Value>,
}

/// All of `results.json`: machine, settings, then each proxy's figures (in
/// `settings.proxies` order) and the reload runs.
pub fn results(
    machine: &Machine,
    settings: &Settings,
    runs: &[(String, Vec<Value>)],
    reload: Option<&Reload>,
) -> Value {
    let mut out = Map::new();
    out.insert(
        "machine".into(),
        json!({
            "date": machine.date,
            "kernel": machine.kernel,
            "cpu": machine.cpu,
            "cores": machine.cores,
            "loadavg_at_end": machine.loadavg_at_end,
            "nginx": machine.nginx,
            "haproxy": machine.haproxy,
            "openssl": machine.openssl,
            "portcullis": machine.portcullis,
        }),
    );
    out.insert(
        "settings".into(),
        json!({
            "duration_s": number(settings.duration_s),
            "repeat": settings.repeat,
            "open_repeat": settings.open_repeat,
            "log_pairs": settings.log_pairs,
            "versus_pairs": settings.versus_pairs,
            "keepalive_connections": settings.keepalive_connections,
            "newconn_connections": settings.newconn_connections,
            "idle_connections": settings.idle_connections,
            "open_rate": number(settings.open_rate),
            "denied_share_percent": number(settings.denied_share_percent),
            "allow_list_cidrs": 10000,
            "tls": "TLS 1.3, ECDSA P-256, X25519, no resumption",
            "access_log": {
                "modes": settings.modes,
                "idle_open_reload": settings.main_mode,
                "nginx": "JSON (log_format escape=json), access_log FILE buffer=64k flush=1s",
                "haproxy": "JSON-shaped log-format, syslog over UDP to 127.0.0.1 (socat on core 1 into a file)",
                "portcullis": format!(
                    "shipped defaults ([log] access on), --log-format {}, stdout to a file",
                    settings.portcullis_log_format
                ),
                "off": "nginx access_log off; HAProxy no log; portcullis [log] access = false",
            },
        }),
    );
    for (proxy, runs) in runs {
        out.insert(proxy.clone(), proxy_results(runs));
    }
    out.insert("versus".into(), versus(runs));
    if let Some(r) = reload {
        out.insert(
            "reload".into(),
            json!({
                "scale": r.scale,
                "ip_rules": r.ip_rules,
                "snapshot_bytes": r.snapshot_bytes,
                "puts": r.puts,
                "applied": r.applied,
                "mean_put_seconds": number(r.mean_put_seconds),
                "quiet": r.quiet,
                "reloading": r.reloading,
            }),
        );
    }
    Value::Object(out)
}

/// The open-loop rate: a quarter of the slowest proxy's best keep-alive
/// rate, rounded down to a multiple of 500/s, at least 500/s. `None`
/// without a rate to start from.
pub fn open_rate(best_keepalive_rps: &[f64]) -> Option<(u64, f64)> {
    let slowest = best_keepalive_rps.iter().copied().min_by(f64::total_cmp)?;
    let steps = (slowest / 4.0 / 500.0).floor();
    Some(((steps.max(1.0) as u64) * 500, slowest))
}

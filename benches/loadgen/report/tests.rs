//! The comparison report on hand-made runs shaped like what
//! benches/compare.sh leaves in its raw directory: the load generator's
//! `--json` object, annotated by `report run`.

use serde_json::{Value, json};

use super::compare::{Pairing, annotate, log_warning, summary};
use super::markdown::markdown;
use super::results::{Machine, Reload, Settings, open_rate, proxy_results, results};

/// A run as `portcullis-loadgen --json` writes it (the fields the report
/// reads), then annotated.
fn run(phase: &str, log: &str, rps: f64, cpu_us: f64, p99: u64) -> Value {
    let requests = (rps * 10.0) as u64;
    let raw = json!({
        "mode": if phase == "open" { "open" } else { "closed" },
        "rps": rps,
        "requests": requests,
        "status": {"200": requests - requests / 10, "403": requests / 10, "other": 0},
        "errors": 0,
        "connections_opened": 320,
        "connections_per_s": 32.0,
        "latency_us": {"count": requests, "p50": p99 / 4, "p90": p99 / 2, "p99": p99, "p99_9": p99 * 2, "max": p99 * 3, "mean": 10.5},
        "server": {
            "cpu_us_per_request": cpu_us,
            "user_us_per_request": cpu_us / 2.0,
            "cpu_us_per_connection": cpu_us * 10.0,
            "user_us_per_connection": cpu_us * 5.0,
            "cpu_share": 0.97,
        },
        "idle": null,
    });
    let lines = (log == "on").then_some(requests);
    annotate(raw, phase, log, lines, 0.99, Pairing::default()).unwrap()
}

fn idle(rss_per_connection: f64) -> Value {
    let mut r = run("idle", "on", 100.0, 50.0, 900);
    r["idle"] = json!({"established": 1000, "held_at_end": 1000, "rss_bytes_per_connection": rss_per_connection});
    r
}

/// Phase, access log, then (req/s, CPU µs per request, p99 µs) of nginx's
/// run and of portcullis's.
type Figures = (f64, f64, u64);
// One run a line, so the table reads as one (rustfmt would break the longer
// rows over five lines each).
#[rustfmt::skip]
const RUNS: [(&str, &str, [Figures; 2]); 7] = [
    ("keepalive", "off", [(48000.0, 16.0, 800), (50000.0, 18.0, 700)]),
    ("keepalive", "on", [(46000.0, 20.5, 900), (48000.0, 19.0, 750)]),
    ("keepalive", "on", [(47000.0, 20.0, 850), (47500.0, 19.5, 800)]),
    ("newconn", "off", [(2500.0, 380.0, 2000), (5000.0, 190.0, 1000)]),
    ("newconn", "on", [(2400.0, 392.0, 2100), (4900.0, 200.0, 1100)]),
    ("open", "on", [(5000.0, 21.0, 700), (5000.0, 19.0, 400)]),
    ("open", "on", [(5000.0, 21.0, 500), (5000.0, 19.0, 300)]),
];
/// Idle memory per connection, nginx's and portcullis's.
const IDLE_RSS: [f64; 2] = [20000.0, 12000.0];

/// The runs of proxy number `i` in [`RUNS`].
fn runs_of(i: usize) -> Vec<Value> {
    let measured = RUNS.iter().map(|(phase, log, figures)| {
        let (rps, cpu_us, p99) = figures[i];
        run(phase, log, rps, cpu_us, p99)
    });
    std::iter::once(idle(IDLE_RSS[i])).chain(measured).collect()
}

fn nginx() -> Vec<Value> {
    runs_of(0)
}

fn portcullis() -> Vec<Value> {
    runs_of(1)
}

fn settings() -> Settings {
    Settings {
        proxies: vec!["nginx".into(), "portcullis".into()],
        duration_s: 10.0,
        repeat: 2,
        open_repeat: 2,
        log_pairs: 3,
        versus_pairs: 2,
        keepalive_connections: 64,
        newconn_connections: 32,
        idle_connections: 1000,
        open_rate: 5000.0,
        denied_share_percent: 10.0,
        modes: vec!["on".into(), "off".into()],
        main_mode: "on".into(),
        portcullis_log_format: "json".into(),
    }
}

fn machine() -> Machine {
    Machine {
        date: "2026-11-29T12:00:00Z".into(),
        kernel: "6.18.44".into(),
        cpu: "Intel Xeon".into(),
        cores: 2,
        loadavg_at_end: "0.50 0.40 0.30".into(),
        nginx: "1.22.1".into(),
        haproxy: "2.6.12".into(),
        openssl: "3.0.19".into(),
        portcullis: "abc1234".into(),
    }
}

fn reload() -> Reload {
    Reload {
        scale: "large".into(),
        ip_rules: 1_010_000,
        snapshot_bytes: 79_000_000,
        puts: 10,
        applied: 9,
        mean_put_seconds: 1.2,
        quiet: vec![run("reload-quiet", "on", 5000.0, 19.0, 400)],
        reloading: vec![run("reload-busy", "on", 4990.0, 25.0, 9000)],
    }
}

fn table() -> String {
    let runs = [
        ("nginx".into(), nginx()),
        ("portcullis".into(), portcullis()),
    ];
    let r = results(&machine(), &settings(), &runs, Some(&reload()));
    markdown(&r, &settings().proxies)
}

#[test]
fn best_of_the_repeats_and_the_median_of_the_open_loop() {
    let r = proxy_results(&nginx());
    assert_eq!(r["keepalive"]["on"]["rps"], json!(47000.0));
    assert_eq!(r["keepalive"]["on"]["cpu_us_per_request"], json!(20.0));
    assert_eq!(r["keepalive"]["off"]["rps"], json!(48000.0));
    assert_eq!(r["newconn"]["on"]["cpu_us_per_connection"], json!(3920.0));
    // Two open runs: the mean of the middle two.
    assert_eq!(r["open"]["p99_us"], json!(600));
    assert_eq!(r["open"]["access_log"], "on");
    assert_eq!(r["idle"]["rss_bytes_per_connection"], json!(20000.0));
    assert_eq!(
        r["access_log_cost"]["keepalive_cpu_us_per_request"],
        json!(4)
    );
    assert_eq!(r["access_log_lines"]["keepalive"]["runs"], 2);
    assert_eq!(r["access_log_lines"]["newconn"]["lines"], 24000);
    assert_eq!(r["status"]["403"], json!(156_000));
    // Runs grouped by phase, in phase order.
    let phases: Vec<&str> = r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g[0]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["idle", "keepalive", "newconn", "open"]);
}

#[test]
fn a_mode_that_did_not_run_is_null() {
    let only_on: Vec<Value> = nginx()
        .into_iter()
        .filter(|r| r["access_log"] == "on")
        .collect();
    let r = proxy_results(&only_on);
    assert_eq!(r["keepalive"]["off"], Value::Null);
    assert_eq!(
        r["access_log_cost"]["keepalive_cpu_us_per_request"],
        Value::Null
    );
}

#[test]
fn the_table_has_a_row_per_metric_and_portcullis_against_its_targets() {
    let t = table();
    assert!(t.starts_with("## portcullis vs nginx vs HAProxy\n\n2 cores (Intel Xeon), kernel 6.18.44; nginx 1.22.1, HAProxy 2.6.12, OpenSSL 3.0.19; portcullis abc1234."), "{t}");
    assert!(t.contains(
        "\n| metric | nginx | portcullis | portcullis vs target |\n|---|---:|---:|---|\n"
    ));
    for want in [
        "| keep-alive req/s (closed loop, 64 conns), access log on | 47000 | 48000 | |",
        "| proxy CPU share during it (1.0 = core saturated), log on / off | 1.0 / 1.0 | 1.0 / 1.0 | |",
        "| **CPU µs per keep-alive request, access log on** | 20.0 | 19.0 | 0.95× of best (≤ 0.90×) |",
        "| CPU µs per keep-alive request, access log off | 16.0 | 18.0 | 1.13× of best, log off |",
        "| … of which user space (utime; the rest is kernel TCP), log on / off | 10.0 / 8.0 | 9.5 / 9.0 | 0.95× of best, log on |",
        "| **access log cost (on − off), µs per keep-alive request** | 4.0 | 1.0 | |",
        "| new TLS connections/s (1 request each, 32 conns), access log off | 32.0 | 32.0 | |",
        "| **CPU µs per new TLS connection, access log on** | 3920 | 2000 | 0.51× of best (≤ 0.55×) |",
        "| **RSS bytes per idle TLS connection** (1000 held, access log on) | 20000 | 12000 | 0.6× of nginx (≤ 0.75×) |",
        "| idle connections still open after the hold | 1000 | 1000 | |",
        "| open loop 5000/s, access log on: **p99 µs** | 600 | 350 | 0.58× of nginx (≤ 1×) |",
        "| access log lines received / responses, keep-alive runs | 930000 / 930000 | 955000 / 955000 | |",
        "| errors (all phases) | 0 | 0 | |",
    ] {
        assert!(t.lines().any(|l| l == want), "no row\n{want}\nin\n{t}");
    }
}

#[test]
fn the_reload_section_and_the_noise_line() {
    let t = table();
    assert!(t.contains("\n### portcullis: reload under load\n\n1010000 IP rules (large synthetic snapshot + the bench list), 75 MiB, `PUT /snapshot` with a new version every second (or back-to-back when a PUT takes longer): 9 of 10 applied, mean PUT 1.2 s. Open loop at 5000/s, access log on.\n"), "{t}");
    assert!(t.contains("\n| quiet | 5000 | 100 | 400 | 800 | 1200 | 0 | 50000 |\n"));
    assert!(
        t.contains("\n| reloading every 1 s | 4990 | 2250 | 9000 | 18000 | 27000 | 0 | 49900 |\n")
    );
    let noise = t.lines().last().unwrap();
    assert!(noise.starts_with("Other load on the proxy core"), "{noise}");
    assert!(
        noise.contains(": nginx keepalive log off 0.02, "),
        "{noise}"
    );
    assert!(noise.ends_with(", portcullis reload-busy 0.02."), "{noise}");
    assert!(!noise.contains(" idle "), "idle runs are left out: {noise}");
}

#[test]
fn logs_off_everywhere_drops_the_log_rows() {
    let mut s = settings();
    s.modes = vec!["off".into()];
    s.main_mode = "off".into();
    let off = |runs: Vec<Value>| -> Vec<Value> {
        runs.into_iter()
            .map(|mut r| {
                r["access_log"] = json!("off");
                r["access_log_lines"] = Value::Null;
                r
            })
            .collect()
    };
    let runs = [
        ("nginx".into(), off(nginx())),
        ("portcullis".into(), off(portcullis())),
    ];
    let t = markdown(&results(&machine(), &s, &runs, None), &s.proxies);
    assert!(t.contains("Access logs off in every phase."), "{t}");
    assert!(!t.contains("access log lines received"), "{t}");
    assert!(!t.contains("access log cost"), "{t}");
    assert!(!t.contains("reload under load"), "{t}");
    assert!(t.lines().any(|l| l == "| **CPU µs per keep-alive request, access log off** | 16.0 | 18.0 | 1.13× of best (≤ 0.90×) |"), "{t}");
}

#[test]
fn a_log_that_dropped_lines_is_flagged() {
    let mut r = run("keepalive", "on", 1000.0, 20.0, 500);
    r["access_log_lines"] = json!(5000);
    assert_eq!(
        log_warning("haproxy", &r).as_deref(),
        Some("WARNING: haproxy keepalive: the access log received 5000 lines for 10000 responses")
    );
    let line = summary("haproxy", &r);
    assert_eq!(
        line,
        "haproxy keepalive (log on): 1000 req/s, 20 µs/req, 200 µs/conn, p99 500 µs, errors 0, 200/403/other 9000/1000/0, idle B/conn -, log lines 5000 for 10000 responses, core0 busy 0.99"
    );
    let runs = [("haproxy".to_owned(), vec![r])];
    let mut s = settings();
    s.proxies = vec!["haproxy".into()];
    let t = markdown(&results(&machine(), &s, &runs, None), &s.proxies);
    assert!(
        t.lines().any(|l| l
            == "| access log lines received / responses, keep-alive runs | 5000 / 10000 ⚠ | |"),
        "{t}"
    );
    assert!(t.contains("| metric | HAProxy | portcullis vs target |"));
}

#[test]
fn a_failed_run_is_refused() {
    assert!(
        annotate(
            json!({"error": "x"}),
            "open",
            "on",
            None,
            0.5,
            Pairing::default()
        )
        .is_err()
    );
    assert!(annotate(json!([1]), "open", "on", None, 0.5, Pairing::default()).is_err());
}

#[test]
fn the_open_loop_rate_is_a_quarter_of_the_slowest_in_steps_of_500() {
    assert_eq!(open_rate(&[47164.3, 42047.0]), Some((10_500, 42047.0)));
    assert_eq!(open_rate(&[1200.0]), Some((500, 1200.0)));
    assert_eq!(open_rate(&[]), None);
}

/// One side of side-by-side pair `n`: a run of `phase` at `cpu` µs a
/// request that had `share` of core 0.
fn side(phase: &str, log: &str, n: u64, cpu: f64, share: f64) -> Value {
    let mut r = run(phase, log, 20000.0, cpu, 900);
    r["pair"] = json!(n);
    r["server"]["cpu_share"] = json!(share);
    r
}

/// A side-by-side pair: the log-on and log-off runs over the same seconds,
/// both on core 0 (each about half of it).
fn pair(n: u64, cpu_on: f64, cpu_off: f64) -> [Value; 2] {
    [("on", cpu_on), ("off", cpu_off)].map(|(log, cpu)| side("logpair", log, n, cpu, 0.49))
}

#[test]
fn side_by_side_pairs_give_the_median_and_range_of_their_differences() {
    let mut ours = portcullis();
    // Pair 3 has no log-off run: it is left out.
    ours.extend(pair(1, 20.0, 18.1));
    ours.extend(pair(2, 24.0, 22.4));
    ours.extend(pair(4, 19.5, 17.0));
    ours.push(pair(3, 30.0, 0.0)[0].clone());
    let r = proxy_results(&ours);
    let cost = &r["access_log_cost_side_by_side"];
    assert_eq!(cost["pairs"], 3);
    assert_eq!(cost["cpu_us_per_request"]["median"], json!(1.9));
    assert_eq!(cost["cpu_us_per_request"]["min"], json!(1.6));
    assert_eq!(cost["cpu_us_per_request"]["max"], json!(2.5));
    assert_eq!(cost["cpu_us_per_request"]["each"], json!([1.9, 1.6, 2.5]));
    // The side-by-side runs count for no other figure.
    assert_eq!(r["keepalive"]["on"]["cpu_us_per_request"], json!(19.0));
    assert_eq!(r["access_log_lines"]["logpair"]["runs"], 4);
    assert_eq!(
        proxy_results(&portcullis())["access_log_cost_side_by_side"],
        Value::Null
    );

    let runs = [("nginx".into(), nginx()), ("portcullis".into(), ours)];
    let t = markdown(
        &results(&machine(), &settings(), &runs, None),
        &settings().proxies,
    );
    for want in [
        "| **access log cost, on and off side by side**, CPU µs per keep-alive request: median (range) of 3 pairs | – | 1.9 (1.6 to 2.5) | ≤ 0.5 µs: missed |",
        "| … of which user space: median (range) of 3 pairs | – | 0.9 (0.8 to 1.3) | |",
    ] {
        assert!(t.lines().any(|l| l == want), "no row\n{want}\nin\n{t}");
    }
    // Other load in a pair is what is left after both processes.
    let noise = t.lines().last().unwrap();
    assert!(
        noise.contains(", portcullis logpair pair 1 0.01, "),
        "{noise}"
    );
    assert!(!noise.contains("logpair log off"), "{noise}");
}

/// Proxy `proxy`'s side of pair `n` with `against`, at `cpu` µs a request.
fn versus(proxy_against: (&str, &str), n: u64, cpu: f64) -> Value {
    let share = if proxy_against.0 == "portcullis" {
        0.45
    } else {
        0.5
    };
    let mut r = side("versus", "on", n, cpu, share);
    r["against"] = json!(proxy_against.1);
    r
}

#[test]
fn side_by_side_with_another_proxy_gives_portcullis_over_it_pair_by_pair() {
    let mut ours = portcullis();
    let mut theirs = nginx();
    for (n, p, o) in [(1, 16.0, 20.0), (2, 18.0, 20.0), (3, 15.0, 20.0)] {
        ours.push(versus(("portcullis", "nginx"), n, p));
        theirs.push(versus(("nginx", "portcullis"), n, o));
    }
    let runs = [("nginx".into(), theirs), ("portcullis".into(), ours)];
    let r = results(&machine(), &settings(), &runs, None);
    let v = &r["versus"]["nginx"];
    assert_eq!(v["pairs"], 3);
    assert_eq!(v["ratio"]["each"], json!([0.8, 0.9, 0.75]));
    assert_eq!(v["ratio"]["median"], json!(0.8));
    assert_eq!(v["cpu_us_per_request"]["median"], json!(20));
    assert_eq!(v["portcullis_cpu_us_per_request"]["median"], json!(16));
    // Side-by-side runs count for no figure of a proxy alone.
    assert_eq!(
        r["nginx"]["keepalive"]["on"]["cpu_us_per_request"],
        json!(20.0)
    );

    let t = markdown(&r, &settings().proxies);
    let want = "| **CPU µs per keep-alive request, side by side with portcullis** (both access logs on, the same seconds on one core; portcullis's against each in turn): median of 2 pairs | 20.0 | 16.0 | 0.8× (0.75 to 0.9) of nginx (≤ 0.90×: met) |";
    assert!(t.lines().any(|l| l == want), "no row\n{want}\nin\n{t}");
    let noise = t.lines().last().unwrap();
    assert!(
        noise.contains(", portcullis versus nginx pair 2 0.04, "),
        "{noise}"
    );
    assert!(!noise.contains("nginx versus"), "{noise}");
    // Without such runs, no row.
    assert!(!table().contains("side by side with portcullis"));
}

//! What the etcd source costs a proxy per change, without the network:
//! the synthetic snapshot at a scale (`PORTCULLIS_BENCH_SCALES`, default
//! `medium,large`) as etcd entries, applied whole (the initial read), then
//! one policy change applied as the follower applies a watch event:
//! per-entry validation, then the compile (what stands between the etcd
//! put and the swap) — incremental, from the set compiled before, as the
//! follower does, and whole (of the generated snapshot), for comparison —
//! and what saving the state directory costs after it.
//!
//! `cargo bench --bench etcd_apply` prints one line per scale and step,
//! the median of a few runs; each step is timed on its own so the README
//! can say where a change's time goes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use portcullis::policy::{PolicyOptions, PolicySet};
use portcullis::reload::etcd::entries::{Change, Entries};
use portcullis::reload::etcd::keys::{self, Kind};
use portcullis_test_kit::synth::{Scale, generate};

const PREFIX: &str = "/portcullis/";
const RUNS: usize = 5;

fn main() {
    let scales = std::env::var("PORTCULLIS_BENCH_SCALES").unwrap_or_else(|_| "medium,large".into());
    for name in scales.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(scale) = Scale::named(name) else {
            eprintln!("unknown scale {name:?} (small, medium, large)");
            std::process::exit(2);
        };
        run(name, scale);
    }
}

fn run(name: &str, scale: Scale) {
    let snapshot = generate(scale, 1);
    let entries: Vec<(String, Change)> = snapshot
        .policies
        .iter()
        .map(|p| (keys::key(PREFIX, Kind::Policy, &p.id), json(p)))
        .chain(
            snapshot
                .deployments
                .iter()
                .map(|d| (keys::key(PREFIX, Kind::Deployment, &d.id), json(d))),
        )
        .collect();

    let mut initial = Vec::new();
    let mut followed = None;
    for _ in 0..RUNS.min(3) {
        let started = Instant::now();
        let mut e = Entries::new(PREFIX).keeping_values();
        let applied = e.apply(entries.iter().cloned());
        assert_eq!(applied.refused, 0, "the synthetic snapshot is valid");
        initial.push(started.elapsed());
        followed = Some(e);
    }
    let Some(mut e) = followed else { return };
    report(name, "initial: validate every entry", &mut initial);
    let t = Instant::now();
    let Some(mut previous) = e.compile(1, PolicyOptions::default(), None) else {
        panic!("the first compile has every model");
    };
    report(name, "initial: compile", &mut [t.elapsed()]);

    // One change: the first ip policy gets one more rule.
    let mut policy = snapshot
        .policies
        .iter()
        .find(|p| matches!(p.rules, portcullis::policy::Rules::Ip(_)))
        .cloned()
        .expect("an ip policy");
    let key = keys::key(PREFIX, Kind::Policy, &policy.id);
    let (mut validate, mut save, mut compile, mut incremental, mut stats) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        if let portcullis::policy::Rules::Ip(rules) = &mut policy.rules
            && let Some(first) = rules.first().cloned()
        {
            let mut more = first;
            more.description = Some(format!("change {run}"));
            rules.push(more);
        }
        let t = Instant::now();
        let applied = e.apply([(key.clone(), json(&policy))]);
        assert_eq!(applied.changed, 1);
        validate.push(t.elapsed());
        let t = Instant::now();
        let Some(next) = e.compile(2 + run as u64, PolicyOptions::default(), Some(&previous))
        else {
            panic!("compiled from the set before");
        };
        incremental.push(t.elapsed());
        // What the swap records of the set (`GET /snapshot`, the log line).
        let t = Instant::now();
        std::hint::black_box(next.stats());
        stats.push(t.elapsed());
        previous = next;
        // Off the swap's path, at most every 5 s, with a state directory.
        let t = Instant::now();
        let bytes = e.state_document(2 + run as u64);
        save.push(t.elapsed());
        std::hint::black_box(bytes);
    }
    // Apart from the changes: freeing a whole set leaves a million small
    // chunks for glibc to consolidate at the next large allocation, which
    // would be charged to whatever is timed next.
    for _ in 0..RUNS {
        let t = Instant::now();
        let set = PolicySet::compile(&snapshot, PolicyOptions::default());
        compile.push(t.elapsed());
        drop(set);
    }
    report(name, "one change: validate the entry", &mut validate);
    report(
        name,
        "one change: compile reusing (the swap)",
        &mut incremental,
    );
    report(name, "one change: the set's stats (the swap)", &mut stats);
    report(name, "one change: compile whole (comparison)", &mut compile);
    report(name, "state save: the document", &mut save);
}

fn json<T: serde::Serialize>(v: &T) -> Change {
    Change::Put(Bytes::from(serde_json::to_vec(v).expect("serialise")))
}

fn report(scale: &str, step: &str, times: &mut [Duration]) {
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let (min, max) = (times.first().copied(), times.last().copied());
    println!(
        "{scale:>6}  {step:<38} median {:>9.2} ms  (min {:.2}, max {:.2}, {} runs)",
        ms(median),
        ms(min.unwrap_or_default()),
        ms(max.unwrap_or_default()),
        times.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

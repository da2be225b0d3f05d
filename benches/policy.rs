//! Policy engine benches: decision latency, routing, compile and load time,
//! and the compiled set's memory, at three scales (see `portcullis_test_kit::synth`).
//!
//! ```text
//! cargo bench --bench policy                       # all scales
//! PORTCULLIS_BENCH_SCALES=small,medium cargo bench --bench policy
//! ```
//!
//! Decision benches cycle through 4096 pre-built requests spread over many
//! deployments, so caches see a realistic spread rather than one hot entry.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use ipnet::IpNet;
use portcullis::endpoint::{ClientIdentity, PrivateEndpoint, VpceId};
use portcullis::policy::{
    Counterparts, PolicyOptions, PolicySet, RequestFacts, Rules, Snapshot, Target, decide,
    parse_snapshot, parse_snapshot_over,
};
use portcullis::route::{RouteInput, Router};
use portcullis_test_kit::synth::{MISS_V4, MISS_V6, Rng, Scale, generate};

/// Counts live heap bytes so the bench can report what the compiled set
/// holds. The only `unsafe` in the repository, and only in this bench
/// binary: `GlobalAlloc` cannot be implemented without it; each method
/// forwards unchanged to `System`.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ZONE: &str = "es.example.com";
const REQUESTS: usize = 4096;

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let scales =
        std::env::var("PORTCULLIS_BENCH_SCALES").unwrap_or_else(|_| "small,medium,large".into());
    for name in scales.split(',').map(str::trim) {
        let Some(scale) = Scale::named(name) else {
            eprintln!("unknown scale {name:?}");
            continue;
        };
        bench_scale(&mut c, name, scale);
    }
    c.final_summary();
}

fn bench_scale(c: &mut Criterion, name: &str, scale: Scale) {
    let snapshot = generate(scale, 1);
    let json = serde_json::to_vec(&snapshot).expect("serialisable");

    // Memory and one-shot timings, reported before the criterion groups.
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let set = PolicySet::compile(&snapshot, PolicyOptions::default());
    let compile_once = t.elapsed();
    let held = LIVE.load(Ordering::Relaxed) - before;
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let reparsed = parse_snapshot(&json).expect("generated snapshots are valid");
    let load_once = t.elapsed();
    let model = LIVE.load(Ordering::Relaxed) - before;
    drop(reparsed);
    let s = set.stats();
    eprintln!(
        "[{name}] {} deployments, {} policies, {} policy sets, {} ip rules ({} ranges), {} endpoint ids; \
         JSON {:.1} MB; parse+validate {:.0} ms (the model holds {:.1} MB); compile {:.0} ms; compiled set holds {:.1} MB",
        s.deployments,
        s.policies,
        s.policy_sets,
        s.ip_rules,
        s.ip_ranges,
        s.endpoint_ids,
        json.len() as f64 / 1e6,
        load_once.as_secs_f64() * 1e3,
        model as f64 / (1024.0 * 1024.0),
        compile_once.as_secs_f64() * 1e3,
        held as f64 / (1024.0 * 1024.0),
    );

    let router = Router::new(&[ZONE]);
    let mut g = c.benchmark_group(format!("decide/{name}"));
    g.throughput(Throughput::Elements(1));
    let cases = cases(&snapshot, &set, &router);
    for (case, requests) in &cases {
        if requests.is_empty() {
            continue;
        }
        let mut i = 0usize;
        g.bench_function(*case, |b| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                black_box(decide(black_box(&set), black_box(&requests[i])))
            })
        });
    }
    // The same decisions with one request repeated: the evaluation's own
    // cost once its data is in L1/L2, without the cache misses of the
    // spread-out cases above.
    for (case, requests) in &cases {
        let Some(first) = requests.first() else {
            continue;
        };
        g.bench_function(format!("hot/{case}"), |b| {
            b.iter(|| black_box(decide(black_box(&set), black_box(first))))
        });
    }
    // Host routing plus decision: the whole per-request policy cost.
    let hosts = hosts(&snapshot);
    let mut i = 0usize;
    g.bench_function("route+decide", |b| {
        b.iter(|| {
            i = (i + 1) % hosts.len();
            let input = RouteInput {
                host: Some(&hosts[i]),
                ..RouteInput::default()
            };
            let target = router.route(&set, black_box(&input)).expect("routable");
            let facts = RequestFacts {
                target,
                client: ClientIdentity {
                    source: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                    endpoint: None,
                },
            };
            black_box(decide(&set, &facts))
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("build/{name}"));
    let slow = scale.ip_rules >= 100_000;
    if slow {
        g.sample_size(10).measurement_time(Duration::from_secs(20));
    }
    g.bench_function("compile", |b| {
        b.iter(|| PolicySet::compile(black_box(&snapshot), PolicyOptions::default()))
    });
    g.bench_function("parse+validate", |b| {
        b.iter(|| parse_snapshot(black_box(&json)).map(|s| s.version))
    });
    // A document applied as the proxy applies one: read over the set in
    // force (a `PUT /snapshot` or file reload) or over none (a first
    // load), each policy compiled as it is read, then compiled. Over the
    // set, with nothing changed every entry is kept; a document of another
    // seed changes nearly all of them. `parse+compile/whole-model` is the
    // model-first path (`portcullis check`, `PolicySet::compile`). The set
    // each builds is dropped outside the timing: the figure is parse,
    // validate and compile, and the proxy frees a set it no longer needs
    // on a background thread, off the load's clock.
    let options = PolicyOptions::default();
    let other = serde_json::to_vec(&generate(scale, 2)).expect("serialisable");
    for (case, document) in [("same", &json), ("other", &other)] {
        g.bench_function(format!("parse+compile-over-previous/{case}"), |b| {
            b.iter_with_large_drop(|| {
                let over = Counterparts::new(&set, options).expect("the same options");
                let read = parse_snapshot_over(black_box(document), over)
                    .expect("generated snapshots are valid");
                read.compile(options, Some(&set))
            })
        });
    }
    g.bench_function("parse+compile/first-load", |b| {
        b.iter_with_large_drop(|| {
            let read = parse_snapshot_over(black_box(&json), Counterparts::none())
                .expect("generated snapshots are valid");
            read.compile(options, None)
        })
    });
    g.bench_function("parse+compile/whole-model", |b| {
        b.iter_with_large_drop(|| {
            let snapshot = parse_snapshot(black_box(&json)).expect("generated snapshots are valid");
            PolicySet::compile(&snapshot, options)
        })
    });
    g.finish();
}

type Case = (&'static str, Vec<RequestFacts>);

/// Requests that hit and miss, public v4 / v6 and private.
fn cases(snapshot: &Snapshot, set: &PolicySet, router: &Router) -> Vec<Case> {
    let mut rng = Rng::new(7);
    let mut out: Vec<Case> = [
        "public-v4-hit",
        "public-v4-miss",
        "public-v6-hit",
        "public-v6-miss",
        "private-hit",
        "private-miss",
    ]
    .into_iter()
    .map(|n| (n, Vec::new()))
    .collect();
    let by_id: std::collections::HashMap<&str, usize> = snapshot
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    for _ in 0..REQUESTS * 64 {
        if out.iter().all(|(_, v)| v.len() >= REQUESTS) {
            break;
        }
        let d = pick(&mut rng, &snapshot.deployments);
        let Some((deployment, product)) = router.host_target(set, &format!("{}.{ZONE}", d.id))
        else {
            continue;
        };
        let target = Target {
            deployment,
            product,
        };
        let mut push = |case: usize, source: IpAddr, endpoint: Option<PrivateEndpoint>| {
            if out[case].1.len() < REQUESTS {
                out[case].1.push(RequestFacts {
                    target,
                    client: ClientIdentity { source, endpoint },
                });
            }
        };
        for p in d.policies.iter().filter_map(|id| by_id.get(id.as_str())) {
            match &snapshot.policies[*p].rules {
                Rules::Ip(rules) if !rules.is_empty() => {
                    let rule = pick(&mut rng, rules);
                    match rule.source {
                        IpNet::V4(n) => {
                            let host = u32::from(n.network())
                                | (rng.next_u64() as u32 & !u32::from(n.netmask()));
                            push(0, IpAddr::V4(Ipv4Addr::from(host)), None);
                            push(1, IpAddr::V4(MISS_V4.network()), None);
                        }
                        IpNet::V6(n) => {
                            let low = u128::from(rng.next_u64()) & !u128::from(n.netmask());
                            push(
                                2,
                                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | low)),
                                None,
                            );
                            push(3, IpAddr::V6(MISS_V6.network()), None);
                        }
                    }
                }
                rules => {
                    if let Some([hit, miss]) = private_endpoints(rules, &mut rng) {
                        // Private endpoints connect from private addresses.
                        let src = IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7));
                        // A listed id that does not parse is no hit.
                        if hit.is_some() {
                            push(4, src, hit);
                        }
                        push(5, src, miss);
                    }
                }
            }
        }
    }
    out
}

/// One of `items`, at random.
fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// For a private-endpoint policy with rules, the endpoints of its two
/// cases: one of its rules' (private-hit) and one no generated rule has
/// (private-miss). `None` for IP policies and empty ones.
fn private_endpoints(rules: &Rules, rng: &mut Rng) -> Option<[Option<PrivateEndpoint>; 2]> {
    let aws = |id: &str| {
        VpceId::parse(id.as_bytes())
            .ok()
            .map(PrivateEndpoint::AwsVpce)
    };
    match rules {
        Rules::Vpce(rules) if !rules.is_empty() => {
            Some([aws(&pick(rng, rules).source), aws("vpce-00000000000000000")])
        }
        Rules::Azure(rules) if !rules.is_empty() => {
            Some([pick(rng, rules).link_id, 7].map(|id| Some(PrivateEndpoint::AzureLinkId(id))))
        }
        Rules::Gcp(rules) if !rules.is_empty() => Some(
            [pick(rng, rules).source, 7].map(|id| Some(PrivateEndpoint::GcpPscConnectionId(id))),
        ),
        _ => None,
    }
}

fn hosts(snapshot: &Snapshot) -> Vec<String> {
    let mut rng = Rng::new(11);
    (0..REQUESTS)
        .map(|_| {
            let d = pick(&mut rng, &snapshot.deployments);
            match &d.alias {
                Some(alias) => format!("{alias}.es.{ZONE}:9243"),
                None => format!("{}.{ZONE}", d.id),
            }
        })
        .collect()
}

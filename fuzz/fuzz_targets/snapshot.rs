//! Fuzz target: the snapshot loader and everything downstream of it.
//!
//! The entry point is `reload::prepare`, the parse → validate → compile
//! step every reload source goes through, so what is fuzzed is what a
//! snapshot file, URL or `PUT /snapshot` body reaches. It must never panic.
//! For accepted inputs `parse_snapshot` is called as well, only to get the
//! typed model the checks below read (prepare keeps just the compiled set).
//!
//! When the input is refused, the refusal lists at least one error (SPEC §3:
//! "with every error listed"). When it is accepted:
//!
//! - serialising the [`Snapshot`] with serde_json and validating the result
//!   again gives an equal snapshot (the model's documented round trip);
//! - the compiled set and its stats describe the snapshot (version, counts),
//!   in both `unassociated_private_traffic` modes; every deployment is
//!   found by its id and alias and keeps its enforcement and, per product,
//!   its backends in order;
//! - `decide` is called for every deployment (at most [`MAX_DEPLOYMENTS`])
//!   with request facts taken from the snapshot's own rules (each rule's
//!   first and last address and the addresses just outside, each endpoint
//!   id, upper-cased vpce ids) and from the input bytes, and its answer must
//!   equal a naive reading of SPEC §1 over the model (first associated
//!   policy, first rule; IPv4-mapped sources as IPv4).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use portcullis::endpoint::{ClientIdentity, PrivateEndpoint, VpceId};
use portcullis::policy::{
    PolicyOptions, Product, RequestFacts, Rules, Snapshot, Stats, Target,
    UnassociatedPrivateTraffic, decide, parse_snapshot,
};
use portcullis::reload::prepare;
use portcullis_test_kit::oracle::{outcome, reference};

const MAX_DEPLOYMENTS: usize = 64;
const MAX_CLIENTS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let options = |mode| PolicyOptions {
        unassociated_private_traffic: mode,
    };
    // Most inputs are refused: keep that path to a single parse.
    let allow = match prepare(data, "fuzz", options(UnassociatedPrivateTraffic::Allow)) {
        Ok(loaded) => loaded,
        Err(refused) => {
            assert!(!refused.0.is_empty(), "snapshot refused without an error");
            return;
        }
    };
    let snapshot = match parse_snapshot(data) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("prepare accepted what parse_snapshot refused: {e}"),
    };

    let json = serde_json::to_vec(&snapshot).expect("a Snapshot always serialises");
    match parse_snapshot(&json) {
        Ok(again) => assert_eq!(again, snapshot, "round trip changed the snapshot"),
        Err(e) => panic!(
            "serialised snapshot refused: {e}\n{}",
            String::from_utf8_lossy(&json)
        ),
    }

    // The mode only changes decisions, never whether a snapshot loads.
    let deny = match prepare(data, "fuzz", options(UnassociatedPrivateTraffic::Deny)) {
        Ok(loaded) => loaded,
        Err(e) => panic!("accepted with one unassociated_private_traffic mode only: {e}"),
    };

    let clients = clients(&snapshot, data);
    for (mode, loaded) in [
        (UnassociatedPrivateTraffic::Allow, allow),
        (UnassociatedPrivateTraffic::Deny, deny),
    ] {
        let set = &loaded.set;
        assert_eq!(set.version(), snapshot.version);
        assert_eq!(set.options(), options(mode));
        assert_eq!(loaded.meta.version, snapshot.version);
        assert_eq!(loaded.meta.bytes, data.len());
        check_stats(&snapshot, &loaded.meta.stats);
        for (d, dep) in snapshot
            .deployments
            .iter()
            .enumerate()
            .take(MAX_DEPLOYMENTS)
        {
            let deployment = set
                .find_deployment(&dep.id, false)
                .expect("every deployment is found by its id");
            if let Some(alias) = &dep.alias {
                assert_eq!(set.find_deployment(alias, true), Some(deployment));
                assert_eq!(set.find_deployment(alias, false), None);
            }
            let compiled = set.deployment(deployment).expect("index is valid");
            assert_eq!(*compiled.id, *dep.id);
            assert_eq!(compiled.alias.as_deref(), dep.alias.as_deref());
            assert_eq!(compiled.enforcement, dep.enforcement);
            // Routing reads the hot bitmap, forwarding the cold backends:
            // both must say the same as the snapshot.
            for product in Product::ALL {
                let want = dep.resources.get(&product).map(|r| r.backends.as_slice());
                assert_eq!(set.has_resource(deployment, product), want.is_some());
                assert_eq!(compiled.backends(product).map(|b| b.nodes()), want);
            }
            // One product is enough for decide: it only carries it through.
            let product = *dep.resources.keys().next().expect("validated: non-empty");
            let target = Target {
                deployment,
                product,
            };
            for client in &clients {
                let got = decide(
                    set,
                    &RequestFacts {
                        target,
                        client: *client,
                    },
                );
                assert_eq!(got.target, Some(target));
                let got = outcome(&got);
                let want = reference(&snapshot, mode, d, client);
                assert_eq!(
                    got, want,
                    "deployment {d} ({}), {client:?}, {mode:?}",
                    dep.id
                );
            }
        }
    }
});

/// What `GET /snapshot` reports must add up. Exact where the count is
/// direct; bounded where compilation merges (shared policy sets, merged
/// ranges, endpoint ids listed by several rules).
fn check_stats(s: &Snapshot, stats: &Stats) {
    assert_eq!(stats.deployments, s.deployments.len(), "stats.deployments");
    assert_eq!(stats.policies, s.policies.len(), "stats.policies");
    let rules_of = |pick: fn(&Rules) -> Option<usize>| -> usize {
        s.policies.iter().filter_map(|p| pick(&p.rules)).sum()
    };
    let ip_rules = rules_of(|r| matches!(r, Rules::Ip(_)).then(|| r.len()));
    let endpoint_rules = rules_of(|r| (!matches!(r, Rules::Ip(_))).then(|| r.len()));
    assert_eq!(stats.ip_rules, ip_rules, "stats.ip_rules");
    assert!(stats.endpoint_ids <= endpoint_rules, "stats.endpoint_ids");
    assert_eq!(
        stats.endpoint_ids == 0,
        endpoint_rules == 0,
        "stats.endpoint_ids zero iff no endpoint rules"
    );
    // Each deployment uses one set; deployments with the same policies share.
    assert!(
        stats.policy_sets <= s.deployments.len(),
        "stats.policy_sets"
    );
    assert_eq!(stats.policy_sets == 0, s.deployments.is_empty());
}

/// Clients worth asking about: the edges of every rule, every endpoint id,
/// plus a few addresses and ids made from the input bytes.
fn clients(s: &Snapshot, data: &[u8]) -> Vec<ClientIdentity> {
    let public = |source| ClientIdentity {
        source,
        endpoint: None,
    };
    let private = |endpoint| ClientIdentity {
        source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        endpoint: Some(endpoint),
    };
    let mut out = vec![
        public(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        public(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        public(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())),
    ];
    let tail = |n: usize| -> [u8; 16] {
        let mut b = [0u8; 16];
        let src = &data[data.len().saturating_sub(n)..];
        b[..src.len()].copy_from_slice(src);
        b
    };
    let t = tail(16);
    out.push(public(IpAddr::V6(Ipv6Addr::from(t))));
    out.push(public(IpAddr::V4(Ipv4Addr::new(t[0], t[1], t[2], t[3]))));
    out.push(private(PrivateEndpoint::AzureLinkId(u32::from_le_bytes([
        t[0], t[1], t[2], t[3],
    ]))));
    out.push(private(PrivateEndpoint::GcpPscConnectionId(
        u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]),
    )));

    'policies: for p in &s.policies {
        match &p.rules {
            Rules::Ip(rules) => {
                for r in rules {
                    let (first, last) = (r.source.network(), r.source.broadcast());
                    for a in [first, last, step(first, -1), step(last, 1)] {
                        out.push(public(a));
                        if let IpAddr::V4(v4) = a {
                            out.push(public(IpAddr::V6(v4.to_ipv6_mapped())));
                        }
                    }
                    if out.len() >= MAX_CLIENTS {
                        break 'policies;
                    }
                }
            }
            Rules::Vpce(rules) => {
                for r in rules {
                    for raw in [r.source.clone(), r.source.to_ascii_uppercase()] {
                        if let Ok(id) = VpceId::parse(raw.as_bytes()) {
                            out.push(private(PrivateEndpoint::AwsVpce(id)));
                        }
                    }
                }
            }
            Rules::Azure(rules) => {
                for r in rules {
                    out.push(private(PrivateEndpoint::AzureLinkId(r.link_id)));
                }
            }
            Rules::Gcp(rules) => {
                for r in rules {
                    out.push(private(PrivateEndpoint::GcpPscConnectionId(r.source)));
                }
            }
        }
        if out.len() >= MAX_CLIENTS {
            break;
        }
    }
    out.truncate(MAX_CLIENTS);
    out
}

/// `a + delta`, wrapping within its family.
fn step(a: IpAddr, delta: i8) -> IpAddr {
    match a {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(
            u32::from(v4).wrapping_add_signed(i32::from(delta)),
        )),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6).wrapping_add_signed(i128::from(delta)),
        )),
    }
}

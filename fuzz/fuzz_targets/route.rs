//! Fuzz target: request routing, `Router::route`, against a small fixed
//! snapshot whose names collide with product labels and zone labels.
//!
//! Input: the first byte's low bits say which of host / X-Found-Cluster /
//! SNI are present (bits 0-2) and whether to use the any-zone router
//! (bit 3); the rest is those strings separated by `\n` (invalid UTF-8 is
//! cut at the first bad byte). Seeds stay readable: `7abc.es.example.com\n…`.
//!
//! Checks besides "never panics", each a documented promise of
//! `route`: a routed target has the resource; matching ignores ASCII case,
//! a port and one trailing dot; the zone list's order, case and outer dots
//! do not matter.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::policy::{PolicyOptions, PolicySet, parse_snapshot};
use portcullis::route::{RouteInput, Router};

const SNAPSHOT: &str = r#"{
  "version": 7,
  "deployments": [
    { "id": "abc123", "alias": "my-alias", "region": "aws-us-east-1",
      "resources": { "es": { "backends": ["127.0.0.1:9200"] },
                     "kb": { "backends": ["127.0.0.1:5601"] } } },
    { "id": "kb", "alias": "example", "region": "aws-us-east-1",
      "resources": { "es": { "backends": ["127.0.0.1:9201"] },
                     "apm": { "backends": ["127.0.0.1:8200"] } } },
    { "id": "0a1b2c3d4e5f40718293a4b5c6d7e8f9", "region": "gcp-us-central1",
      "resources": { "es": { "backends": ["[::1]:9200"] },
                     "fleet": { "backends": ["[::1]:8220"] },
                     "ent": { "backends": ["[::1]:3002"] } } },
    { "id": "found", "alias": "es", "region": "azure-eastus2",
      "resources": { "kb": { "backends": ["127.0.0.1:5602"] } } }
  ],
  "policies": []
}"#;

const ZONES: [&str; 4] = [
    "es.example.com",
    "example.com",
    "eu-west-1.aws.found.io",
    "io",
];
/// The same zones, reordered, upper-cased and with outer dots.
const ZONES_MESSY: [&str; 5] = [
    ".IO",
    "Example.Com.",
    "eu-west-1.AWS.found.io",
    ".es.example.com",
    "",
];

struct Fixture {
    set: PolicySet,
    zoned: Router,
    messy: Router,
    any: Router,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let snapshot = parse_snapshot(SNAPSHOT.as_bytes()).expect("fixture snapshot is valid");
        Fixture {
            set: PolicySet::compile(&snapshot, PolicyOptions::default()),
            zoned: Router::new(&ZONES),
            messy: Router::new(&ZONES_MESSY),
            any: Router::any_zone(),
        }
    })
}

fn utf8_prefix(b: &[u8]) -> &str {
    match std::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.split(|&b| b == b'\n').map(utf8_prefix);
    let mut take = |bit: u8| {
        let v = fields.next().unwrap_or_default();
        (flags & bit != 0).then_some(v)
    };
    let input = RouteInput {
        host: take(1),
        found_cluster: take(2),
        sni: take(4),
    };
    let f = fixture();
    let any_zone = flags & 8 != 0;
    let router = if any_zone { &f.any } else { &f.zoned };

    let got = router.route(&f.set, &input);
    if let Ok(t) = got {
        assert!(f.set.has_resource(t.deployment, t.product));
        assert!(f.set.deployment(t.deployment).is_some());
    }
    if !any_zone {
        assert_eq!(
            f.messy.route(&f.set, &input),
            got,
            "zone list normalisation"
        );
    }

    let upper = |s: Option<&str>| s.map(str::to_ascii_uppercase);
    let (h, c, s) = (
        upper(input.host),
        upper(input.found_cluster),
        upper(input.sni),
    );
    let shouted = RouteInput {
        host: h.as_deref(),
        found_cluster: c.as_deref(),
        sni: s.as_deref(),
    };
    assert_eq!(
        router.route(&f.set, &shouted),
        got,
        "ASCII case changed the route"
    );

    // A port and one trailing dot are ignored, on the host and on the SNI.
    let plain = |s: Option<&str>| s.is_some_and(|s| !s.contains(':') && !s.ends_with('.'));
    if plain(input.host) || plain(input.sni) {
        for suffix in [".", ":9243", ".:443"] {
            let grow = |s: Option<&str>| {
                s.map(|s| {
                    if plain(Some(s)) {
                        format!("{s}{suffix}")
                    } else {
                        s.to_owned()
                    }
                })
            };
            let (h, sni) = (grow(input.host), grow(input.sni));
            let decorated = RouteInput {
                host: h.as_deref(),
                found_cluster: input.found_cluster,
                sni: sni.as_deref(),
            };
            assert_eq!(
                router.route(&f.set, &decorated),
                got,
                "suffix {suffix:?} changed the route of {input:?}"
            );
        }
    }
});

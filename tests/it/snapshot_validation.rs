//! Snapshot validation (SPEC §3): every invalid snapshot is refused whole,
//! with every error listed once, at its JSON path, in document order.
//!
//! Each case starts from a small valid snapshot ([`base`]), mutates it, and
//! asserts the exact list of error paths and a distinctive part of each
//! message. Failing cases are collected and reported together, by name.
//! Most cases are data, a value set at or a field removed from the very
//! path whose error they expect ([`field_cases`], [`one_error_each`],
//! [`missing_each`]); [`run_cases`] takes the rest as closures.

use std::sync::OnceLock;

use portcullis::policy::{
    Counterparts, Enforcement, PolicyOptions, PolicySet, Product, Rules, Snapshot, SnapshotError,
    SnapshotErrors, parse_snapshot, parse_snapshot_over,
};
use serde_json::{Value, json};

/// A small valid snapshot: one deployment per provider, one policy of each
/// type, every deployment associated with a policy of its region.
fn base() -> Value {
    json!({
        "version": 7,
        "policies": [
            { "id": "office", "type": "ip", "region": "aws-us-east-1",
              "rules": [ { "source": "203.0.113.0/24", "description": "HQ" } ] },
            { "id": "vpce-pol", "type": "vpce", "region": "aws-us-east-1",
              "rules": [ { "source": "vpce-0a1b2c3d4e5f67890" } ] },
            { "id": "az", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": 16777301, "azure_endpoint_name": "my-pe" } ] },
            { "id": "gcp", "type": "gcp_private_service_connect_endpoint",
              "region": "gcp-us-central1", "rules": [ { "source": "18446744072646845332" } ] }
        ],
        "deployments": [
            { "id": "abc123", "alias": "my-dep", "region": "aws-us-east-1",
              "resources": { "es": { "backends": ["10.0.0.5:9200"] } },
              "policies": ["office", "vpce-pol"] },
            { "id": "def456", "alias": "az-dep", "region": "azure-eastus2",
              "resources": { "es": { "backends": ["10.0.1.5:9200"] } },
              "policies": ["az"] },
            { "id": "ghi789", "region": "gcp-us-central1",
              "resources": { "es": { "backends": ["10.0.2.5:9200"] } },
              "policies": ["gcp"] }
        ]
    })
}

fn parse(v: &Value) -> Result<Snapshot, SnapshotErrors> {
    parse_both(&serde_json::to_vec(v).expect("serialise test JSON"))
}

/// Parses `bytes` whole, again over the set compiled from [`base`] (as a
/// reload reads a document over the set in force: most entries of every
/// case are then kept from that set, their models dropped as read) and
/// over none (as a first load reads it, each policy compiled as read): the
/// verdict and errors must be the same.
fn parse_both(bytes: &[u8]) -> Result<Snapshot, SnapshotErrors> {
    static BASE: OnceLock<PolicySet> = OnceLock::new();
    let options = PolicyOptions::default();
    let set = BASE.get_or_init(|| PolicySet::compile(&parse_ok_whole(&base()), options));
    let whole = parse_snapshot(bytes);
    let over = Counterparts::new(set, options).expect("the same options");
    for (how, read) in [
        ("over a set", parse_snapshot_over(bytes, over)),
        (
            "over none",
            parse_snapshot_over(bytes, Counterparts::none()),
        ),
    ] {
        match (&whole, &read) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) => assert_eq!(a, b, "the same errors read {how}"),
            _ => panic!(
                "read {how}: {:?}, whole: {:?}",
                read.err(),
                whole.as_ref().err()
            ),
        }
    }
    whole
}

fn parse_ok_whole(v: &Value) -> Snapshot {
    parse_snapshot(&serde_json::to_vec(v).expect("serialise test JSON")).expect("a valid base")
}

fn parse_ok(v: &Value) -> Snapshot {
    match parse(v) {
        Ok(s) => s,
        Err(e) => panic!("expected a valid snapshot, got {e}"),
    }
}

fn mutated(mutate: fn(&mut Value)) -> Value {
    let mut v = base();
    mutate(&mut v);
    v
}

/// Compares errors with `(path, message substring)` pairs, exactly and in
/// order. `Err` describes the difference.
fn compare(
    result: Result<Snapshot, SnapshotErrors>,
    expected: &[(&str, &str)],
) -> Result<(), String> {
    let errors = match result {
        Ok(_) => return Err("accepted, expected errors".to_owned()),
        Err(SnapshotErrors(errors)) => errors,
    };
    let render = |errs: &[SnapshotError]| {
        errs.iter()
            .map(|e| format!("\n      {e:?}"))
            .collect::<String>()
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
    if paths != want {
        return Err(format!(
            "paths {paths:?}, expected {want:?}; errors:{}",
            render(&errors)
        ));
    }
    for (e, (_, needle)) in errors.iter().zip(expected) {
        if !e.message.contains(needle) {
            return Err(format!(
                "message {:?} at {:?} lacks {needle:?}",
                e.message, e.path
            ));
        }
    }
    Ok(())
}

/// Asserts that `v` is refused with exactly the `expected` errors.
fn assert_refused(v: &Value, expected: &[(&str, &str)]) {
    if let Err(why) = compare(parse(v), expected) {
        panic!("{why}");
    }
}

fn assert_errors(bytes: &[u8], expected: &[(&str, &str)]) {
    if let Err(why) = compare(parse_both(bytes), expected) {
        panic!("{}: {why}", String::from_utf8_lossy(bytes));
    }
}

/// The value at an error path such as `policies[0].rules[1].source`,
/// reached as `v["policies"][0]["rules"][1]["source"]` reaches it: a
/// missing key is added (as null), so a case can set a field [`base`]
/// lacks, and an index past the end of an array panics.
fn at_path<'v>(v: &'v mut Value, path: &str) -> &'v mut Value {
    let mut at = v;
    for part in path.split('.') {
        // A key, then any indexes: `rules[1]` is `["rules"][1]`.
        let mut steps = part.split('[');
        at = &mut at[steps.next().unwrap_or_default()];
        for index in steps {
            let i: usize = index
                .strip_suffix(']')
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("bad index in {path:?}"));
            at = &mut at[i];
        }
    }
    at
}

/// Removes the key at an error path, which must be in [`base`].
fn remove_at(v: &mut Value, path: &str) {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (at_path(v, parent), key),
        None => (v, path),
    };
    let removed = parent.as_object_mut().and_then(|o| o.remove(key));
    assert!(removed.is_some(), "no {path} in base()");
}

/// Runs every case of a table, then fails listing each failed one; `check`
/// returns `Err` naming the case and saying what went wrong.
fn check_each<C>(cases: &[C], check: impl Fn(&C) -> Result<(), String>) {
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

/// Sets the value at error path `path` in [`base`]: it must be refused
/// with exactly one error, at `path`, whose message contains `needle`.
fn one_error_at(path: &str, value: &Value, needle: &str) -> Result<(), String> {
    let mut v = base();
    *at_path(&mut v, path) = value.clone();
    compare(parse(&v), &[(path, needle)])
}

/// Sets the value at `path` in [`base`] to each value in turn, as
/// [`one_error_at`].
fn one_error_each(path: &str, cases: &[(Value, &str)]) {
    check_each(cases, |(value, needle)| {
        one_error_at(path, value, needle).map_err(|why| format!("{path} = {value}: {why}"))
    });
}

/// A named [`one_error_at`] case: name, path, value, message text.
type FieldCase = (&'static str, &'static str, Value, &'static str);

/// Runs a table of named [`one_error_at`] cases, each at its own path.
fn field_cases(cases: &[FieldCase]) {
    check_each(cases, |(name, path, value, needle)| {
        one_error_at(path, value, needle).map_err(|why| format!("{name}: {why}"))
    });
}

/// Removes each field of [`base`] in turn: each must be refused with
/// exactly one error, a missing field, at its path.
fn missing_each(paths: &[&str]) {
    check_each(paths, |path| {
        let mut v = base();
        remove_at(&mut v, path);
        compare(parse(&v), &[(path, "missing field")])
            .map_err(|why| format!("{path} removed: {why}"))
    });
}

/// A case that changes [`base`] in a way the tables above cannot say:
/// name, change, the errors expected.
type Case = (
    &'static str,
    fn(&mut Value),
    &'static [(&'static str, &'static str)],
);

/// Runs a table of [`Case`]s.
fn run_cases(cases: &[Case]) {
    check_each(cases, |(name, mutate, expected)| {
        compare(parse(&mutated(*mutate)), expected).map_err(|why| format!("{name}: {why}"))
    });
}

#[test]
fn base_snapshot_is_valid() {
    let s = parse_ok(&base());
    assert_eq!(s.version, 7);
    assert_eq!(s.policies.len(), 4);
    assert_eq!(s.deployments.len(), 3);
    let d = &s.deployments[0];
    assert_eq!(d.id, "abc123");
    assert_eq!(d.alias.as_deref(), Some("my-dep"));
    assert_eq!(
        d.enforcement,
        Enforcement::Enforce,
        "enforcement defaults to enforce"
    );
    assert_eq!(d.policies, ["office", "vpce-pol"]);
    assert_eq!(s.deployments[2].alias, None, "alias is optional");
}

// ---------------------------------------------------------------------------
// The document

#[test]
fn malformed_json_reports_line_and_column() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"{\n  \"version\": 1,\n  \"policies\": [\n}",
            "line 4 column 1",
        ),
        (b"{\"version\": 1,}", "line 1 column 15"),
        (b"", "line 1 column 0"),
        (b"{\"version\": 1} trailing", "line 1 column 16"),
    ];
    for (bytes, position) in cases {
        let SnapshotErrors(errors) = parse_snapshot(bytes).expect_err("malformed JSON accepted");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "", "whole-document error has no path");
        assert!(
            errors[0].message.starts_with("invalid JSON: "),
            "{:?}",
            errors[0].message
        );
        assert!(
            errors[0].message.contains(position),
            "{:?} lacks {position:?}",
            errors[0].message
        );
    }
}

/// A key named twice in one object is refused at its path, like any
/// other error, and the read goes on: every other error is still listed.
/// Either value could be the one meant (`"policies": ["office"],
/// "policies": []` opens or closes a deployment), so neither is taken.
#[test]
fn duplicate_keys_are_refused_at_their_paths_among_the_other_errors() {
    let doc = br#"{"version": 7, "version": 8,
      "policies": [
        {"id": "office", "type": "ip", "region": "aws-us-east-1",
         "rules": [{"source": "203.0.113.0/24", "source": "0.0.0.0/0"}]},
        {"id": "p2", "type": "ip", "region": "aws-us-east-1", "rules": [], "x": 1, "x": 2}
      ],
      "deployments": [
        {"id": "abc123", "region": "aws-us-east-1",
         "resources": {"es": {"backends": ["10.0.0.5:9200"]}, "es": {"backends": ["10.0.0.6:9200"]}},
         "policies": ["office"], "policies": []},
        {"id": "Bad", "region": "aws-us-east-1",
         "resources": {"es": {"backends": ["10.0.0.7:9200"]}}, "policies": []}
      ]}"#;
    assert_errors(
        doc,
        &[
            ("version", "duplicate key"),
            ("policies[0].rules[0].source", "duplicate key"),
            ("policies[1].x", "unknown field"),
            ("policies[1].x", "duplicate key"),
            ("deployments[0].policies", "duplicate key"),
            ("deployments[0].resources.es", "duplicate key"),
            ("deployments[1].id", "DNS label"),
        ],
    );
}

#[test]
fn root_must_be_an_object() {
    assert_errors(b"[]", &[("", "expected an object, found an array")]);
    assert_errors(
        b"\"snapshot\"",
        &[("", "expected an object, found a string")],
    );
    assert_errors(b"null", &[("", "expected an object, found null")]);
    assert_errors(b"42", &[("", "expected an object, found a number")]);
}

#[test]
fn top_level_fields() {
    field_cases(&[(
        "unknown top-level field",
        "extra",
        json!(1),
        "unknown field (expected one of: version, deployments, policies)",
    )]);
    missing_each(&["deployments", "version"]);
    run_cases(&[(
        "typo in \"policies\": no policy exists, so every reference is unknown",
        |v| {
            let p = v["policies"].take();
            v.as_object_mut().unwrap().remove("policies");
            v["polices"] = p;
        },
        &[
            ("polices", "unknown field"),
            ("policies", "missing field"),
            ("deployments[0].policies[0]", "unknown policy \"office\""),
            ("deployments[0].policies[1]", "unknown policy \"vpce-pol\""),
            ("deployments[1].policies[0]", "unknown policy \"az\""),
            ("deployments[2].policies[0]", "unknown policy \"gcp\""),
        ],
    )]);
}

#[test]
fn version_must_be_a_positive_integer() {
    const POSITIVE: &str = "must be a positive integer";
    one_error_each(
        "version",
        &[
            (json!(0), POSITIVE),
            (json!(-1), POSITIVE),
            (json!(1.5), POSITIVE),
            (json!("1"), POSITIVE),
            (json!(true), POSITIVE),
            (json!(18446744073709551616.0), POSITIVE),
            (json!(null), "missing field"),
        ],
    );
    one_error_each(
        "deployments",
        &[(json!({}), "expected an array, found an object")],
    );
}

#[test]
fn largest_version_and_empty_lists_are_valid() {
    let s = parse_ok(&json!({ "version": u64::MAX, "deployments": [], "policies": [] }));
    assert_eq!(s.version, u64::MAX);
    assert!(s.deployments.is_empty() && s.policies.is_empty());
}

// ---------------------------------------------------------------------------
// Policies

#[test]
fn policy_fields() {
    field_cases(&[
        // A policy whose type is unknown still exists: deployments[0]
        // referencing "office" gets no "unknown policy" error.
        (
            "unknown policy type",
            "policies[0].type",
            json!("ipv4"),
            "unknown policy type \"ipv4\" (expected ip, vpce, azure_private_endpoint or gcp_private_service_connect_endpoint)",
        ),
        (
            "type in the wrong case",
            "policies[1].type",
            json!("VPCE"),
            "unknown policy type \"VPCE\"",
        ),
        (
            "unknown policy field",
            "policies[0].enabled",
            json!(true),
            "unknown field (expected one of: id, type, region, rules, include_by_default, name, description)",
        ),
        (
            "region not a region",
            "policies[0].region",
            json!("us-east-1"),
            "\"us-east-1\" is not a region (expected aws-*, azure-* or gcp-*, lowercase)",
        ),
        (
            "region uppercase",
            "policies[0].region",
            json!("AWS-US-EAST-1"),
            "is not a region",
        ),
        (
            "include_by_default not a boolean",
            "policies[0].include_by_default",
            json!("no"),
            "expected a boolean, found a string",
        ),
        (
            "name not a string",
            "policies[0].name",
            json!(["x"]),
            "expected a string, found an array",
        ),
        (
            "rules not an array",
            "policies[0].rules",
            json!({}),
            "expected an array, found an object",
        ),
        (
            "rule not an object",
            "policies[0].rules[0]",
            json!("10.0.0.0/8"),
            "expected an object, found a string",
        ),
    ]);
    missing_each(&["policies[0].type", "policies[0].rules"]);
    run_cases(&[
        (
            "id with whitespace",
            |v| v["policies"][2]["id"] = json!("my az"),
            &[
                (
                    "policies[2].id",
                    "must be 1-256 characters without whitespace",
                ),
                ("deployments[1].policies[0]", "unknown policy \"az\""),
            ],
        ),
        (
            "id not a string",
            |v| v["policies"][3]["id"] = json!(7),
            &[
                ("policies[3].id", "expected a string, found a number"),
                ("deployments[2].policies[0]", "unknown policy \"gcp\""),
            ],
        ),
        (
            "duplicate policy id",
            |v| {
                let dup =
                    json!({ "id": "office", "type": "ip", "region": "aws-us-east-1", "rules": [] });
                v["policies"].as_array_mut().unwrap().push(dup);
            },
            &[(
                "policies[4].id",
                "duplicate policy id \"office\" (first used by policies[0])",
            )],
        ),
        (
            "provider mismatch is reported with the association's region mismatch",
            |v| v["policies"][1]["region"] = json!("azure-eastus2"),
            &[
                (
                    "policies[1].region",
                    "vpce policies belong in aws-* regions",
                ),
                (
                    "deployments[0].policies[1]",
                    "policy \"vpce-pol\" is in region \"azure-eastus2\" but the deployment is in \"aws-us-east-1\"",
                ),
            ],
        ),
    ]);

    // Provider mismatch: a private-endpoint policy in another provider's
    // region. Its deployment stops listing it, so that the region is the
    // only error. Each row: the policy's region and where it is set, the
    // deployment's remaining policies and where they are set, the message.
    let moved = [
        (
            "policies[1].region",
            "azure-eastus2",
            "deployments[0].policies",
            json!(["office"]),
            "vpce policies belong in aws-* regions, not \"azure-eastus2\"",
        ),
        (
            "policies[2].region",
            "gcp-us-central1",
            "deployments[1].policies",
            json!([]),
            "azure_private_endpoint policies belong in azure-* regions, not \"gcp-us-central1\"",
        ),
        (
            "policies[3].region",
            "aws-us-east-1",
            "deployments[2].policies",
            json!([]),
            "gcp_private_service_connect_endpoint policies belong in gcp-* regions, not \"aws-us-east-1\"",
        ),
    ];
    check_each(&moved, |(at, region, listing, listed, needle)| {
        let mut v = base();
        *at_path(&mut v, at) = json!(region);
        *at_path(&mut v, listing) = listed.clone();
        compare(parse(&v), &[(at, needle)])
            .map_err(|why| format!("provider mismatch, {at} = {region:?}: {why}"))
    });
}

#[test]
fn ip_policies_belong_in_any_provider() {
    let mut v = base();
    v["policies"][0]["region"] = json!("gcp-us-central1");
    v["deployments"][0]["policies"] = json!(["vpce-pol"]);
    v["deployments"][2]["policies"] = json!(["gcp", "office"]);
    let s = parse_ok(&v);
    assert_eq!(s.deployments[2].policies, ["gcp", "office"]);
}

#[test]
fn ip_rule_sources() {
    one_error_each(
        "policies[0].rules[0].source",
        &[
            (
                json!("10.0.0.0/33"),
                "\"10.0.0.0/33\": prefix length \"/33\" is out of range (0-32)",
            ),
            (
                json!("2001:db8::/129"),
                "\"2001:db8::/129\": prefix length \"/129\" is out of range (0-128)",
            ),
            (json!("10.0.0.0/256"), "out of range (0-32)"),
            (json!("garbage"), "\"garbage\" is not an IP address or CIDR"),
            (json!(""), "\"\" is not an IP address or CIDR"),
            (
                json!("garbage/8"),
                "\"garbage/8\" is not a CIDR: \"garbage\" is not an IP address",
            ),
            (
                json!("10.0.0.1/8"),
                "\"10.0.0.1/8\" has host bits set; write the network \"10.0.0.0/8\"",
            ),
            (
                json!("2001:db8::1/32"),
                "write the network \"2001:db8::/32\"",
            ),
            (json!("1.2.3.4/ 8"), "\"1.2.3.4/ 8\": prefix length"),
            (
                json!("10.0.0.0/+8"),
                "prefix length \"/+8\" is not a number",
            ),
            (json!("10.0.0.0/"), "prefix length \"/\" is not a number"),
            (json!("10.0.0.0/8/8"), "prefix length \"/8/8\""),
            (json!(" 10.0.0.0/8"), "is not a CIDR"),
            (json!("10.0.0.256"), "is not an IP address or CIDR"),
            (json!(167772160), "expected a string, found a number"),
            (json!(null), "missing field"),
        ],
    );
    missing_each(&["policies[0].rules[0].source"]);
    field_cases(&[
        (
            "description not a string",
            "policies[0].rules[0].description",
            json!(5),
            "expected a string, found a number",
        ),
        (
            "unknown field in a rule",
            "policies[0].rules[0].comment",
            json!("x"),
            "unknown field (expected one of: source, description)",
        ),
    ]);
    run_cases(&[
        (
            "misspelt source",
            |v| v["policies"][0]["rules"][0] = json!({ "sourc": "10.0.0.0/8" }),
            &[
                ("policies[0].rules[0].sourc", "unknown field"),
                ("policies[0].rules[0].source", "missing field"),
            ],
        ),
        (
            "every bad rule of a policy is reported",
            |v| {
                v["policies"][0]["rules"] = json!([
                    { "source": "10.0.0.0/33" },
                    { "source": "192.0.2.0/24" },
                    { "source": "10.0.0.1/8" },
                ]);
            },
            &[
                ("policies[0].rules[0].source", "out of range"),
                ("policies[0].rules[2].source", "host bits set"),
            ],
        ),
    ]);
}

fn ip_sources(s: &Snapshot, policy: usize) -> Vec<String> {
    match &s.policies[policy].rules {
        Rules::Ip(rules) => rules.iter().map(|r| r.source.to_string()).collect(),
        other => panic!("not an ip policy: {other:?}"),
    }
}

#[test]
fn ip_sources_are_canonicalised() {
    let mut v = base();
    v["policies"][0]["rules"] = json!([
        { "source": "::ffff:10.0.0.0/104" },
        { "source": "198.51.100.7" },
        { "source": "2001:db8::1" },
        { "source": "::ffff:203.0.113.7" },
        { "source": "2001:DB8:AB::/48" },
        { "source": "0.0.0.0/0" },
        { "source": "::/0" },
    ]);
    let s = parse_ok(&v);
    assert_eq!(
        ip_sources(&s, 0),
        [
            "10.0.0.0/8",
            "198.51.100.7/32",
            "2001:db8::1/128",
            "203.0.113.7/32",
            "2001:db8:ab::/48",
            "0.0.0.0/0",
            "::/0",
        ]
    );
    match &s.policies[0].rules {
        Rules::Ip(rules) => assert!(
            rules[0].source.addr().is_ipv4(),
            "mapped network stored as IPv4"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ip_policy_with_zero_rules_is_valid_and_filters() {
    let mut v = base();
    v["policies"][0]["rules"] = json!([]);
    let s = parse_ok(&v);
    assert_eq!(s.policies[0].rules, Rules::Ip(vec![]));
    assert!(
        s.policies[0].rules.filters(),
        "an ip policy filters even with no rules"
    );
}

#[test]
fn record_only_private_policies_are_valid() {
    let mut v = base();
    for p in 1..=3 {
        v["policies"][p]["rules"] = json!([]);
    }
    let s = parse_ok(&v);
    for p in &s.policies[1..] {
        assert!(p.rules.is_empty(), "{p:?}");
        assert!(!p.rules.filters(), "{} has no rules: record only", p.id);
    }
    assert_eq!(s.deployments[1].policies, ["az"]);
}

#[test]
fn vpce_rule_sources() {
    const NOT_VPCE: &str =
        "is not a VPC endpoint id (expected vpce- followed by letters, digits or '-'";
    one_error_each(
        "policies[1].rules[0].source",
        &[
            (json!("vpc-123"), "\"vpc-123\" is not a VPC endpoint id"),
            (json!("vpce-"), "\"vpce-\" is not a VPC endpoint id"),
            (json!("vpce-a b"), "\"vpce-a b\" is not a VPC endpoint id"),
            (json!("vpce-0a1b\n"), NOT_VPCE),
            (json!(""), NOT_VPCE),
            (json!("vpcé-0a1b"), NOT_VPCE),
            (
                json!(format!("vpce-{}", "a".repeat(59))),
                "at most 63 characters",
            ),
            (json!(12), "expected a string, found a number"),
        ],
    );
    field_cases(&[(
        "azure field in a vpce rule",
        "policies[1].rules[0].link_id",
        json!(1),
        "unknown field (expected one of: source, description)",
    )]);
}

#[test]
fn vpce_ids_are_lowercased() {
    let mut v = base();
    let longest = format!("vpce-{}", "B".repeat(58));
    v["policies"][1]["rules"] = json!([
        { "source": "VPCE-0A1B2C3D4E5F67890" },
        { "source": "Vpce-AbC" },
        { "source": longest },
    ]);
    let s = parse_ok(&v);
    let Rules::Vpce(rules) = &s.policies[1].rules else {
        panic!("{:?}", s.policies[1].rules)
    };
    let sources: Vec<&str> = rules.iter().map(|r| r.source.as_str()).collect();
    assert_eq!(
        sources,
        [
            "vpce-0a1b2c3d4e5f67890".to_owned(),
            "vpce-abc".to_owned(),
            format!("vpce-{}", "b".repeat(58)),
        ]
    );
}

#[test]
fn azure_rule_link_ids() {
    one_error_each(
        "policies[2].rules[0].link_id",
        &[
            (
                json!(-1),
                "expected a LinkID (an integer from 0 to 4294967295), found -1",
            ),
            (json!(4294967296u64), "found 4294967296"),
            (json!("5"), "found \"5\""),
            (json!(1.5), "found 1.5"),
            (json!(null), "missing field"),
        ],
    );
    one_error_each(
        "policies[2].rules[0].azure_endpoint_name",
        &[(json!(1), "expected a string, found a number")],
    );
    missing_each(&["policies[2].rules[0].link_id"]);
    field_cases(&[(
        "vpce field in an azure rule",
        "policies[2].rules[0].source",
        json!("x"),
        "unknown field (expected one of: link_id, azure_endpoint_name, azure_endpoint_guid, description)",
    )]);
}

#[test]
fn azure_link_id_bounds_are_valid() {
    let mut v = base();
    v["policies"][2]["rules"] = json!([
        { "link_id": 0 },
        { "link_id": 4294967295u64, "azure_endpoint_guid": "8f3e1c2a-0000-4000-8000-000000000001" },
    ]);
    let s = parse_ok(&v);
    let Rules::Azure(rules) = &s.policies[2].rules else {
        panic!("{:?}", s.policies[2].rules)
    };
    assert_eq!(rules[0].link_id, 0);
    assert_eq!(rules[1].link_id, u32::MAX);
    assert_eq!(
        rules[1].azure_endpoint_guid.as_deref(),
        Some("8f3e1c2a-0000-4000-8000-000000000001")
    );
}

#[test]
fn gcp_rule_sources() {
    const RANGE: &str =
        "is not a PSC connection id (expected a decimal number from 0 to 18446744073709551615)";
    one_error_each(
        "policies[3].rules[0].source",
        &[
            (
                json!("abc"),
                "\"abc\" is not a PSC connection id (expected a decimal number from 0 to 18446744073709551615)",
            ),
            (json!("-1"), "\"-1\" is not a PSC connection id"),
            (
                json!("18446744073709551616"),
                "\"18446744073709551616\" is not a PSC connection id",
            ),
            (json!(1.5), "1.5 is not a PSC connection id"),
            (json!(-1), "-1 is not a PSC connection id"),
            (json!(""), "\"\" is not a PSC connection id"),
            (json!("+5"), RANGE),
            (json!(" 5"), RANGE),
            (json!(true), "true is not a PSC connection id"),
            (json!(null), "missing field"),
        ],
    );
}

#[test]
fn gcp_ids_as_strings_or_integers() {
    let mut v = base();
    v["policies"][3]["rules"] = json!([
        { "source": 18446744072646845332u64 },
        { "source": "18446744073709551615" },
        { "source": 0 },
    ]);
    let s = parse_ok(&v);
    let Rules::Gcp(rules) = &s.policies[3].rules else {
        panic!("{:?}", s.policies[3].rules)
    };
    let ids: Vec<u64> = rules.iter().map(|r| r.source).collect();
    assert_eq!(ids, [18446744072646845332, u64::MAX, 0]);
    // A JSON integer (not just a string) survives serde_json exactly.
    let raw = br#"{"version":1,"deployments":[],"policies":[{"id":"g","type":"gcp_private_service_connect_endpoint","region":"gcp-us-central1","rules":[{"source":18446744073709551615}]}]}"#;
    let s = parse_snapshot(raw).expect("integer PSC id accepted");
    assert_eq!(
        s.policies[0].rules,
        Rules::Gcp(vec![portcullis::policy::GcpRule {
            source: u64::MAX,
            description: None,
        }])
    );
}

#[test]
fn a_policy_with_invalid_rules_still_exists() {
    // Each policy is broken in its rules or type, and every deployment
    // still references it: the only errors are the policies' own.
    let mut v = base();
    v["policies"][0]["rules"][0]["source"] = json!("garbage");
    v["policies"][1]["rules"][0]["source"] = json!("vpc-1");
    v["policies"][2]["rules"][0]["link_id"] = json!(-1);
    v["policies"][3]["type"] = json!("psc");
    assert_refused(
        &v,
        &[
            ("policies[0].rules[0].source", "not an IP address"),
            ("policies[1].rules[0].source", "not a VPC endpoint id"),
            ("policies[2].rules[0].link_id", "LinkID"),
            ("policies[3].type", "unknown policy type \"psc\""),
        ],
    );
}

// ---------------------------------------------------------------------------
// Deployments

#[test]
fn unknown_policy_reference_display() {
    let mut v = base();
    v["deployments"][0]["policies"] = json!(["office", "x"]);
    let SnapshotErrors(errors) = parse(&v).expect_err("unknown policy accepted");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown, [r#"deployments[0].policies[1]: unknown policy "x""#]);
    let all = SnapshotErrors(errors).to_string();
    assert_eq!(
        all,
        "invalid snapshot (1 error)\n  deployments[0].policies[1]: unknown policy \"x\""
    );
}

#[test]
fn deployment_fields() {
    field_cases(&[
        (
            "unknown deployment field",
            "deployments[0].polices",
            json!(["office"]),
            "unknown field (expected one of: id, alias, region, enforcement, resources, policies)",
        ),
        (
            "deployment not an object",
            "deployments[1]",
            json!("def456"),
            "expected an object, found a string",
        ),
        (
            "duplicate deployment id",
            "deployments[1].id",
            json!("abc123"),
            "\"abc123\" is already used by deployments[0] (as its id or alias)",
        ),
        (
            "duplicate alias",
            "deployments[1].alias",
            json!("my-dep"),
            "\"my-dep\" is already used by deployments[0] (as its id or alias)",
        ),
        (
            "alias equal to another deployment's id",
            "deployments[2].alias",
            json!("def456"),
            "\"def456\" is already used by deployments[1]",
        ),
        (
            "id equal to an earlier deployment's alias",
            "deployments[2].id",
            json!("az-dep"),
            "\"az-dep\" is already used by deployments[1]",
        ),
        (
            "deployment region invalid: no mismatch reported",
            "deployments[0].region",
            json!("eu-west"),
            "\"eu-west\" is not a region",
        ),
        (
            "unknown enforcement",
            "deployments[0].enforcement",
            json!("audit"),
            "unknown enforcement \"audit\" (expected enforce or dry_run)",
        ),
        (
            "enforcement in the wrong case",
            "deployments[0].enforcement",
            json!("DRY_RUN"),
            "unknown enforcement \"DRY_RUN\"",
        ),
        (
            "enforcement not a string",
            "deployments[0].enforcement",
            json!(false),
            "expected a string, found a boolean",
        ),
        (
            "policies not an array",
            "deployments[0].policies",
            json!("office"),
            "expected an array, found a string",
        ),
    ]);
    missing_each(&["deployments[0].id", "deployments[0].region"]);
    run_cases(&[
        (
            "region mismatch between deployment and policy",
            |v| v["deployments"][1]["policies"] = json!(["az", "office"]),
            &[(
                "deployments[1].policies[1]",
                "policy \"office\" is in region \"aws-us-east-1\" but the deployment is in \"azure-eastus2\"",
            )],
        ),
        (
            "same provider, other region",
            |v| {
                v["policies"][0]["region"] = json!("aws-eu-west-1");
            },
            &[(
                "deployments[0].policies[0]",
                "policy \"office\" is in region \"aws-eu-west-1\" but the deployment is in \"aws-us-east-1\"",
            )],
        ),
        (
            "policy reference not a string",
            |v| v["deployments"][0]["policies"] = json!(["office", 1]),
            &[(
                "deployments[0].policies[1]",
                "expected a string, found a number",
            )],
        ),
        (
            "every unknown reference is reported",
            |v| v["deployments"][0]["policies"] = json!(["x", "office", "y"]),
            &[
                ("deployments[0].policies[0]", "unknown policy \"x\""),
                ("deployments[0].policies[2]", "unknown policy \"y\""),
            ],
        ),
    ]);
}

#[test]
fn dns_labels_for_ids_and_aliases() {
    const LABEL: &str = "it must be a DNS label of 1-63 lowercase letters, digits or '-', not starting or ending with '-'";
    one_error_each(
        "deployments[0].id",
        &[
            (
                json!("ABC123"),
                "\"ABC123\" is not a valid cluster id: it must be a DNS label",
            ),
            (json!("-abc"), "\"-abc\" is not a valid cluster id"),
            (json!("abc-"), LABEL),
            (json!("a".repeat(64)), "is not a valid cluster id"),
            (json!("abc_123"), "\"abc_123\" is not a valid cluster id"),
            (json!(""), "\"\" is not a valid cluster id"),
            (json!("abc.es"), LABEL),
            (json!(123), "expected a string, found a number"),
            (json!(null), "missing field"),
        ],
    );
    one_error_each(
        "deployments[0].alias",
        &[
            (
                json!("My-Dep"),
                "\"My-Dep\" is not a valid alias: it must be a DNS label",
            ),
            (json!("-my-dep"), "is not a valid alias"),
            (json!("b".repeat(64)), "is not a valid alias"),
            (json!("my_dep"), "\"my_dep\" is not a valid alias"),
            (json!(""), "\"\" is not a valid alias"),
        ],
    );
}

#[test]
fn longest_labels_are_valid() {
    let mut v = base();
    v["deployments"][0]["id"] = json!("0".repeat(63));
    v["deployments"][0]["alias"] = json!(format!("a-{}", "9".repeat(61)));
    let s = parse_ok(&v);
    assert_eq!(s.deployments[0].id.len(), 63);
    assert_eq!(s.deployments[0].alias.as_ref().map(String::len), Some(63));
}

#[test]
fn resources_and_backends() {
    one_error_each(
        "deployments[0].resources.es.backends[0]",
        &[
            (
                json!("10.0.0.1"),
                "\"10.0.0.1\" is not a backend address (expected ip:port or [ipv6]:port)",
            ),
            (json!("host:9200"), "\"host:9200\" is not a backend address"),
            (
                json!("10.0.0.1:0"),
                "\"10.0.0.1:0\": port 0 is not a backend port",
            ),
            (
                json!("10.0.0.1:99999"),
                "\"10.0.0.1:99999\" is not a backend address",
            ),
            (json!("::1:9200"), "is not a backend address"),
            (json!(9200), "expected a string, found a number"),
        ],
    );
    one_error_each(
        "deployments[0].resources",
        &[
            (json!({}), "a deployment needs at least one resource"),
            (json!([]), "expected an object, found an array"),
            (json!(null), "missing field"),
        ],
    );
    one_error_each(
        "deployments[0].resources.es.backends",
        &[
            (json!([]), "a resource needs at least one backend"),
            (json!(null), "missing field"),
            (json!("10.0.0.5:9200"), "expected an array, found a string"),
        ],
    );
    field_cases(&[
        (
            "unknown product",
            "deployments[0].resources.elasticsearch",
            json!({ "backends": ["10.0.0.9:9200"] }),
            "unknown product \"elasticsearch\" (expected es, kb, apm, fleet, ent or remote_cluster)",
        ),
        (
            "unknown resource field",
            "deployments[0].resources.es.nodes",
            json!(3),
            "unknown field (expected one of: backends)",
        ),
    ]);
    run_cases(&[
        (
            "product in the wrong case",
            |v| {
                v["deployments"][0]["resources"] =
                    json!({ "ES": { "backends": ["10.0.0.9:9200"] } })
            },
            &[("deployments[0].resources.ES", "unknown product \"ES\"")],
        ),
        (
            "duplicate backend",
            |v| {
                v["deployments"][0]["resources"]["es"]["backends"] =
                    json!(["10.0.0.5:9200", "10.0.0.6:9200", "10.0.0.5:9200"])
            },
            &[(
                "deployments[0].resources.es.backends[2]",
                "\"10.0.0.5:9200\" is listed twice",
            )],
        ),
        (
            "every bad backend of every resource is reported",
            |v| {
                v["deployments"][0]["resources"] = json!({
                    "es": { "backends": ["10.0.0.1", "10.0.0.2:9200", "10.0.0.1:0"] },
                    "kb": { "backends": ["10.0.0.3:5601", "host:5601"] },
                });
            },
            &[
                (
                    "deployments[0].resources.es.backends[0]",
                    "is not a backend address",
                ),
                ("deployments[0].resources.es.backends[2]", "port 0"),
                (
                    "deployments[0].resources.kb.backends[1]",
                    "is not a backend address",
                ),
            ],
        ),
    ]);
}

#[test]
fn ipv6_backends_and_all_products_are_valid() {
    let mut v = base();
    v["deployments"][0]["resources"] = json!({
        "es": { "backends": ["[::1]:9200", "10.0.0.5:9200", "[2001:db8::5]:9200"] },
        "kb": { "backends": ["10.0.1.5:5601"] },
        "apm": { "backends": ["10.0.2.5:8200"] },
        "fleet": { "backends": ["10.0.3.5:8220"] },
        "ent": { "backends": ["10.0.4.5:3002"] },
        "remote_cluster": { "backends": ["10.0.5.5:9400"] },
    });
    let s = parse_ok(&v);
    let resources = &s.deployments[0].resources;
    assert_eq!(resources.keys().copied().collect::<Vec<_>>(), Product::ALL);
    let es: Vec<String> = resources[&Product::Es]
        .backends
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(es, ["[::1]:9200", "10.0.0.5:9200", "[2001:db8::5]:9200"]);
}

#[test]
fn a_policy_listed_twice_is_deduplicated() {
    let mut v = base();
    v["deployments"][0]["policies"] = json!(["office", "vpce-pol", "office", "vpce-pol", "office"]);
    let s = parse_ok(&v);
    assert_eq!(s.deployments[0].policies, ["office", "vpce-pol"]);
}

#[test]
fn optional_fields_and_nulls() {
    let mut v = base();
    v["deployments"][0]["enforcement"] = json!("dry_run");
    v["deployments"][1]["enforcement"] = json!(null);
    v["deployments"][1]["alias"] = json!(null);
    v["deployments"][2]
        .as_object_mut()
        .unwrap()
        .remove("policies");
    v["policies"][0]["include_by_default"] = json!(true);
    v["policies"][0]["name"] = json!("Office");
    v["policies"][0]["description"] = json!("HQ and VPN");
    v["deployments"][2]["policies"] = json!(null);
    let s = parse_ok(&v);
    assert_eq!(s.deployments[0].enforcement, Enforcement::DryRun);
    assert_eq!(s.deployments[1].enforcement, Enforcement::Enforce);
    assert_eq!(s.deployments[1].alias, None);
    assert!(s.deployments[2].policies.is_empty());
    let p = &s.policies[0];
    assert_eq!(
        p.include_by_default,
        Some(true),
        "include_by_default is kept"
    );
    assert_eq!(p.name.as_deref(), Some("Office"));
    assert_eq!(p.description.as_deref(), Some("HQ and VPN"));
    assert_eq!(s.policies[1].include_by_default, None);
}

// ---------------------------------------------------------------------------
// Everything at once

#[test]
fn many_errors_are_all_reported_in_document_order() {
    let v = json!({
        "version": 0,
        "policies": [
            { "id": "office", "type": "ip", "region": "aws-us-east-1",
              "rules": [ { "source": "10.0.0.1/8" }, { "source": "192.0.2.0/24" },
                         { "source": "garbage" } ] },
            { "id": "pv", "type": "vpce", "region": "azure-eastus2",
              "rules": [ { "source": "vpc-1" } ] },
            { "id": "az", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": -1 } ] },
            { "id": "g", "type": "gcp", "region": "gcp-us-central1",
              "rules": [ { "source": "abc" } ] }
        ],
        "deployments": [
            { "id": "Bad_Id", "alias": "ok", "region": "aws-us-east-1", "enforcement": "audit",
              "resources": { "es": { "backends": [] } },
              "policies": ["office", "x", "pv"] },
            { "id": "d2", "alias": "ok", "region": "azure-eastus2",
              "resources": { "apm": { "backends": ["10.0.0.1"] },
                             "xx": { "backends": ["10.0.0.1:1"] } },
              "policies": ["az", "g", "az"] },
            { "id": "d3", "region": "gcp-us-central1",
              "resources": { "es": { "backends": ["10.0.0.1:9200", "10.0.0.1:9200"] } } }
        ]
    });
    let expected: &[(&str, &str)] = &[
        ("version", "must be a positive integer"),
        (
            "policies[0].rules[0].source",
            "write the network \"10.0.0.0/8\"",
        ),
        (
            "policies[0].rules[2].source",
            "\"garbage\" is not an IP address or CIDR",
        ),
        (
            "policies[1].region",
            "vpce policies belong in aws-* regions",
        ),
        (
            "policies[1].rules[0].source",
            "\"vpc-1\" is not a VPC endpoint id",
        ),
        ("policies[2].rules[0].link_id", "found -1"),
        ("policies[3].type", "unknown policy type \"gcp\""),
        ("deployments[0].id", "\"Bad_Id\" is not a valid cluster id"),
        (
            "deployments[0].enforcement",
            "unknown enforcement \"audit\"",
        ),
        (
            "deployments[0].resources.es.backends",
            "at least one backend",
        ),
        ("deployments[0].policies[1]", "unknown policy \"x\""),
        (
            "deployments[0].policies[2]",
            "policy \"pv\" is in region \"azure-eastus2\" but the deployment is in \"aws-us-east-1\"",
        ),
        (
            "deployments[1].alias",
            "\"ok\" is already used by deployments[0]",
        ),
        (
            "deployments[1].resources.apm.backends[0]",
            "\"10.0.0.1\" is not a backend address",
        ),
        ("deployments[1].resources.xx", "unknown product \"xx\""),
        (
            "deployments[1].policies[1]",
            "policy \"g\" is in region \"gcp-us-central1\" but the deployment is in \"azure-eastus2\"",
        ),
        ("deployments[2].resources.es.backends[1]", "listed twice"),
    ];
    if let Err(errors) = parse(&v) {
        let shown = errors.to_string();
        assert!(
            shown.starts_with(&format!(
                "invalid snapshot ({} errors)\n  version: ",
                expected.len()
            )),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 1 + expected.len(), "{shown}");
    }
    assert_refused(&v, expected);
}

#[test]
fn duplicate_policy_id_is_reported_in_document_order() {
    let mut v = base();
    v["policies"][1]["id"] = json!("office");
    v["deployments"][0]["policies"] = json!(["office"]);
    v["policies"][2]["rules"][0]["link_id"] = json!(-1);
    assert_refused(
        &v,
        &[
            ("policies[1].id", "duplicate policy id \"office\""),
            ("policies[2].rules[0].link_id", "LinkID"),
        ],
    );
}

#[test]
fn duplicate_json_keys_are_refused() {
    let raw = br#"{"version":1,"policies":[{"id":"p","type":"ip","region":"aws-us-east-1","rules":[]}],
        "deployments":[{"id":"d","region":"aws-us-east-1","resources":{"es":{"backends":["10.0.0.1:9200"]}},
        "policies":["p"],"policies":[]}]}"#;
    assert!(
        parse_snapshot(raw).is_err(),
        "a duplicate \"policies\" key dropped the deployment's filtering policy"
    );
}

// ---------------------------------------------------------------------------
// Round trip: the model serialises back to the wire format

fn round_trip(s: &Snapshot) {
    let bytes = serde_json::to_vec(s).expect("serialise snapshot");
    match parse_snapshot(&bytes) {
        Ok(back) => assert_eq!(&back, s, "round trip changed the snapshot"),
        Err(e) => panic!("serialised snapshot refused: {e}"),
    }
}

#[test]
fn example_snapshot_round_trips() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/snapshot.example.json");
    let bytes = std::fs::read(path).expect("read example snapshot");
    let s = parse_snapshot(&bytes).unwrap_or_else(|e| panic!("example snapshot invalid: {e}"));
    assert_eq!(s.version, 1);
    assert_eq!(s.deployments.len(), 2);
    assert_eq!(s.policies.len(), 4);
    assert_eq!(
        ip_sources(&s, 0),
        ["203.0.113.0/24", "127.0.0.1/32", "2001:db8::/32"]
    );
    round_trip(&s);
}

#[test]
fn canonicalised_snapshot_round_trips() {
    let mut v = base();
    v["policies"][0]["rules"] =
        json!([{ "source": "::ffff:10.0.0.0/104" }, { "source": "2001:db8::1" }]);
    v["policies"][1]["rules"][0]["source"] = json!("VPCE-ABC");
    v["policies"][3]["rules"][0]["source"] = json!(5);
    v["deployments"][0]["policies"] = json!(["office", "office"]);
    v["deployments"][0]["resources"]["es"]["backends"] = json!(["[::1]:9200"]);
    round_trip(&parse_ok(&v));
}

#[test]
fn synthetic_snapshots_round_trip() {
    use portcullis_test_kit::synth::{Scale, generate};
    for seed in [0, 1, 7, 42, 0xdead_beef] {
        let s = generate(Scale::SMALL, seed);
        assert_eq!(s.deployments.len(), Scale::SMALL.deployments, "seed {seed}");
        round_trip(&s);
    }
}

#[test]
fn the_table_harness_rejects_wrong_expectations() {
    let bad = || parse(&mutated(|v| v["version"] = json!(0)));
    assert!(
        compare(parse(&base()), &[]).is_err(),
        "a valid snapshot must not pass"
    );
    assert!(compare(bad(), &[]).is_err(), "missing error must not pass");
    assert!(compare(bad(), &[("version", "x"), ("version", "x")]).is_err());
    assert!(
        compare(bad(), &[("versions", "positive")]).is_err(),
        "wrong path"
    );
    assert!(
        compare(bad(), &[("version", "negative")]).is_err(),
        "wrong message"
    );
    assert!(compare(bad(), &[("version", "positive")]).is_ok());

    // The path helpers reach what an error path names.
    let mut v = base();
    *at_path(&mut v, "deployments[0].resources.es.backends[0]") = json!("x");
    assert_eq!(v["deployments"][0]["resources"]["es"]["backends"][0], "x");
    remove_at(&mut v, "policies[2].rules[0].link_id");
    assert_eq!(
        v["policies"][2]["rules"][0],
        json!({ "azure_endpoint_name": "my-pe" })
    );
}

//! The command line (SPEC §5): `portcullis check` and `portcullis explain`,
//! driven as a user would, through the built binary. Exit codes: 0 when a
//! decision was made (whatever it is), 1 on an invalid snapshot, 2 on bad
//! arguments.

use portcullis_test_kit::harness::{EXPLAIN_KEYS, TempDir};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const AWS_ID: &str = "d53192a1f0e54c0bb2c1b0c6a6f6e2f1";
const OPEN_ID: &str = "0a1b2c3d4e5f40718293a4b5c6d7e8f9";
const DRY_ID: &str = "dry0001";
const AZURE_ID: &str = "az0001";
const GCP_ID: &str = "gcp0001";

/// One deployment per cloud plus an open and a dry-run one.
fn snapshot() -> Value {
    json!({
        "version": 42,
        "policies": [
            { "id": "office-ips", "type": "ip", "region": "aws-us-east-1",
              "rules": [ { "source": "203.0.113.0/24", "description": "HQ" },
                         { "source": "2001:db8::/32" },
                         { "source": "198.51.100.7" } ] },
            { "id": "prod-vpce", "type": "vpce", "region": "aws-us-east-1",
              "rules": [ { "source": "vpce-0a1b2c3d4e5f67890" },
                         { "source": "vpce-11112222333344445" } ] },
            { "id": "records", "type": "vpce", "region": "aws-us-east-1", "rules": [] },
            { "id": "az-pe", "type": "azure_private_endpoint", "region": "azure-eastus2",
              "rules": [ { "link_id": 16777301, "azure_endpoint_name": "my-pe" } ] },
            { "id": "gcp-psc", "type": "gcp_private_service_connect_endpoint",
              "region": "gcp-us-central1",
              "rules": [ { "source": "18446744072646845332" } ] }
        ],
        "deployments": [
            { "id": AWS_ID, "alias": "my-deployment", "region": "aws-us-east-1",
              "resources": { "es": { "backends": ["10.0.0.5:9200"] },
                             "kb": { "backends": ["10.0.1.5:5601"] } },
              "policies": ["office-ips", "prod-vpce"] },
            { "id": OPEN_ID, "alias": "open-deployment", "region": "aws-us-east-1",
              "resources": { "es": { "backends": ["10.0.0.6:9200"] } },
              "policies": ["records"] },
            { "id": DRY_ID, "alias": "dry-deployment", "region": "aws-us-east-1",
              "enforcement": "dry_run",
              "resources": { "es": { "backends": ["10.0.0.7:9200"] } },
              "policies": ["office-ips"] },
            { "id": AZURE_ID, "alias": "azure-deployment", "region": "azure-eastus2",
              "resources": { "es": { "backends": ["10.0.0.8:9200"] } },
              "policies": ["az-pe"] },
            { "id": GCP_ID, "alias": "gcp-deployment", "region": "gcp-us-central1",
              "resources": { "es": { "backends": ["10.0.0.9:9200"] } },
              "policies": ["gcp-psc"] }
        ]
    })
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run portcullis")
}

/// Runs `check --snapshot SNAPSHOT`.
fn check(snapshot: &Path) -> Output {
    let snapshot = snapshot.to_str().expect("UTF-8 path");
    run(&["check", "--snapshot", snapshot])
}

/// Runs `explain --snapshot SNAPSHOT` followed by `args`.
fn explain(snapshot: &Path, args: &[&str]) -> Output {
    let snapshot = snapshot.to_str().expect("UTF-8 path");
    run(&[&["explain", "--snapshot", snapshot][..], args].concat())
}

// The deployments' Elasticsearch hosts, which most requests name.
const MY_ES: &str = "my-deployment.es.example.com";
const OPEN_ES: &str = "open-deployment.es.example.com";
const DRY_ES: &str = "dry-deployment.es.example.com";
const AZURE_ES: &str = "azure-deployment.es.example.com";
const GCP_ES: &str = "gcp-deployment.es.example.com";

/// `--host HOST --source SOURCE` and then `more`: the request nearly every
/// `explain` call below makes.
fn request<'a>(host: &'a str, source: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    [&["--host", host, "--source", source][..], more].concat()
}

pub(super) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(super) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(super) fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Writes the test snapshot and runs `explain` against it.
struct Explain {
    _dir: TempDir,
    snapshot: PathBuf,
}

impl Explain {
    fn new() -> Self {
        let dir = TempDir::new();
        let snapshot = dir.write("snapshot.json", snapshot().to_string().as_bytes());
        Self {
            _dir: dir,
            snapshot,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        explain(&self.snapshot, args)
    }

    /// Runs `explain --format json`, expects exit 0 and exactly one JSON
    /// object with exactly the SPEC keys.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--format", "json"]);
        let o = self.run(&all);
        assert_exit(&o, 0, &format!("explain {args:?}"));
        let out = stdout(&o);
        assert_eq!(out.lines().count(), 1, "one line of output: {out:?}");
        let values: Vec<Value> = serde_json::Deserializer::from_str(&out)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"));
        assert_eq!(values.len(), 1, "exactly one JSON value: {out:?}");
        let keys: BTreeSet<&str> = values[0]
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {out}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(EXPLAIN_KEYS), "{out}");
        values[0].clone()
    }

    /// Runs each request and compares its JSON decision with the one
    /// expected; a failure names the request.
    fn decides(&self, cases: &[(Vec<&str>, Value)]) {
        for (args, want) in cases {
            assert_eq!(&self.json(args), want, "explain {args:?}");
        }
    }
}

fn decision(
    decision: &str,
    reason: &str,
    deployment: Option<&str>,
    product: Option<&str>,
    policy: Option<&str>,
    rule: Option<u32>,
) -> Value {
    json!({
        "decision": decision,
        "reason": reason,
        "deployment": deployment,
        "product": product,
        "policy": policy,
        "rule": rule,
    })
}

// The decisions the tests expect, by kind, so that each case states only
// what sets it apart.

/// Allowed by `rule` of the filtering `policy`.
fn allowed(reason: &str, deployment: &str, product: &str, policy: &str, rule: u32) -> Value {
    decision(
        "allowed",
        reason,
        Some(deployment),
        Some(product),
        Some(policy),
        Some(rule),
    )
}

/// No rule matched: `denied`, or `would_deny` under dry run.
fn unmatched(verdict: &str, deployment: &str, product: &str) -> Value {
    decision(
        verdict,
        "unmatched",
        Some(deployment),
        Some(product),
        None,
        None,
    )
}

/// Allowed because the deployment has no filtering policy.
fn no_policy(deployment: &str, product: &str) -> Value {
    decision(
        "allowed",
        "no_policy",
        Some(deployment),
        Some(product),
        None,
        None,
    )
}

/// Denied before any deployment was settled on.
fn refused(reason: &str) -> Value {
    decision("denied", reason, None, None, None, None)
}

// ---------------------------------------------------------------------------
// check

#[test]
fn check_valid_snapshot_prints_a_summary() {
    let dir = TempDir::new();
    let path = dir.write("snapshot.json", snapshot().to_string().as_bytes());
    let o = check(&path);
    assert_exit(&o, 0, "check valid");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one summary line: {out:?}");
    assert!(out.contains("version 42"), "{out}");
    assert!(out.contains("5 deployments"), "{out}");
    assert!(out.contains("5 policies"), "{out}");
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn check_the_example_snapshot() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/snapshot.example.json");
    let o = check(Path::new(path));
    assert_exit(&o, 0, "check example");
    assert!(stdout(&o).contains("version 1"), "{}", stdout(&o));
}

#[test]
fn check_invalid_snapshot_lists_every_error_with_its_path() {
    let dir = TempDir::new();
    let mut v = snapshot();
    v["version"] = json!(0);
    v["policies"][0]["rules"][0]["source"] = json!("10.0.0.1/8");
    v["deployments"][0]["policies"] = json!(["office-ips", "x"]);
    v["deployments"][1]["resources"]["es"]["backends"] = json!([]);
    let path = dir.write("bad.json", v.to_string().as_bytes());
    let o = check(&path);
    assert_exit(&o, 1, "check invalid");
    assert!(stdout(&o).is_empty(), "nothing on stdout: {}", stdout(&o));
    let err = stderr(&o);
    for line in [
        "version: must be a positive integer",
        "policies[0].rules[0].source: \"10.0.0.1/8\" has host bits set; write the network \"10.0.0.0/8\"",
        "deployments[0].policies[1]: unknown policy \"x\"",
        "deployments[1].resources.es.backends: a resource needs at least one backend",
    ] {
        assert!(
            err.lines().any(|l| l.trim() == line),
            "missing {line:?} in:\n{err}"
        );
    }
    assert!(err.contains("4 errors"), "{err}");
    assert!(err.contains("bad.json"), "names the file: {err}");
}

#[test]
fn check_malformed_json() {
    let dir = TempDir::new();
    let path = dir.write("broken.json", b"{\n  \"version\": 1,\n");
    let o = check(&path);
    assert_exit(&o, 1, "check malformed");
    let err = stderr(&o);
    assert!(err.contains("invalid JSON"), "{err}");
    assert!(err.contains("line 3 column 0"), "{err}");
}

#[test]
fn check_missing_file() {
    let dir = TempDir::new();
    let path = dir.0.join("no-such-snapshot.json");
    let o = check(&path);
    assert_exit(&o, 1, "check missing file");
    let err = stderr(&o);
    assert!(
        err.contains("no-such-snapshot.json"),
        "names the file: {err}"
    );
    assert!(
        err.to_lowercase().contains("no such file"),
        "says why: {err}"
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn check_without_snapshot_is_a_usage_error() {
    assert_exit(&run(&["check"]), 2, "check without --snapshot");
    assert_exit(&run(&["frobnicate"]), 2, "unknown subcommand");
}

// ---------------------------------------------------------------------------
// explain: decisions

#[test]
fn explain_ip_allow_names_policy_and_rule() {
    let e = Explain::new();
    let cases: &[(&str, &str, &str, u32)] = &[
        ("my-deployment.es.example.com", "203.0.113.9", "es", 0),
        ("my-deployment.kb.example.com:9243", "2001:db8::5", "kb", 1),
        ("MY-DEPLOYMENT.ES.EXAMPLE.COM", "198.51.100.7", "es", 2),
        (
            "d53192a1f0e54c0bb2c1b0c6a6f6e2f1.example.com",
            "::ffff:203.0.113.9",
            "es",
            0,
        ),
    ];
    for &(host, source, product, rule) in cases {
        let got = e.json(&request(host, source, &[]));
        let want = allowed("ip", AWS_ID, product, "office-ips", rule);
        assert_eq!(got, want, "{host} from {source}");
    }
}

#[test]
fn explain_vpce_allow_is_case_insensitive() {
    let e = Explain::new();
    for (vpce, rule) in [("VPCE-0A1b2C3d4E5f67890", 0), ("vpce-11112222333344445", 1)] {
        let got = e.json(&request(MY_ES, "10.1.2.3", &["--aws-vpce", vpce]));
        let want = allowed("vpce", AWS_ID, "es", "prod-vpce", rule);
        assert_eq!(got, want, "{vpce}");
    }
}

#[test]
fn explain_private_traffic_never_matches_ip_rules() {
    let e = Explain::new();
    let vpce = ["--aws-vpce", "vpce-ffffffffffffffff0"];
    e.decides(&[(
        request(MY_ES, "203.0.113.9", &vpce),
        unmatched("denied", AWS_ID, "es"),
    )]);
}

#[test]
fn explain_azure_and_gcp_allows() {
    let e = Explain::new();
    e.decides(&[
        (
            request(AZURE_ES, "10.2.0.4", &["--azure-link-id", "16777301"]),
            allowed("azure", AZURE_ID, "es", "az-pe", 0),
        ),
        (
            request(
                GCP_ES,
                "10.3.0.4",
                &["--gcp-psc-id", "18446744072646845332"],
            ),
            allowed("gcp", GCP_ID, "es", "gcp-psc", 0),
        ),
        // Another deployment's endpoint does not open this one.
        (
            request(AZURE_ES, "10.2.0.4", &["--azure-link-id", "16777302"]),
            unmatched("denied", AZURE_ID, "es"),
        ),
    ]);
}

#[test]
fn explain_unmatched_deny_and_dry_run() {
    let e = Explain::new();
    e.decides(&[
        (
            request(MY_ES, "192.0.2.1", &[]),
            unmatched("denied", AWS_ID, "es"),
        ),
        (
            request(DRY_ES, "192.0.2.1", &[]),
            unmatched("would_deny", DRY_ID, "es"),
        ),
        // Dry run changes nothing for an allowed request.
        (
            request(DRY_ES, "203.0.113.1", &[]),
            allowed("ip", DRY_ID, "es", "office-ips", 0),
        ),
    ]);
}

#[test]
fn explain_no_filtering_policy_allows_everything() {
    let e = Explain::new();
    let private = ["--aws-vpce", "vpce-0123"];
    // The older behaviour refuses unlisted private-endpoint traffic.
    let refusing = [&private[..], &["--unassociated-private-traffic", "deny"]].concat();
    e.decides(&[
        (request(OPEN_ES, "192.0.2.1", &[]), no_policy(OPEN_ID, "es")),
        // Private traffic, record-only policy.
        (
            request(OPEN_ES, "10.1.2.3", &private),
            no_policy(OPEN_ID, "es"),
        ),
        (
            request(OPEN_ES, "10.1.2.3", &refusing),
            unmatched("denied", OPEN_ID, "es"),
        ),
    ]);
}

#[test]
fn explain_unknown_host_and_resource() {
    let e = Explain::new();
    for host in [
        "nope.es.example.com",
        "open-deployment.kb.example.com",
        "open-deployment.example.com",
        "192.0.2.10:9243",
    ] {
        let got = e.json(&request(host, "203.0.113.9", &[]));
        assert_eq!(got, refused("unknown_deployment"), "{host}");
    }
}

#[test]
fn explain_misdirected_sni() {
    let e = Explain::new();
    let with_sni = |sni| request(MY_ES, "203.0.113.9", &["--sni", sni]);
    e.decides(&[(with_sni(OPEN_ES), refused("misdirected"))]);

    // The same deployment under another product is not misdirected.
    let got = e.json(&with_sni("my-deployment.kb.example.com"));
    assert_eq!(got["decision"], "allowed", "{got}");
}

#[test]
fn explain_found_cluster_header_on_the_bare_zone() {
    let e = Explain::new();
    let zone = ["--zone", "es.example.com", "--host", "es.example.com"];
    let on_zone = |more: &[&'static str]| [&zone[..], more].concat();
    e.decides(&[
        (
            on_zone(&[
                "--source",
                "203.0.113.9",
                "--found-cluster",
                "my-deployment.kb",
            ]),
            allowed("ip", AWS_ID, "kb", "office-ips", 0),
        ),
        (
            on_zone(&["--source", "192.0.2.1", "--found-cluster", OPEN_ID]),
            no_policy(OPEN_ID, "es"),
        ),
        // Without the header the bare zone names no deployment.
        (
            on_zone(&["--source", "203.0.113.9"]),
            refused("unknown_deployment"),
        ),
    ]);
}

#[test]
fn explain_text_first_line_starts_with_the_decision() {
    let e = Explain::new();
    let cases: &[(Vec<&str>, &str, &[&str])] = &[
        (
            request(MY_ES, "203.0.113.9", &[]),
            "allowed",
            &["office-ips", AWS_ID],
        ),
        (request(MY_ES, "192.0.2.1", &[]), "denied", &[AWS_ID]),
        (request(DRY_ES, "192.0.2.1", &[]), "would_deny", &[DRY_ID]),
        (
            request("nope.es.example.com", "192.0.2.1", &[]),
            "denied",
            &["unknown_deployment"],
        ),
    ];
    for (args, first_word, mentions) in cases {
        for format in [&[][..], &["--format", "text"][..]] {
            let all = [&args[..], format].concat();
            let o = e.run(&all);
            assert_exit(&o, 0, &format!("explain {all:?}"));
            let out = stdout(&o);
            let first = out.lines().next().unwrap_or_default();
            assert_eq!(first.split([' ', '(']).next(), Some(*first_word), "{out}");
            for m in *mentions {
                assert!(out.contains(m), "{m:?} missing from:\n{out}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// explain: exit codes

#[test]
fn explain_invalid_or_missing_snapshot_exits_1() {
    let dir = TempDir::new();
    let mut v = snapshot();
    v["deployments"][0]["policies"][1] = json!("x");
    let bad = dir.write("bad.json", v.to_string().as_bytes());
    let missing = dir.0.join("missing.json");
    let args = request(MY_ES, "203.0.113.9", &["--format", "json"]);
    for path in [&bad, &missing] {
        let o = explain(path, &args);
        assert_exit(&o, 1, &format!("explain with {}", path.display()));
        assert!(stdout(&o).is_empty(), "no decision printed: {}", stdout(&o));
    }
    let o = explain(&bad, &request("h", "192.0.2.1", &[]));
    assert!(
        stderr(&o).contains("deployments[0].policies[1]: unknown policy \"x\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_bad_arguments_exit_2() {
    let e = Explain::new();
    let cases: &[(&str, Vec<&str>)] = &[
        ("bad --source", request(MY_ES, "not-an-ip", &[])),
        ("CIDR as --source", request(MY_ES, "10.0.0.0/8", &[])),
        ("missing --source", vec!["--host", MY_ES]),
        ("missing --host", vec!["--source", "203.0.113.9"]),
        (
            "two endpoint flags",
            request(
                MY_ES,
                "10.0.0.1",
                &["--aws-vpce", "vpce-0123", "--gcp-psc-id", "5"],
            ),
        ),
        (
            "azure and gcp endpoint flags",
            request(
                MY_ES,
                "10.0.0.1",
                &["--azure-link-id", "1", "--gcp-psc-id", "5"],
            ),
        ),
        (
            "unknown --format",
            request(MY_ES, "203.0.113.9", &["--format", "yaml"]),
        ),
        (
            "LinkID above u32",
            request(MY_ES, "10.0.0.1", &["--azure-link-id", "4294967296"]),
        ),
        (
            "PSC id not a number",
            request(MY_ES, "10.0.0.1", &["--gcp-psc-id", "abc"]),
        ),
        (
            "VPC endpoint id with a space",
            request(MY_ES, "10.0.0.1", &["--aws-vpce", "vpce-a b"]),
        ),
        (
            "bad --unassociated-private-traffic",
            request(
                MY_ES,
                "10.0.0.1",
                &["--unassociated-private-traffic", "maybe"],
            ),
        ),
        (
            "unknown flag",
            request(MY_ES, "203.0.113.9", &["--verbose-ish"]),
        ),
    ];
    for (what, args) in cases {
        let o = e.run(args);
        assert_exit(&o, 2, what);
        assert!(stdout(&o).is_empty(), "{what}: {}", stdout(&o));
        assert!(!stderr(&o).is_empty(), "{what}: a usage error is explained");
    }
    // Without --snapshot at all.
    let o = run(&["explain", "--host", MY_ES, "--source", "203.0.113.9"]);
    assert_exit(&o, 2, "missing --snapshot");
}

#[test]
fn help_and_version_exit_0() {
    for args in [&["--help"][..], &["--version"], &["explain", "--help"]] {
        let o = run(args);
        assert_exit(&o, 0, &format!("{args:?}"));
        assert!(!stdout(&o).is_empty(), "{args:?}");
    }
}

#[test]
fn temp_dirs_are_removed() {
    let dir = TempDir::new();
    let path = dir.0.clone();
    dir.write("x", b"x");
    drop(dir);
    assert!(!path.exists(), "{} left behind", path.display());
}

//! The per-entry rules of SPEC §3.1, one case each.

use serde_json::json;

use super::*;

const P: &str = "/p/";

fn policy(id: &str, region: &str, source: &str) -> (String, Change) {
    let v = json!({"id": id, "type": "ip", "region": region, "rules": [{"source": source}]});
    (keys::key(P, Kind::Policy, id), put(&v))
}

fn deployment(id: &str, alias: Option<&str>, region: &str, policies: &[&str]) -> (String, Change) {
    let mut v = json!({
        "id": id,
        "region": region,
        "resources": {"es": {"backends": ["10.0.0.1:9200"]}},
        "policies": policies,
    });
    if let Some(a) = alias {
        v["alias"] = json!(a);
    }
    (keys::key(P, Kind::Deployment, id), put(&v))
}

fn put(v: &serde_json::Value) -> Change {
    Change::Put(Bytes::from(serde_json::to_vec(v).unwrap()))
}

fn delete(kind: Kind, id: &str) -> (String, Change) {
    (keys::key(P, kind, id), Change::Delete)
}

/// The entries in force: (deployment ids, policy ids, refused keys).
fn state(e: &Entries) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (deployments, policies) = e.ids();
    (
        deployments,
        policies,
        e.refused().into_iter().map(|r| r.key).collect(),
    )
}

/// The entries in force as the state directory would save them, read back
/// as a whole document.
fn saved(e: &Entries) -> Snapshot {
    let doc = e.state_document(2).expect("the entries keep their values");
    crate::policy::parse_snapshot(&doc).expect("the saved state is a valid snapshot")
}

fn applied(changed: usize, refused: usize) -> Applied {
    Applied { changed, refused }
}

/// `office` and `abc` (alias `shop`, associating it), both in `region`.
fn office_and_abc(region: &str) -> [(String, Change); 2] {
    [
        policy("office", region, "203.0.113.0/24"),
        deployment("abc", Some("shop"), region, &["office"]),
    ]
}

fn world() -> Entries {
    let mut e = Entries::new(P).keeping_values();
    assert_eq!(e.apply(office_and_abc("aws-us-east-1")), applied(2, 0));
    e
}

#[test]
fn a_batch_in_any_key_order_is_applied_policies_first() {
    let mut e = Entries::new(P);
    // Keys sort deployments/ before policies/: the order must not matter.
    e.apply([
        deployment("abc", None, "aws-us-east-1", &["office"]),
        policy("office", "aws-us-east-1", "203.0.113.0/24"),
    ]);
    assert_eq!(
        state(&e),
        (vec!["abc".into()], vec!["office".into()], vec![])
    );
}

#[test]
fn an_invalid_change_keeps_the_last_valid_version() {
    let mut e = world();
    let bad = policy("office", "aws-us-east-1", "not-a-cidr");
    let a = e.apply([bad]);
    assert_eq!(a, applied(0, 1));
    let p = &saved(&e).policies[0];
    assert!(
        matches!(&p.rules, crate::policy::Rules::Ip(r) if r[0].source.to_string() == "203.0.113.0/24")
    );
    let refused = e.refused();
    assert_eq!(refused[0].key, "/p/policies/office");
    assert!(
        refused[0].message.starts_with("rules[0].source"),
        "{}",
        refused[0].message
    );
    // Fixed: in force, and no longer listed.
    e.apply([policy("office", "aws-us-east-1", "198.51.100.0/24")]);
    assert!(e.refused().is_empty());
}

#[test]
fn a_deployment_that_was_never_valid_is_not_served() {
    let mut e = world();
    e.apply([deployment("new", None, "aws-us-east-1", &["missing"])]);
    let (deployments, _, refused) = state(&e);
    assert_eq!(deployments, ["abc"]);
    assert_eq!(refused, ["/p/deployments/new"]);
    assert!(
        e.refused()[0]
            .message
            .contains("unknown policy \"missing\""),
        "{:?}",
        e.refused()
    );
    // The policy arrives later: the refused deployment is retried with it.
    e.apply([policy("missing", "aws-us-east-1", "10.0.0.0/8")]);
    assert_eq!(state(&e).0, ["abc", "new"]);
}

#[test]
fn cross_entry_rules_are_checked() {
    let cases: &[(&str, (String, Change), &str)] = &[
        (
            "key id differs from the object's",
            {
                let (_, c) = policy("other", "aws-us-east-1", "10.0.0.0/8");
                (keys::key(P, Kind::Policy, "office2"), c)
            },
            "the key names \"office2\"",
        ),
        (
            "alias taken by another deployment",
            deployment("def", Some("shop"), "aws-us-east-1", &[]),
            "name \"shop\" is already used by deployment abc",
        ),
        (
            "alias that is another deployment's id",
            deployment("def", Some("abc"), "aws-us-east-1", &[]),
            "name \"abc\" is already used by deployment abc",
        ),
        (
            "id that is another deployment's alias",
            deployment("shop", None, "aws-us-east-1", &[]),
            "name \"shop\" is already used by deployment abc",
        ),
        (
            "policy moved to a region its deployment is not in",
            policy("office", "aws-eu-west-1", "10.0.0.0/8"),
            "differs from that of deployment(s) that associate it: abc",
        ),
        (
            "deleting a policy still associated",
            delete(Kind::Policy, "office"),
            "still associated by deployment abc",
        ),
        (
            "a key that is no entry",
            (
                "/p/settings".to_owned(),
                Change::Put(Bytes::from_static(b"{}")),
            ),
            "neither deployments/",
        ),
        (
            "not JSON",
            (
                keys::key(P, Kind::Policy, "x"),
                Change::Put(Bytes::from_static(b"{")),
            ),
            "invalid JSON",
        ),
    ];
    for (why, change, want) in cases {
        let mut e = world();
        let before = (state(&e).0, state(&e).1, e.state_document(1));
        let a = e.apply([change.clone()]);
        assert_eq!(a.refused, 1, "{why}");
        let after = (state(&e).0, state(&e).1, e.state_document(1));
        assert_eq!(after, before, "{why}: the state in force changed");
        let msg = &e.refused()[0].message;
        assert!(msg.contains(want), "{why}: {msg}");
    }
}

#[test]
fn a_deletion_waits_for_the_deployment_that_held_the_policy() {
    let mut e = world();
    e.apply([delete(Kind::Policy, "office")]);
    assert_eq!(state(&e).2, ["/p/policies/office"]);
    // The deployment lets go: the pending deletion goes through with it.
    e.apply([deployment("abc", Some("shop"), "aws-us-east-1", &[])]);
    assert_eq!(state(&e), (vec!["abc".into()], vec![], vec![]));
}

#[test]
fn a_batch_can_move_a_deployment_and_its_policy_to_another_region_together() {
    let mut e = world();
    assert_eq!(e.apply(office_and_abc("aws-eu-west-1")), applied(2, 0));
}

#[test]
fn deleting_a_deployment_frees_its_names() {
    let mut e = world();
    e.apply([delete(Kind::Deployment, "abc")]);
    e.apply([deployment(
        "def",
        Some("shop"),
        "aws-us-east-1",
        &["office"],
    )]);
    assert_eq!(state(&e).0, ["def"]);
}

#[test]
fn a_deployment_keeps_or_changes_its_own_alias() {
    let mut e = world();
    // Put again with its alias: its own names are no clash.
    let again = deployment("abc", Some("shop"), "aws-us-east-1", &["office"]);
    assert_eq!(e.apply([again]), applied(1, 0));
    // A new alias frees the old one for others.
    let renamed = deployment("abc", Some("store"), "aws-us-east-1", &["office"]);
    assert_eq!(e.apply([renamed]), applied(1, 0));
    let takes_old = deployment("def", Some("shop"), "aws-us-east-1", &[]);
    assert_eq!(e.apply([takes_old]), applied(1, 0));
    let takes_new = deployment("ghi", Some("store"), "aws-us-east-1", &[]);
    assert_eq!(e.apply([takes_new]), applied(0, 1));
    assert_eq!(state(&e).0, ["abc", "def"]);
}

/// Whether `set` routes `name` (a cluster id or an alias).
fn routes(set: &PolicySet, name: &str) -> bool {
    set.find_deployment(name, true).is_some()
}

#[test]
fn a_compile_takes_in_the_changes_and_then_holds_no_model() {
    let opts = PolicyOptions::default();
    let mut e = world();
    let first = e.compile(1, opts, None).expect("every model is there");
    assert!(routes(&first, "shop"));
    // The models went with that compile: a whole compile is no longer
    // possible, and one from a set these entries were not compiled into
    // is refused rather than answered wrongly.
    assert!(e.clone().compile(2, opts, None).is_none());
    let unrelated = PolicySet::compile(
        &Snapshot {
            version: 1,
            deployments: Vec::new(),
            policies: Vec::new(),
        },
        opts,
    );
    assert!(e.clone().compile(2, opts, Some(&unrelated)).is_none());
    // A refused change changes nothing; an accepted one is compiled in.
    e.apply([policy("office", "aws-us-east-1", "not-a-cidr")]);
    e.apply([
        deployment("abc", Some("store"), "aws-us-east-1", &[]),
        deployment("new", None, "aws-us-east-1", &["office"]),
    ]);
    let second = e
        .compile(2, opts, Some(&first))
        .expect("compiled from the first");
    assert!(routes(&second, "store") && routes(&second, "new"));
    assert!(!routes(&second, "shop"));
    // A deletion moves the last entry into the deleted one's place; the
    // next compile still pairs it with its compiled form.
    e.apply([delete(Kind::Deployment, "abc")]);
    let third = e
        .compile(3, opts, Some(&second))
        .expect("compiled from the second");
    assert!(routes(&third, "new") && !routes(&third, "abc"));
    assert_eq!(third.stats().deployments, 1);
}

#[test]
fn the_saved_state_is_each_value_as_sent_in_id_order() {
    let mut e = world();
    e.apply([policy("aaa", "aws-us-east-1", "192.0.2.0/24")]);
    let doc = e.state_document(7).expect("values kept");
    let s = crate::policy::parse_snapshot(&doc).expect("a valid document");
    assert_eq!(s.version, 7);
    let ids: Vec<&str> = s.policies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["aaa", "office"]);
    assert!(
        Entries::new(P).state_document(1).is_none(),
        "no values kept"
    );
}

#[test]
fn a_value_naming_a_field_twice_is_refused() {
    let mut e = world();
    // Read either way, the second `policies` would drop the filtering
    // policy and open the deployment.
    let value = br#"{"id": "abc", "region": "aws-us-east-1",
        "resources": {"es": {"backends": ["10.0.0.1:9200"]}},
        "policies": ["office"], "policies": []}"#;
    let key = keys::key(P, Kind::Deployment, "abc");
    let a = e.apply([(key.clone(), Change::Put(Bytes::from_static(value)))]);
    assert_eq!(a, applied(0, 1));
    let refused = e.refused();
    assert_eq!(refused[0].key, key);
    assert!(
        refused[0].message.contains("policies: duplicate key"),
        "{}",
        refused[0].message
    );
    let d = saved(&e).deployments.into_iter().find(|d| d.id == "abc");
    assert_eq!(d.map(|d| d.policies), Some(vec!["office".to_owned()]));
}

#[test]
fn the_compacted_copy_holds_the_sets_ids_and_one_copy_of_each_region() {
    let opts = PolicyOptions::default();
    let mut e = world();
    e.apply([
        policy("lab", "aws-us-east-1", "198.51.100.0/24"),
        deployment("xyz", None, "aws-us-east-1", &["office", "lab"]),
        policy("gone", "aws-eu-west-1", "192.0.2.0/24"),
    ]);
    e.apply([delete(Kind::Policy, "gone")]);
    assert_eq!(e.regions.len(), 2);
    let set = e.compile(1, opts, None).expect("every model is there");
    let copy = e.compacted(&set);
    // A region no entry names any more is not carried.
    assert_eq!(copy.regions.len(), 1);
    let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b);
    for (i, held) in copy.deployments.iter().enumerate() {
        let compiled = set
            .deployment(DeploymentIndex(index_u32(i)))
            .expect("in the set");
        assert!(same(&held.stub.id, &compiled.id), "{}", held.stub.id);
        assert_eq!(held.stub.alias.is_some(), compiled.alias.is_some());
        if let (Some(a), Some(b)) = (&held.stub.alias, &compiled.alias) {
            assert!(same(a, b));
        }
        // A deployment's policy ids are the policies' own.
        for p in held.stub.policies.iter() {
            let (held_id, _) = copy.policy_at.get_key_value(p).expect("in force");
            assert!(same(p, held_id));
        }
        if let Some(alias) = &held.stub.alias {
            let (a, id) = copy.aliases.get_key_value(alias).expect("indexed");
            assert!(same(a, alias) && same(id, &held.stub.id));
        }
    }
    for (i, held) in copy.policies.iter().enumerate() {
        let compiled = set.policy(PolicyIndex(index_u32(i))).expect("in the set");
        assert!(same(&held.stub.id, &compiled.id));
    }
    let regions: Vec<&str> = copy
        .policies
        .iter()
        .map(|h| &h.stub.region)
        .chain(copy.deployments.iter().map(|h| &h.stub.region))
        .map(|r| r.as_str())
        .collect();
    assert_eq!(regions.len(), 4);
    assert!(
        regions.windows(2).all(|w| std::ptr::eq(w[0], w[1])),
        "one copy of the region"
    );
    // The copy goes on as the original would.
    let mut copy = copy;
    copy.apply([deployment("abc", Some("store"), "aws-us-east-1", &["lab"])]);
    let next = copy.compile(2, opts, Some(&set)).expect("from the set");
    assert!(routes(&next, "store") && routes(&next, "xyz"));
    assert_eq!(
        state(&copy).1,
        vec!["lab".to_string(), "office".to_string()]
    );
}

use serde_json::{Value, json};

use super::*;
use crate::policy::{parse_snapshot, validate_value};

const PREFIX: &str = "/p/";

fn policy(id: &str, source: &str) -> Value {
    json!({ "id": id, "type": "ip", "region": "aws-us-east-1",
            "rules": [ { "source": source } ] })
}

fn deployment(id: &str, policies: &[&str]) -> Value {
    json!({ "id": id, "region": "aws-us-east-1",
            "resources": { "es": { "backends": ["10.0.0.5:9200"] } },
            "policies": policies })
}

fn snapshot(policies: Vec<Value>, deployments: Vec<Value>) -> Snapshot {
    let doc = json!({ "version": 1, "policies": policies, "deployments": deployments });
    parse_snapshot(doc.to_string().as_bytes()).expect("valid test snapshot")
}

fn stored(key: &str, value: &[u8], mod_revision: i64) -> Stored {
    Stored {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        mod_revision,
    }
}

/// What `snapshot` looks like after a publish into an empty prefix.
fn published(snapshot: &Snapshot) -> Vec<Stored> {
    let first = plan(PREFIX, snapshot, &[], 1).expect("plan");
    first
        .steps
        .iter()
        .map(|s| match &s.action {
            Action::Add { value } => stored(&s.key, value, 2),
            other => panic!("{other:?} into an empty prefix"),
        })
        .collect()
}

fn lines(plan: &Plan) -> Vec<String> {
    plan.steps.iter().map(ToString::to_string).collect()
}

#[test]
fn into_an_empty_prefix_policies_go_before_the_deployments_that_name_them() {
    let s = snapshot(
        vec![
            policy("office", "203.0.113.0/24"),
            policy("b-office", "10.0.0.0/8"),
        ],
        vec![
            deployment("d2", &["office"]),
            deployment("d1", &["b-office"]),
        ],
    );
    let p = plan(PREFIX, &s, &[], 7).expect("plan");
    assert_eq!(
        lines(&p),
        [
            "+ policy b-office",
            "+ policy office",
            "+ deployment d1",
            "+ deployment d2"
        ]
    );
    assert_eq!(p.steps[0].key, "/p/policies/b-office");
    assert_eq!(p.steps[2].key, "/p/deployments/d1");
    assert_eq!((p.revision, p.unchanged), (7, 0));
}

#[test]
fn each_value_is_its_entry_as_the_spec_writes_it() {
    let s = snapshot(
        vec![policy("office", "203.0.113.0/24")],
        vec![deployment("d1", &["office"])],
    );
    let values: Vec<Value> = published(&s)
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).expect("JSON value"))
        .collect();
    // Read back as a snapshot holding just those objects: the same entries.
    let doc = json!({ "version": 1, "policies": [values[0]], "deployments": [values[1]] });
    assert_eq!(validate_value(&doc).expect("valid"), s);
}

#[test]
fn publishing_what_is_stored_writes_nothing_whatever_the_formatting() {
    let s = snapshot(
        vec![policy("office", "203.0.113.0/24")],
        vec![deployment("d1", &["office"])],
    );
    let mut kvs = published(&s);
    // Another tool's formatting and key order: still the same entry.
    let v: Value = serde_json::from_slice(&kvs[0].value).expect("JSON");
    let reordered: serde_json::Map<String, Value> = v
        .as_object()
        .expect("object")
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    kvs[0].value = serde_json::to_vec_pretty(&reordered).expect("JSON");
    let p = plan(PREFIX, &s, &kvs, 9).expect("plan");
    assert_eq!(p.steps, []);
    assert_eq!(p.unchanged, 2);
    assert_eq!(p.counts(), Counts::default());
}

#[test]
fn a_mixed_change_is_ordered_so_every_step_leaves_a_valid_state() {
    let before = snapshot(
        vec![
            policy("old", "10.0.0.0/8"),
            policy("kept", "10.1.0.0/16"),
            policy("edited", "10.2.0.0/16"),
        ],
        vec![
            deployment("gone", &["old"]),
            deployment("moved", &["old"]),
            deployment("same", &["kept"]),
        ],
    );
    let after = snapshot(
        vec![
            policy("kept", "10.1.0.0/16"),
            policy("edited", "10.3.0.0/16"),
            policy("new", "192.0.2.0/24"),
        ],
        vec![
            deployment("moved", &["new"]),
            deployment("same", &["kept"]),
            deployment("fresh", &["edited"]),
        ],
    );
    let p = plan(PREFIX, &after, &published(&before), 3).expect("plan");
    assert_eq!(
        lines(&p),
        [
            "~ policy edited",
            "+ policy new",
            "+ deployment fresh",
            "~ deployment moved",
            "- deployment gone",
            "- policy old",
        ]
    );
    assert_eq!(p.unchanged, 2);
    assert_eq!(
        p.counts(),
        Counts {
            added: 2,
            changed: 2,
            removed: 2
        }
    );
}

#[test]
fn writes_to_stored_keys_carry_the_revision_they_were_read_at() {
    let s = snapshot(vec![policy("a", "10.0.0.0/8")], vec![]);
    let kvs = [
        stored("/p/policies/a", b"{}", 11),
        stored("/p/policies/b", b"{}", 12),
    ];
    let p = plan(PREFIX, &s, &kvs, 20).expect("plan");
    assert!(
        matches!(
            p.steps[0].action,
            Action::Change {
                mod_revision: 11,
                ..
            }
        ),
        "{:?}",
        p.steps[0]
    );
    assert_eq!(p.steps[1].action, Action::Remove { mod_revision: 12 });
}

#[test]
fn a_stored_value_that_is_not_json_is_rewritten() {
    let s = snapshot(vec![policy("a", "10.0.0.0/8")], vec![]);
    let p = plan(PREFIX, &s, &[stored("/p/policies/a", b"{not json", 5)], 6).expect("plan");
    assert_eq!(lines(&p), ["~ policy a"]);
}

#[test]
fn keys_that_are_not_entries_are_left_alone_and_listed() {
    let s = snapshot(vec![], vec![]);
    let kvs = [
        stored("/p/settings", b"x", 2),
        stored("/p/policies/", b"x", 3),
        stored("/p/deployments/d9", b"{}", 4),
    ];
    let p = plan(PREFIX, &s, &kvs, 5).expect("plan");
    assert_eq!(lines(&p), ["- deployment d9"]);
    let ignored: Vec<(&str, &KeyError)> = p
        .ignored
        .iter()
        .map(|i| (i.key.as_str(), &i.reason))
        .collect();
    assert_eq!(
        ignored,
        [
            ("/p/settings", &KeyError::Unknown),
            ("/p/policies/", &KeyError::EmptyId("policies/")),
        ]
    );
}

#[test]
fn an_empty_file_removes_every_entry_deployments_first() {
    let before = snapshot(
        vec![policy("a", "10.0.0.0/8")],
        vec![deployment("d1", &["a"])],
    );
    let p = plan(PREFIX, &snapshot(vec![], vec![]), &published(&before), 4).expect("plan");
    assert_eq!(lines(&p), ["- deployment d1", "- policy a"]);
}

#[test]
fn transactions_hold_at_most_128_steps_in_plan_order() {
    let sizes = |n: usize| {
        let policies = (0..n).map(|i| policy(&format!("p{i:04}"), "10.0.0.0/8"));
        let s = snapshot(policies.collect(), vec![]);
        let p = plan(PREFIX, &s, &[], 1).expect("plan");
        let chunks: Vec<&[Step]> = transactions(&p.steps).collect();
        // Cutting keeps the order: the chunks joined are the plan.
        assert_eq!(chunks.concat(), p.steps, "{n} steps");
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
    };
    assert_eq!(sizes(0), Vec::<usize>::new());
    assert_eq!(sizes(1), [1]);
    assert_eq!(sizes(MAX_TXN_OPS), [128]);
    assert_eq!(sizes(MAX_TXN_OPS + 1), [128, 1]);
    assert_eq!(sizes(300), [128, 128, 44]);
}

#[test]
fn across_transactions_every_policy_is_written_before_any_deployment() {
    let policies: Vec<Value> = (0..200)
        .map(|i| policy(&format!("p{i:03}"), "10.0.0.0/8"))
        .collect();
    let deployments = vec![deployment("a-first-by-name", &["p199"])];
    let p = plan(PREFIX, &snapshot(policies, deployments), &[], 1).expect("plan");
    let chunks: Vec<&[Step]> = transactions(&p.steps).collect();
    assert_eq!(chunks.len(), 2);
    let last = chunks[1];
    assert_eq!(last.last().map(|s| s.kind), Some(Kind::Deployment));
    assert!(chunks[0].iter().all(|s| s.kind == Kind::Policy));
}

//! Snapshot validation: JSON bytes → [`Snapshot`], or every error at once.
//!
//! A snapshot is refused whole when anything in it is wrong, so the operator
//! needs the complete list, each error with its JSON path
//! (`deployments[3].policies[1]: unknown policy "x"`), not the first one
//! serde trips over; errors in one place do not hide errors in another, and
//! do not cascade (a policy whose rules are broken still counts as existing
//! when deployments reference it).
//!
//! The document is read in one streaming pass ([`raw`]): each policy and
//! deployment is read into a typed record and checked ([`check`]) as soon
//! as its closing brace is read, then only the model it makes is kept. A
//! large snapshot is never held as a tree of JSON values (which cost ten
//! times the document in small allocations); what a deployment needs from
//! the policies, which may come later in the document, is resolved at the
//! end. The same per-entry checks serve etcd keys ([`policy_entry`],
//! [`deployment_entry`]).
//!
//! Errors come out in a fixed order: the document's unknown fields, then
//! `version`, then each policy, then each deployment; within an object, its
//! unknown fields in the order written, then its fields in the SPEC's
//! order, a deployment's policy associations last.
//!
//! Decisions worth knowing (also in the README):
//! - Duplicate keys in an object are errors (see `raw`): either reading of
//!   `"policies": ["office"], "policies": []` could open a deployment.
//! - Unknown fields are errors: a typo such as `"polices"` must not
//!   silently open a deployment.
//! - A CIDR with host bits set (`10.0.0.1/8`) is an error that proposes the
//!   network (`10.0.0.0/8`): the snapshot is ambiguous, and guessing either
//!   way could widen or narrow access without anyone noticing.
//! - An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the
//!   IPv4 network it denotes, because mapped sources are matched as IPv4.
//! - A deployment listing the same policy twice is not an error; the second
//!   mention is dropped.

mod check;
mod ip_source;
mod raw;

use std::borrow::Cow;
use std::fmt;

use serde::de::DeserializeSeed;
use serde_json::Value;

pub use self::check::parse_ip_source;
use self::check::{Names, PolicyHeader, Unassociated};
use self::raw::{
    DOCUMENT_FIELDS, DocumentShape, EntrySink, Expect, Kind, Obj, RawDeployment, RawDocument,
    RawPolicy, Shaped, Slot,
};
use super::changed::{Counterparts, Entry, Keep, ReadOver, Whole};
use super::compile::FastMap;
use super::model::{Deployment, Policy, Region, Snapshot};

/// One problem in a snapshot, with the JSON path where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError {
    /// `deployments[3].policies[1]`; empty for whole-document errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a refused snapshot, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotErrors(pub Vec<SnapshotError>);

impl fmt::Display for SnapshotErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid snapshot ({n} error{})",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SnapshotErrors {}

/// Parses and validates snapshot JSON.
pub fn parse_snapshot(json: &[u8]) -> Result<Snapshot, SnapshotErrors> {
    read(json, Whole).map(ReadOver::into_snapshot)
}

/// Parses and validates snapshot JSON as [`parse_snapshot`] does, over
/// the set `over` holds (see [`Counterparts`]): a valid entry that set
/// holds unchanged (same id, same fingerprint) is kept as that set's index
/// and its model dropped as soon as it is read; a new or changed policy is
/// compiled as it is read and only its compiled form kept. The checks and
/// errors are the same either way.
pub fn parse_snapshot_over(
    json: &[u8],
    over: Counterparts<'_>,
) -> Result<ReadOver, SnapshotErrors> {
    read(json, over)
}

fn read<K: Keep>(json: &[u8], keep: K) -> Result<ReadOver<K::Policy>, SnapshotErrors> {
    // One pass over the whole document checks its UTF-8 faster than
    // serde_json checks each string; invalid UTF-8 is read byte by byte
    // for serde_json's error and position.
    match std::str::from_utf8(json) {
        Ok(text) => read_document(serde_json::Deserializer::from_str(text), keep),
        Err(_) => read_document(serde_json::Deserializer::from_slice(json), keep),
    }
}

fn read_document<'de, R: serde_json::de::Read<'de>, K: Keep>(
    mut de: serde_json::Deserializer<R>,
    keep: K,
) -> Result<ReadOver<K::Policy>, SnapshotErrors> {
    let mut doc = Document::new(keep);
    let raw = Expect(DocumentShape(&mut doc))
        .deserialize(&mut de)
        .and_then(|raw| de.end().map(|()| raw))
        .map_err(invalid_json)?;
    doc.finish(raw)
}

/// Validates an already-parsed JSON document.
pub fn validate_value(root: &Value) -> Result<Snapshot, SnapshotErrors> {
    let mut doc = Document::new(Whole);
    let raw = Expect(DocumentShape(&mut doc))
        .deserialize(root)
        .map_err(invalid_json)?;
    doc.finish(raw).map(ReadOver::into_snapshot)
}

/// Parses and validates one policy on its own (an etcd key's value). Paths
/// in errors are relative to the policy.
pub fn policy_entry(json: &[u8]) -> Result<Policy, SnapshotErrors> {
    let Shaped(slot) = entry::<Obj<'_, RawPolicy<'_>>>(json)?;
    let mut errs = Errors::default();
    let (_, policy) = check::policy(slot, Path::Root, &mut errs);
    errs.result(policy)
}

/// Parses and validates one deployment on its own (an etcd key's value),
/// with `policy(id)` saying which policies exist: `None` for an unknown one,
/// else its region. Paths in errors are relative to the deployment.
pub fn deployment_entry<'r>(
    json: &[u8],
    policy: impl Fn(&str) -> Option<&'r Region>,
) -> Result<Deployment, SnapshotErrors> {
    let Shaped(slot) = entry::<Obj<'_, RawDeployment<'_>>>(json)?;
    let mut errs = Errors::default();
    let deployment = check::deployment(slot, Path::Root, 0, &mut Names::default(), &mut errs)
        .and_then(|d| associate(d, Path::Root, |id| policy(id).map(Some), &mut errs));
    errs.result(deployment)
}

/// Reads one entry document with nothing after it.
fn entry<'de, T>(json: &'de [u8]) -> Result<Shaped<T>, SnapshotErrors>
where
    Shaped<T>: serde::Deserialize<'de>,
{
    let mut de = serde_json::Deserializer::from_slice(json);
    serde::Deserialize::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(invalid_json)
}

fn invalid_json(e: serde_json::Error) -> SnapshotErrors {
    SnapshotErrors(vec![SnapshotError {
        path: String::new(),
        message: format!("invalid JSON: {e}"),
    }])
}

/// Adds a deployment's checked policy associations; `None` unless the
/// deployment and they are all valid.
fn associate<'r>(
    d: Unassociated<'_>,
    path: Path<'_>,
    policy: impl Fn(&str) -> Option<Option<&'r Region>>,
    errs: &mut Errors,
) -> Option<Deployment> {
    let policies = check::associations(
        d.policies,
        path.key("policies"),
        d.region.as_ref(),
        policy,
        errs,
    );
    let mut deployment = d.deployment?;
    deployment.policies = policies?;
    Some(deployment)
}

// ---------------------------------------------------------------------------
// Paths and error collection

/// A JSON path as a borrowed chain; rendered only when an error is reported.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn key<'a>(&'a self, k: &'a str) -> Path<'a> {
        Path::Key(self, k)
    }

    fn index(&self, i: usize) -> Path<'_> {
        Path::Index(self, i)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, k) => f.write_str(k),
            Path::Key(p, k) => write!(f, "{p}.{k}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

#[derive(Default)]
struct Errors(Vec<SnapshotError>);

impl Errors {
    fn add(&mut self, path: Path<'_>, message: impl fmt::Display) {
        self.0.push(SnapshotError {
            path: path.to_string(),
            message: message.to_string(),
        });
    }

    /// Reports "expected …, found …"; `None`, for the caller to return.
    fn expected<T>(&mut self, path: Path<'_>, expected: &str, found: &str) -> Option<T> {
        self.add(path, format_args!("expected {expected}, found {found}"));
        None
    }

    fn result<T>(self, value: Option<T>) -> Result<T, SnapshotErrors> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(SnapshotErrors(self.0)),
        }
    }
}

// ---------------------------------------------------------------------------
// The document

/// A document being read: each entry is checked as it arrives and only its
/// model kept (or, read over a set that holds it unchanged, that set's
/// index); deployments wait for the policies to have their associations
/// checked.
struct Document<'de, K: Keep> {
    keep: K,
    /// The valid policies (an invalid one leaves an error, so the document
    /// is refused: the list is only used when complete).
    policies: Vec<Entry<K::Policy>>,
    /// Each policy's region by index (`None` when invalid), and the index
    /// that first used each id.
    regions: Vec<Option<Region>>,
    by_id: FastMap<Cow<'de, str>, usize>,
    policy_errs: Errors,
    deployments: Vec<Pending<'de>>,
    names: Names<'de>,
    deployment_errs: Errors,
}

/// A deployment read, its associations not yet checked.
struct Pending<'de> {
    /// `None` when the entry was not an object.
    checked: Option<Unassociated<'de>>,
    /// Read over a set that holds it unchanged: that set's index (its
    /// model, in `checked`, is then dropped).
    kept: Option<u32>,
    /// Otherwise, where that set holds its previous version.
    was: Option<u32>,
    /// Its errors end here in `deployment_errs`.
    errs_end: usize,
}

impl<'de, K: Keep> EntrySink<'de> for Document<'de, K> {
    fn policy(&mut self, entry: Slot<Obj<'de, RawPolicy<'de>>>) {
        let i = self.regions.len();
        let entries = Path::Root.key("policies");
        let path = entries.index(i);
        let errs = &mut self.policy_errs;
        let (PolicyHeader { id, region }, policy) = check::policy(entry, path, errs);
        if let Some(id) = id {
            match self.by_id.get(&id) {
                Some(first) => errs.add(
                    path.key("id"),
                    format_args!("duplicate policy id \"{id}\" (first used by policies[{first}])"),
                ),
                None => {
                    self.by_id.insert(id, i);
                }
            }
        }
        self.regions.push(region);
        self.policies.extend(policy.map(|p| self.keep.policy(i, p)));
    }

    fn deployment(&mut self, entry: Slot<Obj<'de, RawDeployment<'de>>>) {
        let i = self.deployments.len();
        let entries = Path::Root.key("deployments");
        let path = entries.index(i);
        let errs = &mut self.deployment_errs;
        let mut checked = check::deployment(entry, path, i, &mut self.names, errs);
        let (mut kept, mut was) = (None, None);
        // Compared as it will be once its associations are checked (they
        // need every policy, so that happens at the end).
        if let Some(d) = checked.as_mut()
            && self.keep.compares()
            && let Some(ids) = d.associated()
            && let Some(model) = d.deployment.as_mut()
        {
            model.policies = ids;
            match self.keep.deployment(i, model) {
                Entry::Kept(o) => {
                    kept = Some(o);
                    d.deployment = None;
                }
                Entry::Changed((), o) => was = o,
            }
        }
        self.deployments.push(Pending {
            checked,
            kept,
            was,
            errs_end: errs.0.len(),
        });
    }
}

impl<'de, K: Keep> Document<'de, K> {
    fn new(keep: K) -> Self {
        Self {
            keep,
            policies: Vec::new(),
            regions: Vec::new(),
            by_id: FastMap::default(),
            policy_errs: Errors::default(),
            deployments: Vec::new(),
            names: Names::default(),
            deployment_errs: Errors::default(),
        }
    }

    /// Checks what needs the whole document and assembles the snapshot.
    fn finish(
        mut self,
        raw: Slot<RawDocument<'de>>,
    ) -> Result<ReadOver<K::Policy>, SnapshotErrors> {
        let mut errs = Errors::default();
        let raw = match raw {
            Some(Ok(raw)) => raw,
            Some(Err(kind)) => return Err(not_an_object(kind)),
            None => return Err(not_an_object(Kind::Null)),
        };
        let every = (1 << DOCUMENT_FIELDS.len()) - 1;
        check::unknown_fields(&raw.keys, DOCUMENT_FIELDS, every, Path::Root, &mut errs);
        let version = match &raw.version {
            raw::Scalar::Null => {
                errs.add(Path::Root.key("version"), "missing field");
                None
            }
            v => {
                let n = v.as_u64().filter(|&n| n >= 1);
                if n.is_none() {
                    errs.add(Path::Root.key("version"), "must be a positive integer");
                }
                n
            }
        };
        list_present(raw.policies, "policies", &mut errs);
        errs.0.append(&mut self.policy_errs.0);
        list_present(raw.deployments, "deployments", &mut errs);

        let Self {
            policies,
            regions,
            by_id,
            deployments,
            deployment_errs,
            ..
        } = self;
        let mut deployment_errs = deployment_errs.0.into_iter();
        let mut errs_at = 0;
        let entries = Path::Root.key("deployments");
        let policy = |id: &str| {
            by_id
                .get(id)
                .map(|&i| regions.get(i).and_then(Option::as_ref))
        };
        let mut out = Vec::with_capacity(deployments.len());
        for (i, pending) in deployments.into_iter().enumerate() {
            errs.0
                .extend(deployment_errs.by_ref().take(pending.errs_end - errs_at));
            errs_at = pending.errs_end;
            // An invalid deployment leaves an error, so the document is
            // refused: the list is only used when complete.
            let path = entries.index(i);
            out.extend(match (pending.checked, pending.kept) {
                (Some(d), Some(o)) => {
                    let region = d.region.as_ref();
                    check::associations(d.policies, path.key("policies"), region, policy, &mut errs)
                        .map(|_| Entry::Kept(o))
                }
                (Some(d), None) => associate(d, path, policy, &mut errs)
                    .map(|d| Entry::Changed(Box::new(d), pending.was)),
                (None, _) => None,
            });
        }
        errs.result(version.map(|version| ReadOver {
            version,
            deployments: out,
            policies,
        }))
    }
}

fn not_an_object(kind: Kind) -> SnapshotErrors {
    let mut errs = Errors::default();
    errs.expected::<()>(Path::Root, "an object", kind.phrase());
    SnapshotErrors(errs.0)
}

/// Reports an entry list that is missing or not an array.
fn list_present(slot: Slot<()>, key: &str, errs: &mut Errors) {
    match slot {
        Some(Ok(())) => {}
        Some(Err(kind)) => {
            errs.expected::<()>(Path::Root.key(key), "an array", kind.phrase());
        }
        None => errs.add(Path::Root.key(key), "missing field"),
    }
}

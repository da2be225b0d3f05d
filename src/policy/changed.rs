//! Which entries of a snapshot differ from those a compiled set was
//! compiled from: what [`PolicySet::compile_reusing`] must compile again.
//!
//! The etcd follower knows which keys a watch batch touched; a whole
//! document (file, URL, `PUT /snapshot`) says nothing, so its entries are
//! compared by fingerprint (`super::fingerprint`) with the set in force.

use std::collections::HashSet;
use std::hash::Hash;

use super::compile::{FastMap, PolicySet};
use super::fingerprint::Fingerprint;
use super::model::Snapshot;

/// The entries whose content changed (added, replaced or removed) since a
/// set was compiled, by id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    pub policies: HashSet<String>,
    pub deployments: HashSet<String>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.deployments.is_empty()
    }
}

impl Changed {
    /// The entries of `snapshot` that differ from those `previous` was
    /// compiled from: added, replaced or removed, by id.
    pub fn between(previous: &PolicySet, snapshot: &Snapshot) -> Self {
        let policies = differing(
            previous.policies.iter().map(|p| (&*p.id, p.fingerprint)),
            &snapshot.policies,
            |p| &p.id,
        );
        let deployments = differing(
            previous.deployments.iter().map(|d| (&*d.id, d.fingerprint)),
            &snapshot.deployments,
            |d| &d.id,
        );
        Self {
            policies,
            deployments,
        }
    }
}

/// Ids whose fingerprint differs between `old` and `new`, or that only one
/// of them has. Most entries keep their position from one document to the
/// next, so positions are compared first and a map is built only of the
/// rest.
fn differing<'a, T: Hash>(
    old: impl Iterator<Item = (&'a str, Fingerprint)>,
    new: &'a [T],
    id: impl Fn(&T) -> &str,
) -> HashSet<String> {
    let old: Vec<(&str, Fingerprint)> = old.collect();
    let new = new.iter().map(|e| (id(e), Fingerprint::of(e)));
    let mut matched = vec![false; old.len()];
    let mut unpaired: Vec<(&str, Fingerprint)> = Vec::new();
    for (i, (id, print)) in new.enumerate() {
        match old.get(i) {
            Some(&(old_id, old_print)) if old_id == id => {
                if let Some(m) = matched.get_mut(i) {
                    *m = old_print == print;
                }
                if old_print != print {
                    unpaired.push((id, print));
                }
            }
            _ => unpaired.push((id, print)),
        }
    }
    let mut out = HashSet::new();
    if unpaired.is_empty() && matched.iter().all(|&m| m) {
        return out;
    }
    // The old entries not matched in place, by id.
    let rest: FastMap<&str, Fingerprint> = old
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|(&(id, print), _)| (id, print))
        .collect();
    let mut seen: HashSet<&str> = HashSet::with_capacity(unpaired.len());
    for (id, print) in unpaired {
        seen.insert(id);
        if rest.get(id) != Some(&print) {
            out.insert(id.to_owned());
        }
    }
    // Removed: not matched in place, and not found elsewhere in the new.
    out.extend(
        rest.keys()
            .filter(|id| !seen.contains(*id))
            .map(|id| (*id).to_owned()),
    );
    out
}

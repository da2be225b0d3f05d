//! Fingerprints of snapshot entries, so that a whole document applied over
//! the set in force compiles only what it changed.
//!
//! Each compiled policy and deployment keeps the fingerprint of the model
//! entry it was compiled from. [`Changed::between`] fingerprints a new
//! document's entries and names those that differ (or are new, or gone);
//! [`PolicySet::compile_reusing`] then reuses the rest. A document that
//! changes one policy in a hundred thousand costs its parse and validation,
//! the fingerprints, and a compile of that one policy, and the new set
//! shares the unchanged deployments with the old one instead of holding a
//! second copy while both are alive.
//!
//! A fingerprint is a 64-bit SipHash-1-3 keyed randomly per process (std's
//! `RandomState`): an entry that changed is taken for unchanged only if its
//! two versions collide under a key nobody outside the process knows, a
//! chance of 2⁻⁶⁴ per changed entry.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::OnceLock;

use super::compile::{FastMap, PolicySet};
use super::incremental::Changed;
use super::model::Snapshot;

/// The fingerprint of one snapshot entry (a policy or a deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint(u64);

impl Fingerprint {
    pub(crate) fn of(entry: &impl Hash) -> Self {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        Self(KEYS.get_or_init(RandomState::new).hash_one(entry))
    }
}

impl Changed {
    /// The entries of `snapshot` that differ from those `previous` was
    /// compiled from: added, replaced or removed, by id.
    pub fn between(previous: &PolicySet, snapshot: &Snapshot) -> Self {
        let policies = differing(
            previous.policies.iter().map(|p| (&*p.id, p.fingerprint)),
            snapshot
                .policies
                .iter()
                .map(|p| (p.id.as_str(), Fingerprint::of(p))),
        );
        let deployments = differing(
            previous.deployments.iter().map(|d| (&*d.id, d.fingerprint)),
            snapshot
                .deployments
                .iter()
                .map(|d| (d.id.as_str(), Fingerprint::of(d))),
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
fn differing<'a>(
    old: impl ExactSizeIterator<Item = (&'a str, Fingerprint)>,
    new: impl Iterator<Item = (&'a str, Fingerprint)>,
) -> HashSet<String> {
    let old: Vec<(&str, Fingerprint)> = old.collect();
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

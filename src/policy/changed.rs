//! Which entries of a snapshot differ from those a compiled set was
//! compiled from: what [`PolicySet::compile_reusing`] must compile again.
//!
//! The etcd follower knows which keys a watch batch touched; a whole
//! document (file, URL, `PUT /snapshot`) says nothing, so its entries are
//! compared by fingerprint (`super::fingerprint`) with the set in force.
//! Both find an entry's counterpart by id with the same [`Pairing`].
//! A source that keeps no model of its unchanged entries (the etcd
//! follower) describes its document as a [`Delta`] instead: each entry
//! either kept (its index in the previous set) or changed (its model).

use std::collections::HashSet;
use std::hash::Hash;

use super::compile::{FastMap, PolicySet, index_u32};
use super::fingerprint::Fingerprint;
use super::model::{Deployment, Policy, Snapshot};

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
/// of them has.
fn differing<'a, T: Hash>(
    old: impl Iterator<Item = (&'a str, Fingerprint)>,
    new: &'a [T],
    id: impl Fn(&T) -> &str,
) -> HashSet<String> {
    let (old_ids, old_prints): (Vec<&str>, Vec<Fingerprint>) = old.unzip();
    let pairing = Pairing::new(new.iter().map(&id), &old_ids, &HashSet::new());
    let replaced = new
        .iter()
        .zip(&pairing.old)
        .filter(|&(e, &o)| old_prints.get(o as usize) != Some(&Fingerprint::of(e)))
        .map(|(e, _)| id(e));
    let removed = old_ids
        .iter()
        .zip(&pairing.new)
        .filter(|&(_, &n)| n == NONE)
        .map(|(&id, _)| id);
    replaced.chain(removed).map(str::to_owned).collect()
}

/// One entry of a document described against the set compiled before it.
#[derive(Debug, Clone, Copy)]
pub enum Slot<'a, T> {
    /// Unchanged: the entry at this index of the previous set.
    Kept(u32),
    /// New or changed: its model, and for a changed entry the index of
    /// its previous version in the previous set.
    Changed(&'a T, Option<u32>),
}

/// A document as the entries that changed since the previous set was
/// compiled and the indices, in that set, of those that did not: all an
/// incremental compile reads, so a source that keeps no model of its
/// unchanged entries can still compile (see `reload::etcd::entries`).
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    pub version: u64,
    pub policies: &'a [Slot<'a, Policy>],
    pub deployments: &'a [Slot<'a, Deployment>],
}

/// No counterpart (removed, or new).
pub(super) const NONE: u32 = u32::MAX;

/// How the items of the new snapshot relate to those of the previous set.
pub(super) struct Pairing {
    /// Per new index: the same id's index in the previous set.
    pub(super) old: Vec<u32>,
    /// Per old index: the same id's index in the new snapshot.
    pub(super) new: Vec<u32>,
    /// Per new index: its compiled form can be taken from the previous set.
    pub(super) reuse: Vec<bool>,
}

impl Pairing {
    /// Pairs items by id: the same position first (most items keep theirs),
    /// then one pass over the previous items for those that moved.
    pub(super) fn new<'a>(
        new_ids: impl ExactSizeIterator<Item = &'a str>,
        old_ids: &[&str],
        changed: &HashSet<String>,
    ) -> Self {
        // A fast hash: every id is looked up (`changed` is small).
        let changed: FastMap<&str, ()> = changed.iter().map(|id| (id.as_str(), ())).collect();
        let mut old = vec![NONE; new_ids.len()];
        let mut reuse = vec![false; new_ids.len()];
        let mut moved: FastMap<&str, usize> = FastMap::default();
        for (i, id) in new_ids.enumerate() {
            if old_ids.get(i) == Some(&id) {
                old[i] = index_u32(i);
            } else {
                moved.insert(id, i);
            }
            if let Some(r) = reuse.get_mut(i) {
                *r = changed.is_empty() || !changed.contains_key(id);
            }
        }
        if !moved.is_empty() {
            for (o, id) in old_ids.iter().enumerate() {
                if let Some(&i) = moved.get(id) {
                    old[i] = index_u32(o);
                }
            }
        }
        let mut new = vec![NONE; old_ids.len()];
        for (i, &o) in old.iter().enumerate() {
            if let Some(slot) = new.get_mut(o as usize) {
                *slot = index_u32(i);
            }
        }
        for (r, &o) in reuse.iter_mut().zip(&old) {
            *r &= o != NONE;
        }
        Self { old, new, reuse }
    }

    /// Pairs the items of a [`super::Delta`] with those of a previous set
    /// of `old_len` items: a slot with the item it names (reused when
    /// kept). `None` when a slot names no item of that set, or one another
    /// slot names too: the delta does not describe that set.
    pub(super) fn of_slots<T>(slots: &[Slot<'_, T>], old_len: usize) -> Option<Self> {
        let mut old = vec![NONE; slots.len()];
        let mut new = vec![NONE; old_len];
        let mut reuse = vec![false; slots.len()];
        for (i, slot) in slots.iter().enumerate() {
            let (o, kept) = match *slot {
                Slot::Kept(o) => (o, true),
                Slot::Changed(_, Some(o)) => (o, false),
                Slot::Changed(_, None) => continue,
            };
            let seen = new.get_mut(o as usize)?;
            if *seen != NONE {
                return None;
            }
            *seen = index_u32(i);
            old[i] = o;
            reuse[i] = kept;
        }
        Some(Self { old, new, reuse })
    }

    /// Every item is the previous one, unchanged, at the same index.
    pub(super) fn identity(&self) -> bool {
        self.new.len() == self.reuse.len() && (0..self.reuse.len()).all(|i| self.same(i))
    }

    pub(super) fn reused(&self, i: usize) -> Option<usize> {
        self.reuse
            .get(i)
            .copied()
            .unwrap_or(false)
            .then(|| self.old.get(i).map(|&o| o as usize))
            .flatten()
    }

    /// Whether the item at new index `i` is the previous one, unchanged,
    /// at the same index: nothing keyed by its index needs touching.
    pub(super) fn same(&self, i: usize) -> bool {
        self.reused(i) == Some(i)
    }
}

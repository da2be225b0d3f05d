//! A document described against the set compiled before it: each entry
//! either kept (its index in that set) or changed (its model), a
//! [`Delta`], which [`PolicySet::compile_delta`] compiles.
//!
//! The etcd follower knows which keys a watch batch touched. A whole
//! document (file, URL, `PUT /snapshot`) says nothing, so it is read over
//! the set in force ([`Counterparts`], [`ReadOver`]): each entry is
//! compared by fingerprint (`super::fingerprint`) with the same id's as
//! it is read, and an unchanged one is kept by index, its model dropped.

use std::cell::OnceCell;
use std::hash::Hash;
use std::sync::Arc;

use super::compile::{CompiledDeployment, CompiledPolicy, FastMap, PolicySet, index_u32};
use super::fingerprint::Fingerprint;
use super::model::{Deployment, Policy};

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

/// An entry of a document read over the set compiled before it
/// ([`super::validate::parse_snapshot_over`]): that set's entry, unchanged,
/// by its index; or the entry's model, with its previous version's index.
///
/// The model is boxed: a kept entry then takes 16 bytes in its list, not
/// the size of a model (over 100 bytes), and most entries of a reload are
/// kept.
#[derive(Debug)]
pub enum Entry<T> {
    Kept(u32),
    Changed(Box<T>, Option<u32>),
}

impl<T> Entry<T> {
    pub fn slot(&self) -> Slot<'_, T> {
        match self {
            Self::Kept(o) => Slot::Kept(*o),
            Self::Changed(m, was) => Slot::Changed(m, *was),
        }
    }

    /// The model, unless the entry was kept.
    pub fn model(self) -> Option<T> {
        match self {
            Self::Kept(_) => None,
            Self::Changed(m, _) => Some(*m),
        }
    }
}

/// A document read over a compiled set: the model of each entry that set
/// does not hold unchanged, the index there of each it does. An unchanged
/// entry's model is dropped as soon as it is read, so reading a document
/// that changes little over the set in force holds little besides the
/// document.
#[derive(Debug)]
pub struct ReadOver {
    pub version: u64,
    pub policies: Vec<Entry<Policy>>,
    pub deployments: Vec<Entry<Deployment>>,
}

impl ReadOver {
    /// How many entries are new or changed (removed ones not counted).
    pub fn changed(&self) -> usize {
        fn changed<T>(entries: &[Entry<T>]) -> usize {
            entries
                .iter()
                .filter(|e| matches!(e, Entry::Changed(..)))
                .count()
        }
        changed(&self.policies) + changed(&self.deployments)
    }

    /// The document, when it was read over no set (every entry has its
    /// model).
    pub fn into_snapshot(self) -> super::model::Snapshot {
        super::model::Snapshot {
            version: self.version,
            policies: self.policies.into_iter().filter_map(Entry::model).collect(),
            deployments: self
                .deployments
                .into_iter()
                .filter_map(Entry::model)
                .collect(),
        }
    }

    /// Compiles the document over `previous`, the set it was read over, as
    /// [`PolicySet::compile`] would compile it whole. `None` when it was
    /// read over another set (see [`PolicySet::compile_delta`]).
    pub fn compile(
        &self,
        options: super::PolicyOptions,
        previous: &PolicySet,
    ) -> Option<PolicySet> {
        let policies: Vec<Slot<'_, Policy>> = self.policies.iter().map(Entry::slot).collect();
        let deployments: Vec<Slot<'_, Deployment>> =
            self.deployments.iter().map(Entry::slot).collect();
        let delta = Delta {
            version: self.version,
            policies: &policies,
            deployments: &deployments,
        };
        PolicySet::compile_delta(delta, options, previous)
    }
}

/// The entries of a compiled set, found by id, to read a document over:
/// each entry read is compared, by fingerprint, with the same id's.
pub struct Counterparts<'p> {
    set: &'p PolicySet,
    policies: Side<'p, CompiledPolicy>,
    deployments: Side<'p, CompiledDeployment>,
}

impl<'p> Counterparts<'p> {
    /// `None` when `set` was compiled with other options: none of it can
    /// be reused.
    pub fn new(set: &'p PolicySet, options: super::PolicyOptions) -> Option<Self> {
        (set.options == options).then(|| Self {
            set,
            policies: Side::new(&set.policies),
            deployments: Side::new(&set.deployments),
        })
    }

    pub fn set(&self) -> &'p PolicySet {
        self.set
    }

    /// `policy`, read at `position` in its document, against the set's.
    pub fn policy(&self, position: usize, policy: Policy) -> Entry<Policy> {
        let found = self.policies.find(position, &policy.id);
        self.policies.entry(policy, found)
    }

    /// `deployment`, read at `position` in its document, against the set's.
    pub fn deployment(&self, position: usize, deployment: Deployment) -> Entry<Deployment> {
        let found = self.deployments.find(position, &deployment.id);
        self.deployments.entry(deployment, found)
    }
}

/// A compiled entry's id and the fingerprint of the model it came from.
trait Compiled {
    fn id(&self) -> &str;
    fn fingerprint(&self) -> Fingerprint;
}

impl Compiled for CompiledPolicy {
    fn id(&self) -> &str {
        &self.id
    }

    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl Compiled for CompiledDeployment {
    fn id(&self) -> &str {
        &self.id
    }

    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// One list of a compiled set's entries, by position and by id.
struct Side<'p, C> {
    entries: &'p [Arc<C>],
    /// Built at the first entry found away from its previous position.
    by_id: OnceCell<FastMap<&'p str, u32>>,
}

impl<'p, C: Compiled> Side<'p, C> {
    fn new(entries: &'p [Arc<C>]) -> Self {
        Self {
            entries,
            by_id: OnceCell::new(),
        }
    }

    /// The index of `id`: `position` when it has not moved (most entries
    /// keep theirs), else through the map.
    fn find(&self, position: usize, id: &str) -> Option<u32> {
        if self.entries.get(position).map(|c| c.id()) == Some(id) {
            return Some(index_u32(position));
        }
        let by_id = self.by_id.get_or_init(|| {
            let mut map = FastMap::default();
            map.reserve(self.entries.len());
            for (i, c) in self.entries.iter().enumerate() {
                map.entry(c.id()).or_insert(index_u32(i));
            }
            map
        });
        by_id.get(id).copied()
    }

    /// Kept when the entry `found` has the same fingerprint.
    fn entry<T: Hash>(&self, model: T, found: Option<u32>) -> Entry<T> {
        let print = found
            .and_then(|o| self.entries.get(o as usize))
            .map(|c| c.fingerprint());
        match found {
            Some(o) if print == Some(Fingerprint::of(&model)) => Entry::Kept(o),
            was => Entry::Changed(Box::new(model), was),
        }
    }
}

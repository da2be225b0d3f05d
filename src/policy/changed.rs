//! A document described against the set compiled before it: each entry
//! either kept (its index in that set) or changed (a policy compiled, a
//! deployment's model), a [`Delta`], which [`PolicySet::compile_delta`]
//! compiles.
//!
//! The etcd follower knows which keys a watch batch touched. A whole
//! document (file, URL, `PUT /snapshot`) says nothing, so it is read over
//! the set in force ([`Counterparts`], [`ReadOver`]): each entry is
//! compared by fingerprint (`super::fingerprint`) with the same id's as
//! it is read, and an unchanged one is kept by index, its model dropped.
//! A changed or new policy is compiled as it is read, so a document's
//! rules are never all held as models; a first load is read the same way,
//! over no set.

use std::cell::OnceCell;
use std::hash::Hash;
use std::sync::Arc;

use super::compile::{
    CompiledDeployment, CompiledPolicy, FastMap, PolicySet, compile_policy, index_u32,
};
use super::fingerprint::Fingerprint;
use super::model::{Deployment, Policy, Snapshot};

/// One entry of a document described against the set compiled before it.
#[derive(Debug, Clone, Copy)]
pub enum Slot<'a, T> {
    /// Unchanged: the entry at this index of the previous set.
    Kept(u32),
    /// New or changed: what compiles it (a policy's compiled form, a
    /// deployment's model), and for a changed entry the index of its
    /// previous version in the previous set.
    Changed(&'a T, Option<u32>),
}

/// A document as the entries that changed since the previous set was
/// compiled and the indices, in that set, of those that did not: all an
/// incremental compile reads, so a source that keeps no model of its
/// unchanged entries can still compile (see `reload::etcd::entries`).
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    pub version: u64,
    /// New and changed policies come compiled: a reader compiles each as
    /// it is read, so their rules are never all held at once.
    pub policies: &'a [Slot<'a, Arc<CompiledPolicy>>],
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
/// by its index; or what was kept of the entry (its model, or for a policy
/// its compiled form), with its previous version's index.
#[derive(Debug)]
pub enum Entry<T> {
    Kept(u32),
    Changed(T, Option<u32>),
}

impl<T> Entry<T> {
    /// What was kept of the entry, unless it is the previous set's.
    pub fn changed(self) -> Option<T> {
        match self {
            Self::Kept(_) => None,
            Self::Changed(m, _) => Some(m),
        }
    }

    fn is_changed(&self) -> bool {
        matches!(self, Self::Changed(..))
    }
}

/// What a document being read keeps of each valid entry
/// (`super::validate`).
pub trait Keep {
    /// What is kept of a new or changed policy.
    type Policy;

    /// `policy`, the valid entry at `position` of its document's list.
    fn policy(&self, position: usize, policy: Policy) -> Entry<Self::Policy>;

    /// Whether deployments are compared with a set's as they are read
    /// ([`Keep::deployment`]); if not, each is kept whole.
    fn compares(&self) -> bool;

    /// Whether `deployment`, the valid entry at `position` of its list
    /// with its associations as they will be once checked, is the compared
    /// set's entry unchanged (kept, by index) or not (changed, with where
    /// that set holds its previous version). Asked only when
    /// [`Keep::compares`].
    fn deployment(&self, position: usize, deployment: &Deployment) -> Entry<()>;
}

/// Keeps every entry's model: the document whole, as a [`Snapshot`].
pub struct Whole;

impl Keep for Whole {
    type Policy = Policy;

    fn policy(&self, _: usize, policy: Policy) -> Entry<Policy> {
        Entry::Changed(policy, None)
    }

    fn compares(&self) -> bool {
        false
    }

    fn deployment(&self, _: usize, _: &Deployment) -> Entry<()> {
        Entry::Changed((), None)
    }
}

/// A document as read: each entry kept as a [`Keep`] keeps it (in order),
/// its associations checked.
#[derive(Debug)]
pub struct ReadOver<P = Arc<CompiledPolicy>> {
    pub version: u64,
    pub policies: Vec<Entry<P>>,
    pub deployments: Vec<Entry<Box<Deployment>>>,
}

impl<P> ReadOver<P> {
    /// How many entries are new or changed (removed ones not counted).
    pub fn changed(&self) -> usize {
        let policies = self.policies.iter().filter(|e| e.is_changed()).count();
        policies + self.deployments.iter().filter(|e| e.is_changed()).count()
    }
}

impl ReadOver<Policy> {
    /// The document read whole ([`Whole`] keeps every model).
    pub fn into_snapshot(self) -> Snapshot {
        Snapshot {
            version: self.version,
            policies: self
                .policies
                .into_iter()
                .filter_map(Entry::changed)
                .collect(),
            deployments: self
                .deployments
                .into_iter()
                .filter_map(|e| e.changed().map(|d| *d))
                .collect(),
        }
    }
}

impl ReadOver {
    /// Compiles the document as [`PolicySet::compile`] would compile it
    /// whole: over `previous`, the set it was read over, reusing what that
    /// set holds unchanged; with none, from the policies compiled as they
    /// were read. `None` when it was read over another set (see
    /// [`PolicySet::compile_delta`]).
    pub fn compile(
        &self,
        options: super::PolicyOptions,
        previous: Option<&PolicySet>,
    ) -> Option<PolicySet> {
        let Some(previous) = previous else {
            let policies = self.policies.iter().map(|e| match e {
                Entry::Changed(p, _) => Some(p.clone()),
                Entry::Kept(_) => None,
            });
            let deployments = self.deployments.iter().map(|e| match e {
                Entry::Changed(d, _) => Some(&**d),
                Entry::Kept(_) => None,
            });
            let policies: Option<Box<[_]>> = policies.collect();
            let deployments: Option<Vec<_>> = deployments.collect();
            return Some(PolicySet::assemble(
                self.version,
                policies?,
                &deployments?,
                options,
            ));
        };
        let policies: Vec<Slot<'_, Arc<CompiledPolicy>>> = self
            .policies
            .iter()
            .map(|e| match e {
                Entry::Kept(o) => Slot::Kept(*o),
                Entry::Changed(p, was) => Slot::Changed(p, *was),
            })
            .collect();
        let deployments: Vec<Slot<'_, Deployment>> = self
            .deployments
            .iter()
            .map(|e| match e {
                Entry::Kept(o) => Slot::Kept(*o),
                Entry::Changed(d, was) => Slot::Changed(&**d, *was),
            })
            .collect();
        let delta = Delta {
            version: self.version,
            policies: &policies,
            deployments: &deployments,
        };
        PolicySet::compile_delta(delta, options, previous)
    }
}

/// Reads a document over a compiled set (or over none, for a first load):
/// each entry is compared, by fingerprint, with the same id's in that set,
/// and kept by index when they are the same; a new or changed policy is
/// compiled as it is read, so that a document's rules are never all held
/// as models.
pub struct Counterparts<'p> {
    policies: Side<'p, CompiledPolicy>,
    deployments: Side<'p, CompiledDeployment>,
}

impl<'p> Counterparts<'p> {
    /// Over `set`; `None` when it was compiled with other options: none of
    /// it can be reused.
    pub fn new(set: &'p PolicySet, options: super::PolicyOptions) -> Option<Self> {
        (set.options == options).then(|| Self {
            policies: Side::new(&set.policies),
            deployments: Side::new(&set.deployments),
        })
    }

    /// Over no set: every entry is new.
    pub fn none() -> Self {
        Self {
            policies: Side::new(&[]),
            deployments: Side::new(&[]),
        }
    }
}

impl Keep for Counterparts<'_> {
    type Policy = Arc<CompiledPolicy>;

    fn policy(&self, position: usize, policy: Policy) -> Entry<Arc<CompiledPolicy>> {
        let found = self.policies.find(position, &policy.id);
        match self.policies.entry(&policy, found) {
            Entry::Kept(o) => Entry::Kept(o),
            Entry::Changed((), was) => Entry::Changed(Arc::new(compile_policy(&policy)), was),
        }
    }

    fn compares(&self) -> bool {
        !self.deployments.entries.is_empty()
    }

    fn deployment(&self, position: usize, deployment: &Deployment) -> Entry<()> {
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
        // Over no set (a first load): nothing to hash the id against.
        if self.entries.is_empty() {
            return None;
        }
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

    /// Kept when the entry `found` has the same fingerprint as `model`;
    /// else changed, with where its previous version is.
    fn entry<T: Hash>(&self, model: &T, found: Option<u32>) -> Entry<()> {
        let print = found
            .and_then(|o| self.entries.get(o as usize))
            .map(|c| c.fingerprint());
        match found {
            Some(o) if print == Some(Fingerprint::of(model)) => Entry::Kept(o),
            was => Entry::Changed((), was),
        }
    }
}

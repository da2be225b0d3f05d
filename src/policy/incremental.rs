//! Compiling a snapshot from the set compiled for the one before it.
//!
//! The etcd follower changes a few entries at a time in a world of
//! hundreds of thousands; compiling it all again for each change costs
//! hundreds of milliseconds at the large scale; a whole document reloaded
//! over the set in force mostly repeats it. [`PolicySet::compile_delta`]
//! builds the same set (the same answers, indices and statistics as
//! [`PolicySet::compile`]) while reusing what the change did not touch:
//! - an unchanged policy's compiled form, its IP matcher included, is
//!   shared (a reference count; no range is copied);
//! - an associated set whose policies are all unchanged, in the same
//!   order, keeps its merged matcher (shared: its labels are its own);
//! - a new merged matcher is merged from its policies' compiled matchers,
//!   never from their rules;
//! - an unchanged deployment's compiled data is shared (a reference count),
//!   and when no deployment changed the list and the name map are shared
//!   whole;
//! - otherwise the name map, and the endpoint maps always, are copied and
//!   patched for what changed or moved.
//!
//! What is left is linear but cheap (pairing ids, the hot records and
//! reference counts): see `cargo bench --bench etcd_apply`.
//!
//! Indices stay positions in the snapshot, as [`PolicySet::compile`] makes
//! them, so that decisions report the same [`super::PolicyIndex`] and
//! merged matchers break ties the same way.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

use super::changed::{Delta, NONE, Pairing, Slot};
use super::compile::{
    AssociatedSet, CompiledDeployment, CompiledPolicy, EndpointKey, EndpointMaps, FastMap, Hits,
    Hot, IpTotals, Members, NameEntry, PolicyOptions, PolicySet, associated_set,
    compile_deployment, hot_record, index_u32, members_of, name,
};

/// A previous set that cannot be carried over: its users look theirs up.
const PENDING: u32 = u32::MAX - 1;

impl PolicySet {
    /// Compiles the document `delta` describes against `previous`, as
    /// [`PolicySet::compile`] would compile it whole. `previous` must be
    /// the set the [`Slot::Kept`] indices point into, and the document
    /// valid: a deployment kept is taken to associate the same policies,
    /// which holds when every id it names exists (as validation and the
    /// etcd entries ensure). `None` when a kept
    /// index is not one of `previous` or is kept twice: the delta was not
    /// made against that set.
    pub fn compile_delta(
        delta: Delta<'_>,
        options: PolicyOptions,
        previous: &PolicySet,
    ) -> Option<Self> {
        if options != previous.options {
            return None;
        }
        Some(Reuse::new(delta, previous)?.build(options))
    }
}

/// One incremental compile under way.
struct Reuse<'a> {
    delta: Delta<'a>,
    previous: &'a PolicySet,
    policies: Pairing,
    deployments: Pairing,
}

impl<'a> Reuse<'a> {
    fn new(delta: Delta<'a>, previous: &'a PolicySet) -> Option<Self> {
        Some(Self {
            delta,
            previous,
            policies: Pairing::of_slots(delta.policies, previous.policies.len())?,
            deployments: Pairing::of_slots(delta.deployments, previous.deployments.len())?,
        })
    }

    fn build(self, options: PolicyOptions) -> PolicySet {
        let (policies, ip_totals) = self.policies();
        let (sets, set_of) = self.sets(&policies);
        let (hot, deployments) = self.deployments(&sets, &set_of);
        let names = self.names(&deployments);
        let endpoints = self.endpoints(&policies);
        PolicySet {
            version: self.delta.version,
            options,
            hot: hot.into_boxed_slice(),
            deployments,
            policies,
            sets: sets.into_boxed_slice(),
            names,
            endpoints,
            ip_totals,
        }
    }

    /// Every policy: unchanged ones shared from the previous set, others
    /// compiled; and their `ip` totals, counted in the same pass (each
    /// policy's reference count is touched anyway).
    fn policies(&self) -> (Box<[Arc<CompiledPolicy>]>, IpTotals) {
        let old = &self.previous.policies;
        let mut totals = IpTotals::default();
        let policies = self
            .delta
            .policies
            .iter()
            .filter_map(|slot| match *slot {
                // Always there: `Pairing::of_slots` checked it.
                Slot::Kept(o) => old.get(o as usize).cloned(),
                Slot::Changed(p, _) => Some(p.clone()),
            })
            .inspect(|p| totals = totals.with(p))
            .collect();
        (policies, totals)
    }

    /// The associated sets the deployments use, and per deployment (new
    /// index) its set. A reused deployment keeps its previous set when
    /// that set's policies are all unchanged (renumbered, matcher shared);
    /// others find an equal set or make one: a reused deployment whose set
    /// holds a changed policy by its previous set's members, renumbered;
    /// a changed deployment by the ids it names.
    fn sets(&self, policies: &[Arc<CompiledPolicy>]) -> (Vec<Arc<AssociatedSet>>, Vec<u32>) {
        let previous = self.previous;
        let mut sets = Vec::new();
        // Per previous set: its new index, NONE until seen, PENDING when it
        // cannot be carried over (then its members, renumbered, are in
        // `lists` at the index `list_of` holds).
        let mut new_of_old = vec![NONE; previous.sets.len()];
        let mut list_of = vec![NONE; previous.sets.len()];
        let mut lists: Vec<Box<[u32]>> = Vec::new();
        // Deployments to find or make a set for: (new index, list).
        let mut pending: Vec<(usize, u32)> = Vec::new();
        let mut set_of = vec![NONE; self.delta.deployments.len()];
        let mut members = Vec::new();
        for (di, slot) in set_of.iter_mut().enumerate() {
            let Some(old) = self.deployments.reused(di) else {
                continue;
            };
            let Some(s) = previous.hot.get(old).map(|h| h.set as usize) else {
                continue;
            };
            let (Some(known), Some(list)) = (new_of_old.get_mut(s), list_of.get_mut(s)) else {
                continue;
            };
            if *known == NONE {
                let Some(old_set) = previous.sets.get(s) else {
                    continue;
                };
                if self.renumber_members(old_set, &mut members) {
                    sets.push(self.carry_set(old_set, &members));
                    *known = index_u32(sets.len() - 1);
                } else {
                    *known = PENDING;
                    // Unknown ids are left out, as `compile` does.
                    members.retain(|&p| p != NONE);
                    members.sort_unstable();
                    members.dedup();
                    *list = index_u32(lists.len());
                    lists.push(members.as_slice().into());
                }
            }
            if *known == PENDING {
                pending.push((di, *list));
            } else {
                *slot = *known;
            }
        }
        let index = self.policy_indices_for();
        for (di, slot) in self.delta.deployments.iter().enumerate() {
            if let Slot::Changed(d, _) = slot {
                pending.push((di, index_u32(lists.len())));
                lists.push(members_of(d, |id| index.get(id).copied()));
            }
        }
        self.find_or_make_sets(&mut sets, &mut set_of, policies, &pending, &lists);
        (sets, set_of)
    }

    /// Gives each pending deployment the set of its policies (`lists`):
    /// an equal one if there is one (carried sets are distinct, so only
    /// these need looking up), else a new one.
    fn find_or_make_sets(
        &self,
        sets: &mut Vec<Arc<AssociatedSet>>,
        set_of: &mut [u32],
        policies: &[Arc<CompiledPolicy>],
        pending: &[(usize, u32)],
        lists: &[Box<[u32]>],
    ) {
        if pending.is_empty() {
            return;
        }
        let mut by_members: FastMap<&[u32], u32> = lists.iter().map(|m| (&**m, NONE)).collect();
        // Only a carried set of the same size and first member can equal a
        // pending list: checked with no hashing of the other sets.
        let shapes: FastMap<(usize, Option<u32>), ()> = lists
            .iter()
            .map(|m| ((m.len(), m.first().copied()), ()))
            .collect();
        for (s, set) in sets.iter().enumerate() {
            let members = set.policies.as_slice();
            if !shapes.contains_key(&(members.len(), members.first().copied())) {
                continue;
            }
            if let Some(slot) = by_members.get_mut(members) {
                *slot = index_u32(s);
            }
        }
        for &(di, list) in pending {
            let Some(members) = lists.get(list as usize) else {
                continue;
            };
            let Some(known) = by_members.get_mut(&**members) else {
                continue;
            };
            if *known == NONE {
                sets.push(Arc::new(associated_set(members, policies)));
                *known = index_u32(sets.len() - 1);
            }
            if let Some(slot) = set_of.get_mut(di) {
                *slot = *known;
            }
        }
    }

    /// Fills `members` with a previous set's members in this snapshot's
    /// numbering; true when its ranges can be carried over: its policies
    /// are all unchanged and keep their order, so the lowest rule id of a
    /// range still names the same rule.
    fn renumber_members(&self, old: &AssociatedSet, members: &mut Vec<u32>) -> bool {
        members.clear();
        let new_of = |p: &u32| self.policies.new.get(*p as usize).copied().unwrap_or(NONE);
        members.extend(old.policies.as_slice().iter().map(new_of));
        members.windows(2).all(|w| w[0] < w[1])
            && members
                .iter()
                .all(|&p| self.policies.reused(p as usize).is_some())
    }

    /// A previous set whose policies are all unchanged, in this snapshot's
    /// numbering (`members`): shared when they kept their indices, else
    /// renumbered, its matcher shared either way (its labels count rules
    /// within the set, so they need no renumbering).
    fn carry_set(&self, old: &Arc<AssociatedSet>, members: &[u32]) -> Arc<AssociatedSet> {
        if old.policies.as_slice() == members {
            return old.clone();
        }
        let new_of = |p: u32| self.policies.new.get(p as usize).copied().unwrap_or(NONE);
        Arc::new(AssociatedSet {
            policies: Members::new(members),
            ip: old.ip.clone(),
            ip_policies: old
                .ip_policies
                .iter()
                .map(|&(p, first)| (new_of(p), first))
                .collect(),
            filters: old.filters,
        })
    }

    /// New policy indices of the ids the changed deployments name: one
    /// pass over the policies instead of a map of them all, and none when
    /// no deployment changed.
    fn policy_indices_for(&self) -> FastMap<&'a str, u32> {
        let mut wanted: FastMap<&str, u32> = FastMap::default();
        for slot in self.delta.deployments {
            if let Slot::Changed(d, _) = slot {
                wanted.extend(d.policies.iter().map(|p| (p.as_str(), NONE)));
            }
        }
        if !wanted.is_empty() {
            let old = &self.previous.policies;
            for (pi, slot) in self.delta.policies.iter().enumerate() {
                let id = match *slot {
                    Slot::Kept(o) => old.get(o as usize).map(|p| &*p.id),
                    Slot::Changed(p, _) => Some(&*p.id),
                };
                if let Some(slot) = id.and_then(|id| wanted.get_mut(id)) {
                    *slot = index_u32(pi);
                }
            }
            // Unknown ids are left out, as `compile` does.
            wanted.retain(|_, pi| *pi != NONE);
        }
        wanted
    }

    /// Each deployment's hot record (its set renumbered) and compiled form:
    /// the previous one, shared, unless it changed. When none changed or
    /// moved, the whole list is shared.
    fn deployments(
        &self,
        sets: &[Arc<AssociatedSet>],
        set_of: &[u32],
    ) -> (Vec<Hot>, Arc<[Arc<CompiledDeployment>]>) {
        let previous = self.previous;
        let shared = self.deployments.identity();
        let count = self.delta.deployments.len();
        let mut hot = Vec::with_capacity(count);
        let mut deployments = Vec::with_capacity(if shared { 0 } else { count });
        for (di, slot) in self.delta.deployments.iter().enumerate() {
            let set = set_of.get(di).copied().unwrap_or(NONE);
            let Some(assoc) = sets.get(set as usize) else {
                continue;
            };
            let prev = match *slot {
                Slot::Kept(o) => {
                    let o = o as usize;
                    previous.deployments.get(o).zip(previous.hot.get(o))
                }
                Slot::Changed(..) => None,
            };
            match (prev, slot) {
                (Some((prev, prev_hot)), _) => {
                    // Its own flags are as they were: read them from the
                    // previous (dense) records, not the document.
                    hot.push(Hot::in_set(assoc, set, prev_hot.dry_run, prev_hot.products));
                    if !shared {
                        deployments.push(prev.clone());
                    }
                }
                (None, Slot::Changed(d, _)) => {
                    hot.push(hot_record(d, assoc, set));
                    deployments.push(Arc::new(compile_deployment(d)));
                }
                // Not reached: `Pairing::of_slots` checked every kept index.
                (None, Slot::Kept(_)) => {}
            }
        }
        if shared {
            return (hot, previous.deployments.clone());
        }
        (hot, deployments.into())
    }

    /// The previous name map, less the names of deployments that changed
    /// or moved, plus theirs now.
    fn names(&self, deployments: &[Arc<CompiledDeployment>]) -> Arc<FastMap<Arc<str>, NameEntry>> {
        if self.deployments.identity() {
            return self.previous.names.clone();
        }
        let mut names = FastMap::clone(&self.previous.names);
        for (o, prev) in self.previous.deployments.iter().enumerate() {
            let n = self.deployments.new.get(o).copied().unwrap_or(NONE);
            if n == NONE || !self.deployments.same(n as usize) {
                names.remove(&prev.id);
                if let Some(alias) = &prev.alias {
                    names.remove(alias);
                }
            }
        }
        for (di, d) in deployments.iter().enumerate() {
            if !self.deployments.same(di) {
                name(&mut names, d, index_u32(di));
            }
        }
        Arc::new(names)
    }

    /// The previous endpoint maps, with the pairs of private policies that
    /// changed or moved taken out and their pairs now put in; shared
    /// whole when there are none.
    fn endpoints(&self, policies: &[Arc<CompiledPolicy>]) -> Arc<EndpointMaps> {
        let previous = self.previous;
        // Pairs to take out (previous policy indices) and to put in.
        let mut gone: HashSet<u32> = HashSet::new();
        let mut touched: FastMap<EndpointKey, Vec<(u32, u32)>> = FastMap::default();
        // The pairing is asked first: it is dense, and only a policy that
        // changed or moved is read (reading every policy's endpoint list
        // was 2 ms at the large scale for a change to one `ip` policy).
        for (o, prev) in previous.policies.iter().enumerate() {
            let n = self.policies.new.get(o).copied().unwrap_or(NONE);
            if (n == NONE || !self.policies.same(n as usize)) && !prev.endpoints.is_empty() {
                gone.insert(index_u32(o));
                for (key, _) in prev.endpoints.iter() {
                    touched.entry(*key).or_default();
                }
            }
        }
        for (pi, p) in policies.iter().enumerate() {
            if !self.policies.same(pi) && !p.endpoints.is_empty() {
                for &(key, ri) in p.endpoints.iter() {
                    touched.entry(key).or_default().push((index_u32(pi), ri));
                }
            }
        }
        if touched.is_empty() {
            return previous.endpoints.clone();
        }
        let mut maps = EndpointMaps::clone(&previous.endpoints);
        for (key, added) in touched {
            match key {
                EndpointKey::Vpce(k) => patch(&mut maps.vpce, k, &gone, added),
                EndpointKey::Azure(k) => patch(&mut maps.azure, k, &gone, added),
                EndpointKey::Gcp(k) => patch(&mut maps.gcp, k, &gone, added),
            }
        }
        Arc::new(maps)
    }
}

/// Replaces one id's pairs: the kept ones (not from a `gone` policy) and
/// the `added` ones, sorted as `compile` lists them.
fn patch<K: Eq + Hash>(
    map: &mut FastMap<K, Hits>,
    key: K,
    gone: &HashSet<u32>,
    added: Vec<(u32, u32)>,
) {
    let mut pairs: Vec<(u32, u32)> = map
        .remove(&key)
        .into_iter()
        .flat_map(|h| h.iter().copied().collect::<Vec<_>>())
        .filter(|(p, _)| !gone.contains(p))
        .collect();
    pairs.extend(added);
    pairs.sort_unstable();
    if let Some(hits) = Hits::from_sorted(&pairs) {
        map.insert(key, hits);
    }
}

//! The entries in force, kept one by one (SPEC §3.1), and the pure rules
//! that decide what a batch of changes does to them.
//!
//! Each key is validated on its own: a policy as a document holding only
//! that policy; a deployment as a document holding it and a stub of each
//! policy it names (id, type, region: all that association checks read),
//! so validating a deployment never copies a large policy's rules. The
//! checks that span entries are made here: a key's id must equal the
//! object's, names (ids and aliases) must be unique, a policy cannot move
//! to a region its deployments are not in, and a policy still associated
//! cannot be deleted.
//!
//! A refused change leaves the entry's last valid version in force (or no
//! entry, if it never had one) and is kept with its error. Refused changes
//! are retried with every batch, because a later change can make them
//! valid: the policy a deployment names arrives, or the deployment that
//! held on to a deleted policy lets go of it.
//!
//! What is kept of an entry in force is what those checks read (a
//! policy's region; a deployment's names, region and policies) and where
//! the compiled set holds it. Its model (a policy's rules, a deployment's
//! backends) is kept only from its change to the compile that takes it
//! in ([`Entries::compile`]): the compiled set is the state in force, and
//! a follower does not hold the world twice. With a state directory, each
//! entry's value is kept as etcd sent it, so the state is saved
//! ([`Entries::state_document`]) without a model either.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::keys::{self, Kind};
use crate::policy::compile::{CompiledPolicy, compile_policy, index_u32};
use crate::policy::validate::{deployment_entry, policy_entry};
use crate::policy::{
    Delta, Deployment, DeploymentIndex, Policy, PolicyIndex, PolicyOptions, PolicySet, Region,
    Slot, Snapshot, SnapshotErrors,
};

/// One key's new state, from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Bytes),
    Delete,
}

/// A refused entry, as `GET /snapshot` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub key: String,
    pub message: String,
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Entries whose version in force changed (put, replaced or removed).
    pub changed: usize,
    /// Changes refused in this batch (new refusals and retries that still
    /// fail).
    pub refused: usize,
}

/// Not in the set last compiled (a new entry).
const NOWHERE: u32 = u32::MAX;

/// One entry in force.
#[derive(Debug, Clone)]
struct Held<S, M> {
    /// What the checks that span entries read.
    stub: S,
    /// Its index in the set last compiled, if it was there.
    compiled_at: u32,
    /// Its model, from its change to the next compile.
    model: Option<Box<M>>,
}

impl<S, M> Held<S, M> {
    fn slot(&self) -> Slot<'_, M> {
        match &self.model {
            Some(m) => Slot::Changed(m, self.was()),
            None => Slot::Kept(self.compiled_at),
        }
    }

    /// Its index in the set last compiled, if it was there.
    fn was(&self) -> Option<u32> {
        (self.compiled_at != NOWHERE).then_some(self.compiled_at)
    }

    /// Whether every item still has its model.
    fn all_modelled(items: &[Self]) -> bool {
        items.iter().all(|h| h.model.is_some())
    }

    /// The items' models, moved out.
    fn take_models(items: &mut [Self]) -> Vec<M> {
        items
            .iter_mut()
            .filter_map(|h| h.model.take().map(|m| *m))
            .collect()
    }

    /// After a compile: each item is where the set holds it, its model
    /// taken in.
    fn compiled(items: &mut [Self]) {
        for (i, held) in items.iter_mut().enumerate() {
            held.compiled_at = index_u32(i);
            held.model = None;
        }
    }
}

// Ids are shared (`Arc<str>`) between a stub and the indexes that name
// it, and after a whole read with the compiled set ([`Entries::compacted`]):
// at the large scale they are most of what a follower holds. Regions are
// interned ([`Entries::region`]): a few names for every entry.

#[derive(Debug, Clone)]
struct PolicyStub {
    id: Arc<str>,
    region: Region,
}

#[derive(Debug, Clone)]
struct DeploymentStub {
    id: Arc<str>,
    alias: Option<Arc<str>>,
    region: Region,
    policies: Box<[Arc<str>]>,
}

/// The entries in force, in the order the compiled set holds them, and
/// the refused changes.
#[derive(Debug, Clone)]
pub struct Entries {
    prefix: String,
    policies: Vec<Held<PolicyStub, Policy>>,
    deployments: Vec<Held<DeploymentStub, Deployment>>,
    /// Position in `policies` / `deployments`, by id.
    policy_at: HashMap<Arc<str>, usize>,
    deployment_at: HashMap<Arc<str>, usize>,
    /// Alias → deployment id. With `deployment_at`, the holder of every
    /// name (ids and aliases are unique together); ids are not repeated
    /// here, most deployments having no alias.
    aliases: HashMap<Arc<str>, Arc<str>>,
    /// The regions the stubs name, one copy each.
    regions: HashSet<Region>,
    /// Key → (the refused change, why).
    refused: BTreeMap<String, (Change, String)>,
    /// Each entry's value as etcd sent it, by id, when the state is saved.
    values: Option<Values>,
}

#[derive(Debug, Clone, Default)]
struct Values {
    policies: BTreeMap<String, Bytes>,
    deployments: BTreeMap<String, Bytes>,
}

impl Default for Entries {
    fn default() -> Self {
        Self::new("")
    }
}

impl Entries {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            policies: Vec::new(),
            deployments: Vec::new(),
            policy_at: HashMap::new(),
            deployment_at: HashMap::new(),
            aliases: HashMap::new(),
            regions: HashSet::new(),
            refused: BTreeMap::new(),
            values: None,
        }
    }

    /// No entry in force and none refused.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.deployments.is_empty() && self.refused.is_empty()
    }

    /// Also keeps each entry's value, for [`Entries::state_document`].
    pub fn keeping_values(mut self) -> Self {
        self.values = Some(Values::default());
        self
    }

    /// Applies one batch (the events of one or more etcd revisions) to the
    /// entries in force. Later changes to a key win over earlier ones.
    pub fn apply(&mut self, batch: impl IntoIterator<Item = (String, Change)>) -> Applied {
        let mut total = self.pass(batch);
        // A change accepted in this pass can make a refused one valid (an
        // alias freed, an association dropped): retry until nothing moves.
        while total.changed > 0 && !self.refused.is_empty() {
            let again = self.pass(std::iter::empty());
            total.refused = again.refused;
            if again.changed == 0 {
                break;
            }
            total.changed += again.changed;
        }
        total
    }

    fn pass(&mut self, batch: impl IntoIterator<Item = (String, Change)>) -> Applied {
        // The batch wins over an older refused change to the same key.
        let mut work: BTreeMap<String, Change> = std::mem::take(&mut self.refused)
            .into_iter()
            .map(|(k, (c, _))| (k, c))
            .collect();
        work.extend(batch);

        let mut applied = Applied::default();
        let mut policy_puts = Vec::new();
        let mut policy_deletes = Vec::new();
        let mut deployment_puts = Vec::new();
        let mut deployment_deletes = Vec::new();
        for (key, change) in work {
            let id = match keys::parse(&self.prefix, key.as_bytes()) {
                Ok(k) => (k.kind, k.id.to_owned()),
                Err(e) => {
                    // Not an entry: shown, never served. A delete of such a
                    // key just clears its refusal.
                    if let Change::Put(_) = change {
                        self.refuse(&mut applied, key, change, e.to_string());
                    }
                    continue;
                }
            };
            match (id, change) {
                ((Kind::Policy, id), Change::Put(v)) => policy_puts.push((key, id, v)),
                ((Kind::Policy, id), Change::Delete) => policy_deletes.push((key, id)),
                ((Kind::Deployment, id), Change::Put(v)) => deployment_puts.push((key, id, v)),
                ((Kind::Deployment, id), Change::Delete) => deployment_deletes.push((key, id)),
            }
        }

        // The order `portcullis publish` writes in: policies before the
        // deployments that name them, deletions of deployments before
        // deletions of the policies they named.
        let batch_deployments: Vec<&str> = deployment_puts
            .iter()
            .map(|(_, id, _)| id.as_str())
            .chain(deployment_deletes.iter().map(|(_, id)| id.as_str()))
            .collect();
        let mut users = Users::default();
        for (key, id, value) in policy_puts {
            match self.check_policy(&id, &value, &batch_deployments, &mut users) {
                Ok(p) => {
                    let id = self.shared_policy_id(&id);
                    let stub = PolicyStub {
                        id: id.clone(),
                        region: self.region(&p.region),
                    };
                    self.keep_value(Kind::Policy, &id, value);
                    upsert(&mut self.policies, &mut self.policy_at, id, stub, p);
                    applied.changed += 1;
                }
                Err(why) => self.refuse(&mut applied, key, Change::Put(value), why),
            }
        }
        for (key, id, value) in deployment_puts {
            match self.check_deployment(&id, &value) {
                Ok(d) => {
                    self.forget(&id);
                    let stub = DeploymentStub {
                        id: shared_id(&self.deployment_at, &id),
                        alias: d.alias.as_deref().map(Arc::from),
                        region: self.region(&d.region),
                        policies: self.shared_policy_ids(d.policies.iter().map(String::as_str)),
                    };
                    let id = stub.id.clone();
                    self.remember(&stub);
                    self.keep_value(Kind::Deployment, &id, value);
                    upsert(&mut self.deployments, &mut self.deployment_at, id, stub, d);
                    applied.changed += 1;
                }
                Err(why) => self.refuse(&mut applied, key, Change::Put(value), why),
            }
        }
        for (_, id) in deployment_deletes {
            self.forget(&id);
            if remove(&mut self.deployments, &mut self.deployment_at, &id, |s| {
                &s.id
            }) {
                self.drop_value(Kind::Deployment, &id);
                applied.changed += 1;
            }
        }
        // Asked again: the deployments changed since.
        let mut users = Users::default();
        for (key, id) in policy_deletes {
            let users = users.of(self, &id, &[]);
            if users.is_empty() {
                if remove(&mut self.policies, &mut self.policy_at, &id, |s| &s.id) {
                    self.drop_value(Kind::Policy, &id);
                    applied.changed += 1;
                }
            } else {
                let why = format!(
                    "cannot delete: still associated by deployment{} {}",
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", ")
                );
                self.refuse(&mut applied, key, Change::Delete, why);
            }
        }
        applied
    }

    /// Compiles the entries in force at `version` (the etcd revision): from
    /// `base`, the set last compiled from them, reusing what did not
    /// change since; whole when there is no base (the first compile after
    /// a read of the prefix). Then drops the models it took in.
    ///
    /// `None` when it cannot: with no base, some entry's model was already
    /// dropped by an earlier compile (the caller lost the set it made);
    /// with one, the base is not the set last compiled from these entries.
    /// Either way the entries are as they were, and reading the prefix
    /// again is the way on.
    pub fn compile(
        &mut self,
        version: u64,
        options: PolicyOptions,
        base: Option<&PolicySet>,
    ) -> Option<PolicySet> {
        let set = match base {
            Some(base) => {
                // A changed policy is compiled here; the rest is shared.
                let compiled: Vec<Option<Arc<CompiledPolicy>>> = self
                    .policies
                    .iter()
                    .map(|h| h.model.as_deref().map(|m| Arc::new(compile_policy(m))))
                    .collect();
                let policies: Vec<Slot<'_, Arc<CompiledPolicy>>> = self
                    .policies
                    .iter()
                    .zip(&compiled)
                    .map(|(held, c)| match c {
                        Some(c) => Slot::Changed(c, held.was()),
                        None => Slot::Kept(held.compiled_at),
                    })
                    .collect();
                let deployments: Vec<Slot<'_, Deployment>> =
                    self.deployments.iter().map(Held::slot).collect();
                let delta = Delta {
                    version,
                    policies: &policies,
                    deployments: &deployments,
                };
                PolicySet::compile_delta(delta, options, base)?
            }
            None => {
                if !(Held::all_modelled(&self.policies) && Held::all_modelled(&self.deployments)) {
                    return None;
                }
                let document = Snapshot {
                    version,
                    policies: Held::take_models(&mut self.policies),
                    deployments: Held::take_models(&mut self.deployments),
                };
                PolicySet::compile(&document, options)
            }
        };
        Held::compiled(&mut self.policies);
        Held::compiled(&mut self.deployments);
        Some(set)
    }

    /// The entries in force as a snapshot document at `version`, entries in
    /// id order (a stable order keeps the file diffable): each entry's
    /// value as etcd sent it, so nothing is parsed or serialised again.
    /// `None` unless the entries keep their values
    /// ([`Entries::keeping_values`]).
    pub fn state_document(&self, version: u64) -> Option<Vec<u8>> {
        let values = self.values.as_ref()?;
        let size: usize = values
            .policies
            .values()
            .chain(values.deployments.values())
            .map(|v| v.len() + 1)
            .sum();
        let mut out = Vec::with_capacity(size + 64);
        out.extend_from_slice(format!("{{\"version\":{version},\"deployments\":[").as_bytes());
        join(&mut out, values.deployments.values());
        out.extend_from_slice(b"],\"policies\":[");
        join(&mut out, values.policies.values());
        out.extend_from_slice(b"]}\n");
        Some(out)
    }

    /// Ids of the entries in force, sorted: (deployments, policies).
    pub fn ids(&self) -> (Vec<String>, Vec<String>) {
        let mut deployments: Vec<String> =
            self.deployment_at.keys().map(|k| k.to_string()).collect();
        let mut policies: Vec<String> = self.policy_at.keys().map(|k| k.to_string()).collect();
        deployments.sort();
        policies.sort();
        (deployments, policies)
    }

    /// Every refused change, by key.
    pub fn refused(&self) -> Vec<Refused> {
        self.refused
            .iter()
            .map(|(key, (_, message))| Refused {
                key: key.clone(),
                message: message.clone(),
            })
            .collect()
    }

    fn refuse(&mut self, applied: &mut Applied, key: String, change: Change, why: String) {
        applied.refused += 1;
        self.refused.insert(key, (change, why));
    }

    fn keep_value(&mut self, kind: Kind, id: &str, value: Bytes) {
        if let Some(values) = &mut self.values {
            values.of(kind).insert(id.to_owned(), value);
        }
    }

    fn drop_value(&mut self, kind: Kind, id: &str) {
        if let Some(values) = &mut self.values {
            values.of(kind).remove(id);
        }
    }

    fn deployment(&self, id: &str) -> Option<&DeploymentStub> {
        self.deployment_at
            .get(id)
            .and_then(|&i| self.deployments.get(i))
            .map(|h| &h.stub)
    }

    fn policy(&self, id: &str) -> Option<&PolicyStub> {
        self.policy_at
            .get(id)
            .and_then(|&i| self.policies.get(i))
            .map(|h| &h.stub)
    }

    /// A copy made of new allocations, made on a thread of its own after a
    /// whole read: it sits in an arena apart from what the read and the
    /// first compile freed, so their pages can go back to the OS whole (see
    /// `memory`). Ids are not copied but taken from `set`, the set these
    /// entries were just compiled into, which holds each of them anyway
    /// (an entry the set does not hold as expected gets a new one).
    pub fn compacted(&self, set: &PolicySet) -> Self {
        let mut copy = Self {
            prefix: self.prefix.clone(),
            policies: Vec::with_capacity(self.policies.len()),
            deployments: Vec::with_capacity(self.deployments.len()),
            policy_at: HashMap::with_capacity(self.policy_at.len()),
            deployment_at: HashMap::with_capacity(self.deployment_at.len()),
            aliases: HashMap::with_capacity(self.aliases.len()),
            // Rebuilt from the stubs below: names no entry uses any more
            // are not carried.
            regions: HashSet::new(),
            refused: self.refused.clone(),
            values: self.values.clone(),
        };
        let shared = |id: &str, held: Option<&Arc<str>>| match held {
            Some(h) if **h == *id => h.clone(),
            _ => Arc::from(id),
        };
        for (i, held) in self.policies.iter().enumerate() {
            let compiled = set.policy(PolicyIndex(held.compiled_at));
            let id = shared(&held.stub.id, compiled.map(|p| &p.id));
            copy.policy_at.insert(id.clone(), i);
            let region = copy.region(&held.stub.region);
            copy.policies.push(Held {
                stub: PolicyStub { id, region },
                compiled_at: held.compiled_at,
                model: held.model.clone(),
            });
        }
        for (i, held) in self.deployments.iter().enumerate() {
            let d = &held.stub;
            let compiled = set.deployment(DeploymentIndex(held.compiled_at));
            let stub = DeploymentStub {
                id: shared(&d.id, compiled.map(|c| &c.id)),
                alias: d
                    .alias
                    .as_deref()
                    .map(|a| shared(a, compiled.and_then(|c| c.alias.as_ref()))),
                region: copy.region(&d.region),
                policies: copy.shared_policy_ids(d.policies.iter().map(|p| &**p)),
            };
            copy.deployment_at.insert(stub.id.clone(), i);
            copy.remember(&stub);
            copy.deployments.push(Held {
                stub,
                compiled_at: held.compiled_at,
                model: held.model.clone(),
            });
        }
        copy
    }

    /// `region` as the stubs hold it: one copy of each name.
    fn region(&mut self, region: &Region) -> Region {
        if let Some(held) = self.regions.get(region) {
            return held.clone();
        }
        self.regions.insert(region.clone());
        region.clone()
    }

    /// Policy ids as the policies in force hold them.
    fn shared_policy_ids<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Box<[Arc<str>]> {
        ids.map(|p| self.shared_policy_id(p)).collect()
    }

    /// The policy id as the policy in force holds it (shared), or a new
    /// one for a policy not (yet) in force.
    fn shared_policy_id(&self, id: &str) -> Arc<str> {
        shared_id(&self.policy_at, id)
    }

    /// Indexes a deployment about to be in force: its alias (its id is
    /// indexed as it is put in force).
    fn remember(&mut self, d: &DeploymentStub) {
        if let Some(alias) = &d.alias {
            self.aliases.insert(alias.clone(), d.id.clone());
        }
    }

    /// Drops the indexes of the deployment in force as `id`, if any.
    fn forget(&mut self, id: &str) {
        let Some(old) = self.deployment(id) else {
            return;
        };
        if let Some(alias) = old.alias.clone() {
            self.aliases.remove(&alias);
        }
    }

    /// Policy id → the deployments in force that associate it: one pass
    /// over them.
    fn users_index(&self) -> HashMap<Arc<str>, Vec<Arc<str>>> {
        let mut index: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
        for d in self.deployments.iter().map(|h| &h.stub) {
            for p in d.policies.iter() {
                index.entry(p.clone()).or_default().push(d.id.clone());
            }
        }
        index
    }

    fn check_policy(
        &self,
        id: &str,
        value: &[u8],
        batch: &[&str],
        users: &mut Users,
    ) -> Result<Policy, String> {
        let p = policy_entry(value).map_err(|e| entry_errors(&e))?;
        same_id(id, &p.id)?;
        // A region change must not strand a deployment that stays as it is
        // (deployments changed in this batch are checked against it next).
        // Only a policy in force that moves can: the deployments in force
        // that name a policy are in its region, and name only policies in
        // force.
        let moves = self.policy(id).is_some_and(|old| old.region != p.region);
        let stranded: Vec<String> = if moves {
            users
                .of(self, id, batch)
                .into_iter()
                .filter(|d| self.deployment(d).is_some_and(|d| d.region != p.region))
                .collect()
        } else {
            Vec::new()
        };
        if !stranded.is_empty() {
            return Err(format!(
                "region \"{}\" differs from that of deployment(s) that associate it: {}",
                p.region,
                stranded.join(", ")
            ));
        }
        Ok(p)
    }

    /// The deployment in force whose id or alias `name` is.
    fn holder(&self, name: &str) -> Option<&Arc<str>> {
        match self.deployment_at.get_key_value(name) {
            Some((id, _)) => Some(id),
            None => self.aliases.get(name),
        }
    }

    fn check_deployment(&self, id: &str, value: &[u8]) -> Result<Deployment, String> {
        let d = deployment_entry(value, |p| self.policy(p).map(|p| &p.region))
            .map_err(|e| entry_errors(&e))?;
        same_id(id, &d.id)?;
        for name in std::iter::once(&d.id).chain(d.alias.as_ref()) {
            if let Some(holder) = self.holder(name)
                && &**holder != id
            {
                return Err(format!(
                    "name \"{name}\" is already used by deployment {holder}"
                ));
            }
        }
        Ok(d)
    }
}

impl Values {
    fn of(&mut self, kind: Kind) -> &mut BTreeMap<String, Bytes> {
        match kind {
            Kind::Policy => &mut self.policies,
            Kind::Deployment => &mut self.deployments,
        }
    }
}

/// Appends JSON values, comma-separated.
fn join<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = &'a Bytes>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(v);
    }
}

/// Which deployments in force associate a policy, asked when a policy in
/// force moves region or is deleted: indexed with one pass over the
/// deployments the first time a batch asks (a batch may delete thousands
/// of policies), rather than kept for every policy in force: that index
/// was 6 MiB of the follower's resident size at the large scale
/// (`benches/etcd.sh`: 157 → 151 MiB), for a question a follower seldom
/// asks. Valid while the deployments in force do not change.
#[derive(Default)]
struct Users(Option<HashMap<Arc<str>, Vec<Arc<str>>>>);

impl Users {
    /// The deployments (other than `except`) that associate `policy`, in
    /// id order.
    fn of(&mut self, entries: &Entries, policy: &str, except: &[&str]) -> Vec<String> {
        let index = self.0.get_or_insert_with(|| entries.users_index());
        let mut users: Vec<String> = index
            .get(policy)
            .into_iter()
            .flatten()
            .filter(|d| !except.contains(&&***d))
            .map(|d| d.to_string())
            .collect();
        users.sort_unstable();
        users
    }
}

/// Puts an entry in force as `id`: in place of the old version (keeping
/// the old version's place in the compiled set, so the compile pairs them),
/// or at the end.
fn upsert<S, M>(
    items: &mut Vec<Held<S, M>>,
    at: &mut HashMap<Arc<str>, usize>,
    id: Arc<str>,
    stub: S,
    model: M,
) {
    let model = Some(Box::new(model));
    match at.get(&id).and_then(|&i| items.get_mut(i)) {
        Some(held) => {
            held.stub = stub;
            held.model = model;
        }
        None => {
            at.insert(id, items.len());
            items.push(Held {
                stub,
                compiled_at: NOWHERE,
                model,
            });
        }
    }
}

/// `id` as the position index `at` holds it (shared), or a new one for an
/// entry not (yet) in force: a new version of an entry keeps the id its
/// indexes already name.
fn shared_id(at: &HashMap<Arc<str>, usize>, id: &str) -> Arc<str> {
    at.get_key_value(id)
        .map_or_else(|| Arc::from(id), |(k, _)| k.clone())
}

/// Takes `id` out of force; the last item moves into its place (with its
/// place in the compiled set, so the compile still finds it).
fn remove<S, M>(
    items: &mut Vec<Held<S, M>>,
    at: &mut HashMap<Arc<str>, usize>,
    id: &str,
    id_of: fn(&S) -> &Arc<str>,
) -> bool {
    let Some(i) = at.remove(id) else {
        return false;
    };
    if i >= items.len() {
        return false;
    }
    items.swap_remove(i);
    if let Some(moved) = items.get(i) {
        at.insert(id_of(&moved.stub).clone(), i);
    }
    true
}

fn same_id(key_id: &str, object_id: &str) -> Result<(), String> {
    if key_id == object_id {
        Ok(())
    } else {
        Err(format!(
            "the key names \"{key_id}\" but the object's id is \"{object_id}\""
        ))
    }
}

/// An entry's errors as one message (paths are relative to the entry:
/// `policies[1]: unknown policy "x"`).
fn entry_errors(errors: &SnapshotErrors) -> String {
    errors
        .0
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[path = "entries_tests.rs"]
mod tests;

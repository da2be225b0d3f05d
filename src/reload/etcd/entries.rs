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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use serde::Serialize;

use super::keys::{self, Kind};
use crate::policy::validate::{deployment_entry, policy_entry};
use crate::policy::{Changed, Deployment, InPlace, Policy, Snapshot, SnapshotErrors};

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

/// The entries in force and the refused changes.
///
/// The entries in force are kept as the snapshot they make, updated in
/// place, so compiling a change reads them where they are instead of
/// copying the world first.
#[derive(Debug, Clone)]
pub struct Entries {
    prefix: String,
    doc: Snapshot,
    /// Position in `doc.policies` / `doc.deployments`, by id.
    policy_at: HashMap<String, usize>,
    deployment_at: HashMap<String, usize>,
    /// Deployment id or alias → deployment id, for uniqueness.
    names: HashMap<String, String>,
    /// Policy id → the deployments in force that associate it.
    users: HashMap<String, BTreeSet<String>>,
    /// Key → (the refused change, why).
    refused: BTreeMap<String, (Change, String)>,
    /// Ids whose entry in force changed since [`Entries::take_changed`],
    /// so a compile can reuse what the others compiled to; while every
    /// change was made in place, their indices too.
    changed: Changed,
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
            doc: Snapshot {
                version: 0,
                deployments: Vec::new(),
                policies: Vec::new(),
            },
            policy_at: HashMap::new(),
            deployment_at: HashMap::new(),
            names: HashMap::new(),
            users: HashMap::new(),
            refused: BTreeMap::new(),
            changed: in_place(),
        }
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
        for (key, id, value) in policy_puts {
            match self.check_policy(&id, &value, &batch_deployments) {
                Ok(p) => {
                    self.changed.policies.insert(id.clone());
                    let at = upsert(&mut self.doc.policies, &mut self.policy_at, id, p);
                    self.placed(at, |i| &mut i.policies);
                    applied.changed += 1;
                }
                Err(why) => self.refuse(&mut applied, key, Change::Put(value), why),
            }
        }
        for (key, id, value) in deployment_puts {
            match self.check_deployment(&id, &value) {
                Ok(d) => {
                    self.forget(&id);
                    self.remember(&d);
                    self.changed.deployments.insert(id.clone());
                    let at = upsert(&mut self.doc.deployments, &mut self.deployment_at, id, d);
                    self.placed(at, |i| &mut i.deployments);
                    applied.changed += 1;
                }
                Err(why) => self.refuse(&mut applied, key, Change::Put(value), why),
            }
        }
        for (_, id) in deployment_deletes {
            self.forget(&id);
            if remove(&mut self.doc.deployments, &mut self.deployment_at, &id).is_some() {
                self.changed.deployments.insert(id);
                self.changed.in_place = None;
                applied.changed += 1;
            }
        }
        for (key, id) in policy_deletes {
            let users = self.users_of(&id, &[]);
            if users.is_empty() {
                if remove(&mut self.doc.policies, &mut self.policy_at, &id).is_some() {
                    self.changed.policies.insert(id);
                    self.changed.in_place = None;
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

    /// The entries in force as a snapshot at `version` (the etcd revision),
    /// without copying them.
    pub fn document(&mut self, version: u64) -> &Snapshot {
        self.doc.version = version;
        &self.doc
    }

    /// The ids of the entries in force that changed (put, replaced or
    /// removed) since the last call: what a set compiled then must not be
    /// reused for (see `PolicySet::compile_reusing`).
    pub fn take_changed(&mut self) -> Changed {
        std::mem::replace(&mut self.changed, in_place())
    }

    /// Notes where an upsert put its entry: at its old index, the changes
    /// so far may still be in place; appended, they are not.
    fn placed(&mut self, at: Placed, list: fn(&mut InPlace) -> &mut Vec<u32>) {
        match (at, &mut self.changed.in_place) {
            (Placed::Replaced(i), Some(in_place)) => {
                list(in_place).push(u32::try_from(i).unwrap_or(u32::MAX));
            }
            (Placed::Replaced(_), None) => {}
            (Placed::Appended, _) => self.changed.in_place = None,
        }
    }

    /// A copy of [`Entries::document`], in id order (for tests and for
    /// saving, where a stable order makes the file diffable).
    pub fn snapshot(&self, version: u64) -> Snapshot {
        let mut s = self.doc.clone();
        s.version = version;
        s.policies.sort_by(|a, b| a.id.cmp(&b.id));
        s.deployments.sort_by(|a, b| a.id.cmp(&b.id));
        s
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

    fn deployment(&self, id: &str) -> Option<&Deployment> {
        self.deployment_at
            .get(id)
            .and_then(|&i| self.doc.deployments.get(i))
    }

    fn policy(&self, id: &str) -> Option<&Policy> {
        self.policy_at
            .get(id)
            .and_then(|&i| self.doc.policies.get(i))
    }

    /// Indexes a deployment about to be in force: its names, its policies.
    fn remember(&mut self, d: &Deployment) {
        for name in std::iter::once(&d.id).chain(d.alias.as_ref()) {
            self.names.insert(name.clone(), d.id.clone());
        }
        for p in &d.policies {
            self.users
                .entry(p.clone())
                .or_default()
                .insert(d.id.clone());
        }
    }

    /// Drops the indexes of the deployment in force as `id`, if any.
    fn forget(&mut self, id: &str) {
        let Some(old) = self.deployment(id) else {
            return;
        };
        let names: Vec<String> = std::iter::once(&old.id)
            .chain(&old.alias)
            .cloned()
            .collect();
        let policies = old.policies.clone();
        for n in names {
            self.names.remove(&n);
        }
        for p in policies {
            if let Some(users) = self.users.get_mut(&p) {
                users.remove(id);
                if users.is_empty() {
                    self.users.remove(&p);
                }
            }
        }
    }

    /// Deployments in force (other than `except`) that associate `policy`.
    fn users_of(&self, policy: &str, except: &[&str]) -> Vec<String> {
        self.users
            .get(policy)
            .into_iter()
            .flatten()
            .filter(|d| !except.contains(&d.as_str()))
            .cloned()
            .collect()
    }

    fn check_policy(&self, id: &str, value: &[u8], batch: &[&str]) -> Result<Policy, String> {
        let p = policy_entry(value).map_err(|e| entry_errors(&e))?;
        same_id(id, &p.id)?;
        // A region change must not strand a deployment that stays as it is
        // (deployments changed in this batch are checked against it next).
        let stranded: Vec<String> = self
            .users_of(id, batch)
            .into_iter()
            .filter(|d| self.deployment(d).is_some_and(|d| d.region != p.region))
            .collect();
        if !stranded.is_empty() {
            return Err(format!(
                "region \"{}\" differs from that of deployment(s) that associate it: {}",
                p.region,
                stranded.join(", ")
            ));
        }
        Ok(p)
    }

    fn check_deployment(&self, id: &str, value: &[u8]) -> Result<Deployment, String> {
        let d = deployment_entry(value, |p| self.policy(p).map(|p| &p.region))
            .map_err(|e| entry_errors(&e))?;
        same_id(id, &d.id)?;
        for name in std::iter::once(&d.id).chain(d.alias.as_ref()) {
            if let Some(holder) = self.names.get(name)
                && holder != id
            {
                return Err(format!(
                    "name \"{name}\" is already used by deployment {holder}"
                ));
            }
        }
        Ok(d)
    }
}

/// Where [`upsert`] put an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Replaced(usize),
    Appended,
}

/// Puts `item` in force as `id`: in place of the old version, or at the end.
fn upsert<T>(items: &mut Vec<T>, at: &mut HashMap<String, usize>, id: String, item: T) -> Placed {
    match at.get(&id).copied() {
        Some(i) if i < items.len() => {
            items[i] = item;
            Placed::Replaced(i)
        }
        _ => {
            at.insert(id, items.len());
            items.push(item);
            Placed::Appended
        }
    }
}

/// What [`Entries::take_changed`] starts over from: nothing changed, and
/// nothing moved.
fn in_place() -> Changed {
    Changed {
        in_place: Some(InPlace::default()),
        ..Changed::default()
    }
}

/// Takes `id` out of force; the last item moves into its place.
fn remove<T: Identified>(
    items: &mut Vec<T>,
    at: &mut HashMap<String, usize>,
    id: &str,
) -> Option<T> {
    let i = at.remove(id)?;
    if i >= items.len() {
        return None;
    }
    let gone = items.swap_remove(i);
    if let Some(moved) = items.get(i) {
        at.insert(moved.id().to_owned(), i);
    }
    Some(gone)
}

/// What [`remove`] needs to re-index the item it moves.
trait Identified {
    fn id(&self) -> &str;
}

impl Identified for Policy {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Identified for Deployment {
    fn id(&self) -> &str {
        &self.id
    }
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

/// What association checks read of a policy.
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

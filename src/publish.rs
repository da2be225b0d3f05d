//! `portcullis publish` (SPEC §3.1): a validated snapshot file written to
//! an etcd prefix as one key per entry, writing only what differs.
//!
//! The pure core is here: [`plan`] compares the file's entries with what
//! is stored and orders the writes so that every state a follower can see
//! in between is valid — new and changed policies first (so deployments
//! never name a policy that is not there yet), then new and changed
//! deployments, then deleted deployments, then deleted policies (so a
//! policy is never deleted while a deployment still names it).
//! [`transactions`] cuts that sequence into etcd transactions. The etcd
//! reads and writes are [`prepare`] and [`write`].
//!
//! What this order cannot make valid on its own: a policy moving to
//! another region together with its deployments, or an alias moving from
//! one deployment to another. When such a change spans two transactions,
//! the follower refuses the early half until the rest arrives (it retries
//! refused entries with every batch), so the fleet converges on the file.

mod io;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use etcd_client::KeyValue;
use serde_json::Value;

pub use io::{Committed, PublishError, prepare, write};

use crate::policy::Snapshot;
use crate::reload::etcd::keys::{self, KeyError, Kind};

/// The most operations one transaction holds: etcd's default
/// `--max-txn-ops`, which a cluster refuses to exceed.
pub const MAX_TXN_OPS: usize = 128;

/// One key as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl From<&KeyValue> for Stored {
    fn from(kv: &KeyValue) -> Self {
        Self {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// What one write does to one key. A write to a key that exists carries
/// the mod revision it was read at: the transaction checks it, so a
/// concurrent writer makes publishing stop instead of being overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Add { value: Vec<u8> },
    Change { value: Vec<u8>, mod_revision: i64 },
    Remove { mod_revision: i64 },
}

/// One entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: Kind,
    pub id: String,
    pub key: String,
    pub action: Action,
}

impl Step {
    /// Its place in the write order (module docs): lower goes first.
    fn phase(&self) -> u8 {
        match (self.kind, &self.action) {
            (Kind::Policy, Action::Add { .. } | Action::Change { .. }) => 0,
            (Kind::Deployment, Action::Add { .. } | Action::Change { .. }) => 1,
            (Kind::Deployment, Action::Remove { .. }) => 2,
            (Kind::Policy, Action::Remove { .. }) => 3,
        }
    }

    fn order(&self, other: &Self) -> Ordering {
        (self.phase(), &self.id).cmp(&(other.phase(), &other.id))
    }
}

/// `+ policy office-ips`, `~ deployment abc`, `- policy old`.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.action {
            Action::Add { .. } => '+',
            Action::Change { .. } => '~',
            Action::Remove { .. } => '-',
        };
        write!(f, "{sign} {} {}", self.kind.as_str(), self.id)
    }
}

/// A key under the prefix that names no entry: left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub key: String,
    pub reason: KeyError,
}

/// Everything publishing a file would write, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The revision the stored state was read at.
    pub revision: i64,
    pub steps: Vec<Step>,
    /// Entries already stored as the file has them.
    pub unchanged: usize,
    pub ignored: Vec<Ignored>,
}

/// How many entries each kind of step adds, changes and removes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

impl Plan {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for step in &self.steps {
            match step.action {
                Action::Add { .. } => c.added += 1,
                Action::Change { .. } => c.changed += 1,
                Action::Remove { .. } => c.removed += 1,
            }
        }
        c
    }
}

/// The writes that make `stored` (the prefix read at `revision`) hold
/// exactly `snapshot`'s entries. Entries are compared as parsed JSON, so
/// formatting and key order cause no rewrite; a stored value that is not
/// JSON is rewritten.
pub fn plan(
    prefix: &str,
    snapshot: &Snapshot,
    stored: &[Stored],
    revision: i64,
) -> Result<Plan, serde_json::Error> {
    let wanted = wanted(snapshot)?;
    let mut plan = Plan {
        revision,
        ..Plan::default()
    };
    let mut present = BTreeMap::new();
    for s in stored {
        match keys::parse(prefix, &s.key) {
            Ok(k) => {
                present.insert((k.kind, k.id), s);
            }
            Err(reason) => plan.ignored.push(Ignored {
                key: String::from_utf8_lossy(&s.key).into_owned(),
                reason,
            }),
        }
    }
    for ((kind, id), value) in &wanted {
        let action = match present.get(&(*kind, *id)) {
            None => Action::Add {
                value: serde_json::to_vec(value)?,
            },
            Some(s) if same(&s.value, value) => {
                plan.unchanged += 1;
                continue;
            }
            Some(s) => Action::Change {
                value: serde_json::to_vec(value)?,
                mod_revision: s.mod_revision,
            },
        };
        plan.steps.push(step(prefix, *kind, id, action));
    }
    for ((kind, id), s) in present {
        if !wanted.contains_key(&(kind, id)) {
            let action = Action::Remove {
                mod_revision: s.mod_revision,
            };
            plan.steps.push(step(prefix, kind, id, action));
        }
    }
    plan.steps.sort_by(Step::order);
    Ok(plan)
}

/// `steps` cut into transactions of at most [`MAX_TXN_OPS`], in order.
/// Each transaction is applied whole, so its end state is one the
/// ordered sequence passes through: valid too.
pub fn transactions(steps: &[Step]) -> std::slice::Chunks<'_, Step> {
    steps.chunks(MAX_TXN_OPS)
}

/// Each entry of `snapshot` as the JSON object its key holds.
fn wanted(snapshot: &Snapshot) -> Result<BTreeMap<(Kind, &str), Value>, serde_json::Error> {
    let mut out = BTreeMap::new();
    for p in &snapshot.policies {
        out.insert((Kind::Policy, p.id.as_str()), serde_json::to_value(p)?);
    }
    for d in &snapshot.deployments {
        out.insert((Kind::Deployment, d.id.as_str()), serde_json::to_value(d)?);
    }
    Ok(out)
}

/// Whether stored bytes hold `value` (as JSON, whatever the formatting).
fn same(stored: &[u8], value: &Value) -> bool {
    serde_json::from_slice::<Value>(stored).is_ok_and(|v| &v == value)
}

fn step(prefix: &str, kind: Kind, id: &str, action: Action) -> Step {
    Step {
        kind,
        id: id.to_owned(),
        key: keys::key(prefix, kind, id),
        action,
    }
}

//! The etcd side of publishing: read what is stored under the prefix (at
//! one revision, in pages), then write the plan one transaction at a time.
//!
//! Each transaction first checks that every key it writes is still as it
//! was read (absent, or at the mod revision read): a concurrent writer
//! makes publishing stop with nothing of that transaction applied, rather
//! than overwriting what it wrote. What was committed before stays: each
//! committed transaction ends in a valid state, and running publish again
//! finishes the job.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{Action, Plan, Step, Stored, plan, transactions};
use crate::policy::Snapshot;
use crate::reload::etcd::client::{EtcdError, EtcdSettings, within};
use crate::reload::etcd::read::read_prefix;

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading {prefix} from etcd")]
    Read {
        prefix: String,
        #[source]
        source: EtcdError,
    },
    #[error("serialising the entries")]
    Serialise(#[from] serde_json::Error),
    #[error(
        "writing transaction {transaction} of {of} ({written} of {total} entries were written before it; publishing again is safe)"
    )]
    Write {
        transaction: usize,
        of: usize,
        written: usize,
        total: usize,
        #[source]
        source: EtcdError,
    },
    #[error(
        "transaction {transaction} of {of} not applied: an entry in it changed after revision {revision}, when it was read (another writer?); {written} of {total} entries were written before it; publish again to write the rest"
    )]
    Conflict {
        transaction: usize,
        of: usize,
        revision: i64,
        written: usize,
        total: usize,
    },
}

/// One committed transaction, as [`write`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub steps: &'a [Step],
    /// 1-based.
    pub transaction: usize,
    pub of: usize,
    /// The etcd revision it created.
    pub revision: i64,
}

/// Reads the prefix and plans the writes that make it hold `snapshot`.
pub async fn prepare(
    client: &mut Client,
    settings: &EtcdSettings,
    snapshot: &Snapshot,
) -> Result<Plan, PublishError> {
    let state = read_prefix(client, settings)
        .await
        .map_err(|source| PublishError::Read {
            prefix: settings.prefix.clone(),
            source,
        })?;
    let stored: Vec<Stored> = state.kvs.iter().map(Stored::from).collect();
    Ok(plan(&settings.prefix, snapshot, &stored, state.revision)?)
}

/// Writes `plan`'s steps in order, calling `on_commit` after each
/// transaction. Returns the etcd revision after the last write (the
/// revision read, when there was nothing to write).
pub async fn write(
    client: &mut Client,
    settings: &EtcdSettings,
    plan: &Plan,
    mut on_commit: impl FnMut(Committed<'_>),
) -> Result<i64, PublishError> {
    let of = transactions(&plan.steps).len();
    let total = plan.steps.len();
    let mut written = 0;
    let mut revision = plan.revision;
    for (i, steps) in transactions(&plan.steps).enumerate() {
        let transaction = i + 1;
        let response = within(settings.request_timeout, client.txn(txn(steps)))
            .await
            .map_err(|source| PublishError::Write {
                transaction,
                of,
                written,
                total,
                source,
            })?;
        if !response.succeeded() {
            return Err(PublishError::Conflict {
                transaction,
                of,
                revision: plan.revision,
                written,
                total,
            });
        }
        revision = response.header().map_or(revision, |h| h.revision());
        written += steps.len();
        on_commit(Committed {
            steps,
            transaction,
            of,
            revision,
        });
    }
    Ok(revision)
}

/// `steps` as one transaction: if every key is as read, write them all.
fn txn(steps: &[Step]) -> Txn {
    let (expect, ops): (Vec<Compare>, Vec<TxnOp>) = steps
        .iter()
        .map(|s| {
            let key = s.key.as_bytes();
            match &s.action {
                // Version 0: the key does not exist.
                Action::Add { value } => (
                    Compare::version(key, CompareOp::Equal, 0),
                    TxnOp::put(key, value.as_slice(), None),
                ),
                Action::Change {
                    value,
                    mod_revision,
                } => (
                    Compare::mod_revision(key, CompareOp::Equal, *mod_revision),
                    TxnOp::put(key, value.as_slice(), None),
                ),
                Action::Remove { mod_revision } => (
                    Compare::mod_revision(key, CompareOp::Equal, *mod_revision),
                    TxnOp::delete(key, None),
                ),
            }
        })
        .unzip();
    Txn::new().when(expect).and_then(ops)
}

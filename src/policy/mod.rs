//! Network security policies: snapshot model → validation → compiled set →
//! per-request decision.
//!
//! - [`model`]: the typed snapshot (SPEC §3).
//! - [`validate`]: JSON → model, reporting every error with its path.
//! - [`compile`]: model → immutable [`PolicySet`].
//! - [`eval`]: the pure, allocation-free [`decide`].

mod changed;
pub mod compile;
pub mod eval;
mod fingerprint;
mod incremental;
mod ipset;
pub mod model;
pub mod validate;

pub use changed::{Counterparts, Delta, Entry, ReadOver, Slot};
pub use compile::{
    CompiledDeployment, CompiledPolicy, DeploymentIndex, PolicyIndex, PolicyOptions, PolicySet,
    Stats, UnassociatedPrivateTraffic,
};
pub use eval::{Decision, Reason, RequestFacts, RuleRef, Target, Verdict, decide};

pub use model::{
    AzureRule, Deployment, Enforcement, GcpRule, IpRule, Policy, PolicyType, Product, Provider,
    Region, Resource, Rules, Snapshot, VpceRule,
};
pub use validate::{
    SnapshotError, SnapshotErrors, parse_snapshot, parse_snapshot_over, validate_value,
};

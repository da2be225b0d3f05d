//! Fingerprints of snapshot entries, so that a whole document applied over
//! the set in force compiles only what it changed.
//!
//! Each compiled policy and deployment keeps the fingerprint of the model
//! entry it was compiled from. `Changed::between` (`super::changed`)
//! fingerprints a new document's entries and names those that differ (or
//! are new, or gone); `PolicySet::compile_reusing` then reuses the rest. A document that
//! changes one policy in a hundred thousand costs its parse and validation,
//! the fingerprints, and a compile of that one policy, and the new set
//! shares the unchanged deployments with the old one instead of holding a
//! second copy while both are alive.
//!
//! A fingerprint is a 64-bit SipHash-1-3 keyed randomly per process (std's
//! `RandomState`): an entry that changed is taken for unchanged only if its
//! two versions collide under a key nobody outside the process knows, a
//! chance of 2⁻⁶⁴ per changed entry.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::OnceLock;

/// The fingerprint of one snapshot entry (a policy or a deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint(u64);

impl Fingerprint {
    pub(crate) fn of(entry: &impl Hash) -> Self {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        Self(KEYS.get_or_init(RandomState::new).hash_one(entry))
    }
}

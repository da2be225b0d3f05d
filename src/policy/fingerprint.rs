//! Fingerprints of snapshot entries, so that a whole document applied over
//! the set in force compiles only what it changed.
//!
//! Each compiled policy and deployment keeps the fingerprint of the model
//! entry it was compiled from. A new document is read over the set in
//! force (`super::changed::Counterparts`): each entry is fingerprinted as
//! it is read and, when its id's fingerprint is the same, kept by index,
//! its model dropped; `PolicySet::compile_delta` then reuses the rest.
//! A document that changes one policy in a hundred thousand costs its
//! parse and validation, the fingerprints, and a compile of that one
//! policy, and the new set shares the unchanged deployments with the old
//! one instead of holding a second copy while both are alive.
//!
//! A fingerprint is a 64-bit SipHash-1-3 keyed randomly per process (std's
//! `RandomState`): an entry that changed is taken for unchanged only if its
//! two versions collide under a key nobody outside the process knows, a
//! chance of 2⁻⁶⁴ per changed entry.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::OnceLock;

/// The fingerprint of one snapshot entry (a policy or a deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint(u64);

impl Fingerprint {
    pub(crate) fn of(entry: &impl Hash) -> Self {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        let mut h = Buffered {
            inner: KEYS.get_or_init(RandomState::new).build_hasher(),
            buf: [0; BUFFER],
            len: 0,
        };
        entry.hash(&mut h);
        Self(h.finish())
    }
}

const BUFFER: usize = 256;

/// Feeds the hasher in blocks: a model entry is hashed field by field in
/// writes of a few bytes, and SipHash's cost per `write` call is several
/// times its cost per byte. The bytes hashed, in order, are the same, so
/// the fingerprint is as strong.
struct Buffered<H> {
    inner: H,
    buf: [u8; BUFFER],
    len: usize,
}

impl<H: Hasher + Clone> Hasher for Buffered<H> {
    fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > BUFFER {
            self.flush();
        }
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(free) => {
                free.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            // Longer than the whole buffer (which is empty now).
            None => self.inner.write(bytes),
        }
    }

    fn finish(&self) -> u64 {
        let mut inner = self.inner.clone();
        inner.write(self.buf.get(..self.len).unwrap_or_default());
        inner.finish()
    }
}

impl<H: Hasher> Buffered<H> {
    fn flush(&mut self) {
        self.inner
            .write(self.buf.get(..self.len).unwrap_or_default());
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hasher};

    use super::*;

    #[test]
    fn buffering_hashes_the_same_bytes() {
        let keys = RandomState::new();
        let writes: Vec<Vec<u8>> = (0..200_usize)
            .map(|i| (0..(i * 7) % 300).map(|b| b as u8).collect())
            .collect();
        let mut plain = keys.build_hasher();
        let mut buffered = Buffered {
            inner: keys.build_hasher(),
            buf: [0; BUFFER],
            len: 0,
        };
        for w in &writes {
            plain.write(w);
            buffered.write(w);
        }
        assert_eq!(plain.finish(), buffered.finish());
    }
}

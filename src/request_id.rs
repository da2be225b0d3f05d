//! `X-Cloud-Request-Id` (SPEC §6): a unique id per request, on the response,
//! on the forwarded request and in the access log, so that support can find
//! one request across the proxy and the deployment's own logs.
//!
//! An id is 32 lowercase hex digits: 64 random bits drawn once per process
//! (so ids from different proxies of a fleet do not collide), then a
//! per-process counter passed through a 64-bit bijective mixer (so ids are
//! unique within the process yet do not reveal the request rate). Making
//! one costs an atomic increment and a few multiplications: no syscall, no
//! lock, no allocation.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

pub static HEADER: http::HeaderName = http::HeaderName::from_static("x-cloud-request-id");

/// Hands out request ids.
#[derive(Debug)]
pub struct RequestIds {
    process: u64,
    key: u64,
    counter: AtomicU64,
}

impl RequestIds {
    /// Seeds from the standard library's per-process random hash keys (read
    /// once from the OS), plus the time and process id for good measure.
    pub fn new() -> Self {
        let random = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.write_u32(std::process::id());
            if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                h.write_u128(t.as_nanos());
            }
            h.finish()
        };
        Self::seeded(random(1), random(2))
    }

    /// Fixed seeds, for tests.
    pub fn seeded(process: u64, key: u64) -> Self {
        Self {
            process,
            key,
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> RequestId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        hex(self.process, &mut id[..16]);
        hex(mix(n ^ self.key), &mut id[16..]);
        RequestId(id)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// One request's id, inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 32]);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The header value, shared by its clones: the response and the
    /// forwarded request both carry it.
    ///
    /// Its bytes are cut from a small per-thread slab that holds the ids of
    /// [`IDS_PER_SLAB`] requests, so a request allocates nothing for its id.
    /// When a slab is used up, it is reused if every id cut from it is
    /// gone (the usual case: requests end in a few milliseconds), and
    /// replaced otherwise (two allocations: its bytes and, at the first
    /// cut, the shared reference count). A slab is freed when the last id
    /// cut from it is: a request that outlives its neighbours keeps at
    /// most one slab's bytes alive.
    pub fn header_value(&self) -> http::HeaderValue {
        let bytes = SLAB.with(|slab| match slab.try_borrow_mut() {
            Ok(mut slab) => {
                if slab.capacity() - slab.len() < self.0.len() {
                    // `BytesMut::reserve` takes the slab's memory back when
                    // no id cut from it is alive, else allocates anew.
                    slab.reserve(self.0.len() * IDS_PER_SLAB);
                }
                slab.extend_from_slice(&self.0);
                slab.split_to(self.0.len()).freeze()
            }
            // Re-entered (impossible today): an allocation of its own.
            Err(_) => bytes::Bytes::copy_from_slice(&self.0),
        });
        http::HeaderValue::from_maybe_shared(bytes)
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }
}

/// Request ids cut from one slab (512 bytes).
const IDS_PER_SLAB: usize = 16;

thread_local! {
    /// What is left of this thread's slab.
    static SLAB: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SplitMix64's finaliser: a bijection on u64, so distinct counters give
/// distinct ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_hex_and_share_the_process_part() {
        let ids = RequestIds::seeded(0x0123_4567_89ab_cdef, 42);
        let seen: HashSet<String> = (0..100_000)
            .map(|_| ids.next().as_str().to_owned())
            .collect();
        assert_eq!(seen.len(), 100_000);
        for id in seen.iter().take(100) {
            assert_eq!(id.len(), 32);
            assert!(id.starts_with("0123456789abcdef"), "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        assert_eq!(ids.next().header_value().len(), 32);
    }

    #[test]
    fn header_values_cut_from_one_slab_keep_their_own_ids() {
        let ids = RequestIds::seeded(7, 9);
        let made: Vec<(RequestId, http::HeaderValue)> = (0..IDS_PER_SLAB * 3 + 5)
            .map(|_| {
                let id = ids.next();
                (id, id.header_value())
            })
            .collect();
        for (id, value) in &made {
            assert_eq!(value.as_bytes(), id.as_str().as_bytes());
            assert_eq!(value.clone().to_str().unwrap(), id.as_str());
        }
    }

    #[test]
    fn a_used_up_slab_is_reused_once_its_ids_are_gone_and_kept_while_one_lives() {
        let ids = RequestIds::seeded(7, 9);
        let first = ids.next().header_value();
        let at = first.as_bytes().as_ptr();
        drop(first);
        for _ in 1..IDS_PER_SLAB {
            drop(ids.next().header_value());
        }
        // Every id of the slab is gone: the next one is cut from it again.
        let first_id = ids.next();
        let again = first_id.header_value();
        assert_eq!(again.as_bytes().as_ptr(), at);
        // That id outlives the slab's turn: a new slab, and the living id
        // keeps its bytes.
        for _ in 1..IDS_PER_SLAB {
            drop(ids.next().header_value());
        }
        let next = ids.next();
        let fresh = next.header_value();
        assert_ne!(fresh.as_bytes().as_ptr(), at);
        assert_eq!(fresh.as_bytes(), next.as_str().as_bytes());
        assert_eq!(again.as_bytes().as_ptr(), at);
        assert_eq!(again.as_bytes(), first_id.as_str().as_bytes());
    }

    #[test]
    fn processes_get_different_ids() {
        let (a, b) = (RequestIds::new(), RequestIds::new());
        assert_ne!(a.next(), b.next());
    }
}

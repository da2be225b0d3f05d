//! CRC32C (Castagnoli), as required by the PROXY v2 `PP2_TYPE_CRC32C` TLV
//! (RFC 4960, appendix B: reflected polynomial `0x1EDC6F41`, initial value and
//! final XOR `0xFFFF_FFFF`).
//!
//! Guarantees: pure, allocation-free, panic-free for any input. The lookup
//! table is built at compile time. A byte-at-a-time table is deliberately
//! chosen over slicing-by-8 or SSE4.2: a PROXY header is at most a few hundred
//! bytes, so the simple loop costs nanoseconds and needs no `unsafe`.

/// The Castagnoli polynomial in reflected (LSB-first) form.
const POLY_REFLECTED: u32 = 0x82F6_3B78;

/// `TABLE[i]` is the CRC register update for the byte value `i`.
const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < table.len() {
        // `i < 256`, so the cast is lossless.
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// An incremental CRC32C computation.
///
/// Incremental so that the PROXY parser can checksum a header "with the CRC
/// field zeroed" by feeding the bytes around the field plus four zero bytes,
/// instead of copying the header into a scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crc32c {
    state: u32,
}

impl Crc32c {
    /// Starts a new computation.
    #[must_use]
    pub const fn new() -> Self {
        Self { state: u32::MAX }
    }

    /// Feeds `bytes` into the checksum.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.state;
        for &byte in bytes {
            // Truncation to the low byte is the point of the table lookup.
            let index = (crc as u8) ^ byte;
            crc = TABLE[usize::from(index)] ^ (crc >> 8);
        }
        self.state = crc;
    }

    /// Returns the checksum of everything fed so far.
    #[must_use]
    pub const fn finish(self) -> u32 {
        !self.state
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

/// CRC32C of the concatenation of `parts`.
#[must_use]
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = Crc32c::new();
    for part in parts {
        crc.update(part);
    }
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // The standard "check" value for CRC-32/ISCSI (a.k.a. CRC32C).
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
    }

    #[test]
    fn empty_input() {
        assert_eq!(crc32c(&[]), 0);
        assert_eq!(crc32c(&[b""]), 0);
    }

    #[test]
    fn rfc3720_vectors() {
        // iSCSI (RFC 3720, B.4) test vectors.
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8A91_36AA);
        assert_eq!(crc32c(&[&[0xFFu8; 32]]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&[&ascending]), 0x46DD_794E);
    }

    #[test]
    fn incremental_matches_one_shot() {
        let data = b"The quick brown fox jumps over the lazy dog";
        for split in 0..=data.len() {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c(&[a, b]), crc32c(&[data]), "split at {split}");
        }
    }
}

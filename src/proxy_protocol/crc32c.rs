//! CRC32C (Castagnoli), as required by the PROXY v2 `PP2_TYPE_CRC32C` TLV
//! (RFC 4960, appendix B), computed by the `crc32c` crate: the CPU's CRC
//! instruction (SSE 4.2, ARMv8 CRC) where there is one, a table otherwise.
//!
//! Guarantees: pure, allocation-free, panic-free for any input.

/// CRC32C of the concatenation of `parts`.
///
/// In parts so that the PROXY parser can checksum a header "with the CRC
/// field zeroed" by feeding the bytes around the field plus four zero bytes,
/// instead of copying the header into a scratch buffer.
#[must_use]
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    // `crc32c_append(0, data)` is `crc32c(data)`: the crate folds the initial
    // value and the final XOR into the running value it hands back.
    parts
        .iter()
        .fold(0, |crc, part| ::crc32c::crc32c_append(crc, part))
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

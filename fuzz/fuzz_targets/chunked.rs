//! Fuzz target: the backend client's chunked body decoder,
//! `forward::client::chunked::Chunked`.
//!
//! Input: the first byte seeds the read sizes; the rest is the bytes the
//! backend sent. They are decoded twice, as one read and as reads of
//! varying sizes (1 to 8 bytes, the sequence chosen by the seed).
//!
//! Checks besides "never panics", each a documented promise of the
//! decoder: the result depends only on the bytes, not on how they were
//! split (same data, same end, error or need for more, and after the end
//! the same bytes left for what follows on the connection); `Data` is
//! never empty; `Ok(None)` leaves nothing usable in the buffer; the end
//! and errors are final.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::forward::client::chunked::{Chunked, ChunkedError, Decoded};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// With what was left in the buffer.
    End(Vec<u8>),
    NeedMore,
    Failed(ChunkedError),
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, body)) = input.split_first() else {
        return;
    };
    let whole = decode([body]);
    let mut rest = body;
    let mut x = seed;
    let pieces = std::iter::from_fn(|| {
        // An LCG over u8 (full period) picking each read's size.
        x = x.wrapping_mul(5).wrapping_add(3);
        let (piece, after) = rest
            .split_at_checked(usize::from(x % 8) + 1)
            .unwrap_or((rest, &[]));
        rest = after;
        (!piece.is_empty()).then_some(piece)
    });
    assert_eq!(
        decode(pieces),
        whole,
        "splitting the reads changed the result"
    );
});

/// Feeds `pieces` as successive reads; returns the data and how it ended.
fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Outcome) {
    let mut decoder = Chunked::new();
    // A `BytesMut`, named only by `decode`'s signature: this crate has no
    // `bytes` dependency of its own.
    let mut buf = Default::default();
    let mut data = Vec::new();
    for piece in pieces {
        Extend::extend(&mut buf, piece.iter().copied());
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Data(bytes))) => {
                    assert!(!bytes.is_empty(), "empty Data");
                    data.extend_from_slice(&bytes);
                }
                // Reads after the end are appended and left alone.
                Ok(Some(Decoded::End)) => break,
                Ok(None) => {
                    assert!(buf.is_empty(), "Ok(None) left bytes to decode");
                    break;
                }
                Err(error) => {
                    assert_eq!(decoder.decode(&mut buf), Err(error), "error not final");
                    return (data, Outcome::Failed(error));
                }
            }
        }
    }
    if decoder.is_done() {
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::End)),
            "end not final"
        );
        (data, Outcome::End(buf.to_vec()))
    } else {
        (data, Outcome::NeedMore)
    }
}

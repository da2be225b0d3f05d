//! The Prometheus registry (SPEC §8). Each module registers the families
//! it observes into the registry passed to it; this file only creates the
//! registry and renders it. No label ever carries a client address,
//! deployment id or other unbounded value.

use prometheus::{Encoder, Registry, TextEncoder};

/// Buckets for request and upstream durations: from half a millisecond (a
/// cached search on a warm connection) to a minute (a large bulk request).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A registry whose metric names all start with `portcullis_`.
pub fn registry() -> Registry {
    Registry::new_custom(Some("portcullis".into()), None).unwrap_or_default()
}

/// Prometheus text exposition format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a family that fails to
    // encode is skipped rather than failing the scrape.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    out
}

pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

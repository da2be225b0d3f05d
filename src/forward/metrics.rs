//! Upstream metrics, observed by the forwarder.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::ForwardError;
use crate::metrics::DURATION_BUCKETS;
use crate::policy::Product;

#[derive(Debug)]
pub struct UpstreamMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
    by_product: [OnceLock<Histogram>; Product::ALL.len()],
}

impl UpstreamMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "upstream_request_duration_seconds",
                    "From sending a request to a backend until its response headers arrived",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["product"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "upstream_errors_total",
                    "Requests that could not be forwarded, by cause",
                ),
                &["kind"],
            )?,
            by_product: Default::default(),
        };
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        Ok(m)
    }

    pub fn observe(&self, product: Product, seconds: f64) {
        if let Some(cell) = self.by_product.get(product.index()) {
            cell.get_or_init(|| self.duration.with_label_values(&[product.as_str()]))
                .observe(seconds);
        }
    }

    pub fn error(&self, e: &ForwardError) {
        self.errors.with_label_values(&[e.kind()]).inc();
    }
}

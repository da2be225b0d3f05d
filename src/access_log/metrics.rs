//! The access log's own metric.

use prometheus::{IntCounter, Opts, Registry};

/// `portcullis_access_log_dropped_lines_total`: lines lost because the log
/// consumer could not keep up (or the write failed).
pub fn register(registry: &Registry) -> Result<IntCounter, prometheus::Error> {
    let dropped = IntCounter::with_opts(Opts::new(
        "access_log_dropped_lines_total",
        "Access-log lines dropped because the log consumer could not keep up",
    ))?;
    registry.register(Box::new(dropped.clone()))?;
    Ok(dropped)
}

//! The access log (SPEC §9): exactly one line per request, written off the
//! request path.
//!
//! A data-path component rather than a `tracing` event: [`format`] writes a
//! line straight into bytes, and [`writer`] batches lines to one background
//! thread that writes them in large writes (see each module for why). What
//! goes into a line is decided by the request ([`crate::server`] fills a
//! [`format::Line`]); this module only formats and ships it.
//!
//! Compatibility with the `tracing` days: lines keep their fields, order,
//! `"target":"portcullis::access"` and format (`--log-format`), they go to
//! stdout (through the same lock as operational logs, so lines never
//! interleave), and a `RUST_LOG` filter that turns the `portcullis::access`
//! target off still turns the access log off.

pub mod clock;
pub mod format;
mod metrics;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

pub use format::{Format, FormattedOrigin, Line, Origin};
pub use writer::{Sink, WriterSettings, WriterThread};

use writer::Writer;

/// The `tracing` target the access log answered to; a subscriber filter
/// that disables it disables the access log.
pub const TARGET: &str = "portcullis::access";

/// Defaults of `[log]`.
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024;
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;
/// How long shutdown waits for the last lines to be written.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where request workers hand their lines. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    writer: Writer,
    format: Format,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Starts the writer thread for `sink`; `portcullis_access_log_dropped_lines_total`
    /// counts lines lost to a stalled or failing sink.
    pub fn start(
        format: Format,
        settings: WriterSettings,
        sink: Sink,
        registry: &Registry,
    ) -> Result<(Self, WriterThread), StartError> {
        let dropped = metrics::register(registry)?;
        let (writer, thread) =
            Writer::start(sink, settings, Box::new(dropped)).map_err(StartError::Thread)?;
        Ok((Self { writer, format }, thread))
    }

    /// Standard output, shared with the operational log through the
    /// standard library's stdout lock (each batch is written under it, so
    /// an operational line never lands inside an access-log line).
    pub fn stdout() -> Sink {
        Box::new(StdoutSink)
    }

    /// Whether the installed `tracing` subscriber would have shown access
    /// lines (`RUST_LOG=info,portcullis::access=off` turns them off).
    pub fn enabled_by_filter() -> bool {
        tracing::enabled!(target: TARGET, tracing::Level::INFO)
    }

    /// Queues one request's line. Never blocks on I/O; drops (and
    /// counts) the line when too much is waiting.
    pub fn log(&self, line: &Line<'_>) {
        let format = self.format;
        self.writer.append(|out| format::write(format, line, out));
    }

    /// `origin` formatted for this log's lines (see [`FormattedOrigin`]).
    pub fn format_origin(&self, origin: &Origin<'_>) -> FormattedOrigin {
        FormattedOrigin::new(self.format, origin)
    }

    /// The configured line format, for other kinds of lines.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Queues a line of another kind: `write` appends it, newline
    /// included, in [`AccessLog::format`] (see [`format`]'s helpers).
    pub fn log_with(&self, write: impl FnOnce(&mut Vec<u8>)) {
        self.writer.append(write);
    }
}

struct StdoutSink;

impl std::io::Write for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // One lock for the whole batch: nothing else on stdout interleaves.
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot register the access log's metric")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the access log's writer thread")]
    Thread(#[source] std::io::Error),
}

/// A sink that keeps what is written in memory, for tests and benches that
/// read the access log back.
#[derive(Debug, Clone, Default)]
pub struct MemorySink(Arc<std::sync::Mutex<Vec<u8>>>);

impl MemorySink {
    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }
}

impl std::io::Write for MemorySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! Connection and request metrics, observed by the server.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::policy::{Decision, Product, Reason, Verdict};
use crate::proxy_protocol::ReadError;
use crate::tls::HandshakeError;

const VERDICTS: [Verdict; 3] = [Verdict::Allowed, Verdict::Denied, Verdict::WouldDeny];
/// Products plus "none" for requests that named no deployment.
const PRODUCTS: usize = Product::ALL.len() + 1;
const SLOTS: usize = VERDICTS.len() * Reason::ALL.len() * PRODUCTS;

/// How a client connection ended: `connections_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client or the server closed it after a complete exchange.
    Closed,
    /// hyper's own timer fired (HTTP/2 keep-alive).
    Timeout,
    HttpError,
    HeaderTimeout,
    IdleTimeout,
    /// Still open when the shutdown grace period ran out.
    Aborted,
    ProxyProtocol,
    Tls,
    /// Closed at once: `server.max_connections` reached.
    Limit,
}

impl ConnectionEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::HttpError => "http_error",
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Aborted => "aborted",
            Self::ProxyProtocol => "proxy_protocol",
            Self::Tls => "tls",
            Self::Limit => "limit",
        }
    }
}

#[derive(Debug)]
pub struct ServerMetrics {
    pub connections_active: IntGauge,
    /// HTTP/1.1 connections idle with their HTTP buffers released.
    connections_released: IntGauge,
    connections_total: IntCounterVec,
    proxy_protocol_errors: IntCounterVec,
    tls_handshake_errors: IntCounterVec,
    requests_total: IntCounterVec,
    /// `requests_total` children, created on first use, then one atomic
    /// add per request.
    request_slots: Box<[OnceLock<IntCounter>]>,
}

/// Counts one connection in a gauge (`connections_active`,
/// `connections_released`) while it is held.
#[derive(Debug)]
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ServerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            connections_active: IntGauge::new("connections_active", "Client connections open now")?,
            connections_released: IntGauge::new(
                "connections_released",
                "Idle HTTP/1.1 connections holding only their TLS state (HTTP buffers released)",
            )?,
            connections_total: IntCounterVec::new(
                Opts::new("connections_total", "Client connections by how they ended"),
                &["result"],
            )?,
            proxy_protocol_errors: IntCounterVec::new(
                Opts::new(
                    "proxy_protocol_errors_total",
                    "Connections refused at the PROXY header",
                ),
                &["kind"],
            )?,
            tls_handshake_errors: IntCounterVec::new(
                Opts::new("tls_handshake_errors_total", "Failed TLS handshakes"),
                &["kind"],
            )?,
            requests_total: IntCounterVec::new(
                Opts::new("requests_total", "Requests by policy decision"),
                &["decision", "reason", "product"],
            )?,
            request_slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
        };
        registry.register(Box::new(m.connections_active.clone()))?;
        registry.register(Box::new(m.connections_released.clone()))?;
        registry.register(Box::new(m.connections_total.clone()))?;
        registry.register(Box::new(m.proxy_protocol_errors.clone()))?;
        registry.register(Box::new(m.tls_handshake_errors.clone()))?;
        registry.register(Box::new(m.requests_total.clone()))?;
        Ok(m)
    }

    /// A connection is open until the returned guard drops. A guard rather
    /// than a `dec()` after the connection's future: a connection task
    /// that panics unwinds past that call, and the gauge would count it
    /// open forever (found by tests/hostile.rs
    /// `afterwards_no_connection_is_left_open` with a panic injected).
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_active.inc();
        OpenConnection(self.connections_active.clone())
    }

    /// Counts one connection in `connections_released` until the guard is
    /// dropped (it woke, or is closing).
    pub fn connection_released(&self) -> OpenConnection {
        self.connections_released.inc();
        OpenConnection(self.connections_released.clone())
    }

    pub fn connection_ended(&self, end: ConnectionEnd) {
        self.connections_total
            .with_label_values(&[end.as_str()])
            .inc();
    }

    pub fn proxy_protocol_error(&self, e: &ReadError) {
        self.proxy_protocol_errors
            .with_label_values(&[e.kind()])
            .inc();
    }

    pub fn tls_handshake_error(&self, e: &HandshakeError) {
        self.tls_handshake_errors
            .with_label_values(&[e.kind()])
            .inc();
    }

    pub fn request(&self, d: &Decision) {
        let v = VERDICTS.iter().position(|v| *v == d.verdict).unwrap_or(0);
        let r = Reason::ALL.iter().position(|r| *r == d.reason).unwrap_or(0);
        let p = d.target.map_or(Product::ALL.len(), |t| t.product.index());
        let slot = (v * Reason::ALL.len() + r) * PRODUCTS + p;
        let Some(cell) = self.request_slots.get(slot) else {
            return;
        };
        cell.get_or_init(|| {
            let product = d.target.map_or("none", |t| t.product.as_str());
            self.requests_total
                .with_label_values(&[d.verdict.as_str(), d.reason.as_str(), product])
        })
        .inc();
    }
}

//! Remote-cluster pass-through metrics. Every label value is one of the
//! fixed sets below: no address, name or deployment id.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// `remote_cluster_connections_total{result}`: what became of a new
/// connection, counted once, when that is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Spliced to a backend node (allowed, or `filter = false`).
    Spliced,
    /// Spliced although the policies deny it: the deployment is in
    /// `dry_run`.
    WouldDeny,
    /// The connection limit (`server.max_connections`) was reached.
    Limit,
    /// Refused at the PROXY header.
    ProxyProtocol,
    /// No ClientHello within the size or time limit, or not one at all.
    ClientHello,
    NoSni,
    UnknownDeployment,
    NoResource,
    /// Denied by the deployment's policies (`filter = true`).
    Denied,
    /// No backend node could be connected to.
    ConnectFailed,
    /// Draining began before the connection was routed.
    Shutdown,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Self::Spliced,
        Self::WouldDeny,
        Self::Limit,
        Self::ProxyProtocol,
        Self::ClientHello,
        Self::NoSni,
        Self::UnknownDeployment,
        Self::NoResource,
        Self::Denied,
        Self::ConnectFailed,
        Self::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spliced => "spliced",
            Self::WouldDeny => "would_deny",
            Self::Limit => "limit",
            Self::ProxyProtocol => "proxy_protocol",
            Self::ClientHello => "client_hello",
            Self::NoSni => "no_sni",
            Self::UnknownDeployment => "unknown_deployment",
            Self::NoResource => "no_resource",
            Self::Denied => "denied",
            Self::ConnectFailed => "connect_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// How a spliced connection ended (`remote_cluster_connection_ends_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed first (its EOF was passed on; the backend then
    /// finished).
    ClientClosed,
    BackendClosed,
    /// A read or write on the client side failed (reset, ...).
    ClientError,
    BackendError,
    IdleTimeout,
    /// A newer snapshot denies it (or no longer has its deployment).
    Revoked,
    /// The shutdown grace period ran out.
    Shutdown,
}

impl End {
    pub const ALL: [End; 7] = [
        Self::ClientClosed,
        Self::BackendClosed,
        Self::ClientError,
        Self::BackendError,
        Self::IdleTimeout,
        Self::Revoked,
        Self::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::BackendClosed => "backend_closed",
            Self::ClientError => "client_error",
            Self::BackendError => "backend_error",
            Self::IdleTimeout => "idle_timeout",
            Self::Revoked => "revoked",
            Self::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PassthroughMetrics {
    /// `remote_cluster_connections_total` children, in [`Outcome::ALL`]
    /// order: one atomic add per connection, no label lookup.
    connections: [IntCounter; Outcome::ALL.len()],
    /// `remote_cluster_connection_ends_total` children, [`End::ALL`] order.
    ends: [IntCounter; End::ALL.len()],
    pub active: IntGauge,
    pub client_to_backend: IntCounter,
    pub backend_to_client: IntCounter,
}

/// Counts one connection in `remote_cluster_connections_active` while it
/// lives (a guard, so a panicking task cannot leave it counted).
#[derive(Debug)]
pub struct Open(IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl PassthroughMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let bytes = IntCounterVec::new(
            Opts::new(
                "remote_cluster_bytes_total",
                "Bytes spliced by the remote-cluster listener, by direction",
            ),
            &["direction"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "remote_cluster_connections_total",
                "Remote-cluster connections by what became of them",
            ),
            &["result"],
        )?;
        let ends = IntCounterVec::new(
            Opts::new(
                "remote_cluster_connection_ends_total",
                "Spliced remote-cluster connections by how they ended",
            ),
            &["end"],
        )?;
        // Every label value shows from the start, at 0: alerts on a rate
        // need the series to exist.
        let m = Self {
            connections: Outcome::ALL.map(|o| connections.with_label_values(&[o.as_str()])),
            ends: End::ALL.map(|e| ends.with_label_values(&[e.as_str()])),
            active: IntGauge::new(
                "remote_cluster_connections_active",
                "Remote-cluster connections open now (routing or spliced)",
            )?,
            client_to_backend: bytes.with_label_values(&["client_to_backend"]),
            backend_to_client: bytes.with_label_values(&["backend_to_client"]),
        };
        registry.register(Box::new(connections))?;
        registry.register(Box::new(ends))?;
        registry.register(Box::new(m.active.clone()))?;
        registry.register(Box::new(bytes))?;
        Ok(m)
    }

    pub fn outcome(&self, o: Outcome) {
        if let Some(c) = self.connections.get(o as usize) {
            c.inc();
        }
    }

    pub fn ended(&self, e: End) {
        if let Some(c) = self.ends.get(e as usize) {
            c.inc();
        }
    }

    pub fn opened(&self) -> Open {
        self.active.inc();
        Open(self.active.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arrays_are_in_declaration_order_and_counted_once() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o as usize, i, "{}", o.as_str());
        }
        for (i, e) in End::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i, "{}", e.as_str());
        }
        let registry = Registry::new();
        let m = PassthroughMetrics::register(&registry).expect("registers");
        m.outcome(Outcome::NoResource);
        m.ended(End::Revoked);
        let text = String::from_utf8(crate::metrics::render(&registry)).expect("UTF-8");
        assert!(
            text.contains("remote_cluster_connections_total{result=\"no_resource\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("remote_cluster_connections_total{result=\"spliced\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("remote_cluster_connection_ends_total{end=\"revoked\"} 1"),
            "{text}"
        );
    }
}

//! The nodes of one deployment resource, as the compiled snapshot holds
//! them, and where the next request's walk over them starts.
//!
//! Built by [`crate::policy::compile`] with the rest of the snapshot (so a
//! reload swaps routes and policies together), read by [`crate::forward`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The nodes of one deployment resource, with a round-robin cursor.
#[derive(Debug)]
pub struct Backends {
    nodes: Box<[SocketAddr]>,
    next: AtomicUsize,
}

impl Backends {
    pub fn new(nodes: &[SocketAddr]) -> Self {
        Self {
            nodes: nodes.into(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn nodes(&self) -> &[SocketAddr] {
        &self.nodes
    }

    /// Where this request's round-robin walk over the nodes starts.
    pub fn next_start(&self) -> usize {
        // Relaxed: only spreading load, no ordering with other memory.
        self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_starts_one_node_further_each_time() {
        let nodes: Vec<SocketAddr> = ["10.0.0.1:9200", "10.0.0.2:9200", "10.0.0.3:9200"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let b = Backends::new(&nodes);
        let starts: Vec<usize> = (0..4).map(|_| b.next_start()).collect();
        assert_eq!(starts, [0, 1, 2, 0]);
        assert_eq!(
            Backends::new(&[]).next_start(),
            0,
            "no nodes: no division by zero"
        );
    }
}

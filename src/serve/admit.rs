//! Admission of connections: the data plane's process-wide and per-shard limits, and the
//! control listener's own limit.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::channel::Shared;
use crate::metrics::METRICS;

/// Counts a data-plane connection for as long as it lives (travels with a handoff).
pub struct ConnGuard {
    shared: Arc<Shared>,
    /// The shard that accepted it (its count, wherever the connection is handed).
    shard: usize,
}

impl ConnGuard {
    /// Admits a connection accepted by `shard`, or `None` when the relay or that shard is
    /// at its connection limit.
    pub fn admit(shared: &Arc<Shared>, shard: usize) -> Option<ConnGuard> {
        let total = shared.connections.fetch_add(1, Relaxed);
        let on_shard = shared.shard_connections[shard].fetch_add(1, Relaxed);
        let stats = &shared.stats[shard];
        stats.connections_active.fetch_add(1, Relaxed);
        stats.connections_total.fetch_add(1, Relaxed);
        let g = ConnGuard {
            shared: shared.clone(),
            shard,
        };
        let cfg = &shared.config;
        (total < cfg.max_connections && on_shard < cfg.max_connections_per_shard).then_some(g)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Relaxed);
        self.shared.shard_connections[self.shard].fetch_sub(1, Relaxed);
        let stats = &self.shared.stats[self.shard];
        stats.connections_active.fetch_sub(1, Relaxed);
    }
}

/// Counts a control-API connection for as long as it lives.
pub struct ControlGuard {
    shared: Arc<Shared>,
}

impl ControlGuard {
    /// Admits a control connection, or `None` at `max_control_connections`.
    pub fn admit(shared: &Arc<Shared>) -> Option<ControlGuard> {
        METRICS.control_connections_total.fetch_add(1, Relaxed);
        let open = shared.control_connections.fetch_add(1, Relaxed);
        let g = ControlGuard {
            shared: shared.clone(),
        };
        (open < shared.config.max_control_connections).then_some(g)
    }
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        self.shared.control_connections.fetch_sub(1, Relaxed);
    }
}

//! The handover gate: a replica that takes over deployments holds their grants until every
//! live peer has reported its leases for the new view (or a short timeout passes), so the
//! slots already in use are counted before new ones are given.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::watch;

/// Grants of some deployments, held until the peers have reported.
pub struct Gate {
    keys: HashSet<String>,
    view: u64,
    pending: Mutex<HashSet<Arc<str>>>,
    open: watch::Sender<bool>,
}

impl Gate {
    /// A closed gate over `keys` (`endpoint/deployment`) for the view `view`, waiting for
    /// the peers in `pending`.
    pub fn new(keys: HashSet<String>, view: u64, pending: HashSet<Arc<str>>) -> Arc<Self> {
        let (open, _) = watch::channel(pending.is_empty());
        Arc::new(Gate {
            keys,
            view,
            pending: Mutex::new(pending),
            open,
        })
    }

    /// Whether grants may go ahead.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Opens the gate.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Whether the gate holds `endpoint/deployment`.
    pub fn covers(&self, endpoint: &str, deployment: &str) -> bool {
        let mut key = String::with_capacity(endpoint.len() + 1 + deployment.len());
        key.push_str(endpoint);
        key.push('/');
        key.push_str(deployment);
        self.keys.contains(&key)
    }

    /// Records that `peer` reported all its leases for `view`; opens when none is missing.
    pub fn peer_synced(&self, peer: &str, view: u64) {
        if view != self.view {
            return;
        }
        let mut pending = self.pending.lock();
        pending.remove(peer);
        if pending.is_empty() {
            self.open();
        }
    }

    /// Waits until the gate opens or `deadline` passes.
    pub async fn wait(&self, deadline: Instant) {
        let mut open = self.open.subscribe();
        let _ = tokio::time::timeout_at(deadline.into(), open.wait_for(|o| *o)).await;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(peers: &[&str]) -> Arc<Gate> {
        Gate::new(
            HashSet::from(["credit/blue".to_owned()]),
            7,
            peers.iter().map(|p| Arc::<str>::from(*p)).collect(),
        )
    }

    #[test]
    fn opens_when_every_peer_reported_for_the_same_view() {
        let g = gate(&["a", "b"]);
        assert!(g.covers("credit", "blue"));
        assert!(!g.covers("credit", "green"));
        assert!(!g.is_open());
        g.peer_synced("a", 7);
        assert!(!g.is_open());
        g.peer_synced("b", 6);
        assert!(!g.is_open(), "a report for another view does not count");
        g.peer_synced("b", 7);
        assert!(g.is_open());
    }

    #[tokio::test]
    async fn waiting_ends_at_the_deadline_or_when_it_opens() {
        let g = gate(&["a"]);
        g.wait(Instant::now() + std::time::Duration::from_millis(20))
            .await;
        assert!(!g.is_open());
        let opener = g.clone();
        tokio::spawn(async move { opener.peer_synced("a", 7) });
        g.wait(Instant::now() + std::time::Duration::from_secs(60))
            .await;
        assert!(g.is_open());
    }
}

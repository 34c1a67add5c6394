//! This replica's standing in the cluster, checked every heartbeat: whether it was stopped (a
//! tick that comes much later than due), whether its peers refuse its credential, and whether
//! it has been without an agreed majority view for longer than `isolation_after_ms`. An isolated
//! replica is not ready (`/readyz` says why) and admits only under `cluster.fallback`.
//!
//! Time spent stopped does not count towards isolation: a replica that resumes after a long
//! pause first tries its peers again (and waits for them, requests included) before it may
//! fall back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::peers::Problem;
use super::view::View;
use super::Cluster;

/// The standing, as the last tick found it.
pub struct Health {
    isolated: AtomicBool,
    /// Whether the view has been settled at least once since start.
    joined: AtomicBool,
    reason: ArcSwapOption<String>,
    unsettled_since: Mutex<Option<Instant>>,
    last_tick: Mutex<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            isolated: AtomicBool::new(false),
            joined: AtomicBool::new(false),
            reason: ArcSwapOption::empty(),
            unsettled_since: Mutex::new(None),
            last_tick: Mutex::new(Instant::now()),
        }
    }
}

impl Health {
    /// Whether this replica admits only under the fallback.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
    }

    /// Why it should get no traffic: isolated, or not yet in an agreed view since it started.
    pub fn reason(&self) -> Option<String> {
        if let Some(reason) = self.reason.load().as_deref() {
            return Some(reason.clone());
        }
        (!self.joined.load(Ordering::Acquire))
            .then(|| "joining: not yet in an agreed view of a majority of the replicas".to_string())
    }
}

impl Cluster {
    /// One heartbeat's check of the standing.
    pub(crate) fn check_health(&self) {
        let now = Instant::now();
        let gap = {
            let mut last = self.health.last_tick.lock();
            let gap = now.saturating_duration_since(*last);
            *last = now;
            gap
        };
        let stalled = gap > self.settings.peer_timeout + self.settings.heartbeat;
        if stalled {
            self.metrics.stalls.increment(1);
            tracing::warn!(
                paused = ?gap,
                "cluster: this replica was stopped or starved for {gap:?}; its lease on the view \
                 has run out and it grants nothing until its peers confirm the view again"
            );
            for peer in self.peers.lock().values() {
                peer.hello_now();
            }
            // The connections that broke meanwhile broke because this replica did not answer:
            // their holders are alive and report what they hold.
            self.leases
                .after_own_stall(now - gap, now + 2 * self.settings.peer_timeout);
        }
        let view = self.view.load_full();
        let unsettled = self.unsettled(&view);
        if unsettled.is_none() {
            self.health.joined.store(true, Ordering::Release);
        }
        let since = {
            let mut since = self.health.unsettled_since.lock();
            match (&unsettled, stalled) {
                (None, _) => *since = None,
                // Time spent stopped does not count.
                (Some(_), true) => *since = Some(now),
                (Some(_), false) => {
                    since.get_or_insert(now);
                }
            }
            *since
        };
        let reason = match (self.refused(), unsettled, since) {
            (Some(refused), _, _) => Some(refused),
            (None, Some(why), Some(since))
                if now.saturating_duration_since(since) >= self.settings.isolation_after =>
            {
                Some(format!(
                    "{why}, for {:.1} s (cluster.isolation_after_ms: {} ms)",
                    now.saturating_duration_since(since).as_secs_f64(),
                    self.settings.isolation_after.as_millis()
                ))
            }
            _ => None,
        };
        self.set_isolated(reason);
    }

    fn set_isolated(&self, reason: Option<String>) {
        let isolated = reason.is_some();
        let was = self.health.isolated.swap(isolated, Ordering::AcqRel);
        self.metrics.isolated.set(if isolated { 1.0 } else { 0.0 });
        match (&reason, was) {
            (Some(reason), false) => tracing::warn!(
                fallback = ?self.settings.fallback,
                "cluster: this replica is not ready and admits only under cluster.fallback: {reason}"
            ),
            (None, true) => {
                tracing::info!("cluster: this replica is back in an agreed view; ready again")
            }
            _ => {}
        }
        self.health.reason.store(reason.map(std::sync::Arc::new));
        if was != isolated {
            self.notify();
        }
    }

    /// Why the peers refuse this replica: some peer refused the credential (or speaks another
    /// protocol) and none is live.
    fn refused(&self) -> Option<String> {
        let peers = self.peers.lock();
        if peers.values().any(|p| p.is_live()) {
            return None;
        }
        let problems: Vec<String> = peers
            .values()
            .filter_map(|p| p.problem())
            .map(|p| match p {
                Problem::Refused(text) | Problem::Incompatible(text) => text,
            })
            .collect();
        (!problems.is_empty())
            .then(|| format!("cannot authenticate to any peer: {}", problems.join("; ")))
    }

    /// Why the view is not settled: no majority, or a member announces another view.
    fn unsettled(&self, view: &View) -> Option<String> {
        let known = self.known_replicas();
        if !view.has_quorum() {
            let unreachable: Vec<String> = self
                .peers
                .lock()
                .values()
                .filter(|p| !view.members().contains(&p.id))
                .map(|p| p.id.to_string())
                .collect();
            return Some(format!(
                "sees {} of {known} replicas in an agreed view ({} needed); not in it: {}",
                view.members().len(),
                super::membership::majority(known),
                if unreachable.is_empty() {
                    "none".to_string()
                } else {
                    unreachable.join(", ")
                }
            ));
        }
        let disagreeing: Vec<String> = view
            .members()
            .iter()
            .filter(|m| **m != self.me)
            .filter_map(|m| {
                let theirs = self.peers.lock().get(m).and_then(|p| p.view());
                (theirs != Some(view.id())).then(|| match theirs {
                    Some(theirs) => format!("{m} has view {theirs}"),
                    None => format!("{m} has not answered"),
                })
            })
            .collect();
        (!disagreeing.is_empty()).then(|| {
            format!(
                "its view {} ({}) differs from its members': {}",
                view.id(),
                view.members().join(", "),
                disagreeing.join("; ")
            )
        })
    }

    /// The replicas known: the list (or the Service's replicas) and this one.
    pub(crate) fn known_replicas(&self) -> usize {
        let peers = self.peers.lock();
        super::membership::known(&self.me, peers.keys().map(|k| &**k))
    }
}

/// Checks the standing every `heartbeat` until the cluster is dropped.
pub async fn run(cluster: std::sync::Weak<Cluster>, heartbeat: Duration) {
    let mut every = tokio::time::interval(heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        cluster.check_health();
        cluster.recompute();
        cluster.end_shadows_of_dead();
    }
}

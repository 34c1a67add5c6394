//! The cluster's metrics.

use std::collections::HashMap;
use std::net::SocketAddr;

use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;

use crate::admission::Pod;
use crate::telemetry::Metrics;

/// Metric names.
pub mod names {
    /// Admissions by how the slot was obtained: `owner` (this replica owns the deployment),
    /// `remote` (granted by the owner), `fallback` (owner unreachable, admitted locally).
    pub const ADMISSIONS: &str = "scoregate_cluster_admissions_total";
    /// Time from asking the owner for a slot to having it (queue wait at the owner included).
    pub const GRANT_DURATION: &str = crate::telemetry::names::CLUSTER_GRANT_DURATION;
    /// Grants this replica gave other replicas, as the owner.
    pub const GRANTS_SERVED: &str = "scoregate_cluster_grants_served_total";
    /// Deployments this replica took over when the live replicas changed.
    pub const HANDOVERS: &str = "scoregate_cluster_handovers_total";
    /// Held slots reported to a new owner after ownership moved.
    pub const LEASES_REPORTED: &str = "scoregate_cluster_leases_reported_total";
    /// Slots taken over a pod's cap: reported fallback admissions that did not fit.
    pub const OVER_ADMISSIONS: &str = "scoregate_cluster_over_admissions_total";
    /// Leases that expired before their requester released them.
    pub const LEASE_EXPIRIES: &str = "scoregate_cluster_lease_expiries_total";
    /// Requests and handshakes refused for a missing or wrong credential, either way.
    pub const REFUSED: &str = "scoregate_cluster_refused_total";
    /// Members of this replica's view, itself included when it is one.
    pub const MEMBERS: &str = "scoregate_cluster_members";
    /// The epoch of this replica's view.
    pub const EPOCH: &str = "scoregate_cluster_view_epoch";
    /// Times this replica took a new view (members or epoch).
    pub const VIEW_CHANGES: &str = "scoregate_cluster_view_changes_total";
    /// Times this replica found it had been stopped or starved for longer than a peer timeout.
    pub const STALLS: &str = "scoregate_cluster_stalls_total";
    /// 1 while this replica is isolated (not ready; admitting only under `cluster.fallback`).
    pub const ISOLATED: &str = "scoregate_cluster_isolated";
    /// Leases whose holder vanished with its connection, kept until they expired.
    pub const LEASES_VANISHED: &str = "scoregate_cluster_leases_vanished_total";
    /// Grants ignored because the owner answered from an older epoch than this replica's view.
    pub const STALE_GRANTS: &str = "scoregate_cluster_stale_grants_total";
    /// Per pod (`endpoint`, `deployment`, `pod`): the most requests this replica counted on it
    /// at once when it admitted or granted for it as the owner (its own, the ones it granted and
    /// the ones reported to it: every replica's) or under the fallback. A reported slot that an
    /// owner granted is not sampled when it lands above the cap (`docs/ARCHITECTURE.md`,
    /// "Reports and the peak figure").
    pub const POD_PEAK: &str = "scoregate_cluster_pod_peak_in_flight";
}

/// Handles to the cluster's metrics.
pub struct ClusterMetrics {
    /// Admissions as owner.
    pub owner: Counter,
    /// Admissions granted by a remote owner.
    pub remote: Counter,
    /// Admissions while the owner was unreachable.
    pub fallback: Counter,
    /// Remote grant latency.
    pub grant_duration: Histogram,
    /// Grants given to peers.
    pub served: Counter,
    /// Deployments taken over.
    pub handovers: Counter,
    /// Leases reported to a new owner.
    pub reported: Counter,
    /// Over-admissions found when leases were reported.
    pub over_admissions: Counter,
    /// Expired leases.
    pub expiries: Counter,
    /// Credential refusals.
    pub refused: Counter,
    /// Members of the view.
    pub members: Gauge,
    /// The view's epoch.
    pub epoch: Gauge,
    /// New views taken.
    pub view_changes: Counter,
    /// Stops or starvation found.
    pub stalls: Counter,
    /// 1 while isolated.
    pub isolated: Gauge,
    /// Leases kept after their holder vanished.
    pub vanished: Counter,
    /// Grants ignored as stale.
    pub stale_grants: Counter,
}

impl ClusterMetrics {
    /// Registers the handles.
    pub fn new(metrics: &Metrics) -> Self {
        ClusterMetrics {
            owner: metrics.counter(names::ADMISSIONS, &[("via", "owner")]),
            remote: metrics.counter(names::ADMISSIONS, &[("via", "remote")]),
            fallback: metrics.counter(names::ADMISSIONS, &[("via", "fallback")]),
            grant_duration: metrics.histogram(names::GRANT_DURATION, &[]),
            served: metrics.counter(names::GRANTS_SERVED, &[]),
            handovers: metrics.counter(names::HANDOVERS, &[]),
            reported: metrics.counter(names::LEASES_REPORTED, &[]),
            over_admissions: metrics.counter(names::OVER_ADMISSIONS, &[]),
            expiries: metrics.counter(names::LEASE_EXPIRIES, &[]),
            refused: metrics.counter(names::REFUSED, &[]),
            members: metrics.gauge(names::MEMBERS, &[]),
            epoch: metrics.gauge(names::EPOCH, &[]),
            view_changes: metrics.counter(names::VIEW_CHANGES, &[]),
            stalls: metrics.counter(names::STALLS, &[]),
            isolated: metrics.gauge(names::ISOLATED, &[]),
            vanished: metrics.counter(names::LEASES_VANISHED, &[]),
            stale_grants: metrics.counter(names::STALE_GRANTS, &[]),
        }
    }
}

/// Per pod, the most requests this replica counted on it at once while it admitted or granted
/// for it (as the owner, or under the fallback), reports included: on the owner that is every
/// replica's requests. Sampled right after each such admission; exported at every scrape as
/// [`names::POD_PEAK`].
#[derive(Default)]
pub struct PodPeaks {
    peaks: Mutex<HashMap<SocketAddr, u32>>,
}

impl PodPeaks {
    /// Records the count on `pod` now.
    pub fn record(&self, pod: &Pod) {
        let now = pod.in_flight();
        let mut peaks = self.peaks.lock();
        let peak = peaks.entry(pod.address()).or_default();
        *peak = (*peak).max(now);
    }

    /// The peak of the pod at `address`, 0 when none was recorded.
    pub fn of(&self, address: SocketAddr) -> u32 {
        self.peaks.lock().get(&address).copied().unwrap_or(0)
    }
}

//! The cluster's metrics.

use metrics::{Counter, Gauge, Histogram};

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
    /// Slots taken over a pod's cap: reported leases that did not fit, cluster-wide.
    pub const OVER_ADMISSIONS: &str = "scoregate_cluster_over_admissions_total";
    /// Leases that expired before their requester released them.
    pub const LEASE_EXPIRIES: &str = "scoregate_cluster_lease_expiries_total";
    /// Requests and handshakes refused for a missing or wrong credential, either way.
    pub const REFUSED: &str = "scoregate_cluster_refused_total";
    /// Live replicas in this replica's view, itself included.
    pub const MEMBERS: &str = "scoregate_cluster_members";
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
        }
    }
}

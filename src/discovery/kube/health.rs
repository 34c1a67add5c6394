//! What discovery's watches count: the [`Observer`] of its watch groups (the routing watches,
//! and the TLS Secret's). Outage logs are [`crate::k8s::health`]'s.

use metrics::Gauge;

use super::names;
use crate::k8s::Observer;
use crate::telemetry::Metrics;

/// Counts failures and relists by `resource`, and drives `scoregate_discovery_up` for the routing
/// watches.
pub struct WatchMetrics {
    metrics: Metrics,
    up: Option<Gauge>,
}

impl WatchMetrics {
    /// The routing watches' metrics (`up` is `scoregate_discovery_up`), or a side watch's such as
    /// the TLS Secret's (`up` is `None`).
    pub fn new(metrics: &Metrics, up: Option<Gauge>) -> Self {
        WatchMetrics {
            metrics: metrics.clone(),
            up,
        }
    }
}

impl Observer for WatchMetrics {
    fn failed(&self, resource: &'static str) {
        self.metrics
            .counter(names::WATCH_ERRORS, &[("resource", resource)])
            .increment(1);
    }

    fn relisted(&self, resource: &'static str) {
        self.metrics
            .counter(names::RELISTS, &[("resource", resource)])
            .increment(1);
    }

    fn up(&self, up: bool) {
        if let Some(gauge) = &self.up {
            gauge.set(if up { 1.0 } else { 0.0 });
        }
    }
}

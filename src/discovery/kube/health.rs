//! Watch health: which watches are failing, since when, and what the logs and metrics say.
//!
//! The first failure of a watch is logged as a warning (the router keeps serving its last table),
//! repeats are logged every [`REMIND_EVERY`] attempts, and the recovery is logged with how long
//! the outage lasted. `scoregate_discovery_up` is 1 while every watch is healthy.

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::resources::{Kind, Scope, WatchId};
use super::{names, RESOURCE_TLS_SECRET};
use crate::telemetry::Metrics;

/// A failing watch is reminded about in the log every this many attempts.
const REMIND_EVERY: u32 = 20;

struct Failure {
    since: Instant,
    attempts: u32,
}

/// Tracks the health of a set of watches.
pub struct Health {
    metrics: Metrics,
    up: Option<Gauge>,
    failing: HashMap<(Kind, Scope, usize), Failure>,
    errors: HashMap<&'static str, Counter>,
    relists: HashMap<&'static str, Counter>,
}

impl Health {
    /// Health of the routing watches (`up` drives `scoregate_discovery_up`) or of a side watch
    /// such as the TLS Secret's (`up` is `None`).
    pub fn new(metrics: &Metrics, up: Option<Gauge>) -> Self {
        if let Some(up) = &up {
            up.set(1.0);
        }
        Health {
            metrics: metrics.clone(),
            up,
            failing: HashMap::new(),
            errors: HashMap::new(),
            relists: HashMap::new(),
        }
    }

    fn resource(id: &WatchId, tls: bool) -> &'static str {
        if tls {
            RESOURCE_TLS_SECRET
        } else {
            id.kind.as_str()
        }
    }

    /// A list or watch failed. `tls` marks the TLS Secret's watch.
    pub fn failed(&mut self, id: &WatchId, error: &str, expired: bool, tls: bool) {
        let resource = Self::resource(id, tls);
        let what = if tls {
            "the TLS Secret".to_string()
        } else {
            id.to_string()
        };
        if expired {
            let metrics = &self.metrics;
            self.relists
                .entry(resource)
                .or_insert_with(|| metrics.counter(names::RELISTS, &[("resource", resource)]))
                .increment(1);
            tracing::info!(watch = %what, "resourceVersion expired (410): relisting; routes stay until the new list is complete");
            return;
        }
        let metrics = &self.metrics;
        self.errors
            .entry(resource)
            .or_insert_with(|| metrics.counter(names::WATCH_ERRORS, &[("resource", resource)]))
            .increment(1);
        let failure = self
            .failing
            .entry((id.kind, id.scope.clone(), id.shard))
            .or_insert(Failure {
                since: Instant::now(),
                attempts: 0,
            });
        failure.attempts += 1;
        if failure.attempts == 1 {
            tracing::warn!(
                watch = %what,
                "cannot list or watch {what}: {error}; serving the last routing table and retrying with backoff"
            );
        } else if failure.attempts.is_multiple_of(REMIND_EVERY) {
            tracing::warn!(
                watch = %what,
                attempts = failure.attempts,
                down_for = ?round(failure.since.elapsed()),
                "still cannot list or watch {what}: {error}"
            );
        } else {
            tracing::debug!(watch = %what, attempts = failure.attempts, "watch retry failed: {error}");
        }
        self.refresh();
    }

    /// A failing watch works again.
    pub fn recovered(&mut self, id: &WatchId, tls: bool) {
        if let Some(failure) = self.failing.remove(&(id.kind, id.scope.clone(), id.shard)) {
            let what = if tls {
                "the TLS Secret".to_string()
            } else {
                id.to_string()
            };
            tracing::info!(
                watch = %what,
                attempts = failure.attempts,
                down_for = ?round(failure.since.elapsed()),
                "watching {what} again"
            );
        }
        self.refresh();
    }

    /// A watch was stopped (an emptied EndpointSlice shard): forget its failures.
    pub fn forget(&mut self, id: &WatchId) {
        self.failing.remove(&(id.kind, id.scope.clone(), id.shard));
        self.refresh();
    }

    /// Whether every watch is healthy.
    pub fn is_up(&self) -> bool {
        self.failing.is_empty()
    }

    fn refresh(&self) {
        if let Some(up) = &self.up {
            up.set(if self.failing.is_empty() { 1.0 } else { 0.0 });
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

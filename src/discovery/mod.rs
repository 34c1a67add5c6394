//! Discovery: sources that produce a [`RouteSpec`] and publish it as a routing table.
//!
//! Every source goes through one [`Publisher`]: it validates the spec, publishes it or refuses it
//! (the last good table stays), counts both outcomes, and marks the router ready after the first
//! table. The proxy never knows which source a table came from.

pub mod file;
pub mod kube;

use metrics::{Counter, Gauge};

use crate::model::{RouteSpec, SpecError};
pub use crate::table::Readiness;
use crate::table::{BuildReport, TableBuilder, TableHandle};
use crate::telemetry::{names, Metrics};

/// Validates and publishes specs from one source.
pub struct Publisher {
    builder: TableBuilder,
    readiness: Readiness,
    applied: Counter,
    refused: Counter,
    endpoints: Gauge,
    source: &'static str,
}

impl Publisher {
    /// A publisher for `source` (`file`, `kube`) writing into `handle`.
    pub fn new(
        source: &'static str,
        handle: TableHandle,
        metrics: &Metrics,
        readiness: Readiness,
    ) -> Self {
        Publisher {
            builder: TableBuilder::new(handle, metrics.clone()),
            readiness,
            applied: metrics.counter(
                names::TABLE_RELOADS,
                &[("source", source), ("result", "applied")],
            ),
            refused: metrics.counter(
                names::TABLE_RELOADS,
                &[("source", source), ("result", "refused")],
            ),
            endpoints: metrics.gauge(names::TABLE_ENDPOINTS, &[]),
            source,
        }
    }

    /// Publishes `spec` if it is valid; otherwise keeps the current table and returns every problem.
    pub fn apply(&mut self, spec: &RouteSpec) -> Result<BuildReport, Vec<SpecError>> {
        if let Err(errors) = spec.validate() {
            self.refused.increment(1);
            return Err(errors);
        }
        let report = self.builder.publish(spec);
        self.published(&report);
        Ok(report)
    }

    /// Publishes `spec`, rebuilding only the endpoints named in `changed` (their declarations must
    /// already be valid: the Kubernetes source validates endpoint by endpoint, so that one bad
    /// endpoint does not hold back the others). Marks the router ready like [`Publisher::apply`].
    pub fn apply_changed<'a>(
        &mut self,
        spec: &RouteSpec,
        changed: impl IntoIterator<Item = &'a str>,
    ) -> BuildReport {
        let report = self.builder.publish_changed(spec, changed);
        self.published(&report);
        report
    }

    /// Counts a published table, marks the router ready, and logs what changed.
    fn published(&self, report: &BuildReport) {
        self.applied.increment(1);
        self.endpoints.set(report.endpoints as f64);
        self.readiness.mark_loaded();
        tracing::info!(
            source = self.source,
            generation = report.generation,
            endpoints = report.endpoints,
            rebuilt = report.endpoints_rebuilt,
            removed = report.endpoints_removed,
            "routing table published"
        );
    }

    /// Forgets pod state no table needs any more (see [`TableBuilder::sweep`]).
    pub fn sweep(&mut self) {
        self.builder.sweep();
    }

    /// Counts and logs a source-level failure (unreadable or unparsable input); the table stays.
    pub fn refuse(&self, reason: &str) {
        self.refused.increment(1);
        tracing::error!(
            source = self.source,
            "{reason}; keeping the last good routing table"
        );
    }
}

//! How decisions are made visible: the per-deployment metrics, and the `status.autoscale` the
//! owner writes (only when something in it changes, so a steady deployment costs no writes).

use metrics::{Counter, Gauge};

use super::decide::{utilization_percent, Decision, Policy, Sample};
use crate::crd::AutoscaleStatus;
use crate::telemetry::Metrics;

/// Metric names of the autoscaler (all labelled by `endpoint` and `deployment`).
pub mod names {
    /// Replicas the load asks for, within `minInstances..maxInstances`.
    pub const DESIRED_REPLICAS: &str = "scoregate_autoscale_desired_replicas";
    /// Replicas of the target Deployment after the last decision.
    pub const CURRENT_REPLICAS: &str = "scoregate_autoscale_current_replicas";
    /// Replicas added or removed, by `direction` (`up`, `down`).
    pub const SCALE_EVENTS: &str = "scoregate_autoscale_scale_events_total";
    /// 1 while the autoscaler leaves the deployment alone, by `reason` (`hpa`).
    pub const REFUSED: &str = "scoregate_autoscale_refused";
    /// Times the autoscaler started refusing, by `reason` (`hpa`).
    pub const REFUSALS: &str = "scoregate_autoscale_refusals_total";
    /// Scale writes that lost to a concurrent change (409 Conflict).
    pub const CONFLICTS: &str = "scoregate_autoscale_conflicts_total";
    /// Failed reads and writes of scales and statuses.
    pub const ERRORS: &str = "scoregate_autoscale_errors_total";
}

/// The metric handles of one deployment.
pub struct TargetMetrics {
    /// Replicas the load asks for.
    pub desired: Gauge,
    /// Replicas the Deployment has.
    pub current: Gauge,
    /// 1 while an HPA keeps the autoscaler away.
    pub refused: Gauge,
    /// Replicas added (by decision).
    pub scaled_up: Counter,
    /// Replicas removed (by decision).
    pub scaled_down: Counter,
    /// Times the autoscaler found an HPA on the Deployment.
    pub refusals: Counter,
    /// Scale writes that lost to a concurrent change (409).
    pub conflicts: Counter,
    /// Failed reads and writes.
    pub errors: Counter,
}

impl TargetMetrics {
    /// The handles for `endpoint`/`deployment`.
    pub fn new(metrics: &Metrics, endpoint: &str, deployment: &str) -> TargetMetrics {
        let labels = [("endpoint", endpoint), ("deployment", deployment)];
        let with = |key: &'static str, value: &'static str| {
            [
                ("endpoint", endpoint),
                ("deployment", deployment),
                (key, value),
            ]
        };
        TargetMetrics {
            desired: metrics.gauge(names::DESIRED_REPLICAS, &labels),
            current: metrics.gauge(names::CURRENT_REPLICAS, &labels),
            refused: metrics.gauge(names::REFUSED, &with("reason", "hpa")),
            scaled_up: metrics.counter(names::SCALE_EVENTS, &with("direction", "up")),
            scaled_down: metrics.counter(names::SCALE_EVENTS, &with("direction", "down")),
            refusals: metrics.counter(names::REFUSALS, &with("reason", "hpa")),
            conflicts: metrics.counter(names::CONFLICTS, &labels),
            errors: metrics.counter(names::ERRORS, &labels),
        }
    }
}

impl TargetMetrics {
    /// Sets the gauges to 0: the deployment is no longer autoscaled (as it was).
    pub fn zero(&self) {
        self.desired.set(0.0);
        self.current.set(0.0);
        self.refused.set(0.0);
    }
}

/// The status of a decision, with the numbers that led to it in the message.
pub fn decision_status(
    sample: Sample,
    policy: &Policy,
    decision: &Decision,
    replicas_now: u32,
    last_scale_time: Option<String>,
) -> AutoscaleStatus {
    let utilization = utilization_percent(sample, policy)
        .map_or_else(|| "no replicas".to_string(), |u| format!("{u}%"));
    let message = format!(
        "load {busy:.2} busy + {queued:.2} queued pods on {current} replicas = {utilization} \
         (target {target}%): {desired} wanted within {min}..{max}; {action}",
        busy = pods(sample.in_flight, policy),
        queued = pods(sample.queued, policy),
        current = sample.current,
        target = policy.target_percent,
        desired = decision.desired,
        min = policy.min,
        max = policy.max.max(policy.min),
        action = if replicas_now != sample.current {
            format!("set {replicas_now} replicas")
        } else if decision.state.below_for > 0 {
            format!(
                "lower for {} of {} intervals before removing one",
                decision.state.below_for, policy.scale_down_intervals
            )
        } else {
            format!("kept {replicas_now} replicas")
        },
    );
    AutoscaleStatus {
        current_replicas: Some(replicas_now),
        desired_replicas: Some(decision.desired),
        last_scale_time,
        reason: decision.reason.as_str().to_string(),
        message,
    }
}

/// A count of slots as pods (`slots / maxConcurrentRequestsPerInstance`).
pub fn pods(slots: u32, policy: &Policy) -> f64 {
    f64::from(slots) / f64::from(policy.max_concurrent.max(1))
}

/// Whether a new status says something the last written one did not (the message alone, whose
/// load figures move every interval, does not count).
pub fn changed(last: Option<&AutoscaleStatus>, new: &AutoscaleStatus) -> bool {
    last.is_none_or(|last| {
        (
            &last.reason,
            last.current_replicas,
            last.desired_replicas,
            &last.last_scale_time,
        ) != (
            &new.reason,
            new.current_replicas,
            new.desired_replicas,
            &new.last_scale_time,
        )
    })
}

/// Now, in RFC 3339 (`status.autoscale.lastScaleTime`).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::decide::{decide, State};

    #[test]
    fn the_status_says_why() {
        let policy = Policy {
            min: 1,
            max: 4,
            target_percent: 70,
            max_concurrent: 2,
            scale_down_intervals: 20,
        };
        let sample = Sample {
            current: 1,
            in_flight: 2,
            queued: 3,
        };
        let decision = decide(State::default(), sample, &policy);
        let status = decision_status(sample, &policy, &decision, 4, Some("t".into()));
        assert_eq!(status.reason, "ScaledUp");
        assert_eq!(status.desired_replicas, Some(4));
        assert!(
            status.message.starts_with(
                "load 1.00 busy + 1.50 queued pods on 1 replicas = 250% (target 70%): 4 wanted"
            ),
            "{}",
            status.message
        );
        assert!(!changed(Some(&status), &status));
        let mut other = status.clone();
        other.message.push('!');
        assert!(!changed(Some(&status), &other));
        other.current_replicas = Some(3);
        assert!(changed(Some(&status), &other));
        assert!(changed(None, &status));
    }
}

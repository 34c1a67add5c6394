//! How decisions are made visible: the per-deployment metrics, and the `status.autoscale` the
//! owner writes (only when something in it changes, so a steady deployment costs no writes).

use metrics::{Counter, Gauge};

use super::decide::{slots_per_pod_at_target, Decision, Policy, Reason};
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
    /// Decisions made as the deployment's owner.
    pub const DECISIONS: &str = "scoregate_autoscale_decisions_total";
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
    /// Decisions made.
    pub decisions: Counter,
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
            decisions: metrics.counter(names::DECISIONS, &labels),
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

/// The status of a decision over `current` replicas, with the numbers that led to it in the
/// message.
pub fn decision_status(
    current: u32,
    policy: &Policy,
    decision: &Decision,
    replicas_now: u32,
    last_scale_time: Option<String>,
) -> AutoscaleStatus {
    let per_pod = slots_per_pod_at_target(policy);
    let message = format!(
        "load {busy:.2} busy pods over {stable}s, {demand:.2} busy + queued over {panic}s, on \
         {current} replicas (target {target}%: {per_pod:.2} busy slots a pod): {desired} wanted \
         within {min}..{max}; {action}",
        busy = decision.stable_busy / f64::from(policy.max_concurrent.max(1)),
        stable = policy.stable_window.as_secs_f64(),
        demand = decision.panic_demand / f64::from(policy.max_concurrent.max(1)),
        panic = policy.panic_window.as_secs_f64(),
        target = policy.target_percent,
        desired = decision.desired,
        min = policy.min,
        max = policy.max.max(policy.min),
        action = match decision.reason {
            _ if replicas_now != current => format!("set {replicas_now} replicas"),
            Reason::WaitingToScaleDown => format!(
                "fewer wanted; kept {current} until {}s of recommendations ask for fewer",
                policy.stabilisation.as_secs_f64()
            ),
            _ => format!("kept {replicas_now} replicas"),
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
    use std::time::Duration;

    use super::*;
    use crate::autoscale::decide::{Load, Scaler};

    #[test]
    fn the_status_says_why() {
        let policy = Policy {
            min: 1,
            max: 4,
            target_percent: 70,
            max_concurrent: 2,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            tolerance: 0.1,
            stabilisation: Duration::from_secs(20),
        };
        let mut scaler = Scaler::new(&policy);
        for second in 0..6 {
            let load = Load {
                in_flight: 2,
                queued: 3,
            };
            scaler.record(Duration::from_secs(second), load);
        }
        let decision = scaler.decide(Duration::from_secs(6), 1, 1, &policy);
        let status = decision_status(1, &policy, &decision, 4, Some("t".into()));
        assert_eq!(status.reason, "Panic");
        assert_eq!(status.desired_replicas, Some(4));
        assert!(
            status.message.starts_with(
                "load 0.10 busy pods over 60s, 2.50 busy + queued over 6s, on 1 replicas \
                 (target 70%: 1.40 busy slots a pod): 4 wanted within 1..4; set 4 replicas"
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

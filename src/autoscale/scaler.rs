//! The autoscaler of one deployment: it samples the load, and at every decision interval, if
//! this replica owns the deployment, decides, writes the scale and the status, and reports.
//!
//! Time is passed in ([`TargetScaler::sample`], [`TargetScaler::decide`] take the time since the
//! scaler started), so the controller drives it on the monotonic clock and a test drives it
//! through minutes of recorded load on a virtual one, against a real (fake) API server.

use std::sync::Arc;
use std::time::Duration;

use super::decide::{Decision, Load, Policy, Scaler};
use super::objects::Watches;
use super::objects::{Replicas, Target};
use super::ownership::Ownership;
use super::report::{self, TargetMetrics};
use super::writes::{replicas_of, ScaleError, Writer};
use crate::config::AutoscaleConfig;
use crate::crd::AutoscaleStatus;
use crate::table::TableHandle;
use crate::telemetry::Metrics;

/// What every actor shares.
pub struct Shared {
    /// Reads and writes through the API server.
    pub writer: Writer,
    /// OnlineDeployments, HPAs and the target Deployments.
    pub watches: Watches,
    /// The routing table (admission state per deployment).
    pub table: TableHandle,
    /// Who acts for which deployment.
    pub ownership: Arc<dyn Ownership>,
    /// The decision's windows.
    pub windows: Windows,
    /// The metrics registry.
    pub metrics: Metrics,
}

/// The router-wide settings of every deployment's decision (the `autoscale` section).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Windows {
    /// Busy slots are averaged over this.
    pub stable: Duration,
    /// Demand is averaged over this for panics.
    pub panic: Duration,
    /// Panic at a demand of this many times the ready pods' slots.
    pub panic_threshold: f64,
    /// The tolerance band, as a fraction.
    pub tolerance: f64,
    /// Decision intervals the recommendations must ask for fewer replicas before a scale-down.
    pub scale_down_intervals: u32,
}

/// The autoscaler of one deployment.
pub struct TargetScaler {
    target: Target,
    policy: Policy,
    shared: Arc<Shared>,
    metrics: TargetMetrics,
    scaler: Scaler,
    owned: bool,
    refused_by: Option<String>,
    last_status: Option<AutoscaleStatus>,
    last_scale_time: Option<String>,
    /// The replicas this scaler wrote last, until the Deployment's watch shows a newer version.
    written: Option<(Replicas, u32)>,
}

impl TargetScaler {
    /// The scaler of `target`.
    pub fn new(target: Target, shared: Arc<Shared>) -> TargetScaler {
        let policy = policy_of(&target, &shared.windows);
        TargetScaler {
            metrics: TargetMetrics::new(&shared.metrics, &target.endpoint, &target.deployment),
            scaler: Scaler::new(&policy),
            policy,
            target,
            shared,
            owned: false,
            refused_by: None,
            last_status: None,
            last_scale_time: None,
            written: None,
        }
    }

    /// The deployment it scales.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What every deployment's scaler shares.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The decision interval (`pollingInterval`, at least a second).
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.target.settings.polling_interval.max(1)))
    }

    /// Records the load at `at`.
    pub fn sample(&mut self, at: Duration, load: Load) {
        self.scaler.record(at, load);
    }

    /// One decision at `at`: nothing unless this replica owns the deployment and no HPA scales
    /// it; the Deployment's replicas come from its watch (no read of the scale). The decision
    /// made, with the replicas the Deployment has after it; `None` when none was made or its
    /// write failed.
    pub async fn decide(&mut self, at: Duration) -> Option<Decision> {
        if !self.check_ownership() || self.blocked_by_hpa().await {
            return None;
        }
        let t = &self.target;
        let Some(replicas) = self.replicas() else {
            let error = ScaleError::NotFound(format!("{}/{}", t.namespace, t.target_deployment));
            self.failed(error).await;
            return None;
        };
        let decision = self
            .scaler
            .decide(at, replicas.desired, replicas.ready, &self.policy);
        self.metrics.decisions.increment(1);
        let replicas_now = if decision.replicas == replicas.desired {
            replicas.desired
        } else {
            self.scale(&replicas, decision.replicas).await?
        };
        self.report(&replicas, &decision, replicas_now).await;
        Some(Decision {
            replicas: replicas_now,
            ..decision
        })
    }

    /// The Deployment's replicas: from its watch, or what this scaler wrote last while the watch
    /// still shows the version before that write.
    fn replicas(&self) -> Option<Replicas> {
        let t = &self.target;
        let seen = self
            .shared
            .watches
            .replicas(&t.namespace, &t.target_deployment)?;
        match &self.written {
            Some((before, written)) if before.resource_version == seen.resource_version => {
                Some(Replicas {
                    desired: *written,
                    ..seen
                })
            }
            _ => Some(seen),
        }
    }

    fn owns(&self) -> bool {
        self.shared
            .ownership
            .owns(&self.target.endpoint, &self.target.deployment)
    }

    /// Notes ownership changes; false when this replica does not own the deployment.
    fn check_ownership(&mut self) -> bool {
        let owns = self.owns();
        if owns != self.owned {
            tracing::info!(
                endpoint = %self.target.endpoint, deployment = %self.target.deployment,
                owns, "autoscaler: {}",
                if owns { "this replica now acts for the deployment" } else { "another replica acts for the deployment now" }
            );
            self.owned = owns;
            // A new owner starts from no history (its samples were of its own share of the
            // load) and rewrites the status; a former owner's gauges stop claiming decisions.
            self.scaler = Scaler::new(&self.policy);
            self.last_status = None;
            self.refused_by = None;
            self.written = None;
            if !owns {
                self.metrics.zero();
            }
        }
        owns
    }

    /// Whether an HPA scales the target Deployment (then refused); notes when it is gone.
    async fn blocked_by_hpa(&mut self) -> bool {
        let t = &self.target;
        if let Some(hpa) = self
            .shared
            .watches
            .hpa_for(&t.namespace, &t.target_deployment)
        {
            self.refuse(hpa).await;
            return true;
        }
        if let Some(hpa) = self.refused_by.take() {
            tracing::info!(
                endpoint = %t.endpoint, deployment = %t.deployment, hpa,
                "autoscaler: the HorizontalPodAutoscaler is gone; autoscaling resumes"
            );
            self.metrics.refused.set(0.0);
        }
        false
    }

    /// Writes `replicas` over `current`; the replicas written, or `None` when this replica no
    /// longer owns the deployment or the write failed.
    async fn scale(&mut self, current: &Replicas, replicas: u32) -> Option<u32> {
        // Fencing: ownership is asked again right before the write.
        if !self.owns() {
            return None;
        }
        let t = &self.target;
        let written = self
            .shared
            .writer
            .write_scale(
                &t.namespace,
                &t.target_deployment,
                &current.resource_version,
                replicas,
            )
            .await;
        match written {
            Ok(written) => {
                let replicas_now = replicas_of(&written);
                self.written = Some((current.clone(), replicas_now));
                self.last_scale_time = Some(report::now_rfc3339());
                let delta = u64::from(replicas_now.abs_diff(current.desired));
                if replicas_now > current.desired {
                    self.metrics.scaled_up.increment(delta);
                } else {
                    self.metrics.scaled_down.increment(delta);
                }
                Some(replicas_now)
            }
            Err(error) => {
                self.failed(error).await;
                None
            }
        }
    }

    /// Sets the gauges, and logs and publishes the decision: at info level with a status write
    /// when something changed, at debug level otherwise.
    async fn report(&mut self, current: &Replicas, decision: &Decision, replicas_now: u32) {
        let t = &self.target;
        self.metrics.desired.set(f64::from(decision.desired));
        self.metrics.current.set(f64::from(replicas_now));
        let status = report::decision_status(
            current.desired,
            &self.policy,
            decision,
            replicas_now,
            self.last_scale_time.clone(),
        );
        let fields_changed = report::changed(self.last_status.as_ref(), &status);
        macro_rules! decision_log {
            ($level:ident) => {
                tracing::$level!(
                    namespace = %t.namespace, endpoint = %t.endpoint, deployment = %t.deployment,
                    target_deployment = %t.target_deployment,
                    stable_busy = decision.stable_busy, panic_demand = decision.panic_demand,
                    current = current.desired, ready = current.ready, desired = decision.desired,
                    replicas = replicas_now, reason = decision.reason.as_str(),
                    "autoscaler: {}", status.message
                )
            };
        }
        if fields_changed {
            decision_log!(info);
            self.publish(status).await;
        } else {
            decision_log!(debug);
        }
    }

    /// An HPA scales the target Deployment: stay away, say so once, and keep trying to write
    /// the status until it is written.
    async fn refuse(&mut self, hpa: String) {
        let t = &self.target;
        let message = format!(
            "HorizontalPodAutoscaler {hpa} also scales Deployment {}; two autoscalers on one \
             Deployment fight, so scoregate leaves it alone (Azure ML: do not enable HPA on model \
             deployments). Delete the HPA to let scoregate scale it, or set scaleSettings.type: \
             default to leave scaling to the HPA.",
            t.target_deployment
        );
        if self.refused_by.as_ref() != Some(&hpa) {
            tracing::warn!(
                namespace = %t.namespace, endpoint = %t.endpoint, deployment = %t.deployment,
                hpa, reason = "HpaConflict", "autoscaler: {message}"
            );
            self.metrics.refused.set(1.0);
            self.metrics.refusals.increment(1);
            self.refused_by = Some(hpa);
            self.scaler = Scaler::new(&self.policy);
        }
        self.publish(AutoscaleStatus {
            reason: "HpaConflict".into(),
            message,
            last_scale_time: self.last_scale_time.clone(),
            ..AutoscaleStatus::default()
        })
        .await;
    }

    /// A write failed, or the target Deployment is missing.
    async fn failed(&mut self, error: ScaleError) {
        let t = &self.target;
        let (reason, message) = match &error {
            ScaleError::Conflict(_) => {
                // Someone else acted between the watch's last event and the write: the next
                // interval decides on what the watch shows then.
                self.metrics.conflicts.increment(1);
                self.written = None;
                tracing::info!(
                    endpoint = %t.endpoint, deployment = %t.deployment,
                    "autoscaler: {error}; not retried, the next interval decides again"
                );
                return;
            }
            ScaleError::NotFound(_) => (
                "TargetNotFound",
                format!(
                    "{error}: create it, or fix scaleSettings.targetDeployment of this \
                     OnlineDeployment"
                ),
            ),
            ScaleError::Other(_) => ("ScaleFailed", error.to_string()),
        };
        self.metrics.errors.increment(1);
        if self.last_status.as_ref().map(|s| s.reason.as_str()) != Some(reason) {
            tracing::warn!(endpoint = %t.endpoint, deployment = %t.deployment, "autoscaler: {error}");
        }
        self.publish(AutoscaleStatus {
            reason: reason.into(),
            message,
            last_scale_time: self.last_scale_time.clone(),
            ..AutoscaleStatus::default()
        })
        .await;
    }

    /// Writes the status when it says something new, if this replica still owns the deployment.
    async fn publish(&mut self, status: AutoscaleStatus) {
        if !report::changed(self.last_status.as_ref(), &status) || !self.owns() {
            return;
        }
        let t = &self.target;
        match self
            .shared
            .writer
            .write_status(&t.namespace, &t.object, &status)
            .await
        {
            Ok(()) => self.last_status = Some(status),
            Err(error) => {
                self.metrics.errors.increment(1);
                tracing::warn!(
                    namespace = %t.namespace, online_deployment = %t.object, %error,
                    "autoscaler: cannot write status.autoscale of the OnlineDeployment (the router \
                     needs patch on onlinedeployments/status, and the CRD its status subresource: \
                     apply deploy/crds again); retried next interval"
                );
            }
        }
    }
}

impl Windows {
    /// Knative's panic threshold: twice what the ready pods can hold.
    pub const PANIC_THRESHOLD: f64 = 2.0;
    /// Knative's tolerance band (±10 %).
    pub const TOLERANCE: f64 = 0.1;

    /// The windows the `autoscale` section sets, with Knative's threshold and band.
    pub fn of(config: &AutoscaleConfig) -> Windows {
        Windows {
            stable: Duration::from_millis(config.stable_window_ms),
            panic: Duration::from_millis(config.panic_window_ms),
            panic_threshold: Self::PANIC_THRESHOLD,
            tolerance: Self::TOLERANCE,
            scale_down_intervals: config.scale_down_intervals.max(1),
        }
    }
}

/// The decision policy of `target` under the router's `windows`.
pub fn policy_of(target: &Target, windows: &Windows) -> Policy {
    let settings = &target.settings;
    let interval = Duration::from_secs(u64::from(settings.polling_interval.max(1)));
    Policy {
        // Never to zero: a deployment without pods refuses requests (503 NoReadyPod) rather
        // than queueing them, so no load would ever scale it back up.
        min: settings.min_instances.max(1),
        max: settings.max_instances,
        target_percent: settings.target_utilization_percentage,
        max_concurrent: target.max_concurrent,
        stable_window: windows.stable,
        panic_window: windows.panic,
        panic_threshold: windows.panic_threshold,
        tolerance: windows.tolerance,
        stabilisation: interval * windows.scale_down_intervals.max(1),
    }
}

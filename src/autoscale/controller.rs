//! The loops: a supervisor that keeps one actor per autoscaled deployment (restarted when its
//! OnlineDeployment changes, stopped when it goes away), and the actor, which every
//! `pollingInterval` seconds, if this replica owns the deployment, samples the load, decides,
//! writes the scale and the status, and reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v1::Scale;
use tokio::time::MissedTickBehavior;
use tokio_util::task::AbortOnDropHandle;

use super::decide::{decide, Decision, Policy, Sample, State};
use super::objects::{Target, TargetKey, Watches};
use super::ownership::Ownership;
use super::report::{self, TargetMetrics};
use super::writes::{replicas_of, ScaleError, Writer};
use crate::admission::AdmissionStats;
use crate::crd::AutoscaleStatus;
use crate::table::TableHandle;
use crate::telemetry::Metrics;

/// How often the supervisor looks for added, changed and removed targets.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// What every actor shares.
pub struct Shared {
    /// Reads and writes through the API server.
    pub writer: Writer,
    /// OnlineDeployments and HPAs.
    pub watches: Watches,
    /// The routing table (admission state per deployment).
    pub table: TableHandle,
    /// Who acts for which deployment.
    pub ownership: Arc<dyn Ownership>,
    /// Intervals of lower demand before one replica is removed.
    pub scale_down_intervals: u32,
    /// The metrics registry.
    pub metrics: Metrics,
}

/// Runs the supervisor until aborted (which drops and so aborts every actor and watch).
pub async fn supervise(shared: Arc<Shared>) {
    shared.watches.ready().await;
    tracing::info!("autoscaler: watching OnlineDeployments and HorizontalPodAutoscalers");
    let mut actors: BTreeMap<TargetKey, (Target, AbortOnDropHandle<()>)> = BTreeMap::new();
    let mut warned: BTreeMap<TargetKey, String> = BTreeMap::new();
    let mut every = tokio::time::interval(SUPERVISE_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let mut problems = Vec::new();
        let targets = shared
            .watches
            .targets(|key, problem| problems.push((key.clone(), problem.to_string())));
        warned.retain(|key, _| problems.iter().any(|(k, _)| k == key));
        for (key, problem) in problems {
            if warned.get(&key) != Some(&problem) {
                tracing::warn!(namespace = %key.0, online_deployment = %key.1, "autoscaler: {problem}");
                warned.insert(key, problem);
            }
        }
        let mut stopped = Vec::new();
        actors.retain(|key, (target, _)| {
            let keep = targets.get(key) == Some(target);
            if !keep {
                stopped.push(target.clone());
            }
            keep
        });
        // Stopped actors' gauges read 0; a restarted one sets its own at its first interval.
        for target in stopped {
            TargetMetrics::new(&shared.metrics, &target.endpoint, &target.deployment).zero();
        }
        for (key, target) in targets {
            if actors.contains_key(&key) {
                continue;
            }
            tracing::info!(
                namespace = %target.namespace, endpoint = %target.endpoint,
                deployment = %target.deployment, target_deployment = %target.target_deployment,
                min = target.settings.min_instances, max = target.settings.max_instances,
                target_utilization = target.settings.target_utilization_percentage,
                polling_interval_s = target.settings.polling_interval,
                "autoscaler: deployment is autoscaled"
            );
            let actor = Actor::new(target.clone(), shared.clone());
            actors.insert(
                key,
                (target, AbortOnDropHandle::new(tokio::spawn(actor.run()))),
            );
        }
    }
}

/// The autoscaler of one deployment.
struct Actor {
    target: Target,
    policy: Policy,
    shared: Arc<Shared>,
    metrics: TargetMetrics,
    state: State,
    owned: bool,
    refused_by: Option<String>,
    last_status: Option<AutoscaleStatus>,
    last_scale_time: Option<String>,
}

impl Actor {
    fn new(target: Target, shared: Arc<Shared>) -> Actor {
        let settings = &target.settings;
        let policy = Policy {
            // Never to zero: a deployment without pods refuses requests (503 NoReadyPod) rather
            // than queueing them, so no load would ever scale it back up.
            min: settings.min_instances.max(1),
            max: settings.max_instances,
            target_percent: settings.target_utilization_percentage,
            max_concurrent: target.max_concurrent,
            scale_down_intervals: shared.scale_down_intervals,
        };
        Actor {
            metrics: TargetMetrics::new(&shared.metrics, &target.endpoint, &target.deployment),
            policy,
            target,
            shared,
            state: State::default(),
            owned: false,
            refused_by: None,
            last_status: None,
            last_scale_time: None,
        }
    }

    async fn run(mut self) {
        let period = Duration::from_secs(u64::from(self.target.settings.polling_interval.max(1)));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.interval().await;
        }
    }

    fn owns(&self) -> bool {
        self.shared
            .ownership
            .owns(&self.target.endpoint, &self.target.deployment)
    }

    /// One decision interval.
    async fn interval(&mut self) {
        if !self.check_ownership() || self.blocked_by_hpa().await {
            return;
        }
        let t = &self.target;
        let scale = match self
            .shared
            .writer
            .read_scale(&t.namespace, &t.target_deployment)
            .await
        {
            Ok(scale) => scale,
            Err(error) => return self.failed(error).await,
        };
        let Some(stats) = self.sample() else {
            tracing::debug!(
                endpoint = %t.endpoint, deployment = %t.deployment,
                "autoscaler: the deployment is not in the routing table; no decision"
            );
            return;
        };
        let sample = Sample {
            current: replicas_of(&scale),
            in_flight: stats.in_flight,
            queued: stats.queued,
        };
        let decision = decide(self.state, sample, &self.policy);
        self.state = decision.state;
        let replicas_now = if decision.replicas == sample.current {
            sample.current
        } else {
            match self.scale(&scale, sample.current, decision.replicas).await {
                Some(replicas) => replicas,
                None => return,
            }
        };
        self.report(sample, &decision, replicas_now).await;
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

    /// Writes `replicas` over the `current` ones of `scale`; the replicas written, or `None`
    /// when this replica no longer owns the deployment or the write failed.
    async fn scale(&mut self, scale: &Scale, current: u32, replicas: u32) -> Option<u32> {
        // Fencing: ownership may have moved while the scale was read.
        if !self.owns() {
            return None;
        }
        let t = &self.target;
        let written = self
            .shared
            .writer
            .write_scale(&t.namespace, &t.target_deployment, scale, replicas)
            .await;
        match written {
            Ok(written) => {
                let replicas_now = replicas_of(&written);
                self.last_scale_time = Some(report::now_rfc3339());
                let delta = u64::from(replicas_now.abs_diff(current));
                if replicas_now > current {
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
    async fn report(&mut self, sample: Sample, decision: &Decision, replicas_now: u32) {
        let t = &self.target;
        self.metrics.desired.set(f64::from(decision.desired));
        self.metrics.current.set(f64::from(replicas_now));
        let status = report::decision_status(
            sample,
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
                    busy_pods = report::pods(sample.in_flight, &self.policy),
                    queued_pods = report::pods(sample.queued, &self.policy),
                    in_flight = sample.in_flight, queued = sample.queued,
                    current = sample.current, desired = decision.desired, replicas = replicas_now,
                    below_for = decision.state.below_for, reason = decision.reason.as_str(),
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
            // A new owner starts its scale-down window afresh and rewrites the status; a former
            // owner's gauges stop claiming decisions it no longer makes.
            self.state = State::default();
            self.last_status = None;
            self.refused_by = None;
            if !owns {
                self.metrics.zero();
            }
        }
        owns
    }

    /// The load of the deployment on this replica, if it routes it.
    fn sample(&self) -> Option<AdmissionStats> {
        let table = self.shared.table.load();
        let deployment = table
            .endpoint(&self.target.endpoint)?
            .deployment_named(self.target.deployment.as_bytes())?;
        Some(deployment.admission.stats())
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
            self.state = State::default();
        }
        self.publish(AutoscaleStatus {
            reason: "HpaConflict".into(),
            message,
            last_scale_time: self.last_scale_time.clone(),
            ..AutoscaleStatus::default()
        })
        .await;
    }

    /// A read or write of the scale failed.
    async fn failed(&mut self, error: ScaleError) {
        let t = &self.target;
        match &error {
            ScaleError::Conflict(_) => {
                // Someone else acted between the read and the write: re-read next interval.
                self.metrics.conflicts.increment(1);
                self.state = State::default();
                tracing::info!(
                    endpoint = %t.endpoint, deployment = %t.deployment,
                    "autoscaler: {error}; not retried, the next interval reads it again"
                );
            }
            ScaleError::NotFound(_) => {
                self.metrics.errors.increment(1);
                let known = self.last_status.as_ref().map(|s| s.reason.as_str());
                if known != Some("TargetNotFound") {
                    tracing::warn!(endpoint = %t.endpoint, deployment = %t.deployment, "autoscaler: {error}");
                }
                self.publish(AutoscaleStatus {
                    reason: "TargetNotFound".into(),
                    message: format!(
                        "{error}: create it, or fix scaleSettings.targetDeployment of this \
                         OnlineDeployment"
                    ),
                    last_scale_time: self.last_scale_time.clone(),
                    ..AutoscaleStatus::default()
                })
                .await;
            }
            ScaleError::Other(_) => {
                self.metrics.errors.increment(1);
                tracing::warn!(endpoint = %t.endpoint, deployment = %t.deployment, "autoscaler: {error}");
                self.publish(AutoscaleStatus {
                    reason: "ScaleFailed".into(),
                    message: error.to_string(),
                    last_scale_time: self.last_scale_time.clone(),
                    ..AutoscaleStatus::default()
                })
                .await;
            }
        }
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

//! The loops: a supervisor that keeps one actor per autoscaled deployment (restarted when its
//! OnlineDeployment changes, stopped when it goes away), and the actor, which samples the
//! deployment's load every [`SAMPLE_EVERY`] and, every `pollingInterval` seconds, has its
//! [`TargetScaler`] decide on the monotonic clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::AbortOnDropHandle;

use super::decide::Load;
use super::objects::{Target, TargetKey};
use super::report::TargetMetrics;
use super::scaler::{Shared, TargetScaler};

/// How often the supervisor looks for added, changed and removed targets.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// How often each deployment's load is sampled (requests in flight and queued). The windows
/// average the samples over time, so a decision sees the load between its intervals too, not
/// the one moment a sample taken at the interval would catch.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Runs the supervisor until aborted (which drops and so aborts every actor and watch).
pub async fn supervise(shared: Arc<Shared>) {
    shared.watches.ready().await;
    tracing::info!(
        "autoscaler: watching OnlineDeployments, HorizontalPodAutoscalers and Deployments"
    );
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
            let actor = TargetScaler::new(target.clone(), shared.clone());
            actors.insert(
                key,
                (target, AbortOnDropHandle::new(tokio::spawn(run(actor)))),
            );
        }
    }
}

/// Runs one deployment's scaler until aborted: samples every [`SAMPLE_EVERY`], decides every
/// `pollingInterval`.
async fn run(mut scaler: TargetScaler) {
    let started = Instant::now();
    let mut samples = tokio::time::interval(SAMPLE_EVERY);
    samples.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut decisions = tokio::time::interval(scaler.interval());
    decisions.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = samples.tick() => {
                if let Some(load) = load_of(&scaler) {
                    scaler.sample(started.elapsed(), load);
                }
            }
            _ = decisions.tick() => {
                scaler.decide(started.elapsed()).await;
            }
        }
    }
}

/// The deployment's load on this replica, if it routes the deployment. On the deployment's
/// coordination owner these are the cluster's: the owner holds a slot for every request it
/// granted to another replica, grant requests wait in its queue, and slots admitted under
/// `cluster.fallback: local` are reported to it as soon as it can be reached.
fn load_of(scaler: &TargetScaler) -> Option<Load> {
    let target = scaler.target();
    let table = scaler.shared().table.load();
    let stats = table
        .endpoint(&target.endpoint)?
        .deployment_named(target.deployment.as_bytes())?
        .admission
        .stats();
    Some(Load {
        in_flight: stats.in_flight,
        queued: stats.queued,
    })
}

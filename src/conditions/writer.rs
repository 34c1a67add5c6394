//! Writes the `Ready` conditions this replica is elected for, with server-side apply under
//! [`super::FIELD_MANAGER`] (so it owns only its own condition), when an object shows something
//! else. A write that fails is tried again with a growing delay (1 s to 60 s), and each failing
//! cause is logged once until it is fixed; `scoregate_status_writes_total` counts writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use serde_json::json;
use tokio::time::Instant;

use super::{status_word, Board, Election, Entry, Kind, ObjectRef, Ready, FIELD_MANAGER};
use crate::crd::{OnlineDeployment, OnlineEndpoint};
use crate::telemetry::Metrics;

/// How often the board is looked at again without news (elections change without telling).
const RECHECK: Duration = Duration::from_secs(2);
/// The first and the longest delay before a failed write is tried again.
const RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// The writer's memory of one object.
struct Attempt {
    /// What was written, at which version of the object, once it succeeded.
    written: Option<(Ready, String)>,
    /// When to try again after a failure, and the delay after that.
    retry: Option<(Instant, Duration)>,
    /// The last failure logged, so each cause is logged once.
    logged: Option<String>,
}

/// Starts the writer.
pub fn spawn(
    client: Client,
    board: Board,
    election: Arc<dyn Election>,
    metrics: &Metrics,
) -> tokio::task::JoinHandle<()> {
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut attempts: HashMap<ObjectRef, Attempt> = HashMap::new();
        loop {
            tokio::select! {
                () = board.changed() => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
            attempts.retain(|object, _| board.get(object).is_some());
            for (object, entry) in board.differing() {
                if !entry.writer.is_me(&*election) {
                    continue;
                }
                let attempt = attempts.entry(object.clone()).or_insert(Attempt {
                    written: None,
                    retry: None,
                    logged: None,
                });
                if is_pending(attempt, &entry) {
                    continue;
                }
                let outcome = write(&client, &object, &entry).await;
                record(&metrics, &object, attempt, &entry, outcome);
            }
        }
    })
}

/// Whether `entry` needs no write now: this writer wrote it and the watch has not shown a newer
/// version yet, or a failure's delay is not over.
fn is_pending(attempt: &Attempt, entry: &Entry) -> bool {
    let written = attempt
        .written
        .as_ref()
        .is_some_and(|(ready, version)| *ready == entry.desired && *version == entry.version);
    let waiting = attempt.retry.is_some_and(|(at, _)| Instant::now() < at);
    written || waiting
}

fn record(
    metrics: &Metrics,
    object: &ObjectRef,
    attempt: &mut Attempt,
    entry: &Entry,
    outcome: Result<(), String>,
) {
    let kind = object.kind.as_str();
    match outcome {
        Ok(()) => {
            metrics
                .counter(
                    crate::telemetry::names::STATUS_WRITES,
                    &[("kind", kind), ("result", "applied")],
                )
                .increment(1);
            if attempt.logged.take().is_some() {
                tracing::info!(
                    "{kind} {}/{}: status written again",
                    object.namespace,
                    object.name
                );
            }
            attempt.written = Some((entry.desired.clone(), entry.version.clone()));
            attempt.retry = None;
        }
        Err(e) => {
            metrics
                .counter(
                    crate::telemetry::names::STATUS_WRITES,
                    &[("kind", kind), ("result", "failed")],
                )
                .increment(1);
            let delay = attempt.retry.map_or(RETRY.0, |(_, d)| (d * 2).min(RETRY.1));
            attempt.retry = Some((Instant::now() + delay, delay));
            if attempt.logged.as_deref() != Some(e.as_str()) {
                tracing::warn!(
                    "{kind} {}/{}: cannot write status.conditions: {e}",
                    object.namespace,
                    object.name
                );
                attempt.logged = Some(e);
            }
        }
    }
}

/// The apply patch of `entry`'s condition: the transition time is kept while the status stays.
fn apply_patch(object: &ObjectRef, entry: &Entry) -> serde_json::Value {
    let desired = &entry.desired;
    let kept = entry
        .shown
        .as_ref()
        .filter(|s| s.status == status_word(desired.ready))
        .and_then(|s| s.last_transition_time.clone());
    let since = kept.unwrap_or_else(now_rfc3339);
    let mut condition = json!({
        "type": "Ready",
        "status": status_word(desired.ready),
        "reason": desired.reason,
        "message": desired.message,
        "lastTransitionTime": since,
    });
    if let Some(generation) = desired.observed_generation {
        condition["observedGeneration"] = json!(generation);
    }
    json!({
        "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        "kind": object.kind.as_str(),
        "metadata": {"name": object.name, "namespace": object.namespace},
        "status": {"conditions": [condition]},
    })
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn write(client: &Client, object: &ObjectRef, entry: &Entry) -> Result<(), String> {
    let resource = match object.kind {
        Kind::Endpoint => OnlineEndpoint::api_resource(),
        Kind::Deployment => OnlineDeployment::api_resource(),
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &object.namespace, &resource);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(apply_patch(object, entry));
    match api.patch_status(&object.name, &params, &patch).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 403 => Err(format!(
            "{}: grant the router's ServiceAccount `patch` on {}/status (group scoregate.io); the installer's ClusterRole does",
            status.message,
            resource.plural
        )),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(format!("{} (the object is gone)", status.message)),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{Shown, Writer};

    fn entry(ready: bool, shown_status: Option<&str>) -> Entry {
        Entry {
            desired: Ready {
                ready,
                reason: if ready { "Serving" } else { "NoReadyPods" },
                message: "m".into(),
                observed_generation: Some(3),
            },
            shown: shown_status.map(|status| Shown {
                status: status.into(),
                reason: "Serving".into(),
                message: "old".into(),
                observed_generation: Some(2),
                last_transition_time: Some("2026-01-01T00:00:00Z".into()),
            }),
            version: "7".into(),
            writer: Writer::Endpoints,
        }
    }

    #[test]
    fn the_transition_time_stays_while_the_status_does() {
        let object = ObjectRef {
            kind: Kind::Deployment,
            namespace: "ns".into(),
            name: "blue".into(),
        };
        let same = apply_patch(&object, &entry(true, Some("True")));
        let condition = &same["status"]["conditions"][0];
        assert_eq!(condition["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(condition["observedGeneration"], 3);
        assert_eq!(same["kind"], "OnlineDeployment");
        let flipped = apply_patch(&object, &entry(false, Some("True")));
        let condition = &flipped["status"]["conditions"][0];
        assert_ne!(condition["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(
            (condition["status"].as_str(), condition["reason"].as_str()),
            (Some("False"), Some("NoReadyPods"))
        );
    }

    #[test]
    fn a_write_is_not_repeated_until_the_object_changes() {
        let e = entry(true, Some("True"));
        let mut attempt = Attempt {
            written: None,
            retry: None,
            logged: None,
        };
        assert!(!is_pending(&attempt, &e));
        attempt.written = Some((e.desired.clone(), e.version.clone()));
        assert!(is_pending(&attempt, &e));
        let newer = Entry {
            version: "8".into(),
            ..e
        };
        assert!(
            !is_pending(&attempt, &newer),
            "a newer version that still differs is written again"
        );
    }
}

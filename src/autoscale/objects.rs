//! What the autoscaler reads from the API server: OnlineDeployments (which deployments to scale,
//! and how) and HorizontalPodAutoscalers (which Deployments it must leave alone), each kept in a
//! reflector store per watched namespace (or one cluster-wide).
//!
//! OnlineDeployments are watched as dynamic objects and parsed one by one, so one malformed object
//! is skipped (with a warning) instead of failing the whole list.

use std::collections::BTreeMap;
use std::pin::pin;

use futures_util::StreamExt;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, CustomResourceExt, ResourceExt};

use crate::crd::{OnlineDeployment, OnlineDeploymentSpec, ScaleSettingsSpec, ScaleType};
use crate::discovery::kube::resources::trim_custom;
use crate::discovery::kube::AbortOnDrop;

/// One deployment the autoscaler scales: a `targetUtilization` OnlineDeployment with a
/// `targetDeployment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The OnlineDeployment's namespace.
    pub namespace: String,
    /// The OnlineDeployment's `metadata.name` (where the status goes).
    pub object: String,
    /// The endpoint name.
    pub endpoint: String,
    /// The deployment's name within its endpoint (as in the routing table).
    pub deployment: String,
    /// The `apps/v1` Deployment whose replicas are set.
    pub target_deployment: String,
    /// The scale settings.
    pub settings: ScaleSettingsSpec,
    /// `maxConcurrentRequestsPerInstance`.
    pub max_concurrent: u32,
}

/// The key of a target: `(namespace, OnlineDeployment name)`.
pub type TargetKey = (String, String);

/// Reflector stores of OnlineDeployments and HPAs, and the tasks that fill them.
pub struct Watches {
    deployments: Vec<Store<DynamicObject>>,
    hpas: Vec<Store<HorizontalPodAutoscaler>>,
    _tasks: Vec<AbortOnDrop>,
}

impl Watches {
    /// Starts watching OnlineDeployments and HPAs in each scope (`None`: all namespaces).
    pub fn start(client: &Client, scopes: &[Option<String>]) -> Watches {
        let mut watches = Watches {
            deployments: Vec::new(),
            hpas: Vec::new(),
            _tasks: Vec::new(),
        };
        let resource = OnlineDeployment::api_resource();
        for scope in scopes {
            let api: Api<DynamicObject> = match scope {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let writer = Writer::new(resource.clone());
            watches.deployments.push(writer.as_reader());
            let stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(trim_custom)
                .reflect(writer);
            watches
                ._tasks
                .push(drive(stream, "onlinedeployments", scope));

            let api: Api<HorizontalPodAutoscaler> = match scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (reader, writer) = reflector::store();
            watches.hpas.push(reader);
            let stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(|hpa: &mut HorizontalPodAutoscaler| {
                    hpa.metadata.managed_fields = None;
                    hpa.metadata.annotations = None;
                    hpa.status = None;
                })
                .reflect(writer);
            watches
                ._tasks
                .push(drive(stream, "horizontalpodautoscalers", scope));
        }
        watches
    }

    /// Waits until every store has its first complete list.
    pub async fn ready(&self) {
        for store in &self.deployments {
            let _ = store.wait_until_ready().await;
        }
        for store in &self.hpas {
            let _ = store.wait_until_ready().await;
        }
    }

    /// The deployments to scale now, by key. Invalid OnlineDeployments are skipped with a
    /// warning through `warn` (called once per object and problem; the caller rate-limits).
    pub fn targets(&self, mut warn: impl FnMut(&TargetKey, &str)) -> BTreeMap<TargetKey, Target> {
        let mut targets = BTreeMap::new();
        for store in &self.deployments {
            for object in store.state() {
                let key = (object.namespace().unwrap_or_default(), object.name_any());
                match target_of(&object) {
                    Ok(Some(target)) => {
                        targets.insert(key, target);
                    }
                    Ok(None) => {}
                    Err(problem) => warn(&key, &problem),
                }
            }
        }
        targets
    }

    /// The name of an HPA in `namespace` whose `scaleTargetRef` is the apps/v1 Deployment
    /// `deployment`, if there is one.
    pub fn hpa_for(&self, namespace: &str, deployment: &str) -> Option<String> {
        self.hpas.iter().find_map(|store| {
            store
                .state()
                .iter()
                .find(|hpa| {
                    hpa.namespace().as_deref() == Some(namespace) && targets(hpa, deployment)
                })
                .map(|hpa| hpa.name_any())
        })
    }
}

/// Whether `hpa` scales the apps/v1 Deployment `deployment` (of its own namespace).
fn targets(hpa: &HorizontalPodAutoscaler, deployment: &str) -> bool {
    let Some(spec) = &hpa.spec else {
        return false;
    };
    let target = &spec.scale_target_ref;
    target.kind == "Deployment"
        && target.name == deployment
        && matches!(target.api_version.as_deref(), None | Some("apps/v1"))
}

/// The target an OnlineDeployment describes: `None` when it is not autoscaled
/// (`scaleSettings.type: default`, or no `targetDeployment`), an error when it cannot be read.
pub fn target_of(object: &DynamicObject) -> Result<Option<Target>, String> {
    let name = object.name_any();
    let spec: OnlineDeploymentSpec = serde_json::from_value(
        object.data.get("spec").cloned().unwrap_or_default(),
    )
    .map_err(|e| format!("spec is not a valid OnlineDeployment spec ({e}); fix the object"))?;
    let settings = spec.scale_settings.clone();
    if settings.scale_type != ScaleType::TargetUtilization {
        return Ok(None);
    }
    let Some(target_deployment) = settings.target_deployment.clone() else {
        return Ok(None);
    };
    if settings.min_instances > settings.max_instances {
        return Err(format!(
            "scaleSettings.minInstances ({}) is above maxInstances ({}); the autoscaler leaves \
             Deployment {target_deployment} alone until they are fixed",
            settings.min_instances, settings.max_instances
        ));
    }
    Ok(Some(Target {
        namespace: object.namespace().unwrap_or_default(),
        endpoint: spec.endpoint_name.clone(),
        deployment: spec.deployment_name_or(&name).to_string(),
        object: name,
        target_deployment,
        settings,
        max_concurrent: spec
            .request_settings
            .max_concurrent_requests_per_instance
            .max(1),
    }))
}

/// Drives one reflector stream, logging its errors (the watcher retries with its backoff).
fn drive<S, T>(stream: S, kind: &'static str, scope: &Option<String>) -> AbortOnDrop
where
    S: futures_util::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
{
    let scope = scope.clone().unwrap_or_else(|| "all namespaces".into());
    AbortOnDrop(tokio::spawn(async move {
        let mut stream = pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(error) = item {
                tracing::warn!(
                    %error, kind, scope,
                    "autoscaler: cannot list or watch {kind} (the router's service account needs \
                     get, list and watch on them); retrying, and not scaling until it can"
                );
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
            "metadata": {"name": "ep-blue", "namespace": "ns"}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn which_deployments_are_targets() {
        let scaled = object(json!({"endpointName": "ep", "serviceName": "s",
            "deploymentName": "blue",
            "requestSettings": {"maxConcurrentRequestsPerInstance": 2},
            "scaleSettings": {"type": "targetUtilization", "maxInstances": 4, "targetDeployment": "ep-blue"}}));
        let target = target_of(&scaled).unwrap().unwrap();
        assert_eq!(
            (
                target.endpoint.as_str(),
                target.deployment.as_str(),
                target.max_concurrent
            ),
            ("ep", "blue", 2)
        );
        let manual = object(json!({"endpointName": "ep", "serviceName": "s",
            "scaleSettings": {"type": "default", "targetDeployment": "ep-blue"}}));
        assert_eq!(target_of(&manual), Ok(None));
        let untargeted = object(json!({"endpointName": "ep", "serviceName": "s"}));
        assert_eq!(target_of(&untargeted), Ok(None));
        let inverted = object(json!({"endpointName": "ep", "serviceName": "s",
            "scaleSettings": {"minInstances": 3, "maxInstances": 2, "targetDeployment": "d"}}));
        assert!(target_of(&inverted)
            .unwrap_err()
            .contains("minInstances (3)"));
        let broken = object(json!({"endpointName": 7}));
        assert!(target_of(&broken).unwrap_err().contains("not a valid"));
    }

    #[test]
    fn hpa_targets_name_a_deployment() {
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "metadata": {"name": "h", "namespace": "ns"},
            "spec": {"maxReplicas": 3, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}},
        }))
        .unwrap();
        assert!(targets(&hpa, "d"));
        assert!(!targets(&hpa, "other"));
    }
}

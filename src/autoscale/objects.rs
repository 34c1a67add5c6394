//! What the autoscaler reads from the API server: OnlineDeployments (which deployments to scale,
//! and how), HorizontalPodAutoscalers (which Deployments it must leave alone) and the apps/v1
//! Deployments themselves (their replicas: the autoscaler never reads a scale subresource), each
//! kept in a reflector store per watched namespace (or one cluster-wide) by a
//! [`crate::k8s::watch`].
//!
//! OnlineDeployments are watched as dynamic objects and parsed one by one, so one malformed object
//! is skipped (with a warning) instead of failing the whole list.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt, ResourceExt};

use crate::crd::{OnlineDeployment, OnlineDeploymentSpec, ScaleSettingsSpec, ScaleType};
use crate::k8s::{self, Health, Spec, Watch};

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

/// The replicas of an apps/v1 Deployment, as its watch last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicas {
    /// `spec.replicas` (1 when unset, as Kubernetes defaults it).
    pub desired: u32,
    /// `status.readyReplicas`.
    pub ready: u32,
    /// The object's `resourceVersion` (the scale write's precondition).
    pub resource_version: String,
}

/// The watches of OnlineDeployments, HPAs and Deployments (dropping them stops them).
pub struct Watches {
    deployments: Vec<Watch<DynamicObject>>,
    hpas: Vec<Watch<HorizontalPodAutoscaler>>,
    apps: Vec<Watch<Deployment>>,
}

impl Watches {
    /// Starts watching OnlineDeployments and HPAs in each scope (`None`: all namespaces).
    pub fn start(client: &Client, scopes: &[Option<String>]) -> Watches {
        let health = Health::new("not scaling until it can", Arc::new(()));
        let mut watches = Watches {
            deployments: Vec::new(),
            hpas: Vec::new(),
            apps: Vec::new(),
        };
        let resource = OnlineDeployment::api_resource();
        for scope in scopes {
            let place = scope.as_deref().unwrap_or("all namespaces");
            let (ns, dyntype) = (scope.clone(), resource.clone());
            let api = move |client| match &ns {
                Some(ns) => Api::namespaced_with(client, ns, &dyntype),
                None => Api::all_with(client, &dyntype),
            };
            let spec = Spec {
                name: format!("onlinedeployments in {place} (autoscaler)"),
                resource: "onlinedeployments",
                config: watcher::Config::default(),
                trim: k8s::trim::custom_resource,
            };
            watches.deployments.push(k8s::start_store(
                client,
                api,
                resource.clone(),
                spec,
                &health,
            ));

            let ns = scope.clone();
            let api = move |client| match &ns {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::all(client),
            };
            let spec = Spec {
                name: format!("horizontalpodautoscalers in {place} (autoscaler)"),
                resource: "horizontalpodautoscalers",
                config: watcher::Config::default(),
                trim: trim_hpa,
            };
            watches
                .hpas
                .push(k8s::start_store(client, api, (), spec, &health));

            let ns = scope.clone();
            let api = move |client| match &ns {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::all(client),
            };
            let spec = Spec {
                name: format!("deployments in {place} (autoscaler)"),
                resource: "deployments",
                config: watcher::Config::default(),
                trim: trim_deployment,
            };
            watches
                .apps
                .push(k8s::start_store(client, api, (), spec, &health));
        }
        watches
    }

    /// The replicas of the apps/v1 Deployment `namespace/name`, when it exists.
    pub fn replicas(&self, namespace: &str, name: &str) -> Option<Replicas> {
        self.apps.iter().find_map(|watch| {
            let found = watch.store().state().into_iter().find(|d| {
                d.metadata.name.as_deref() == Some(name)
                    && d.metadata.namespace.as_deref() == Some(namespace)
            })?;
            let desired = found.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = found
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            Some(Replicas {
                desired: u32::try_from(desired).unwrap_or(0),
                ready: u32::try_from(ready).unwrap_or(0),
                resource_version: found.metadata.resource_version.clone().unwrap_or_default(),
            })
        })
    }

    /// Waits until every store has its first complete list.
    pub async fn ready(&self) {
        for watch in &self.deployments {
            let _ = watch.store().wait_until_ready().await;
        }
        for watch in &self.hpas {
            let _ = watch.store().wait_until_ready().await;
        }
        for watch in &self.apps {
            let _ = watch.store().wait_until_ready().await;
        }
    }

    /// The deployments to scale now, by key. Invalid OnlineDeployments are skipped with a
    /// warning through `warn` (called once per object and problem; the caller rate-limits).
    pub fn targets(&self, mut warn: impl FnMut(&TargetKey, &str)) -> BTreeMap<TargetKey, Target> {
        let mut targets = BTreeMap::new();
        for watch in &self.deployments {
            for object in watch.store().state() {
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
        self.hpas.iter().find_map(|watch| {
            watch
                .store()
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

/// Keeps what the autoscaler reads of a Deployment: its identity, `spec.replicas` and status
/// counts; the pod template (most of the object) goes.
fn trim_deployment(deployment: &mut Deployment) {
    k8s::trim::metadata(&mut deployment.metadata);
    deployment.metadata.labels = None;
    if let Some(spec) = deployment.spec.as_mut() {
        spec.template = Default::default();
        spec.selector = Default::default();
    }
    if let Some(status) = deployment.status.as_mut() {
        status.conditions = None;
    }
}

/// Keeps what the autoscaler reads of an HPA: its identity and `scaleTargetRef`.
fn trim_hpa(hpa: &mut HorizontalPodAutoscaler) {
    k8s::trim::metadata(&mut hpa.metadata);
    hpa.status = None;
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

//! What the autoscaler writes through the API server: the scale subresource of the target
//! Deployment (replaced with the `resourceVersion` the Deployment's watch last saw, so a
//! concurrent change by anyone else is a 409 rather than overwritten; nothing is read first) and
//! the OnlineDeployment's `status.autoscale` (a merge patch). Every write carries the
//! autoscaler's field manager.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::json;

use crate::crd::{AutoscaleStatus, OnlineDeployment};

/// Why a read or write of the scale subresource failed.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The Deployment does not exist (404).
    #[error("the Deployment {0} does not exist")]
    NotFound(String),
    /// Someone else changed the Deployment since it was read (409).
    #[error("the Deployment {0} changed since it was read")]
    Conflict(String),
    /// Anything else (the API server is away, RBAC, ...).
    #[error("{0}")]
    Other(String),
}

/// The autoscaler's client: the Kubernetes client and the field manager of its writes.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    field_manager: String,
}

impl Writer {
    /// A writer through `client`, writing as `field_manager`.
    pub fn new(client: Client, field_manager: String) -> Writer {
        Writer {
            client,
            field_manager,
        }
    }

    /// Sets Deployment `namespace/name` to `replicas`, on the condition that it is still at
    /// `resource_version` (what its watch last saw).
    pub async fn write_scale(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
        replicas: u32,
    ) -> Result<Scale, ScaleError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let scale = Scale {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                resource_version: Some(resource_version.to_owned()),
                ..Default::default()
            },
            spec: Some(ScaleSpec {
                replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            }),
            status: None,
        };
        let params = PostParams {
            dry_run: false,
            field_manager: Some(self.field_manager.clone()),
        };
        api.replace_scale(name, &params, &scale)
            .await
            .map_err(|e| classify(e, namespace, name, "update"))
    }

    /// Writes `status.autoscale` of the OnlineDeployment `namespace/object`.
    pub async fn write_status(
        &self,
        namespace: &str,
        object: &str,
        status: &AutoscaleStatus,
    ) -> Result<(), kube::Error> {
        let resource = OnlineDeployment::api_resource();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        // A merge patch keeps fields it does not name: name the ones this status leaves out as
        // null, so a refusal does not show the replica counts of an earlier decision.
        let mut autoscale = json!(status);
        if let Some(fields) = autoscale.as_object_mut() {
            for field in ["currentReplicas", "desiredReplicas", "lastScaleTime"] {
                fields.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        let patch = Patch::Merge(json!({"status": {"autoscale": autoscale}}));
        api.patch_status(object, &params, &patch).await.map(drop)
    }
}

/// Replicas a scale asks for (`spec.replicas`, else `status.replicas`; 1 when neither is set,
/// as Kubernetes defaults it).
pub fn replicas_of(scale: &Scale) -> u32 {
    let spec = scale.spec.as_ref().and_then(|s| s.replicas);
    let status = scale.status.as_ref().map(|s| s.replicas);
    u32::try_from(spec.or(status).unwrap_or(1)).unwrap_or(0)
}

fn classify(error: kube::Error, namespace: &str, name: &str, verb: &str) -> ScaleError {
    let deployment = format!("{namespace}/{name}");
    match &error {
        kube::Error::Api(status) if status.code == 404 => ScaleError::NotFound(deployment),
        kube::Error::Api(status) if status.code == 409 => ScaleError::Conflict(deployment),
        kube::Error::Api(status) if status.code == 403 => ScaleError::Other(format!(
            "not allowed to {verb} deployments/scale of {deployment} ({}): grant the router's \
             ServiceAccount update on deployments/scale and get, list, watch on deployments \
             (the installer's ClusterRole does)",
            status.message
        )),
        _ => ScaleError::Other(format!(
            "cannot {verb} the scale of Deployment {deployment}: {error}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v1::ScaleStatus;

    #[test]
    fn replicas_come_from_the_spec_then_the_status() {
        let mut scale = Scale::default();
        assert_eq!(replicas_of(&scale), 1);
        scale.status = Some(ScaleStatus {
            replicas: 3,
            selector: None,
        });
        assert_eq!(replicas_of(&scale), 3);
        scale.spec = Some(ScaleSpec { replicas: Some(2) });
        assert_eq!(replicas_of(&scale), 2);
        scale.spec = Some(ScaleSpec { replicas: Some(-1) });
        assert_eq!(replicas_of(&scale), 0);
    }
}

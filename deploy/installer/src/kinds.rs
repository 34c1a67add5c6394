//! The kinds the installer creates, in apply order, as kube `ApiResource`s: how `apply` finds an
//! object's endpoint, and the list `update` prunes and `delete` removes from.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::{ApiResource, GroupVersionKind};

/// One kind the installer manages.
#[derive(Clone, Debug)]
pub struct ManagedKind {
    /// Where it is served.
    pub resource: ApiResource,
    /// Whether its objects live in a namespace (always `azureml` here).
    pub namespaced: bool,
    /// Whether it comes from an optional API (the Prometheus Operator's), which may be absent.
    pub optional: bool,
}

fn kind<K: kube::Resource<DynamicType = ()>>(namespaced: bool) -> ManagedKind {
    ManagedKind {
        resource: ApiResource::erase::<K>(&()),
        namespaced,
        optional: false,
    }
}

/// Every kind the installer may create, in the order objects are applied (the reverse of the
/// order they are deleted in).
pub fn managed() -> Vec<ManagedKind> {
    vec![
        kind::<Namespace>(false),
        kind::<ConfigMap>(true),
        kind::<CustomResourceDefinition>(false),
        kind::<ServiceAccount>(true),
        kind::<ClusterRole>(false),
        kind::<ClusterRoleBinding>(false),
        kind::<Role>(true),
        kind::<RoleBinding>(true),
        kind::<Secret>(true),
        kind::<Deployment>(true),
        kind::<PodDisruptionBudget>(true),
        kind::<Service>(true),
        kind::<NetworkPolicy>(true),
        kind::<DaemonSet>(true),
        ManagedKind {
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
                "servicemonitors",
            ),
            namespaced: true,
            optional: true,
        },
    ]
}

/// The managed kind of a rendered object, by `apiVersion` and `kind`.
pub fn of(object: &serde_yaml::Value) -> Option<ManagedKind> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    managed()
        .into_iter()
        .find(|k| k.resource.api_version == api_version && k.resource.kind == kind)
}

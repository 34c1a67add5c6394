//! The router's identity: ServiceAccount `azureml-fe-v2`, and a ClusterRole bound to it that
//! grants exactly what the router watches (get, list, watch) and what its request-based
//! autoscaler reads and writes (the scale of model Deployments, HPAs, OnlineDeployment status).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};

use super::meta;

/// What the router reads, as `(API group, resources)`: its custom resources, the EndpointSlices of
/// the model deployments' Services, and Secrets (endpoint keys; the `sslSecret`). Online
/// endpoints live in users' namespaces, so the role is cluster-wide.
pub const WATCHED: &[(&str, &[&str])] = &[
    ("scoregate.io", &["onlineendpoints", "onlinedeployments"]),
    ("discovery.k8s.io", &["endpointslices"]),
    ("", &["secrets"]),
];

/// The verbs a watcher needs.
pub const VERBS: &[&str] = &["get", "list", "watch"];

/// What the request-based autoscaler needs, as `(API group, resources, verbs)`: it sets the
/// replicas of model Deployments through their scale subresource, stays away from Deployments an
/// HPA scales, and reports in each OnlineDeployment's status.
pub const AUTOSCALER: &[(&str, &[&str], &[&str])] = &[
    ("apps", &["deployments/scale"], &["get", "update", "patch"]),
    (
        "autoscaling",
        &["horizontalpodautoscalers"],
        &["get", "list", "watch"],
    ),
    ("scoregate.io", &["onlinedeployments/status"], &["patch"]),
];

/// ServiceAccount `azureml-fe-v2`.
pub fn service_account(extension: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta::namespaced(meta::ROUTER, extension, "router"),
        ..ServiceAccount::default()
    }
}

/// ClusterRole `scoregate-router`.
pub fn cluster_role(extension: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta::cluster_scoped(meta::CLUSTER_ROLE, extension, "router"),
        rules: Some(
            WATCHED
                .iter()
                .map(|(group, resources)| rule(group, resources, VERBS))
                .chain(
                    AUTOSCALER
                        .iter()
                        .map(|(group, resources, verbs)| rule(group, resources, verbs)),
                )
                .collect(),
        ),
        ..ClusterRole::default()
    }
}

/// One rule: `verbs` on `resources` of API `group`.
fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// ClusterRoleBinding `scoregate-router`: the role, to the router's ServiceAccount.
pub fn cluster_role_binding(extension: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta::cluster_scoped(meta::CLUSTER_ROLE, extension, "router"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: meta::CLUSTER_ROLE.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: meta::ROUTER.to_owned(),
            namespace: Some(meta::NAMESPACE.to_owned()),
            ..Subject::default()
        }]),
    }
}

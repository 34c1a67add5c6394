//! The router's identity: ServiceAccount `azureml-fe-v2`, and a ClusterRole bound to it that
//! grants exactly what the router watches (get, list, watch), what its request-based autoscaler
//! reads and writes (the scale of model Deployments, HPAs), and the status it reports on its
//! custom resources (`status.conditions`, `status.autoscale`).
//!
//! With `inferenceRouterNamespaces` the same rules are granted by a Role and RoleBinding
//! `scoregate-router` in each of those namespaces instead, so the router reads no Secret outside
//! them; with HA, Role `scoregate-router-peers` in `azureml` lets the replicas find each other.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::meta;

/// The Role in `azureml` that lets the replicas watch their peer Service's EndpointSlices, in
/// namespace-scoped mode.
pub const PEERS_ROLE: &str = "scoregate-router-peers";

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
/// replicas of model Deployments through their scale subresource, reads their replicas from a
/// watch of Deployments, and stays away from Deployments an HPA scales.
pub const AUTOSCALER: &[(&str, &[&str], &[&str])] = &[
    ("apps", &["deployments/scale"], &["get", "update", "patch"]),
    ("apps", &["deployments"], &["get", "list", "watch"]),
    (
        "autoscaling",
        &["horizontalpodautoscalers"],
        &["get", "list", "watch"],
    ),
];

/// What the router reports, as `(API group, resources, verbs)`: `status.conditions` of
/// OnlineEndpoints and OnlineDeployments (server-side apply), and the autoscaler's
/// `status.autoscale` of OnlineDeployments.
pub const STATUS: &[(&str, &[&str], &[&str])] = &[(
    "scoregate.io",
    &["onlineendpoints/status", "onlinedeployments/status"],
    &["patch"],
)];

/// ServiceAccount `azureml-fe-v2`.
pub fn service_account(extension: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta::namespaced(meta::ROUTER, extension, "router"),
        ..ServiceAccount::default()
    }
}

/// Everything the router needs where online endpoints live.
fn router_rules() -> Vec<PolicyRule> {
    WATCHED
        .iter()
        .map(|(group, resources)| rule(group, resources, VERBS))
        .chain(
            AUTOSCALER
                .iter()
                .chain(STATUS)
                .map(|(group, resources, verbs)| rule(group, resources, verbs)),
        )
        .collect()
}

/// ClusterRole `scoregate-router`.
pub fn cluster_role(extension: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta::cluster_scoped(meta::CLUSTER_ROLE, extension, "router"),
        rules: Some(router_rules()),
        ..ClusterRole::default()
    }
}

fn in_namespace(name: &str, namespace: &str, extension: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.to_owned()),
        ..meta::namespaced(name, extension, "router")
    }
}

fn subjects() -> Option<Vec<Subject>> {
    Some(vec![Subject {
        kind: "ServiceAccount".to_owned(),
        name: meta::ROUTER.to_owned(),
        namespace: Some(meta::NAMESPACE.to_owned()),
        ..Subject::default()
    }])
}

/// Role `name` in `namespace` with `rules`, and the RoleBinding granting it to the router.
fn role_and_binding(
    name: &str,
    namespace: &str,
    rules: Vec<PolicyRule>,
    extension: &str,
) -> (Role, RoleBinding) {
    let role = Role {
        metadata: in_namespace(name, namespace, extension),
        rules: Some(rules),
    };
    let binding = RoleBinding {
        metadata: in_namespace(name, namespace, extension),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.to_owned(),
        },
        subjects: subjects(),
    };
    (role, binding)
}

/// Namespace-scoped mode: Role and RoleBinding `scoregate-router` in each of `namespaces`, and
/// with `ha` (unless `azureml` is one of them) Role `scoregate-router-peers` in `azureml`.
pub fn namespaced_roles(
    namespaces: &[String],
    ha: bool,
    extension: &str,
) -> Vec<(Role, RoleBinding)> {
    let mut out: Vec<(Role, RoleBinding)> = namespaces
        .iter()
        .map(|ns| role_and_binding(meta::CLUSTER_ROLE, ns, router_rules(), extension))
        .collect();
    if ha && !namespaces.iter().any(|ns| ns == meta::NAMESPACE) {
        let peers = vec![rule("discovery.k8s.io", &["endpointslices"], VERBS)];
        out.push(role_and_binding(
            PEERS_ROLE,
            meta::NAMESPACE,
            peers,
            extension,
        ));
    }
    out
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
        subjects: subjects(),
    }
}

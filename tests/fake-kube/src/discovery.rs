//! Discovery documents (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{g}/{v}`), classic and
//! aggregated (v2), built from the kinds the fake knows.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::kinds::{KindInfo, Kinds};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_STATUS: &[&str] = &[
    "configmaps",
    "secrets",
    "endpoints",
    "events",
    "serviceaccounts",
    "endpointslices",
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
    "leases",
    "servicemonitors",
];
const SCALABLE: &[&str] = &["deployments", "statefulsets", "replicasets"];

/// The `Accept` media type kube uses to ask for aggregated discovery.
pub(crate) fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("as=APIGroupDiscoveryList"))
}

/// The minor version `/version` reports unless a test sets another.
pub(crate) const DEFAULT_MINOR: u32 = 33;

/// `/version` for Kubernetes `1.minor`.
pub(crate) fn version(minor: u32) -> Value {
    json!({
        "major": "1", "minor": minor.to_string(), "gitVersion": format!("v1.{minor}.0-fake"), "gitCommit": "fake",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

/// `/api` (classic).
pub(crate) fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

/// Non-core kinds grouped by API group, then version.
fn by_group(kinds: &Kinds, core: bool) -> BTreeMap<String, BTreeMap<String, Vec<&KindInfo>>> {
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<&KindInfo>>> = BTreeMap::new();
    for info in kinds.all().filter(|i| i.gvr.group.is_empty() == core) {
        let versions = groups.entry(info.gvr.group.clone()).or_default();
        versions
            .entry(info.gvr.version.clone())
            .or_default()
            .push(info);
    }
    groups
}

/// `/apis` (classic).
pub(crate) fn groups(kinds: &Kinds) -> Value {
    let groups: Vec<Value> = by_group(kinds, false)
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .keys()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/{group}/{version}` (classic); `None` if nothing is served there.
pub(crate) fn resources(kinds: &Kinds, group: &str, version: &str) -> Option<Value> {
    let infos: Vec<&KindInfo> = kinds
        .all()
        .filter(|i| i.gvr.group == group && i.gvr.version == version)
        .collect();
    if infos.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for info in infos {
        let entry = |name: String, kind: &str, verbs: &[&str]| {
            json!({
                "name": name, "singularName": "", "namespaced": info.namespaced,
                "kind": kind, "verbs": verbs,
            })
        };
        resources.push(entry(info.gvr.plural.clone(), &info.kind, VERBS));
        if !NO_STATUS.contains(&info.gvr.plural.as_str()) {
            resources.push(entry(
                format!("{}/status", info.gvr.plural),
                &info.kind,
                &["get", "patch", "update"],
            ));
        }
        if SCALABLE.contains(&info.gvr.plural.as_str()) {
            let mut scale = entry(
                format!("{}/scale", info.gvr.plural),
                "Scale",
                &["get", "patch", "update"],
            );
            scale["group"] = json!("autoscaling");
            scale["version"] = json!("v1");
            resources.push(scale);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources,
    }))
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2`) for `/api` (`core`) or `/apis`.
pub(crate) fn aggregated(kinds: &Kinds, core: bool) -> Value {
    let items: Vec<Value> = by_group(kinds, core)
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|(version, infos)| {
                    let resources: Vec<Value> =
                        infos.iter().map(|info| aggregated_resource(info)).collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn aggregated_resource(info: &KindInfo) -> Value {
    let gvk = json!({"group": info.gvr.group, "version": info.gvr.version, "kind": info.kind});
    let mut subresources = Vec::new();
    if !NO_STATUS.contains(&info.gvr.plural.as_str()) {
        subresources.push(json!({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]}));
    }
    if SCALABLE.contains(&info.gvr.plural.as_str()) {
        let scale = json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
        subresources.push(json!({"subresource": "scale", "responseKind": scale, "verbs": ["get", "patch", "update"]}));
    }
    json!({
        "resource": info.gvr.plural,
        "responseKind": gvk,
        "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": info.kind.to_ascii_lowercase(),
        "verbs": VERBS,
        "subresources": subresources,
    })
}

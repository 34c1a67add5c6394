//! The resource kinds the fake knows: group/version/plural → kind and scope.

use std::collections::BTreeMap;

/// A group, version and plural resource name, e.g. `apps`/`v1`/`deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Gvr {
    /// API group; empty for the core group.
    pub(crate) group: String,
    /// API version, e.g. `v1`.
    pub(crate) version: String,
    /// Plural resource name as it appears in URL paths.
    pub(crate) plural: String,
}

impl Gvr {
    /// Builds a `Gvr` from its parts.
    pub(crate) fn new(group: &str, version: &str, plural: &str) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        }
    }

    /// The `apiVersion` string: `v1` for the core group, otherwise `group/version`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// What the fake knows about one resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KindInfo {
    /// Where the resource is served.
    pub(crate) gvr: Gvr,
    /// The object kind, e.g. `Deployment`.
    pub(crate) kind: String,
    /// Whether objects live in namespaces.
    pub(crate) namespaced: bool,
}

const BUILTIN: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "configmaps", "ConfigMap", true),
    ("", "v1", "endpoints", "Endpoints", true),
    ("", "v1", "events", "Event", true),
    ("", "v1", "namespaces", "Namespace", false),
    ("", "v1", "nodes", "Node", false),
    ("", "v1", "pods", "Pod", true),
    ("", "v1", "secrets", "Secret", true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true),
    ("", "v1", "services", "Service", true),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    ),
    ("apps", "v1", "daemonsets", "DaemonSet", true),
    ("apps", "v1", "deployments", "Deployment", true),
    ("apps", "v1", "replicasets", "ReplicaSet", true),
    ("apps", "v1", "statefulsets", "StatefulSet", true),
    (
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        true,
    ),
    ("coordination.k8s.io", "v1", "leases", "Lease", true),
    (
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
    ),
    (
        "monitoring.coreos.com",
        "v1",
        "servicemonitors",
        "ServiceMonitor",
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
];

/// The registry of known kinds, pre-filled with [`BUILTIN`].
#[derive(Debug)]
pub(crate) struct Kinds {
    map: BTreeMap<Gvr, KindInfo>,
}

impl Kinds {
    pub(crate) fn builtin() -> Self {
        let map = BUILTIN
            .iter()
            .map(|&(group, version, plural, kind, namespaced)| {
                let gvr = Gvr::new(group, version, plural);
                let info = KindInfo {
                    gvr: gvr.clone(),
                    kind: kind.to_string(),
                    namespaced,
                };
                (gvr, info)
            })
            .collect();
        Self { map }
    }

    pub(crate) fn get(&self, gvr: &Gvr) -> Option<&KindInfo> {
        self.map.get(gvr)
    }

    pub(crate) fn register(&mut self, info: KindInfo) {
        self.map.insert(info.gvr.clone(), info);
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &KindInfo> {
        self.map.values()
    }

    /// Finds a kind by `apiVersion` and either its kind or its plural name.
    pub(crate) fn lookup(&self, api_version: &str, kind_or_plural: &str) -> Option<&KindInfo> {
        let (group, version) = split_api_version(api_version);
        self.map.values().find(|info| {
            info.gvr.group == group
                && info.gvr.version == version
                && (info.kind == kind_or_plural || info.gvr.plural == kind_or_plural)
        })
    }

    /// The kind for a path, or a provisional guess for a plural nobody registered.
    pub(crate) fn resolve(&self, gvr: &Gvr, namespaced_path: bool) -> KindInfo {
        self.get(gvr).cloned().unwrap_or_else(|| KindInfo {
            gvr: gvr.clone(),
            kind: kind_from_plural(&gvr.plural),
            namespaced: namespaced_path,
        })
    }
}

/// Whether the resource is one of the built-in (non-custom) kinds.
pub(crate) fn is_builtin(gvr: &Gvr) -> bool {
    BUILTIN
        .iter()
        .any(|&(g, v, p, _, _)| gvr.group == g && gvr.version == v && gvr.plural == p)
}

/// Splits `group/version` (or a bare core `version`) into its parts.
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// The plural kube-rs would derive for a kind (lowercase, English-ish plural).
pub(crate) fn plural_of(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with('s') || lower.ends_with('x') || lower.ends_with("ch") {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

fn kind_from_plural(plural: &str) -> String {
    let singular = plural.strip_suffix('s').unwrap_or(plural);
    let mut chars = singular.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_and_lookup() {
        assert_eq!(plural_of("OnlineEndpoint"), "onlineendpoints");
        assert_eq!(plural_of("NetworkPolicy"), "networkpolicies");
        assert_eq!(plural_of("Ingress"), "ingresses");
        let kinds = Kinds::builtin();
        let info = kinds.lookup("apps/v1", "Deployment").unwrap();
        assert_eq!(info.gvr.plural, "deployments");
        assert!(kinds.lookup("v1", "nodes").is_some_and(|i| !i.namespaced));
        let guessed = kinds.resolve(&Gvr::new("scoregate.io", "v1", "widgets"), true);
        assert_eq!(guessed.kind, "Widget");
    }
}

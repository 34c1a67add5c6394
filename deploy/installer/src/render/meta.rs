//! Names and labels shared by everything the installer renders.
//!
//! Every object carries [`MANAGED_BY`] and [`EXTENSION_LABEL`], which is how `update` prunes and
//! `delete` finds exactly what `create` made.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The namespace everything lives in (az rule 1: az forces the release namespace to `azureml`).
pub const NAMESPACE: &str = "azureml";
/// The router's Deployment and ServiceAccount (Azure ML's names).
pub const ROUTER: &str = "azureml-fe-v2";
/// The router's Service (Azure ML's name).
pub const SERVICE: &str = "azureml-fe";
/// The ClusterIP Service the router's metrics are scraped through (kept off the public Service).
pub const METRICS_SERVICE: &str = "azureml-fe-metrics";
/// The router's configuration.
pub const CONFIG_MAP: &str = "azureml-fe-config";
/// The TLS Secret made from `sslCertPemFile`/`sslKeyPemFile`.
pub const TLS_SECRET: &str = "azureml-fe-tls";
/// The headless Service whose EndpointSlices list the router replicas to each other (HA).
pub const PEER_SERVICE: &str = "azureml-fe-peers";
/// The Secret holding the replicas' shared cluster credential (HA), made once by `create` with
/// random bytes and kept by every `update`.
pub const CLUSTER_SECRET: &str = "azureml-fe-cluster";
/// The router's ClusterRole and ClusterRoleBinding.
pub const CLUSTER_ROLE: &str = "scoregate-router";
/// The pod label Azure ML's router pods carry, and the router's selector.
pub const APP_LABEL: (&str, &str) = ("azuremlappname", "azureml-fe");

/// `app.kubernetes.io/managed-by` value on everything the installer makes.
pub const MANAGED_BY: &str = "scoregate-ext";
/// The label naming the extension an object belongs to.
pub const EXTENSION_LABEL: &str = "scoregate.io/extension";
/// `app.kubernetes.io/component` of the extension's record ConfigMap.
pub const RECORD_COMPONENT: &str = "extension-record";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "scoregate";

/// The labels every object of extension `extension` carries, plus its component.
pub fn labels(extension: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "scoregate".to_owned(),
        ),
        (EXTENSION_LABEL.to_owned(), extension.to_owned()),
    ])
}

/// The label selector matching everything extension `extension` made.
pub fn selector(extension: &str) -> String {
    format!("app.kubernetes.io/managed-by={MANAGED_BY},{EXTENSION_LABEL}={extension}")
}

/// Metadata for a namespaced object in [`NAMESPACE`].
pub fn namespaced(name: &str, extension: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        labels: Some(labels(extension, component)),
        ..ObjectMeta::default()
    }
}

/// Metadata for a cluster-scoped object.
pub fn cluster_scoped(name: &str, extension: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(labels(extension, component)),
        ..ObjectMeta::default()
    }
}

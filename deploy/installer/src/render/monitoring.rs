//! ServiceMonitors (`installPromOp`) for the router's metrics and the DCGM exporter's.
//!
//! k8s-openapi has no Prometheus Operator types, so [`ServiceMonitor`] is the subset of
//! `monitoring.coreos.com/v1` used here, typed, refusing unknown fields when read back.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use super::meta;

/// The Prometheus Operator's API group and version.
pub const API_VERSION: &str = "monitoring.coreos.com/v1";
/// Scrape interval (Azure ML's scoring-fe metrics use 15 s since release 1.1.23).
pub const INTERVAL: &str = "15s";

/// A `monitoring.coreos.com/v1` ServiceMonitor (the fields used here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitor {
    /// `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// `ServiceMonitor`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// What to scrape.
    pub spec: ServiceMonitorSpec,
}

/// `ServiceMonitor.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitorSpec {
    /// The Services to scrape (in the ServiceMonitor's namespace).
    pub selector: LabelSelector,
    /// Their ports to scrape.
    pub endpoints: Vec<ScrapeEndpoint>,
}

/// `ServiceMonitor.spec.endpoints[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScrapeEndpoint {
    /// The Service port name.
    pub port: String,
    /// The HTTP path.
    pub path: String,
    /// How often.
    pub interval: String,
}

/// A ServiceMonitor `name` scraping `port` of the Services labelled `selector`.
/// `labels` are added to the ServiceMonitor's own (Prometheus selects ServiceMonitors by them).
pub fn service_monitor(
    name: &str,
    extension: &str,
    component: &str,
    selector: BTreeMap<String, String>,
    port: &str,
    labels: &BTreeMap<String, String>,
) -> ServiceMonitor {
    let mut metadata = meta::namespaced(name, extension, component);
    let mut all = labels.clone();
    // The installer's own labels win: delete and prune find objects by them.
    all.extend(metadata.labels.take().unwrap_or_default());
    metadata.labels = Some(all);
    ServiceMonitor {
        api_version: API_VERSION.to_owned(),
        kind: "ServiceMonitor".to_owned(),
        metadata,
        spec: ServiceMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            endpoints: vec![ScrapeEndpoint {
                port: port.to_owned(),
                path: "/metrics".to_owned(),
                interval: INTERVAL.to_owned(),
            }],
        },
    }
}

//! NetworkPolicy `azureml-fe-v2` (`networkPolicy`, on by default): the router's pods accept only
//! what they serve. Clients reach the scoring ports (through Service `azureml-fe`, from anywhere);
//! Prometheus reaches the admin port (pods labelled `app.kubernetes.io/name: prometheus` in any
//! namespace, as the Prometheus Operator labels them); the replicas reach each other's cluster
//! port. The kubelet's probes need no rule: a pod's own node may always reach it (Kubernetes'
//! NetworkPolicy semantics). Egress is not restricted (the API server, the model pods).
//! NetworkPolicies add up: a cluster that scrapes from elsewhere adds its own.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;

/// The label Prometheus pods are allowed in by.
pub const PROMETHEUS_LABEL: (&str, &str) = ("app.kubernetes.io/name", "prometheus");

fn labels(pair: (&str, &str)) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(pair.0.to_owned(), pair.1.to_owned())])),
        ..LabelSelector::default()
    }
}

fn ports(names: &[&str]) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        names
            .iter()
            .map(|name| NetworkPolicyPort {
                port: Some(IntOrString::String((*name).to_owned())),
                protocol: Some("TCP".to_owned()),
                ..NetworkPolicyPort::default()
            })
            .collect(),
    )
}

/// The router's NetworkPolicy: `scoring` ports from anywhere, `admin` from Prometheus, and
/// `cluster` (HA) from the other replicas; named container ports.
pub fn router(
    extension: &str,
    scoring: &[&str],
    admin: &str,
    cluster: Option<&str>,
) -> NetworkPolicy {
    let mut ingress = Vec::new();
    if !scoring.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: ports(scoring),
        });
    }
    ingress.push(NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(labels(PROMETHEUS_LABEL)),
            ..NetworkPolicyPeer::default()
        }]),
        ports: ports(&[admin]),
    });
    if let Some(cluster) = cluster {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(labels(meta::APP_LABEL)),
                ..NetworkPolicyPeer::default()
            }]),
            ports: ports(&[cluster]),
        });
    }
    NetworkPolicy {
        metadata: meta::namespaced(meta::ROUTER, extension, "router"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(labels(meta::APP_LABEL)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

//! Service `azureml-fe` (the scoring entry point) and, for Prometheus, the ClusterIP Service
//! `azureml-fe-metrics` that keeps the admin port off the public one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::validate::InferencePlan;

/// The annotation that makes an AKS load balancer internal (`internalLoadBalancerProvider=azure`).
pub const AZURE_INTERNAL_LB: &str = "service.beta.kubernetes.io/azure-load-balancer-internal";
/// The label the metrics Service is selected by.
pub const METRICS_SELECTOR: (&str, &str) = ("scoregate.io/metrics", "router");

fn app_selector() -> BTreeMap<String, String> {
    BTreeMap::from([(meta::APP_LABEL.0.to_owned(), meta::APP_LABEL.1.to_owned())])
}

fn port(name: &str, number: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Service `azureml-fe`: 80 → the router's HTTP port when insecure connections are allowed, 443 →
/// its HTTPS port when TLS is on.
pub fn scoring(plan: &InferencePlan, extension: &str) -> Service {
    let mut metadata = meta::namespaced(meta::SERVICE, extension, "router");
    let mut annotations = plan.service.annotations.clone();
    if plan.internal_load_balancer {
        annotations.insert(AZURE_INTERNAL_LB.to_owned(), "true".to_owned());
    }
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    let mut ports = Vec::new();
    if plan.allow_insecure {
        ports.push(port("http", 80, "http"));
    }
    if plan.tls.is_some() {
        ports.push(port("https", 443, "https"));
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(plan.service_type.as_k8s().to_owned()),
            selector: Some(app_selector()),
            ports: Some(ports),
            load_balancer_ip: plan.service.load_balancer_ip.map(|ip| ip.to_string()),
            external_traffic_policy: plan.service.external_traffic_policy.clone(),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Service `azureml-fe-peers`: headless, the replicas' internal port, so that its EndpointSlices
/// list the ready replicas to each other (coordinated admission, HA only).
pub fn peers(extension: &str, cluster_port: u16) -> Service {
    Service {
        metadata: meta::namespaced(meta::PEER_SERVICE, extension, "router"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some("None".to_owned()),
            selector: Some(app_selector()),
            ports: Some(vec![port(
                scoregate::cluster::kube_peers::PORT_NAME,
                i32::from(cluster_port),
                scoregate::cluster::kube_peers::PORT_NAME,
            )]),
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Service `azureml-fe-metrics`: ClusterIP, the admin port only, for the ServiceMonitor.
pub fn metrics(extension: &str, admin_port: u16) -> Service {
    let mut metadata = meta::namespaced(meta::METRICS_SERVICE, extension, "router");
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(METRICS_SELECTOR.0.to_owned(), METRICS_SELECTOR.1.to_owned());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(app_selector()),
            ports: Some(vec![port("admin", i32::from(admin_port), "admin")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

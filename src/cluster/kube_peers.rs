//! Finding the other replicas in Kubernetes: the ready addresses of the EndpointSlices of the
//! router's own headless Service, on the cluster port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::Cluster;
use crate::config::PeerServiceConfig;
use crate::k8s::{self, Health, Sink, Spec};

/// Name of the Service port that carries the cluster protocol, when the Service names it.
pub const PORT_NAME: &str = "cluster";

/// Watches the Service's EndpointSlices and keeps the cluster's replica list in step.
pub fn watch(
    client: Client,
    service: &PeerServiceConfig,
    default_port: u16,
    cluster: Arc<Cluster>,
) -> tokio::task::JoinHandle<()> {
    let namespace = service.namespace.clone();
    let spec = Spec {
        name: format!(
            "the EndpointSlices of the router's Service {}/{}",
            service.namespace, service.name
        ),
        resource: "endpointslices",
        config: watcher::Config::default()
            .labels(&format!("kubernetes.io/service-name={}", service.name)),
        trim: |slice: &mut EndpointSlice| k8s::trim::metadata(&mut slice.metadata),
    };
    let service = format!("{}/{}", service.namespace, service.name);
    tokio::spawn(async move {
        let health = Health::new("keeping the current replica list", Arc::new(()));
        let (tx, mut rx) = mpsc::channel(16);
        let api = move |client| Api::namespaced(client, &namespace);
        let watch = k8s::start(&client, api, (), spec, &health, Some(Sink::new(tx, |_| ())));
        while rx.recv().await.is_some() {
            let mut all: Vec<SocketAddr> = watch
                .store()
                .state()
                .iter()
                .flat_map(|slice| ready_addresses(slice, default_port))
                .collect();
            all.sort();
            all.dedup();
            tracing::debug!(%service, replicas = all.len(), "replica list from the Service's EndpointSlices");
            cluster.set_peers(&all);
        }
    })
}

/// The slice's ready endpoints' addresses on the cluster port.
fn ready_addresses(slice: &EndpointSlice, default_port: u16) -> Vec<SocketAddr> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(default_port);
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

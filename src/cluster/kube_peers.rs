//! Finding the other replicas in Kubernetes: the ready addresses of the EndpointSlices of the
//! router's own headless Service, on the cluster port.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::Cluster;
use crate::config::PeerServiceConfig;

/// Name of the Service port that carries the cluster protocol, when the Service names it.
pub const PORT_NAME: &str = "cluster";

/// Watches the Service's EndpointSlices and keeps the cluster's replica list in step.
pub fn watch(
    client: Client,
    service: &PeerServiceConfig,
    default_port: u16,
    cluster: Arc<Cluster>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client, &service.namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", service.name));
    let service = format!("{}/{}", service.namespace, service.name);
    tokio::spawn(async move {
        let mut slices: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, Vec<SocketAddr>>> = None;
        let mut stream = watcher::watcher(api, config).boxed();
        let mut failures = 0u32;
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(Event::Init) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Ok(Event::InitApply(slice)) => {
                    if let Some(listing) = listing.as_mut() {
                        let (name, addresses) = ready_addresses(&slice, default_port);
                        listing.insert(name, addresses);
                    }
                    false
                }
                Ok(Event::InitDone) => {
                    slices = listing.take().unwrap_or_default();
                    true
                }
                Ok(Event::Apply(slice)) => {
                    let (name, addresses) = ready_addresses(&slice, default_port);
                    slices.insert(name, addresses);
                    true
                }
                Ok(Event::Delete(slice)) => {
                    let (name, _) = ready_addresses(&slice, default_port);
                    slices.remove(&name).is_some()
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%service, %error, "watching the router's own Service to find the other replicas failed; retrying");
                    let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tokio::time::sleep(pause).await;
                    false
                }
            };
            if changed {
                failures = 0;
                let mut all: Vec<SocketAddr> = slices.values().flatten().copied().collect();
                all.sort();
                all.dedup();
                tracing::debug!(%service, replicas = all.len(), "replica list from the Service's EndpointSlices");
                cluster.set_peers(&all);
            }
        }
    })
}

/// The slice's name and its ready endpoints' addresses on the cluster port.
fn ready_addresses(slice: &EndpointSlice, default_port: u16) -> (String, Vec<SocketAddr>) {
    let name = slice.metadata.name.clone().unwrap_or_default();
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(default_port);
    let addresses = slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    (name, addresses)
}

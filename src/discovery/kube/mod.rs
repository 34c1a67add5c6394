//! Kubernetes discovery: OnlineEndpoints, OnlineDeployments, the EndpointSlices of the Services
//! deployments name, and the key Secrets endpoints name, watched with `kube::runtime::watcher`
//! and reflector stores, turned into the same routing table the routes file produces.
//!
//! | module | concern |
//! |---|---|
//! | [`resources`] | the watches ([`crate::k8s::watch`]): selection, trimming, messages |
//! | [`slices`] | which EndpointSlices: Services packed into bounded label-selector shards |
//! | [`translate`] | objects → per-endpoint declarations, indexes that say what a change touches |
//! | [`rebuild`] | the loop: coalescing (≤ 10 ms), per-endpoint validation, incremental publish |
//! | [`health`] | what outages count: `scoregate_discovery_up`, error and relist counters |
//! | [`problems`] | why something is not served as declared; each problem reported once |
//! | [`secrets`] | the TLS certificate from `sslSecret` |
//!
//! Scope is one namespace, a list (one set of watches per namespace), or all namespaces (one set
//! of cluster-wide watches). Key Secrets are watched per scope with the field selector
//! `type=Opaque` and trimmed to `primaryKey`/`secondaryKey` on arrival: field selectors cannot
//! select a set of names, and one watch per referenced Secret would cost one connection each
//! (kube's client speaks HTTP/1.1), so only Opaque Secrets are listed and only the key entries
//! are kept; only the Secrets endpoints name are ever used.
//!
//! While the API server is away, the router serves its last table; each watch retries with a
//! capped exponential backoff (250 ms to 5 s, jittered) and the outage is logged and reported as
//! `scoregate_discovery_up 0`. A 410 Expired relists, and the new list replaces the old only when
//! complete, so routes that still exist are never dropped in between.
//!
//! RBAC: `get`, `list`, `watch` on `onlineendpoints.scoregate.io`, `onlinedeployments.scoregate.io`,
//! `endpointslices.discovery.k8s.io` and `secrets` in the watched namespaces (and on the TLS
//! Secret's namespace when `tls.secret` is set).

pub mod conditions;
pub mod health;
pub mod names;
pub mod problems;
pub mod rebuild;
pub mod resources;
pub mod secrets;
pub mod slices;
pub mod translate;

use kube::Client;
use tokio::sync::mpsc;

pub use secrets::{load_certificate, watch_certificate};

use super::Publisher;
use crate::config::KubeDiscoveryConfig;
use crate::telemetry::Metrics;

/// The scopes to watch: each listed namespace once, or `None` (all namespaces).
fn scopes(config: &KubeDiscoveryConfig) -> Vec<resources::Scope> {
    if config.namespaces.is_empty() {
        return vec![None];
    }
    let mut namespaces = config.namespaces.clone();
    namespaces.sort();
    namespaces.dedup();
    namespaces.into_iter().map(Some).collect()
}

/// Starts watching and publishing through `publisher`; the router becomes ready after the first
/// complete list of everything. Returns the loop's task (aborting it stops every watch).
/// `board` receives every object's `Ready` condition (`None`: the router writes none).
pub fn start(
    client: Client,
    config: &KubeDiscoveryConfig,
    publisher: Publisher,
    metrics: &Metrics,
    board: Option<crate::conditions::Board>,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(resources::CHANNEL_CAPACITY);
    let scopes = scopes(config);
    tracing::info!(
        namespaces = ?scopes.iter().map(|s| s.as_deref().unwrap_or("*")).collect::<Vec<_>>(),
        "Kubernetes discovery: listing OnlineEndpoints, OnlineDeployments, EndpointSlices and Secrets"
    );
    let discovery = rebuild::Discovery::new(client, scopes, tx, publisher, metrics, board);
    tokio::spawn(rebuild::run(discovery, rx))
}

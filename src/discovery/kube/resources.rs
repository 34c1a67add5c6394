//! The watches: one [`crate::k8s::watch`] per (kind, scope[, shard]), each sending what changed
//! to the discovery loop as [`Message`]s on one bounded channel.
//!
//! Objects are trimmed before they are stored: managed fields, annotations, owner references and
//! every field scoregate does not read are dropped, so memory grows with what routing needs.
//! Retries, backoff, pacing and outage reports are the primitive's (see [`crate::k8s`]).

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::crd::{OnlineDeployment, OnlineEndpoint, PRIMARY_KEY, SECONDARY_KEY, TLS_SECRET_KEYS};
use crate::k8s::{self, Health, Sink, Spec, Update, WatchTask};

/// The label the EndpointSlice controller puts on every slice: the name of its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How many messages the watches may have sent that the discovery loop has not taken yet.
pub const CHANNEL_CAPACITY: usize = 1_024;

/// What a watch watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `OnlineEndpoint`s.
    Endpoints,
    /// `OnlineDeployment`s.
    Deployments,
    /// EndpointSlices of the Services deployments name (one shard of them).
    Slices,
    /// Opaque Secrets (endpoint keys).
    Secrets,
}

impl Kind {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Endpoints => "onlineendpoints",
            Kind::Deployments => "onlinedeployments",
            Kind::Slices => "endpointslices",
            Kind::Secrets => "secrets",
        }
    }
}

/// A namespace, or `None` for all namespaces.
pub type Scope = Option<String>;

/// Identifies one running watch: kind, scope, shard (EndpointSlices only) and the generation of
/// that shard's watcher (a shard restarts when its Services change).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchId {
    /// What it watches.
    pub kind: Kind,
    /// Where.
    pub scope: Scope,
    /// Which shard of EndpointSlice Services (0 for other kinds).
    pub shard: usize,
    /// Which incarnation of that shard's watcher.
    pub generation: u64,
}

impl WatchId {
    /// The watch of `kind` in `scope` (not sharded).
    pub fn of(kind: Kind, scope: &Scope) -> WatchId {
        WatchId {
            kind,
            scope: scope.clone(),
            shard: 0,
            generation: 0,
        }
    }
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = self.scope.as_deref().unwrap_or("all namespaces");
        match self.kind {
            Kind::Slices => write!(f, "endpointslices (shard {}) in {scope}", self.shard),
            kind => write!(f, "{} in {scope}", kind.as_str()),
        }
    }
}

/// `(namespace, name)` of an object.
pub type ObjKey = (String, String);

/// The key of any object.
pub fn key_of<K: Resource>(object: &K) -> ObjKey {
    (
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

/// A watched object, trimmed.
#[derive(Clone, Debug)]
pub enum Object {
    /// An `OnlineEndpoint` (kept dynamic so that one malformed object is refused on its own
    /// instead of failing the whole list).
    Endpoint(Arc<DynamicObject>),
    /// An `OnlineDeployment` (dynamic, like endpoints).
    Deployment(Arc<DynamicObject>),
    /// An EndpointSlice.
    Slice(Arc<EndpointSlice>),
    /// A Secret.
    Secret(Arc<Secret>),
}

impl Object {
    /// Its key.
    pub fn key(&self) -> ObjKey {
        match self {
            Object::Endpoint(o) | Object::Deployment(o) => key_of(&**o),
            Object::Slice(o) => key_of(&**o),
            Object::Secret(o) => key_of(&**o),
        }
    }
}

/// What a watch reports.
#[derive(Debug)]
pub enum Body {
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjKey),
    /// A complete list: exactly these objects exist (in this watch's scope and selection).
    Synced(Vec<Object>),
}

/// One report from one watch.
#[derive(Debug)]
pub struct Message {
    /// Which watch.
    pub watch: WatchId,
    /// When the router received the event (for event-to-routable latency).
    pub received: Instant,
    /// What happened.
    pub body: Body,
}

/// Sends to the discovery loop.
pub type Sender = mpsc::Sender<Message>;

/// The `ApiResource` of a custom resource.
fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Endpoints => OnlineEndpoint::api_resource(),
        _ => OnlineDeployment::api_resource(),
    }
}

/// A sink that sends the updates of watch `id` as messages, each object wrapped by `wrap`.
fn sink<K>(tx: Sender, id: WatchId, wrap: fn(Arc<K>) -> Object) -> Sink<K, Message>
where
    K: Resource + Send + Sync + 'static,
{
    Sink::new(tx, move |update: Update<K>| Message {
        watch: id.clone(),
        received: Instant::now(),
        body: match update {
            Update::Applied(object) => Body::Apply(wrap(object)),
            Update::Deleted(object) => Body::Delete(key_of(&*object)),
            Update::Listed(objects) => Body::Synced(objects.into_iter().map(wrap).collect()),
        },
    })
}

/// Starts the watch `id` (endpoints, deployments or key Secrets) and returns its task.
pub fn spawn_plain(client: &Client, id: WatchId, tx: Sender, health: &Health) -> WatchTask {
    let name = id.to_string();
    match id.kind {
        Kind::Endpoints | Kind::Deployments => {
            let resource = api_resource(id.kind);
            let (scope, dyntype) = (id.scope.clone(), resource.clone());
            let api = move |client| match &scope {
                Some(ns) => Api::namespaced_with(client, ns, &dyntype),
                None => Api::all_with(client, &dyntype),
            };
            let wrap = if id.kind == Kind::Endpoints {
                Object::Endpoint
            } else {
                Object::Deployment
            };
            let spec = Spec {
                name,
                resource: id.kind.as_str(),
                config: watcher::Config::default(),
                trim: k8s::trim::custom_resource,
            };
            let sink = sink(tx, id, wrap);
            k8s::start(client, api, resource, spec, health, Some(sink)).into_task()
        }
        Kind::Secrets => {
            let scope = id.scope.clone();
            // Only Opaque Secrets can hold endpoint keys; this keeps service-account tokens,
            // Helm releases and TLS Secrets out of the router's memory.
            let spec = Spec {
                name,
                resource: id.kind.as_str(),
                config: watcher::Config::default().fields("type=Opaque"),
                trim: trim_key_secret,
            };
            let sink = sink(tx, id, Object::Secret);
            let api = move |client| scoped(client, &scope);
            k8s::start(client, api, (), spec, health, Some(sink)).into_task()
        }
        Kind::Slices => unreachable!("EndpointSlice watches are started through spawn_slices"),
    }
}

/// Starts the EndpointSlice watch `id` for the Services `services` (a label selector
/// `kubernetes.io/service-name in (…)`).
pub fn spawn_slices<'a>(
    client: &Client,
    id: WatchId,
    services: impl IntoIterator<Item = &'a str>,
    tx: Sender,
    health: &Health,
) -> WatchTask {
    let scope = id.scope.clone();
    let spec = Spec {
        name: id.to_string(),
        resource: id.kind.as_str(),
        config: watcher::Config::default().labels(&slice_selector(services)),
        trim: trim_slice,
    };
    let sink = sink(tx, id, Object::Slice);
    let api = move |client| scoped(client, &scope);
    k8s::start(client, api, (), spec, health, Some(sink)).into_task()
}

/// Starts a watch of the one Secret `ns/name` (the TLS `sslSecret`), keeping only the
/// certificate entries; its messages carry `id`.
pub fn spawn_tls_secret(
    client: &Client,
    ns: &str,
    name: &str,
    id: WatchId,
    tx: Sender,
    health: &Health,
) -> WatchTask {
    let spec = Spec {
        name: format!("the TLS Secret {ns}/{name}"),
        resource: super::names::RESOURCE_TLS_SECRET,
        config: watcher::Config::default().fields(&format!("metadata.name={name}")),
        trim: trim_tls_secret,
    };
    let sink = sink(tx, id, Object::Secret);
    let ns = ns.to_string();
    let api = move |client| Api::namespaced(client, &ns);
    k8s::start(client, api, (), spec, health, Some(sink)).into_task()
}

/// `kubernetes.io/service-name in (a,b,c)`.
pub fn slice_selector<'a>(services: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = services.into_iter().collect();
    format!("{SERVICE_NAME_LABEL} in ({})", names.join(","))
}

fn scoped<K>(client: Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Keeps only the Service label and each endpoint's addresses and conditions.
pub fn trim_slice(slice: &mut EndpointSlice) {
    let meta = &mut slice.metadata;
    k8s::trim::metadata(meta);
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == SERVICE_NAME_LABEL);
    }
    slice.ports = None;
    for endpoint in &mut slice.endpoints {
        endpoint.hints = None;
        endpoint.node_name = None;
        endpoint.zone = None;
        endpoint.target_ref = None;
        endpoint.deprecated_topology = None;
        endpoint.hostname = None;
    }
}

/// Keeps only the endpoint-key entries of a Secret's data.
pub fn trim_key_secret(secret: &mut Secret) {
    trim_secret(secret, &[PRIMARY_KEY, SECONDARY_KEY]);
}

/// Keeps only the certificate and key entries of the TLS Secret (both naming conventions).
pub fn trim_tls_secret(secret: &mut Secret) {
    trim_secret(secret, &TLS_SECRET_KEYS);
}

/// Drops a Secret's metadata the router does not use and every data entry but `keep`.
fn trim_secret(secret: &mut Secret, keep: &[&str]) {
    k8s::trim::metadata(&mut secret.metadata);
    secret.metadata.labels = None;
    secret.string_data = None;
    if let Some(data) = secret.data.as_mut() {
        data.retain(|k, _| keep.contains(&k.as_str()));
    }
}

/// The Service an EndpointSlice belongs to.
pub fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trimming_keeps_what_routing_reads() {
        let mut slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "ns",
                "labels": {SERVICE_NAME_LABEL: "svc", "app": "x"},
                "annotations": {"a": "b"}, "managedFields": [{"manager": "m"}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                "nodeName": "n", "zone": "z", "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"port": 5001}],
        }))
        .unwrap();
        trim_slice(&mut slice);
        assert_eq!(service_of(&slice), Some("svc"));
        assert_eq!(slice.labels().len(), 1);
        assert!(slice.metadata.annotations.is_none() && slice.metadata.managed_fields.is_none());
        assert_eq!(slice.endpoints[0].addresses, ["10.0.0.1"]);
        assert!(slice.endpoints[0].node_name.is_none() && slice.ports.is_none());

        let mut secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "k", "namespace": "ns"},
            "data": {PRIMARY_KEY: "YQ==", "other": "Yg=="},
        }))
        .unwrap();
        trim_key_secret(&mut secret);
        assert_eq!(secret.data.unwrap().len(), 1);
    }

    #[test]
    fn selectors_and_names() {
        assert_eq!(
            slice_selector(["a", "b"]),
            "kubernetes.io/service-name in (a,b)"
        );
        let id = WatchId::of(Kind::Secrets, &Some("ns".into()));
        assert_eq!(id.to_string(), "secrets in ns");
    }
}

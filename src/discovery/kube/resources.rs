//! The watches: one `kube::runtime::watcher` per (kind, scope[, shard]), each feeding a reflector
//! store and sending what changed to the discovery loop as [`Message`]s.
//!
//! Objects are trimmed with `.modify()` before they are stored: managed fields, annotations
//! (`kubectl.kubernetes.io/last-applied-configuration` can be larger than the object), owner
//! references and every field scoregate does not read are dropped, so memory grows with what
//! routing needs. Each watch retries on its own with a capped exponential backoff; a 410 Expired
//! relists at once (kube's watcher does that) and the reflector store swaps in the new list only
//! when it is complete, so routes that still exist are never dropped in between.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::crd::{
    OnlineDeployment, OnlineEndpoint, PRIMARY_KEY, SECONDARY_KEY, TLS_CERT_KEY, TLS_KEY_KEY,
};

/// The label the EndpointSlice controller puts on every slice: the name of its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Backoff after a failed list or watch: starts here...
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// ...doubles up to here (so a watch resumes at most this long after the API server is back).
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A retry that has not failed within this long has connected: the watch is healthy again.
/// (kube's watcher yields nothing when a re-watch succeeds and nothing changed.)
const RECOVERY_GRACE: Duration = Duration::from_millis(1_500);

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
    /// A list or watch failed; the watch retries after a backoff. `expired` is a 410 (it relists
    /// at once and is not an outage).
    Failed {
        /// The error, for the log.
        error: String,
        /// Whether it was a 410 Expired.
        expired: bool,
    },
    /// A watch that had failed is connected again.
    Recovered,
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
pub type Sender = UnboundedSender<Message>;

/// The `ApiResource` of a custom resource.
fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Endpoints => OnlineEndpoint::api_resource(),
        _ => OnlineDeployment::api_resource(),
    }
}

/// Starts the watch `id` (endpoints, deployments or key Secrets) and returns its task.
pub fn spawn_plain(client: Client, id: WatchId, tx: Sender) -> tokio::task::JoinHandle<()> {
    match id.kind {
        Kind::Endpoints | Kind::Deployments => {
            let resource = api_resource(id.kind);
            let api: Api<DynamicObject> = match &id.scope {
                Some(ns) => Api::namespaced_with(client, ns, &resource),
                None => Api::all_with(client, &resource),
            };
            let wrap = if id.kind == Kind::Endpoints {
                Object::Endpoint
            } else {
                Object::Deployment
            };
            tokio::spawn(run(
                api,
                watcher::Config::default(),
                Writer::new(resource),
                id,
                tx,
                trim_custom,
                wrap,
            ))
        }
        Kind::Secrets => {
            let api: Api<Secret> = scoped(client, &id.scope);
            // Only Opaque Secrets can hold endpoint keys; this keeps service-account tokens,
            // Helm releases and TLS Secrets out of the router's memory.
            let config = watcher::Config::default().fields("type=Opaque");
            tokio::spawn(run(
                api,
                config,
                Writer::default(),
                id,
                tx,
                trim_key_secret,
                Object::Secret,
            ))
        }
        Kind::Slices => unreachable!("EndpointSlice watches are started through spawn_slices"),
    }
}

/// Starts the EndpointSlice watch `id` for the Services `services` (a label selector
/// `kubernetes.io/service-name in (…)`).
pub fn spawn_slices<'a>(
    client: Client,
    id: WatchId,
    services: impl IntoIterator<Item = &'a str>,
    tx: Sender,
) -> tokio::task::JoinHandle<()> {
    let api: Api<EndpointSlice> = scoped(client, &id.scope);
    let config = watcher::Config::default().labels(&slice_selector(services));
    tokio::spawn(run(
        api,
        config,
        Writer::default(),
        id,
        tx,
        trim_slice,
        Object::Slice,
    ))
}

/// Starts a watch of the one Secret `ns/name` (the TLS `sslSecret`), keeping only `cert.pem`
/// and `key.pem`; its messages carry `id`.
pub fn spawn_tls_secret(
    client: Client,
    ns: &str,
    name: &str,
    id: WatchId,
    tx: Sender,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Secret> = Api::namespaced(client, ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(run(
        api,
        config,
        Writer::default(),
        id,
        tx,
        trim_tls_secret,
        Object::Secret,
    ))
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

/// Drives one watcher and its reflector store until the receiver goes away or the task is
/// aborted (a shard restart).
async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    id: WatchId,
    tx: Sender,
    trim: fn(&mut K),
    wrap: fn(Arc<K>) -> Object,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
{
    let reader = writer.as_reader();
    let mut stream = pin!(reflector::reflector(
        writer,
        watcher::watcher(api, config).modify(trim)
    ));
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let item = if failing {
            match tokio::time::timeout(RECOVERY_GRACE, stream.next()).await {
                Ok(item) => item,
                Err(_) => {
                    failing = false;
                    backoff = BACKOFF_MIN;
                    let message = Message {
                        watch: id.clone(),
                        received: Instant::now(),
                        body: Body::Recovered,
                    };
                    if tx.send(message).is_err() {
                        return;
                    }
                    continue;
                }
            }
        } else {
            stream.next().await
        };
        let Some(item) = item else { return };
        let received = Instant::now();
        let mut pause = None;
        let body = match item {
            Ok(event) => {
                if failing {
                    failing = false;
                    backoff = BACKOFF_MIN;
                    let recovered = Message {
                        watch: id.clone(),
                        received,
                        body: Body::Recovered,
                    };
                    if tx.send(recovered).is_err() {
                        return;
                    }
                }
                match event {
                    Event::Apply(object) => Body::Apply(wrap(Arc::new(object))),
                    Event::Delete(object) => Body::Delete(key_of(&object)),
                    Event::InitDone => Body::Synced(reader.state().into_iter().map(wrap).collect()),
                    Event::Init | Event::InitApply(_) => continue,
                }
            }
            Err(error) => {
                let expired = is_expired(&error);
                if !expired {
                    failing = true;
                    pause = Some(jitter(backoff));
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Body::Failed {
                    error: error.to_string(),
                    expired,
                }
            }
        };
        let message = Message {
            watch: id.clone(),
            received,
            body,
        };
        if tx.send(message).is_err() {
            return;
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A 410 Expired, in-stream (a compacted resourceVersion) or on a list (an expired `continue`).
fn is_expired(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// ±20 % so that many routers do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// Keeps what the translation reads of a custom resource: metadata identity and `spec`.
pub fn trim_custom(object: &mut DynamicObject) {
    let meta = &mut object.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(map) = object.data.as_object_mut() {
        map.retain(|k, _| k == "spec");
    }
}

/// Keeps only the Service label and each endpoint's addresses and conditions.
pub fn trim_slice(slice: &mut EndpointSlice) {
    let meta = &mut slice.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
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

/// Keeps only the certificate and key of the TLS Secret.
pub fn trim_tls_secret(secret: &mut Secret) {
    trim_secret(secret, &[TLS_CERT_KEY, TLS_KEY_KEY]);
}

/// Drops a Secret's metadata the router does not use and every data entry but `keep`.
fn trim_secret(secret: &mut Secret, keep: &[&str]) {
    let meta = &mut secret.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
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

        let mut endpoint: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
            "metadata": {"name": "e", "namespace": "ns", "annotations": {"x": "y"}},
            "spec": {"keysSecretName": "k"}, "status": {"big": true},
        }))
        .unwrap();
        trim_custom(&mut endpoint);
        assert!(endpoint.data.get("status").is_none());
        assert!(endpoint.data.get("spec").is_some());
        assert!(endpoint.metadata.annotations.is_none());
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

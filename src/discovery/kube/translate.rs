//! Watched objects → routing declarations, one endpoint at a time.
//!
//! [`Cluster`] keeps a small record per watched object (parsed once, when it arrives) and the
//! indexes that say which endpoints an object affects: a change to a Secret, an EndpointSlice or
//! an OnlineDeployment marks only the endpoints that use it as dirty, and [`Cluster::resolve`]
//! recomputes one endpoint from its own objects. Nothing here walks the whole cluster except a
//! relist, which is itself a walk of what was listed.
//!
//! Endpoint names are global (the scoring URI has no namespace). When OnlineEndpoints of the same
//! name exist in several watched namespaces, the oldest one (then the first namespace) is served
//! and the others are reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;

use super::resources::{key_of, service_of, Kind, ObjKey, Object, Scope, WatchId};
use crate::crd::{OnlineDeploymentSpec, OnlineEndpointSpec, PRIMARY_KEY, SECONDARY_KEY};
use crate::model::{DeploymentSpec, EndpointKeys, EndpointSpec, PodSpec, RouteSpec};

/// `(namespace, name)` of something an object refers to (a Service, a Secret, an endpoint).
type Ref = (String, String);

struct EndpointRecord {
    version: String,
    created: Option<Time>,
    keys_secret: Option<String>,
    spec: Result<OnlineEndpointSpec, String>,
}

struct DeploymentRecord {
    version: String,
    created: Option<Time>,
    endpoint: Option<String>,
    service: Option<String>,
    spec: Result<OnlineDeploymentSpec, String>,
}

struct SliceRecord {
    version: String,
    service: String,
    shard: usize,
    pods: Vec<(IpAddr, bool, bool)>,
}

struct SecretRecord {
    version: String,
    keys: Result<EndpointKeys, String>,
}

/// A deployment as declared by its OnlineDeployment, before pods are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredDeployment {
    /// The declaration (its `pods` are empty).
    pub spec: DeploymentSpec,
    /// The Service whose slices list its pods.
    pub service: String,
    /// The pods' port.
    pub port: u16,
}

/// What an endpoint's objects declare (everything but its keys and pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    /// The namespace of the OnlineEndpoint that is served.
    pub namespace: String,
    /// The endpoint (its keys are replaced with the current ones when composed).
    pub endpoint: EndpointSpec,
    /// Its deployments.
    pub deployments: Vec<DeclaredDeployment>,
}

/// One endpoint, resolved from the cluster.
// Short-lived (one per resolved endpoint); boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Resolution {
    /// No OnlineEndpoint has this name.
    Absent,
    /// The endpoint exists.
    Found {
        /// Its current keys, or why they cannot be used.
        keys: Result<EndpointKeys, String>,
        /// Its declaration, or every problem with it.
        declaration: Result<Declaration, Vec<String>>,
        /// OnlineEndpoints of the same name in other namespaces, which are not served.
        shadowed: Vec<ObjKey>,
    },
}

/// Everything watched, as records and indexes.
#[derive(Default)]
pub struct Cluster {
    endpoints: HashMap<ObjKey, EndpointRecord>,
    deployments: HashMap<ObjKey, DeploymentRecord>,
    slices: HashMap<ObjKey, SliceRecord>,
    secrets: HashMap<ObjKey, SecretRecord>,
    /// Endpoint name → namespaces with an OnlineEndpoint of that name.
    endpoints_named: HashMap<String, BTreeSet<String>>,
    /// (namespace, endpoint name) → OnlineDeployment object names.
    deployments_of: HashMap<Ref, BTreeSet<String>>,
    /// (namespace, Service) → OnlineDeployment object names.
    deployments_using: HashMap<Ref, BTreeSet<String>>,
    /// (namespace, Service) → EndpointSlice names.
    slices_of: HashMap<Ref, BTreeSet<String>>,
    /// (namespace, Secret) → OnlineEndpoint names.
    endpoints_using: HashMap<Ref, BTreeSet<String>>,
    dirty: BTreeSet<String>,
    services_added: BTreeSet<Ref>,
    services_removed: BTreeSet<Ref>,
}

fn index_add(index: &mut HashMap<Ref, BTreeSet<String>>, key: Ref, name: &str) -> bool {
    let set = index.entry(key).or_default();
    let was_empty = set.is_empty();
    set.insert(name.to_string());
    was_empty
}

fn index_remove(index: &mut HashMap<Ref, BTreeSet<String>>, key: &Ref, name: &str) -> bool {
    let Some(set) = index.get_mut(key) else {
        return false;
    };
    set.remove(name);
    if set.is_empty() {
        index.remove(key);
        return true;
    }
    false
}

/// Parses a custom resource's `spec`, naming the field that is wrong.
fn parse_spec<T: DeserializeOwned>(kind: &str, object: &DynamicObject) -> Result<T, String> {
    let (ns, name) = key_of(object);
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        format!(
            "{kind} {ns}/{name}: field `spec.{path}`: {}",
            e.into_inner()
        )
    })
}

fn raw_string(object: &DynamicObject, field: &str) -> Option<String> {
    object
        .data
        .get("spec")
        .and_then(|s| s.get(field))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

fn version_of(meta: &kube::api::ObjectMeta) -> String {
    meta.resource_version.clone().unwrap_or_default()
}

/// An endpoint's keys from its Secret's data.
pub fn keys_from(secret: &Secret) -> Result<EndpointKeys, String> {
    let (ns, name) = key_of(secret);
    let read = |key: &str| -> Result<Option<String>, String> {
        match secret.data.as_ref().and_then(|d| d.get(key)) {
            None => Ok(None),
            Some(bytes) => match std::str::from_utf8(&bytes.0) {
                Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
                Ok(_) => Ok(None),
                Err(_) => Err(format!(
                    "Secret {ns}/{name}: `{key}` is not UTF-8 text: store the key as text"
                )),
            },
        }
    };
    let primary = read(PRIMARY_KEY)?.ok_or_else(|| {
        format!(
            "Secret {ns}/{name} has no `{PRIMARY_KEY}`: add it (and optionally `{SECONDARY_KEY}`), e.g. \
             `kubectl -n {ns} create secret generic {name} --from-literal={PRIMARY_KEY}=… --from-literal={SECONDARY_KEY}=…`"
        )
    })?;
    Ok(EndpointKeys {
        primary,
        secondary: read(SECONDARY_KEY)?,
    })
}

/// Pods of one slice: (address, ready, terminating). An unknown `ready` counts as ready and an
/// unknown `terminating` as not terminating, as the EndpointSlice API documents.
fn pods_of(slice: &EndpointSlice) -> Vec<(IpAddr, bool, bool)> {
    let mut pods = Vec::new();
    for endpoint in &slice.endpoints {
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        for address in &endpoint.addresses {
            if let Ok(ip) = address.parse::<IpAddr>() {
                pods.push((ip, ready, terminating));
            }
        }
    }
    pods
}

impl Cluster {
    /// Records an added or changed object. `shard` is the EndpointSlice shard it came from.
    pub fn apply(&mut self, object: Object, watch: &WatchId) {
        match object {
            Object::Endpoint(o) => self.apply_endpoint(&o),
            Object::Deployment(o) => self.apply_deployment(&o),
            Object::Slice(o) => self.apply_slice(&o, watch.shard),
            Object::Secret(o) => self.apply_secret(&o),
        }
    }

    /// Forgets a deleted object.
    pub fn delete(&mut self, kind: Kind, key: &ObjKey) {
        match kind {
            Kind::Endpoints => self.delete_endpoint(key),
            Kind::Deployments => self.delete_deployment(key),
            Kind::Slices => self.delete_slice(key),
            Kind::Secrets => self.delete_secret(key),
        }
    }

    /// A complete list from `watch`: records of its kind in its scope (and, for EndpointSlices,
    /// its shard) that the list does not contain are deleted; the others are applied (unchanged
    /// ones cost a comparison of resourceVersions).
    pub fn replace(&mut self, watch: &WatchId, objects: Vec<Object>) {
        let listed: BTreeSet<ObjKey> = objects.iter().map(Object::key).collect();
        let in_scope = |key: &ObjKey| watch.scope.as_ref().is_none_or(|ns| &key.0 == ns);
        let gone: Vec<ObjKey> = match watch.kind {
            Kind::Endpoints => self
                .endpoints
                .keys()
                .filter(|k| in_scope(k))
                .cloned()
                .collect(),
            Kind::Deployments => self
                .deployments
                .keys()
                .filter(|k| in_scope(k))
                .cloned()
                .collect(),
            Kind::Secrets => self
                .secrets
                .keys()
                .filter(|k| in_scope(k))
                .cloned()
                .collect(),
            Kind::Slices => self
                .slices
                .iter()
                .filter(|(k, r)| in_scope(k) && r.shard == watch.shard)
                .map(|(k, _)| k.clone())
                .collect(),
        };
        for key in gone.into_iter().filter(|k| !listed.contains(k)) {
            self.delete(watch.kind, &key);
        }
        for object in objects {
            self.apply(object, watch);
        }
    }

    /// Forgets the slices of a Service that no deployment names any more.
    pub fn purge_service(&mut self, service: &Ref) {
        let names: Vec<String> = self
            .slices_of
            .get(service)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            self.delete_slice(&(service.0.clone(), name));
        }
    }

    /// Endpoint names whose objects changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    /// Services (namespace, name) that deployments started or stopped naming since the last call.
    pub fn take_service_changes(&mut self) -> (BTreeSet<Ref>, BTreeSet<Ref>) {
        let added = std::mem::take(&mut self.services_added);
        let removed = std::mem::take(&mut self.services_removed);
        (
            added.difference(&removed).cloned().collect(),
            removed.difference(&added).cloned().collect(),
        )
    }

    /// Every Service deployments name now.
    pub fn services(&self) -> impl Iterator<Item = &Ref> {
        self.deployments_using.keys()
    }

    /// Every endpoint name with an OnlineEndpoint.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &String> {
        self.endpoints_named.keys()
    }

    /// Whether the slices of `service` are wanted (a deployment names it).
    pub fn wants_service(&self, service: &Ref) -> bool {
        self.deployments_using.contains_key(service)
    }

    /// Objects known, by kind (for logs and the scale report).
    pub fn counts(&self) -> [(Kind, usize); 4] {
        [
            (Kind::Endpoints, self.endpoints.len()),
            (Kind::Deployments, self.deployments.len()),
            (Kind::Slices, self.slices.len()),
            (Kind::Secrets, self.secrets.len()),
        ]
    }

    fn apply_endpoint(&mut self, object: &DynamicObject) {
        let key = key_of(object);
        let version = version_of(&object.metadata);
        if self
            .endpoints
            .get(&key)
            .is_some_and(|r| r.version == version)
        {
            return;
        }
        self.delete_endpoint(&key);
        let spec = parse_spec::<OnlineEndpointSpec>("OnlineEndpoint", object);
        let keys_secret = match &spec {
            Ok(s) => Some(s.keys_secret_name.clone()),
            Err(_) => raw_string(object, "keysSecretName"),
        };
        if let Some(secret) = &keys_secret {
            index_add(
                &mut self.endpoints_using,
                (key.0.clone(), secret.clone()),
                &key.1,
            );
        }
        self.endpoints_named
            .entry(key.1.clone())
            .or_default()
            .insert(key.0.clone());
        self.dirty.insert(key.1.clone());
        self.endpoints.insert(
            key,
            EndpointRecord {
                version,
                created: object.metadata.creation_timestamp.clone(),
                keys_secret,
                spec,
            },
        );
    }

    fn delete_endpoint(&mut self, key: &ObjKey) {
        let Some(old) = self.endpoints.remove(key) else {
            return;
        };
        if let Some(secret) = &old.keys_secret {
            index_remove(
                &mut self.endpoints_using,
                &(key.0.clone(), secret.clone()),
                &key.1,
            );
        }
        if let Some(set) = self.endpoints_named.get_mut(&key.1) {
            set.remove(&key.0);
            if set.is_empty() {
                self.endpoints_named.remove(&key.1);
            }
        }
        self.dirty.insert(key.1.clone());
    }

    fn apply_deployment(&mut self, object: &DynamicObject) {
        let key = key_of(object);
        let version = version_of(&object.metadata);
        if self
            .deployments
            .get(&key)
            .is_some_and(|r| r.version == version)
        {
            return;
        }
        self.delete_deployment(&key);
        let spec = parse_spec::<OnlineDeploymentSpec>("OnlineDeployment", object);
        let (endpoint, service) = match &spec {
            Ok(s) => (Some(s.endpoint_name.clone()), Some(s.service_name.clone())),
            Err(_) => (
                raw_string(object, "endpointName"),
                raw_string(object, "serviceName"),
            ),
        };
        if let Some(endpoint) = &endpoint {
            index_add(
                &mut self.deployments_of,
                (key.0.clone(), endpoint.clone()),
                &key.1,
            );
            self.dirty.insert(endpoint.clone());
        }
        if let Some(service) = &service {
            let service = (key.0.clone(), service.clone());
            if index_add(&mut self.deployments_using, service.clone(), &key.1) {
                self.services_added.insert(service);
            }
        }
        self.deployments.insert(
            key,
            DeploymentRecord {
                version,
                created: object.metadata.creation_timestamp.clone(),
                endpoint,
                service,
                spec,
            },
        );
    }

    fn delete_deployment(&mut self, key: &ObjKey) {
        let Some(old) = self.deployments.remove(key) else {
            return;
        };
        if let Some(endpoint) = &old.endpoint {
            index_remove(
                &mut self.deployments_of,
                &(key.0.clone(), endpoint.clone()),
                &key.1,
            );
            self.dirty.insert(endpoint.clone());
        }
        if let Some(service) = &old.service {
            let service = (key.0.clone(), service.clone());
            if index_remove(&mut self.deployments_using, &service, &key.1) {
                self.services_removed.insert(service);
            }
        }
    }

    fn apply_slice(&mut self, slice: &EndpointSlice, shard: usize) {
        let key = key_of(slice);
        let Some(service) = service_of(slice).map(str::to_string) else {
            return;
        };
        let version = version_of(&slice.metadata);
        if self.slices.get(&key).is_some_and(|r| r.version == version) {
            return;
        }
        if !self.wants_service(&(key.0.clone(), service.clone())) {
            // Same-named Service in a namespace no deployment uses (all-namespaces scope).
            self.delete_slice(&key);
            return;
        }
        self.delete_slice(&key);
        let service_ref = (key.0.clone(), service.clone());
        index_add(&mut self.slices_of, service_ref.clone(), &key.1);
        self.mark_service_users(&service_ref);
        self.slices.insert(
            key,
            SliceRecord {
                version,
                service,
                shard,
                pods: pods_of(slice),
            },
        );
    }

    fn delete_slice(&mut self, key: &ObjKey) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        let service = (key.0.clone(), old.service);
        index_remove(&mut self.slices_of, &service, &key.1);
        self.mark_service_users(&service);
    }

    fn mark_service_users(&mut self, service: &Ref) {
        let Some(names) = self.deployments_using.get(service) else {
            return;
        };
        for name in names {
            if let Some(endpoint) = self
                .deployments
                .get(&(service.0.clone(), name.clone()))
                .and_then(|r| r.endpoint.clone())
            {
                self.dirty.insert(endpoint);
            }
        }
    }

    fn apply_secret(&mut self, secret: &Secret) {
        let key = key_of(secret);
        let version = version_of(&secret.metadata);
        if self.secrets.get(&key).is_some_and(|r| r.version == version) {
            return;
        }
        self.secrets.insert(
            key.clone(),
            SecretRecord {
                version,
                keys: keys_from(secret),
            },
        );
        self.mark_secret_users(&key);
    }

    fn delete_secret(&mut self, key: &ObjKey) {
        if self.secrets.remove(key).is_some() {
            self.mark_secret_users(key);
        }
    }

    fn mark_secret_users(&mut self, key: &ObjKey) {
        if let Some(names) = self.endpoints_using.get(key) {
            self.dirty.extend(names.iter().cloned());
        }
    }

    /// Resolves endpoint `name` from its objects.
    pub fn resolve(&self, name: &str) -> Resolution {
        let Some(namespaces) = self.endpoints_named.get(name) else {
            return Resolution::Absent;
        };
        let mut candidates: Vec<(&Option<Time>, &String)> = namespaces
            .iter()
            .filter_map(|ns| {
                self.endpoints
                    .get(&(ns.clone(), name.to_string()))
                    .map(|r| (&r.created, ns))
            })
            .collect();
        // Oldest first; objects without a timestamp (never from a real API server) last.
        candidates.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.cmp(y).then(a.1.cmp(b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(b.1),
        });
        let Some((_, ns)) = candidates.first() else {
            return Resolution::Absent;
        };
        let ns = (*ns).clone();
        let shadowed = candidates[1..]
            .iter()
            .map(|(_, other)| ((*other).clone(), name.to_string()))
            .collect();
        let record = &self.endpoints[&(ns.clone(), name.to_string())];
        let keys = match &record.keys_secret {
            None => Err(format!(
                "OnlineEndpoint {ns}/{name} names no keys Secret: set `spec.keysSecretName`"
            )),
            Some(secret) => match self.secrets.get(&(ns.clone(), secret.clone())) {
                Some(r) => r.keys.clone(),
                None => Err(format!(
                    "the keys Secret {ns}/{secret} of OnlineEndpoint {ns}/{name} does not exist (or is \
                     not of type Opaque): create it with `{PRIMARY_KEY}` and `{SECONDARY_KEY}`"
                )),
            },
        };
        Resolution::Found {
            keys,
            declaration: self.declare(&ns, name, record),
            shadowed,
        }
    }

    fn declare(
        &self,
        ns: &str,
        name: &str,
        record: &EndpointRecord,
    ) -> Result<Declaration, Vec<String>> {
        let mut problems = Vec::new();
        let endpoint = match &record.spec {
            Ok(spec) => Some(spec),
            Err(e) => {
                problems.push(e.clone());
                None
            }
        };
        let mut deployments: BTreeMap<String, (&Option<Time>, String, DeclaredDeployment)> =
            BTreeMap::new();
        let objects = self.deployments_of.get(&(ns.to_string(), name.to_string()));
        for object in objects.into_iter().flatten() {
            let Some(r) = self.deployments.get(&(ns.to_string(), object.clone())) else {
                continue;
            };
            let spec = match &r.spec {
                Ok(spec) => spec,
                Err(e) => {
                    problems.push(e.clone());
                    continue;
                }
            };
            let deployment_name = spec.deployment_name_or(object).to_string();
            let declared = DeclaredDeployment {
                spec: DeploymentSpec {
                    name: deployment_name.clone(),
                    endpoint: name.to_string(),
                    pods: Vec::new(),
                    settings: spec.request_settings.into(),
                },
                service: spec.service_name.clone(),
                port: spec.port,
            };
            if let Some((_, other, _)) = deployments.get(&deployment_name) {
                problems.push(format!(
                    "OnlineDeployments {ns}/{other} and {ns}/{object} both declare deployment \
                     `{deployment_name}` of endpoint `{name}`: rename one (spec.deploymentName)"
                ));
                continue;
            }
            deployments.insert(deployment_name, (&r.created, object.clone(), declared));
        }
        let Some(endpoint) = endpoint else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Declaration {
            namespace: ns.to_string(),
            endpoint: EndpointSpec {
                name: name.to_string(),
                auth_mode: endpoint.auth_mode.into(),
                keys: EndpointKeys {
                    primary: String::new(),
                    secondary: None,
                },
                traffic: endpoint.traffic.clone(),
                mirror_traffic: endpoint.mirror_traffic.clone(),
            },
            deployments: deployments.into_values().map(|(_, _, d)| d).collect(),
        })
    }

    /// A declaration with `keys` and the current pods of its deployments' Services.
    pub fn compose(&self, declaration: &Declaration, keys: &EndpointKeys) -> RouteSpec {
        let mut endpoint = declaration.endpoint.clone();
        endpoint.keys = keys.clone();
        let mut spec = RouteSpec::default();
        for d in &declaration.deployments {
            let mut deployment = d.spec.clone();
            deployment.pods = self.pods(&declaration.namespace, &d.service, d.port);
            spec.deployments.insert(
                (deployment.endpoint.clone(), deployment.name.clone()),
                deployment,
            );
        }
        spec.endpoints.insert(endpoint.name.clone(), endpoint);
        spec
    }

    /// The pods of Service `service` in `ns`, merged over its slices (an address listed twice,
    /// as during a move between slices, is routable if either entry says so), sorted.
    fn pods(&self, ns: &str, service: &str, port: u16) -> Vec<PodSpec> {
        let mut merged: BTreeMap<IpAddr, (bool, bool)> = BTreeMap::new();
        let slices = self.slices_of.get(&(ns.to_string(), service.to_string()));
        for slice in slices.into_iter().flatten() {
            let Some(record) = self.slices.get(&(ns.to_string(), slice.clone())) else {
                continue;
            };
            for (ip, ready, terminating) in &record.pods {
                merged
                    .entry(*ip)
                    .and_modify(|(r, t)| {
                        if *ready && !*terminating {
                            *r = true;
                            *t = false;
                        }
                    })
                    .or_insert((*ready, *terminating));
            }
        }
        merged
            .into_iter()
            .map(|(ip, (ready, terminating))| PodSpec {
                address: SocketAddr::new(ip, port),
                ready,
                terminating,
            })
            .collect()
    }
}

/// The scope a namespace is watched through.
pub fn scope_of(all_namespaces: bool, ns: &str) -> Scope {
    (!all_namespaces).then(|| ns.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::json;

    fn endpoint(ns: &str, name: &str, spec: serde_json::Value, rv: &str) -> Object {
        Object::Endpoint(Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                    "creationTimestamp": "2025-01-01T00:00:00Z"},
                "spec": spec,
            }))
            .unwrap(),
        ))
    }

    fn deployment(ns: &str, name: &str, spec: serde_json::Value, rv: &str) -> Object {
        Object::Deployment(Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
                "spec": spec,
            }))
            .unwrap(),
        ))
    }

    fn slice(ns: &str, name: &str, service: &str, pods: &[(&str, bool, bool)], rv: &str) -> Object {
        let endpoints: Vec<_> = pods
            .iter()
            .map(|(ip, ready, terminating)| {
                json!({"addresses": [ip], "conditions": {"ready": ready, "terminating": terminating}})
            })
            .collect();
        Object::Slice(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                    "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": endpoints,
            }))
            .unwrap(),
        ))
    }

    fn secret(ns: &str, name: &str, primary: &str, rv: &str) -> Object {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(primary);
        Object::Secret(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
                "data": {"primaryKey": b64},
            }))
            .unwrap(),
        ))
    }

    fn id(kind: Kind) -> WatchId {
        WatchId::of(kind, &Some("ns".into()))
    }

    fn served(cluster: &Cluster, name: &str) -> RouteSpec {
        match cluster.resolve(name) {
            Resolution::Found {
                keys: Ok(keys),
                declaration: Ok(d),
                ..
            } => cluster.compose(&d, &keys),
            _ => panic!("{name} does not resolve"),
        }
    }

    fn populated() -> Cluster {
        let mut c = Cluster::default();
        c.apply(
            endpoint(
                "ns",
                "my-endpoint",
                json!({"keysSecretName": "keys", "traffic": {"blue": 100}}),
                "1",
            ),
            &id(Kind::Endpoints),
        );
        c.apply(
            deployment(
                "ns",
                "blue",
                json!({"endpointName": "my-endpoint", "serviceName": "blue-svc"}),
                "2",
            ),
            &id(Kind::Deployments),
        );
        c.apply(
            secret("ns", "keys", "primary-key-0123456789\n", "3"),
            &id(Kind::Secrets),
        );
        c.apply(
            slice(
                "ns",
                "blue-svc-1",
                "blue-svc",
                &[("10.0.0.1", true, false), ("10.0.0.2", false, true)],
                "4",
            ),
            &id(Kind::Slices),
        );
        c
    }

    #[test]
    fn objects_compose_into_a_valid_endpoint() {
        let mut c = populated();
        assert_eq!(c.take_dirty(), BTreeSet::from(["my-endpoint".to_string()]));
        let (added, removed) = c.take_service_changes();
        assert_eq!(
            added,
            BTreeSet::from([("ns".to_string(), "blue-svc".to_string())])
        );
        assert!(removed.is_empty());
        let spec = served(&c, "my-endpoint");
        spec.validate().unwrap();
        let ep = &spec.endpoints["my-endpoint"];
        assert_eq!(ep.keys.primary, "primary-key-0123456789", "trimmed");
        let blue = &spec.deployments[&("my-endpoint".into(), "blue".into())];
        assert_eq!(blue.pods.len(), 2);
        assert_eq!(blue.pods[0].address, "10.0.0.1:5001".parse().unwrap());
        assert!(blue.pods[0].routable() && !blue.pods[1].routable());
        assert!(blue.pods[1].terminating);
    }

    #[test]
    fn changes_dirty_only_their_users() {
        let mut c = populated();
        c.apply(
            endpoint(
                "ns",
                "other-ep",
                json!({"keysSecretName": "other-keys"}),
                "5",
            ),
            &id(Kind::Endpoints),
        );
        c.take_dirty();
        c.apply(
            slice(
                "ns",
                "blue-svc-1",
                "blue-svc",
                &[("10.0.0.3", true, false)],
                "6",
            ),
            &id(Kind::Slices),
        );
        assert_eq!(c.take_dirty(), BTreeSet::from(["my-endpoint".to_string()]));
        c.apply(
            secret("ns", "other-keys", "k2-0123456789abcdef", "7"),
            &id(Kind::Secrets),
        );
        assert_eq!(c.take_dirty(), BTreeSet::from(["other-ep".to_string()]));
        // Same resourceVersion again: nothing to do.
        c.apply(
            secret("ns", "other-keys", "k2-0123456789abcdef", "7"),
            &id(Kind::Secrets),
        );
        assert!(c.take_dirty().is_empty());
    }

    #[test]
    fn a_relist_deletes_only_what_is_gone() {
        let mut c = populated();
        c.take_dirty();
        c.replace(
            &id(Kind::Slices),
            vec![slice(
                "ns",
                "blue-svc-1",
                "blue-svc",
                &[("10.0.0.1", true, false), ("10.0.0.2", false, true)],
                "4",
            )],
        );
        assert!(
            c.take_dirty().is_empty(),
            "an identical relist changes nothing"
        );
        c.replace(&id(Kind::Slices), vec![]);
        assert_eq!(c.take_dirty().len(), 1);
        assert!(served(&c, "my-endpoint")
            .deployments
            .values()
            .all(|d| d.pods.is_empty()));
    }

    #[test]
    fn problems_are_reported_per_object() {
        let mut c = populated();
        c.apply(
            deployment(
                "ns",
                "green",
                json!({"endpointName": "my-endpoint", "serviceName": "g", "port": "x"}),
                "8",
            ),
            &id(Kind::Deployments),
        );
        match c.resolve("my-endpoint") {
            Resolution::Found {
                declaration: Err(problems),
                ..
            } => {
                assert!(
                    problems[0].contains("OnlineDeployment ns/green: field `spec.port`"),
                    "{problems:?}"
                );
            }
            _ => panic!("expected a problem"),
        }
        c.delete(Kind::Secrets, &("ns".into(), "keys".into()));
        match c.resolve("my-endpoint") {
            Resolution::Found { keys: Err(e), .. } => assert!(e.contains("does not exist"), "{e}"),
            _ => panic!("expected missing keys"),
        }
    }

    #[test]
    fn the_oldest_endpoint_of_a_name_wins() {
        let mut c = populated();
        let younger = Object::Endpoint(Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
                "metadata": {"name": "my-endpoint", "namespace": "aaa", "resourceVersion": "9",
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"keysSecretName": "keys"},
            }))
            .unwrap(),
        ));
        c.apply(younger, &WatchId::of(Kind::Endpoints, &None));
        match c.resolve("my-endpoint") {
            Resolution::Found {
                declaration: Ok(d),
                shadowed,
                ..
            } => {
                assert_eq!(d.namespace, "ns");
                assert_eq!(shadowed, [("aaa".to_string(), "my-endpoint".to_string())]);
            }
            _ => panic!("expected the older endpoint"),
        }
    }
}

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

use super::problems::{Problem, Reason};
use super::resources::{key_of, service_of, Kind, ObjKey, Object, Scope, WatchId};
use crate::conditions::Shown;
use crate::crd::{OnlineDeploymentSpec, OnlineEndpointSpec, PRIMARY_KEY, SECONDARY_KEY};
use crate::model::{DeploymentSpec, EndpointKeys, EndpointSpec, PodSpec, RouteSpec};

/// `(namespace, name)` of something an object refers to (a Service, a Secret, an endpoint).
type Ref = (String, String);

struct EndpointRecord {
    version: String,
    generation: Option<i64>,
    shown: Option<Shown>,
    created: Option<Time>,
    keys_secret: Option<String>,
    spec: Result<OnlineEndpointSpec, String>,
}

struct DeploymentRecord {
    version: String,
    generation: Option<i64>,
    shown: Option<Shown>,
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

/// One pod address of a slice: (address, ready, terminating).
type SlicePod = (IpAddr, bool, bool);

struct SecretRecord {
    version: String,
    keys: Result<EndpointKeys, String>,
}

/// A deployment as declared by its OnlineDeployment, before pods are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredDeployment {
    /// The declaration (its `pods` are empty).
    pub spec: DeploymentSpec,
    /// The OnlineDeployment's `metadata.name`.
    pub object: String,
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
        /// The namespace of the OnlineEndpoint that serves the name.
        namespace: String,
        /// Its current keys, or why they cannot be used.
        keys: Result<EndpointKeys, Problem>,
        /// Its declaration, or every problem with it.
        declaration: Result<Declaration, Vec<Problem>>,
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
    /// Endpoint name → namespaces with OnlineDeployments naming it.
    deployment_namespaces: HashMap<String, BTreeSet<String>>,
    /// (namespace, Service) → OnlineDeployment object names.
    deployments_using: HashMap<Ref, BTreeSet<String>>,
    /// (namespace, Service) → EndpointSlice names.
    slices_of: HashMap<Ref, BTreeSet<String>>,
    /// (namespace, Secret) → OnlineEndpoint names.
    endpoints_using: HashMap<Ref, BTreeSet<String>>,
    dirty: BTreeSet<String>,
    /// Services whose use changed since [`Cluster::take_service_changes`] last ran, each with
    /// whether a deployment named it then: a batch can add, drop and add a Service again (a
    /// deployment listed, then modified), and only the net change counts.
    services_touched: BTreeMap<Ref, bool>,
    /// Problems of objects that belong to no endpoint (an OnlineDeployment whose endpoint cannot
    /// be read, an EndpointSlice with addresses that are not IPs), by subject.
    reports: BTreeMap<String, Problem>,
    /// Subjects whose entry in `reports` changed since the last [`Cluster::take_reports`].
    reports_changed: BTreeSet<String>,
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

/// Parses a custom resource's `spec`, naming the field that is wrong; `required` names the
/// fields a `spec` needs at least (for the message when there is none).
fn parse_spec<T: DeserializeOwned>(
    kind: &str,
    object: &DynamicObject,
    required: &str,
) -> Result<T, String> {
    let (ns, name) = key_of(object);
    let Some(spec) = object.data.get("spec").cloned() else {
        return Err(format!(
            "{kind} {ns}/{name} has no `spec`: it needs at least {required}"
        ));
    };
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = match e.path().to_string() {
            root if root == "." => "spec".to_string(),
            path => format!("spec.{path}"),
        };
        format!("{kind} {ns}/{name}: field `{path}`: {}", e.into_inner())
    })
}

/// Whether `name` can be a Service's name (an RFC 1035 label), and so a label selector value.
fn is_service_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The Service an OnlineDeployment names, if it can be one; an unusable name is a problem of
/// its spec (and never reaches a label selector, where it would break the list of every
/// Service in the same shard).
fn checked_service(
    key: &ObjKey,
    spec: Result<OnlineDeploymentSpec, String>,
    raw: Option<String>,
) -> (Result<OnlineDeploymentSpec, String>, Option<String>) {
    let service = spec.as_ref().map(|s| s.service_name.clone()).ok().or(raw);
    match service {
        Some(service) if !is_service_name(&service) => {
            let problem = format!(
                "OnlineDeployment {}/{}: field `spec.serviceName`: `{service}` is not a Service \
                 name (lower-case letters, digits and '-', starting with a letter, at most 63)",
                key.0, key.1
            );
            (spec.and(Err(problem)), None)
        }
        service => (spec, service),
    }
}

fn raw_string(object: &DynamicObject, field: &str) -> Option<String> {
    object
        .data
        .get("spec")
        .and_then(|s| s.get(field))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// The `Ready` condition an object shows in `status.conditions`, if any.
fn shown_ready(object: &DynamicObject) -> Option<Shown> {
    let conditions = object.data.get("status")?.get("conditions")?.as_array()?;
    let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
    let text = |field: &str| ready[field].as_str().unwrap_or_default().to_string();
    Some(Shown {
        status: text("status"),
        reason: text("reason"),
        message: text("message"),
        observed_generation: ready["observedGeneration"].as_i64(),
        last_transition_time: ready["lastTransitionTime"].as_str().map(str::to_string),
    })
}

/// What the status writer needs of one custom resource: the version and generation it was read
/// at, and the `Ready` condition it shows.
#[derive(Clone, Debug)]
pub struct ObjectState {
    /// `metadata.resourceVersion`.
    pub version: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Its `Ready` condition.
    pub shown: Option<Shown>,
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

/// Pods of one slice: (address, ready, terminating), and the addresses that are not IPs. An
/// unknown `ready` counts as ready and an unknown `terminating` as not terminating, as the
/// EndpointSlice API documents.
fn pods_of(slice: &EndpointSlice) -> (Vec<SlicePod>, Vec<String>) {
    let (mut pods, mut unusable) = (Vec::new(), Vec::new());
    for endpoint in &slice.endpoints {
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        for address in &endpoint.addresses {
            match address.parse::<IpAddr>() {
                Ok(ip) => pods.push((ip, ready, terminating)),
                Err(_) => unusable.push(address.clone()),
            }
        }
    }
    (pods, unusable)
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
        let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
        for (service, was_used) in std::mem::take(&mut self.services_touched) {
            match (was_used, self.deployments_using.contains_key(&service)) {
                (false, true) => added.insert(service),
                (true, false) => removed.insert(service),
                _ => false,
            };
        }
        (added, removed)
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
        let spec = parse_spec::<OnlineEndpointSpec>("OnlineEndpoint", object, "keysSecretName");
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
                generation: object.metadata.generation,
                shown: shown_ready(object),
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
        let spec = parse_spec::<OnlineDeploymentSpec>(
            "OnlineDeployment",
            object,
            "endpointName and serviceName",
        );
        let endpoint = match &spec {
            Ok(s) => Some(s.endpoint_name.clone()),
            Err(_) => raw_string(object, "endpointName"),
        };
        let (spec, service) = checked_service(&key, spec, raw_string(object, "serviceName"));
        let subject = deployment_subject(&key);
        match (&endpoint, &spec) {
            (Some(endpoint), _) => {
                if index_add(
                    &mut self.deployments_of,
                    (key.0.clone(), endpoint.clone()),
                    &key.1,
                ) {
                    let namespaces = self.deployment_namespaces.entry(endpoint.clone());
                    namespaces.or_default().insert(key.0.clone());
                }
                self.dirty.insert(endpoint.clone());
            }
            // No endpoint to report it with: the object is reported on its own.
            (None, Err(e)) => self.set_report(subject, Some(Problem::new(Reason::InvalidSpec, e))),
            (None, Ok(_)) => {}
        }
        if let Some(service) = &service {
            let service = (key.0.clone(), service.clone());
            if index_add(&mut self.deployments_using, service.clone(), &key.1) {
                self.services_touched.entry(service).or_insert(false);
            }
        }
        self.deployments.insert(
            key,
            DeploymentRecord {
                version,
                generation: object.metadata.generation,
                shown: shown_ready(object),
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
        self.set_report(deployment_subject(key), None);
        if let Some(endpoint) = &old.endpoint {
            let pair = (key.0.clone(), endpoint.clone());
            if index_remove(&mut self.deployments_of, &pair, &key.1) {
                if let Some(namespaces) = self.deployment_namespaces.get_mut(endpoint) {
                    namespaces.remove(&key.0);
                    if namespaces.is_empty() {
                        self.deployment_namespaces.remove(endpoint);
                    }
                }
            }
            self.dirty.insert(endpoint.clone());
        }
        if let Some(service) = &old.service {
            let service = (key.0.clone(), service.clone());
            if index_remove(&mut self.deployments_using, &service, &key.1) {
                self.services_touched.entry(service).or_insert(true);
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
        let (pods, unusable) = pods_of(slice);
        if !unusable.is_empty() {
            let problem =
                Problem::new(
                    Reason::SliceAddress,
                    format!(
                    "EndpointSlice {}/{} of Service {service}: {} not an IP address and ignored \
                     (only IPv4 and IPv6 slices are read): {}",
                    key.0,
                    key.1,
                    if unusable.len() == 1 { "this address is" } else { "these addresses are" },
                    unusable.join(", ")
                ),
                );
            self.set_report(slice_subject(&key), Some(problem));
        }
        self.slices.insert(
            key,
            SliceRecord {
                version,
                service,
                shard,
                pods,
            },
        );
    }

    fn delete_slice(&mut self, key: &ObjKey) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        self.set_report(slice_subject(key), None);
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
        let keys = match (&record.keys_secret, &record.spec) {
            // The spec cannot be read, keysSecretName included: that is the problem to report.
            (None, Err(e)) => Err(Problem::new(Reason::InvalidSpec, e)),
            (None, Ok(_)) => Err(Problem::new(
                Reason::Keys,
                format!("OnlineEndpoint {ns}/{name} names no keys Secret: set `spec.keysSecretName`"),
            )),
            (Some(secret), _) => match self.secrets.get(&(ns.clone(), secret.clone())) {
                Some(r) => r.keys.clone().map_err(|e| Problem::new(Reason::Keys, e)),
                None => Err(Problem::new(
                    Reason::Keys,
                    format!(
                        "the keys Secret {ns}/{secret} of OnlineEndpoint {ns}/{name} does not exist \
                         (or is not of type Opaque): create it with `{PRIMARY_KEY}` and \
                         `{SECONDARY_KEY}`"
                    ),
                )),
            },
        };
        Resolution::Found {
            declaration: self.declare(&ns, name, record),
            namespace: ns,
            keys,
            shadowed,
        }
    }

    fn declare(
        &self,
        ns: &str,
        name: &str,
        record: &EndpointRecord,
    ) -> Result<Declaration, Vec<Problem>> {
        let mut problems = Vec::new();
        let endpoint = match &record.spec {
            Ok(spec) => Some(spec),
            Err(e) => {
                problems.push(Problem::new(Reason::InvalidSpec, e));
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
                    problems.push(Problem::new(Reason::InvalidSpec, e));
                    continue;
                }
            };
            let deployment_name = spec.deployment_name_or(object).to_string();
            let declared = DeclaredDeployment {
                object: object.clone(),
                spec: DeploymentSpec {
                    name: deployment_name.clone(),
                    endpoint: name.to_string(),
                    pods: Vec::new(),
                    settings: spec.request_settings.into(),
                    outlier_detection: spec.outlier_detection.into(),
                    routing: spec.routing.clone(),
                },
                service: spec.service_name.clone(),
                port: spec.port,
            };
            if let Some((_, other, _)) = deployments.get(&deployment_name) {
                problems.push(Problem::new(
                    Reason::Conflict,
                    format!(
                        "OnlineDeployments {ns}/{other} and {ns}/{object} both declare deployment \
                         `{deployment_name}` of endpoint `{name}`: rename one (spec.deploymentName)"
                    ),
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

    /// OnlineDeployments that name endpoint `name` in a namespace without an OnlineEndpoint of
    /// that name, with their problem.
    pub fn orphans(&self, name: &str) -> Vec<(String, Problem)> {
        let mut orphans = Vec::new();
        let namespaces = self.deployment_namespaces.get(name).into_iter().flatten();
        for ns in namespaces {
            let pair = (ns.clone(), name.to_string());
            if self.endpoints.contains_key(&pair) {
                continue;
            }
            for object in self.deployments_of.get(&pair).into_iter().flatten() {
                let message = format!(
                    "OnlineDeployment {ns}/{object} names endpoint `{name}`, but namespace {ns} has \
                     no OnlineEndpoint `{name}`: create it, or fix `spec.endpointName`"
                );
                let subject = deployment_subject(&(ns.clone(), object.clone()));
                orphans.push((subject, Problem::new(Reason::EndpointMissing, message)));
            }
        }
        orphans
    }

    /// The state of OnlineEndpoint `key`, if it is known.
    pub fn endpoint_state(&self, key: &ObjKey) -> Option<ObjectState> {
        self.endpoints.get(key).map(|r| ObjectState {
            version: r.version.clone(),
            generation: r.generation,
            shown: r.shown.clone(),
        })
    }

    /// The state of OnlineDeployment `key`, if it is known.
    pub fn deployment_state(&self, key: &ObjKey) -> Option<ObjectState> {
        self.deployments.get(key).map(|r| ObjectState {
            version: r.version.clone(),
            generation: r.generation,
            shown: r.shown.clone(),
        })
    }

    /// The OnlineDeployments naming endpoint `name` in `ns`, each with the problem of its `spec`
    /// when it cannot be read.
    pub fn deployments_naming(&self, ns: &str, name: &str) -> Vec<(String, Option<String>)> {
        let objects = self.deployments_of.get(&(ns.to_string(), name.to_string()));
        objects
            .into_iter()
            .flatten()
            .filter_map(|object| {
                let record = self.deployments.get(&(ns.to_string(), object.clone()))?;
                Some((object.clone(), record.spec.as_ref().err().cloned()))
            })
            .collect()
    }

    /// Whether any EndpointSlice of `service` is known.
    pub fn has_slices(&self, service: &Ref) -> bool {
        self.slices_of.contains_key(service)
    }

    /// Problems of objects that belong to no endpoint, changed since the last call: each subject
    /// with its problem now, or `None` when it has none any more.
    pub fn take_reports(&mut self) -> Vec<(String, Option<Problem>)> {
        std::mem::take(&mut self.reports_changed)
            .into_iter()
            .map(|subject| {
                let problem = self.reports.get(&subject).cloned();
                (subject, problem)
            })
            .collect()
    }

    fn set_report(&mut self, subject: String, problem: Option<Problem>) {
        let changed = match problem {
            Some(problem) => self.reports.insert(subject.clone(), problem.clone()) != Some(problem),
            None => self.reports.remove(&subject).is_some(),
        };
        if changed {
            self.reports_changed.insert(subject);
        }
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

/// How an OnlineDeployment is named in reports.
pub fn deployment_subject(key: &ObjKey) -> String {
    format!("OnlineDeployment {}/{}", key.0, key.1)
}

fn slice_subject(key: &ObjKey) -> String {
    format!("EndpointSlice {}/{}", key.0, key.1)
}

/// The scope a namespace is watched through.
pub fn scope_of(all_namespaces: bool, ns: &str) -> Scope {
    (!all_namespaces).then(|| ns.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::OutlierDetection;
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
    fn outlier_detection_comes_from_the_crd_with_defaults() {
        let mut c = populated();
        let blue = &served(&c, "my-endpoint").deployments[&("my-endpoint".into(), "blue".into())];
        assert_eq!(blue.outlier_detection, OutlierDetection::default());
        c.apply(
            deployment(
                "ns",
                "blue",
                json!({"endpointName": "my-endpoint", "serviceName": "blue-svc",
                    "outlierDetection": {"consecutiveFailures": 2, "baseEjectionMs": 1500}}),
                "5",
            ),
            &id(Kind::Deployments),
        );
        let blue = &served(&c, "my-endpoint").deployments[&("my-endpoint".into(), "blue".into())];
        assert_eq!(
            blue.outlier_detection,
            OutlierDetection {
                consecutive_failures: 2,
                base_ejection_ms: 1500,
                ..OutlierDetection::default()
            }
        );
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
    fn a_service_named_listed_and_changed_in_one_batch_counts_once_as_added() {
        // The deployment arrives in a list and is modified (its status written) before the
        // changes are taken: its Service is added, not cancelled out by the re-apply.
        let spec = json!({"endpointName": "my-endpoint", "serviceName": "blue-svc"});
        let mut c = Cluster::default();
        c.replace(
            &id(Kind::Deployments),
            vec![deployment("ns", "blue", spec.clone(), "2")],
        );
        c.apply(
            deployment("ns", "blue", spec.clone(), "3"),
            &id(Kind::Deployments),
        );
        let blue_svc = ("ns".to_string(), "blue-svc".to_string());
        assert_eq!(
            c.take_service_changes(),
            (BTreeSet::from([blue_svc.clone()]), BTreeSet::new())
        );

        // Deleted and created again in one batch: no change either way.
        c.delete(Kind::Deployments, &("ns".to_string(), "blue".to_string()));
        c.apply(
            deployment("ns", "blue", spec.clone(), "4"),
            &id(Kind::Deployments),
        );
        assert_eq!(c.take_service_changes(), (BTreeSet::new(), BTreeSet::new()));

        // Moved to another Service and back, then away: only the net change.
        let green = json!({"endpointName": "my-endpoint", "serviceName": "green-svc"});
        c.apply(
            deployment("ns", "blue", green.clone(), "5"),
            &id(Kind::Deployments),
        );
        c.apply(deployment("ns", "blue", spec, "6"), &id(Kind::Deployments));
        c.apply(deployment("ns", "blue", green, "7"), &id(Kind::Deployments));
        assert_eq!(
            c.take_service_changes(),
            (
                BTreeSet::from([("ns".to_string(), "green-svc".to_string())]),
                BTreeSet::from([blue_svc])
            )
        );
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
                    problems[0]
                        .message
                        .contains("OnlineDeployment ns/green: field `spec.port`"),
                    "{problems:?}"
                );
                assert_eq!(problems[0].reason, Reason::InvalidSpec);
            }
            _ => panic!("expected a problem"),
        }
        c.delete(Kind::Secrets, &("ns".into(), "keys".into()));
        match c.resolve("my-endpoint") {
            Resolution::Found { keys: Err(e), .. } => {
                assert!(e.message.contains("does not exist"), "{e:?}");
                assert_eq!(e.reason, Reason::Keys);
            }
            _ => panic!("expected missing keys"),
        }
    }

    fn raw(kind: &str, ns: &str, name: &str, spec: Option<serde_json::Value>) -> DynamicObject {
        let mut object = json!({
            "apiVersion": "scoregate.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "20"},
        });
        if let Some(spec) = spec {
            object["spec"] = spec;
        }
        serde_json::from_value(object).unwrap()
    }

    #[test]
    fn bad_custom_resources_are_reported_with_their_field() {
        let mut c = populated();
        c.take_reports();
        // No spec at all: nothing to attach it to, so it is reported on its own.
        let bare = raw("OnlineDeployment", "ns", "bare", None);
        c.apply(Object::Deployment(Arc::new(bare)), &id(Kind::Deployments));
        let reports = c.take_reports();
        let problem = reports[0].1.as_ref().unwrap();
        assert_eq!(reports[0].0, "OnlineDeployment ns/bare");
        assert_eq!(problem.reason, Reason::InvalidSpec);
        assert!(problem.message.contains("has no `spec`"), "{problem:?}");
        c.delete(Kind::Deployments, &("ns".into(), "bare".into()));
        assert_eq!(
            c.take_reports(),
            [("OnlineDeployment ns/bare".to_string(), None)]
        );

        // A spec that is a string: the spec is the problem, not the keys.
        let string = raw("OnlineEndpoint", "ns", "strung", Some(json!("oops")));
        c.apply(Object::Endpoint(Arc::new(string)), &id(Kind::Endpoints));
        match c.resolve("strung") {
            Resolution::Found { keys: Err(e), .. } => {
                assert_eq!(e.reason, Reason::InvalidSpec);
                assert!(
                    e.message.contains("field `spec`: invalid type: string"),
                    "{e:?}"
                );
            }
            _ => panic!("expected the spec's problem"),
        }

        // A deployment naming an endpoint that its namespace does not have.
        c.apply(
            deployment(
                "ns",
                "lost",
                json!({"endpointName": "nowhere", "serviceName": "s"}),
                "21",
            ),
            &id(Kind::Deployments),
        );
        let orphans = c.orphans("nowhere");
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].1.reason, Reason::EndpointMissing);
        assert!(c.orphans("my-endpoint").is_empty());
    }

    #[test]
    fn bad_service_names_and_slice_addresses_are_reported() {
        let mut c = populated();
        c.take_reports();
        // A Service name that could not be a label value never reaches a selector.
        c.take_service_changes();
        c.apply(
            deployment(
                "ns",
                "shouty",
                json!({"endpointName": "my-endpoint", "serviceName": "Bad_Name"}),
                "22",
            ),
            &id(Kind::Deployments),
        );
        assert!(c.take_service_changes().0.is_empty());
        match c.resolve("my-endpoint") {
            Resolution::Found {
                declaration: Err(problems),
                ..
            } => assert!(
                problems[0]
                    .message
                    .contains("field `spec.serviceName`: `Bad_Name`"),
                "{problems:?}"
            ),
            _ => panic!("expected a problem"),
        }

        // An address that is not an IP.
        c.apply(
            slice(
                "ns",
                "blue-svc-2",
                "blue-svc",
                &[("pod.example", true, false)],
                "23",
            ),
            &id(Kind::Slices),
        );
        let reports = c.take_reports();
        assert_eq!(reports[0].0, "EndpointSlice ns/blue-svc-2");
        assert_eq!(reports[0].1.as_ref().unwrap().reason, Reason::SliceAddress);
        assert!(is_service_name("blue-svc") && !is_service_name("-x") && !is_service_name("a_b"));
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

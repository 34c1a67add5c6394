//! The immutable routing table the proxy reads, and the builder discovery uses to make it.
//!
//! A [`RoutingTable`] maps endpoint names to [`Endpoint`]s, each with its deployments, traffic
//! split, mirror and authenticator. It is published as one `Arc` through [`TableHandle`]
//! (arc-swap): a request does one atomic load and never takes a lock discovery also holds.
//!
//! The [`TableBuilder`] keeps, between builds, each deployment's [`DeploymentAdmission`] and
//! each pod's [`Pod`], so slot accounting and pooled connections survive rebuilds. A pod that
//! disappears while requests are on it stays known (not routable) until they finish, so a pod
//! that comes back under the same address is not over-admitted. Endpoints whose declaration did
//! not change keep their `Arc<Endpoint>` from the previous table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::admission::{DeploymentAdmission, OutlierSettings, Pod, Target};
use crate::auth::Authenticator;
use crate::model::{
    DeploymentSpec, EndpointSpec, OutlierDetection, RequestSettings, RouteSpec, RoutingSettings,
};
use crate::picking::scrape::Plan;
use crate::picking::{Picking, PrefixKey, Switch};
use crate::telemetry::{DeploymentMetrics, Metrics, StatusCounters};

/// One deployment as the proxy sees it.
pub struct Deployment {
    /// Deployment name.
    pub name: Arc<str>,
    /// The name as a header value, for `azureml-model-deployment` on responses.
    pub name_header: HeaderValue,
    /// The endpoint it belongs to.
    pub endpoint: Arc<str>,
    /// Timeouts and limits.
    pub settings: DeploymentSettings,
    /// Pods that get new requests (ready, not terminating).
    pub pods: Box<[Arc<Pod>]>,
    /// Slots and queue; shared with every table that lists this deployment.
    pub admission: Arc<DeploymentAdmission>,
    /// Metric handles.
    pub metrics: Arc<DeploymentMetrics>,
    /// How a request is keyed for prefix affinity (only with that policy): the request path
    /// computes the key before admission, reading the body only when the key is in it.
    pub prefix: Option<PrefixKey>,
}

impl Deployment {
    /// The deployment as an admitter sees it.
    pub fn target(&self) -> Target<'_> {
        Target {
            endpoint: &self.endpoint,
            deployment: &self.name,
            pods: &self.pods,
            accounting: &self.admission,
            request_timeout: self.settings.request_timeout,
            prefix: &[],
        }
    }
}

/// A deployment's request settings as the request path reads them (the declared
/// [`RequestSettings`], typed once when the table is built).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeploymentSettings {
    /// Time the pod has to send response headers (`request_timeout_ms`).
    pub request_timeout: Duration,
    /// Time a request may wait for a slot (`max_queue_wait_ms`).
    pub max_queue_wait: Duration,
    /// Requests one pod may serve at a time, from this router.
    pub max_concurrent_requests_per_instance: u32,
    /// Requests that may wait at once; `None`: one per slot.
    pub max_queue_length: Option<u32>,
    /// When pods whose connections keep failing leave the rotation.
    pub outlier: OutlierSettings,
}

impl DeploymentSettings {
    /// The declared settings of a deployment, typed.
    pub fn of(s: &RequestSettings, outlier: &OutlierDetection) -> Self {
        DeploymentSettings {
            request_timeout: Duration::from_millis(s.request_timeout_ms),
            max_queue_wait: Duration::from_millis(s.max_queue_wait_ms),
            max_concurrent_requests_per_instance: s.max_concurrent_requests_per_instance,
            max_queue_length: s.max_queue_length,
            outlier: OutlierSettings {
                consecutive_failures: outlier.consecutive_failures,
                base_ejection: Duration::from_millis(outlier.base_ejection_ms),
                max_ejection_percent: outlier.max_ejection_percent,
            },
        }
    }
}

/// One endpoint as the proxy sees it.
pub struct Endpoint {
    /// Endpoint name.
    pub name: Arc<str>,
    /// Verifies credentials.
    pub auth: Authenticator,
    /// All deployments, in name order.
    pub deployments: Box<[Arc<Deployment>]>,
    /// Cumulative percent thresholds over deployments with live traffic: (upper bound, index).
    traffic: Box<[(u8, usize)]>,
    /// Mirror target index and percent.
    mirror: Option<(usize, u8)>,
    /// Counters for requests answered before a deployment was chosen (401, 404).
    pub unrouted: Arc<StatusCounters>,
}

impl Endpoint {
    /// The deployment named by an `azureml-model-deployment` header, whatever its weight.
    pub fn deployment_named(&self, name: &[u8]) -> Option<&Arc<Deployment>> {
        self.deployments.iter().find(|d| d.name.as_bytes() == name)
    }

    /// A deployment chosen by traffic weight, or `None` when no deployment has live traffic.
    pub fn choose(&self) -> Option<&Arc<Deployment>> {
        match self.traffic.len() {
            0 => None,
            1 => Some(&self.deployments[self.traffic[0].1]),
            _ => {
                let roll = fastrand::u8(..100);
                let index = self
                    .traffic
                    .iter()
                    .find(|(bound, _)| roll < *bound)
                    .map_or(self.traffic[self.traffic.len() - 1].1, |(_, i)| *i);
                Some(&self.deployments[index])
            }
        }
    }

    /// The mirror deployment if this request is one of the mirrored share.
    pub fn mirror_roll(&self) -> Option<&Arc<Deployment>> {
        let (index, percent) = self.mirror?;
        (fastrand::u8(..100) < percent).then(|| &self.deployments[index])
    }
}

/// The longest endpoint name (Azure ML's rule: 3–32 characters).
const MAX_NAME_BYTES: usize = 32;

/// The endpoints by name, hashed with [`NameHasher`].
type EndpointMap = HashMap<Arc<str>, Arc<Endpoint>, BuildHasherDefault<NameHasher>>;

/// FNV-1a, the hash of the endpoint map. The map's names are the table's own (from the
/// configuration and the cluster); a client's name is only looked up, which cannot lengthen a
/// bucket, so a hash that resists chosen keys (std's SipHash, about 100 instructions for a short
/// name, per request) buys nothing here.
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A snapshot of everything routable.
#[derive(Default)]
pub struct RoutingTable {
    endpoints: EndpointMap,
    generation: u64,
}

impl RoutingTable {
    /// The endpoint called `name`, whatever its case (names are declared in lower case; a host
    /// such as `REALEP.ML.EXAMPLE.COM` names endpoint `realep`). The usual, lower-case request
    /// costs one lookup and no allocation; another is lowered on the stack and looked up again.
    pub fn endpoint(&self, name: &str) -> Option<&Arc<Endpoint>> {
        if let Some(endpoint) = self.endpoints.get(name) {
            return Some(endpoint);
        }
        let mut lower = [0u8; MAX_NAME_BYTES];
        let bytes = name.as_bytes();
        if bytes.len() > MAX_NAME_BYTES || !bytes.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        let lower = &mut lower[..bytes.len()];
        lower.copy_from_slice(bytes);
        lower.make_ascii_lowercase();
        self.endpoints.get(std::str::from_utf8(lower).ok()?)
    }

    /// All endpoints, in no particular order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Counts up with every build.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The published table: one atomic load to read, one atomic store to replace.
#[derive(Clone, Default)]
pub struct TableHandle {
    current: Arc<ArcSwap<RoutingTable>>,
}

impl TableHandle {
    /// The current snapshot (a cheap guard; clone what you keep across an await).
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    fn store(&self, table: RoutingTable) {
        self.current.store(Arc::new(table));
    }
}

/// What a deployment looked like at the last build, plus its live state.
struct DeploymentEntry {
    spec: DeploymentSpec,
    admission: Arc<DeploymentAdmission>,
    metrics: Arc<DeploymentMetrics>,
    pods: HashMap<SocketAddr, Arc<Pod>>,
    built: Option<Arc<Deployment>>,
    routing: Routing,
}

/// A deployment's picking state that outlives builds while its routing settings stay the same.
#[derive(Default)]
struct Routing {
    /// The policy the deployment's admission holds.
    policy: Switch,
    /// The settings it was made from; `None` before the first build.
    settings: Option<RoutingSettings>,
    prefix: Option<PrefixKey>,
    /// The pods' metrics scraping, running while this is held.
    scrape: Option<Arc<Plan>>,
}

impl Routing {
    /// Rebuilds the picking when `settings` changed: a new policy for admission, the prefix key,
    /// and scraping (a new board: reports made under the old settings do not carry over),
    /// counted in the deployment's `metrics`.
    fn sync(&mut self, settings: &RoutingSettings, metrics: &Arc<DeploymentMetrics>) {
        if self.settings.as_ref() == Some(settings) {
            return;
        }
        let picking = Picking::of(settings);
        self.policy.set(picking.policy);
        self.scrape = settings
            .pod_metrics
            .as_ref()
            .zip(picking.loads)
            .map(|(scrape, loads)| Plan::start(scrape, loads, metrics.clone()));
        self.prefix = picking.prefix;
        self.settings = Some(settings.clone());
    }
}

/// What an endpoint looked like at the last build.
struct EndpointEntry {
    spec: EndpointSpec,
    unrouted: Arc<StatusCounters>,
    built: Arc<Endpoint>,
}

/// Shared readiness: true once a first table has been published.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    loaded: Arc<AtomicBool>,
}

impl Readiness {
    /// Whether a table has been published.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Marks the first table as published.
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }
}

/// Builds routing tables from [`RouteSpec`]s, keeping live state across builds, and publishes them.
pub struct TableBuilder {
    handle: TableHandle,
    metrics: Metrics,
    deployments: BTreeMap<(String, String), DeploymentEntry>,
    endpoints: HashMap<String, EndpointEntry>,
    generation: u64,
}

/// What a build changed, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildReport {
    /// Generation of the published table.
    pub generation: u64,
    /// Endpoints rebuilt (added or changed).
    pub endpoints_rebuilt: usize,
    /// Endpoints removed.
    pub endpoints_removed: usize,
    /// Endpoints in the table.
    pub endpoints: usize,
}

impl TableBuilder {
    /// A builder publishing into `handle`, registering metrics in `metrics`.
    pub fn new(handle: TableHandle, metrics: Metrics) -> Self {
        TableBuilder {
            handle,
            metrics,
            deployments: BTreeMap::new(),
            endpoints: HashMap::new(),
            generation: 0,
        }
    }

    /// The handle this builder publishes to.
    pub fn handle(&self) -> &TableHandle {
        &self.handle
    }

    /// Builds a table from a validated `spec` and publishes it. Only endpoints whose declaration,
    /// or whose deployments' declarations, changed are rebuilt; the rest are shared.
    pub fn publish(&mut self, spec: &RouteSpec) -> BuildReport {
        let changed_deployments = self.sync_deployments(spec);
        let mut dirty: HashSet<&str> = changed_deployments
            .iter()
            .map(|(e, _)| e.as_str())
            .collect();
        for (name, endpoint) in &spec.endpoints {
            match self.endpoints.get(name) {
                Some(entry) if entry.spec == *endpoint => {}
                _ => {
                    dirty.insert(name.as_str());
                }
            }
        }
        let removed: Vec<String> = self
            .endpoints
            .keys()
            .filter(|name| !spec.endpoints.contains_key(*name))
            .cloned()
            .collect();
        for name in &removed {
            self.endpoints.remove(name);
        }
        let mut rebuilt = 0;
        for name in dirty {
            if let Some(endpoint) = spec.endpoints.get(name) {
                self.build_endpoint(endpoint, spec);
                rebuilt += 1;
            }
        }

        self.generation += 1;
        let table = RoutingTable {
            endpoints: self
                .endpoints
                .values()
                .map(|entry| (entry.built.name.clone(), entry.built.clone()))
                .collect(),
            generation: self.generation,
        };
        let report = BuildReport {
            generation: self.generation,
            endpoints_rebuilt: rebuilt,
            endpoints_removed: removed.len(),
            endpoints: table.len(),
        };
        self.handle.store(table);

        // Now that the table lists the new pods, let waiters have them.
        self.release_waiters(&changed_deployments);
        self.collect_garbage();
        report
    }

    /// Publishes a table in which only the endpoints named in `changed` may differ from the last
    /// one: their deployments are synced from `spec` and they are rebuilt, or removed when `spec`
    /// no longer declares them. Every other endpoint is shared as it is, so the work grows with
    /// what changed (plus one pointer copy per endpoint for the new snapshot). The declarations
    /// of the changed endpoints must be valid.
    pub fn publish_changed<'a>(
        &mut self,
        spec: &RouteSpec,
        changed: impl IntoIterator<Item = &'a str>,
    ) -> BuildReport {
        let changed: BTreeSet<&str> = changed.into_iter().collect();
        let mut changed_deployments = Vec::new();
        for name in &changed {
            for deployment in spec.deployments_of(name) {
                let key = (deployment.endpoint.clone(), deployment.name.clone());
                if self.sync_deployment(key.clone(), deployment) {
                    changed_deployments.push(key);
                }
            }
            let gone: Vec<(String, String)> = self
                .deployments
                .range((name.to_string(), String::new())..)
                .take_while(|((e, _), _)| e == name)
                .filter(|(key, _)| !spec.deployments.contains_key(*key))
                .map(|(key, _)| key.clone())
                .collect();
            for key in gone {
                if self.retire_deployment(&key) {
                    changed_deployments.push(key);
                }
            }
        }
        let (mut rebuilt, mut removed) = (0, 0);
        for name in &changed {
            match spec.endpoints.get(*name) {
                Some(endpoint) => {
                    self.build_endpoint(endpoint, spec);
                    rebuilt += 1;
                }
                None => {
                    if self.endpoints.remove(*name).is_some() {
                        removed += 1;
                    }
                }
            }
        }

        self.generation += 1;
        let previous = self.handle.snapshot();
        let mut endpoints = previous.endpoints.clone();
        for name in &changed {
            match self.endpoints.get(*name) {
                Some(entry) => {
                    endpoints.insert(entry.built.name.clone(), entry.built.clone());
                }
                None => {
                    endpoints.remove(*name);
                }
            }
        }
        let table = RoutingTable {
            endpoints,
            generation: self.generation,
        };
        let report = BuildReport {
            generation: self.generation,
            endpoints_rebuilt: rebuilt,
            endpoints_removed: removed,
            endpoints: table.len(),
        };
        self.handle.store(table);
        self.release_waiters(&changed_deployments);
        for key in &changed_deployments {
            self.collect_deployment_garbage(key);
        }
        report
    }

    /// Forgets pods and deployments that are gone and have nothing in flight, across the whole
    /// table ([`TableBuilder::publish_changed`] only looks at what it changed; run this now and
    /// then to catch pods whose last request ended after that).
    pub fn sweep(&mut self) {
        self.collect_garbage();
    }

    /// Syncs one declared deployment; true when its declaration changed (it was rebuilt).
    fn sync_deployment(&mut self, key: (String, String), deployment: &DeploymentSpec) -> bool {
        let entry = self.deployments.entry(key).or_insert_with_key(|key| {
            let s = deployment.settings;
            let routing = Routing::default();
            DeploymentEntry {
                spec: deployment.clone(),
                admission: DeploymentAdmission::with_policy(
                    s.max_concurrent_requests_per_instance,
                    s.max_queue_length,
                    Box::new(routing.policy.clone()),
                ),
                metrics: Arc::new(DeploymentMetrics::new(&self.metrics, &key.0, &key.1)),
                pods: HashMap::new(),
                built: None,
                routing,
            }
        });
        if entry.built.is_some() && entry.spec == *deployment {
            return false;
        }
        entry.routing.sync(&deployment.routing, &entry.metrics);
        entry.spec = deployment.clone();
        entry.built = Some(Arc::new(build_deployment(entry)));
        true
    }

    /// Marks a deployment that is no longer declared as gone; true if it was live.
    fn retire_deployment(&mut self, key: &(String, String)) -> bool {
        match self.deployments.get_mut(key) {
            Some(entry) if entry.built.is_some() => {
                entry.built = None;
                for pod in entry.pods.values() {
                    pod.set_routable(false);
                }
                true
            }
            _ => false,
        }
    }

    /// Hands the new routable pods of `keys` to their waiters (after the table lists them).
    fn release_waiters(&self, keys: &[(String, String)]) {
        for key in keys {
            if let Some(entry) = self.deployments.get(key) {
                let routable: Box<[Arc<Pod>]> = entry
                    .built
                    .as_ref()
                    .map(|d| d.pods.clone())
                    .unwrap_or_default();
                let s = entry.spec.settings;
                let settings = DeploymentSettings::of(&s, &entry.spec.outlier_detection);
                entry.admission.set_outlier_detection(settings.outlier);
                entry.admission.update(
                    s.max_concurrent_requests_per_instance,
                    s.max_queue_length,
                    routable,
                );
            }
        }
    }

    /// [`TableBuilder::collect_garbage`] for one deployment.
    fn collect_deployment_garbage(&mut self, key: &(String, String)) {
        let Some(entry) = self.deployments.get_mut(key) else {
            return;
        };
        let listed: HashSet<SocketAddr> = entry.spec.pods.iter().map(|p| p.address).collect();
        let keep_all = entry.built.is_some();
        entry
            .pods
            .retain(|addr, pod| (keep_all && listed.contains(addr)) || pod.in_flight() > 0);
        if entry.built.is_none() && entry.pods.is_empty() {
            self.deployments.remove(key);
        }
    }

    /// Updates deployment entries from `spec`; returns the keys whose declaration changed
    /// (including removed ones).
    fn sync_deployments(&mut self, spec: &RouteSpec) -> Vec<(String, String)> {
        let mut changed = Vec::new();
        for (key, deployment) in &spec.deployments {
            if self.sync_deployment(key.clone(), deployment) {
                changed.push(key.clone());
            }
        }
        let gone: Vec<(String, String)> = self
            .deployments
            .keys()
            .filter(|key| !spec.deployments.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            if self.retire_deployment(&key) {
                changed.push(key);
            }
        }
        changed
    }

    fn build_endpoint(&mut self, spec: &EndpointSpec, routes: &RouteSpec) {
        let deployments: Vec<Arc<Deployment>> = routes
            .deployments_of(&spec.name)
            .filter_map(|d| {
                self.deployments
                    .get(&(d.endpoint.clone(), d.name.clone()))
                    .and_then(|e| e.built.clone())
            })
            .collect();
        let index_of = |name: &str| deployments.iter().position(|d| &*d.name == name);
        let mut traffic = Vec::new();
        let mut bound: u16 = 0;
        for (name, percent) in &spec.traffic {
            if *percent == 0 {
                continue;
            }
            if let Some(i) = index_of(name) {
                bound += u16::from(*percent);
                traffic.push((bound.min(100) as u8, i));
            }
        }
        let mirror = spec
            .mirror_traffic
            .iter()
            .find(|(_, p)| **p > 0)
            .and_then(|(name, percent)| index_of(name).map(|i| (i, *percent)));
        let unrouted = match self.endpoints.get(&spec.name) {
            Some(entry) => entry.unrouted.clone(),
            None => Arc::new(StatusCounters::new(&self.metrics, &spec.name, "")),
        };
        let endpoint = Arc::new(Endpoint {
            name: spec.name.as_str().into(),
            auth: Authenticator::new(&spec.name, spec.auth_mode, &spec.keys),
            deployments: deployments.into_boxed_slice(),
            traffic: traffic.into_boxed_slice(),
            mirror,
            unrouted: unrouted.clone(),
        });
        self.endpoints.insert(
            spec.name.clone(),
            EndpointEntry {
                spec: spec.clone(),
                unrouted,
                built: endpoint,
            },
        );
    }

    /// Forgets pods and deployments that are gone and have nothing in flight.
    fn collect_garbage(&mut self) {
        for entry in self.deployments.values_mut() {
            let listed: HashSet<SocketAddr> = entry.spec.pods.iter().map(|p| p.address).collect();
            let keep_all = entry.built.is_some();
            entry
                .pods
                .retain(|addr, pod| (keep_all && listed.contains(addr)) || pod.in_flight() > 0);
        }
        self.deployments
            .retain(|_, entry| entry.built.is_some() || !entry.pods.is_empty());
    }
}

/// Makes the routable form of a deployment, reusing (or creating) its pods.
fn build_deployment(entry: &mut DeploymentEntry) -> Deployment {
    let spec = &entry.spec;
    let mut states: BTreeMap<SocketAddr, bool> = BTreeMap::new();
    for pod in &spec.pods {
        states.insert(pod.address, pod.routable());
    }
    for (addr, pod) in &entry.pods {
        if !states.contains_key(addr) {
            pod.set_routable(false);
        }
    }
    let mut routable = Vec::new();
    for (addr, is_routable) in states {
        let pod = entry
            .pods
            .entry(addr)
            .or_insert_with(|| Arc::new(Pod::new(addr)))
            .clone();
        pod.set_routable(is_routable);
        if is_routable {
            routable.push(pod);
        }
    }
    if let Some(plan) = &entry.routing.scrape {
        plan.set_pods(routable.clone().into_boxed_slice());
    }
    Deployment {
        name: spec.name.as_str().into(),
        name_header: HeaderValue::from_str(&spec.name)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        endpoint: spec.endpoint.as_str().into(),
        settings: DeploymentSettings::of(&spec.settings, &spec.outlier_detection),
        pods: routable.into_boxed_slice(),
        admission: entry.admission.clone(),
        metrics: entry.metrics.clone(),
        prefix: entry.routing.prefix.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuthMode, EndpointKeys, PodSpec};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn spec(traffic: &[(&str, u8)], pods: &[(&str, Vec<PodSpec>)]) -> RouteSpec {
        let mut s = RouteSpec::default();
        s.endpoints.insert(
            "ep-one".into(),
            EndpointSpec {
                name: "ep-one".into(),
                auth_mode: AuthMode::Key,
                keys: EndpointKeys {
                    primary: "k".into(),
                    secondary: None,
                },
                traffic: traffic.iter().map(|(d, p)| (d.to_string(), *p)).collect(),
                mirror_traffic: BTreeMap::new(),
            },
        );
        for (name, pods) in pods {
            s.deployments.insert(
                ("ep-one".into(), name.to_string()),
                DeploymentSpec {
                    name: name.to_string(),
                    endpoint: "ep-one".into(),
                    pods: pods.clone(),
                    settings: RequestSettings::default(),
                    outlier_detection: OutlierDetection::default(),
                    routing: Default::default(),
                },
            );
        }
        s
    }

    fn builder() -> TableBuilder {
        TableBuilder::new(TableHandle::default(), Metrics::new())
    }

    #[test]
    fn weighted_choice_follows_traffic() {
        let mut b = builder();
        b.publish(&spec(
            &[("blue", 90), ("green", 10)],
            &[
                ("blue", vec![PodSpec::ready(addr(1))]),
                ("green", vec![PodSpec::ready(addr(2))]),
            ],
        ));
        let table = b.handle().snapshot();
        let ep = table.endpoint("ep-one").unwrap();
        let green = (0..10_000)
            .filter(|_| &*ep.choose().unwrap().name == "green")
            .count();
        assert!((800..1200).contains(&green), "green got {green} of 10000");
        assert!(ep.deployment_named(b"green").is_some());
        assert!(ep.deployment_named(b"red").is_none());
    }

    #[test]
    fn zero_traffic_chooses_nothing_but_header_still_works() {
        let mut b = builder();
        b.publish(&spec(
            &[("blue", 0)],
            &[("blue", vec![PodSpec::ready(addr(1))])],
        ));
        let table = b.handle().snapshot();
        let ep = table.endpoint("ep-one").unwrap();
        assert!(ep.choose().is_none());
        assert!(ep.deployment_named(b"blue").is_some());
    }

    #[test]
    fn in_flight_accounting_survives_rebuilds() {
        let mut b = builder();
        let one = spec(&[("blue", 100)], &[("blue", vec![PodSpec::ready(addr(1))])]);
        b.publish(&one);
        let table = b.handle().snapshot();
        let d = table.endpoint("ep-one").unwrap().deployments[0].clone();
        let slot = d.admission.try_acquire(&d.pods).unwrap();

        // The pod disappears and comes back while the request is in flight.
        b.publish(&spec(&[("blue", 100)], &[("blue", vec![])]));
        assert!(!slot.pod().is_routable());
        b.publish(&one);
        let table = b.handle().snapshot();
        let d2 = table.endpoint("ep-one").unwrap().deployments[0].clone();
        assert!(
            Arc::ptr_eq(&d2.pods[0], slot.pod()),
            "the same pod state is reused"
        );
        assert!(
            d2.admission.try_acquire(&d2.pods).is_none(),
            "cap 1 still holds"
        );
        drop(slot);
        assert!(d2.admission.try_acquire(&d2.pods).is_some());
    }

    #[test]
    fn terminating_and_unready_pods_are_not_routable() {
        let mut b = builder();
        let pods = vec![
            PodSpec::ready(addr(1)),
            PodSpec {
                address: addr(2),
                ready: false,
                terminating: false,
            },
            PodSpec {
                address: addr(3),
                ready: true,
                terminating: true,
            },
        ];
        b.publish(&spec(&[("blue", 100)], &[("blue", pods)]));
        let table = b.handle().snapshot();
        let d = &table.endpoint("ep-one").unwrap().deployments[0];
        assert_eq!(d.pods.len(), 1);
        assert_eq!(d.pods[0].address(), addr(1));
    }

    /// `ep-one` with one pod of `blue`, and `ep-two` like it but without traffic.
    fn two_endpoints() -> RouteSpec {
        let mut s = spec(&[("blue", 100)], &[("blue", vec![PodSpec::ready(addr(1))])]);
        let mut other = s.endpoints["ep-one"].clone();
        other.name = "ep-two".into();
        other.traffic.clear();
        s.endpoints.insert("ep-two".into(), other);
        s
    }

    #[test]
    fn unchanged_endpoints_are_shared_between_tables() {
        let mut b = builder();
        let mut s = two_endpoints();
        b.publish(&s);
        let first = b.handle().snapshot();
        s.deployments
            .get_mut(&("ep-one".into(), "blue".into()))
            .unwrap()
            .pods
            .push(PodSpec::ready(addr(2)));
        let report = b.publish(&s);
        assert_eq!(report.endpoints_rebuilt, 1);
        let second = b.handle().snapshot();
        assert!(Arc::ptr_eq(
            first.endpoint("ep-two").unwrap(),
            second.endpoint("ep-two").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            first.endpoint("ep-one").unwrap(),
            second.endpoint("ep-one").unwrap()
        ));
        assert_eq!(
            second.endpoint("ep-one").unwrap().deployments[0].pods.len(),
            2
        );
    }

    #[test]
    fn publish_changed_touches_only_the_named_endpoints() {
        let mut b = builder();
        let mut s = two_endpoints();
        let report = b.publish_changed(&s, ["ep-one", "ep-two"]);
        assert_eq!((report.endpoints_rebuilt, report.endpoints), (2, 2));
        let first = b.handle().snapshot();
        let d = first.endpoint("ep-one").unwrap().deployments[0].clone();
        let slot = d.admission.try_acquire(&d.pods).unwrap();

        // A pod joins blue; only ep-one is named as changed.
        s.deployments
            .get_mut(&("ep-one".into(), "blue".into()))
            .unwrap()
            .pods
            .push(PodSpec::ready(addr(2)));
        let report = b.publish_changed(&s, ["ep-one"]);
        assert_eq!((report.endpoints_rebuilt, report.endpoints), (1, 2));
        let second = b.handle().snapshot();
        assert!(Arc::ptr_eq(
            first.endpoint("ep-two").unwrap(),
            second.endpoint("ep-two").unwrap()
        ));
        let d2 = second.endpoint("ep-one").unwrap().deployments[0].clone();
        assert_eq!(d2.pods.len(), 2);
        assert!(
            Arc::ptr_eq(&d.admission, &d2.admission),
            "admission survives"
        );
        assert_eq!(slot.pod().in_flight(), 1);

        // The endpoint goes away with its deployment; the in-flight pod stays known until done.
        s.endpoints.remove("ep-one");
        s.deployments.clear();
        let report = b.publish_changed(&s, ["ep-one"]);
        assert_eq!((report.endpoints_removed, report.endpoints), (1, 1));
        assert!(b.handle().snapshot().endpoint("ep-one").is_none());
        assert!(!slot.pod().is_routable());
        assert_eq!(b.deployments.len(), 1, "kept while a request is in flight");
        drop(slot);
        b.sweep();
        assert!(b.deployments.is_empty());
    }

    #[test]
    fn removed_endpoints_disappear() {
        let mut b = builder();
        b.publish(&spec(
            &[("blue", 100)],
            &[("blue", vec![PodSpec::ready(addr(1))])],
        ));
        let report = b.publish(&RouteSpec::default());
        assert_eq!(report.endpoints_removed, 1);
        assert!(b.handle().snapshot().endpoint("ep-one").is_none());
    }
}

//! The discovery loop: applies watch messages to the [`Cluster`], coalesces them, and publishes
//! the endpoints they changed.
//!
//! **Coalescing.** After the first message of a batch the loop keeps taking messages until none
//! has arrived for [`QUIET`] or [`MAX_COALESCE`] (10 ms) has passed since the first, then
//! publishes once. A burst (`kubectl apply -f` of a directory, a relist) becomes one rebuild; a
//! lone change waits at most about a millisecond.
//!
//! **Cost.** Only endpoints whose objects changed are resolved and, if their routing spec differs,
//! rebuilt ([`crate::table::TableBuilder::publish_changed`]); the rest of the table is shared.
//!
//! **Partial validity.** Each endpoint is validated on its own (Azure ML's rules,
//! [`RouteSpec::validate`]). An endpoint whose objects become invalid keeps its last valid
//! declaration (its pods and keys still follow the cluster), and the problem is logged once and
//! counted; one that was never valid is not served until it is. An endpoint whose keys Secret is
//! missing or unusable is not served at all: credentials are never kept from memory after their
//! Secret is gone.
//!
//! **Readiness.** Nothing is published until every watch (endpoints, deployments, key Secrets in
//! every scope, and the EndpointSlice shards that the listed deployments need) has completed a
//! list; the first publish marks the router ready.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use std::sync::Arc;

use kube::Client;
use metrics::Histogram;
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

use super::conditions;
use super::health::WatchMetrics;
use super::names;
use super::problems::{Problem, Reason, Reports};
use super::resources::{spawn_plain, Body, Kind, Message, ObjKey, Scope, Sender, WatchId};
use super::slices::SliceShards;
use super::translate::{deployment_subject, scope_of, Cluster, Declaration, Resolution};
use crate::conditions::Board;
use crate::discovery::Publisher;
use crate::k8s::{Health, WatchTask};
use crate::model::{EndpointKeys, RouteSpec};
use crate::telemetry::Metrics;

/// A batch ends when no message arrived for this long...
pub const QUIET: Duration = Duration::from_millis(1);
/// ...or this long after its first message.
pub const MAX_COALESCE: Duration = Duration::from_millis(10);
/// How often pod state nobody needs any more is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long an OnlineDeployment's Service may have no EndpointSlices after its shard has listed
/// before that is reported (the EndpointSlice controller makes them shortly after the Service).
pub const SERVICE_GRACE: Duration = Duration::from_secs(5);

/// The loop's state.
pub struct Discovery {
    client: Client,
    tx: Sender,
    all_namespaces: bool,
    started: Instant,
    cluster: Cluster,
    shards: SliceShards,
    watches: Vec<(WatchId, WatchTask)>,
    synced: HashSet<WatchId>,
    ready: bool,
    published_once: bool,
    publisher: Publisher,
    route: RouteSpec,
    last_good: HashMap<String, Declaration>,
    reports: Reports,
    /// Endpoints to resolve again at a time (a Service whose slices may still come).
    recheck: HashMap<String, Instant>,
    pending: Vec<Instant>,
    health: Health,
    event_to_routable: Histogram,
    rebuild: Histogram,
    /// Where the objects' `Ready` conditions go, when the router writes them.
    board: Option<Board>,
}

impl Discovery {
    /// Starts the plain watches of every scope.
    pub fn new(
        client: Client,
        scopes: Vec<Scope>,
        tx: Sender,
        publisher: Publisher,
        metrics: &Metrics,
        board: Option<Board>,
    ) -> Self {
        let all_namespaces = scopes.iter().any(Option::is_none);
        let health = Health::new(
            "serving the last routing table",
            Arc::new(WatchMetrics::new(
                metrics,
                Some(metrics.gauge(names::UP, &[])),
            )),
        );
        let mut watches = Vec::new();
        for scope in &scopes {
            for kind in [Kind::Endpoints, Kind::Deployments, Kind::Secrets] {
                let id = WatchId::of(kind, scope);
                let task = spawn_plain(&client, id.clone(), tx.clone(), &health);
                watches.push((id, task));
            }
        }
        Discovery {
            client,
            tx,
            all_namespaces,
            started: Instant::now(),
            cluster: Cluster::default(),
            shards: SliceShards::default(),
            watches,
            synced: HashSet::new(),
            ready: false,
            published_once: false,
            publisher,
            route: RouteSpec::default(),
            last_good: HashMap::new(),
            reports: Reports::new(metrics),
            recheck: HashMap::new(),
            pending: Vec::new(),
            health,
            event_to_routable: metrics.histogram(names::EVENT_TO_ROUTABLE, &[]),
            rebuild: metrics.histogram(names::REBUILD, &[]),
            board,
        }
    }

    /// Applies one message.
    fn handle(&mut self, message: Message) {
        let watch = message.watch;
        if watch.kind == Kind::Slices && !self.shards.is_current(&watch) {
            return;
        }
        self.pending.push(message.received);
        match message.body {
            Body::Apply(object) => self.cluster.apply(object, &watch),
            Body::Delete(key) => {
                self.forget_conditions(watch.kind, &key);
                self.cluster.delete(watch.kind, &key);
            }
            Body::Synced(objects) => {
                if watch.kind == Kind::Slices {
                    self.shards.listed(&watch);
                }
                self.cluster.replace(&watch, objects);
                if !self.ready {
                    self.synced.insert(watch);
                }
            }
        }
    }

    /// Updates the EndpointSlice shards, then publishes what changed (once everything has been
    /// listed).
    fn flush(&mut self) {
        let (added, removed) = self.cluster.take_service_changes();
        for (ns, service) in &removed {
            let scope = scope_of(self.all_namespaces, ns);
            self.shards.remove(&scope, ns, service);
            self.cluster.purge_service(&(ns.clone(), service.clone()));
        }
        for (ns, service) in &added {
            let scope = scope_of(self.all_namespaces, ns);
            self.shards.add(&scope, ns, service);
        }
        if !added.is_empty() || !removed.is_empty() {
            let (started, stopped) = self.shards.apply(&self.client, &self.tx, &self.health);
            tracing::debug!(
                added = added.len(),
                removed = removed.len(),
                restarted = started.len(),
                stopped = stopped.len(),
                shards = self.shards.watch_count(),
                "EndpointSlice selection changed"
            );
        }
        for (subject, problem) in self.cluster.take_reports() {
            match problem {
                Some(problem) => {
                    if let (Some(board), Some(object)) =
                        (&self.board, conditions::object_of(&subject))
                    {
                        conditions::post_problem(board, &self.cluster, &object, &problem);
                    }
                    self.reports.report(&subject, problem)
                }
                None => self.reports.clear(&subject),
            }
        }
        if !self.ready {
            if !self.all_synced() {
                return;
            }
            self.ready = true;
            let mut names: BTreeSet<String> = self.cluster.take_dirty();
            names.extend(self.cluster.endpoint_names().cloned());
            self.pending.clear();
            self.publish(names);
            let counts = self.cluster.counts();
            tracing::info!(
                elapsed = ?self.started.elapsed(),
                endpoints_served = self.route.endpoints.len(),
                online_endpoints = counts[0].1,
                online_deployments = counts[1].1,
                endpoint_slices = counts[2].1,
                secrets = counts[3].1,
                slice_watches = self.shards.watch_count(),
                "Kubernetes discovery: first complete list published; the router is ready"
            );
            return;
        }
        let dirty = self.cluster.take_dirty();
        if dirty.is_empty() && self.pending.is_empty() {
            return;
        }
        self.publish(dirty);
    }

    fn all_synced(&self) -> bool {
        self.watches.iter().all(|(id, _)| self.synced.contains(id))
            && self
                .shards
                .running()
                .iter()
                .all(|id| self.synced.contains(id))
    }

    /// Resolves `names` and publishes those whose routing spec changed.
    fn publish(&mut self, names: BTreeSet<String>) {
        let started = Instant::now();
        let mut changed = Vec::new();
        for name in names {
            let piece = self.resolve(&name);
            if same(&self.route, &name, piece.as_ref()) {
                continue;
            }
            replace(&mut self.route, &name, piece);
            changed.push(name);
        }
        if !changed.is_empty() || !self.published_once {
            self.publisher
                .apply_changed(&self.route, changed.iter().map(String::as_str));
            self.published_once = true;
        }
        self.rebuild.record(started.elapsed().as_secs_f64());
        let now = Instant::now();
        for received in self.pending.drain(..) {
            self.event_to_routable
                .record(now.duration_since(received).as_secs_f64());
        }
    }
}

impl Discovery {
    /// The routing spec of endpoint `name` now, or `None` when it is not served; reports (once
    /// per distinct problem) why the endpoint or one of its objects is not served as declared.
    fn resolve(&mut self, name: &str) -> Option<RouteSpec> {
        let mut objects = self.cluster.orphans(name);
        let subject = format!("endpoint `{name}`");
        let served = match self.cluster.resolve(name) {
            Resolution::Absent => {
                self.last_good.remove(name);
                self.reports.clear(&subject);
                if let Some(board) = &self.board {
                    // OnlineDeployments naming an endpoint that no namespace has.
                    for (subject, problem) in &objects {
                        if let Some(object) = conditions::object_of(subject) {
                            conditions::post_problem(board, &self.cluster, &object, problem);
                        }
                    }
                }
                None
            }
            Resolution::Found {
                namespace,
                keys,
                declaration,
                shadowed,
            } => {
                objects.extend(shadowed.into_iter().map(|key| shadowed_problem(name, key)));
                let served = self.serve(name, &subject, keys, declaration);
                objects.extend(self.missing_services(name));
                self.post_conditions(name, &namespace, served.as_ref(), &objects);
                served
            }
        };
        self.reports.note_objects(name, objects);
        served
    }

    /// Puts the `Ready` conditions of endpoint `name`'s objects on the board (when the router
    /// writes conditions).
    fn post_conditions(
        &self,
        name: &str,
        namespace: &str,
        served: Option<&RouteSpec>,
        objects: &[(String, Problem)],
    ) {
        let Some(board) = &self.board else {
            return;
        };
        let resolved = conditions::Resolved {
            name,
            namespace,
            problem: self.reports.problem(&format!("endpoint `{name}`")),
            served,
            declaration: served.and(self.last_good.get(name)),
            objects,
        };
        conditions::post(board, &self.cluster, &resolved);
    }

    /// A deleted OnlineEndpoint or OnlineDeployment needs no condition any more.
    fn forget_conditions(&self, kind: Kind, key: &ObjKey) {
        let kind = match kind {
            Kind::Endpoints => crate::conditions::Kind::Endpoint,
            Kind::Deployments => crate::conditions::Kind::Deployment,
            Kind::Slices | Kind::Secrets => return,
        };
        if let Some(board) = &self.board {
            board.forget(&crate::conditions::ObjectRef {
                kind,
                namespace: key.0.clone(),
                name: key.1.clone(),
            });
        }
    }

    /// The spec served for endpoint `name` from its keys and declaration: the declaration if it
    /// is valid, else its last valid one (reported), else none.
    fn serve(
        &mut self,
        name: &str,
        subject: &str,
        keys: Result<EndpointKeys, Problem>,
        declaration: Result<Declaration, Vec<Problem>>,
    ) -> Option<RouteSpec> {
        let keys = match keys {
            Ok(keys) => keys,
            Err(problem) => {
                let message = format!("endpoint `{name}` is not served: {}", problem.message);
                self.reports
                    .report(subject, Problem::new(problem.reason, message));
                return None;
            }
        };
        let problems = match declaration {
            Ok(declaration) => {
                let spec = self.cluster.compose(&declaration, &keys);
                match spec.validate() {
                    Ok(()) => {
                        self.last_good.insert(name.to_string(), declaration);
                        self.reports.clear(subject);
                        return Some(spec);
                    }
                    Err(errors) => errors
                        .iter()
                        .map(|e| Problem::new(Reason::Invalid, e.to_string()))
                        .collect(),
                }
            }
            Err(problems) => problems,
        };
        let fallback = self
            .last_good
            .get(name)
            .map(|declaration| self.cluster.compose(declaration, &keys));
        let consequence = if fallback.is_some() {
            "its last valid declaration is served until this is fixed"
        } else {
            "it is not served until this is fixed"
        };
        let reason = problems.first().map_or(Reason::Invalid, |p| p.reason);
        let text: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        let message = format!(
            "endpoint `{name}` is invalid ({consequence}): {}",
            text.join("; ")
        );
        self.reports.report(subject, Problem::new(reason, message));
        fallback
    }

    /// The deployments of endpoint `name` (as served) whose Service has had no EndpointSlices
    /// for [`SERVICE_GRACE`] since its shard listed; a Service still within its grace is looked
    /// at again when it ends.
    fn missing_services(&mut self, name: &str) -> Vec<(String, Problem)> {
        let Some(declaration) = self.last_good.get(name) else {
            return Vec::new();
        };
        let ns = &declaration.namespace;
        let scope = scope_of(self.all_namespaces, ns);
        let (mut missing, mut later) = (Vec::new(), None);
        for d in &declaration.deployments {
            if self.cluster.has_slices(&(ns.clone(), d.service.clone())) {
                continue;
            }
            let since = self.shards.listed_at(&scope, &d.service);
            match since.map(|at| at + SERVICE_GRACE) {
                Some(due) if due <= Instant::now() => missing.push((
                    deployment_subject(&(ns.clone(), d.object.clone())),
                    Problem::new(
                        Reason::ServiceMissing,
                        format!(
                            "OnlineDeployment {ns}/{object} (deployment `{deployment}` of endpoint \
                             `{name}`): field `spec.serviceName`: Service {ns}/{service} has no \
                             EndpointSlices, so the deployment has no pods and its requests get 503 \
                             NoReadyPod: create the Service (with a selector for the model pods) or \
                             fix spec.serviceName",
                            object = d.object,
                            deployment = d.spec.name,
                            service = d.service,
                        ),
                    ),
                )),
                due => {
                    let due = due.unwrap_or_else(|| Instant::now() + SERVICE_GRACE);
                    later = Some(later.map_or(due, |l: Instant| l.min(due)));
                }
            }
        }
        if let Some(due) = later {
            let at = self.recheck.entry(name.to_string()).or_insert(due);
            *at = (*at).min(due);
        }
        missing
    }

    /// Resolves again the endpoints whose time to be looked at again has come.
    fn recheck(&mut self) {
        let now = Instant::now();
        let due: BTreeSet<String> = self
            .recheck
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        self.recheck.retain(|_, at| *at > now);
        if self.ready && !due.is_empty() {
            self.publish(due);
        }
    }

    /// The earliest time an endpoint is to be looked at again, if any.
    fn next_recheck(&self) -> Option<Instant> {
        self.recheck.values().min().copied()
    }
}

/// The problem of an OnlineEndpoint hidden by an older one of the same name.
fn shadowed_problem(name: &str, (ns, object): ObjKey) -> (String, Problem) {
    let message = format!(
        "OnlineEndpoint {ns}/{object} is not served: an older OnlineEndpoint named `{name}` in \
         another watched namespace serves that name (scoring URIs carry no namespace): rename one"
    );
    (
        format!("OnlineEndpoint {ns}/{object}"),
        Problem::new(Reason::Conflict, message),
    )
}

/// Whether `route` already holds exactly `piece` for endpoint `name`.
fn same(route: &RouteSpec, name: &str, piece: Option<&RouteSpec>) -> bool {
    let current: Vec<_> = route.deployments_of(name).collect();
    match piece {
        None => !route.endpoints.contains_key(name) && current.is_empty(),
        Some(piece) => {
            route.endpoints.get(name) == piece.endpoints.get(name)
                && current.len() == piece.deployments.len()
                && current
                    .iter()
                    .zip(piece.deployments.values())
                    .all(|(a, b)| *a == b)
        }
    }
}

/// Puts `piece` in place of endpoint `name` in `route`.
fn replace(route: &mut RouteSpec, name: &str, piece: Option<RouteSpec>) {
    route.endpoints.remove(name);
    let old: Vec<(String, String)> = route
        .deployments_of(name)
        .map(|d| (d.endpoint.clone(), d.name.clone()))
        .collect();
    for key in old {
        route.deployments.remove(&key);
    }
    if let Some(piece) = piece {
        route.endpoints.extend(piece.endpoints);
        route.deployments.extend(piece.deployments);
    }
}

/// Runs the loop until the task is aborted.
pub async fn run(mut discovery: Discovery, mut rx: Receiver<Message>) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.tick().await;
    loop {
        let first = tokio::select! {
            message = rx.recv() => match message {
                Some(message) => message,
                None => return,
            },
            _ = sweep.tick() => {
                discovery.publisher.sweep();
                continue;
            }
            _ = until(discovery.next_recheck()) => {
                discovery.recheck();
                continue;
            }
        };
        let deadline = Instant::now() + MAX_COALESCE;
        discovery.handle(first);
        loop {
            while let Ok(message) = rx.try_recv() {
                discovery.handle(message);
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match tokio::time::timeout_at((now + QUIET).min(deadline), rx.recv()).await {
                Ok(Some(message)) => discovery.handle(message),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        discovery.flush();
    }
}

/// Sleeps until `at`, or forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

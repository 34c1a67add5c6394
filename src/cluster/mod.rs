//! Coordinated admission across router replicas, so the per-pod cap holds cluster-wide.
//!
//! azureml-fe lets one replica own the slot accounting of a deployment; the others ask it for a
//! pod and tell it when the pod is free again (`docs/ARCHITECTURE.md`, "Coordinated
//! admission"). Here, replicas find
//! each other (a static list, or the EndpointSlices of the router's headless Service), agree on
//! an owner per deployment by rendezvous hashing over the live ones ([`ring`], [`view`]), and
//! ask the owner for slots over one authenticated HTTP/2 connection per peer ([`peers`],
//! [`server`], [`protocol`]). A grant is a lease: it lasts while the requester keeps its stream
//! open, and expires by itself after `request_timeout_ms` plus a margin ([`lease`]). When the
//! live replicas change, each replica reports the slots it holds to their new owners, and a new
//! owner holds its grants until those reports are in ([`gate`]).
//!
//! [`Cluster`] is the [`Coordinator`] behind [`crate::admission::Admitter::Coordinated`]: the
//! request path admits through it when a `cluster` section is configured.

pub mod credential;
pub mod gate;
pub mod kube_peers;
pub mod lease;
pub mod metrics;
pub mod peers;
pub mod protocol;
pub mod ring;
pub mod server;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderValue, Method, Request, StatusCode};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::admission::{AdmitError, Coordinator, Pending, Pod, ReleaseGuard, Slot, Target};
use crate::config::{ClusterConfig, FallbackMode};
use crate::table::{Readiness, TableHandle};

pub use lease::LeaseGuard;

use credential::Credential;
use gate::Gate;
use lease::{Held, HeldLeases, HoldOpen};
use metrics::ClusterMetrics;
use peers::{Peer, PeerContext};
use view::{Owner, View};

/// How often the view is recomputed even without a change notice (readiness, draining).
const RECOMPUTE_EVERY: Duration = Duration::from_millis(250);
/// Extra time a remote grant may take beyond the request's queue budget before the owner is
/// treated as unreachable.
const GRANT_GRACE: Duration = Duration::from_secs(1);

/// Settings of coordinated admission.
#[derive(Clone, Debug)]
struct Settings {
    fallback: FallbackMode,
    lease_margin: Duration,
    handover_settle: Duration,
}

/// This replica's part of the cluster.
pub struct Cluster {
    /// This cluster itself, for the tasks it starts.
    this: Weak<Cluster>,
    me: Arc<str>,
    me_header: HeaderValue,
    credential: Arc<Credential>,
    settings: Settings,
    peers: Mutex<HashMap<Arc<str>, Arc<Peer>>>,
    peer_context: Arc<PeerContext>,
    view: ArcSwap<View>,
    recompute_lock: Mutex<()>,
    held: Arc<HeldLeases>,
    gate: ArcSwapOption<Gate>,
    synced_from: Mutex<HashMap<Arc<str>, u64>>,
    table: TableHandle,
    readiness: Readiness,
    draining: CancellationToken,
    stopped: CancellationToken,
    metrics: ClusterMetrics,
}

/// Why a remote grant did not give a slot.
enum GrantError {
    /// The owner answered with a client-facing refusal (429, 503): it means the same here.
    Refused(AdmitError),
    /// The owner's connection failed: try the next owner.
    PeerDown,
    /// The owner cannot serve this deployment now (not ready, does not know it, refused us).
    Unavailable,
}

impl Cluster {
    /// Sets up this replica's cluster membership: reads the credential, and fixes this
    /// replica's identity. Serving and peer connections start with [`Cluster::start`].
    pub fn new(
        config: &ClusterConfig,
        bound: SocketAddr,
        table: TableHandle,
        readiness: Readiness,
        draining: CancellationToken,
        metrics: &crate::telemetry::Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        let credential =
            Arc::new(Credential::load(config.secret_file.as_deref()).map_err(anyhow::Error::msg)?);
        let me = advertised_address(config, bound)?;
        let me: Arc<str> = me.to_string().into();
        let me_header = HeaderValue::from_str(&me).expect("an address is a header value");
        let metrics = ClusterMetrics::new(metrics);
        let cluster = Arc::new_cyclic(|this: &Weak<Cluster>| {
            let weak = this.clone();
            let peer_context = Arc::new(PeerContext {
                me: me_header.clone(),
                credential: credential.clone(),
                changed: Arc::new(move || {
                    if let Some(cluster) = weak.upgrade() {
                        cluster.recompute();
                    }
                }),
                refused: metrics.refused.clone(),
            });
            Cluster {
                this: this.clone(),
                view: ArcSwap::from_pointee(View::new(me.clone(), false, Vec::new())),
                me,
                me_header,
                credential,
                settings: Settings {
                    fallback: config.fallback,
                    lease_margin: Duration::from_millis(config.lease_margin_ms),
                    handover_settle: Duration::from_millis(config.handover_settle_ms),
                },
                peers: Mutex::new(HashMap::new()),
                peer_context,
                recompute_lock: Mutex::new(()),
                held: Arc::new(HeldLeases::default()),
                gate: ArcSwapOption::empty(),
                synced_from: Mutex::new(HashMap::new()),
                table,
                readiness,
                draining,
                stopped: CancellationToken::new(),
                metrics,
            }
        });
        Ok(cluster)
    }

    /// This replica's identity (its advertised `ip:port`).
    pub fn me(&self) -> &Arc<str> {
        &self.me
    }

    /// The port peers reach this replica on.
    pub fn port(&self) -> u16 {
        self.me
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default()
    }

    /// Stops the peer connections and the internal port (end of shutdown).
    pub fn stop(&self) {
        self.stopped.cancel();
        for peer in self.peers.lock().values() {
            peer.stop();
        }
    }

    /// The current view of live replicas.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Whether this replica serves grants: it has routes and is not draining.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_loaded() && !self.draining.is_cancelled()
    }

    /// Starts the periodic view check. Peers come from [`Cluster::set_peers`].
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RECOMPUTE_EVERY);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(cluster) => cluster.recompute(),
                    None => return,
                }
            }
        })
    }

    /// Replaces the list of replicas (this one may be in it; it is skipped).
    pub fn set_peers(self: &Arc<Self>, addresses: &[SocketAddr]) {
        {
            let mut peers = self.peers.lock();
            let wanted: HashSet<Arc<str>> = addresses
                .iter()
                .map(|a| Arc::<str>::from(a.to_string()))
                .filter(|id| *id != self.me)
                .collect();
            peers.retain(|id, peer| {
                let keep = wanted.contains(id);
                if !keep {
                    tracing::info!(peer = %id, "peer left the replica list");
                    peer.stop();
                }
                keep
            });
            for address in addresses {
                let id: Arc<str> = address.to_string().into();
                if id == self.me || peers.contains_key(&id) {
                    continue;
                }
                tracing::info!(peer = %id, "peer joined the replica list");
                let peer = Peer::new(*address);
                tokio::spawn(peer.clone().maintain(self.peer_context.clone()));
                peers.insert(id, peer);
            }
        }
        self.recompute();
    }

    /// Recomputes the view; when its members changed, hands deployments over.
    pub fn recompute(&self) {
        let _one_at_a_time = self.recompute_lock.lock();
        let live: Vec<Arc<Peer>> = self
            .peers
            .lock()
            .values()
            .filter(|p| p.is_live())
            .cloned()
            .collect();
        let new = View::new(self.me.clone(), self.is_ready(), live);
        let old = self.view.load_full();
        if old.same_members(&new) {
            return;
        }
        let new = Arc::new(new);
        self.view.store(new.clone());
        self.metrics.members.set(new.members().len() as f64);
        tracing::info!(members = ?new.members(), view = format_args!("{:016x}", new.hash()), "the live replicas changed");
        self.hand_over(&old, &new);
    }

    /// After a view change: holds grants of deployments this replica took over until the
    /// peers report, and reports the slots this replica holds to their new owners.
    fn hand_over(&self, old: &View, new: &Arc<View>) {
        let gained = self.taken_over(old, new);
        self.gate_grants(gained, new);
        self.report_held(new);
    }

    /// The deployments (`endpoint/deployment`) this replica owns in `new` but not in `old`.
    fn taken_over(&self, old: &View, new: &View) -> HashSet<String> {
        let mut gained = HashSet::new();
        for endpoint in self.table.load().endpoints() {
            for deployment in endpoint.deployments.iter() {
                let (e, d) = (&*deployment.endpoint, &*deployment.name);
                let now_mine = new.owner_id(e, d) == Some(&self.me);
                let was_mine = old.owner_id(e, d) == Some(&self.me);
                if now_mine && !was_mine {
                    gained.insert(protocol::key(e, d));
                }
            }
        }
        if !gained.is_empty() {
            self.metrics.handovers.increment(gained.len() as u64);
            tracing::info!(
                deployments = gained.len(),
                "this replica took over deployments"
            );
        }
        gained
    }

    /// Holds the grants of `gained` until every peer of `new` has reported its slots, or the
    /// handover settle time has passed.
    fn gate_grants(&self, gained: HashSet<String>, new: &View) {
        // Under the lock `peer_synced` takes, so no report of completion falls between
        // reading who has reported and installing the gate.
        let synced = self.synced_from.lock();
        let pending: HashSet<Arc<str>> = new
            .peers()
            .map(|p| p.id.clone())
            .filter(|id| synced.get(id) != Some(&new.hash()))
            .collect();
        let gate = (!gained.is_empty() && !pending.is_empty())
            .then(|| Gate::new(gained, new.hash(), pending));
        if let Some(gate) = &gate {
            let gate = gate.clone();
            let settle = self.settings.handover_settle;
            tokio::spawn(async move {
                tokio::time::sleep(settle).await;
                gate.open();
            });
        }
        if let Some(previous) = self.gate.swap(gate) {
            previous.open();
        }
    }

    /// Reports the slots this replica holds to their owners in `new`, then tells every peer
    /// that it is done.
    fn report_held(&self, new: &Arc<View>) {
        let mut reports = Vec::new();
        self.held.for_each_mut(|held| {
            let Some((e, d)) = protocol::split_key(&held.key) else {
                return;
            };
            let Some(owner) = new.owner_id(e, d) else {
                return;
            };
            if *owner == held.grantor {
                return;
            }
            held.grantor = owner.clone();
            if *owner != self.me {
                if let Some(peer) = new.peer(owner) {
                    reports.push((peer.clone(), held.clone()));
                }
            }
        });
        self.metrics.reported.increment(reports.len() as u64);
        let Some(cluster) = self.this.upgrade() else {
            return;
        };
        let view = new.clone();
        tokio::spawn(async move {
            let reported = reports
                .into_iter()
                .map(|(peer, held)| cluster.report(peer, held));
            futures_util::future::join_all(reported).await;
            for peer in view.peers() {
                cluster.send_synced(peer, view.hash()).await;
            }
        });
    }

    /// Reports one held slot to its new owner, keeping the stream open until it is released.
    async fn report(&self, peer: Arc<Peer>, held: Held) {
        let Some(mut sender) = peer.sender() else {
            return;
        };
        let remaining = held.expires.saturating_duration_since(Instant::now());
        let request = self
            .request(protocol::ADOPT)
            .header(&protocol::DEPLOYMENT, &*held.key)
            .header(&protocol::POD, held.pod.to_string())
            .header(&protocol::LEASE_MS, remaining.as_millis().to_string())
            .body(HoldOpen::until(held.released.clone()))
            .expect("valid request");
        let sent = tokio::time::timeout(GRANT_GRACE, async {
            sender.ready().await?;
            sender.send_request(request).await
        })
        .await;
        match sent {
            Ok(Ok(response)) if response.status() == StatusCode::OK => {}
            Ok(Ok(response)) => {
                tracing::debug!(peer = %peer.id, status = %response.status(), key = %held.key, "the new owner did not take a reported slot");
            }
            _ => {
                tracing::debug!(peer = %peer.id, key = %held.key, "reporting a slot to the new owner failed")
            }
        }
    }

    async fn send_synced(&self, peer: &Arc<Peer>, view: u64) {
        let Some(mut sender) = peer.sender() else {
            return;
        };
        let request = self
            .request(protocol::SYNCED)
            .header(&protocol::VIEW, format!("{view:016x}"))
            .body(HoldOpen::empty())
            .expect("valid request");
        let _ = tokio::time::timeout(GRANT_GRACE, async {
            sender.ready().await?;
            sender.send_request(request).await
        })
        .await;
    }

    /// Records that `peer` reported its leases for `view`.
    pub(crate) fn peer_synced(&self, peer: Arc<str>, view: u64) {
        let mut synced = self.synced_from.lock();
        synced.insert(peer.clone(), view);
        if let Some(gate) = self.gate.load_full() {
            gate.peer_synced(&peer, view);
        }
        drop(synced);
    }

    /// Waits, at most until `deadline`, while a handover holds the grants of deployment
    /// `deployment` of `endpoint`.
    pub(crate) async fn wait_for_handover(
        &self,
        endpoint: &str,
        deployment: &str,
        deadline: Instant,
    ) {
        let Some(gate) = self.gate.load_full() else {
            return;
        };
        if gate.is_open() || !gate.covers(endpoint, deployment) {
            return;
        }
        gate.wait(deadline).await;
    }

    fn request(&self, path: &str) -> http::request::Builder {
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(&protocol::PEER, self.me_header.clone())
    }

    /// Whether this replica owns deployment `deployment` of `endpoint` in the current view (it
    /// admits for every replica, and the autoscaler acts for it here).
    pub fn owns(&self, endpoint: &str, deployment: &str) -> bool {
        matches!(self.view.load().owner(endpoint, deployment), Owner::Me)
    }

    /// Coordinated admission: as owner, the local queue; otherwise a grant from the owner; when
    /// the owner cannot be reached, the next owner, then the fallback.
    async fn admit(&self, target: Target<'_>, max_wait: Duration) -> Result<Slot, AdmitError> {
        let deadline = Instant::now() + max_wait;
        for _ in 0..3 {
            let view = self.view.load_full();
            let peer = match view.owner(target.endpoint, target.deployment) {
                Owner::Me => {
                    self.wait_for_handover(target.endpoint, target.deployment, deadline)
                        .await;
                    let slot = self.admit_here(target, deadline).await?;
                    self.metrics.owner.increment(1);
                    return Ok(slot);
                }
                Owner::Nobody => break,
                Owner::Peer(peer) => peer.clone(),
            };
            match self.grant_from(&peer, target, deadline, None).await {
                Ok(slot) => return Ok(slot),
                Err(GrantError::Refused(e)) => return Err(e),
                Err(GrantError::Unavailable) => break,
                Err(GrantError::PeerDown) => {
                    if peer.set_down() {
                        tracing::warn!(peer = %peer.id, "the owner's connection failed; choosing the next owner");
                    }
                    self.recompute();
                }
            }
        }
        self.metrics.fallback.increment(1);
        match self.settings.fallback {
            FallbackMode::Local => self.admit_here(target, deadline).await,
            FallbackMode::Reject => Err(AdmitError::OwnerUnreachable),
        }
    }

    /// Admits against this replica's own accounting and records the slot as held.
    async fn admit_here(&self, target: Target<'_>, deadline: Instant) -> Result<Slot, AdmitError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let mut slot = target.accounting.admit(target.pods, wait).await?;
        self.hold(&mut slot, target, self.me.clone(), CancellationToken::new());
        Ok(slot)
    }

    /// Records `slot` as held from `grantor`; `released` ends the streams that report it.
    fn hold(
        &self,
        slot: &mut Slot,
        target: Target<'_>,
        grantor: Arc<str>,
        released: CancellationToken,
    ) {
        let expires = Instant::now() + target.request_timeout + self.settings.lease_margin;
        let guard = self.held.insert(Held {
            key: protocol::key(target.endpoint, target.deployment).into(),
            pod: slot.pod().address(),
            expires,
            released,
            grantor,
        });
        slot.attach(ReleaseGuard::new(guard));
    }

    /// Asks `peer` for a slot.
    async fn grant_from(
        &self,
        peer: &Arc<Peer>,
        target: Target<'_>,
        deadline: Instant,
        exclude: Option<SocketAddr>,
    ) -> Result<Slot, GrantError> {
        let Some(mut sender) = peer.sender() else {
            return Err(GrantError::PeerDown);
        };
        let asked = Instant::now();
        let wait = deadline.saturating_duration_since(asked);
        let released = CancellationToken::new();
        // Ends the request stream (and with it a grant the owner may already have given) on
        // every way out but success, the future being dropped included.
        let release_unless_granted = released.clone().drop_guard();
        let mut request = self
            .request(protocol::GRANT)
            .header(
                &protocol::DEPLOYMENT,
                protocol::key(target.endpoint, target.deployment),
            )
            .header(&protocol::WAIT_MS, wait.as_millis().to_string());
        if let Some(pod) = exclude {
            request = request.header(&protocol::EXCLUDE, pod.to_string());
        }
        let request = request
            .body(HoldOpen::until(released.clone()))
            .expect("valid request");
        let response = tokio::time::timeout(wait + GRANT_GRACE, async {
            sender.ready().await?;
            sender.send_request(request).await
        })
        .await;
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::debug!(peer = %peer.id, %error, "grant request failed");
                return Err(GrantError::PeerDown);
            }
            Err(_) => return Err(GrantError::PeerDown),
        };
        let address = granted_pod(&peer.id, &response)?;
        self.metrics
            .grant_duration
            .record(asked.elapsed().as_secs_f64());
        self.metrics.remote.increment(1);
        // The owner's pod list may be ahead of this replica's: a pod not known here yet is
        // still the owner's choice.
        let pod = target
            .pods
            .iter()
            .find(|p| p.address() == address)
            .cloned()
            .unwrap_or_else(|| Arc::new(Pod::new(address)));
        release_unless_granted.disarm();
        let (mut slot, _) = target.accounting.force_acquire(&pod);
        self.hold(&mut slot, target, peer.id.clone(), released);
        Ok(slot)
    }

    /// A slot free now on another pod than `failed`.
    async fn retry(&self, target: Target<'_>, failed: &Arc<Pod>) -> Option<Slot> {
        let view = self.view.load_full();
        match view.owner(target.endpoint, target.deployment) {
            Owner::Peer(peer) => {
                let peer = peer.clone();
                self.grant_from(&peer, target, Instant::now(), Some(failed.address()))
                    .await
                    .ok()
            }
            Owner::Me | Owner::Nobody => {
                let mut slot = target
                    .accounting
                    .try_acquire_excluding(target.pods, Some(failed))?;
                self.hold(&mut slot, target, self.me.clone(), CancellationToken::new());
                Some(slot)
            }
        }
    }
}

impl Coordinator for Cluster {
    fn admit<'a>(
        &'a self,
        target: Target<'a>,
        max_wait: Duration,
    ) -> Pending<'a, Result<Slot, AdmitError>> {
        Box::pin(Cluster::admit(self, target, max_wait))
    }

    fn retry<'a>(&'a self, target: Target<'a>, failed: &'a Arc<Pod>) -> Pending<'a, Option<Slot>> {
        Box::pin(Cluster::retry(self, target, failed))
    }
}

/// The pod of an owner's answer to a grant request, or why there is none.
fn granted_pod(
    peer: &str,
    response: &http::Response<hyper::body::Incoming>,
) -> Result<SocketAddr, GrantError> {
    let reason = response
        .headers()
        .get(&protocol::REASON)
        .map(|v| v.as_bytes());
    if response.status() != StatusCode::OK {
        if let Some(refusal) = protocol::refusal_of(response.status(), reason) {
            return Err(GrantError::Refused(refusal));
        }
        tracing::debug!(%peer, status = %response.status(), "the owner cannot grant slots of this deployment now");
        return Err(GrantError::Unavailable);
    }
    response
        .headers()
        .get(&protocol::POD)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<SocketAddr>().ok())
        .ok_or(GrantError::Unavailable)
}

/// A cluster dropped without [`Cluster::stop`] (a router whose start failed later) still
/// stops reconnecting to its peers.
impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address other replicas reach this one at.
fn advertised_address(config: &ClusterConfig, bound: SocketAddr) -> anyhow::Result<SocketAddr> {
    if let Some(address) = config.advertise {
        return Ok(address);
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let pod_ip = std::env::var("POD_IP").map_err(|_| {
        anyhow::anyhow!(
            "field `cluster.advertise`: the cluster port listens on {bound}, which peers cannot dial: \
             set `cluster.advertise` to this replica's address, or the POD_IP environment variable \
             (the downward API's status.podIP)"
        )
    })?;
    let ip = pod_ip.parse().map_err(|_| {
        anyhow::anyhow!(
            "POD_IP is `{pod_ip}`, not an IP address: set it from the downward API's status.podIP"
        )
    })?;
    Ok(SocketAddr::new(ip, bound.port()))
}

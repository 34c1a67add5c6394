//! Coordinated admission across router replicas, so the per-pod cap holds cluster-wide.
//!
//! azureml-fe lets one replica own the slot accounting of a deployment; the others ask it for a
//! pod and tell it when the pod is free again (`docs/ARCHITECTURE.md`, "Coordinated
//! admission", which also gives the fencing argument and the windows that remain).
//!
//! | module | concern |
//! |---|---|
//! | [`peers`] | one authenticated HTTP/2 connection per peer, a hello every heartbeat |
//! | [`announce`] | what a replica says about itself in every hello |
//! | [`membership`] | the members: the largest group that all reach each other; majorities |
//! | [`view`], [`ring`] | a view (epoch, members) and the owner of each deployment in it |
//! | [`acting`] | fencing: the lease, the settling time and the reports an owner needs to act |
//! | [`takeover`] | deployments of an owner that left the view alive: held until it is done |
//! | [`shadow`] | an owner's own slots, known to the replica that would take over |
//! | [`reports`] | reporting held slots to the replicas that own them in their views |
//! | [`health`] | stalls, refused credentials, isolation and the readiness reason |
//! | [`admit`] | the request path: own, ask the owner, wait, or fall back |
//! | [`server`], [`protocol`], [`credential`] | the internal port and what travels on it |
//! | [`lease`] | leases on both sides: the owner's hold, the requester's registry |
//! | [`kube_peers`] | the replica list from the router Service's EndpointSlices |
//!
//! [`Cluster`] is the [`crate::admission::Coordinator`] behind
//! [`crate::admission::Admitter::Coordinated`]: the request path admits through it when a
//! `cluster` section is configured.

pub mod acting;
pub mod admit;
pub mod announce;
pub mod credential;
pub mod health;
pub mod held;
pub mod kube_peers;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod peers;
pub mod protocol;
pub mod reports;
pub mod ring;
pub mod server;
pub mod shadow;
pub mod takeover;
pub mod view;
pub mod view_id;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::{ReleaseGuard, Slot, Target};
use crate::config::{ClusterConfig, FallbackMode};
use crate::table::{Readiness, TableHandle};

pub use lease::LeaseGuard;

use acting::{Acting, Inbound};
use announce::Announce;
use credential::Credential;
use health::Health;
use lease::{Held, HeldLeases, LeaseCounters, Leases};
use metrics::ClusterMetrics;
use peers::{Peer, PeerContext};
use reports::Rounds;
use view::{Owner, View};

/// Settings of coordinated admission.
#[derive(Clone, Debug)]
struct Settings {
    fallback: FallbackMode,
    lease_margin: Duration,
    heartbeat: Duration,
    /// Also the length of a lease on a view.
    peer_timeout: Duration,
    isolation_after: Duration,
}

impl Settings {
    /// The longest a slot of a deployment whose `request_timeout_ms` is `request_timeout` can
    /// stay taken anywhere in the cluster: an abandoned request keeps its slot until the pod is
    /// done, at most twice its timeout (`upstream::abandon`), and a lease a holder never
    /// released outlives that by `lease_margin_ms`. A lease must not expire before its holder
    /// can still be using the pod, and a new owner waits this long for the slots of an owner
    /// that left alive (`docs/ARCHITECTURE.md`, "Coordinated admission").
    fn slot_life(&self, request_timeout: Duration) -> Duration {
        request_timeout * 2 + self.lease_margin
    }

    fn of(config: &ClusterConfig) -> Settings {
        Settings {
            fallback: config.fallback,
            lease_margin: Duration::from_millis(config.lease_margin_ms),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            peer_timeout: Duration::from_millis(config.peer_timeout_ms),
            isolation_after: Duration::from_millis(config.isolation_after_ms),
        }
    }
}

/// This replica's part of the cluster.
pub struct Cluster {
    /// This cluster itself, for the tasks it starts.
    this: Weak<Cluster>,
    me: Arc<str>,
    me_header: HeaderValue,
    instance: u64,
    credential: Arc<Credential>,
    settings: Settings,
    peers: Mutex<HashMap<Arc<str>, Arc<Peer>>>,
    peer_context: Arc<PeerContext>,
    view: ArcSwap<View>,
    acting: ArcSwap<Acting>,
    recompute_lock: Mutex<()>,
    held: Arc<HeldLeases>,
    leases: Arc<Leases>,
    next_lease: std::sync::atomic::AtomicU64,
    inbound: Inbound,
    suspects: takeover::Suspects,
    rounds: Rounds,
    health: Health,
    changes: watch::Sender<u64>,
    table: TableHandle,
    readiness: Readiness,
    draining: CancellationToken,
    stopped: CancellationToken,
    metrics: ClusterMetrics,
    peaks: metrics::PodPeaks,
    registry: crate::telemetry::Metrics,
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
        registry: &crate::telemetry::Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        let credential =
            Arc::new(Credential::load(config.secret_file.as_deref()).map_err(anyhow::Error::msg)?);
        let me: Arc<str> = advertised_address(config, bound)?.to_string().into();
        let me_header = HeaderValue::from_str(&me).expect("an address is a header value");
        let metrics = ClusterMetrics::new(registry);
        let settings = Settings::of(config);
        if config.handover_settle_ms.is_some() {
            tracing::warn!(
                "cluster.handover_settle_ms is no longer used (a new owner waits for every \
                 replica that can reach it to report its slots): remove it"
            );
        }
        let cluster = Arc::new_cyclic(|this: &Weak<Cluster>| {
            let peer_context = peer_context(this, &me_header, &credential, &metrics, &settings);
            Cluster {
                this: this.clone(),
                view: ArcSwap::from_pointee(View::empty(me.clone())),
                acting: ArcSwap::from_pointee(Acting::none()),
                me,
                me_header,
                instance: fastrand::u64(1..),
                credential,
                settings,
                peers: Mutex::new(HashMap::new()),
                peer_context,
                recompute_lock: Mutex::new(()),
                held: Arc::new(HeldLeases::default()),
                leases: Leases::new(LeaseCounters {
                    expired: metrics.expiries.clone(),
                    vanished: metrics.vanished.clone(),
                }),
                next_lease: std::sync::atomic::AtomicU64::new(1),
                inbound: Inbound::default(),
                suspects: takeover::Suspects::default(),
                rounds: Rounds::default(),
                health: Health::default(),
                changes: watch::Sender::new(0),
                table,
                readiness,
                draining,
                stopped: CancellationToken::new(),
                metrics,
                peaks: metrics::PodPeaks::default(),
                registry: registry.clone(),
            }
        });
        let weak = Arc::downgrade(&cluster);
        registry.refresh_at_scrape(move || {
            if let Some(cluster) = weak.upgrade() {
                cluster.export_pod_peaks();
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

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Whether this replica may own deployments: it has routes and is not draining.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_loaded() && !self.draining.is_cancelled()
    }

    /// Why this replica should not get traffic, if it should not: its peers refuse its
    /// credential, or it has had no agreed majority view for `cluster.isolation_after_ms`.
    /// It then admits only under `cluster.fallback`.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.health.reason()
    }

    /// Whether this replica acts for deployment `deployment` of `endpoint` now: it owns it in
    /// its view, holds a lease on that view and the view has settled. Cheap (two atomic loads
    /// and a hash per member); the autoscaler and status writers call it before every write.
    pub fn owns(&self, endpoint: &str, deployment: &str) -> bool {
        let view = self.view.load();
        let acting = self.acting.load();
        matches!(view.owner(endpoint, deployment), Owner::Me)
            && acting.view == view.id()
            && acting.owns_at(Instant::now())
    }

    /// Whether this replica acts for the cluster as a whole now (writes what no deployment owner
    /// writes): it is the lowest-named member of its view, holds a lease on it, and the view has
    /// settled. At most one replica does, as for [`Cluster::owns`].
    pub fn leads(&self) -> bool {
        let view = self.view.load();
        let acting = self.acting.load();
        view.members().first() == Some(&self.me)
            && acting.view == view.id()
            && acting.owns_at(Instant::now())
    }

    /// [`Cluster::owns`], and every replica that can reach this one has reported its slots for
    /// the view: this replica grants slots of the deployment now.
    pub fn grants(&self, endpoint: &str, deployment: &str) -> bool {
        let view = self.view.load();
        let timeout = self
            .table
            .load()
            .endpoint(endpoint)
            .and_then(|e| e.deployment_named(deployment.as_bytes()))
            .map_or(Duration::ZERO, |d| d.settings.request_timeout);
        matches!(view.owner(endpoint, deployment), Owner::Me)
            && self.grants_in(view.id())
            && self.held_back(endpoint, deployment, timeout).is_none()
    }

    /// Until when this replica, the owner, must not grant slots of `endpoint/deployment`
    /// (whose `request_timeout_ms` is `request_timeout`): an owner that left the view alive
    /// may still have requests on its pods ([`takeover`]). `None` when it may.
    pub(crate) fn held_back(
        &self,
        endpoint: &str,
        deployment: &str,
        request_timeout: Duration,
    ) -> Option<Instant> {
        if self.suspects.is_empty() {
            return None;
        }
        let life = self.settings.slot_life(request_timeout);
        self.suspects
            .hold_until(&self.me, endpoint, deployment, life)
    }

    /// Starts the heartbeat check. Peers come from [`Cluster::set_peers`].
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(health::run(Arc::downgrade(self), self.settings.heartbeat))
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
                    self.rounds.forget(id);
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

    /// Sets each routed pod's peak gauge ([`metrics::names::POD_PEAK`], from
    /// [`metrics::PodPeaks`]); run at every scrape.
    fn export_pod_peaks(&self) {
        let table = self.table.load();
        for deployment in table.endpoints().flat_map(|e| e.deployments.iter()) {
            for pod in deployment.pods.iter() {
                let address = pod.address().to_string();
                let labels = [
                    ("endpoint", &*deployment.endpoint),
                    ("deployment", &*deployment.name),
                    ("pod", address.as_str()),
                ];
                self.registry
                    .gauge(metrics::names::POD_PEAK, &labels)
                    .set(f64::from(self.peaks.of(pod.address())));
            }
        }
    }

    /// Recomputes the view from the live peers and what they said, then what this replica may
    /// do in it; starts the report rounds that became due.
    pub fn recompute(&self) {
        {
            let _one_at_a_time = self.recompute_lock.lock();
            let all: Vec<Arc<Peer>> = self.peers.lock().values().cloned().collect();
            let live: Vec<Arc<Peer>> = all.iter().filter(|p| p.is_live()).cloned().collect();
            let old = self.view.load_full();
            if let Some(new) = self.next_view(&old, &live) {
                if new.id() != old.id() {
                    self.view_changed(&old, &new);
                }
                self.view.store(Arc::new(new));
            }
            self.update_acting(&all);
            self.clear_suspects(&all);
        }
        self.start_rounds();
    }

    /// The view `live` gives, when it differs from `old` (members, epoch, peers or majority).
    fn next_view(&self, old: &View, live: &[Arc<Peer>]) -> Option<View> {
        let heard: Vec<(Arc<str>, Arc<peers::Heard>)> = live
            .iter()
            .filter_map(|p| p.heard().map(|h| (p.id.clone(), h)))
            .collect();
        let reach: Vec<membership::Reach<'_>> = heard
            .iter()
            .map(|(id, h)| membership::Reach {
                id,
                live: &h.state.live,
            })
            .collect();
        let members = membership::members(&self.me, self.is_ready(), &reach);
        let quorum = members.len() >= membership::majority(self.known_replicas());
        let same_members_epoch = heard
            .iter()
            .filter(|(_, h)| h.state.members == members)
            .map(|(_, h)| h.state.view.epoch)
            .max();
        if !old.same_members(&members) {
            let newest = heard.iter().map(|(_, h)| h.state.view.epoch).max();
            let epoch = match same_members_epoch {
                Some(theirs) if theirs > old.id().epoch => theirs,
                _ => old.id().epoch.max(newest.unwrap_or(0)) + 1,
            };
            return Some(View::new(self.me.clone(), epoch, members, live, quorum));
        }
        if let Some(theirs) = same_members_epoch.filter(|e| *e > old.id().epoch) {
            return Some(old.at_epoch(theirs).refreshed(live, quorum));
        }
        (!old.same_peers(live) || old.has_quorum() != quorum).then(|| old.refreshed(live, quorum))
    }

    /// Forgets the replicas that left the view alive ([`takeover`]) once they are done: back
    /// in the view, reported for it, known to have died, off the replica list, or gone so long
    /// that no slot of theirs can be left.
    fn clear_suspects(&self, all: &[Arc<Peer>]) {
        if self.suspects.is_empty() {
            return;
        }
        let view = self.view.load();
        let longest = self
            .settings
            .slot_life(Duration::from_millis(crate::model::MAX_REQUEST_TIMEOUT_MS))
            + self.settings.peer_timeout;
        let known_changed = self
            .suspects
            .set_known(|suspect| self.slots_known(suspect, &view));
        let cleared = self.suspects.clear(|suspect| {
            let peer = all.iter().find(|p| p.id == suspect.id);
            if view.members().contains(&suspect.id) {
                Some("it is back in the view (and reports before anything is granted)")
            } else if self.inbound.synced_for(&suspect.id) == Some(view.id()) {
                Some("it reported the slots it holds")
            } else if peer.is_none() {
                Some("it left the replica list")
            } else if peer.is_some_and(|p| p.is_gone()) {
                Some("its port refuses connections: it died, and only what it had on the pods then may still run")
            } else if suspect.since.elapsed() > longest {
                Some("no slot of its can be left")
            } else {
                None
            }
        });
        if cleared || known_changed {
            self.notify();
        }
    }

    fn view_changed(&self, old: &View, new: &View) {
        let left = old
            .members()
            .iter()
            .filter(|m| **m != self.me && !new.members().contains(m))
            .cloned();
        self.suspects.left(left);
        let taken_over = self.taken_over(old, new);
        if taken_over > 0 {
            self.metrics.handovers.increment(taken_over as u64);
        }
        self.metrics.members.set(new.members().len() as f64);
        self.metrics.epoch.set(new.id().epoch as f64);
        self.metrics.view_changes.increment(1);
        if old.same_members(new.members()) {
            tracing::info!(view = %new.id(), "the view's epoch moved on (a peer saw a change this replica missed)");
        } else {
            tracing::info!(
                members = ?new.members(), view = %new.id(), quorum = new.has_quorum(),
                member = new.me_member(), taken_over, "the live replicas changed"
            );
        }
    }

    /// How many routed deployments this replica owns in `new` and did not in `old`.
    fn taken_over(&self, old: &View, new: &View) -> usize {
        let table = self.table.load();
        table
            .endpoints()
            .flat_map(|endpoint| endpoint.deployments.iter())
            .filter(|d| {
                let (e, n) = (&*d.endpoint, &*d.name);
                new.owner_id(e, n) == Some(&self.me) && old.owner_id(e, n) != Some(&self.me)
            })
            .count()
    }

    /// Recomputes [`Acting`] for the current view; wakes waiters when it changed.
    fn update_acting(&self, all: &[Arc<Peer>]) {
        let view = self.view.load_full();
        let peers: HashMap<Arc<str>, Arc<Peer>> =
            all.iter().map(|p| (p.id.clone(), p.clone())).collect();
        let unreported = self.inbound.unreported(
            view.id(),
            view.members(),
            &self.me,
            self.settings.peer_timeout,
        );
        let acting = Acting::of(
            &view,
            &self.me,
            acting::heard_of(&peers),
            self.settings.peer_timeout,
            unreported,
        );
        if let Some(from) = acting.from {
            self.suspects.settled(from);
        }
        let old = self.acting.load();
        let changed = old.view != acting.view
            || old.from != acting.from
            || old.unreported != acting.unreported
            || (old.lease == acting::Lease::Lapsed) != (acting.lease == acting::Lease::Lapsed);
        self.acting.store(Arc::new(acting));
        if changed {
            self.notify();
        }
    }

    /// Wakes every request waiting for the cluster's state to change.
    fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// This replica's state, as announced to `peer` in a hello (either way).
    pub(crate) fn announce_to(&self, peer: &str) -> Announce {
        let view = self.view.load();
        let peer_instance = self
            .peers
            .lock()
            .get(peer)
            .and_then(|p| p.heard())
            .map(|h| h.state.instance);
        Announce {
            instance: self.instance,
            ready: self.is_ready(),
            view: view.id(),
            members: view.members().to_vec(),
            quorum: view.has_quorum(),
            live: view.peers().map(|p| p.id.clone()).collect(),
            age: view.installed().elapsed(),
            synced: peer_instance.and_then(|i| self.rounds.done_for(peer, i)),
            own_slots_at: self.held.own_slots_at(&self.me),
        }
    }

    /// The connection to `peer` broke: the slots it granted this replica, and the reports of
    /// slots to it, are to be reported again once it is back.
    fn disconnected(&self, peer: &str) {
        if self.held.disconnected(peer) > 0 {
            self.rounds.again();
        }
    }

    /// Records a hello from `peer` (on a connection that proved the credential).
    pub(crate) fn heard_hello(&self, peer: &str, announce: &Announce) {
        if self.inbound.hello(peer, announce) {
            self.recompute();
        }
    }

    /// Records that `peer` reported its slots for `view` (its `/v1/synced`).
    pub(crate) fn peer_synced(&self, peer: &str, view: view_id::ViewId) {
        self.inbound.synced(peer, view);
        self.recompute();
    }

    fn request(&self, path: &str) -> http::request::Builder {
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(&protocol::PEER, self.me_header.clone())
            .header(&announce::INSTANCE, self.instance)
    }

    /// Records `slot` as held, obtained as `how` says; returns the registry's entry.
    fn hold(&self, slot: &mut Slot, target: Target<'_>, how: Holding) -> Held {
        // As long as the owner keeps the lease (`Settings::slot_life`).
        let expires = Instant::now() + self.settings.slot_life(target.request_timeout);
        let (guard, held) = self.held.insert(Held {
            id: 0,
            key: protocol::key(target.endpoint, target.deployment).into(),
            pod: slot.pod().address(),
            expires,
            released: how.released,
            grantor: how.grantor,
            lease: how.lease,
            fallback: how.fallback,
            orphaned: false,
            reported_to: Vec::new(),
            shadow_of: None,
            shadowing: how.shadowing,
        });
        slot.attach(ReleaseGuard::new(guard));
        held
    }
}

/// How a held slot was obtained ([`Cluster::hold`]).
struct Holding {
    /// The replica whose accounting counts it (this one for its own admissions).
    grantor: Arc<str>,
    /// The grantor's number for the lease, when another replica granted it.
    lease: Option<u64>,
    /// Cancelled when the slot is released: ends the streams that report it.
    released: CancellationToken,
    /// Admitted under `cluster.fallback`.
    fallback: bool,
    /// Admitted as owner just now, its shadow on its way ([`shadow`]).
    shadowing: bool,
}

impl Holding {
    /// A slot this replica (`me`) admitted from its own accounting: as owner (then shadowed at
    /// its successor before it goes to the pod), or under `cluster.fallback`.
    fn own(me: Arc<str>, fallback: bool) -> Self {
        Holding {
            grantor: me,
            lease: None,
            released: CancellationToken::new(),
            fallback,
            shadowing: !fallback,
        }
    }
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

/// What the peers' connection tasks of `cluster` are given: calls back into it by a weak
/// reference (a peer task never keeps the cluster alive).
fn peer_context(
    cluster: &Weak<Cluster>,
    me: &HeaderValue,
    credential: &Arc<Credential>,
    metrics: &ClusterMetrics,
    settings: &Settings,
) -> Arc<PeerContext> {
    let (changed, announce, gone) = (cluster.clone(), cluster.clone(), cluster.clone());
    Arc::new(PeerContext {
        me: me.clone(),
        credential: credential.clone(),
        announce: Arc::new(move |peer: &str| {
            announce
                .upgrade()
                .map(|c| c.announce_to(peer))
                .unwrap_or_default()
        }),
        changed: Arc::new(move || {
            if let Some(cluster) = changed.upgrade() {
                cluster.recompute();
            }
        }),
        disconnected: Arc::new(move |peer: &str| {
            if let Some(cluster) = gone.upgrade() {
                cluster.disconnected(peer);
            }
        }),
        refused: metrics.refused.clone(),
        heartbeat: settings.heartbeat,
        timeout: settings.peer_timeout,
    })
}

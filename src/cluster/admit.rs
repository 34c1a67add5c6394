//! The request path through the cluster: a slot from this replica's accounting when it acts as
//! the owner, a grant from the owner otherwise, a wait while the view settles, and the fallback
//! only for requests that arrive while this replica is isolated (or when the owner does not
//! route the deployment).
//!
//! Fencing on the asker's side: a grant from an owner at an older epoch than this replica's
//! view is ignored, and so is one that arrives after this replica's view changed (its report
//! round may have missed it); the request then asks again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio_util::sync::CancellationToken;

use super::held::HoldOpen;
use super::peers::Peer;
use super::view::{Owner, View};
use super::view_id::ViewId;
use super::{protocol, Cluster, Holding};
use crate::admission::{AdmitError, Coordinator, Pending, Pod, Slot, Target};
use crate::config::FallbackMode;

/// Extra time a remote grant may take beyond the request's queue budget before the owner is
/// treated as unreachable.
const GRANT_GRACE: Duration = Duration::from_secs(1);

/// What one attempt came to.
enum Step {
    Admitted(Slot),
    /// A client-facing refusal (429, 503): the same at the owner as here.
    Refused(AdmitError),
    /// The owner cannot serve the deployment (it does not route it): the fallback decides.
    Fallback,
    /// Try again once the view or this replica's standing changed.
    Again,
}

/// What an owner granted: the pod, and its number for the lease.
struct Grant {
    pod: SocketAddr,
    lease: u64,
}

/// Why a remote grant did not give a slot.
enum GrantError {
    /// The owner answered with a client-facing refusal (429, 503): it means the same here.
    Refused(AdmitError),
    /// The owner's connection failed: mark it down, ask the next owner.
    PeerDown,
    /// The owner does not route this deployment.
    Unknown,
    /// Not now: the owner does not own it in its view, is not ready, or is at an older epoch.
    NotNow,
}

impl Cluster {
    /// Coordinated admission (see the module's documentation).
    async fn admit(&self, target: Target<'_>, max_wait: Duration) -> Result<Slot, AdmitError> {
        let deadline = Instant::now() + max_wait;
        // Only a request that arrives while this replica is isolated takes the fallback: one
        // that was already waiting for the view to settle keeps waiting (admitting it on this
        // replica's own cap now could put it on a pod the majority has since granted).
        if self.health.is_isolated() {
            return self.fallback(target, deadline).await;
        }
        loop {
            let view = self.view.load_full();
            let step = match view.owner(target.endpoint, target.deployment) {
                Owner::Nobody => Step::Fallback,
                Owner::Me => self.admit_as_owner(target, &view, deadline).await,
                Owner::Peer(peer) => self.ask(peer.clone(), target, &view, deadline).await,
            };
            match step {
                Step::Admitted(slot) => return Ok(slot),
                Step::Refused(error) => return Err(error),
                Step::Fallback => return self.fallback(target, deadline).await,
                Step::Again if Instant::now() >= deadline => return Err(AdmitError::QueueTimeout),
                Step::Again => self.wait_for_change(view.id(), deadline).await,
            }
        }
    }

    /// As the owner: the local queue, once this replica acts (lease, settled, reports in).
    async fn admit_as_owner(&self, target: Target<'_>, view: &View, deadline: Instant) -> Step {
        if !self.grants_in(view.id()) || self.holds_back(target) {
            return Step::Again;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let admitted = tokio::select! {
            admitted = target.accounting.admit_keyed(target.pods, target.prefix, wait) => admitted,
            () = self.stops_granting(view.id()) => return Step::Again,
        };
        let mut slot = match admitted {
            Ok(slot) => slot,
            Err(error) => return Step::Refused(error),
        };
        // The lease may have run out while the request waited (or the process was stopped).
        if !self.grants_in(view.id()) {
            return Step::Again;
        }
        if !self.own_admission(&mut slot, target, view).await {
            return Step::Again;
        }
        self.metrics.owner.increment(1);
        Step::Admitted(slot)
    }

    /// Records `slot`, just admitted as the owner in `view`, as held, and shadows it at the
    /// replica that would take over ([`super::shadow`]) before it goes to the pod. False when
    /// that replica did not take it, or this replica's lease ran out meanwhile: the slot is
    /// then to be given back.
    async fn own_admission(&self, slot: &mut Slot, target: Target<'_>, view: &View) -> bool {
        let held = self.hold(slot, target, Holding::own(self.me.clone(), false));
        if !self.shadow_new(view, held).await || !self.grants_in(view.id()) {
            return false;
        }
        self.peaks.record(slot.pod());
        true
    }

    /// Whether the target's deployment is held back from grants here ([`Cluster::held_back`]).
    fn holds_back(&self, target: Target<'_>) -> bool {
        self.held_back(target.endpoint, target.deployment, target.request_timeout)
            .is_some()
    }

    /// Admits under `cluster.fallback`: this replica's own cap, or 503.
    async fn fallback(&self, target: Target<'_>, deadline: Instant) -> Result<Slot, AdmitError> {
        self.metrics.fallback.increment(1);
        match self.settings.fallback {
            FallbackMode::Reject => Err(AdmitError::OwnerUnreachable),
            FallbackMode::Local => {
                let wait = deadline.saturating_duration_since(Instant::now());
                let mut slot = target
                    .accounting
                    .admit_keyed(target.pods, target.prefix, wait)
                    .await?;
                self.hold_own(&mut slot, target);
                self.peaks.record(slot.pod());
                // Reported to whoever owns the deployment and can be reached, so the owner
                // counts it (and sees the over-admission, if it is one).
                self.rounds.again();
                self.start_rounds();
                Ok(slot)
            }
        }
    }

    /// Records `slot`, admitted from this replica's own accounting under the fallback, as held.
    fn hold_own(&self, slot: &mut Slot, target: Target<'_>) {
        self.hold(slot, target, Holding::own(self.me.clone(), true));
    }

    /// Whether this replica grants in view `view` now.
    pub(crate) fn grants_in(&self, view: ViewId) -> bool {
        let acting = self.acting.load();
        acting.view == view && self.view.load().id() == view && acting.grants_at(Instant::now())
    }

    /// Resolves when this replica stops granting in view `view` (checked on every change, and
    /// every heartbeat for a lease running out).
    pub(crate) async fn stops_granting(&self, view: ViewId) {
        let mut changes = self.changes.subscribe();
        loop {
            if !self.grants_in(view) {
                return;
            }
            let _ = tokio::time::timeout(self.settings.heartbeat, changes.changed()).await;
        }
    }

    /// Waits until the view is no longer `seen`, this replica's state changed, settling may
    /// have ended, or `deadline`; at most a heartbeat, so a lease that lapses is noticed.
    pub(crate) async fn wait_for_change(&self, seen: ViewId, deadline: Instant) {
        let mut changes = self.changes.subscribe();
        if self.view.load().id() != seen {
            return;
        }
        let now = Instant::now();
        let mut until = deadline.min(now + self.settings.heartbeat);
        if let Some(wake) = self.acting.load().wake_at(now) {
            until = until.min(wake);
        }
        let _ = tokio::time::timeout_at(until.into(), changes.changed()).await;
    }

    /// Asks `peer`, the owner in `view`, for a slot.
    async fn ask(
        &self,
        peer: Arc<Peer>,
        target: Target<'_>,
        view: &View,
        deadline: Instant,
    ) -> Step {
        let asked_in = self.rounds.generation();
        let granted = tokio::select! {
            granted = self.grant_from(&peer, target, view.id(), deadline, None) => granted,
            () = self.owner_moves(target, &peer, view.id()) => return Step::Again,
        };
        let (grant, released) = match granted {
            Ok(granted) => granted,
            Err(GrantError::Refused(error)) => return Step::Refused(error),
            Err(GrantError::Unknown) => return Step::Fallback,
            Err(GrantError::NotNow) => return Step::Again,
            Err(GrantError::PeerDown) => {
                if peer.set_down() {
                    tracing::warn!(peer = %peer.id, "the owner's connection failed; choosing the next owner");
                }
                self.recompute();
                return Step::Again;
            }
        };
        let Some(slot) = self.take_granted(target, &peer, grant, released, view.id(), asked_in)
        else {
            return Step::Again;
        };
        self.metrics.remote.increment(1);
        Step::Admitted(slot)
    }

    /// Counts a granted slot here and records it as held. `None` when this replica's view moved
    /// on meanwhile: its reports for the new view may have missed the slot, so it is given back.
    fn take_granted(
        &self,
        target: Target<'_>,
        peer: &Arc<Peer>,
        grant: Grant,
        released: CancellationToken,
        asked: ViewId,
        asked_in: u64,
    ) -> Option<Slot> {
        let Grant {
            pod: address,
            lease,
        } = grant;
        // The owner's pod list may be ahead of this replica's: a pod not known here yet is
        // still the owner's choice.
        let pod = target
            .pods
            .iter()
            .find(|p| p.address() == address)
            .cloned()
            .unwrap_or_else(|| Arc::new(Pod::new(address)));
        let (mut slot, _) = target.accounting.force_acquire(&pod);
        self.hold(
            &mut slot,
            target,
            Holding {
                grantor: peer.id.clone(),
                lease: Some(lease),
                released,
                fallback: false,
                shadowing: false,
            },
        );
        if self.view.load().id() != asked {
            // Dropping the slot ends the lease stream: the owner frees it.
            return None;
        }
        if self.rounds.generation() != asked_in {
            // A round to some peer read the registry while this grant was on its way.
            self.rounds.again();
            self.start_rounds();
        }
        Some(slot)
    }

    /// Resolves when the owner of the target's deployment is no longer `peer` (so a request
    /// waiting on a stalled owner asks the new one).
    async fn owner_moves(&self, target: Target<'_>, peer: &Arc<Peer>, seen: ViewId) {
        let mut changes = self.changes.subscribe();
        loop {
            let view = self.view.load();
            if view.id() != seen {
                match view.owner(target.endpoint, target.deployment) {
                    Owner::Peer(owner) if Arc::ptr_eq(owner, peer) => {}
                    _ => return,
                }
            }
            let _ = changes.changed().await;
        }
    }

    /// Asks `peer` for a slot: the pod, and the token whose cancellation releases the lease.
    async fn grant_from(
        &self,
        peer: &Arc<Peer>,
        target: Target<'_>,
        view: ViewId,
        deadline: Instant,
        exclude: Option<SocketAddr>,
    ) -> Result<(Grant, CancellationToken), GrantError> {
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
            .header(&protocol::WAIT_MS, wait.as_millis().to_string())
            .header(&protocol::VIEW, view.encode());
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
        let grant = self.granted(&peer.id, &response)?;
        self.metrics
            .grant_duration
            .record(asked.elapsed().as_secs_f64());
        release_unless_granted.disarm();
        Ok((grant, released))
    }

    /// The grant in an owner's answer, or why there is none. An answer from an older epoch
    /// than this replica's view is ignored (dropping it releases the grant).
    fn granted(
        &self,
        peer: &str,
        response: &http::Response<hyper::body::Incoming>,
    ) -> Result<Grant, GrantError> {
        let reason = response
            .headers()
            .get(&protocol::REASON)
            .map(|v| v.as_bytes());
        if response.status() != StatusCode::OK {
            if let Some(refusal) = protocol::refusal_of(response.status(), reason) {
                return Err(GrantError::Refused(refusal));
            }
            if reason == Some(protocol::REASON_UNKNOWN_DEPLOYMENT.as_bytes()) {
                return Err(GrantError::Unknown);
            }
            tracing::debug!(%peer, status = %response.status(), reason = ?reason.map(String::from_utf8_lossy), "the owner cannot grant slots of this deployment now");
            return Err(GrantError::NotNow);
        }
        let theirs = response
            .headers()
            .get(&protocol::VIEW)
            .and_then(|v| v.to_str().ok())
            .and_then(ViewId::decode);
        let mine = self.view.load().id();
        if theirs.is_none_or(|theirs| theirs.epoch < mine.epoch) {
            self.metrics.stale_grants.increment(1);
            tracing::debug!(%peer, theirs = ?theirs, %mine, "ignored a grant from an older epoch");
            return Err(GrantError::NotNow);
        }
        let header =
            |name: &http::HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok());
        let pod = header(&protocol::POD).and_then(|v| v.parse::<SocketAddr>().ok());
        let lease = header(&protocol::LEASE).and_then(|v| v.parse::<u64>().ok());
        match (pod, lease) {
            (Some(pod), Some(lease)) => Ok(Grant { pod, lease }),
            _ => Err(GrantError::NotNow),
        }
    }

    /// A slot free now on another pod than `failed`.
    async fn retry(&self, target: Target<'_>, failed: &Arc<Pod>) -> Option<Slot> {
        if self.health.is_isolated() {
            return match self.settings.fallback {
                FallbackMode::Reject => None,
                FallbackMode::Local => self.retry_fallback(target, failed),
            };
        }
        let view = self.view.load_full();
        match view.owner(target.endpoint, target.deployment) {
            Owner::Peer(peer) => {
                let peer = peer.clone();
                let asked_in = self.rounds.generation();
                let (address, released) = self
                    .grant_from(
                        &peer,
                        target,
                        view.id(),
                        Instant::now(),
                        Some(failed.address()),
                    )
                    .await
                    .ok()?;
                self.take_granted(target, &peer, address, released, view.id(), asked_in)
            }
            Owner::Me if self.grants_in(view.id()) && !self.holds_back(target) => {
                let mut slot = target
                    .accounting
                    .try_acquire_excluding(target.pods, Some(failed))?;
                self.own_admission(&mut slot, target, &view)
                    .await
                    .then_some(slot)
            }
            Owner::Me | Owner::Nobody => None,
        }
    }

    fn retry_fallback(&self, target: Target<'_>, failed: &Arc<Pod>) -> Option<Slot> {
        let mut slot = target
            .accounting
            .try_acquire_excluding(target.pods, Some(failed))?;
        self.hold_own(&mut slot, target);
        self.peaks.record(slot.pod());
        Some(slot)
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

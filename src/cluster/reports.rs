//! Reporting held slots to the replicas that own them now.
//!
//! Each replica follows every peer's view from its hellos. When a peer's view changes, this
//! replica reports to it every slot it holds of a deployment that view gives to that peer (its
//! own requests, whoever granted them, fallback admissions included), unless the peer granted
//! the slot itself or has it already; then it tells the peer it is done for that view
//! (`/v1/synced`, and in every later hello). A new owner grants nothing before every replica
//! that can reach it has done so ([`super::acting`]).
//!
//! Reports follow the peer's view, not this replica's: a replica left out of the others' view
//! by a partial partition still reports to the owners they chose. A round for a peer's view
//! waits until this replica has taken the same view (or is not in it), so a slot granted in the
//! old view is either in the registry when the round reads it or refused by the view check in
//! [`super::Cluster::hold`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use parking_lot::Mutex;

use super::lease::{Held, HoldOpen};
use super::peers::Peer;
use super::ring;
use super::view::owner_among as owner_in;
use super::view_id::ViewId;
use super::{protocol, Cluster};

/// Time a report (its response head) may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the rounds to each peer stand.
#[derive(Default)]
pub struct Rounds {
    peers: Mutex<HashMap<Arc<str>, PeerRounds>>,
    /// Bumped when a round starts reading the registry.
    generation: AtomicU64,
    /// The highest epoch of a view a round read the registry for ([`Rounds::read_for_later`]).
    read_epoch: AtomicU64,
}

#[derive(Default)]
struct PeerRounds {
    instance: u64,
    /// The peer's view this replica has reported everything for.
    done: Option<ViewId>,
    /// The peer's view a round is due for, and when it was first seen.
    due: Option<(ViewId, Instant)>,
    /// Another round must follow the running one.
    again: bool,
    running: bool,
}

impl Rounds {
    /// The peer's view this replica has reported every slot for (its `synced`).
    pub fn done_for(&self, peer: &str, instance: u64) -> Option<ViewId> {
        let peers = self.peers.lock();
        peers
            .get(peer)
            .filter(|r| r.instance == instance)
            .and_then(|r| r.done)
    }

    /// The registry generation (see [`Cluster::hold`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether a round for a view later than `view` (a higher epoch) has read the registry: a
    /// shadow of a slot admitted in `view` taken now could be missing from what that round
    /// reported, so it is refused ([`super::shadow`]). Epochs only grow: a view that takes over
    /// from `view` has a higher one.
    pub fn read_for_later(&self, view: ViewId) -> bool {
        self.read_epoch.load(Ordering::SeqCst) > view.epoch
    }

    /// Marks every peer for one more round (a slot was added that a round may have missed).
    pub fn again(&self) {
        for rounds in self.peers.lock().values_mut() {
            rounds.again = true;
        }
    }

    /// Forgets a peer that left the list.
    pub fn forget(&self, peer: &str) {
        self.peers.lock().remove(peer);
    }
}

impl Cluster {
    /// Starts the report rounds that are due: to each live peer whose view changed (once this
    /// replica took that view too, or is not in it, or a moment has passed), and those marked
    /// by [`Rounds::again`].
    pub(crate) fn start_rounds(&self) {
        let mine = self.view.load().id();
        let peers: Vec<Arc<Peer>> = self.peers.lock().values().cloned().collect();
        for peer in peers {
            let Some(heard) = peer.heard() else {
                continue;
            };
            let state = &heard.state;
            let start = {
                let mut all = self.rounds.peers.lock();
                let rounds = all.entry(peer.id.clone()).or_default();
                if rounds.instance != state.instance {
                    *rounds = PeerRounds {
                        instance: state.instance,
                        ..PeerRounds::default()
                    };
                }
                if rounds.done != Some(state.view) && rounds.due.map(|d| d.0) != Some(state.view) {
                    rounds.due = Some((state.view, Instant::now()));
                }
                let waited = rounds
                    .due
                    .is_some_and(|(_, seen)| seen.elapsed() > self.settings.heartbeat * 2);
                // Only to a view that can act (a majority), once this replica agrees with it
                // (or is not in it, or it has stood for a moment).
                let ready = state.quorum
                    && (state.view == mine || !state.members.contains(&self.me) || waited);
                let wanted = rounds.again || rounds.done != Some(state.view);
                if rounds.running || !wanted || !ready {
                    false
                } else {
                    rounds.running = true;
                    rounds.again = false;
                    true
                }
            };
            if start {
                let Some(cluster) = self.this.upgrade() else {
                    return;
                };
                tokio::spawn(async move { cluster.round(peer).await });
            }
        }
    }

    /// One round to `peer` for the view it announced last.
    async fn round(self: Arc<Self>, peer: Arc<Peer>) {
        let Some(heard) = peer.heard() else {
            self.round_ended(&peer, None);
            return;
        };
        let (view, members, instance) = (
            heard.state.view,
            heard.state.members.clone(),
            heard.state.instance,
        );
        self.rounds
            .read_epoch
            .fetch_max(view.epoch, Ordering::SeqCst);
        self.rounds.generation.fetch_add(1, Ordering::SeqCst);
        let mut due = Vec::new();
        self.held.for_each_mut(|held| {
            if due_to(held, &peer.id, &members, instance, &self.me) {
                due.push(held.clone());
            }
        });
        // First the slots the peer granted itself (their leases there may be kept as vanished):
        // once they are reported again, the peer frees the rest it kept for this replica. Only
        // then the others, so a freed lease and a report of the same pod never add up.
        let (granted_there, others): (Vec<Held>, Vec<Held>) =
            due.into_iter().partition(|h| h.grantor == peer.id);
        let done = self.report_all(&peer, granted_there, instance).await
            && self.tell(&peer, protocol::RECONCILED, None).await
            && self.report_all(&peer, others, instance).await
            && self.tell(&peer, protocol::SYNCED, Some(view)).await;
        self.round_ended(&peer, done.then_some(view));
        // A round that could not finish (or found the peer's view moved on) is due again.
        self.start_rounds();
    }

    fn round_ended(&self, peer: &Peer, done: Option<ViewId>) {
        let mut all = self.rounds.peers.lock();
        if let Some(rounds) = all.get_mut(&peer.id) {
            rounds.running = false;
            if let Some(view) = done {
                rounds.done = Some(view);
                if rounds.due.map(|d| d.0) == Some(view) {
                    rounds.due = None;
                }
            }
        }
    }

    /// Reports one held slot to `peer`, keeping the stream open until the slot is released;
    /// true when the peer took it (or needs no report: it no longer routes the pod).
    async fn report(&self, peer: &Arc<Peer>, held: Held, instance: u64) -> bool {
        self.report_within(peer, held, instance, None, REPORT_TIMEOUT)
            .await
    }

    /// [`Cluster::report`] within `timeout`; `admitted_in` for the shadow of a slot just
    /// admitted as owner in that view ([`super::shadow`]).
    pub(crate) async fn report_within(
        &self,
        peer: &Arc<Peer>,
        held: Held,
        instance: u64,
        admitted_in: Option<ViewId>,
        timeout: Duration,
    ) -> bool {
        let Some(mut sender) = peer.sender() else {
            return false;
        };
        let request = self
            .adopt_request(&held, &peer.id, admitted_in)
            .body(HoldOpen::until(held.released.clone()))
            .expect("valid request");
        let sent = tokio::time::timeout(timeout, async {
            sender.ready().await?;
            sender.send_request(request).await
        })
        .await;
        let mut counted = true;
        let taken = match sent {
            Ok(Ok(response)) if response.status() == StatusCode::OK => true,
            // A successor that does not route the pod yet cannot count a new admission on it;
            // a slot it does not count is not held there (`super::shadow`).
            Ok(Ok(response))
                if response.status() == StatusCode::NOT_FOUND && admitted_in.is_none() =>
            {
                tracing::debug!(peer = %peer.id, key = %held.key, "the owner does not route the reported pod: nothing to count");
                let own = held.grantor == self.me && held.lease.is_none();
                counted = !own && held.shadow_of.is_none();
                true
            }
            Ok(Ok(response)) => {
                tracing::debug!(peer = %peer.id, status = %response.status(), key = %held.key, "the owner did not take a reported slot");
                false
            }
            _ => {
                tracing::debug!(peer = %peer.id, key = %held.key, "reporting a slot to its owner failed");
                false
            }
        };
        if taken && counted {
            self.metrics.reported.increment(1);
            self.held.mark_reported(held.id, peer.id.clone(), instance);
        }
        taken
    }

    /// The head of a report of `held` to `peer`.
    fn adopt_request(
        &self,
        held: &Held,
        peer: &str,
        admitted_in: Option<ViewId>,
    ) -> http::request::Builder {
        let remaining = held.expires.saturating_duration_since(Instant::now());
        let mut request = self
            .request(protocol::ADOPT)
            .header(&protocol::DEPLOYMENT, &*held.key)
            .header(&protocol::POD, held.pod.to_string())
            .header(&protocol::LEASE_MS, remaining.as_millis().to_string())
            .header(&protocol::LEASE, held.lease_for(peer));
        if held.fallback {
            request = request.header(&protocol::FALLBACK, "1");
        }
        if let Some(shadow) = &held.shadow_of {
            request = request
                .header(&protocol::SHADOW, protocol::SHADOW_HELD)
                .header(&protocol::HOLDER, &*shadow.holder)
                .header(&protocol::HOLDER_INSTANCE, shadow.instance);
        } else if held.grantor == self.me && held.lease.is_none() {
            let shadow =
                admitted_in.map_or_else(|| protocol::SHADOW_HELD.to_owned(), |v| v.encode());
            request = request.header(&protocol::SHADOW, shadow);
        }
        request
    }

    /// Reports `all` to `peer` at once; true when it took every one.
    async fn report_all(&self, peer: &Arc<Peer>, all: Vec<Held>, instance: u64) -> bool {
        let reports = all
            .into_iter()
            .map(|held| self.report(peer, held, instance));
        futures_util::future::join_all(reports)
            .await
            .into_iter()
            .all(|taken| taken)
    }

    /// Sends `peer` the notice `path` (`/v1/reconciled`, or `/v1/synced` for its view `view`);
    /// true when it took it.
    async fn tell(&self, peer: &Arc<Peer>, path: &str, view: Option<ViewId>) -> bool {
        let Some(mut sender) = peer.sender() else {
            return false;
        };
        let mut request = self.request(path);
        if let Some(view) = view {
            request = request.header(&protocol::VIEW, view.encode());
        }
        let request = request.body(HoldOpen::empty()).expect("valid request");
        let sent = tokio::time::timeout(REPORT_TIMEOUT, async {
            sender.ready().await?;
            sender.send_request(request).await
        })
        .await;
        matches!(sent, Ok(Ok(response)) if response.status() == StatusCode::NO_CONTENT)
    }
}

/// Whether `held` is to be reported to `peer` (instance `instance`, view `members`), by `me`:
/// the view gives the deployment to the peer and the peer did not grant it (nor is it the
/// peer's own slot shadowed here); or the peer granted it but the connection it was granted on
/// broke; or it is `me`'s own slot, `me` owns the deployment in that view, no other replica
/// holds it any more, and the peer would take over from `me` ([`super::shadow`]). Not when it
/// was reported there already.
fn due_to(held: &Held, peer: &Arc<str>, members: &[Arc<str>], instance: u64, me: &str) -> bool {
    if held
        .reported_to
        .iter()
        .any(|(p, i)| p == peer && *i == instance)
    {
        return false;
    }
    let Some((endpoint, deployment)) = protocol::split_key(&held.key) else {
        return false;
    };
    let owner = owner_in(members, endpoint, deployment);
    if let Some(shadow) = &held.shadow_of {
        return shadow.holder != *peer && owner == Some(peer);
    }
    if held.grantor == *peer {
        return held.orphaned;
    }
    if owner == Some(peer) {
        return true;
    }
    let own = *held.grantor == *me && held.lease.is_none();
    let unknown_elsewhere = own && !held.shadowing && held.reported_to.is_empty();
    unknown_elsewhere
        && owner.is_some_and(|o| **o == *me)
        && ring::successor(members, me, endpoint, deployment).map(|i| &members[i]) == Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::held::ShadowOf;
    use tokio_util::sync::CancellationToken;

    fn ids(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::<str>::from(*s)).collect()
    }

    fn held(key: &str, grantor: &str) -> Held {
        Held {
            id: 1,
            key: key.into(),
            pod: "127.0.0.1:1".parse().unwrap(),
            expires: Instant::now(),
            released: CancellationToken::new(),
            grantor: grantor.into(),
            lease: None,
            fallback: false,
            orphaned: false,
            reported_to: Vec::new(),
            shadow_of: None,
            shadowing: false,
        }
    }

    /// A deployment key whose owner among `members` is `owner`.
    fn owned_by(members: &[Arc<str>], owner: &str) -> String {
        (0..)
            .map(|i| format!("e/d{i}"))
            .find(|k| {
                let (e, d) = protocol::split_key(k).unwrap();
                owner_in(members, e, d).is_some_and(|o| &**o == owner)
            })
            .unwrap()
    }

    #[test]
    fn an_owners_own_slot_no_one_else_holds_goes_to_its_successor() {
        let members = ids(&["a", "b", "c"]);
        let key = owned_by(&members, "a");
        let (e, d) = protocol::split_key(&key).unwrap();
        let next = members[ring::successor(&members, "a", e, d).unwrap()].clone();
        let other = members
            .iter()
            .find(|m| ***m != *"a" && **m != next)
            .unwrap();
        let own = held(&key, "a");
        assert!(due_to(&own, &next, &members, 1, "a"));
        assert!(!due_to(&own, other, &members, 1, "a"));
        let in_flight = Held {
            shadowing: true,
            ..own.clone()
        };
        assert!(
            !due_to(&in_flight, &next, &members, 1, "a"),
            "shadowed by the admission itself"
        );
        let known = Held {
            reported_to: vec![(other.clone(), 1)],
            ..own
        };
        assert!(
            !due_to(&known, &next, &members, 1, "a"),
            "held elsewhere already"
        );
    }

    #[test]
    fn a_shadow_goes_to_the_next_owner_never_back_to_its_holder() {
        let without_a = ids(&["b", "c"]);
        let key = owned_by(&without_a, "c");
        let shadow = Held {
            shadow_of: Some(ShadowOf {
                holder: "a".into(),
                instance: 7,
                lease: 42,
            }),
            ..held(&key, "b")
        };
        assert!(due_to(&shadow, &Arc::from("c"), &without_a, 1, "b"));
        assert_eq!(shadow.lease_for("c"), 42, "under its holder's number");
        let with_a = ids(&["a", "b", "c"]);
        let key = owned_by(&with_a, "a");
        let back = Held {
            key: key.into(),
            ..shadow
        };
        assert!(!due_to(&back, &Arc::from("a"), &with_a, 1, "b"));
    }
}

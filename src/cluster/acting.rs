//! Whether this replica may act as the owner of the deployments its view gives it: fencing.
//!
//! Three conditions, all on this replica's clock (`docs/ARCHITECTURE.md`, "Coordinated
//! admission" has the argument):
//!
//! 1. **Lease.** Every other member answered, with this very view, a hello that this replica
//!    sent less than `lease` ago. A replica that stops hearing its members (a partition, its own
//!    process stopped) stops acting within `lease`, before anyone else may start.
//! 2. **Settled.** Every member, this one included, has held this view for at least `lease`
//!    (a member's switch time is bounded from its answers: `received - age`). Whoever acted in
//!    an earlier view did so on a lease that needed some member's confirmation of that earlier
//!    view; that member switched at least `lease` ago, so the earlier lease has run out.
//! 3. **Reported.** Every replica that holds slots and can reach this one (the members, and
//!    any replica that said hello within the peer timeout) has reported the slots it holds that
//!    this view gives to this replica ([`super::reports`]), so the accounting is complete before
//!    the first grant.
//!
//! A view also needs a majority of the replicas known ([`super::membership::majority`]): two
//! views that both have one share a member, which is what makes 1 and 2 exclusive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::announce::Announce;
use super::peers::Peer;
use super::view::View;
use super::view_id::ViewId;

/// How long this replica's lease on its view lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// It is the only replica known: no one to confirm, no one to conflict with.
    Unbounded,
    /// Until this instant.
    Until(Instant),
    /// No lease (not a member, no majority, or a member has not confirmed this view).
    Lapsed,
}

/// This replica's right to act as owner in its current view.
#[derive(Clone, Debug)]
pub struct Acting {
    /// The view it is about.
    pub view: ViewId,
    /// The lease on it.
    pub lease: Lease,
    /// From when every member has held the view long enough; `None` while a member has not
    /// confirmed it.
    pub from: Option<Instant>,
    /// Replicas that have not reported their slots for this view yet.
    pub unreported: Vec<Arc<str>>,
}

impl Acting {
    /// Nothing yet: the state before the first view.
    pub fn none() -> Acting {
        Acting {
            view: ViewId::default(),
            lease: Lease::Lapsed,
            from: None,
            unreported: Vec::new(),
        }
    }

    /// The state for `view`, from what its members said last (`heard`, by identity) and which
    /// replicas have still to report.
    pub fn of(
        view: &View,
        me: &str,
        heard: impl Fn(&str) -> Option<Arc<super::peers::Heard>>,
        lease: Duration,
        unreported: Vec<Arc<str>>,
    ) -> Acting {
        let mut acting = Acting {
            view: view.id(),
            lease: Lease::Lapsed,
            from: None,
            unreported,
        };
        if !view.me_member() || !view.has_quorum() {
            return acting;
        }
        let mut until: Option<Instant> = None;
        let mut switched = view.installed();
        for member in view.members().iter().filter(|m| &***m != me) {
            let Some(heard) = heard(member).filter(|h| h.state.view == view.id()) else {
                return acting;
            };
            let expires = heard.sent + lease;
            until = Some(until.map_or(expires, |u| u.min(expires)));
            switched = switched.max(heard.switched_by);
        }
        acting.lease = until.map_or(Lease::Unbounded, Lease::Until);
        acting.from = Some(switched + lease);
        acting
    }

    /// Whether the lease holds and every member has held the view long enough at `now`: the
    /// replica may act for the deployments it owns (the autoscaler may write).
    pub fn owns_at(&self, now: Instant) -> bool {
        let leased = match self.lease {
            Lease::Unbounded => true,
            Lease::Until(until) => now < until,
            Lease::Lapsed => false,
        };
        leased && self.from.is_some_and(|from| from <= now)
    }

    /// [`Acting::owns_at`], and every replica has reported its slots: it may grant.
    pub fn grants_at(&self, now: Instant) -> bool {
        self.unreported.is_empty() && self.owns_at(now)
    }

    /// When waiting for this state to change is worth a look again (settling ends).
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        self.from.filter(|from| *from > now)
    }
}

/// What other replicas said in their own hellos to this one: when each last said hello, and
/// which of this replica's views it has reported its slots for.
#[derive(Default)]
pub struct Inbound {
    entries: Mutex<HashMap<Arc<str>, Said>>,
    /// When a replica said hello with an instance number not heard before (it started or
    /// restarted: whatever another replica shadowed at its former instance is gone).
    new_instance_at: Mutex<Option<Instant>>,
}

/// Replicas and their instance numbers.
type Holders = Arc<[(Arc<str>, u64)]>;

#[derive(Clone)]
struct Said {
    instance: u64,
    synced: Option<ViewId>,
    last: Instant,
    own_slots_at: Option<Holders>,
}

impl Inbound {
    /// Records a hello from `peer`; true when its report status changed.
    pub fn hello(&self, peer: &str, announce: &Announce) -> bool {
        let mut entries = self.entries.lock();
        let said = Said {
            instance: announce.instance,
            synced: announce.synced,
            last: Instant::now(),
            own_slots_at: announce.own_slots_at.as_deref().map(Arc::from),
        };
        let last = said.last;
        let (changed, new_instance) = match entries.get_mut(peer) {
            Some(entry) => {
                let new_instance = entry.instance != said.instance;
                let changed = entry.synced != said.synced
                    || new_instance
                    || entry.own_slots_at.is_some() != said.own_slots_at.is_some();
                *entry = said;
                (changed, new_instance)
            }
            None => {
                entries.insert(peer.into(), said);
                (true, true)
            }
        };
        if new_instance {
            *self.new_instance_at.lock() = Some(last);
        }
        changed
    }

    /// Whether every slot `peer` admitted itself is held by other replicas whose instances are
    /// still the ones that took them: its last hello named them, each is the instance heard
    /// from since (or this replica, `me`), and no replica has (re)started since that hello (a
    /// restarted replica lost what was shadowed at it).
    pub fn own_slots_known(&self, peer: &str, me: (&str, u64)) -> bool {
        let entries = self.entries.lock();
        let Some(at) = entries
            .get(peer)
            .and_then(|s| Some((s.last, s.own_slots_at.clone()?)))
        else {
            return false;
        };
        let (last, holders) = at;
        let current = |id: &str| {
            if id == me.0 {
                Some(me.1)
            } else {
                entries.get(id).map(|e| e.instance)
            }
        };
        let restarted_since = self.new_instance_at.lock().is_some_and(|at| at >= last);
        !restarted_since && holders.iter().all(|(id, i)| current(id) == Some(*i))
    }

    /// Records that `peer` reported its slots for `view` (its `/v1/synced`).
    pub fn synced(&self, peer: &str, view: ViewId) {
        if let Some(entry) = self.entries.lock().get_mut(peer) {
            entry.synced = Some(view);
        }
    }

    /// The view `peer` last reported its slots for.
    pub fn synced_for(&self, peer: &str) -> Option<ViewId> {
        self.entries.lock().get(peer).and_then(|e| e.synced)
    }

    /// The replicas that may hold slots and have not reported for `view`: the members other
    /// than `me`, and every replica that said hello within `recent`.
    pub fn unreported(
        &self,
        view: ViewId,
        members: &[Arc<str>],
        me: &str,
        recent: Duration,
    ) -> Vec<Arc<str>> {
        let now = Instant::now();
        let entries = self.entries.lock();
        let mut pending: Vec<Arc<str>> = members
            .iter()
            .filter(|m| &***m != me)
            .filter(|m| entries.get(&***m).and_then(|e| e.synced) != Some(view))
            .cloned()
            .collect();
        for (peer, said) in entries.iter() {
            let heard_lately = now.saturating_duration_since(said.last) < recent;
            if heard_lately && said.synced != Some(view) && !pending.contains(peer) {
                pending.push(peer.clone());
            }
        }
        pending.sort();
        pending
    }

    /// Forgets replicas not heard from for `after` (gone for good).
    pub fn forget_older_than(&self, after: Duration) {
        let now = Instant::now();
        self.entries
            .lock()
            .retain(|_, said| now.saturating_duration_since(said.last) < after);
    }
}

/// The members' last answers, for [`Acting::of`].
pub fn heard_of(
    peers: &HashMap<Arc<str>, Arc<Peer>>,
) -> impl Fn(&str) -> Option<Arc<super::peers::Heard>> + '_ {
    move |id| peers.get(id).and_then(|p| p.heard())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::peers::Heard;

    fn ids(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::<str>::from(*s)).collect()
    }

    fn heard(view: ViewId, sent: Instant, switched_by: Instant) -> Arc<Heard> {
        Arc::new(Heard {
            state: Announce {
                view,
                ..Announce::default()
            },
            sent,
            received: sent,
            switched_by,
        })
    }

    const LEASE: Duration = Duration::from_millis(300);

    #[test]
    fn a_lease_needs_every_member_to_confirm_this_view_recently() {
        let view = View::new("a".into(), 5, ids(&["a", "b", "c"]), &[], true);
        let t0 = view.installed();
        let ok = heard(view.id(), t0, t0);
        let other = heard(ViewId { epoch: 4, hash: 1 }, t0, t0);
        let acting = Acting::of(
            &view,
            "a",
            |id| Some(if id == "b" { ok.clone() } else { other.clone() }),
            LEASE,
            Vec::new(),
        );
        assert_eq!(acting.lease, Lease::Lapsed, "c still has another view");
        let acting = Acting::of(&view, "a", |_| Some(ok.clone()), LEASE, Vec::new());
        assert_eq!(acting.lease, Lease::Until(t0 + LEASE));
        assert!(
            !acting.owns_at(t0),
            "settling: the members switched just now"
        );
        assert!(!acting.owns_at(t0 + LEASE - Duration::from_millis(1)));
        let later = t0 + Duration::from_millis(200);
        let renewed = heard(view.id(), later, t0);
        let acting = Acting::of(&view, "a", |_| Some(renewed.clone()), LEASE, Vec::new());
        assert!(acting.owns_at(t0 + LEASE));
        assert!(!acting.owns_at(later + LEASE), "the lease ran out");
    }

    #[test]
    fn no_majority_or_not_a_member_means_no_lease() {
        let t0 = Instant::now();
        let minority = View::new("a".into(), 5, ids(&["a"]), &[], false);
        let acting = Acting::of(&minority, "a", |_| None, LEASE, Vec::new());
        assert!(!acting.owns_at(t0 + Duration::from_secs(10)));
        let outside = View::new("a".into(), 5, ids(&["b", "c"]), &[], true);
        let acting = Acting::of(&outside, "a", |_| None, LEASE, Vec::new());
        assert_eq!(acting.lease, Lease::Lapsed);
    }

    #[test]
    fn alone_the_lease_is_unbounded_and_grants_wait_for_reports() {
        let view = View::new("a".into(), 1, ids(&["a"]), &[], true);
        let acting = Acting::of(&view, "a", |_| None, LEASE, ids(&["b"]));
        let later = view.installed() + LEASE;
        assert!(acting.owns_at(later));
        assert!(!acting.grants_at(later), "b has not reported");
        assert_eq!(acting.wake_at(view.installed()), Some(later));
    }

    #[test]
    fn own_slots_are_known_where_the_last_hello_says_unless_a_holder_restarted() {
        let inbound = Inbound::default();
        let says = |at: Option<Vec<(Arc<str>, u64)>>, instance: u64| Announce {
            instance,
            own_slots_at: at,
            ..Announce::default()
        };
        let me = ("me", 9);
        let at_q = || Some(vec![(Arc::from("q"), 2), (Arc::from("me"), 9)]);
        assert!(!inbound.own_slots_known("p", me), "never heard");
        inbound.hello("p", &says(at_q(), 1));
        inbound.hello("q", &says(Some(Vec::new()), 2));
        assert!(
            !inbound.own_slots_known("p", me),
            "q started after p's last hello"
        );
        std::thread::sleep(Duration::from_millis(2));
        inbound.hello("p", &says(at_q(), 1));
        assert!(inbound.own_slots_known("p", me));
        assert!(
            !inbound.own_slots_known("p", ("me", 10)),
            "this replica is another instance than the one named"
        );
        inbound.hello("p", &says(None, 1));
        assert!(
            !inbound.own_slots_known("p", me),
            "one is held nowhere else"
        );
        inbound.hello("p", &says(at_q(), 1));
        std::thread::sleep(Duration::from_millis(2));
        inbound.hello("q", &says(Some(Vec::new()), 3));
        assert!(!inbound.own_slots_known("p", me), "q restarted since");
        std::thread::sleep(Duration::from_millis(2));
        inbound.hello("p", &says(at_q(), 1));
        assert!(
            !inbound.own_slots_known("p", me),
            "p still names q's former instance"
        );
    }

    #[test]
    fn inbound_reports_count_for_the_view_they_name() {
        let inbound = Inbound::default();
        let view = ViewId { epoch: 3, hash: 7 };
        let members = ids(&["a", "b"]);
        let announce = Announce {
            instance: 1,
            synced: Some(ViewId { epoch: 2, hash: 7 }),
            ..Announce::default()
        };
        inbound.hello("c", &announce);
        let recent = Duration::from_secs(1);
        assert_eq!(
            inbound.unreported(view, &members, "a", recent),
            ids(&["b", "c"])
        );
        inbound.synced("c", view);
        inbound.hello(
            "b",
            &Announce {
                synced: Some(view),
                ..announce
            },
        );
        assert!(inbound.unreported(view, &members, "a", recent).is_empty());
    }
}

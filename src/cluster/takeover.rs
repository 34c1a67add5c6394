//! Deployments taken over from an owner that may still be working.
//!
//! A replica that leaves this replica's view without being known to have died (its port did
//! not refuse a connection: it is partitioned, stopped, or its link is slow) may still have
//! requests on the pods of the deployments it owned: the ones it admitted as owner before its
//! lease ran out, and ones it wrote to a connection the partition keeps from the pod until it
//! heals. Nobody else knows them. A new owner therefore grants nothing on such a deployment
//! until the old owner is provably done with it (`docs/ARCHITECTURE.md`, "Coordinated
//! admission"):
//!
//! - it comes back and reports what it still holds (it rejoins the view, or reports for it);
//! - it is known to have died (its port refuses connections): what it had on the pods is the
//!   dead replica's window;
//! - or every slot it can hold has ended: its lease ran out by the time this replica's first
//!   view without it settled, and a slot lives at most [`super::Cluster::slot_life`] after it
//!   was taken.
//!
//! Unless its slots are all known here ([`Suspect::known`]): every slot it admitted itself was
//! shadowed at another replica before it went to the pod ([`super::shadow`]), it said in its
//! last hello that each still is, every other replica is in this replica's view (so has
//! reported the shadows it holds, and the slots it was granted, before this replica grants),
//! and no replica restarted since. Then this replica's accounting has every slot the suspect
//! can hold: the pods they are on stay taken, the others are granted as soon as the view
//! settles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::ring;

/// A replica that left the view without being known to have died.
#[derive(Clone, Debug)]
pub struct Suspect {
    /// Its identity.
    pub id: Arc<str>,
    /// When it left this replica's view.
    pub since: Instant,
    /// By when its lease had run out: when this replica's first view without it settled.
    pub fenced: Option<Instant>,
    /// Every slot it can hold is in this replica's accounting (see the module's documentation):
    /// its deployments are not held as a whole.
    pub known: bool,
}

impl Suspect {
    /// Until when it may have slots of a deployment it owned whose slots live `slot_life`.
    fn busy_until(&self, slot_life: Duration, now: Instant) -> Instant {
        // Not settled yet: no one grants anyway; the hold is at least a slot's life from now.
        self.fenced.unwrap_or(now) + slot_life
    }
}

/// The suspects, read on every admission as owner (one atomic load when there are none).
#[derive(Default)]
pub struct Suspects {
    list: ArcSwap<Vec<Suspect>>,
}

impl Suspects {
    /// Whether there are none (the common case).
    pub fn is_empty(&self) -> bool {
        self.list.load().is_empty()
    }

    /// Records that `left` left the view now (callers serialise updates).
    pub fn left(&self, left: impl IntoIterator<Item = Arc<str>>) {
        let mut list = self.list.load().as_ref().clone();
        let before = list.len();
        for id in left {
            if list.iter().all(|s| s.id != id) {
                tracing::info!(
                    peer = %id,
                    "cluster: a replica left the view without being known to have died: the \
                     deployments it owned are not granted until it reports its slots, is known \
                     to have died, or its slots have provably ended"
                );
                list.push(Suspect {
                    id,
                    since: Instant::now(),
                    fenced: None,
                    known: false,
                });
            }
        }
        if list.len() != before {
            self.list.store(Arc::new(list));
        }
    }

    /// Records that a view without any of the suspects settled at `from`.
    pub fn settled(&self, from: Instant) {
        let list = self.list.load();
        if list.iter().all(|s| s.fenced.is_some()) {
            return;
        }
        let list: Vec<Suspect> = list
            .iter()
            .map(|s| Suspect {
                fenced: s.fenced.or(Some(from)),
                ..s.clone()
            })
            .collect();
        self.list.store(Arc::new(list));
    }

    /// Sets whether each suspect's slots are all known here, from `known`; true when that
    /// changed for one (logged).
    pub fn set_known(&self, known: impl Fn(&Suspect) -> bool) -> bool {
        let list = self.list.load();
        if list.iter().all(|s| s.known == known(s)) {
            return false;
        }
        let list: Vec<Suspect> = list
            .iter()
            .map(|s| {
                let now_known = known(s);
                if now_known != s.known {
                    tracing::info!(
                        peer = %s.id,
                        known = now_known,
                        "cluster: {}",
                        if now_known {
                            "every slot of a replica that left the view is known here: only the \
                             pods it may still be on are held"
                        } else {
                            "the slots of a replica that left the view may not all be known here: \
                             the deployments it owned are held"
                        }
                    );
                }
                Suspect {
                    known: now_known,
                    ..s.clone()
                }
            })
            .collect();
        self.list.store(Arc::new(list));
        true
    }

    /// Drops the suspects for which `cleared` gives a reason (logged).
    pub fn clear(&self, cleared: impl Fn(&Suspect) -> Option<&'static str>) -> bool {
        let list = self.list.load();
        let mut kept = Vec::with_capacity(list.len());
        for suspect in list.iter() {
            match cleared(suspect) {
                Some(reason) => tracing::info!(
                    peer = %suspect.id,
                    held_for = ?suspect.since.elapsed(),
                    "cluster: the deployments a replica owned before it left the view are granted \
                     again: {reason}"
                ),
                None => kept.push(suspect.clone()),
            }
        }
        let changed = kept.len() != list.len();
        if changed {
            self.list.store(Arc::new(kept));
        }
        changed
    }

    /// Until when `me`, owner of `endpoint/deployment`, must not grant its slots (which live
    /// `slot_life`): a suspect that would own it in a view with `me` may still have requests on
    /// its pods. `None` when it may grant.
    pub fn hold_until(
        &self,
        me: &str,
        endpoint: &str,
        deployment: &str,
        slot_life: Duration,
    ) -> Option<Instant> {
        let list = self.list.load();
        if list.is_empty() {
            return None;
        }
        let now = Instant::now();
        list.iter()
            .filter(|s| !s.known && ring::beats(&s.id, me, endpoint, deployment))
            .map(|s| s.busy_until(slot_life, now))
            .filter(|until| *until > now)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(10);

    /// A deployment that `winner` owns over `loser`.
    fn owned_by(winner: &str, loser: &str) -> String {
        (0..)
            .map(|i| format!("d{i}"))
            .find(|d| ring::beats(winner, loser, "e", d))
            .unwrap()
    }

    #[test]
    fn only_what_the_suspect_owned_is_held_until_its_slots_ended() {
        let suspects = Suspects::default();
        assert!(suspects.hold_until("me", "e", "d", LIFE).is_none());
        suspects.left([Arc::<str>::from("old")]);
        let theirs = owned_by("old", "me");
        let mine = owned_by("me", "old");
        assert!(suspects.hold_until("me", "e", &theirs, LIFE).is_some());
        assert!(suspects.hold_until("me", "e", &mine, LIFE).is_none());
        let settled = Instant::now();
        suspects.settled(settled);
        assert_eq!(
            suspects.hold_until("me", "e", &theirs, LIFE),
            Some(settled + LIFE)
        );
        let past = settled.checked_sub(LIFE * 2).unwrap();
        let list = vec![Suspect {
            fenced: Some(past),
            ..suspects.list.load()[0].clone()
        }];
        suspects.list.store(Arc::new(list));
        assert!(
            suspects.hold_until("me", "e", &theirs, LIFE).is_none(),
            "every slot it could hold has ended"
        );
    }

    #[test]
    fn a_suspect_whose_slots_are_known_holds_nothing() {
        let suspects = Suspects::default();
        suspects.left([Arc::<str>::from("old")]);
        let theirs = owned_by("old", "me");
        assert!(suspects.hold_until("me", "e", &theirs, LIFE).is_some());
        assert!(suspects.set_known(|_| true));
        assert!(!suspects.set_known(|_| true), "no change");
        assert!(suspects.hold_until("me", "e", &theirs, LIFE).is_none());
        assert!(suspects.set_known(|_| false));
        assert!(suspects.hold_until("me", "e", &theirs, LIFE).is_some());
    }

    #[test]
    fn a_cleared_suspect_holds_nothing() {
        let suspects = Suspects::default();
        suspects.left([Arc::<str>::from("old"), Arc::<str>::from("other")]);
        assert!(suspects.clear(|s| (&*s.id == "old").then_some("it reported")));
        let theirs = (0..)
            .map(|i| format!("d{i}"))
            .find(|d| ring::beats("old", "me", "e", d) && !ring::beats("other", "me", "e", d))
            .unwrap();
        assert!(suspects.hold_until("me", "e", &theirs, LIFE).is_none());
        assert!(suspects
            .hold_until("me", "e", &owned_by("other", "me"), LIFE)
            .is_some());
    }
}

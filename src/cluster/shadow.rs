//! Shadows: the slots an owner admits itself, known to the replica that would take over.
//!
//! The slots an owner grants to other replicas are known to them, and they report them to the
//! next owner. The ones it admits itself are not, unless it says so: before a request it admitted
//! as owner goes to the pod, the owner reports its slot (`/v1/adopt` with `x-scoregate-shadow`
//! and its view) to its **successor**, the member that owns the deployment in the same view
//! without it ([`super::ring::successor`]), and waits for the answer. The successor counts the
//! slot on the pod and keeps it as the owner's lease on it: released when the owner's stream ends,
//! kept when the owner vanishes until it expires or the owner is known to have died (its port
//! refuses connections: what it still had on the pod is the dead replica's window;
//! [`super::lease`]). It also keeps a record of it
//! in its registry ([`super::held::Held::shadow_of`]), so its report rounds pass it on to
//! whoever owns the deployment in a view without the owner ([`super::reports`]). A successor
//! that does not answer in time, or has another view, refuses: the owner gives the slot back
//! and the request waits (the owner is about to lose its lease anyway).
//!
//! An owner that leaves the view alive is then no reason to hold its deployments as a whole
//! ([`super::takeover`]): the next owner's accounting has its slots when every other replica is
//! in its view (each has reported before the first grant, shadows included), the old owner said
//! in its last hello where every slot it admitted itself is held
//! ([`super::announce::Announce::own_slots_at`]; a stream that broke leaves a slot held nowhere
//! until it is shadowed again), those replicas are still the instances that took them, and no
//! replica restarted since (a restarted one lost what it held). The pods those slots are on
//! stay taken; the others are granted once the view settles. `docs/ARCHITECTURE.md`,
//! "Coordinated admission", has the argument.

use std::time::Instant;

use super::held::{Held, ShadowOf};
use super::lease::LeaseGuard;
use super::ring;
use super::takeover::Suspect;
use super::view::View;
use super::Cluster;
use crate::admission::{ReleaseGuard, Slot};

impl Cluster {
    /// Shadows `held`, just admitted as the owner in `view`, at the successor; true when it
    /// took it, or when there is none (this replica is the only member).
    pub(crate) async fn shadow_new(&self, view: &View, held: Held) -> bool {
        let Some((endpoint, deployment)) = super::protocol::split_key(&held.key) else {
            return false;
        };
        let members = view.members();
        let Some(next) = ring::successor(members, &self.me, endpoint, deployment) else {
            self.held.shadowed_nowhere(held.id);
            return true;
        };
        let Some(peer) = view.peer(&members[next]).cloned() else {
            return false;
        };
        let Some(instance) = peer.heard().map(|h| h.state.instance) else {
            return false;
        };
        let timeout = self.settings.peer_timeout;
        let taken = self
            .report_within(&peer, held, instance, Some(view.id()), timeout)
            .await;
        if !taken {
            tracing::debug!(peer = %peer.id, "the successor did not take the shadow of a slot; the request waits");
        }
        taken
    }

    /// Records `slot`, `holder`'s own slot of `key` on `pod` shadowed or passed on here, in the
    /// registry, so report rounds pass it on to the next owner; the entry goes with the slot.
    pub(crate) fn hold_shadow(
        &self,
        slot: &mut Slot,
        key: &str,
        expires: Instant,
        holder: ShadowOf,
    ) {
        let (guard, _): (LeaseGuard, Held) = self.held.insert(Held {
            id: 0,
            key: key.into(),
            pod: slot.pod().address(),
            expires,
            released: tokio_util::sync::CancellationToken::new(),
            grantor: self.me.clone(),
            lease: None,
            fallback: false,
            orphaned: false,
            reported_to: Vec::new(),
            shadow_of: Some(holder),
            shadowing: false,
        });
        slot.attach(ReleaseGuard::new(guard));
    }

    /// Ends the shadows of the peers known to have died (their ports refuse connections) that
    /// are kept here since their streams broke ([`super::lease::Leases::holder_died`]): a dead
    /// owner's own requests are the dead replica's window, and its pods are granted again once
    /// the view settles. Run every heartbeat.
    pub(crate) fn end_shadows_of_dead(&self) {
        let dead: Vec<std::sync::Arc<str>> = self
            .peers
            .lock()
            .values()
            .filter(|p| p.is_gone())
            .map(|p| p.id.clone())
            .collect();
        let mut ended = 0;
        for peer in &dead {
            let n = self.leases.holder_died(peer);
            if n > 0 {
                tracing::info!(
                    %peer,
                    slots = n,
                    "cluster: a replica whose port refuses connections died: the slots it admitted \
                     itself and shadowed here are free again (what it had on their pods may still \
                     run: the dead replica's window)"
                );
            }
            ended += n;
        }
        if ended > 0 {
            self.notify();
        }
    }

    /// Whether every slot `suspect` can hold is in this replica's accounting (see the module's
    /// documentation): every other replica known is a member of `view`, and the suspect's own
    /// slots were all held elsewhere, at instances that have not restarted, when it last said
    /// hello.
    pub(crate) fn slots_known(&self, suspect: &Suspect, view: &View) -> bool {
        let everyone_else_in_view = self
            .peers
            .lock()
            .keys()
            .all(|id| *id == suspect.id || view.members().contains(id));
        everyone_else_in_view
            && view.me_member()
            && self
                .inbound
                .own_slots_known(&suspect.id, (&self.me, self.instance))
    }
}

/// The holder of a shadow, from a report's holder (the sender itself, or the replica named in
/// a report passed on).
pub fn shadow_of(holder: &super::lease::Holder) -> ShadowOf {
    ShadowOf {
        holder: holder.id.clone(),
        instance: holder.instance,
        lease: holder.lease,
    }
}

//! The requester's side of leases: a registry of the slots this replica holds, so they can be
//! reported to the replicas that own them now ([`super::reports`]), and the body that keeps a
//! grant or report stream open while the slot is held.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The body of a grant or adopt request: it stays open while the requester holds the slot and
/// ends (END_STREAM) when the lease is released. Empty and already ended when made with `None`.
pub struct HoldOpen {
    released: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl HoldOpen {
    /// A body that ends when `released` is cancelled.
    pub fn until(released: CancellationToken) -> Self {
        HoldOpen {
            released: Some(Box::pin(released.cancelled_owned())),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        HoldOpen { released: None }
    }
}

impl Body for HoldOpen {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.released.as_mut() {
            None => Poll::Ready(None),
            Some(released) => match released.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.released = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.released.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(0)
    }
}

/// Bit set in the lease numbers a holder gives the slots it reports (the owners number the
/// slots they grant without it), so the two never collide at the owner.
pub const REPORTED_LEASE: u64 = 1 << 63;

/// One slot this replica holds for a coordinated deployment.
#[derive(Clone, Debug)]
pub struct Held {
    /// Its number in the registry.
    pub id: u64,
    /// `endpoint/deployment`.
    pub key: Arc<str>,
    /// The pod.
    pub pod: SocketAddr,
    /// When the lease ends at the latest.
    pub expires: Instant,
    /// Cancelled when the slot is released; ends every stream that reports it.
    pub released: CancellationToken,
    /// The replica whose accounting counts the slot (the owner that granted it; this replica
    /// for its own admissions).
    pub grantor: Arc<str>,
    /// The grantor's number for the lease, when another replica granted it.
    pub lease: Option<u64>,
    /// Admitted under `cluster.fallback`, outside any owner's accounting.
    pub fallback: bool,
    /// The connection to the grantor broke: the grantor may have let the lease go or be
    /// keeping it only until it expires, so it is reported to the grantor again.
    pub orphaned: bool,
    /// Other replicas it was reported to (on connections still up), with their instances.
    pub reported_to: Vec<(Arc<str>, u64)>,
    /// Another replica's own slot that replica shadowed here ([`super::shadow`]): this replica
    /// holds it only to pass it on to whoever owns the deployment next.
    pub shadow_of: Option<ShadowOf>,
    /// An own admission whose shadow is on its way: not written to the pod before it is taken.
    pub shadowing: bool,
}

/// Whose own slot a shadow is, under the number that replica gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowOf {
    /// The replica that admitted it as owner.
    pub holder: Arc<str>,
    /// Its process's instance number.
    pub instance: u64,
    /// Its number for the slot ([`Held::lease_for`] on its side).
    pub lease: u64,
}

impl Held {
    /// The lease number a report of this slot to `peer` carries: the grantor's own, or one of
    /// this replica's.
    pub fn lease_for(&self, peer: &str) -> u64 {
        if let Some(shadow) = &self.shadow_of {
            return shadow.lease;
        }
        match self.lease {
            Some(lease) if *self.grantor == *peer => lease,
            _ => REPORTED_LEASE | self.id,
        }
    }
}

/// The slots this replica holds, by registry number.
#[derive(Default)]
pub struct HeldLeases {
    entries: Mutex<HashMap<u64, Held>>,
    next_id: AtomicU64,
}

impl HeldLeases {
    /// Records a held slot; the guard removes it and releases its streams when dropped. Also
    /// the entry as recorded (with its number).
    pub fn insert(self: &Arc<Self>, mut held: Held) -> (LeaseGuard, Held) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !REPORTED_LEASE;
        held.id = id;
        let released = held.released.clone();
        self.entries.lock().insert(id, held.clone());
        let guard = LeaseGuard {
            id,
            registry: self.clone(),
            released,
        };
        (guard, held)
    }

    /// Applies `f` to every entry (under the registry's lock: keep `f` short, no awaiting).
    pub fn for_each_mut(&self, mut f: impl FnMut(&mut Held)) {
        for held in self.entries.lock().values_mut() {
            f(held);
        }
    }

    /// Records that entry `id` was reported to `peer` (instance `instance`).
    pub fn mark_reported(&self, id: u64, peer: Arc<str>, instance: u64) {
        if let Some(held) = self.entries.lock().get_mut(&id) {
            if held.grantor == peer {
                held.orphaned = false;
            }
            held.shadowing = false;
            held.reported_to.push((peer, instance));
        }
    }

    /// Records that entry `id`, admitted as owner, has no replica to shadow it at (this one is
    /// the only member): it is held nowhere else until a report round shadows it.
    pub fn shadowed_nowhere(&self, id: u64) {
        if let Some(held) = self.entries.lock().get_mut(&id) {
            held.shadowing = false;
        }
    }

    /// Where the slots `me` admitted itself (as owner or under the fallback) are held besides:
    /// the replicas (and their instances) they were shadowed or reported to, on streams still
    /// open; `None` when one is held nowhere else (a slot still being shadowed is not on its pod
    /// yet and does not count). Announced in every hello ([`super::shadow`]).
    pub fn own_slots_at(&self, me: &str) -> Option<Vec<(Arc<str>, u64)>> {
        let mut at: Vec<(Arc<str>, u64)> = Vec::new();
        for held in self.entries.lock().values() {
            let own = *held.grantor == *me && held.lease.is_none() && held.shadow_of.is_none();
            if !own || held.shadowing {
                continue;
            }
            if held.reported_to.is_empty() {
                return None;
            }
            for holder in &held.reported_to {
                if !at.contains(holder) {
                    at.push(holder.clone());
                }
            }
        }
        Some(at)
    }

    /// The connection to `peer` broke: the streams that reported slots to it are gone, and the
    /// slots it granted are orphaned. Returns how many entries are concerned.
    pub fn disconnected(&self, peer: &str) -> usize {
        let mut concerned = 0;
        for held in self.entries.lock().values_mut() {
            let before = held.reported_to.len();
            held.reported_to.retain(|(p, _)| &**p != peer);
            let granted_there = &*held.grantor == peer && held.lease.is_some();
            if granted_there {
                held.orphaned = true;
            }
            if granted_there || held.reported_to.len() != before {
                concerned += 1;
            }
        }
        concerned
    }

    /// Slots held now.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// This replica's record of one held slot. Dropping it releases the lease everywhere.
pub struct LeaseGuard {
    id: u64,
    registry: Arc<HeldLeases>,
    released: CancellationToken,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.released.cancel();
        self.registry.entries.lock().remove(&self.id);
    }
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard").field("id", &self.id).finish()
    }
}

//! Leases: the owner's side (a slot held for as long as the requester keeps its request stream
//! open, or until it expires) and the requester's side (a registry of the slots this replica
//! holds, so they can be reported to a new owner when ownership moves).

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
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::admission::Slot;

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

/// The owner's side of a lease: the response body of a grant. It holds the slot until the
/// requester ends (or resets) its request stream, the connection goes, or the lease expires.
pub struct LeaseBody {
    slot: Option<Slot>,
    requester: Incoming,
    expiry: Pin<Box<Sleep>>,
    expired: metrics::Counter,
}

impl LeaseBody {
    /// Holds `slot` while `requester` (the grant's request body) is open, until `expires`.
    pub fn new(
        slot: Slot,
        requester: Incoming,
        expires: Instant,
        expired: metrics::Counter,
    ) -> Self {
        LeaseBody {
            slot: Some(slot),
            requester,
            expiry: Box::pin(tokio::time::sleep_until(expires.into())),
            expired,
        }
    }
}

impl Body for LeaseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.slot.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.requester).poll_frame(cx) {
                // Released (END_STREAM) or gone (reset, connection closed): free the slot.
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    self.slot = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Pending => break,
            }
        }
        if self.expiry.as_mut().poll(cx).is_ready() {
            self.expired.increment(1);
            if let Some(slot) = self.slot.take() {
                tracing::warn!(pod = %slot.pod().address(), "a lease expired before its requester released it; the slot is free again");
            }
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.slot.is_none()
    }
}

/// One slot this replica holds for a coordinated deployment.
#[derive(Clone, Debug)]
pub struct Held {
    /// `endpoint/deployment`.
    pub key: Arc<str>,
    /// The pod.
    pub pod: SocketAddr,
    /// When the lease ends at the latest.
    pub expires: Instant,
    /// Cancelled when the slot is released; ends every stream that reports it.
    pub released: CancellationToken,
    /// The replica whose accounting holds the slot now.
    pub grantor: Arc<str>,
}

/// The slots this replica holds, by lease id.
#[derive(Default)]
pub struct HeldLeases {
    entries: Mutex<HashMap<u64, Held>>,
    next_id: AtomicU64,
}

impl HeldLeases {
    /// Records a held slot; the guard removes it and releases its streams when dropped.
    pub fn insert(self: &Arc<Self>, held: Held) -> LeaseGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let released = held.released.clone();
        self.entries.lock().insert(id, held);
        LeaseGuard {
            id,
            registry: self.clone(),
            released,
        }
    }

    /// Applies `f` to every entry (under the registry's lock: keep `f` short, no awaiting).
    pub fn for_each_mut(&self, mut f: impl FnMut(&mut Held)) {
        for held in self.entries.lock().values_mut() {
            f(held);
        }
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

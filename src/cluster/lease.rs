//! The owner's side of leases: every slot this replica granted to, or took from a report of,
//! another replica, held for as long as the holder keeps its request stream open.
//!
//! How a lease ends:
//! - the holder ends its request stream (END_STREAM: the slot is released), or resets it with
//!   CANCEL (it gave up before using the grant): the slot is free at once;
//! - the holder vanishes (its connection times out or breaks: a crashed, stopped or partitioned
//!   replica): its request may still be running on the pod, or be sent when it continues, so the
//!   slot stays taken until the lease expires — unless the holder comes back first and reports
//!   what it still holds ([`Leases::claim`], [`Leases::release_stale`]), or the connection broke
//!   because this replica itself was stopped ([`Leases::after_own_stall`]: the holders are alive
//!   and have reported their slots to whoever owned the deployment meanwhile), or, for a slot the
//!   holder admitted itself (a shadow), the holder is known to have died
//!   ([`Leases::holder_died`]: what it still had on the pod is the dead replica's window);
//! - the lease expires: `2 × request_timeout_ms + lease_margin_ms` after the grant, as long as
//!   an abandoned request can keep its slot (`Settings::slot_life`; for a report, the time the
//!   reporter had left).

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::admission::Slot;

pub use super::held::{Held, HeldLeases, HoldOpen, LeaseGuard};

/// How long a dropped lease waits to learn whether its connection failed.
const CONNECTION_END_GRACE: Duration = Duration::from_millis(100);

/// How the connection that carries leases ended: set by the task that serves it, read by the
/// leases its end dropped (a stream cut by a failed connection reads like a clean end).
#[derive(Default)]
pub struct ConnectionEnd {
    ended: CancellationToken,
    failed: AtomicBool,
}

impl ConnectionEnd {
    /// Records the end: `failed` when it timed out or broke rather than closed.
    pub fn end(&self, failed: bool) {
        self.failed.store(failed, Ordering::SeqCst);
        self.ended.cancel();
    }

    /// Whether the connection failed, once it ended; `None` if it did not end within `within`.
    async fn failed_within(&self, within: Duration) -> Option<bool> {
        tokio::time::timeout(within, self.ended.cancelled())
            .await
            .ok()
            .map(|()| self.failed.load(Ordering::SeqCst))
    }
}

/// The replica holding a lease, and the lease's number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// Its identity.
    pub id: Arc<str>,
    /// Its process's instance number.
    pub instance: u64,
    /// The lease's number (this replica's for a grant, the holder's for a report).
    pub lease: u64,
}

/// One lease: its slot, until it ends or is claimed by a report of the same slot.
struct Cell {
    holder: Holder,
    slot: Mutex<Option<Slot>>,
    vanished_at: Mutex<Option<Instant>>,
    /// The holder's own slot, shadowed or reported here ([`super::shadow`]): kept when its
    /// holder vanished until it expires or the holder reports it again, never freed as stale.
    shadow: bool,
}

/// What the owner's side of leases counts.
#[derive(Clone)]
pub struct LeaseCounters {
    /// Leases that ran out before their holder released them.
    pub expired: metrics::Counter,
    /// Leases whose holder vanished (kept until they expire or it comes back).
    pub vanished: metrics::Counter,
}

/// A lease's key: its holder's identity and its number.
type LeaseKey = (Arc<str>, u64);

/// Every lease this replica holds for others, by holder and number.
pub struct Leases {
    cells: Mutex<HashMap<LeaseKey, Arc<Cell>>>,
    /// Leases whose connection fails before this instant end at once (this replica's own stop
    /// broke them).
    own_stall_until: Mutex<Option<Instant>>,
    counters: LeaseCounters,
}

impl Leases {
    /// An empty registry.
    pub fn new(counters: LeaseCounters) -> Arc<Self> {
        Arc::new(Leases {
            cells: Mutex::new(HashMap::new()),
            own_stall_until: Mutex::new(None),
            counters,
        })
    }

    /// Registers `slot` as held by `holder`, replacing an older lease with the same number.
    fn hold(&self, holder: Holder, slot: Slot, shadow: bool) -> Arc<Cell> {
        let cell = Arc::new(Cell {
            holder: holder.clone(),
            slot: Mutex::new(Some(slot)),
            vanished_at: Mutex::new(None),
            shadow,
        });
        self.cells
            .lock()
            .insert((holder.id, holder.lease), cell.clone());
        cell
    }

    /// The slot of `holder`'s lease `lease`, if this replica still holds it (live or kept after
    /// its holder vanished): a report of the same slot takes it over, so it is not counted twice.
    /// Also whether it was held as a shadow.
    pub fn claim(&self, holder: &str, lease: u64) -> Option<(Slot, bool)> {
        let cell = self.cells.lock().remove(&(Arc::from(holder), lease))?;
        let slot = cell.slot.lock().take();
        slot.map(|slot| (slot, cell.shadow))
    }

    /// Releases the leases of `holder` (instance `instance`) kept since its connection failed
    /// before `before`: it came back and reported every slot it still holds, so these are
    /// slots it released meanwhile. Returns how many. Shadows are kept: the holder's own slots
    /// are not among the ones it reports first ([`super::shadow`]).
    pub fn release_stale(&self, holder: &str, instance: u64, before: Instant) -> usize {
        let stale: Vec<Arc<Cell>> = {
            let mut cells = self.cells.lock();
            let keys: Vec<LeaseKey> = cells
                .iter()
                .filter(|(_, c)| {
                    &*c.holder.id == holder
                        && !c.shadow
                        && c.holder.instance == instance
                        && c.vanished_at.lock().is_some_and(|at| at < before)
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| cells.remove(k)).collect()
        };
        for cell in &stale {
            drop(cell.slot.lock().take());
        }
        stale.len()
    }

    /// `holder` is known to have died (its port refuses connections): the slots it admitted
    /// itself, shadowed or passed on here and kept since their streams broke, end now. What it
    /// still had on those pods is the dead replica's window, as for the requests of a dead owner
    /// that no one shadowed (`docs/ARCHITECTURE.md`, "Coordinated admission"); keeping them
    /// until they expire would keep its pods from every other replica for a slot's life. Slots
    /// it was granted stay until they expire. Returns how many ended.
    pub fn holder_died(&self, holder: &str) -> usize {
        let dead: Vec<Arc<Cell>> = {
            let mut cells = self.cells.lock();
            let keys: Vec<LeaseKey> = cells
                .iter()
                .filter(|(_, c)| {
                    c.shadow && &*c.holder.id == holder && c.vanished_at.lock().is_some()
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| cells.remove(k)).collect()
        };
        for cell in &dead {
            drop(cell.slot.lock().take());
        }
        dead.len()
    }

    /// This replica was stopped from `since` on: leases whose connection failed since then,
    /// and until `until`, end at once (their holders are alive; the connections broke because
    /// this replica did not answer).
    pub fn after_own_stall(&self, since: Instant, until: Instant) {
        *self.own_stall_until.lock() = Some(until);
        let broken: Vec<Arc<Cell>> = {
            let mut cells = self.cells.lock();
            let keys: Vec<LeaseKey> = cells
                .iter()
                .filter(|(_, c)| c.vanished_at.lock().is_some_and(|at| at >= since))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| cells.remove(k)).collect()
        };
        for cell in &broken {
            drop(cell.slot.lock().take());
        }
        if !broken.is_empty() {
            tracing::info!(
                leases = broken.len(),
                "cluster: released the leases whose connections broke while this replica was stopped"
            );
        }
    }

    /// Ends `cell`: its slot, if still there, is released.
    fn end(&self, cell: &Arc<Cell>) {
        let mut cells = self.cells.lock();
        let key = (cell.holder.id.clone(), cell.holder.lease);
        if cells.get(&key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            cells.remove(&key);
        }
        drop(cells);
        drop(cell.slot.lock().take());
    }

    /// The holder of `cell` vanished: keeps the slot until `expires` (or a claim or a stale
    /// release ends it first), unless this replica's own stop broke the connection.
    fn vanish(self: &Arc<Self>, cell: &Arc<Cell>, expires: Instant) {
        let now = Instant::now();
        if self.own_stall_until.lock().is_some_and(|until| now < until) {
            return self.end(cell);
        }
        if cell.slot.lock().is_none() {
            return self.end(cell);
        }
        *cell.vanished_at.lock() = Some(now);
        self.counters.vanished.increment(1);
        tracing::debug!(holder = %cell.holder.id, "the holder of a lease vanished; its slot stays taken until the lease expires or the holder reports again");
        let (leases, cell) = (self.clone(), cell.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return leases.end(&cell);
        };
        runtime.spawn(async move {
            tokio::time::sleep_until(expires.into()).await;
            if cell.slot.lock().is_some() {
                leases.counters.expired.increment(1);
            }
            leases.end(&cell);
        });
    }
}

/// The owner's side of one lease: the response body of a grant or report. It holds the slot
/// until the holder releases it, or the lease expires (see the module's documentation).
pub struct LeaseBody {
    cell: Option<Arc<Cell>>,
    leases: Arc<Leases>,
    /// The holder's stream, until it ends or fails.
    requester: Option<Incoming>,
    connection: Arc<ConnectionEnd>,
    expires: Instant,
    expiry: Pin<Box<Sleep>>,
}

/// How the holder's stream stands.
enum Requester {
    /// Still open.
    Open,
    /// Ended (END_STREAM: the slot was released, or the stream was cut with its connection).
    Ended,
    /// Reset by the holder on purpose (CANCEL): it let go of the grant.
    Cancelled,
    /// Gone with its connection.
    Vanished,
}

impl LeaseBody {
    /// Holds `slot` for `holder` while `requester` (the request's body, on `connection`) is
    /// open, until `expires`; `shadow` when it is the holder's own slot.
    pub fn new(
        leases: &Arc<Leases>,
        (holder, shadow): (Holder, bool),
        slot: Slot,
        requester: Incoming,
        connection: Arc<ConnectionEnd>,
        expires: Instant,
    ) -> Self {
        LeaseBody {
            cell: Some(leases.hold(holder, slot, shadow)),
            leases: leases.clone(),
            requester: Some(requester),
            connection,
            expires,
            expiry: Box::pin(tokio::time::sleep_until(expires.into())),
        }
    }

    /// Reads the holder's stream as far as it goes now.
    fn poll_requester(&mut self, cx: &mut Context<'_>) -> Requester {
        let Some(requester) = self.requester.as_mut() else {
            return Requester::Vanished;
        };
        loop {
            match Pin::new(&mut *requester).poll_frame(cx) {
                Poll::Ready(None) => return Requester::Ended,
                Poll::Ready(Some(Err(error))) if cancelled_by_requester(&error) => {
                    return Requester::Cancelled
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "a lease's stream failed");
                    self.requester = None;
                    return Requester::Vanished;
                }
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Pending => return Requester::Open,
            }
        }
    }

    fn end(&mut self) {
        if let Some(cell) = self.cell.take() {
            self.leases.end(&cell);
        }
    }

    /// Ends the lease now, its slot released (it was taken in a view that has since moved on).
    pub fn give_up(mut self) {
        self.end();
    }
}

impl Body for LeaseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(cell) = self.cell.clone() else {
            return Poll::Ready(None);
        };
        match self.poll_requester(cx) {
            Requester::Ended | Requester::Cancelled => {
                self.end();
                return Poll::Ready(None);
            }
            Requester::Vanished => {
                self.cell = None;
                self.leases.vanish(&cell, self.expires);
                return Poll::Ready(None);
            }
            Requester::Open => {}
        }
        if self.expiry.as_mut().poll(cx).is_ready() {
            if cell.slot.lock().is_some() {
                self.leases.counters.expired.increment(1);
                tracing::warn!(holder = %cell.holder.id, "a lease expired before its holder released it; the slot is free again");
            }
            self.end();
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.cell.is_none()
    }
}

/// The connection carrying a lease drops its body when the connection ends or the stream is
/// reset. A stream its holder reset with CANCEL is released at once; otherwise the slot is
/// released when the connection closed cleanly, and kept as vanished when it failed (timed out
/// or broke).
impl Drop for LeaseBody {
    fn drop(&mut self) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_requester(&mut cx) {
            Requester::Cancelled => return self.leases.end(&cell),
            Requester::Vanished => return self.leases.vanish(&cell, self.expires),
            Requester::Ended | Requester::Open => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.leases.end(&cell);
        };
        let (leases, connection, expires) =
            (self.leases.clone(), self.connection.clone(), self.expires);
        runtime.spawn(async move {
            // A body dropped by a failing connection sees the failure recorded right after.
            if connection.failed_within(CONNECTION_END_GRACE).await == Some(true) {
                leases.vanish(&cell, expires);
            } else {
                leases.end(&cell);
            }
        });
    }
}

/// Whether a failed request stream was reset by its holder with CANCEL or NO_ERROR (it let
/// go of the grant on purpose), rather than lost with its connection.
fn cancelled_by_requester(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_reset()
                && h2.is_remote()
                && matches!(h2.reason(), Some(h2::Reason::CANCEL | h2::Reason::NO_ERROR));
        }
        source = cause.source();
    }
    false
}

//! The per-deployment FIFO queue of requests waiting for a slot.
//!
//! Lost wakeups are ruled out by a Dekker-style pairing of sequentially consistent operations:
//! a releaser gives its pod's count back, then reads [`WaitQueue::is_waiting`]; a waiter
//! publishes itself in the queue's length, then tries the pods again under the queue lock. One
//! of the two always sees the other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

struct Waiter<T> {
    grant: oneshot::Sender<T>,
}

/// Waiters for a `T` (a slot), oldest first, and their number for lock-free reads.
pub(super) struct WaitQueue<T> {
    waiters: Mutex<VecDeque<Waiter<T>>>,
    queued: AtomicUsize,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue {
            waiters: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
        }
    }
}

impl<T> WaitQueue<T> {
    /// Requests waiting now.
    pub(super) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether anyone waits (the releaser's half of the pairing).
    pub(super) fn is_waiting(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > 0
    }

    /// Joins the queue unless it holds `bound` live waiters already (then `None`: the queue is
    /// full), then hands out what `take` finds free (a slot may have been freed between the
    /// caller's failed attempt and the join). See [`Self::grant`] for `unsent`.
    pub(super) fn join(
        &self,
        bound: usize,
        take: impl FnMut() -> Option<T>,
        unsent: impl FnMut(T),
    ) -> Option<Waiting<'_, T>> {
        let mut waiters = self.waiters.lock();
        if waiters.len() >= bound {
            waiters.retain(|w| !w.grant.is_closed());
            if waiters.len() >= bound {
                self.queued.store(waiters.len(), Ordering::SeqCst);
                return None;
            }
        }
        let (grant, granted) = oneshot::channel();
        waiters.push_back(Waiter { grant });
        self.queued.store(waiters.len(), Ordering::SeqCst);
        self.grant_locked(&mut waiters, take, unsent);
        Some(Waiting {
            granted: Some(granted),
            queue: self,
        })
    }

    /// Hands what `take` finds free to waiters, oldest first, while both exist. A waiter that
    /// gave up between the check and the handing out gets nothing: its `T` goes to `unsent`,
    /// under the queue lock.
    pub(super) fn grant(&self, take: impl FnMut() -> Option<T>, unsent: impl FnMut(T)) {
        let mut waiters = self.waiters.lock();
        self.grant_locked(&mut waiters, take, unsent);
    }

    fn grant_locked(
        &self,
        waiters: &mut VecDeque<Waiter<T>>,
        mut take: impl FnMut() -> Option<T>,
        mut unsent: impl FnMut(T),
    ) {
        while let Some(front) = waiters.front() {
            if front.grant.is_closed() {
                waiters.pop_front();
                continue;
            }
            let Some(item) = take() else {
                break;
            };
            let waiter = waiters.pop_front().expect("front exists");
            if let Err(item) = waiter.grant.send(item) {
                unsent(item);
            }
        }
        self.queued.store(waiters.len(), Ordering::SeqCst);
    }

    /// Removes waiters that gave up (timed out, or their client went away) and recounts.
    fn forget_abandoned(&self) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|w| !w.grant.is_closed());
        self.queued.store(waiters.len(), Ordering::SeqCst);
    }
}

/// A request's place in the queue. When it is given up without a slot (timeout, or the
/// request's future dropped because the client went away), the waiter leaves the queue at once,
/// so the queue depth and the queue bound count only requests still waiting.
pub(super) struct Waiting<'a, T> {
    granted: Option<oneshot::Receiver<T>>,
    queue: &'a WaitQueue<T>,
}

impl<T> Waiting<'_, T> {
    /// What was granted; `None` when the queue went away (the deployment was removed).
    pub(super) async fn granted(&mut self) -> Option<T> {
        let granted = self.granted.as_mut().expect("waiting until granted");
        let slot = granted.await.ok();
        self.granted = None;
        slot
    }
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        if let Some(granted) = self.granted.take() {
            // Dropped first, outside the queue lock: a slot granted meanwhile is released by
            // its own drop, which may take the lock to serve the next waiter.
            drop(granted);
            self.queue.forget_abandoned();
        }
    }
}

//! Admission: per-pod slot counters, power-of-two-choices among pods with a free slot, and a
//! per-deployment FIFO queue whose waiters give up after `max_queue_wait_ms`.
//!
//! The state here outlives routing-table snapshots: a [`Pod`] and a [`DeploymentAdmission`] are
//! created once by the table builder and shared by every snapshot that lists them, so a rebuild
//! never resets in-flight accounting. A [`Slot`] is the right to send one request to one pod; it
//! is given back when dropped, and handed straight to the oldest waiter if there is one.
//!
//! Lost wakeups are ruled out by a Dekker-style pairing of sequentially consistent operations:
//! a releaser decrements `in_flight` then reads `queued`; a waiter publishes `queued` then tries
//! the pods again under the queue lock. One of the two always sees the other.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::cluster::LeaseGuard;
use crate::upstream::IdleConnections;

/// One model pod as admission and the upstream pool see it.
pub struct Pod {
    address: SocketAddr,
    authority: http::HeaderValue,
    in_flight: AtomicU32,
    routable: AtomicBool,
    /// Pooled keep-alive connections to this pod.
    pub(crate) idle: IdleConnections,
}

impl Pod {
    /// A pod at `address`, routable, with no requests in flight.
    pub fn new(address: SocketAddr) -> Self {
        let authority = http::HeaderValue::from_str(&address.to_string())
            .expect("a socket address is a valid header value");
        Pod {
            address,
            authority,
            in_flight: AtomicU32::new(0),
            routable: AtomicBool::new(true),
            idle: IdleConnections::default(),
        }
    }

    /// Where the pod listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `ip:port`, ready to be a `Host` header.
    pub fn authority(&self) -> &http::HeaderValue {
        &self.authority
    }

    /// Requests this router has on the pod now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether new requests may go to the pod (ready, not terminating, still listed).
    pub fn is_routable(&self) -> bool {
        self.routable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_routable(&self, routable: bool) {
        self.routable.store(routable, Ordering::Relaxed);
    }

    /// Takes one slot if the pod is routable and below `cap`.
    fn try_take(&self, cap: u32) -> bool {
        if !self.is_routable() {
            return false;
        }
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= cap {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("address", &self.address)
            .field("in_flight", &self.in_flight())
            .field("routable", &self.is_routable())
            .finish()
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The deployment has no routable pod (503).
    NoReadyPod,
    /// The queue is at its bound (429).
    QueueFull,
    /// The request waited `max_queue_wait_ms` without getting a slot (503).
    QueueTimeout,
    /// Coordinated admission: the deployment's owner cannot be reached and the fallback is
    /// `reject` (503).
    OwnerUnreachable,
}

/// The right to send one request to one pod. Dropping it frees the slot.
pub struct Slot {
    pod: Option<Arc<Pod>>,
    admission: Arc<DeploymentAdmission>,
    /// With coordinated admission: this replica's record of the slot, which ends the lease at
    /// the deployment's owner when dropped.
    lease: Option<LeaseGuard>,
}

impl Slot {
    /// Ties `lease` to the slot: it is dropped, ending the lease, when the slot is.
    pub fn attach(&mut self, lease: LeaseGuard) {
        self.lease = Some(lease);
    }

    /// The pod this slot is on.
    pub fn pod(&self) -> &Arc<Pod> {
        self.pod
            .as_ref()
            .expect("a slot holds its pod until dropped")
    }

    /// Frees the slot without offering it to waiters (used while the queue lock is held).
    fn release_without_grant(mut self) {
        if let Some(pod) = self.pod.take() {
            pod.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pod) = self.pod.take() {
            self.admission.release(&pod);
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("pod", &self.pod).finish()
    }
}

struct Waiter {
    grant: oneshot::Sender<Slot>,
}

/// A request's place in the queue. When it is given up without a slot (timeout, or the
/// request's future dropped because the client went away), the waiter leaves the queue at once,
/// so the queue depth and the queue bound count only requests still waiting.
struct Waiting<'a> {
    granted: Option<oneshot::Receiver<Slot>>,
    admission: &'a DeploymentAdmission,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(granted) = self.granted.take() {
            // Dropped first, outside the queue lock: a slot granted meanwhile is released by
            // its own drop, which may take the lock to serve the next waiter.
            drop(granted);
            self.admission.forget_abandoned();
        }
    }
}

/// Live counts of one deployment, for metrics and, later, autoscaling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Routable pods.
    pub pods: u32,
    /// Pods with at least one request in flight.
    pub busy_pods: u32,
    /// Requests in flight on routable pods.
    pub in_flight: u32,
    /// Requests waiting in the queue.
    pub queued: u32,
}

/// Per-deployment admission state: the slot cap, the current routable pods and the FIFO queue.
pub struct DeploymentAdmission {
    cap: AtomicU32,
    max_queue_length: AtomicU32,
    pods: ArcSwap<Box<[Arc<Pod>]>>,
    queue: Mutex<VecDeque<Waiter>>,
    queued: AtomicUsize,
    granted_from_queue: AtomicU64,
}

/// `max_queue_length` value meaning "one waiter per slot".
const QUEUE_BOUND_AUTO: u32 = u32::MAX;

impl DeploymentAdmission {
    /// New admission state with a slot cap per pod and an optional queue bound.
    pub fn new(cap: u32, max_queue_length: Option<u32>) -> Arc<Self> {
        Arc::new(DeploymentAdmission {
            cap: AtomicU32::new(cap.max(1)),
            max_queue_length: AtomicU32::new(max_queue_length.unwrap_or(QUEUE_BOUND_AUTO)),
            pods: ArcSwap::from_pointee(Box::default()),
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            granted_from_queue: AtomicU64::new(0),
        })
    }

    /// Publishes new limits and the new set of routable pods, then serves waiters that
    /// the change lets in. Called by the table builder, never on the request path.
    pub fn update(
        self: &Arc<Self>,
        cap: u32,
        max_queue_length: Option<u32>,
        pods: Box<[Arc<Pod>]>,
    ) {
        self.cap.store(cap.max(1), Ordering::SeqCst);
        self.max_queue_length.store(
            max_queue_length.unwrap_or(QUEUE_BOUND_AUTO),
            Ordering::SeqCst,
        );
        self.pods.store(Arc::new(pods));
        self.grant_waiters();
    }

    /// Slots per pod.
    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Requests that got their slot from the queue rather than at once, since start.
    pub fn granted_from_queue(&self) -> u64 {
        self.granted_from_queue.load(Ordering::Relaxed)
    }

    /// Counts for metrics and autoscaling.
    pub fn stats(&self) -> AdmissionStats {
        let pods = self.pods.load();
        let mut stats = AdmissionStats {
            pods: pods.len() as u32,
            queued: self.queued() as u32,
            ..AdmissionStats::default()
        };
        for pod in pods.iter() {
            let n = pod.in_flight();
            stats.in_flight += n;
            stats.busy_pods += u32::from(n > 0);
        }
        stats
    }

    /// Takes a slot now if a pod has one free, without queueing. `pods` is the snapshot's list.
    pub fn try_acquire(self: &Arc<Self>, pods: &[Arc<Pod>]) -> Option<Slot> {
        self.try_acquire_excluding(pods, None)
    }

    /// Like [`Self::try_acquire`], never choosing `excluded` (the pod a retry moves away from).
    pub fn try_acquire_excluding(
        self: &Arc<Self>,
        pods: &[Arc<Pod>],
        excluded: Option<&Arc<Pod>>,
    ) -> Option<Slot> {
        let pod = pick(pods, self.cap(), excluded)?;
        Some(Slot {
            pod: Some(pod),
            admission: self.clone(),
            lease: None,
        })
    }

    /// Takes a slot on `pod` whatever its count: a request the deployment's owner already
    /// admitted, or one a replica reports after ownership moved. Also says whether the pod is
    /// now above its cap (an over-admission, for the caller to count).
    pub fn force_acquire(self: &Arc<Self>, pod: &Arc<Pod>) -> (Slot, bool) {
        let now = pod.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = Slot {
            pod: Some(pod.clone()),
            admission: self.clone(),
            lease: None,
        };
        (slot, now > self.cap())
    }

    /// Admits one request: a free slot at once, or the oldest-first queue for at most `max_wait`.
    /// `pods` is the list from the routing snapshot the request loaded.
    pub async fn admit(
        self: &Arc<Self>,
        pods: &[Arc<Pod>],
        max_wait: Duration,
    ) -> Result<Slot, AdmitError> {
        if pods.is_empty() {
            return Err(AdmitError::NoReadyPod);
        }
        // Newcomers only take the fast path when nobody is waiting, so the queue stays FIFO.
        if self.queued.load(Ordering::SeqCst) == 0 {
            if let Some(slot) = self.try_acquire(pods) {
                return Ok(slot);
            }
        }
        let mut waiting = Waiting {
            granted: Some(self.enqueue(pods.len())?),
            admission: self,
        };
        let granted = waiting.granted.as_mut().expect("just set");
        match tokio::time::timeout(max_wait, granted).await {
            Ok(Ok(slot)) => {
                waiting.granted = None;
                self.granted_from_queue.fetch_add(1, Ordering::Relaxed);
                Ok(slot)
            }
            // The deployment went away while we waited.
            Ok(Err(_)) => Err(AdmitError::NoReadyPod),
            Err(_) => Err(AdmitError::QueueTimeout),
        }
    }

    /// Removes waiters that gave up (timed out, or their client went away) and recounts.
    fn forget_abandoned(&self) {
        let mut queue = self.queue.lock();
        queue.retain(|w| !w.grant.is_closed());
        self.queued.store(queue.len(), Ordering::SeqCst);
    }

    fn enqueue(
        self: &Arc<Self>,
        routable_pods: usize,
    ) -> Result<oneshot::Receiver<Slot>, AdmitError> {
        let mut queue = self.queue.lock();
        let bound = match self.max_queue_length.load(Ordering::Relaxed) {
            QUEUE_BOUND_AUTO => (self.cap() as usize).saturating_mul(routable_pods),
            n => n as usize,
        };
        if queue.len() >= bound {
            queue.retain(|w| !w.grant.is_closed());
            if queue.len() >= bound {
                self.queued.store(queue.len(), Ordering::SeqCst);
                return Err(AdmitError::QueueFull);
            }
        }
        let (grant, granted) = oneshot::channel();
        queue.push_back(Waiter { grant });
        self.queued.store(queue.len(), Ordering::SeqCst);
        // A slot may have been freed between our failed attempt and the store above.
        self.grant_locked(&mut queue);
        Ok(granted)
    }

    fn release(self: &Arc<Self>, pod: &Arc<Pod>) {
        pod.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.grant_waiters();
        }
    }

    fn grant_waiters(self: &Arc<Self>) {
        let mut queue = self.queue.lock();
        self.grant_locked(&mut queue);
    }

    /// Hands free slots to waiters, oldest first, while both exist.
    fn grant_locked(self: &Arc<Self>, queue: &mut VecDeque<Waiter>) {
        while let Some(front) = queue.front() {
            if front.grant.is_closed() {
                queue.pop_front();
                continue;
            }
            let pods = self.pods.load();
            let Some(slot) = self.try_acquire(&pods) else {
                break;
            };
            let waiter = queue.pop_front().expect("front exists");
            if let Err(slot) = waiter.grant.send(slot) {
                // The waiter gave up between the check and the send.
                slot.release_without_grant();
            }
        }
        self.queued.store(queue.len(), Ordering::SeqCst);
    }
}

impl Drop for DeploymentAdmission {
    fn drop(&mut self) {
        self.queue.get_mut().clear();
    }
}

impl std::fmt::Debug for DeploymentAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentAdmission")
            .field("cap", &self.cap())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Power of two choices among pods with a free slot: sample two, take the less loaded one that
/// has room; when both are full, scan from a random start so a free slot is never missed.
fn pick(pods: &[Arc<Pod>], cap: u32, excluded: Option<&Arc<Pod>>) -> Option<Arc<Pod>> {
    let allowed = |pod: &Arc<Pod>| excluded.is_none_or(|e| !Arc::ptr_eq(e, pod));
    let n = pods.len();
    match n {
        0 => return None,
        1 => {
            let pod = &pods[0];
            return (allowed(pod) && pod.try_take(cap)).then(|| pod.clone());
        }
        _ => {}
    }
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    let (first, second) = if pods[a].in_flight() <= pods[b].in_flight() {
        (&pods[a], &pods[b])
    } else {
        (&pods[b], &pods[a])
    };
    for pod in [first, second] {
        if allowed(pod) && pod.try_take(cap) {
            return Some(pod.clone());
        }
    }
    let start = fastrand::usize(..n);
    (0..n)
        .map(|i| &pods[(start + i) % n])
        .find(|pod| allowed(pod) && pod.try_take(cap))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: u16) -> Box<[Arc<Pod>]> {
        (0..n)
            .map(|i| Arc::new(Pod::new(SocketAddr::from(([127, 0, 0, 1], 5001 + i)))))
            .collect()
    }

    fn admission(cap: u32, queue: Option<u32>, pods: &[Arc<Pod>]) -> Arc<DeploymentAdmission> {
        let a = DeploymentAdmission::new(cap, queue);
        a.update(cap, queue, pods.to_vec().into_boxed_slice());
        a
    }

    #[test]
    fn never_exceeds_cap_and_frees_on_drop() {
        let pods = pods(2);
        let a = admission(1, None, &pods);
        let s1 = a.try_acquire(&pods).unwrap();
        let s2 = a.try_acquire(&pods).unwrap();
        assert!(!Arc::ptr_eq(s1.pod(), s2.pod()));
        assert!(a.try_acquire(&pods).is_none());
        drop(s1);
        assert!(a.try_acquire(&pods).is_some());
        assert_eq!(
            a.stats().in_flight,
            1,
            "the dropped temporary slot is released too"
        );
    }

    #[test]
    fn p2c_prefers_the_less_loaded_pod() {
        let pods = pods(2);
        let a = admission(100, None, &pods);
        let held: Vec<_> = (0..10)
            .map(|_| a.try_acquire(&pods[..1]).unwrap())
            .collect();
        for _ in 0..20 {
            let s = a.try_acquire(&pods).unwrap();
            assert_eq!(s.pod().address(), pods[1].address());
        }
        drop(held);
    }

    #[test]
    fn excluded_pod_is_never_chosen() {
        let pods = pods(3);
        let a = admission(10, None, &pods);
        for _ in 0..100 {
            let s = a.try_acquire_excluding(&pods, Some(&pods[1])).unwrap();
            assert_ne!(s.pod().address(), pods[1].address());
        }
        let single = &pods[..1];
        assert!(a.try_acquire_excluding(single, Some(&pods[0])).is_none());
    }

    #[test]
    fn unroutable_pods_get_nothing() {
        let pods = pods(2);
        let a = admission(1, None, &pods);
        pods[0].set_routable(false);
        let s = a.try_acquire(&pods).unwrap();
        assert_eq!(s.pod().address(), pods[1].address());
        assert!(a.try_acquire(&pods).is_none());
    }

    #[tokio::test]
    async fn no_pods_is_no_ready_pod() {
        let a = admission(1, None, &[]);
        assert_eq!(
            a.admit(&[], Duration::from_millis(10)).await.unwrap_err(),
            AdmitError::NoReadyPod
        );
    }

    #[tokio::test]
    async fn queue_times_out_then_is_full() {
        let pods = pods(1);
        let a = admission(1, Some(1), &pods);
        let _busy = a.admit(&pods, Duration::ZERO).await.unwrap();
        let waiting = {
            let a = a.clone();
            let pods = pods.clone();
            tokio::spawn(
                async move { a.admit(&pods, Duration::from_millis(200)).await.map(|_| ()) },
            )
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            a.admit(&pods, Duration::from_secs(5)).await.unwrap_err(),
            AdmitError::QueueFull
        );
        assert_eq!(
            waiting.await.unwrap().unwrap_err(),
            AdmitError::QueueTimeout
        );
        assert_eq!(
            a.queued(),
            0,
            "a waiter that timed out is no longer counted"
        );
    }

    #[tokio::test]
    async fn release_hands_the_slot_to_the_oldest_waiter() {
        let pods = pods(1);
        let a = admission(1, Some(10), &pods);
        let busy = a.admit(&pods, Duration::ZERO).await.unwrap();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (task_a, pods, order_tx) = (a.clone(), pods.clone(), order_tx.clone());
            tasks.push(tokio::spawn(async move {
                let slot = task_a.admit(&pods, Duration::from_secs(30)).await.unwrap();
                order_tx.send(i).unwrap();
                drop(slot);
            }));
            while a.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(busy);
        for t in tasks {
            t.await.unwrap();
        }
        let order: Vec<_> = std::iter::from_fn(|| order_rx.try_recv().ok()).collect();
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(a.stats().in_flight, 0);
        assert_eq!(a.granted_from_queue(), 3);
    }

    #[tokio::test]
    async fn new_pods_serve_waiters() {
        let all = pods(2);
        let a = admission(1, Some(10), &all[..1]);
        let first = all[..1].to_vec();
        let _busy = a.admit(&first, Duration::ZERO).await.unwrap();
        let waiter = {
            let (a, first) = (a.clone(), first.clone());
            tokio::spawn(async move {
                a.admit(&first, Duration::from_secs(30))
                    .await
                    .map(|s| s.pod().address())
            })
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        a.update(1, Some(10), all.clone());
        assert_eq!(waiter.await.unwrap().unwrap(), all[1].address());
    }

    #[test]
    fn concurrent_admission_never_over_admits() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pods = pods(3);
            let a = admission(2, Some(1_000), &pods);
            let peak = Arc::new(AtomicU32::new(0));
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let (a, pods, peak) = (a.clone(), pods.clone(), peak.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..200 {
                        let slot = a.admit(&pods, Duration::from_secs(60)).await.unwrap();
                        let n = slot.pod().in_flight();
                        peak.fetch_max(n, Ordering::Relaxed);
                        assert!(n <= 2, "pod over its cap: {n}");
                        tokio::task::yield_now().await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(a.stats().in_flight, 0);
            assert_eq!(a.queued(), 0);
            assert_eq!(peak.load(Ordering::Relaxed), 2);
        });
    }
}

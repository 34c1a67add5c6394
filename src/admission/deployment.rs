//! One deployment's slot accounting: the cap per pod, the routable pods, the policy that
//! chooses among them, and the FIFO queue whose waiters give up after their deadline; and the
//! [`Slot`] it hands out, the right to send one request to one pod.

use std::any::Any;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::error::AdmitError;
use super::outlier::{Ejection, OutlierSettings};
use super::pod::Pod;
use super::policy::{Candidates, Policy, PowerOfTwoChoices};
use super::queue::WaitQueue;
use super::stats::AdmissionStats;

/// `max_queue_length` value meaning "one waiter per slot".
const QUEUE_BOUND_AUTO: u32 = u32::MAX;

/// Per-deployment admission state. Created once by the table builder and shared with every
/// routing snapshot that lists the deployment, so a rebuild never resets in-flight accounting.
pub struct DeploymentAdmission {
    cap: AtomicU32,
    max_queue_length: AtomicU32,
    pods: ArcSwap<Box<[Arc<Pod>]>>,
    policy: Box<dyn Policy>,
    queue: WaitQueue<Slot>,
    granted_from_queue: AtomicU64,
    /// Outlier detection; held while a failure is judged, so two pods ejected at once never
    /// exceed the share.
    outlier: Mutex<OutlierSettings>,
}

impl DeploymentAdmission {
    /// New admission state with a slot cap per pod, an optional queue bound, and power of two
    /// choices among pods.
    pub fn new(cap: u32, max_queue_length: Option<u32>) -> Arc<Self> {
        Self::with_policy(cap, max_queue_length, Box::new(PowerOfTwoChoices))
    }

    /// Like [`Self::new`], choosing pods with `policy`.
    pub fn with_policy(
        cap: u32,
        max_queue_length: Option<u32>,
        policy: Box<dyn Policy>,
    ) -> Arc<Self> {
        Arc::new(DeploymentAdmission {
            cap: AtomicU32::new(cap.max(1)),
            max_queue_length: AtomicU32::new(max_queue_length.unwrap_or(QUEUE_BOUND_AUTO)),
            pods: ArcSwap::from_pointee(Box::default()),
            policy,
            queue: WaitQueue::default(),
            granted_from_queue: AtomicU64::new(0),
            outlier: Mutex::new(OutlierSettings::default()),
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

    /// Sets the outlier detection settings (the table builder, when the deployment's
    /// declaration changes).
    pub fn set_outlier_detection(&self, settings: OutlierSettings) {
        *self.outlier.lock() = settings;
    }

    /// Records what an exchange on `pod` showed: `ok` when the pod answered (whatever its
    /// status), not when connecting to it, or its connection, failed. Returns the ejection a
    /// failure led to, for the caller to log and count.
    pub fn report(&self, pod: &Pod, ok: bool) -> Option<Ejection> {
        if ok {
            pod.health.succeeded();
            return None;
        }
        let settings = self.outlier.lock();
        if settings.consecutive_failures == 0 || pod.health.failed() < settings.consecutive_failures
        {
            return None;
        }
        let pods = self.pods.load();
        let ejected = pods.iter().filter(|p| p.is_ejected()).count();
        if ejected >= settings.max_ejected(pods.len()) {
            return None;
        }
        pod.health.eject(&settings)
    }

    /// Slots per pod.
    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Requests that got their slot from the queue rather than at once, since start.
    pub fn granted_from_queue(&self) -> u64 {
        self.granted_from_queue.load(Ordering::Relaxed)
    }

    /// Counts for metrics and autoscaling.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats::of(&self.pods.load(), self.queued())
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
        let pod = self.take(&Candidates::new(pods, self.cap(), excluded))?;
        Some(Slot::new(pod, self.clone()))
    }

    /// Like [`Self::try_acquire`], for a request with a prefix key (the policy may prefer the
    /// pod that served the prefix).
    pub fn try_acquire_keyed(self: &Arc<Self>, pods: &[Arc<Pod>], prefix: &[u64]) -> Option<Slot> {
        let candidates = Candidates::new(pods, self.cap(), None).with_prefix(prefix);
        let pod = self.take(&candidates)?;
        Some(Slot::new(pod, self.clone()))
    }

    /// Takes a slot on `pod` whatever its count: a request the deployment's owner already
    /// admitted, or one a replica reports after ownership moved. Also says whether the pod is
    /// now above its cap (an over-admission, for the caller to count).
    pub fn force_acquire(self: &Arc<Self>, pod: &Arc<Pod>) -> (Slot, bool) {
        let now = pod.force_take();
        (Slot::new(pod.clone(), self.clone()), now > self.cap())
    }

    /// Admits one request: a free slot at once, or the oldest-first queue for at most `max_wait`.
    /// `pods` is the list from the routing snapshot the request loaded.
    pub async fn admit(
        self: &Arc<Self>,
        pods: &[Arc<Pod>],
        max_wait: Duration,
    ) -> Result<Slot, AdmitError> {
        self.admit_keyed(pods, &[], max_wait).await
    }

    /// Like [`Self::admit`] for a request with a prefix key. The key steers the choice of a free
    /// slot only: a request that waits in the queue gets the first slot freed, as any other.
    pub async fn admit_keyed(
        self: &Arc<Self>,
        pods: &[Arc<Pod>],
        prefix: &[u64],
        max_wait: Duration,
    ) -> Result<Slot, AdmitError> {
        if pods.is_empty() {
            return Err(AdmitError::NoReadyPod);
        }
        // Newcomers only take the fast path when nobody is waiting, so the queue stays FIFO.
        if !self.queue.is_waiting() {
            if let Some(slot) = self.try_acquire_keyed(pods, prefix) {
                return Ok(slot);
            }
        }
        // Boxed: the wait's state (its timer) is made only for a request that waits, and the
        // future of every admission stays small to move.
        Box::pin(self.wait_in_queue(pods, max_wait)).await
    }

    /// Waits in the queue at most `max_wait` for a slot on one of `pods`.
    async fn wait_in_queue(
        self: &Arc<Self>,
        pods: &[Arc<Pod>],
        max_wait: Duration,
    ) -> Result<Slot, AdmitError> {
        let bound = match self.max_queue_length.load(Ordering::Relaxed) {
            QUEUE_BOUND_AUTO => (self.cap() as usize).saturating_mul(pods.len()),
            n => n as usize,
        };
        let mut waiting = self
            .queue
            .join(
                bound,
                || self.try_acquire(&self.pods.load()),
                Slot::release_without_grant,
            )
            .ok_or(AdmitError::QueueFull)?;
        match tokio::time::timeout(max_wait, waiting.granted()).await {
            Ok(Some(slot)) => {
                self.granted_from_queue.fetch_add(1, Ordering::Relaxed);
                Ok(slot)
            }
            // The deployment went away while we waited.
            Ok(None) => Err(AdmitError::NoReadyPod),
            Err(_) => Err(AdmitError::QueueTimeout),
        }
    }

    /// Gives a slot's count back and serves the oldest waiter (called by [`Slot`]'s drop).
    fn release(self: &Arc<Self>, pod: &Arc<Pod>) {
        pod.give_back();
        if self.queue.is_waiting() {
            self.grant_waiters();
        }
    }

    fn grant_waiters(self: &Arc<Self>) {
        self.queue.grant(
            || self.try_acquire(&self.pods.load()),
            Slot::release_without_grant,
        );
    }

    /// A slot taken on a pod of `candidates` (see [`Self::choose_and_take`]), told to the policy.
    fn take(&self, candidates: &Candidates<'_>) -> Option<Arc<Pod>> {
        let pod = self.choose_and_take(candidates)?;
        self.policy.admitted(candidates, &pod);
        Some(pod)
    }

    /// The policy's choice, with the slot taken; when that fails (the choice lost the last slot
    /// to a concurrent request, or the policy found nothing), every pod from a random start, so
    /// a free slot is never missed.
    fn choose_and_take(&self, candidates: &Candidates<'_>) -> Option<Arc<Pod>> {
        let cap = self.cap();
        if let Some(i) = self.policy.choose(candidates) {
            let pod = candidates.pod(i);
            if candidates.has_room(i) && pod.try_take(cap) {
                return Some(pod.clone());
            }
        }
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = fastrand::usize(..n);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|i| candidates.has_room(*i) && candidates.pod(*i).try_take(cap))
            .map(|i| candidates.pod(i).clone())
    }
}

impl std::fmt::Debug for DeploymentAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentAdmission")
            .field("cap", &self.cap())
            .field("policy", &self.policy)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Something whose drop ends a record of the slot kept elsewhere (with coordinated admission,
/// the lease at the deployment's owner). Admission does not look inside: it only drops it when
/// the slot is released, after the pod's count has been given back.
pub struct ReleaseGuard(#[allow(dead_code)] Box<dyn Any + Send + Sync>);

impl ReleaseGuard {
    /// A guard that drops `inner` when the slot it is attached to is released.
    pub fn new(inner: impl Any + Send + Sync) -> Self {
        ReleaseGuard(Box::new(inner))
    }
}

impl std::fmt::Debug for ReleaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseGuard")
    }
}

/// The right to send one request to one pod. Dropping it frees the slot, handing it straight to
/// the deployment's oldest waiter if there is one.
pub struct Slot {
    pod: Option<Arc<Pod>>,
    accounting: Arc<DeploymentAdmission>,
    guard: Option<ReleaseGuard>,
}

impl Slot {
    fn new(pod: Arc<Pod>, accounting: Arc<DeploymentAdmission>) -> Self {
        Slot {
            pod: Some(pod),
            accounting,
            guard: None,
        }
    }

    /// Ties `guard` to the slot: it is dropped when the slot is released.
    pub fn attach(&mut self, guard: ReleaseGuard) {
        self.guard = Some(guard);
    }

    /// The pod this slot is on.
    pub fn pod(&self) -> &Arc<Pod> {
        self.pod
            .as_ref()
            .expect("a slot holds its pod until dropped")
    }

    /// Records what the exchange on this slot's pod showed (see
    /// [`DeploymentAdmission::report`]).
    pub fn report(&self, ok: bool) -> Option<Ejection> {
        self.accounting.report(self.pod(), ok)
    }

    /// Frees the slot without offering it to waiters (used while the queue lock is held).
    fn release_without_grant(mut self) {
        if let Some(pod) = self.pod.take() {
            pod.give_back();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pod) = self.pod.take() {
            self.accounting.release(&pod);
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("pod", &self.pod).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

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

    #[test]
    fn consecutive_failures_eject_a_pod_within_the_share() {
        let pods = pods(3);
        let a = admission(1, None, &pods);
        a.set_outlier_detection(OutlierSettings {
            consecutive_failures: 2,
            ..OutlierSettings::default()
        });
        assert!(
            a.report(&pods[0], false).is_none(),
            "one failure is not enough"
        );
        assert!(a.report(&pods[0], true).is_none());
        assert!(
            a.report(&pods[0], false).is_none(),
            "a success started the count over"
        );
        let ejection = a.report(&pods[0], false).expect("two in a row");
        assert_eq!((ejection.failures, ejection.repeat), (2, 1));
        assert!(pods[0].is_ejected() && !pods[0].has_room(1));
        assert_eq!(a.stats().ejected, 1);
        for _ in 0..5 {
            assert!(
                a.report(&pods[1], false).is_none(),
                "half of 3 pods: one at most"
            );
        }
        for _ in 0..20 {
            let s = a.try_acquire(&pods).unwrap();
            assert_ne!(
                s.pod().address(),
                pods[0].address(),
                "an ejected pod gets nothing"
            );
        }
        a.set_outlier_detection(OutlierSettings {
            consecutive_failures: 0,
            ..OutlierSettings::default()
        });
        assert!(a.report(&pods[2], false).is_none(), "0 turns ejection off");
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

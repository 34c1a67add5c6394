//! Which pod gets a request: a [`Policy`] chooses among the pods that have room; admission then
//! takes the slot, so the cap is enforced in one place whatever the policy.
//!
//! [`PowerOfTwoChoices`] is the default: sample two pods, take the less loaded one that has
//! room. A policy only chooses; when its choice has lost the last slot to a concurrent request,
//! or it found nothing, admission scans every pod from a random start, so a free slot is never
//! missed.

use std::sync::Arc;

use super::pod::Pod;

/// The pods a policy chooses among: the deployment's routable pods in the request's snapshot,
/// and the request's prefix key when its deployment routes on one (opaque block hashes here).
#[derive(Clone, Copy, Debug)]
pub struct Candidates<'a> {
    pods: &'a [Arc<Pod>],
    cap: u32,
    excluded: Option<&'a Arc<Pod>>,
    prefix: &'a [u64],
}

impl<'a> Candidates<'a> {
    /// `pods` with `cap` slots each, never offering `excluded` (a pod a retry moves away from).
    pub fn new(pods: &'a [Arc<Pod>], cap: u32, excluded: Option<&'a Arc<Pod>>) -> Self {
        Candidates {
            pods,
            cap,
            excluded,
            prefix: &[],
        }
    }

    /// The same candidates for a request keyed by `prefix`.
    pub fn with_prefix(self, prefix: &'a [u64]) -> Self {
        Candidates { prefix, ..self }
    }

    /// The request's prefix key (empty when it has none, or its deployment does not use one).
    pub fn prefix(&self) -> &'a [u64] {
        self.prefix
    }

    /// Slots per pod.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// How many pods there are (with room or not).
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The `i`-th pod.
    pub fn pod(&self, i: usize) -> &'a Arc<Pod> {
        &self.pods[i]
    }

    /// Whether the `i`-th pod may be chosen now: not excluded, routable, below the cap.
    pub fn has_room(&self, i: usize) -> bool {
        let pod = &self.pods[i];
        self.excluded.is_none_or(|e| !Arc::ptr_eq(e, pod)) && pod.has_room(self.cap)
    }
}

/// Chooses the pod for one request.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// The index in `candidates` of the pod to use, or `None` when the policy finds none with
    /// room. The answer is a preference: admission takes the slot, and scans for another pod
    /// if it cannot.
    fn choose(&self, candidates: &Candidates<'_>) -> Option<usize>;

    /// Told after admission took a slot on `pod` for a request of `candidates` (whichever pod
    /// it ended up on), so a policy can learn from it; nothing by default.
    fn admitted(&self, candidates: &Candidates<'_>, pod: &Pod) {
        let _ = (candidates, pod);
    }
}

/// Power of two choices: sample two distinct pods, prefer the one with fewer requests in flight,
/// and take whichever of the two has room.
#[derive(Clone, Copy, Debug, Default)]
pub struct PowerOfTwoChoices;

impl Policy for PowerOfTwoChoices {
    fn choose(&self, candidates: &Candidates<'_>) -> Option<usize> {
        let n = candidates.len();
        match n {
            0 => return None,
            1 => return candidates.has_room(0).then_some(0),
            _ => {}
        }
        let a = fastrand::usize(..n);
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        let (first, second) = if candidates.pod(a).in_flight() <= candidates.pod(b).in_flight() {
            (a, b)
        } else {
            (b, a)
        };
        [first, second]
            .into_iter()
            .find(|i| candidates.has_room(*i))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn pods(n: u16) -> Vec<Arc<Pod>> {
        (0..n)
            .map(|i| Arc::new(Pod::new(SocketAddr::from(([127, 0, 0, 1], 5001 + i)))))
            .collect()
    }

    #[test]
    fn p2c_chooses_only_pods_with_room() {
        let pods = pods(2);
        pods[0].set_routable(false);
        let candidates = Candidates::new(&pods, 1, None);
        for _ in 0..20 {
            assert_eq!(PowerOfTwoChoices.choose(&candidates), Some(1));
        }
        let excluded = Candidates::new(&pods, 1, Some(&pods[1]));
        assert_eq!(PowerOfTwoChoices.choose(&excluded), None);
        assert_eq!(
            PowerOfTwoChoices.choose(&Candidates::new(&[], 1, None)),
            None
        );
    }
}

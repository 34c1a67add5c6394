//! The pickers a deployment can choose (`routing.policy` in the routes file and the CRD), built
//! on admission's [`Policy`] seam: admission still takes the slot, so the per-pod cap and the
//! queue are the same whatever the policy.
//!
//! | policy | module | chooses | cost per request |
//! |---|---|---|---|
//! | `power_of_two_choices` (default) | [`crate::admission::policy`] | the less loaded of two random pods | O(1) |
//! | `least_outstanding` | [`least`] | the pod with the fewest of this router's requests in flight | O(pods) |
//! | `pod_load` | [`load`] | the lowest estimated wait: this router's count with the pod's scraped load, times the pod's slowness | O(pods) |
//! | `prefix_affinity` | [`affinity`] | a pod that served the longest prefix of the prompt ([`prefix`]), within a load bound | O(pods + blocks) |
//!
//! Pods' metrics are scraped by [`scrape`] into a [`load::PodLoads`] per deployment.

pub mod affinity;
pub mod least;
pub mod load;
pub mod prefix;
pub mod scrape;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::admission::{Candidates, Pod, Policy, PowerOfTwoChoices};
use crate::model::{PolicyKind, RoutingSettings};

pub use affinity::PrefixAffinity;
pub use least::LeastOutstanding;
pub use load::{PodLoadAware, PodLoads, Report};
pub use prefix::{PrefixKey, PrefixSource};

/// A deployment's picking, built from its [`RoutingSettings`]: the policy admission uses, the prefix
/// key the request path computes (prefix affinity only), and the board its scraper fills (when
/// the pods' metrics are scraped).
#[derive(Debug)]
pub struct Picking {
    /// The policy.
    pub policy: Box<dyn Policy>,
    /// How to key a request, for prefix affinity.
    pub prefix: Option<PrefixKey>,
    /// The pods' reported load, when scraped.
    pub loads: Option<Arc<PodLoads>>,
}

impl Picking {
    /// The picking `spec` declares.
    pub fn of(spec: &RoutingSettings) -> Self {
        let loads = spec.pod_metrics.as_ref().map(|m| {
            let interval = Duration::from_millis(m.interval_ms());
            PodLoads::new(interval * 2, Duration::from_millis(m.max_age_ms()))
        });
        let p = spec.prefix();
        let (policy, prefix): (Box<dyn Policy>, _) = match spec.policy {
            PolicyKind::PowerOfTwoChoices => (Box::new(PowerOfTwoChoices), None),
            PolicyKind::LeastOutstanding => (Box::new(LeastOutstanding), None),
            PolicyKind::PodLoad => match &loads {
                Some(loads) => (Box::new(PodLoadAware::new(loads.clone())), None),
                None => (Box::new(LeastOutstanding), None),
            },
            PolicyKind::PrefixAffinity => (
                Box::new(PrefixAffinity::new(p.memory_blocks as usize, loads.clone())),
                Some(PrefixKey::of(&p)),
            ),
        };
        Picking {
            policy,
            prefix,
            loads,
        }
    }
}

/// The policy a deployment's admission holds for its whole life, whose picker the table builder
/// replaces when the deployment's routing settings change (admission's own state, its slots and
/// queue, stays as it is).
#[derive(Clone, Debug)]
pub struct Switch {
    current: Arc<ArcSwap<Box<dyn Policy>>>,
}

impl Default for Switch {
    fn default() -> Self {
        Switch {
            current: Arc::new(ArcSwap::from_pointee(Box::new(PowerOfTwoChoices))),
        }
    }
}

impl Switch {
    /// Makes `policy` the one used from now on.
    pub fn set(&self, policy: Box<dyn Policy>) {
        self.current.store(Arc::new(policy));
    }
}

impl Policy for Switch {
    fn choose(&self, candidates: &Candidates<'_>) -> Option<usize> {
        self.current.load().choose(candidates)
    }

    fn admitted(&self, candidates: &Candidates<'_>, pod: &Pod) {
        self.current.load().admitted(candidates, pod);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::admission::{DeploymentAdmission, Slot};

    /// `n` pods on 127.0.0.1.
    pub fn pods(n: u16) -> Vec<Arc<Pod>> {
        (0..n)
            .map(|i| Arc::new(Pod::new(SocketAddr::from(([127, 0, 0, 1], 6001 + i)))))
            .collect()
    }

    /// `n` slots held on `pod` (given back when the slots are dropped).
    pub fn take(pod: &Arc<Pod>, n: usize) -> Vec<Slot> {
        let accounting = DeploymentAdmission::new(u32::MAX, None);
        (0..n).map(|_| accounting.force_acquire(pod).0).collect()
    }
}

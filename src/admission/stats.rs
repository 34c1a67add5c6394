//! Live counts of one deployment, read at scrape time and by the autoscaler.

use std::sync::Arc;

use super::pod::Pod;

/// Live counts of one deployment.
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
    /// Routable pods out of the rotation now (ejected by outlier detection).
    pub ejected: u32,
}

impl AdmissionStats {
    /// The counts of `pods` (the routable ones) with `queued` requests waiting.
    pub(super) fn of(pods: &[Arc<Pod>], queued: usize) -> Self {
        let mut stats = AdmissionStats {
            pods: pods.len() as u32,
            queued: queued as u32,
            ..AdmissionStats::default()
        };
        for pod in pods {
            let n = pod.in_flight();
            stats.in_flight += n;
            stats.busy_pods += u32::from(n > 0);
            stats.ejected += u32::from(pod.is_ejected());
        }
        stats
    }
}

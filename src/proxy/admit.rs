//! Phase "admit": a slot on one of the deployment's pods, at once or after waiting in the
//! deployment's queue for at most `max_queue_wait_ms`; with several replicas, through the
//! deployment's owner (see [`crate::admission::Admitter`]).

use std::time::{Duration, Instant};

use super::error::RouterError;
use crate::admission::{Admitter, Slot};
use crate::table::Deployment;

/// An admitted request.
#[derive(Debug)]
pub struct Admitted {
    /// The right to send it to one pod.
    pub slot: Slot,
    /// Time from being ready to be sent to the slot.
    pub queue_wait: Duration,
}

/// Admits a request ready to be sent since `started` (its arrival, or the end of receiving its
/// body) onto `deployment`; records its queue wait.
pub async fn admit(
    admitter: &Admitter,
    deployment: &Deployment,
    started: Instant,
) -> Result<Admitted, RouterError> {
    let max_wait = deployment.settings.max_queue_wait;
    let slot = admitter.admit(deployment.target(), max_wait).await?;
    let queue_wait = started.elapsed();
    deployment
        .metrics
        .queue_wait()
        .record(queue_wait.as_secs_f64());
    Ok(Admitted { slot, queue_wait })
}

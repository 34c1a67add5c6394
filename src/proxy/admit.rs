//! Phase "admit": a slot on one of the deployment's pods, at once or after waiting in the
//! deployment's queue for at most `max_queue_wait_ms`; with several replicas, through the
//! deployment's owner (see [`crate::admission::Admitter`]). For a deployment that routes on a
//! prompt's prefix, the request's key ([`key`]) goes with it.

use std::time::{Duration, Instant};

use super::error::RouterError;
use super::request::ClientRequest;
use crate::admission::{Admitter, Slot, Target};
use crate::table::Deployment;
use crate::upstream::RequestBody;

/// An admitted request.
#[derive(Debug)]
pub struct Admitted {
    /// The right to send it to one pod.
    pub slot: Slot,
    /// Time from being ready to be sent to the slot.
    pub queue_wait: Duration,
    /// When the slot was given (the request is sent from then on).
    pub at: Instant,
}

/// The prefix key of a request for `deployment`: empty unless the deployment routes on one;
/// from a header, or from the body when it was received whole (a larger body is routed on
/// load). Costs nothing for other deployments.
pub fn key<B>(deployment: &Deployment, request: &ClientRequest<B>, body: &RequestBody) -> Vec<u64> {
    let Some(key) = &deployment.prefix else {
        return Vec::new();
    };
    let whole = key.needs_body().then(|| body.whole_bytes()).flatten();
    key.blocks(|name| request.header(name), whole.as_deref())
}

/// Admits a request ready to be sent since `started` (its arrival, or the end of receiving its
/// body) onto `deployment`, with its prefix key; records its queue wait.
pub async fn admit(
    admitter: &Admitter,
    deployment: &Deployment,
    started: Instant,
    prefix: &[u64],
) -> Result<Admitted, RouterError> {
    let max_wait = deployment.settings.max_queue_wait;
    let target = Target {
        prefix,
        ..deployment.target()
    };
    let slot = admitter.admit(target, max_wait).await?;
    let at = Instant::now();
    let queue_wait = at.saturating_duration_since(started);
    deployment
        .metrics
        .queue_wait()
        .record(queue_wait.as_secs_f64());
    Ok(Admitted {
        slot,
        queue_wait,
        at,
    })
}

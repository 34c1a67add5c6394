//! Abandoned exchanges: requests the router gave up on (a 504, the client went away, an HTTP/2
//! reset, a mirror copy dropped) while the pod was busy with them. The pod does not know the
//! router gave up — a model server computes to the end — so the slot stays taken until the pod
//! is done, and the connection carries nothing else meanwhile:
//!
//! | given up | what the router does | the slot is freed |
//! |---|---|---|
//! | before the response head | keeps waiting for the head and reads the whole response, discarding it | when the response has ended (the connection then goes back to the pool), or the pod breaks the connection — at most `request_timeout_ms` after giving up; then the connection is closed |
//! | during the response body (larger than the response buffer, or a stream) | half-closes the connection (nothing more will be sent) and reads on, discarding: a pod that watches its connection stops and closes it, one that does not finishes its answer | when the pod has closed the connection or its answer has ended — at most `request_timeout_ms` after giving up; then the connection is closed |
//! | while sending the request (given up, or its body broke) | closes the connection: the pod may have part of the request | at the request's deadline, as above |
//!
//! The bounds: an abandoned request holds its slot at most `request_timeout_ms` after the router
//! gave up (a 504'd request: at most twice its timeout in all). A pod still busy after that —
//! a model slower than twice its timeout, or a hung one — can get another request while it
//! works: that window is the price of never holding a slot forever. Every abandoned request is
//! counted by how its slot was freed, with the time it was held after the router gave up
//! (`scoregate_abandoned_requests_total`, `scoregate_abandoned_slot_hold_seconds`).
//!
//! With coordinated admission the slot is the deployment owner's lease, released with it; the
//! owner expires a lease `2 × request_timeout_ms + cluster.lease_margin_ms` after granting it,
//! after the longest hold above (`docs/ARCHITECTURE.md`, invariants).

use std::mem;
use std::time::Instant;

use super::connection::{PodConnection, PodError};
use super::exchange::{Ending, Exchange, Progress};
use crate::http1::body::BodyDecoder;
use crate::telemetry::AbandonOutcome;

/// Takes what `exchange` has in progress (its slot, connection and response) and holds it in a
/// task of its own until the pod is done, within the bounds above.
pub(super) fn hold(exchange: &mut Exchange) {
    let given_up = Instant::now();
    let slot = exchange.slot.take();
    let connection = exchange.connection.take();
    let progress = mem::replace(&mut exchange.progress, Progress::Idle);
    let terms = exchange.terms.clone();
    let pool = exchange.pool.clone();
    let deadline = exchange.sent_at.unwrap_or(given_up) + terms.request_timeout;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // The runtime is gone (shutdown): nothing is left to wait with.
        return;
    };
    runtime.spawn(async move {
        let outcome = match (progress, connection) {
            (Progress::Waiting { to_head }, Some(mut connection)) => {
                let bound = given_up + terms.request_timeout;
                let drained = drain(&mut connection, to_head);
                match tokio::time::timeout_at(bound.into(), drained).await {
                    Ok(Ok(())) => {
                        pool.put(connection);
                        AbandonOutcome::Drained
                    }
                    Ok(Err(_)) => AbandonOutcome::Failed,
                    Err(_) => AbandonOutcome::Closed,
                }
            }
            // Closing the connection here would free the slot before the pod noticed (at its next
            // write, when it may already have the next request): the pod's own close, or the end
            // of its answer, says it is done.
            (Progress::Reading(decoder), Some(mut connection)) => {
                let bound = given_up + terms.request_timeout;
                let told = stop_reading(&mut connection, decoder);
                match tokio::time::timeout_at(bound.into(), told).await {
                    Ok(Ok(())) => AbandonOutcome::Drained,
                    Ok(Err(_)) => AbandonOutcome::Failed,
                    Err(_) => AbandonOutcome::Closed,
                }
            }
            // Sending the request, or cut: the connection is closed now.
            (_, connection) => {
                drop(connection);
                tokio::time::sleep_until(deadline.into()).await;
                AbandonOutcome::Closed
            }
        };
        drop(slot);
        terms.metrics.abandoned(outcome, given_up.elapsed());
    });
}

/// Tells the pod nothing more is coming, then reads the rest of its answer, discarding it, until
/// it ends or the pod closes the connection (an error: the pod stopped).
async fn stop_reading(
    connection: &mut PodConnection,
    decoder: BodyDecoder,
) -> Result<(), PodError> {
    // A failed shutdown means the connection is already broken: the read says so.
    let _ = connection.shutdown_write().await;
    connection.discard_body(decoder).await
}

/// Waits for the response head, then reads the body to its end, discarding it.
async fn drain(connection: &mut PodConnection, to_head: bool) -> Result<(), PodError> {
    let (_, _, decoder) = connection.response_head(to_head).await?;
    connection.discard_body(decoder).await
}

/// An exchange dropped with its request in progress is abandoned: its slot is held until the
/// pod is done ([`hold`]); one dropped idle is discarded at once.
impl Drop for Exchange {
    fn drop(&mut self) {
        if self.slot.is_none() {
            return;
        }
        match self.progress {
            // A pooled connection taken for a request never sent on it goes back to the pool.
            Progress::Idle if self.connection.is_some() => self.finish(Ending::Returned),
            Progress::Idle => self.finish(Ending::Discarded),
            _ => hold(self),
        }
    }
}

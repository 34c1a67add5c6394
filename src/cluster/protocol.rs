//! The coordination protocol between replicas: HTTP/2 requests on the internal port, each
//! carrying the shared credential.
//!
//! - `GET /v1/hello` → 200 with a challenge and the answering replica's proof of the credential
//!   (see [`super::credential`]). Once the connection is authenticated, every heartbeat's hello
//!   carries the asker's state and the answer the answering replica's ([`super::announce`]).
//! - `POST /v1/auth` → 204 when the connecting replica's proof is right, 401 otherwise; every
//!   other request on a connection that has not passed it is answered 401.
//! - `POST /v1/grant` (deployment, wait budget, the asker's view, optional pod to avoid) → 200
//!   with the pod and the owner's view, the response and request streams then stay open as the
//!   lease; or 429 / 503 with the reason, meaning what they mean to a client; 409 when the
//!   replica does not own the deployment in its view or the asker's epoch is newer than its
//!   own; 404 when the owner does not know the deployment.
//! - `POST /v1/adopt` (deployment, pod, time left) → 200 and a lease on a slot the requester
//!   already holds, reported to the replica that owns it now ([`super::reports`]). With
//!   `x-scoregate-shadow` the slot is the sender's own (admitted as owner or under the
//!   fallback), or with `x-scoregate-holder` another replica's own slot passed on; the receiver
//!   keeps it to pass it on to the next owner ([`super::shadow`]). A shadow of a slot just
//!   admitted names the owner's view and is refused (409) by a receiver in another view.
//! - `POST /v1/reconciled` → 204: every slot the receiver granted that the sender still holds
//!   has been reported again; the receiver frees the leases it kept for the sender since an
//!   earlier connection failed.
//! - `POST /v1/synced` (view) → 204: the sender has reported all its slots for that view.
//!
//! A lease ends when the requester ends its request body or resets it with CANCEL, or when it
//! expires; a requester that vanishes with its connection keeps it until it expires
//! ([`super::lease`]).

use http::{HeaderName, StatusCode};

use crate::admission::AdmitError;

/// Readiness and credential check.
pub const HELLO: &str = "/v1/hello";
/// The connecting replica's proof of the credential.
pub const AUTH: &str = "/v1/auth";
/// Ask for a slot.
pub const GRANT: &str = "/v1/grant";
/// Report a held slot to a new owner.
pub const ADOPT: &str = "/v1/adopt";
/// All leases reported for a view.
pub const SYNCED: &str = "/v1/synced";
/// Every slot the receiver granted that the sender still holds has been reported again.
pub const RECONCILED: &str = "/v1/reconciled";

/// On a report: the slot was admitted under `cluster.fallback` (outside any owner's accounting),
/// so a count above the cap at the new owner is an over-admission.
pub static FALLBACK: HeaderName = HeaderName::from_static("x-scoregate-fallback");

/// On a report: the slot is the sender's own. The sender's view when it was admitted just now
/// (the receiver takes it only in the same view), or [`SHADOW_HELD`] for a slot already in use.
pub static SHADOW: HeaderName = HeaderName::from_static("x-scoregate-shadow");
/// [`SHADOW`] for a slot already in use (shadowed again after a stream to a holder broke).
pub const SHADOW_HELD: &str = "held";
/// On a report passed on: the replica whose own slot it is ([`HOLDER_INSTANCE`], [`LEASE`]).
pub static HOLDER: HeaderName = HeaderName::from_static("x-scoregate-holder");
/// On a report passed on: the instance number of [`HOLDER`].
pub static HOLDER_INSTANCE: HeaderName = HeaderName::from_static("x-scoregate-holder-instance");

/// `endpoint/deployment`.
pub static DEPLOYMENT: HeaderName = HeaderName::from_static("x-scoregate-deployment");
/// Milliseconds the requester can wait in the owner's queue.
pub static WAIT_MS: HeaderName = HeaderName::from_static("x-scoregate-wait-ms");
/// A pod the grant must not choose (a retry after a failed connection).
pub static EXCLUDE: HeaderName = HeaderName::from_static("x-scoregate-exclude");
/// The granted (or adopted) pod, `ip:port`.
pub static POD: HeaderName = HeaderName::from_static("x-scoregate-pod");
/// Milliseconds until an adopted lease expires.
pub static LEASE_MS: HeaderName = HeaderName::from_static("x-scoregate-lease-ms");
/// A lease's number: the owner's for a grant (in its answer), the holder's for a report, or
/// the owner's again when the holder reports a slot that owner granted.
pub static LEASE: HeaderName = HeaderName::from_static("x-scoregate-lease");
/// Why a grant was refused: one of the `REASON_*` values.
pub static REASON: HeaderName = HeaderName::from_static("x-scoregate-reason");
/// The sender's identity (its advertised address).
pub static PEER: HeaderName = HeaderName::from_static("x-scoregate-peer");
/// `true` when the sender may own deployments (routes loaded, not draining).
pub static READY: HeaderName = HeaderName::from_static("x-scoregate-ready");
/// A view, `epoch.hash` ([`super::view_id::ViewId::encode`]).
pub static VIEW: HeaderName = HeaderName::from_static("x-scoregate-view");

/// The deployment has no routable pod.
pub const REASON_NO_READY_POD: &str = "no-ready-pod";
/// The request waited its whole budget.
pub const REASON_QUEUE_TIMEOUT: &str = "queue-timeout";
/// The queue is at its bound.
pub const REASON_QUEUE_FULL: &str = "queue-full";
/// The replica is not ready (still loading routes, or draining).
pub const REASON_NOT_READY: &str = "not-ready";
/// The owner does not know the deployment.
pub const REASON_UNKNOWN_DEPLOYMENT: &str = "unknown-deployment";
/// The replica does not own the deployment in its view.
pub const REASON_NOT_OWNER: &str = "not-owner";
/// The asker's view is at a newer epoch than the replica's.
pub const REASON_STALE_VIEW: &str = "stale-view";
/// A shadow names another view than the receiver's.
pub const REASON_OTHER_VIEW: &str = "other-view";

/// How a grant refusal travels: the owner's [`AdmitError`], its status and its reason. One table,
/// read both ways; a refusal means to the asking replica what it means to a client.
const REFUSALS: [(AdmitError, StatusCode, &str); 3] = [
    (
        AdmitError::QueueFull,
        StatusCode::TOO_MANY_REQUESTS,
        REASON_QUEUE_FULL,
    ),
    (
        AdmitError::QueueTimeout,
        StatusCode::SERVICE_UNAVAILABLE,
        REASON_QUEUE_TIMEOUT,
    ),
    (
        AdmitError::NoReadyPod,
        StatusCode::SERVICE_UNAVAILABLE,
        REASON_NO_READY_POD,
    ),
];

/// The status and reason an owner answers a refused grant with. An owner never refuses for an
/// unreachable owner (it is the owner): that reads as no ready pod.
pub fn refusal(error: AdmitError) -> (StatusCode, &'static str) {
    let error = match error {
        AdmitError::OwnerUnreachable => AdmitError::NoReadyPod,
        other => other,
    };
    REFUSALS
        .iter()
        .find(|(e, _, _)| *e == error)
        .map(|(_, status, reason)| (*status, *reason))
        .expect("every refusal is in the table")
}

/// The refusal an owner's answer carries, if it is one: a 429 is always a full queue.
pub fn refusal_of(status: StatusCode, reason: Option<&[u8]>) -> Option<AdmitError> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Some(AdmitError::QueueFull);
    }
    REFUSALS
        .iter()
        .find(|(_, s, r)| *s == status && reason == Some(r.as_bytes()))
        .map(|(error, _, _)| *error)
}

/// The `endpoint/deployment` key of a deployment.
pub fn key(endpoint: &str, deployment: &str) -> String {
    format!("{endpoint}/{deployment}")
}

/// `endpoint/deployment` split into its two names.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    let (endpoint, deployment) = key.split_once('/')?;
    (!endpoint.is_empty() && !deployment.is_empty()).then_some((endpoint, deployment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_back_as_sent() {
        for error in [
            AdmitError::QueueFull,
            AdmitError::QueueTimeout,
            AdmitError::NoReadyPod,
        ] {
            let (status, reason) = refusal(error);
            assert_eq!(refusal_of(status, Some(reason.as_bytes())), Some(error));
        }
        assert_eq!(
            refusal_of(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(REASON_NOT_READY.as_bytes())
            ),
            None
        );
    }
}

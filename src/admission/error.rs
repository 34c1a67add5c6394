//! Why a request was not admitted.

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The deployment has no routable pod.
    NoReadyPod,
    /// The queue is at its bound.
    QueueFull,
    /// The request waited `max_queue_wait_ms` without getting a slot.
    QueueTimeout,
    /// Coordinated admission: the deployment's owner cannot be reached and the fallback is
    /// `reject`.
    OwnerUnreachable,
}

//! Admission: the per-pod cap, the choice of pod, and the per-deployment FIFO queue whose
//! waiters give up after `max_queue_wait_ms`. This module depends on nothing else in the crate.
//!
//! | module | concern |
//! |---|---|
//! | [`error`] | why a request was not admitted |
//! | [`pod`] | one pod's count of requests in flight and whether it takes new ones |
//! | [`policy`] | which pod gets a request ([`Policy`]; [`PowerOfTwoChoices`] by default) |
//! | [`outlier`] | passive outlier detection: pods whose connections keep failing leave the rotation for a while |
//! | `queue` | the FIFO of waiters and the lost-wakeup rule |
//! | [`deployment`] | one deployment's accounting (cap, pods, policy, queue) and the [`Slot`] it hands out, freed when dropped |
//! | [`stats`] | live counts for metrics and the autoscaler |
//! | [`admitter`] | the interface the request path admits through, local or coordinated |
//!
//! The invariant kept here: a pod never has more slots taken than its cap, except through
//! [`DeploymentAdmission::force_acquire`] (slots another replica already granted), which says
//! so to its caller. A [`Pod`] and a [`DeploymentAdmission`] outlive routing snapshots.

pub mod admitter;
pub mod deployment;
pub mod error;
pub mod outlier;
pub mod pod;
pub mod policy;
mod queue;
pub mod stats;

pub use admitter::{Admitter, Coordinator, Pending, Target};
pub use deployment::{DeploymentAdmission, ReleaseGuard, Slot};
pub use error::AdmitError;
pub use outlier::{Ejection, OutlierSettings};
pub use pod::Pod;
pub use policy::{Candidates, Policy, PowerOfTwoChoices};
pub use stats::AdmissionStats;

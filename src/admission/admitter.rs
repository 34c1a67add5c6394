//! The admitter: step "admit" of the request path, behind one narrow interface.
//!
//! With one replica, [`Admitter::Local`] is exactly the deployment's own accounting. With
//! several, a [`Coordinator`] (the cluster) decides instead, so that the cap holds across
//! replicas; admission defines the interface and knows nothing of how it is implemented.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::deployment::{DeploymentAdmission, Slot};
use super::error::AdmitError;
use super::pod::Pod;

/// One deployment as an admitter sees it, from the routing snapshot a request loaded.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The endpoint's name.
    pub endpoint: &'a str,
    /// The deployment's name.
    pub deployment: &'a str,
    /// The deployment's routable pods in the snapshot.
    pub pods: &'a [Arc<Pod>],
    /// The deployment's slot accounting on this replica.
    pub accounting: &'a Arc<DeploymentAdmission>,
    /// How long the pod has for one request: a slot held much longer has been lost.
    pub request_timeout: Duration,
    /// The request's prefix key, for a policy that routes on it (empty otherwise).
    pub prefix: &'a [u64],
}

/// A boxed future of a coordinator's answer.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Admission decided across replicas; implemented by the cluster.
pub trait Coordinator: Send + Sync + 'static {
    /// A slot on one of the target's pods, waiting at most `max_wait`.
    fn admit<'a>(
        &'a self,
        target: Target<'a>,
        max_wait: Duration,
    ) -> Pending<'a, Result<Slot, AdmitError>>;

    /// A slot free now on another pod than `failed` (a retry after connecting failed).
    fn retry<'a>(&'a self, target: Target<'a>, failed: &'a Arc<Pod>) -> Pending<'a, Option<Slot>>;
}

/// Step "admit" of the request path: a slot on a pod of the deployment.
#[derive(Clone)]
pub enum Admitter {
    /// This replica admits on its own (one replica, or no cluster configured).
    Local,
    /// A coordinator admits, cluster-wide.
    Coordinated(Arc<dyn Coordinator>),
}

impl Admitter {
    /// A slot on one of the target's pods, waiting at most `max_wait` in the queue.
    #[inline]
    pub async fn admit(&self, target: Target<'_>, max_wait: Duration) -> Result<Slot, AdmitError> {
        match self {
            Admitter::Local => {
                let (pods, prefix) = (target.pods, target.prefix);
                target.accounting.admit_keyed(pods, prefix, max_wait).await
            }
            Admitter::Coordinated(coordinator) => coordinator.admit(target, max_wait).await,
        }
    }

    /// A slot free now on another pod than `failed` (a retry after connecting failed).
    pub async fn retry(&self, target: Target<'_>, failed: &Arc<Pod>) -> Option<Slot> {
        match self {
            Admitter::Local => target
                .accounting
                .try_acquire_excluding(target.pods, Some(failed)),
            Admitter::Coordinated(coordinator) => coordinator.retry(target, failed).await,
        }
    }
}

impl std::fmt::Debug for Admitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admitter::Local => f.write_str("Admitter::Local"),
            Admitter::Coordinated(_) => f.write_str("Admitter::Coordinated"),
        }
    }
}

//! Which router replica acts for a deployment.
//!
//! The autoscaler asks [`Ownership::owns`] at every decision interval and again immediately
//! before every write (scale and status), so a replica that has lost a deployment stops writing
//! at once; a write that races with the new owner is caught by the `resourceVersion` precondition
//! of the scale write (a 409 means someone else acted).

/// Decides whether this router replica acts for a deployment.
pub trait Ownership: Send + Sync + 'static {
    /// Whether this replica owns deployment `deployment` of endpoint `endpoint` now.
    fn owns(&self, endpoint: &str, deployment: &str) -> bool;
}

/// One router replica: it owns every deployment.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleReplica;

impl Ownership for SingleReplica {
    fn owns(&self, _endpoint: &str, _deployment: &str) -> bool {
        true
    }
}

impl<F> Ownership for F
where
    F: Fn(&str, &str) -> bool + Send + Sync + 'static,
{
    fn owns(&self, endpoint: &str, deployment: &str) -> bool {
        self(endpoint, deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_replica_owns_everything_and_closures_decide() {
        assert!(SingleReplica.owns("e", "d"));
        let only_blue = |_: &str, d: &str| d == "blue";
        assert!(only_blue.owns("e", "blue"));
        assert!(!only_blue.owns("e", "green"));
    }
}

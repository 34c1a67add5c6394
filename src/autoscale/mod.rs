//! Request-based autoscaling of model deployments, as azureml-fe does it, with the decision of
//! Knative's Pod Autoscaler (`docs/ARCHITECTURE.md`, "Autoscaling"): for each OnlineDeployment
//! with `scaleSettings.type: targetUtilization` and a `targetDeployment`, the router replica that
//! owns the deployment samples its load every 200 ms, decides a replica count every
//! `pollingInterval` seconds from averages over a stable and a panic window, and sets it through
//! the scale subresource of that apps/v1 Deployment. It never scales nodes.
//!
//! | module | concern |
//! |---|---|
//! | [`window`] | load samples averaged over sliding windows of time |
//! | [`decide`] | the pure decision: stable and panic windows, tolerance, stabilised scale-down |
//! | [`scaler`] | one deployment: ownership, HPA conflict, the decision, writes, reports |
//! | [`ownership`] | which replica acts for a deployment ([`Ownership`], [`SingleReplica`]) |
//! | [`objects`] | reflectors of OnlineDeployments, HPAs and Deployments; targets; replicas |
//! | [`writes`] | the scale subresource (with `resourceVersion`) and `status.autoscale` |
//! | [`report`] | metrics and the status content |
//! | [`controller`] | the supervisor and the per-deployment loop on the monotonic clock |
//!
//! Inputs: requests in flight and queued from the deployment's
//! [`crate::admission::DeploymentAdmission::stats`] on this replica (on the coordination owner of a
//! deployment these are cluster-wide: remote grants hold slots there, grant requests queue there,
//! fallback admissions are reported there), and the Deployment's `spec.replicas`,
//! `status.readyReplicas` and `resourceVersion` from its watch: steady state reads nothing.
//!
//! One replica acts per deployment: [`Ownership::owns`] is asked every interval and again right
//! before every write (scale and status), and the scale is replaced with the `resourceVersion`
//! the watch last saw, so a write racing with another writer gets a 409 and is not retried: the
//! next interval decides on what the watch shows then. A new owner starts from no history.
//!
//! An HPA whose `scaleTargetRef` is the target Deployment stops the autoscaler for that
//! deployment (status reason `HpaConflict`, metric `scoregate_autoscale_refused{reason="hpa"}`)
//! until the HPA is deleted.
//!
//! Decisions are logged with their inputs (stable busy, panic demand, current, ready, desired,
//! reason): at info level when the reason or a replica count changes, at debug level otherwise;
//! the status is written only then too.
//!
//! RBAC: `get`, `list`, `watch` on `onlinedeployments`, `horizontalpodautoscalers` (autoscaling)
//! and `deployments` (apps); `get`, `update`, `patch` on `deployments/scale` (apps); `patch` on
//! `onlinedeployments/status`.

pub mod controller;
pub mod decide;
pub mod objects;
pub mod ownership;
pub mod report;
pub mod scaler;
pub mod window;
pub mod writes;

use std::sync::Arc;

use kube::Client;

pub use ownership::{Ownership, SingleReplica};
pub use report::names;

use crate::config::AutoscaleConfig;
use crate::table::TableHandle;
use crate::telemetry::Metrics;

/// Starts the autoscaler over the OnlineDeployments in `namespaces` (empty: all namespaces),
/// sampling load from `table` and acting for the deployments `ownership` gives this replica.
/// Aborting the returned task stops it and its watches.
pub fn spawn(
    client: Client,
    namespaces: &[String],
    config: &AutoscaleConfig,
    table: TableHandle,
    ownership: Arc<dyn Ownership>,
    metrics: &Metrics,
) -> tokio::task::JoinHandle<()> {
    let mut scopes: Vec<Option<String>> = namespaces.iter().cloned().map(Some).collect();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        scopes.push(None);
    }
    let shared = Arc::new(scaler::Shared {
        writer: writes::Writer::new(client.clone(), config.field_manager.clone()),
        watches: objects::Watches::start(&client, &scopes),
        table,
        ownership,
        windows: scaler::Windows::of(config),
        metrics: metrics.clone(),
    });
    tokio::spawn(controller::supervise(shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_checked() {
        let config = AutoscaleConfig::default();
        assert!(!config.enabled);
        assert_eq!(config.scale_down_intervals, 20);
        config.validate(false).unwrap();
        let on = AutoscaleConfig {
            enabled: true,
            ..AutoscaleConfig::default()
        };
        on.validate(true).unwrap();
        assert!(on.validate(false).unwrap_err().0.contains("discovery.kube"));
        let no_window = AutoscaleConfig {
            scale_down_intervals: 0,
            ..on.clone()
        };
        assert!(no_window
            .validate(true)
            .unwrap_err()
            .0
            .contains("at least 1"));
        let panic_longer = AutoscaleConfig {
            panic_window_ms: 61_000,
            ..on.clone()
        };
        assert!(panic_longer
            .validate(true)
            .unwrap_err()
            .0
            .contains("no longer than the stable window"));
        let no_manager = AutoscaleConfig {
            field_manager: String::new(),
            ..on
        };
        assert!(no_manager
            .validate(true)
            .unwrap_err()
            .0
            .contains("field_manager"));
        let yaml: crate::config::RouterConfig =
            serde_yaml::from_str("autoscale: { enabled: true, scale_down_intervals: 5 }").unwrap();
        assert_eq!(yaml.autoscale.scale_down_intervals, 5);
        assert_eq!(yaml.autoscale.field_manager, "scoregate-autoscaler");
        assert_eq!(yaml.autoscale.stable_window_ms, 60_000);
        assert_eq!(yaml.autoscale.panic_window_ms, 6_000);
    }
}

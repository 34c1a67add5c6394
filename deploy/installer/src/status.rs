//! Reading an installed extension back: each component's readiness, as `kubectl get deployments
//! -n azureml` shows it, and the overall `provisioningState` (`Pending`, `Succeeded`, `Failed`),
//! as `az k8s-extension show` reports it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams};
use kube::Client;
use serde::Serialize;

use crate::render::meta;
use crate::render::record::{self, ExtensionRecord, CREATED_NAMESPACE_ANNOTATION};
use crate::settings::parse_bool;

/// The extension's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProvisioningState {
    /// Installed; some component is not ready yet.
    Pending,
    /// Every component is ready.
    Succeeded,
    /// A component failed (or is missing) and will not recover by waiting.
    Failed,
}

/// One component's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ComponentState {
    /// Serving.
    Ready,
    /// Starting, rolling out, or waiting for an address.
    Pending,
    /// Failed or missing.
    Failed,
}

/// One component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// `Deployment`, `DaemonSet` or `Service`.
    pub kind: String,
    /// Its name in `azureml`.
    pub name: String,
    /// `ready/desired` (replicas or pods), or the Service's address.
    pub ready: String,
    /// Its state.
    pub state: ComponentState,
    /// Why it is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `show`'s answer, shaped like `az k8s-extension show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionStatus {
    /// The extension's name.
    pub name: String,
    /// `scoregate`.
    pub extension_type: String,
    /// The installer version that last applied it.
    pub version: String,
    /// `cluster` (the only scope, az rule 1).
    pub scope: String,
    /// `azureml`.
    pub release_namespace: String,
    /// The router image.
    pub image: String,
    /// Overall state.
    pub provisioning_state: ProvisioningState,
    /// `--config` settings as given.
    pub configuration_settings: BTreeMap<String, String>,
    /// `--config-protected` keys; values are never stored or shown.
    pub configuration_protected_settings: BTreeMap<String, String>,
    /// Each component.
    pub components: Vec<Component>,
}

/// A record and whether its `create` made namespace `azureml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredExtension {
    /// The record.
    pub record: ExtensionRecord,
    /// Whether `create` made the namespace.
    pub created_namespace: bool,
}

fn stored(cm: &ConfigMap) -> anyhow::Result<StoredExtension> {
    let record = record::from_config_map(cm).map_err(anyhow::Error::msg)?;
    let created_namespace = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CREATED_NAMESPACE_ANNOTATION))
        .is_some_and(|v| v == "true");
    Ok(StoredExtension {
        record,
        created_namespace,
    })
}

/// Every installed extension's record.
pub async fn list_records(client: &Client) -> anyhow::Result<Vec<StoredExtension>> {
    let params = ListParams::default().labels(&format!(
        "app.kubernetes.io/managed-by={},app.kubernetes.io/component={}",
        meta::MANAGED_BY,
        meta::RECORD_COMPONENT
    ));
    let list = Api::<ConfigMap>::namespaced(client.clone(), meta::NAMESPACE)
        .list(&params)
        .await
        .context("cannot list the extension records (ConfigMaps in namespace azureml)")?;
    list.items.iter().map(stored).collect()
}

/// The record of extension `name`, if installed.
pub async fn load_record(client: &Client, name: &str) -> anyhow::Result<Option<StoredExtension>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), meta::NAMESPACE)
        .get_opt(&record::config_map_name(name))
        .await
        .with_context(|| format!("cannot read the record of extension `{name}`"))?;
    cm.as_ref().map(stored).transpose()
}

/// The state of extension `stored`, from its objects in the cluster.
pub async fn assess(client: &Client, stored: &StoredExtension) -> anyhow::Result<ExtensionStatus> {
    let record = &stored.record;
    let selector = ListParams::default().labels(&meta::selector(&record.name));
    let setting = |key: &str| {
        record
            .configuration_settings
            .get(key)
            .and_then(|v| parse_bool(v))
    };
    let mut components = Vec::new();

    let deployments = Api::<Deployment>::namespaced(client.clone(), meta::NAMESPACE)
        .list(&selector)
        .await
        .context("cannot list the extension's Deployments")?
        .items;
    if setting("enableInference") == Some(true)
        && !deployments
            .iter()
            .any(|d| d.metadata.name.as_deref() == Some(meta::ROUTER))
    {
        components.push(missing("Deployment", meta::ROUTER));
    }
    components.extend(deployments.iter().map(deployment_component));

    let daemon_sets = Api::<DaemonSet>::namespaced(client.clone(), meta::NAMESPACE)
        .list(&selector)
        .await
        .context("cannot list the extension's DaemonSets")?
        .items;
    for (key, name) in [
        (
            "installNvidiaDevicePlugin",
            crate::render::gpu::DEVICE_PLUGIN,
        ),
        ("installDcgmExporter", crate::render::gpu::DCGM_EXPORTER),
    ] {
        if setting(key) == Some(true)
            && !daemon_sets
                .iter()
                .any(|d| d.metadata.name.as_deref() == Some(name))
        {
            components.push(missing("DaemonSet", name));
        }
    }
    components.extend(daemon_sets.iter().map(daemon_set_component));

    if setting("enableInference") == Some(true) {
        let service = Api::<Service>::namespaced(client.clone(), meta::NAMESPACE)
            .get_opt(meta::SERVICE)
            .await
            .context("cannot read Service azureml-fe")?;
        components.push(match service {
            Some(s) => service_component(&s),
            None => missing("Service", meta::SERVICE),
        });
    }

    let provisioning_state = if components.iter().any(|c| c.state == ComponentState::Failed) {
        ProvisioningState::Failed
    } else if components
        .iter()
        .any(|c| c.state == ComponentState::Pending)
    {
        ProvisioningState::Pending
    } else {
        ProvisioningState::Succeeded
    };
    Ok(ExtensionStatus {
        name: record.name.clone(),
        extension_type: record.extension_type.clone(),
        version: record.version.clone(),
        scope: "cluster".to_owned(),
        release_namespace: meta::NAMESPACE.to_owned(),
        image: record.image.clone(),
        provisioning_state,
        configuration_settings: record.configuration_settings.clone(),
        configuration_protected_settings: record
            .configuration_protected_setting_keys
            .iter()
            .map(|k| (k.clone(), "(not stored)".to_owned()))
            .collect(),
        components,
    })
}

fn missing(kind: &str, name: &str) -> Component {
    Component {
        kind: kind.to_owned(),
        name: name.to_owned(),
        ready: "-".to_owned(),
        state: ComponentState::Failed,
        message: Some(
            "missing from the cluster: run `scoregate-ext update` to restore it".to_owned(),
        ),
    }
}

fn observed(generation: Option<i64>, observed: Option<i64>) -> bool {
    match (generation, observed) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// A Deployment's readiness: failed when its rollout is stuck, ready when every replica is
/// updated, ready and available.
pub fn deployment_component(d: &Deployment) -> Component {
    let name = d.metadata.name.clone().unwrap_or_default();
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let conditions = status.conditions.unwrap_or_default();
    let failure = conditions.iter().find(|c| {
        (c.type_ == "Progressing" && c.status == "False")
            || (c.type_ == "ReplicaFailure" && c.status == "True")
    });
    let (state, message) = if let Some(c) = failure {
        (
            ComponentState::Failed,
            Some(format!(
                "{} {}: {}",
                c.type_,
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )),
        )
    } else if observed(d.metadata.generation, status.observed_generation)
        && ready >= desired
        && updated >= desired
        && available >= desired
    {
        (ComponentState::Ready, None)
    } else {
        (
            ComponentState::Pending,
            Some(format!(
                "{ready} of {desired} replicas ready, {updated} updated, {available} available: `kubectl describe pods -n azureml` shows why"
            )),
        )
    };
    Component {
        kind: "Deployment".to_owned(),
        name,
        ready: format!("{ready}/{desired}"),
        state,
        message,
    }
}

/// A DaemonSet's readiness: ready when every scheduled pod is updated and ready.
pub fn daemon_set_component(d: &DaemonSet) -> Component {
    let name = d.metadata.name.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let desired = status.desired_number_scheduled;
    let ready = status.number_ready;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let (state, message) = if observed(d.metadata.generation, status.observed_generation)
        && ready >= desired
        && updated >= desired
    {
        (ComponentState::Ready, None)
    } else {
        (
            ComponentState::Pending,
            Some(format!(
                "{ready} of {desired} pods ready, {updated} updated"
            )),
        )
    };
    Component {
        kind: "DaemonSet".to_owned(),
        name,
        ready: format!("{ready}/{desired}"),
        state,
        message,
    }
}

/// The scoring Service: a LoadBalancer is pending until it has an address.
pub fn service_component(s: &Service) -> Component {
    let name = s.metadata.name.clone().unwrap_or_default();
    let type_ = s
        .spec
        .as_ref()
        .and_then(|spec| spec.type_.clone())
        .unwrap_or_else(|| "ClusterIP".to_owned());
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    let (ready, state, message) = match (type_.as_str(), ingress) {
        ("LoadBalancer", Some(address)) => (address, ComponentState::Ready, None),
        ("LoadBalancer", None) => (
            "<pending>".to_owned(),
            ComponentState::Pending,
            Some("waiting for the load balancer's address; clusters without a load balancer never get one: use inferenceRouterServiceType=nodePort or clusterIP there".to_owned()),
        ),
        (other, _) => (other.to_owned(), ComponentState::Ready, None),
    };
    Component {
        kind: "Service".to_owned(),
        name,
        ready,
        state,
        message,
    }
}

/// How `wait_for_router` polls.
#[derive(Clone, Copy, Debug)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Look this often.
    pub poll: Duration,
}

/// Waits until the router Deployment is ready; fails at once if it failed, and with its state
/// when `timeout` passes.
pub async fn wait_for_router(client: &Client, options: WaitOptions) -> anyhow::Result<Component> {
    let api = Api::<Deployment>::namespaced(client.clone(), meta::NAMESPACE);
    let wait = async {
        loop {
            let component = match api
                .get_opt(meta::ROUTER)
                .await
                .context("cannot read Deployment azureml/azureml-fe-v2")?
            {
                Some(d) => deployment_component(&d),
                None => missing("Deployment", meta::ROUTER),
            };
            match component.state {
                ComponentState::Ready => return Ok(component),
                ComponentState::Failed => anyhow::bail!(
                    "the router failed: Deployment azureml/{}: {}",
                    meta::ROUTER,
                    component.message.unwrap_or_default()
                ),
                ComponentState::Pending => tokio::time::sleep(options.poll).await,
            }
        }
    };
    match tokio::time::timeout(options.timeout, wait).await {
        Ok(result) => result,
        Err(_) => {
            let now = api.get_opt(meta::ROUTER).await.ok().flatten();
            let detail = now
                .as_ref()
                .map(deployment_component)
                .and_then(|c| c.message)
                .unwrap_or_else(|| "the Deployment does not exist".to_owned());
            anyhow::bail!(
                "the router was not ready within {} (provisioningState Pending): {detail}; `scoregate-ext show` reports progress, `--timeout` waits longer",
                humantime::format_duration(options.timeout)
            )
        }
    }
}

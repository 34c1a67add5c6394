//! Plan → Kubernetes objects. Each submodule renders one concern with k8s-openapi's types (or,
//! for the ServiceMonitor, a typed subset); this module orders them and prints them.
//!
//! Rendering is pure: the same plan and record give byte-identical output (the golden tests rely
//! on it). Nothing here talks to a cluster.

pub mod config;
pub mod crds;
pub mod gpu;
pub mod meta;
pub mod monitoring;
pub mod network;
pub mod rbac;
pub mod record;
pub mod router;
pub mod service;
pub mod tls;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, Namespace, ObjectFieldSelector, Toleration,
};
use scoregate::config::RouterConfig;
use serde::Serialize;

use crate::problem::Notice;
use crate::validate::{InferencePlan, Plan, TlsSource};
use crate::values::TolerationSpec;
use record::ExtensionRecord;

/// What to install, in apply order, and what to tell the user.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The objects, as YAML values (field order as k8s-openapi serializes it).
    pub objects: Vec<serde_yaml::Value>,
    /// Notices from validation and rendering.
    pub notices: Vec<Notice>,
    /// The router's configuration, when the router is installed.
    pub router_config: Option<RouterConfig>,
}

fn value<T: Serialize>(object: &T) -> serde_yaml::Value {
    serde_yaml::to_value(object).expect("Kubernetes objects always serialize")
}

/// Environment variable `name` set from the pod's own `field_path` (the downward API).
fn downward_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Kubernetes tolerations for `specs`.
pub(crate) fn tolerations(specs: &[TolerationSpec]) -> Option<Vec<Toleration>> {
    (!specs.is_empty()).then(|| {
        specs
            .iter()
            .map(|t| Toleration {
                key: Some(t.key.clone()),
                operator: Some(if t.value.is_some() { "Equal" } else { "Exists" }.to_owned()),
                value: t.value.clone(),
                effect: t.effect.clone(),
                ..Toleration::default()
            })
            .collect()
    })
}

/// Renders `plan` for the extension described by `record`.
pub fn render(plan: &Plan, record: &ExtensionRecord) -> Manifest {
    let ext = record.name.as_str();
    let mut notices = plan.notices.clone();
    let mut objects = vec![
        value(&Namespace {
            metadata: meta::cluster_scoped(meta::NAMESPACE, ext, "namespace"),
            ..Namespace::default()
        }),
        value(&record::config_map(record)),
    ];
    let mut router_config = None;
    if let Some(inference) = &plan.inference {
        let cfg = config::router_config(inference);
        render_router(plan, inference, &cfg, record, &mut objects);
        if cfg.cluster.is_some() {
            notices.push(cluster_secret_notice());
        }
        router_config = Some(cfg);
    }
    render_gpu(plan, ext, &mut objects);
    Manifest {
        objects,
        notices,
        router_config,
    }
}

/// What the manifest says about the replicas' credential, which it does not hold.
pub fn cluster_secret_notice() -> Notice {
    Notice::general(format!(
        "Secret {}/{} (the replicas' shared cluster credential) is not in this manifest: \
         scoregate-ext creates it once with 32 random bytes and keeps it on every update",
        meta::NAMESPACE,
        meta::CLUSTER_SECRET
    ))
}

/// The router and everything around it, in apply order.
fn render_router(
    plan: &Plan,
    inference: &InferencePlan,
    cfg: &RouterConfig,
    record: &ExtensionRecord,
    objects: &mut Vec<serde_yaml::Value>,
) {
    let ext = record.name.as_str();
    objects.extend(crds::crds(ext).iter().map(value));
    objects.push(value(&rbac::service_account(ext)));
    if inference.namespaces.is_empty() {
        objects.push(value(&rbac::cluster_role(ext)));
        objects.push(value(&rbac::cluster_role_binding(ext)));
    } else {
        for (role, binding) in rbac::namespaced_roles(&inference.namespaces, inference.ha, ext) {
            objects.push(value(&role));
            objects.push(value(&binding));
        }
    }
    let yaml = config::to_yaml(cfg);
    objects.push(value(&config::config_map(&yaml, ext)));
    if let Some(TlsSource::Files(pair)) = inference.tls.as_ref().map(|t| &t.source) {
        objects.push(value(&tls::secret(pair, ext)));
    }
    objects.push(value(&router::deployment(
        inference,
        cfg,
        &yaml,
        &plan.node_selector,
        &record.image,
        ext,
    )));
    objects.push(value(&router::disruption_budget(ext)));
    objects.push(value(&service::scoring(inference, ext)));
    if let Some(cluster) = &cfg.cluster {
        objects.push(value(&service::peers(ext, cluster.listen.port())));
    }
    if inference.network_policy {
        let mut scoring = Vec::new();
        if inference.allow_insecure {
            scoring.push(router::HTTP);
        }
        if inference.tls.is_some() {
            scoring.push(router::HTTPS);
        }
        let cluster = cfg.cluster.as_ref().map(|_| router::CLUSTER);
        objects.push(value(&network::router(
            ext,
            &scoring,
            router::ADMIN,
            cluster,
        )));
    }
    if plan.service_monitors {
        objects.push(value(&service::metrics(ext, cfg.listen.admin.port())));
        objects.push(value(&monitoring::service_monitor(
            meta::SERVICE,
            ext,
            "router",
            BTreeMap::from([(
                service::METRICS_SELECTOR.0.to_owned(),
                service::METRICS_SELECTOR.1.to_owned(),
            )]),
            router::ADMIN,
            &plan.service_monitor_labels,
        )));
    }
}

/// The GPU add-ons.
fn render_gpu(plan: &Plan, ext: &str, objects: &mut Vec<serde_yaml::Value>) {
    let scheduling = gpu::GpuScheduling {
        tolerations: plan.gpu_tolerations.clone(),
        priority_class: plan.gpu_priority_class.clone(),
    };
    if plan.nvidia_device_plugin {
        objects.push(value(&gpu::device_plugin(
            ext,
            &plan.node_selector,
            &scheduling,
        )));
    }
    if plan.dcgm_exporter {
        objects.push(value(&gpu::dcgm_exporter(
            ext,
            &plan.node_selector,
            &scheduling,
        )));
        objects.push(value(&gpu::dcgm_service(ext)));
        if plan.service_monitors {
            objects.push(value(&monitoring::service_monitor(
                gpu::DCGM_EXPORTER,
                ext,
                "gpu",
                BTreeMap::from([(
                    "app.kubernetes.io/name".to_owned(),
                    gpu::DCGM_EXPORTER.to_owned(),
                )]),
                "metrics",
                &plan.service_monitor_labels,
            )));
        }
    }
}

/// `kind/name` of a rendered object, e.g. `Deployment/azureml-fe-v2`.
pub fn object_ref(object: &serde_yaml::Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

impl Manifest {
    /// The object of `kind` named `name`.
    pub fn find(&self, kind: &str, name: &str) -> Option<&serde_yaml::Value> {
        self.objects.iter().find(|o| {
            o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
        })
    }

    /// Multi-document YAML, notices first as comments (`kubectl apply -f` ignores them).
    pub fn to_yaml(&self) -> String {
        let mut out = format!(
            "# Rendered by scoregate-ext {}: {} objects.\n",
            env!("CARGO_PKG_VERSION"),
            self.objects.len()
        );
        for notice in &self.notices {
            out.push_str(&format!("# NOTE {notice}\n"));
        }
        for object in &self.objects {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(object).expect("YAML values always serialize"));
        }
        out
    }

    /// A `v1` `List` of the objects, as pretty JSON (notices are not part of it: print them apart).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct List<'a> {
            api_version: &'static str,
            kind: &'static str,
            items: &'a [serde_yaml::Value],
        }
        let list = List {
            api_version: "v1",
            kind: "List",
            items: &self.objects,
        };
        serde_json::to_string_pretty(&list).expect("YAML values always serialize as JSON")
    }
}

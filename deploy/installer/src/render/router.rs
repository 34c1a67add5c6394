//! The router's Deployment `azureml-fe-v2` and its PodDisruptionBudget.
//!
//! As azureml-fe: 3 replicas spread over 3 nodes by required pod anti-affinity with
//! `inferenceRouterHA`, else 1; requests 900m CPU / 800Mi, limits 2 CPU / 1200Mi; pods labelled
//! `azuremlappname=azureml-fe`. Probes hit the admin port (`/readyz`, `/healthz`). Shutdown: the
//! pod keeps serving for the drain delay (`preStop` sleep), then SIGTERM gives in-flight requests
//! the grace period; `terminationGracePeriodSeconds` covers both plus a margin.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapProjection, Container, ContainerPort, ExecAction,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, LocalObjectReference, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretProjection, SecurityContext, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use scoregate::config::RouterConfig;

use super::config::{
    self, CLUSTER_SECRET_PATH, CONFIG_DIR, CONFIG_KEY, CONFIG_PATH, TLS_CERT_PATH, TLS_KEY_PATH,
};
use super::meta;
use crate::settings::RouterResources;
use crate::validate::{InferencePlan, KeySpelling, PreStop, TlsSource, HA_REPLICAS};

/// The user (and group) the router runs as: not root, with nothing to gain from privileges.
pub const RUN_AS: i64 = 65532;
/// Seconds added to drain + grace in `terminationGracePeriodSeconds`, for process exit.
pub const EXIT_MARGIN_SECONDS: i64 = 5;
/// The pod template annotation carrying the digest of the router configuration.
pub const CONFIG_DIGEST_ANNOTATION: &str = "scoregate.io/config-digest";

/// The container port plain HTTP is served on.
pub const HTTP: &str = "http";
/// The container port HTTPS is served on.
pub const HTTPS: &str = "https";
/// The container port of `/healthz`, `/readyz` and `/metrics`.
pub const ADMIN: &str = "admin";
/// The replicas' internal port; the peer Service's EndpointSlices carry this name.
pub const CLUSTER: &str = scoregate::cluster::kube_peers::PORT_NAME;
const VOLUME: &str = "scoregate";

fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(meta::APP_LABEL.0.to_owned(), meta::APP_LABEL.1.to_owned())])
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ])
}

/// The container's requests and limits.
pub fn resources(r: &RouterResources) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(&r.requests_cpu.text, &r.requests_memory.text)),
        limits: Some(quantities(&r.limits_cpu.text, &r.limits_memory.text)),
        ..ResourceRequirements::default()
    }
}

/// The secret the router's certificate is projected from, and how it names its keys (`None`:
/// not known, both spellings are projected).
pub fn tls_secret(plan: &InferencePlan) -> Option<(&str, Option<KeySpelling>)> {
    plan.tls.as_ref().map(|tls| match &tls.source {
        TlsSource::Files(_) => (meta::TLS_SECRET, Some(KeySpelling::AzureMl)),
        TlsSource::Secret { name, spelling } => (name.as_str(), *spelling),
    })
}

/// Deployment `azureml-fe-v2`.
pub fn deployment(
    plan: &InferencePlan,
    router_config: &RouterConfig,
    config_yaml: &str,
    node_selector: &BTreeMap<String, String>,
    image: &str,
    extension: &str,
) -> Deployment {
    let replicas = if plan.ha { HA_REPLICAS as i32 } else { 1 };
    let mut pod_labels = selector_labels();
    pod_labels.extend([
        ("app.kubernetes.io/name".to_owned(), "scoregate".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "router".to_owned(),
        ),
        (meta::EXTENSION_LABEL.to_owned(), extension.to_owned()),
    ]);
    let drain = config::drain_seconds();
    let grace = config::grace_seconds();
    // With one replica per node on exactly 3 nodes a surge pod could never schedule: replace in
    // place. With one replica, surge first so there is always a ready router.
    let rolling = if plan.ha {
        (IntOrString::Int(0), IntOrString::Int(1))
    } else {
        (IntOrString::Int(1), IntOrString::Int(0))
    };
    let image_pull_secrets = (!plan.image_pull_secrets.is_empty()).then(|| {
        plan.image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    });

    Deployment {
        metadata: meta::namespaced(meta::ROUTER, extension, "router"),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(rolling.0),
                    max_unavailable: Some(rolling.1),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_DIGEST_ANNOTATION.to_owned(),
                        config::digest(config_yaml),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(meta::ROUTER.to_owned()),
                    affinity: anti_affinity(plan),
                    topology_spread_constraints: zone_spread(plan),
                    node_selector: (!node_selector.is_empty()).then(|| node_selector.clone()),
                    tolerations: super::tolerations(&plan.tolerations),
                    image_pull_secrets,
                    termination_grace_period_seconds: Some(drain + grace + EXIT_MARGIN_SECONDS),
                    security_context: Some(pod_security(plan)),
                    containers: vec![container(plan, router_config, image, drain)],
                    volumes: Some(vec![Volume {
                        name: VOLUME.to_owned(),
                        projected: Some(ProjectedVolumeSource {
                            // Owner and group (fsGroup) read: the key is not world-readable.
                            default_mode: Some(0o440),
                            sources: Some(volume_sources(plan, router_config)),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The router container: `scoregate serve --config …`, its ports, probes, resources, drain.
fn container(
    plan: &InferencePlan,
    router_config: &RouterConfig,
    image: &str,
    drain: i64,
) -> Container {
    let mut ports = Vec::new();
    if plan.allow_insecure {
        ports.push(port(HTTP, router_config.listen.http.port()));
    }
    if plan.tls.is_some() {
        ports.push(port(HTTPS, router_config.listen.https.port()));
    }
    ports.push(port(ADMIN, router_config.listen.admin.port()));
    if let Some(cluster) = &router_config.cluster {
        ports.push(port(CLUSTER, cluster.listen.port()));
    }
    // The replicas advertise their pod IP to each other.
    let env = router_config
        .cluster
        .is_some()
        .then(|| vec![super::downward_env("POD_IP", "status.podIP")]);
    Container {
        name: "router".to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec!["scoregate".to_owned()]),
        args: Some(vec![
            "serve".to_owned(),
            "--config".to_owned(),
            CONFIG_PATH.to_owned(),
        ]),
        ports: Some(ports),
        env,
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(resources(&plan.resources)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(pre_stop(plan.pre_stop, drain)),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: VOLUME.to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// Waits `seconds` before SIGTERM: the kubelet's `sleep` action, or on servers without it
/// `scoregate sleep` (the image has no shell).
fn pre_stop(how: PreStop, seconds: i64) -> LifecycleHandler {
    match how {
        PreStop::Sleep => LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..LifecycleHandler::default()
        },
        PreStop::Exec => LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "scoregate".to_owned(),
                    "sleep".to_owned(),
                    format!("{seconds}s"),
                ]),
            }),
            ..LifecycleHandler::default()
        },
    }
}

/// Non-root, seccomp `RuntimeDefault`; the user, group and fsGroup 65532 except on OpenShift,
/// whose restricted SCC assigns them from the namespace's range (and refuses fixed ones).
fn pod_security(plan: &InferencePlan) -> PodSecurityContext {
    let fixed = (!plan.openshift).then_some(RUN_AS);
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: fixed,
        run_as_group: fixed,
        fs_group: fixed,
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// One projected volume: the configuration, the certificate (with TLS) and the cluster
/// credential (with HA), so the kubelet's atomic updates reach the router's watches without a
/// nested mount.
fn volume_sources(plan: &InferencePlan, router_config: &RouterConfig) -> Vec<VolumeProjection> {
    let relative = |path: &str| {
        path.trim_start_matches(CONFIG_DIR)
            .trim_start_matches('/')
            .to_owned()
    };
    let mut sources = vec![VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: meta::CONFIG_MAP.to_owned(),
            items: Some(vec![key_to_path(CONFIG_KEY, CONFIG_KEY)]),
            ..ConfigMapProjection::default()
        }),
        ..VolumeProjection::default()
    }];
    if let Some((secret, spelling)) = tls_secret(plan) {
        // Known spelling: exactly its keys. Unknown (rendered without a cluster): both, each
        // optional; Azure ML's last, so it wins where a Secret has both.
        let spellings: Vec<KeySpelling> = match spelling {
            Some(known) => vec![known],
            None => KeySpelling::ALL.into_iter().rev().collect(),
        };
        for each in spellings {
            let (cert, key) = each.keys();
            sources.push(VolumeProjection {
                secret: Some(SecretProjection {
                    name: secret.to_owned(),
                    items: Some(vec![
                        key_to_path(cert, &relative(TLS_CERT_PATH)),
                        key_to_path(key, &relative(TLS_KEY_PATH)),
                    ]),
                    optional: spelling.is_none().then_some(true),
                }),
                ..VolumeProjection::default()
            });
        }
    }
    if router_config.cluster.is_some() {
        sources.push(VolumeProjection {
            secret: Some(SecretProjection {
                name: meta::CLUSTER_SECRET.to_owned(),
                items: Some(vec![key_to_path(
                    config::CLUSTER_SECRET_KEY,
                    &relative(CLUSTER_SECRET_PATH),
                )]),
                ..SecretProjection::default()
            }),
            ..VolumeProjection::default()
        });
    }
    sources
}

/// With HA: one replica per node (required).
fn anti_affinity(plan: &InferencePlan) -> Option<Affinity> {
    plan.ha.then(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels()),
                    ..LabelSelector::default()
                }),
                topology_key: "kubernetes.io/hostname".to_owned(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    })
}

/// With HA: the replicas spread over zones where the cluster has several (preferred, so a
/// single-zone cluster or nodes without zone labels still take all three).
fn zone_spread(plan: &InferencePlan) -> Option<Vec<TopologySpreadConstraint>> {
    plan.ha.then(|| {
        vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels()),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]
    })
}

/// PodDisruptionBudget `azureml-fe-v2`: voluntary evictions take one router at a time (with one
/// replica this still lets nodes drain; the surge-first rollout keeps the gap short).
pub fn disruption_budget(extension: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta::namespaced(meta::ROUTER, extension, "router"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn key_to_path(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        ..KeyToPath::default()
    }
}

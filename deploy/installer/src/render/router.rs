//! The router's Deployment `azureml-fe-v2` and its PodDisruptionBudget.
//!
//! As azureml-fe (§1): 3 replicas spread over 3 nodes by required pod anti-affinity with
//! `inferenceRouterHA`, else 1; requests 900m CPU / 800Mi, limits 2 CPU / 1200Mi; pods labelled
//! `azuremlappname=azureml-fe`. Probes hit the admin port (`/readyz`, `/healthz`). Shutdown: the
//! pod keeps serving for the drain delay (`preStop` sleep), then SIGTERM gives in-flight requests
//! the grace period; `terminationGracePeriodSeconds` covers both plus a margin.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapProjection, Container, ContainerPort, HTTPGetAction,
    KeyToPath, Lifecycle, LifecycleHandler, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretProjection, SecurityContext, SleepAction, Volume, VolumeMount, VolumeProjection,
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
use crate::validate::{InferencePlan, TlsSource, HA_REPLICAS};

/// The user (and group) the router runs as: not root, with nothing to gain from privileges.
pub const RUN_AS: i64 = 65532;
/// Seconds added to drain + grace in `terminationGracePeriodSeconds`, for process exit.
pub const EXIT_MARGIN_SECONDS: i64 = 5;
/// The pod template annotation carrying the digest of the router configuration.
pub const CONFIG_DIGEST_ANNOTATION: &str = "scoregate.io/config-digest";

/// Named container ports.
const HTTP: &str = "http";
const HTTPS: &str = "https";
const ADMIN: &str = "admin";
/// The replicas' internal port; the peer Service's EndpointSlices carry this name.
const CLUSTER: &str = scoregate::cluster::kube_peers::PORT_NAME;
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

/// The secret the router's certificate is projected from.
pub fn tls_secret_name(plan: &InferencePlan) -> Option<&str> {
    plan.tls.as_ref().map(|tls| match &tls.source {
        TlsSource::Files(_) => meta::TLS_SECRET,
        TlsSource::Secret(name) => name.as_str(),
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

    let container = Container {
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
        resources: Some(ResourceRequirements {
            requests: Some(quantities("900m", "800Mi")),
            limits: Some(quantities("2", "1200Mi")),
            ..ResourceRequirements::default()
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: drain }),
                ..LifecycleHandler::default()
            }),
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
    };

    // One projected volume: the configuration and (with TLS) the certificate, so the kubelet's
    // atomic Secret updates reach the router's certificate watcher without a nested mount.
    let mut sources = vec![VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: meta::CONFIG_MAP.to_owned(),
            items: Some(vec![key_to_path(CONFIG_KEY, CONFIG_KEY)]),
            ..ConfigMapProjection::default()
        }),
        ..VolumeProjection::default()
    }];
    if let Some(secret) = tls_secret_name(plan) {
        let relative = |path: &str| {
            path.trim_start_matches(CONFIG_DIR)
                .trim_start_matches('/')
                .to_owned()
        };
        sources.push(VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.to_owned(),
                items: Some(vec![
                    key_to_path("cert.pem", &relative(TLS_CERT_PATH)),
                    key_to_path("key.pem", &relative(TLS_KEY_PATH)),
                ]),
                ..SecretProjection::default()
            }),
            ..VolumeProjection::default()
        });
    }

    if router_config.cluster.is_some() {
        sources.push(VolumeProjection {
            secret: Some(SecretProjection {
                name: meta::CLUSTER_SECRET.to_owned(),
                items: Some(vec![key_to_path(
                    config::CLUSTER_SECRET_KEY,
                    CLUSTER_SECRET_PATH
                        .trim_start_matches(CONFIG_DIR)
                        .trim_start_matches('/'),
                )]),
                ..SecretProjection::default()
            }),
            ..VolumeProjection::default()
        });
    }

    let affinity = plan.ha.then(|| Affinity {
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
    });

    // With one replica per node on exactly 3 nodes a surge pod could never schedule: replace in
    // place. With one replica, surge first so there is always a ready router.
    let rolling = if plan.ha {
        (IntOrString::Int(0), IntOrString::Int(1))
    } else {
        (IntOrString::Int(1), IntOrString::Int(0))
    };

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
                    affinity,
                    node_selector: (!node_selector.is_empty()).then(|| node_selector.clone()),
                    termination_grace_period_seconds: Some(drain + grace + EXIT_MARGIN_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: VOLUME.to_owned(),
                        projected: Some(ProjectedVolumeSource {
                            // Owner and group (fsGroup) read: the key is not world-readable.
                            default_mode: Some(0o440),
                            sources: Some(sources),
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

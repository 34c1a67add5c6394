//! GPU add-ons Azure ML installs on request: the NVIDIA device plugin (`installNvidiaDevicePlugin`)
//! and NVIDIA's DCGM exporter (`installDcgmExporter`), after NVIDIA's own static manifests
//! (`NVIDIA/k8s-device-plugin` `deployments/static/nvidia-device-plugin.yml`,
//! `NVIDIA/dcgm-exporter` `deployment/examples/dcgm-exporter.yaml`), moved to namespace
//! `azureml`, labelled, restricted by `nodeSelector`, tolerating `gpuTolerations` (by default
//! NVIDIA's `nvidia.com/gpu` taint and AKS GPU pools' `sku=gpu`), and kept to GPU nodes by node
//! affinity (as NVIDIA's Helm chart does), so the exporter does not crash-loop on CPU nodes.
//! NVIDIA's manifests ask for `system-node-critical`, which is meant for kube-system: here a
//! priority class is set only when `gpuPriorityClassName` names one.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, HostPathVolumeSource, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use super::tolerations;
use crate::validate::GPU_NODE_LABELS;
use crate::values::TolerationSpec;

/// The device plugin's DaemonSet name (NVIDIA's).
pub const DEVICE_PLUGIN: &str = "nvidia-device-plugin-daemonset";
/// The device plugin image (NVIDIA's static manifest).
pub const DEVICE_PLUGIN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1";
/// The DCGM exporter's DaemonSet and Service name (NVIDIA's).
pub const DCGM_EXPORTER: &str = "dcgm-exporter";
/// The DCGM exporter image (NVIDIA's example manifest).
pub const DCGM_EXPORTER_IMAGE: &str = "nvcr.io/nvidia/k8s/dcgm-exporter:4.6.1-4.8.4-distroless";
/// The DCGM exporter's metrics port.
pub const DCGM_PORT: i32 = 9400;

fn name_label(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), name.to_owned())])
}

/// Where the GPU DaemonSets run, beyond `nodeSelector`.
#[derive(Clone, Debug, Default)]
pub struct GpuScheduling {
    /// `gpuTolerations`.
    pub tolerations: Vec<TolerationSpec>,
    /// `gpuPriorityClassName`.
    pub priority_class: Option<String>,
}

/// Nodes with any of [`GPU_NODE_LABELS`]: each label is its own term, so any one suffices.
fn gpu_nodes() -> Affinity {
    let terms = GPU_NODE_LABELS
        .iter()
        .map(|(key, value)| NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: (*key).to_owned(),
                operator: "In".to_owned(),
                values: Some(vec![(*value).to_owned()]),
            }]),
            ..NodeSelectorTerm::default()
        })
        .collect();
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn host_path(name: &str, path: &str, type_: Option<&str>) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: type_.map(str::to_owned),
        }),
        ..Volume::default()
    }
}

fn daemon_set(
    name: &str,
    extension: &str,
    node_selector: &BTreeMap<String, String>,
    scheduling: &GpuScheduling,
    pod: PodSpec,
) -> DaemonSet {
    let mut pod_labels = name_label(name);
    pod_labels.insert(meta::EXTENSION_LABEL.to_owned(), extension.to_owned());
    DaemonSet {
        metadata: meta::namespaced(name, extension, "gpu"),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(name_label(name)),
                ..LabelSelector::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                ..DaemonSetUpdateStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    node_selector: (!node_selector.is_empty()).then(|| node_selector.clone()),
                    affinity: Some(gpu_nodes()),
                    tolerations: tolerations(&scheduling.tolerations),
                    priority_class_name: scheduling.priority_class.clone(),
                    ..pod
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    }
}

/// DaemonSet `nvidia-device-plugin-daemonset`.
pub fn device_plugin(
    extension: &str,
    node_selector: &BTreeMap<String, String>,
    scheduling: &GpuScheduling,
) -> DaemonSet {
    let pod = PodSpec {
        containers: vec![Container {
            name: "nvidia-device-plugin-ctr".to_owned(),
            image: Some(DEVICE_PLUGIN_IMAGE.to_owned()),
            env: Some(vec![EnvVar {
                name: "FAIL_ON_INIT_ERROR".to_owned(),
                value: Some("false".to_owned()),
                ..EnvVar::default()
            }]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    ..Capabilities::default()
                }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "kubelet-device-plugins-dir".to_owned(),
                mount_path: "/var/lib/kubelet/device-plugins".to_owned(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        }],
        volumes: Some(vec![host_path(
            "kubelet-device-plugins-dir",
            "/var/lib/kubelet/device-plugins",
            Some("Directory"),
        )]),
        ..PodSpec::default()
    };
    daemon_set(DEVICE_PLUGIN, extension, node_selector, scheduling, pod)
}

/// DaemonSet `dcgm-exporter`: GPU metrics on port 9400, among them the `DCGM_FI_DEV_GPU_UTIL`,
/// `DCGM_FI_DEV_FB_FREE` and `DCGM_FI_DEV_FB_USED` Azure ML reads.
pub fn dcgm_exporter(
    extension: &str,
    node_selector: &BTreeMap<String, String>,
    scheduling: &GpuScheduling,
) -> DaemonSet {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    };
    let pod = PodSpec {
        automount_service_account_token: Some(false),
        containers: vec![Container {
            name: DCGM_EXPORTER.to_owned(),
            image: Some(DCGM_EXPORTER_IMAGE.to_owned()),
            env: Some(vec![
                env("DCGM_EXPORTER_LISTEN", &format!(":{DCGM_PORT}")),
                env("DCGM_EXPORTER_KUBERNETES", "true"),
                super::downward_env("NODE_NAME", "spec.nodeName"),
            ]),
            ports: Some(vec![ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: DCGM_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }]),
            // As NVIDIA ships it: root with SYS_ADMIN, for the profiling metrics.
            security_context: Some(SecurityContext {
                run_as_non_root: Some(false),
                run_as_user: Some(0),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(vec!["SYS_ADMIN".to_owned()]),
                    drop: Some(vec!["ALL".to_owned()]),
                }),
                ..SecurityContext::default()
            }),
            resources: Some(ResourceRequirements {
                requests: Some(quantities("100m", "128Mi")),
                limits: Some(quantities("200m", "256Mi")),
                ..ResourceRequirements::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "pod-gpu-resources".to_owned(),
                mount_path: "/var/lib/kubelet/pod-resources".to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        }],
        volumes: Some(vec![host_path(
            "pod-gpu-resources",
            "/var/lib/kubelet/pod-resources",
            None,
        )]),
        ..PodSpec::default()
    };
    daemon_set(DCGM_EXPORTER, extension, node_selector, scheduling, pod)
}

/// Service `dcgm-exporter` (ClusterIP, port `metrics`), for Prometheus.
pub fn dcgm_service(extension: &str) -> Service {
    let mut metadata = meta::namespaced(DCGM_EXPORTER, extension, "gpu");
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(name_label(DCGM_EXPORTER));
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(name_label(DCGM_EXPORTER)),
            ports: Some(vec![ServicePort {
                name: Some("metrics".to_owned()),
                port: DCGM_PORT,
                target_port: Some(IntOrString::String("metrics".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

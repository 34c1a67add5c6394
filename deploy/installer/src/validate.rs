//! Rules between settings, and against the cluster, that turn [`Settings`] into a [`Plan`].
//!
//! The az CLI's rules (numbered as in `deploy/README.md`, "Checks") come first, each
//! marked with its item number; the rest go beyond az: PEM files are parsed and checked, an
//! `sslSecret` is looked up and checked, and high availability is checked against the nodes that
//! can actually run the router. Every problem names the setting and the fix; all are reported
//! together.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::pem::{self, CheckedPair, Culprit};
use crate::problem::{Notice, Problems};
use crate::settings::{RouterResources, ServiceType, Settings};
use crate::values::TolerationSpec;

/// Router replicas with `inferenceRouterHA=True` (three, each on its own node, as azureml-fe).
pub const HA_REPLICAS: usize = 3;

/// The oldest Kubernetes minor version the installer supports (1.x): the oldest whose schemas CI
/// validates every rendered object against (deploy/README.md, "Supported Kubernetes versions").
pub const MIN_KUBERNETES_MINOR: u32 = 28;
/// The newest Kubernetes minor version CI validates against.
pub const MAX_VALIDATED_KUBERNETES_MINOR: u32 = 37;
/// The first minor version whose pods have the `preStop` `sleep` action on by default (beta in
/// 1.30); older servers get `scoregate sleep` as an `exec` hook instead.
pub const SLEEP_ACTION_MINOR: u32 = 30;

/// A Kubernetes server version, `1.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubernetesVersion {
    /// The major version (1).
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl KubernetesVersion {
    /// Parses `1.29` (also `v1.29.3`, and the `29+` minor some providers report).
    pub fn parse(text: &str) -> Option<KubernetesVersion> {
        let mut parts = text.trim().trim_start_matches('v').split('.');
        let digits = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            let end = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
            p[..end].parse().ok()
        };
        Some(KubernetesVersion {
            major: digits(parts.next())?,
            minor: digits(parts.next())?,
        })
    }
}

impl std::fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How the router's pod waits out its drain delay before SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreStop {
    /// The kubelet's `sleep` action (Kubernetes 1.30 and later).
    Sleep,
    /// `exec` of `scoregate sleep` in the container (older servers; the image has no shell).
    Exec,
}

/// What the installer learnt from the cluster; `None` where it did not look (dry run without a
/// cluster, or not allowed to list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Every node.
    pub nodes: Option<Vec<NodeFact>>,
    /// The Secret named by `sslSecret`, in namespace `azureml`.
    pub ssl_secret: Option<SecretFact>,
    /// The API server's version (from the cluster, or `--kubernetes-version` without one).
    pub kubernetes_version: Option<KubernetesVersion>,
}

/// One node, as far as scheduling the router is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFact {
    /// Node name.
    pub name: String,
    /// Its labels (for `nodeSelector`).
    pub labels: BTreeMap<String, String>,
    /// Why the router cannot be scheduled there (cordoned, not Ready, tainted), if it cannot.
    pub unschedulable: Option<String>,
}

/// The `sslSecret` Secret as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretFact {
    /// No such Secret in `azureml`.
    Missing,
    /// The Secret, with its data.
    Found {
        /// `data`, by key.
        data: BTreeMap<String, Vec<u8>>,
    },
}

/// How a TLS Secret names its certificate and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpelling {
    /// Azure ML's `sslSecret`: `cert.pem` and `key.pem`.
    AzureMl,
    /// A `kubernetes.io/tls` Secret (cert-manager's): `tls.crt` and `tls.key`.
    KubernetesTls,
}

impl KeySpelling {
    /// Both spellings, Azure ML's first (it wins when a Secret has both).
    pub const ALL: [KeySpelling; 2] = [KeySpelling::AzureMl, KeySpelling::KubernetesTls];

    /// The keys of the certificate chain and of the private key.
    pub fn keys(self) -> (&'static str, &'static str) {
        match self {
            KeySpelling::AzureMl => ("cert.pem", "key.pem"),
            KeySpelling::KubernetesTls => ("tls.crt", "tls.key"),
        }
    }
}

/// The validated installation: what to render.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `enableTraining` (scoregate installs nothing for it but says what to install).
    pub training: bool,
    /// The router, when `enableInference=True`.
    pub inference: Option<InferencePlan>,
    /// Labels nodes must have to run anything the extension installs.
    pub node_selector: BTreeMap<String, String>,
    /// Install the NVIDIA device plugin DaemonSet.
    pub nvidia_device_plugin: bool,
    /// Install the DCGM exporter DaemonSet.
    pub dcgm_exporter: bool,
    /// Render ServiceMonitors (`installPromOp`).
    pub service_monitors: bool,
    /// Extra labels of the ServiceMonitors (`serviceMonitorLabels.<key>`).
    pub service_monitor_labels: BTreeMap<String, String>,
    /// What the GPU DaemonSets tolerate (`gpuTolerations`).
    pub gpu_tolerations: Vec<TolerationSpec>,
    /// The GPU DaemonSets' priority class (`gpuPriorityClassName`), if any.
    pub gpu_priority_class: Option<String>,
    /// What the user should know.
    pub notices: Vec<Notice>,
}

/// The router's installation.
#[derive(Clone, Debug, PartialEq)]
pub struct InferencePlan {
    /// The `azureml-fe` Service type.
    pub service_type: ServiceType,
    /// An Azure internal load balancer.
    pub internal_load_balancer: bool,
    /// Three replicas on three nodes.
    pub ha: bool,
    /// Serve plain HTTP (port 80).
    pub allow_insecure: bool,
    /// Serve HTTPS (port 443).
    pub tls: Option<TlsPlan>,
    /// What the router tolerates (`inferenceRouterTolerations`).
    pub tolerations: Vec<TolerationSpec>,
    /// The router container's resources.
    pub resources: RouterResources,
    /// Secrets to pull the router image with (`imagePullSecrets`).
    pub image_pull_secrets: Vec<String>,
    /// Service `azureml-fe` beyond its type.
    pub service: ServicePlan,
    /// The namespaces online endpoints live in; empty: all (a cluster-wide role).
    pub namespaces: Vec<String>,
    /// OpenShift: no fixed user, group or fsGroup (the restricted SCC assigns them).
    pub openshift: bool,
    /// Render the NetworkPolicy (`networkPolicy`).
    pub network_policy: bool,
    /// How the pod waits out its drain delay.
    pub pre_stop: PreStop,
}

/// Service `azureml-fe`'s settings beyond its type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePlan {
    /// `inferenceRouterServiceAnnotations.<key>`.
    pub annotations: BTreeMap<String, String>,
    /// `inferenceRouterLoadBalancerIP`.
    pub load_balancer_ip: Option<IpAddr>,
    /// `inferenceRouterExternalTrafficPolicy`.
    pub external_traffic_policy: Option<String>,
}

/// HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPlan {
    /// `sslCname`.
    pub cname: String,
    /// Where the certificate comes from.
    pub source: TlsSource,
}

/// Where the router's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: the installer creates Secret `azureml-fe-tls` from them.
    Files(Box<CheckedPair>),
    /// An existing Secret in `azureml` (`sslSecret`), and how it names its keys when known
    /// (unknown without a cluster: both spellings are projected, each optional).
    Secret {
        /// Its name.
        name: String,
        /// Its keys' spelling, when the Secret was read.
        spelling: Option<KeySpelling>,
    },
}

/// Checks `settings` (and `facts`) and decides what to install.
pub fn validate(
    settings: &Settings,
    facts: &ClusterFacts,
    now: SystemTime,
) -> Result<Plan, Problems> {
    let mut problems = Problems::default();
    let mut notices = Vec::new();
    let s = settings;

    // az rule 3.
    if !s.enable_training.value && !s.enable_inference.value {
        problems.push(
            "enableTraining, enableInference",
            "neither is True, so there is nothing to install: set enableInference=True (the inference router), enableTraining=True, or both",
        );
    }

    let pre_stop = version_check(facts, &mut problems, &mut notices);
    let inference = if s.enable_inference.value {
        inference_plan(s, facts, now, &mut problems, &mut notices).map(|mut plan| {
            plan.pre_stop = pre_stop;
            plan
        })
    } else {
        ignored_inference_keys(s, &mut notices);
        None
    };

    training_notices(s, &mut notices);
    gpu_checks(s, facts, &mut problems, &mut notices);
    let monitored = inference.is_some() || s.install_dcgm_exporter.value;
    let service_monitors = s.install_prom_op.value && monitored;
    monitoring_notices(s, service_monitors, &mut notices);

    problems.into_result(Plan {
        training: s.enable_training.value,
        inference,
        node_selector: s.node_selector.clone(),
        nvidia_device_plugin: s.install_nvidia_device_plugin.value,
        dcgm_exporter: s.install_dcgm_exporter.value,
        service_monitors,
        service_monitor_labels: s.service_monitor_labels.clone(),
        gpu_tolerations: s.gpu_tolerations.clone(),
        gpu_priority_class: s.gpu_priority_class_name.clone(),
        notices,
    })
}

/// Refuses servers older than the supported minimum; picks the `preStop` hook the server has.
fn version_check(
    facts: &ClusterFacts,
    problems: &mut Problems,
    notices: &mut Vec<Notice>,
) -> PreStop {
    let Some(version) = facts.kubernetes_version else {
        return PreStop::Sleep;
    };
    if version.major != 1 || version.minor < MIN_KUBERNETES_MINOR {
        problems.push(
            "Kubernetes version",
            format!("the cluster runs Kubernetes {version}, older than 1.{MIN_KUBERNETES_MINOR}, the oldest scoregate-ext supports: upgrade the cluster"),
        );
        return PreStop::Sleep;
    }
    if version.minor > MAX_VALIDATED_KUBERNETES_MINOR {
        notices.push(Notice::general(format!(
            "the cluster runs Kubernetes {version}, newer than 1.{MAX_VALIDATED_KUBERNETES_MINOR}, the newest the manifests are validated against; they use only stable APIs"
        )));
    }
    if version.minor < SLEEP_ACTION_MINOR {
        notices.push(Notice::general(format!(
            "Kubernetes {version}: the router's preStop hook runs `scoregate sleep` (the sleep action is on by default only from 1.{SLEEP_ACTION_MINOR})"
        )));
        return PreStop::Exec;
    }
    PreStop::Sleep
}

/// The labels `nvidia.com/gpu.present`, NFD's NVIDIA PCI label and AKS's `accelerator` label:
/// a node with any of them (as the values [`crate::render::gpu`] requires) can run the GPU
/// DaemonSets.
pub const GPU_NODE_LABELS: &[(&str, &str)] = &[
    ("nvidia.com/gpu.present", "true"),
    ("feature.node.kubernetes.io/pci-10de.present", "true"),
    ("accelerator", "nvidia"),
];

fn gpu_checks(
    s: &Settings,
    facts: &ClusterFacts,
    problems: &mut Problems,
    notices: &mut Vec<Notice>,
) {
    let gpu = s.install_nvidia_device_plugin.value || s.install_dcgm_exporter.value;
    if !gpu {
        let given = spec_given(s.gpu_priority_class_name.is_some(), "gpuPriorityClassName")
            .into_iter()
            .chain(spec_given(
                s.gpu_tolerations
                    != crate::values::parse_tolerations(crate::settings::DEFAULT_GPU_TOLERATIONS)
                        .unwrap_or_default(),
                "gpuTolerations",
            ))
            .collect::<Vec<_>>();
        if !given.is_empty() {
            notices.push(Notice::about(
                given.join(", "),
                "ignored: neither installNvidiaDevicePlugin nor installDcgmExporter is True",
            ));
        }
        return;
    }
    if s.openshift.value {
        problems.push(
            "openshift, installNvidiaDevicePlugin, installDcgmExporter",
            "the GPU DaemonSets need host paths and (DCGM) root with SYS_ADMIN, which OpenShift's restricted SCC refuses: on OpenShift install NVIDIA's GPU Operator from OperatorHub and set installNvidiaDevicePlugin=False installDcgmExporter=False",
        );
    }
    if let Some(class) = s.gpu_priority_class_name.as_deref() {
        if class.starts_with("system-") {
            notices.push(Notice::about(
                "gpuPriorityClassName",
                format!("{class} outside kube-system is refused on clusters that limit critical priority classes with a ResourceQuota (the default of some distributions); if the DaemonSet's pods are refused, create a ResourceQuota in azureml whose scopeSelector allows {class}, or use a PriorityClass of your own"),
            ));
        }
    }
    let Some(nodes) = &facts.nodes else { return };
    let labelled = nodes.iter().any(|n| {
        GPU_NODE_LABELS
            .iter()
            .any(|(k, v)| n.labels.get(*k).map(String::as_str) == Some(*v))
    });
    if !labelled {
        notices.push(Notice::about(
            "installNvidiaDevicePlugin, installDcgmExporter",
            format!("no node carries a GPU label ({}), so the GPU DaemonSets run nowhere yet: label your GPU nodes, e.g. `kubectl label node <node> nvidia.com/gpu.present=true`, or install NVIDIA's node feature discovery", GPU_NODE_LABELS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")),
        ));
    }
}

fn spec_given(given: bool, key: &'static str) -> Option<&'static str> {
    given.then_some(key)
}

fn monitoring_notices(s: &Settings, service_monitors: bool, notices: &mut Vec<Notice>) {
    if !service_monitors {
        if !s.service_monitor_labels.is_empty() {
            notices.push(Notice::about(
                "serviceMonitorLabels",
                "ignored: no ServiceMonitor is rendered (installPromOp=False, or nothing to monitor)",
            ));
        }
        return;
    }
    notices.push(Notice::about(
        "installPromOp",
        "True (the default): scoregate renders ServiceMonitors for what it installs but does not install the Prometheus Operator itself; install it from https://github.com/prometheus-operator/prometheus-operator (or kube-prometheus-stack), or set installPromOp=False to render none",
    ));
    if s.service_monitor_labels.is_empty() {
        notices.push(Notice::about(
            "serviceMonitorLabels",
            "unset: kube-prometheus-stack's Prometheus selects only ServiceMonitors labelled `release: <its Helm release>` by default; add serviceMonitorLabels.release=<release name> (or what your Prometheus's serviceMonitorSelector asks for)",
        ));
    }
}

fn inference_plan(
    s: &Settings,
    facts: &ClusterFacts,
    now: SystemTime,
    problems: &mut Problems,
    notices: &mut Vec<Notice>,
) -> Option<InferencePlan> {
    let service_type = match s.inference_router_service_type {
        Some(t) => t,
        None => {
            problems.push(
                "inferenceRouterServiceType",
                "required when enableInference=True: use loadBalancer (a cloud load balancer), nodePort (a port on every node) or clusterIP (in-cluster only; bring your own ingress)",
            );
            ServiceType::ClusterIp
        }
    };

    // az rules 6 and 7.
    match (service_type, s.internal_load_balancer) {
        (ServiceType::NodePort, true) => problems.push(
            "inferenceRouterServiceType, internalLoadBalancerProvider",
            "mutually exclusive: an internal load balancer needs inferenceRouterServiceType=loadBalancer; remove internalLoadBalancerProvider or use loadBalancer",
        ),
        (ServiceType::ClusterIp, true) => notices.push(Notice::about(
            "internalLoadBalancerProvider",
            "ignored with inferenceRouterServiceType=clusterIP (there is no load balancer)",
        )),
        (ServiceType::LoadBalancer, true) => notices.push(Notice::about(
            "internalLoadBalancerProvider",
            "azure: internal load balancers are only supported on AKS and AKS Engine clusters (the Service gets annotation service.beta.kubernetes.io/azure-load-balancer-internal=true)",
        )),
        _ => {}
    }

    let tls = tls_plan(s, facts, now, problems, notices);
    let ha = ha_decision(s, facts, problems, notices);
    let service = service_plan(s, service_type, problems, notices);
    resources_check(s, problems);
    if !s.inference_router_namespaces.is_empty() {
        notices.push(Notice::about(
            "inferenceRouterNamespaces",
            format!("the router reads online endpoints, their Secrets and EndpointSlices only in {} (a Role in each, no cluster-wide access): endpoints in other namespaces are not served", s.inference_router_namespaces.join(", ")),
        ));
    }
    if s.openshift.value {
        notices.push(Notice::about(
            "openshift",
            "True: the router runs with the user and group OpenShift's restricted SCC assigns (no fixed runAsUser, runAsGroup or fsGroup)",
        ));
    }
    Some(InferencePlan {
        service_type,
        internal_load_balancer: s.internal_load_balancer
            && service_type == ServiceType::LoadBalancer,
        ha,
        allow_insecure: s.allow_insecure_connections.value,
        tls,
        tolerations: s.inference_router_tolerations.clone(),
        resources: s.inference_router_resources.clone(),
        image_pull_secrets: s.image_pull_secrets.clone(),
        service,
        namespaces: s.inference_router_namespaces.clone(),
        openshift: s.openshift.value,
        network_policy: s.network_policy.value,
        pre_stop: PreStop::Sleep,
    })
}

fn service_plan(
    s: &Settings,
    service_type: ServiceType,
    problems: &mut Problems,
    notices: &mut Vec<Notice>,
) -> ServicePlan {
    if let Some(ip) = s.load_balancer_ip {
        if service_type == ServiceType::LoadBalancer {
            notices.push(Notice::about(
                "inferenceRouterLoadBalancerIP",
                format!("{ip}: rendered as the Service's spec.loadBalancerIP, deprecated since Kubernetes 1.24 and ignored by some providers; on AKS the annotation inferenceRouterServiceAnnotations.service.beta.kubernetes.io/azure-load-balancer-ipv4={ip} is the current way (the IP must be in the node resource group, or give the Service's identity access to it)"),
            ));
        } else {
            problems.push(
                "inferenceRouterLoadBalancerIP",
                format!("needs inferenceRouterServiceType=loadBalancer (it is {service_type}): remove it, or use a load balancer"),
            );
        }
    }
    if s.external_traffic_policy.is_some() && service_type == ServiceType::ClusterIp {
        problems.push(
            "inferenceRouterExternalTrafficPolicy",
            "applies to loadBalancer and nodePort Services only (the Service is clusterIP): remove it",
        );
    }
    ServicePlan {
        annotations: s.service_annotations.clone(),
        load_balancer_ip: s
            .load_balancer_ip
            .filter(|_| service_type == ServiceType::LoadBalancer),
        external_traffic_policy: s
            .external_traffic_policy
            .clone()
            .filter(|_| service_type != ServiceType::ClusterIp),
    }
}

/// Requests must not exceed limits.
fn resources_check(s: &Settings, problems: &mut Problems) {
    let r = &s.inference_router_resources;
    for (what, request, limit) in [
        ("cpu", &r.requests_cpu, &r.limits_cpu),
        ("memory", &r.requests_memory, &r.limits_memory),
    ] {
        if request > limit {
            problems.push(
                format!("inferenceRouterResources.requests.{what}"),
                format!("{} is more than the limit {}: lower the request or raise inferenceRouterResources.limits.{what}", request.text, limit.text),
            );
        }
    }
}

fn tls_plan(
    s: &Settings,
    facts: &ClusterFacts,
    now: SystemTime,
    problems: &mut Problems,
    notices: &mut Vec<Notice>,
) -> Option<TlsPlan> {
    let files = match (&s.ssl_cert_pem_file, &s.ssl_key_pem_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => {
            problems.push(
                "sslKeyPemFile",
                "missing: sslCertPemFile is given, and TLS needs both files: add --config-protected sslKeyPemFile=<key.pem>",
            );
            None
        }
        (None, Some(_)) => {
            problems.push(
                "sslCertPemFile",
                "missing: sslKeyPemFile is given, and TLS needs both files: add --config-protected sslCertPemFile=<cert.pem>",
            );
            None
        }
        (None, None) => None,
    };
    let half_given = s.ssl_cert_pem_file.is_some() != s.ssl_key_pem_file.is_some();
    // az rule 4: sslEnabled = (sslCertPemFile and sslKeyPemFile) or sslSecret.
    let enabled = files.is_some() || s.ssl_secret.is_some();
    if !enabled {
        if !s.allow_insecure_connections.value && !half_given {
            problems.push(
                "allowInsecureConnections",
                "False (the default) means HTTPS only, which needs a certificate: give --config-protected sslCertPemFile=<cert.pem> sslKeyPemFile=<key.pem>, or --config sslSecret=<Secret in namespace azureml with cert.pem and key.pem, or tls.crt and tls.key>; or set allowInsecureConnections=True for plain HTTP (development and test only)",
            );
        }
        if s.ssl_cname.is_some() {
            notices.push(Notice::about(
                "sslCname",
                "ignored: TLS is off (no sslCertPemFile/sslKeyPemFile or sslSecret)",
            ));
        }
        return None;
    }
    let Some(cname) = s.ssl_cname.clone() else {
        problems.push(
            "sslCname",
            "required when TLS is on (sslCertPemFile/sslKeyPemFile or sslSecret): set it to the host name clients use, which must be one of the certificate's names",
        );
        return None;
    };

    if let Some((cert_path, key_path)) = files {
        // az rule 9: files win over sslSecret.
        if let Some(secret) = &s.ssl_secret {
            notices.push(Notice::about(
                "sslSecret",
                format!("ignored: sslCertPemFile and sslKeyPemFile are given and take precedence (as in az); drop one of the two to silence this (Secret `{secret}` is not used)"),
            ));
        }
        let cert = pem::read(cert_path, "certificate chain")
            .map_err(|e| problems.push("sslCertPemFile", e))
            .ok();
        let key = pem::read(key_path, "private key")
            .map_err(|e| problems.push("sslKeyPemFile", e))
            .ok();
        let (Some(cert), Some(key)) = (cert, key) else {
            return None;
        };
        let origin = format!("{} + {}", cert_path.display(), key_path.display());
        return match pem::check(cert, key, &origin, Some(&cname), now) {
            Ok((pair, notice)) => {
                notices.extend(notice);
                Some(TlsPlan {
                    cname,
                    source: TlsSource::Files(Box::new(pair)),
                })
            }
            Err((culprit, message)) => {
                let key = match culprit {
                    Culprit::Cert => "sslCertPemFile",
                    Culprit::Key => "sslKeyPemFile",
                    Culprit::Pair => "sslCertPemFile, sslKeyPemFile",
                    Culprit::Cname => "sslCname",
                };
                problems.push(key, message);
                None
            }
        };
    }

    let name = s.ssl_secret.clone()?;
    let spelling = match &facts.ssl_secret {
        None => {
            notices.push(Notice::about(
                "sslSecret",
                format!("Secret `{name}` was not checked (no cluster contacted): it must exist in namespace azureml with keys cert.pem and key.pem (Azure ML's) or tls.crt and tls.key (kubernetes.io/tls, cert-manager's) before the router can start; both spellings are projected, each optional"),
            ));
            None
        }
        Some(secret) => checked_ssl_secret(&name, secret, &cname, now, problems, notices)?,
    };
    Some(TlsPlan {
        cname,
        source: TlsSource::Secret { name, spelling },
    })
}

/// Checks the `sslSecret` Secret as found; its key spelling when it holds a usable pair.
fn checked_ssl_secret(
    name: &str,
    secret: &SecretFact,
    cname: &str,
    now: SystemTime,
    problems: &mut Problems,
    notices: &mut Vec<Notice>,
) -> Option<Option<KeySpelling>> {
    let data = match secret {
        SecretFact::Missing => {
            problems.push(
                "sslSecret",
                format!("Secret `{name}` does not exist in namespace azureml: create it first, e.g. `kubectl create secret tls {name} -n azureml --cert=cert.pem --key=key.pem` (or cert-manager's Certificate with secretName {name}), or give sslCertPemFile and sslKeyPemFile instead"),
            );
            return Some(None);
        }
        SecretFact::Found { data } => data,
    };
    let Some(spelling) = KeySpelling::ALL.into_iter().find(|k| {
        let (cert, key) = k.keys();
        data.contains_key(cert) && data.contains_key(key)
    }) else {
        let present: Vec<&str> = data.keys().map(String::as_str).collect();
        problems.push(
            "sslSecret",
            format!("Secret azureml/{name} has no certificate pair: it needs keys cert.pem and key.pem (Azure ML's sslSecret) or tls.crt and tls.key (a kubernetes.io/tls Secret, as cert-manager writes it); it has {}", if present.is_empty() { "no keys".to_owned() } else { present.join(", ") }),
        );
        return None;
    };
    let (cert_key, key_key) = spelling.keys();
    let origin = format!("Secret azureml/{name}");
    match pem::check(
        data[cert_key].clone(),
        data[key_key].clone(),
        &origin,
        Some(cname),
        now,
    ) {
        Ok((_, notice)) => notices.extend(notice),
        Err((Culprit::Cname, message)) => problems.push("sslCname", message),
        Err((_, message)) => problems.push("sslSecret", message),
    }
    Some(Some(spelling))
}

/// az rule 8, stricter: counts the nodes the router can actually be scheduled on.
fn ha_decision(
    s: &Settings,
    facts: &ClusterFacts,
    problems: &mut Problems,
    notices: &mut Vec<Notice>,
) -> bool {
    let ha = s.inference_router_ha;
    let Some(nodes) = &facts.nodes else {
        if ha.value {
            notices.push(Notice::about(
                "inferenceRouterHA",
                "True: the node count was not checked (no cluster contacted); the 3 router replicas need 3 schedulable nodes",
            ));
        }
        return ha.value;
    };
    let matching: Vec<&NodeFact> = nodes
        .iter()
        .filter(|n| {
            s.node_selector
                .iter()
                .all(|(k, v)| n.labels.get(k) == Some(v))
        })
        .collect();
    let usable: Vec<&str> = matching
        .iter()
        .filter(|n| n.unschedulable.is_none())
        .map(|n| n.name.as_str())
        .collect();
    let where_ = if s.node_selector.is_empty() {
        "schedulable nodes".to_owned()
    } else {
        format!(
            "schedulable nodes matching nodeSelector {}",
            selector_text(&s.node_selector)
        )
    };
    let skipped: Vec<String> = matching
        .iter()
        .filter_map(|n| {
            n.unschedulable
                .as_ref()
                .map(|r| format!("{} ({r})", n.name))
        })
        .collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; not counted: {}", skipped.join(", "))
    };
    if usable.is_empty() {
        if s.node_selector.is_empty() {
            notices.push(Notice::general(format!(
                "the cluster has no schedulable nodes{skipped}: the router stays Pending until one joins"
            )));
        } else {
            problems.push(
                "nodeSelector",
                format!("no schedulable node matches {}{skipped}: fix the selector or label nodes (kubectl label node <node> <key>=<value>)", selector_text(&s.node_selector)),
            );
        }
    }
    if !ha.value || usable.len() >= HA_REPLICAS {
        return ha.value;
    }
    if ha.explicit {
        problems.push(
            "inferenceRouterHA",
            format!(
                "True needs {HA_REPLICAS} {where_} (one router replica per node), and the cluster has {}{skipped}: set inferenceRouterHA=False, add nodes, or widen nodeSelector",
                usable.len()
            ),
        );
        true
    } else {
        notices.push(Notice::about(
            "inferenceRouterHA",
            format!(
                "set to False (1 router replica): the default True needs {HA_REPLICAS} {where_}, and the cluster has {}{skipped} (az does the same below 3 nodes); set inferenceRouterHA=False to silence this",
                usable.len()
            ),
        ));
        false
    }
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn ignored_inference_keys(s: &Settings, notices: &mut Vec<Notice>) {
    let given: Vec<&str> = [
        (
            "inferenceRouterServiceType",
            s.inference_router_service_type.is_some(),
        ),
        ("internalLoadBalancerProvider", s.internal_load_balancer),
        ("sslSecret", s.ssl_secret.is_some()),
        ("sslCname", s.ssl_cname.is_some()),
        ("sslCertPemFile", s.ssl_cert_pem_file.is_some()),
        ("sslKeyPemFile", s.ssl_key_pem_file.is_some()),
        (
            "allowInsecureConnections",
            s.allow_insecure_connections.explicit,
        ),
        ("inferenceRouterHA", s.inference_router_ha.explicit),
    ]
    .iter()
    .filter(|(_, given)| *given)
    .map(|(k, _)| *k)
    .collect();
    if !given.is_empty() {
        notices.push(Notice::about(
            given.join(", "),
            "ignored: enableInference is False, so no router is installed; set enableInference=True to use them",
        ));
    }
}

fn training_notices(s: &Settings, notices: &mut Vec<Notice>) {
    if s.enable_training.value {
        notices.push(Notice::about(
            "enableTraining",
            "True: training and batch scoring are not part of scoregate, and nothing is installed for them. Azure ML's training side (its job operator and the Volcano scheduler) has open-source counterparts you install yourself: the Kubeflow Training Operator, now Kubeflow Trainer (https://github.com/kubeflow/trainer, formerly kubeflow/training-operator) and Volcano (https://github.com/volcano-sh/volcano)",
        ));
        if s.install_volcano.value {
            notices.push(Notice::about(
                "installVolcano",
                "True (Azure ML's default): scoregate does not install Volcano; install it from https://github.com/volcano-sh/volcano (Helm chart volcano-sh/volcano), or set installVolcano=False if the cluster already runs it",
            ));
        }
    } else if s.install_volcano.explicit {
        notices.push(Notice::about(
            "installVolcano",
            "ignored: Volcano schedules training jobs, and enableTraining is False (scoregate never installs Volcano)",
        ));
    }
}

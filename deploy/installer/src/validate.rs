//! Rules between settings, and against the cluster, that turn [`Settings`] into a [`Plan`].
//!
//! The az CLI's rules (`shared/reference/azureml-fe-behaviour.md` §9.3, CLI-EXT) come first, each
//! marked with its item number; the rest go beyond az: PEM files are parsed and checked, an
//! `sslSecret` is looked up and checked, and high availability is checked against the nodes that
//! can actually run the router. Every problem names the setting and the fix; all are reported
//! together.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::pem::{self, CheckedPair, Culprit};
use crate::problem::{Notice, Problems};
use crate::settings::{ServiceType, Settings};

/// Router replicas with `inferenceRouterHA=True` (§1: three, each on its own node).
pub const HA_REPLICAS: usize = 3;

/// What the installer learnt from the cluster; `None` where it did not look (dry run without a
/// cluster, or not allowed to list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Every node.
    pub nodes: Option<Vec<NodeFact>>,
    /// The Secret named by `sslSecret`, in namespace `azureml`.
    pub ssl_secret: Option<SecretFact>,
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
    /// The Secret, with its `cert.pem` and `key.pem` if present.
    Found {
        /// `data["cert.pem"]`.
        cert_pem: Option<Vec<u8>>,
        /// `data["key.pem"]`.
        key_pem: Option<Vec<u8>>,
    },
}

/// The validated installation: what to render.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// What the user should know.
    pub notices: Vec<Notice>,
}

/// The router's installation.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// An existing Secret in `azureml` (`sslSecret`).
    Secret(String),
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

    // §9.3 item 3.
    if !s.enable_training.value && !s.enable_inference.value {
        problems.push(
            "enableTraining, enableInference",
            "neither is True, so there is nothing to install: set enableInference=True (the inference router), enableTraining=True, or both",
        );
    }

    let inference = if s.enable_inference.value {
        inference_plan(s, facts, now, &mut problems, &mut notices)
    } else {
        ignored_inference_keys(s, &mut notices);
        None
    };

    training_notices(s, &mut notices);
    let monitored = inference.is_some() || s.install_dcgm_exporter.value;
    if s.install_prom_op.value && monitored {
        notices.push(Notice::about(
            "installPromOp",
            "True (the default): scoregate renders ServiceMonitors for what it installs but does not install the Prometheus Operator itself; install it from https://github.com/prometheus-operator/prometheus-operator (or kube-prometheus-stack), or set installPromOp=False to render none",
        ));
    }

    problems.into_result(Plan {
        training: s.enable_training.value,
        inference,
        node_selector: s.node_selector.clone(),
        nvidia_device_plugin: s.install_nvidia_device_plugin.value,
        dcgm_exporter: s.install_dcgm_exporter.value,
        service_monitors: s.install_prom_op.value && monitored,
        notices,
    })
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

    // §9.3 items 6 and 7.
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
    Some(InferencePlan {
        service_type,
        internal_load_balancer: s.internal_load_balancer
            && service_type == ServiceType::LoadBalancer,
        ha,
        allow_insecure: s.allow_insecure_connections.value,
        tls,
    })
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
    // §9.3 item 4: sslEnabled = (sslCertPemFile and sslKeyPemFile) or sslSecret.
    let enabled = files.is_some() || s.ssl_secret.is_some();
    if !enabled {
        if !s.allow_insecure_connections.value && !half_given {
            problems.push(
                "allowInsecureConnections",
                "False (the default) means HTTPS only, which needs a certificate: give --config-protected sslCertPemFile=<cert.pem> sslKeyPemFile=<key.pem>, or --config sslSecret=<Secret in namespace azureml with cert.pem and key.pem>; or set allowInsecureConnections=True for plain HTTP (development and test only)",
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
        // §9.3 item 9: files win over sslSecret.
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
    match &facts.ssl_secret {
        None => notices.push(Notice::about(
            "sslSecret",
            format!("Secret `{name}` was not checked (no cluster contacted): it must exist in namespace azureml with keys cert.pem and key.pem before the router can start"),
        )),
        Some(SecretFact::Missing) => problems.push(
            "sslSecret",
            format!("Secret `{name}` does not exist in namespace azureml: create it first, e.g. `kubectl create secret generic {name} -n azureml --from-file=cert.pem --from-file=key.pem`, or give sslCertPemFile and sslKeyPemFile instead"),
        ),
        Some(SecretFact::Found { cert_pem, key_pem }) => {
            let missing: Vec<&str> = [("cert.pem", cert_pem), ("key.pem", key_pem)]
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| *k)
                .collect();
            if !missing.is_empty() {
                problems.push(
                    "sslSecret",
                    format!("Secret azureml/{name} has no {}: it needs keys cert.pem (certificate chain) and key.pem (unencrypted private key), as Azure ML's sslSecret does", missing.join(" and ")),
                );
                return None;
            }
            let origin = format!("Secret azureml/{name}");
            match pem::check(
                cert_pem.clone().unwrap_or_default(),
                key_pem.clone().unwrap_or_default(),
                &origin,
                Some(&cname),
                now,
            ) {
                Ok((_, notice)) => notices.extend(notice),
                Err((Culprit::Cname, message)) => problems.push("sslCname", message),
                Err((_, message)) => problems.push("sslSecret", message),
            }
        }
    }
    Some(TlsPlan {
        cname,
        source: TlsSource::Secret(name),
    })
}

/// §9.3 item 8, stricter: counts the nodes the router can actually be scheduled on.
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

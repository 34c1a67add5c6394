//! The extension's settings: the keys `az k8s-extension create --config` / `--config-protected`
//! takes for Azure ML (its documented configuration settings), with the same defaults.
//!
//! Two steps: [`RawSettings::parse`] turns `key=value` words into two maps (syntax, duplicates,
//! unknown keys, which list a key belongs in); [`Settings::from_raw`] reads the values (booleans
//! in any case, service types, names). Rules between settings live in [`crate::validate`].
//! Keys are case-sensitive, as in az; unlike az, an unknown key is an error with a suggestion
//! (az silently ignores `InferenceRouterHA=False` and tries three replicas).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use std::net::IpAddr;

use crate::names::{check_dns_name, check_dns_subdomain, check_label_key, check_label_value};
use crate::problem::Problems;
use crate::suggest;
use crate::values::{self, Quantity, TolerationSpec};

/// Settings whose keys start with this restrict where the extension runs (`nodeSelector.<label>`).
pub const NODE_SELECTOR_PREFIX: &str = "nodeSelector.";
/// Settings whose keys start with this label the ServiceMonitors (`serviceMonitorLabels.<label>`).
pub const SERVICE_MONITOR_LABELS_PREFIX: &str = "serviceMonitorLabels.";
/// Settings whose keys start with this annotate Service `azureml-fe`
/// (`inferenceRouterServiceAnnotations.<annotation>`).
pub const SERVICE_ANNOTATIONS_PREFIX: &str = "inferenceRouterServiceAnnotations.";

/// What the part of a prefixed key after its prefix is, and what its values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrefixKind {
    /// A label key, with label values.
    Label,
    /// An annotation key, with any value.
    Annotation,
}

/// The prefixed keys: a map setting each.
const PREFIXES: &[(&str, PrefixKind)] = &[
    (NODE_SELECTOR_PREFIX, PrefixKind::Label),
    (SERVICE_MONITOR_LABELS_PREFIX, PrefixKind::Label),
    (SERVICE_ANNOTATIONS_PREFIX, PrefixKind::Annotation),
];

/// The default of `gpuTolerations`: NVIDIA's own taint and the one AKS GPU node pools commonly
/// carry (`sku=gpu:NoSchedule`, as Microsoft's GPU documentation taints them).
pub const DEFAULT_GPU_TOLERATIONS: &str = "nvidia.com/gpu:NoSchedule,sku=gpu:NoSchedule";

/// What values a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `True` or `False`, any case.
    Bool,
    /// `loadBalancer`, `nodePort` or `clusterIP`, any case.
    ServiceType,
    /// `azure`.
    LoadBalancerProvider,
    /// A Secret name in namespace `azureml`.
    SecretName,
    /// A DNS name.
    DnsName,
    /// A local file path (read by the installer, never stored).
    FilePath,
    /// Tolerations in taint syntax: `key[=value][:Effect]`, comma-separated.
    Tolerations,
    /// A resource quantity (`900m`, `2`, `1200Mi`).
    Quantity,
    /// Object names, comma-separated.
    NameList,
    /// Namespace names, comma-separated.
    Namespaces,
    /// An IP address.
    IpAddress,
    /// `Cluster` or `Local`, any case.
    TrafficPolicy,
    /// An object name (DNS subdomain).
    ObjectName,
}

/// One documented key.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// The key, spelt as az spells it.
    pub name: &'static str,
    /// Its values.
    pub kind: KeyKind,
    /// The default when the key is not given, as az documents it.
    pub default: Option<&'static str>,
    /// Whether it belongs in `--config-protected`.
    pub protected: bool,
}

const fn key(
    name: &'static str,
    kind: KeyKind,
    default: Option<&'static str>,
    protected: bool,
) -> KeySpec {
    KeySpec {
        name,
        kind,
        default,
        protected,
    }
}

/// Every documented key except `nodeSelector.<label>` (see [`NODE_SELECTOR_PREFIX`]).
pub const KEYS: &[KeySpec] = &[
    key("enableTraining", KeyKind::Bool, Some("False"), false),
    key("enableInference", KeyKind::Bool, Some("False"), false),
    key(
        "allowInsecureConnections",
        KeyKind::Bool,
        Some("False"),
        false,
    ),
    key(
        "inferenceRouterServiceType",
        KeyKind::ServiceType,
        None,
        false,
    ),
    key(
        "internalLoadBalancerProvider",
        KeyKind::LoadBalancerProvider,
        None,
        false,
    ),
    key("sslSecret", KeyKind::SecretName, None, false),
    key("sslCname", KeyKind::DnsName, None, false),
    key("inferenceRouterHA", KeyKind::Bool, Some("True"), false),
    key(
        "installNvidiaDevicePlugin",
        KeyKind::Bool,
        Some("False"),
        false,
    ),
    key("installPromOp", KeyKind::Bool, Some("True"), false),
    key("installVolcano", KeyKind::Bool, Some("True"), false),
    key("installDcgmExporter", KeyKind::Bool, Some("False"), false),
    key("sslCertPemFile", KeyKind::FilePath, None, true),
    key("sslKeyPemFile", KeyKind::FilePath, None, true),
    // Beyond az's keys (deploy/README.md, "Settings beyond az").
    key(
        "inferenceRouterTolerations",
        KeyKind::Tolerations,
        None,
        false,
    ),
    key(
        "gpuTolerations",
        KeyKind::Tolerations,
        Some(DEFAULT_GPU_TOLERATIONS),
        false,
    ),
    key(
        "inferenceRouterResources.requests.cpu",
        KeyKind::Quantity,
        Some("900m"),
        false,
    ),
    key(
        "inferenceRouterResources.requests.memory",
        KeyKind::Quantity,
        Some("800Mi"),
        false,
    ),
    key(
        "inferenceRouterResources.limits.cpu",
        KeyKind::Quantity,
        Some("2"),
        false,
    ),
    key(
        "inferenceRouterResources.limits.memory",
        KeyKind::Quantity,
        Some("1200Mi"),
        false,
    ),
    key("imagePullSecrets", KeyKind::NameList, None, false),
    key(
        "inferenceRouterLoadBalancerIP",
        KeyKind::IpAddress,
        None,
        false,
    ),
    key(
        "inferenceRouterExternalTrafficPolicy",
        KeyKind::TrafficPolicy,
        None,
        false,
    ),
    key(
        "inferenceRouterNamespaces",
        KeyKind::Namespaces,
        None,
        false,
    ),
    key("openshift", KeyKind::Bool, Some("False"), false),
    key("networkPolicy", KeyKind::Bool, Some("True"), false),
    key("gpuPriorityClassName", KeyKind::ObjectName, None, false),
];

/// Keys seen in public material about the extension that are not settings here, and what to use instead.
const KNOWN_MISTAKES: &[(&str, &str)] = &[
    (
        "inferenceLoadBalancerHA",
        "is the older name of `inferenceRouterHA`: use inferenceRouterHA",
    ),
    (
        "sslCertKeyFile",
        "is a misspelling found in some examples: use sslKeyPemFile (in --config-protected)",
    ),
    (
        "scoringFe.sslSecret",
        "is the Helm-level key the az CLI produces: use sslSecret",
    ),
    (
        "scoringFe.serviceType.nodePort",
        "is the Helm-level key the az CLI produces: use inferenceRouterServiceType=nodePort",
    ),
    (
        "scoringFe.serviceType.internalLoadBalancer",
        "is the Helm-level key the az CLI produces: use internalLoadBalancerProvider=azure",
    ),
];

/// The spec of a documented key (exact, case-sensitive match).
pub fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

/// The settings as given: non-protected and protected `key=value` maps, keys checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawSettings {
    /// `--config` (stored with the extension, shown by `show`).
    pub config: BTreeMap<String, String>,
    /// `--config-protected` (used once, never stored).
    pub protected: BTreeMap<String, String>,
}

impl RawSettings {
    /// Parses `--config` and `--config-protected` words (`key=value` each).
    pub fn parse(config: &[String], protected: &[String]) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let keys = |words: &[String]| -> Vec<String> {
            words
                .iter()
                .filter_map(|w| w.split_once('='))
                .map(|(k, _)| k.trim().to_owned())
                .collect()
        };
        let protected_keys = keys(protected);
        let duplicates: Vec<String> = keys(config)
            .into_iter()
            .filter(|k| !k.is_empty() && protected_keys.contains(k))
            .collect();
        for key in &duplicates {
            // az rule 2: az stops with "Duplicate keys found".
            problems.push(
                key.clone(),
                "Duplicate keys found: the key is in both --config and --config-protected; give it in one of them",
            );
        }
        let config_map = parse_pairs(config, "--config", false, &duplicates, &mut problems);
        let protected_map = parse_pairs(
            protected,
            "--config-protected",
            true,
            &duplicates,
            &mut problems,
        );
        problems.into_result(RawSettings {
            config: config_map,
            protected: protected_map,
        })
    }
}

fn parse_pairs(
    words: &[String],
    flag: &str,
    protected: bool,
    duplicates: &[String],
    problems: &mut Problems,
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            problems.push(
                word.clone(),
                format!("{flag} takes key=value pairs: write `{word}=<value>`"),
            );
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            problems.push(
                word.clone(),
                format!("{flag} `{word}` has no key before `=`"),
            );
            continue;
        }
        if duplicates.iter().any(|d| d == key) || !check_key(key, flag, protected, problems) {
            continue;
        }
        if map.insert(key.to_owned(), value.to_owned()).is_some() {
            problems.push(key, format!("given twice in {flag}: keep one `{key}=…`"));
        }
    }
    map
}

/// Whether `key` is a known key in the right list; adds a problem (with a suggestion) if not.
fn check_key(key: &str, flag: &str, protected: bool, problems: &mut Problems) -> bool {
    if let Some((prefix, rest)) = PREFIXES
        .iter()
        .find_map(|(prefix, _)| key.strip_prefix(prefix).map(|rest| (*prefix, rest)))
    {
        if protected {
            problems.push(
                key,
                "is not a protected setting: pass it with --config, not --config-protected",
            );
            return false;
        }
        if let Err(e) = check_label_key(rest) {
            let example = match prefix {
                NODE_SELECTOR_PREFIX => "nodeSelector.agentpool=gpu",
                SERVICE_MONITOR_LABELS_PREFIX => "serviceMonitorLabels.release=kube-prometheus-stack",
                _ => "inferenceRouterServiceAnnotations.service.beta.kubernetes.io/azure-dns-label-name=ml",
            };
            problems.push(
                key,
                format!("{e} (write {prefix}<key>=<value>, e.g. {example})"),
            );
            return false;
        }
        return true;
    }
    if let Some(spec) = spec(key) {
        return match (spec.protected, protected) {
            (true, false) => {
                problems.push(
                    key,
                    format!("is a protected setting: pass it with --config-protected, not {flag}"),
                );
                false
            }
            (false, true) => {
                problems.push(
                    key,
                    "is not a protected setting: pass it with --config, not --config-protected",
                );
                false
            }
            _ => true,
        };
    }
    problems.push(key, unknown_key_message(key));
    false
}

fn unknown_key_message(key: &str) -> String {
    if let Some((_, hint)) = KNOWN_MISTAKES.iter().find(|(k, _)| *k == key) {
        return format!("is not a setting: `{key}` {hint}");
    }
    let lower = key.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("nodeselector.")
        .map(|_| &key["nodeselector.".len()..])
    {
        return format!(
            "is not a setting (keys are case-sensitive): did you mean `{NODE_SELECTOR_PREFIX}{rest}`?"
        );
    }
    let candidates = KEYS
        .iter()
        .map(|k| k.name)
        .chain(PREFIXES.iter().map(|(p, _)| p.trim_end_matches('.')));
    match suggest::nearest(key, candidates) {
        Some(near) if near.eq_ignore_ascii_case(key) => format!(
            "is not a setting (keys are case-sensitive, and az would silently ignore it): did you mean `{near}`?"
        ),
        Some(near) => format!("is not a setting: did you mean `{near}`?"),
        None => format!(
            "is not a setting: known keys are {}, and {}",
            KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
            PREFIXES
                .iter()
                .map(|(p, _)| format!("{p}<key>"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A boolean setting and whether the user set it (HA's default is treated differently, az rule 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag {
    /// The value, given or default.
    pub value: bool,
    /// Whether the user gave it.
    pub explicit: bool,
}

/// How the router's Service is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    /// A cloud load balancer.
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Cluster-internal only.
    ClusterIp,
}

impl ServiceType {
    /// The Kubernetes `spec.type` value.
    pub fn as_k8s(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIp => "ClusterIP",
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// The settings, read and typed; defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `enableTraining`.
    pub enable_training: Flag,
    /// `enableInference`.
    pub enable_inference: Flag,
    /// `allowInsecureConnections`.
    pub allow_insecure_connections: Flag,
    /// `inferenceRouterServiceType`.
    pub inference_router_service_type: Option<ServiceType>,
    /// `internalLoadBalancerProvider=azure`.
    pub internal_load_balancer: bool,
    /// `sslSecret`.
    pub ssl_secret: Option<String>,
    /// `sslCname`.
    pub ssl_cname: Option<String>,
    /// `inferenceRouterHA`.
    pub inference_router_ha: Flag,
    /// `nodeSelector.<label>=<value>`.
    pub node_selector: BTreeMap<String, String>,
    /// `installNvidiaDevicePlugin`.
    pub install_nvidia_device_plugin: Flag,
    /// `installPromOp`.
    pub install_prom_op: Flag,
    /// `installVolcano`.
    pub install_volcano: Flag,
    /// `installDcgmExporter`.
    pub install_dcgm_exporter: Flag,
    /// `sslCertPemFile` (protected).
    pub ssl_cert_pem_file: Option<PathBuf>,
    /// `sslKeyPemFile` (protected).
    pub ssl_key_pem_file: Option<PathBuf>,
    /// `inferenceRouterTolerations`.
    pub inference_router_tolerations: Vec<TolerationSpec>,
    /// `gpuTolerations` (default [`DEFAULT_GPU_TOLERATIONS`]).
    pub gpu_tolerations: Vec<TolerationSpec>,
    /// `gpuPriorityClassName`.
    pub gpu_priority_class_name: Option<String>,
    /// `inferenceRouterResources.{requests,limits}.{cpu,memory}`.
    pub inference_router_resources: RouterResources,
    /// `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
    /// `inferenceRouterServiceAnnotations.<key>=<value>`.
    pub service_annotations: BTreeMap<String, String>,
    /// `inferenceRouterLoadBalancerIP`.
    pub load_balancer_ip: Option<IpAddr>,
    /// `inferenceRouterExternalTrafficPolicy`: `Cluster` or `Local`.
    pub external_traffic_policy: Option<String>,
    /// `serviceMonitorLabels.<key>=<value>`.
    pub service_monitor_labels: BTreeMap<String, String>,
    /// `inferenceRouterNamespaces`: the namespaces online endpoints live in (none: all).
    pub inference_router_namespaces: Vec<String>,
    /// `openshift`.
    pub openshift: Flag,
    /// `networkPolicy`.
    pub network_policy: Flag,
}

/// The router container's resources.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterResources {
    /// `inferenceRouterResources.requests.cpu`.
    pub requests_cpu: Quantity,
    /// `inferenceRouterResources.requests.memory`.
    pub requests_memory: Quantity,
    /// `inferenceRouterResources.limits.cpu`.
    pub limits_cpu: Quantity,
    /// `inferenceRouterResources.limits.memory`.
    pub limits_memory: Quantity,
}

impl Settings {
    /// Reads every value; all problems are reported together.
    pub fn from_raw(raw: &RawSettings) -> Result<Settings, Problems> {
        let mut problems = Problems::default();
        let mut reader = Reader {
            raw,
            problems: &mut problems,
        };
        let settings = Settings {
            enable_training: reader.flag("enableTraining"),
            enable_inference: reader.flag("enableInference"),
            allow_insecure_connections: reader.flag("allowInsecureConnections"),
            inference_router_service_type: reader.service_type(),
            internal_load_balancer: reader.load_balancer_provider(),
            ssl_secret: reader.name("sslSecret", KeyKind::SecretName),
            ssl_cname: reader.name("sslCname", KeyKind::DnsName),
            inference_router_ha: reader.flag("inferenceRouterHA"),
            node_selector: reader.prefixed(NODE_SELECTOR_PREFIX),
            install_nvidia_device_plugin: reader.flag("installNvidiaDevicePlugin"),
            install_prom_op: reader.flag("installPromOp"),
            install_volcano: reader.flag("installVolcano"),
            install_dcgm_exporter: reader.flag("installDcgmExporter"),
            ssl_cert_pem_file: reader.path("sslCertPemFile"),
            ssl_key_pem_file: reader.path("sslKeyPemFile"),
            inference_router_tolerations: reader.tolerations("inferenceRouterTolerations"),
            gpu_tolerations: reader.tolerations("gpuTolerations"),
            gpu_priority_class_name: reader.name("gpuPriorityClassName", KeyKind::ObjectName),
            inference_router_resources: reader.resources(),
            image_pull_secrets: reader
                .parsed("imagePullSecrets", values::parse_names)
                .unwrap_or_default(),
            service_annotations: reader.prefixed(SERVICE_ANNOTATIONS_PREFIX),
            load_balancer_ip: reader.parsed("inferenceRouterLoadBalancerIP", values::parse_ip),
            external_traffic_policy: reader.traffic_policy(),
            service_monitor_labels: reader.prefixed(SERVICE_MONITOR_LABELS_PREFIX),
            inference_router_namespaces: reader
                .parsed("inferenceRouterNamespaces", values::parse_namespaces)
                .unwrap_or_default(),
            openshift: reader.flag("openshift"),
            network_policy: reader.flag("networkPolicy"),
        };
        problems.into_result(settings)
    }
}

struct Reader<'a> {
    raw: &'a RawSettings,
    problems: &'a mut Problems,
}

impl Reader<'_> {
    fn given(&self, key: &str) -> Option<&str> {
        self.raw
            .config
            .get(key)
            .or_else(|| self.raw.protected.get(key))
            .map(String::as_str)
    }

    fn flag(&mut self, key: &str) -> Flag {
        let default = spec(key).and_then(|s| s.default) == Some("True");
        match self.given(key) {
            None => Flag {
                value: default,
                explicit: false,
            },
            Some(v) => match parse_bool(v) {
                Some(value) => Flag {
                    value,
                    explicit: true,
                },
                None => {
                    self.problems.push(
                        key,
                        format!("`{v}` is not a boolean: use True or False (any case)"),
                    );
                    Flag {
                        value: default,
                        explicit: true,
                    }
                }
            },
        }
    }

    fn service_type(&mut self) -> Option<ServiceType> {
        let key = "inferenceRouterServiceType";
        let v = self.given(key)?;
        let parsed = match v.to_ascii_lowercase().as_str() {
            "loadbalancer" => Some(ServiceType::LoadBalancer),
            "nodeport" => Some(ServiceType::NodePort),
            "clusterip" => Some(ServiceType::ClusterIp),
            _ => None,
        };
        if parsed.is_none() {
            // az rule 5.
            self.problems.push(
                key,
                format!("`{v}` is not a service type: use loadBalancer, nodePort or clusterIP (any case)"),
            );
        }
        parsed
    }

    fn load_balancer_provider(&mut self) -> bool {
        let key = "internalLoadBalancerProvider";
        match self.given(key) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("azure") => true,
            Some(v) => {
                self.problems.push(
                    key,
                    format!("`{v}` is not a supported provider: the only value is `azure` (an Azure internal load balancer); leave the key out for a public one"),
                );
                false
            }
        }
    }

    fn name(&mut self, key: &str, kind: KeyKind) -> Option<String> {
        let v = self.given(key)?;
        let checked = match kind {
            KeyKind::SecretName => check_dns_subdomain(v).map_err(|e| {
                format!("`{v}` is not a Secret name ({e}): use the name of a Secret in namespace azureml, e.g. `azureml-fe-tls`")
            }),
            KeyKind::ObjectName => check_dns_subdomain(v).map_err(|e| {
                format!("`{v}` is not an object name ({e}): use lowercase letters, digits, `-` and `.`")
            }),
            _ => check_dns_name(v).map_err(|e| {
                format!("`{v}` is not a DNS name ({e}): use the host name clients use, e.g. `ml.contoso.com`")
            }),
        };
        match checked {
            Ok(()) => Some(v.to_owned()),
            Err(message) => {
                self.problems.push(key, message);
                None
            }
        }
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        let v = self.given(key)?;
        if v.trim().is_empty() {
            self.problems
                .push(key, "is empty: give the path to the PEM file");
            return None;
        }
        Some(PathBuf::from(v))
    }

    /// The map set by the keys starting with `prefix` (`nodeSelector.agentpool=gpu` → `agentpool:
    /// gpu`); label values are checked, annotation values taken as they are.
    fn prefixed(&mut self, prefix: &str) -> BTreeMap<String, String> {
        let kind = PREFIXES
            .iter()
            .find(|(p, _)| *p == prefix)
            .map_or(PrefixKind::Label, |(_, kind)| *kind);
        let mut map = BTreeMap::new();
        for (key, value) in &self.raw.config {
            let Some(name) = key.strip_prefix(prefix) else {
                continue;
            };
            match (kind, check_label_value(value)) {
                (PrefixKind::Label, Err(e)) => self.problems.push(
                    key.clone(),
                    format!("`{value}` is not a label value ({e}): use letters, digits, `-`, `_` and `.`, e.g. `{key}=gpu`"),
                ),
                _ => {
                    map.insert(name.to_owned(), value.clone());
                }
            }
        }
        map
    }

    /// The value of `key`, or its documented default.
    fn given_or_default(&self, key: &str) -> Option<&str> {
        self.given(key)
            .or_else(|| spec(key).and_then(|s| s.default))
    }

    /// Parses `key`'s value (or default) with `parse`; a problem names the key.
    fn parsed<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let v = self.given_or_default(key)?.to_owned();
        parse(&v).map_err(|e| self.problems.push(key, e)).ok()
    }

    fn tolerations(&mut self, key: &str) -> Vec<TolerationSpec> {
        self.parsed(key, values::parse_tolerations)
            .unwrap_or_default()
    }

    fn resources(&mut self) -> RouterResources {
        let mut quantity = |key: &str| {
            self.parsed(key, values::parse_quantity).unwrap_or_else(|| {
                values::parse_quantity(spec(key).and_then(|s| s.default).unwrap_or("1"))
                    .expect("defaults are quantities")
            })
        };
        RouterResources {
            requests_cpu: quantity("inferenceRouterResources.requests.cpu"),
            requests_memory: quantity("inferenceRouterResources.requests.memory"),
            limits_cpu: quantity("inferenceRouterResources.limits.cpu"),
            limits_memory: quantity("inferenceRouterResources.limits.memory"),
        }
    }

    fn traffic_policy(&mut self) -> Option<String> {
        self.parsed("inferenceRouterExternalTrafficPolicy", |v| {
            ["Cluster", "Local"]
                .iter()
                .find(|p| p.eq_ignore_ascii_case(v))
                .map(|p| (*p).to_owned())
                .ok_or_else(|| format!("`{v}` is not a traffic policy: use Cluster (any node forwards; the client address is lost) or Local (only nodes running a router answer; the client address is kept)"))
        })
    }
}

/// `True`/`False` in any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::from_raw(&RawSettings::default()).unwrap();
        assert!(!s.enable_training.value && !s.enable_inference.value);
        assert!(!s.allow_insecure_connections.value);
        assert!(s.inference_router_ha.value && !s.inference_router_ha.explicit);
        assert!(s.install_prom_op.value && s.install_volcano.value);
        assert!(!s.install_nvidia_device_plugin.value && !s.install_dcgm_exporter.value);
        assert_eq!(s.inference_router_service_type, None);
    }

    #[test]
    fn booleans_in_any_case_and_service_types_too() {
        let raw = RawSettings::parse(
            &words(&[
                "enableInference=TRUE",
                "inferenceRouterHA=false",
                "inferenceRouterServiceType=NODEPORT",
                "nodeSelector.agentpool=gpu",
            ]),
            &[],
        )
        .unwrap();
        let s = Settings::from_raw(&raw).unwrap();
        assert!(s.enable_inference.value && s.enable_inference.explicit);
        assert!(!s.inference_router_ha.value && s.inference_router_ha.explicit);
        assert_eq!(s.inference_router_service_type, Some(ServiceType::NodePort));
        assert_eq!(s.node_selector["agentpool"], "gpu");
    }
}

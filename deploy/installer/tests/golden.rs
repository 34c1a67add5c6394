//! Golden tests: the seed's four scenarios (and one with every optional setting on) render
//! exactly the YAML checked in under `tests/golden/`, and every rendered object is a valid object
//! of its kind.
//!
//! A rendering change fails with a line diff; regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p scoregate-ext --test golden` and review the diff in git.

mod support;

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use scoregate::config::RouterConfig;
use scoregate_ext::render::monitoring::ServiceMonitor;
use scoregate_ext::render::{config as router_config, object_ref};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"))
}

/// A readable diff: each differing line with its number, expected then actual.
fn line_diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    let mut shown = 0;
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            out.push_str(&format!(
                "line {}:\n  - {}\n  + {}\n",
                i + 1,
                x.unwrap_or(&"<end of file>"),
                y.unwrap_or(&"<end of file>")
            ));
            shown += 1;
            if shown == 20 {
                out.push_str("  … (more lines differ)\n");
                break;
            }
        }
    }
    out
}

#[test]
fn the_four_scenarios_render_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for scenario in support::all_scenarios() {
        let actual = support::render(&scenario).to_yaml();
        let path = golden_path(scenario.name);
        if update {
            std::fs::write(&path, &actual).expect("golden file writable");
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}: create it with UPDATE_GOLDEN=1", path.display()));
        if expected != actual {
            failures.push(format!(
                "{} differs from the rendering:\n{}",
                path.display(),
                line_diff(&expected, &actual)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIf the change is intended, regenerate with UPDATE_GOLDEN=1 cargo test -p scoregate-ext --test golden and review the diff.",
        failures.join("\n")
    );
}

/// k8s-openapi ignores unknown fields when deserializing, so a field it does not know disappears
/// on the way back: deserialize into the typed object, serialize again, compare.
fn round_trip<T: DeserializeOwned + Serialize>(object: &serde_yaml::Value) -> Result<(), String> {
    let typed: T = serde_yaml::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let original = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    compare("", &original, &back, &mut lost);
    if lost.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fields unknown to the type or changed: {}",
            lost.join(", ")
        ))
    }
}

fn compare(
    path: &str,
    original: &serde_json::Value,
    back: &serde_json::Value,
    lost: &mut Vec<String>,
) {
    use serde_json::Value;
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => compare(&p, v, w, lost),
                    None => lost.push(p),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                lost.push(format!("{path}.{k} (added)"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                compare(&format!("{path}[{i}]"), v, w, lost);
            }
        }
        (a, b) if a == b => {}
        _ => lost.push(format!("{path} (value)")),
    }
}

fn check_typed(object: &serde_yaml::Value) -> Result<(), String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(object),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(object),
        ("v1", "Secret") => round_trip::<Secret>(object),
        ("v1", "Service") => round_trip::<Service>(object),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(object),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(object),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(object),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(object)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(object),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(object),
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<NetworkPolicy>(object),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(object)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => round_trip::<ServiceMonitor>(object),
        other => Err(format!("no typed check for {other:?}: add one")),
    }
}

#[test]
fn every_rendered_object_is_a_valid_object_of_its_kind() {
    let mut failures = Vec::new();
    for scenario in support::all_scenarios() {
        for object in &support::render(&scenario).objects {
            if let Err(e) = check_typed(object) {
                failures.push(format!("{}: {}: {e}", scenario.name, object_ref(object)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_round_trip_check_catches_an_unknown_field() {
    let mut object = support::render(&support::scenarios().remove(0))
        .find("Deployment", "azureml-fe-v2")
        .cloned()
        .unwrap();
    object["spec"]["replica"] = 3.into();
    let e = check_typed(&object).unwrap_err();
    assert!(e.contains(".spec.replica"), "{e}");
}

#[test]
fn the_rendered_router_configuration_is_what_the_router_reads() {
    for scenario in support::all_scenarios() {
        let manifest = support::render(&scenario);
        let Some(expected) = &manifest.router_config else {
            assert!(manifest.find("Deployment", "azureml-fe-v2").is_none());
            continue;
        };
        let cm = manifest.find("ConfigMap", "azureml-fe-config").unwrap();
        let text = cm["data"][router_config::CONFIG_KEY].as_str().unwrap();
        let parsed = RouterConfig::from_yaml(text).expect("the router parses its rendered config");
        assert_eq!(&parsed, expected, "{}", scenario.name);
    }
}

#[test]
fn the_scenarios_install_what_the_docs_say() {
    let by_name = |name: &str| {
        let s = support::scenarios()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        support::render(&s)
    };
    // Proof of concept: HTTP on a public load balancer, one router.
    let poc = by_name("aks-proof-of-concept");
    let deployment = poc.find("Deployment", "azureml-fe-v2").unwrap();
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(1));
    assert!(deployment["spec"]["template"]["spec"]["affinity"].is_null());
    let service = poc.find("Service", "azureml-fe").unwrap();
    assert_eq!(service["spec"]["type"].as_str(), Some("LoadBalancer"));
    assert_eq!(service["spec"]["ports"][0]["port"].as_i64(), Some(80));
    assert!(poc.find("Secret", "azureml-fe-tls").is_none());

    // Training only: no router, and the output says what is not installed.
    let training = by_name("arc-training-only");
    assert!(training.find("Deployment", "azureml-fe-v2").is_none());
    let notes: Vec<String> = training.notices.iter().map(ToString::to_string).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("volcano-sh/volcano") && n.contains("kubeflow")),
        "{notes:?}"
    );

    // Production: HTTPS only, three routers on three nodes.
    let production = by_name("aks-production-https");
    let deployment = production.find("Deployment", "azureml-fe-v2").unwrap();
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    let term = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["topologyKey"].as_str(), Some("kubernetes.io/hostname"));
    let service = production.find("Service", "azureml-fe").unwrap();
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["port"].as_i64(), Some(443));
    let secret = production.find("Secret", "azureml-fe-tls").unwrap();
    assert!(secret["data"]["cert.pem"].is_string() && secret["data"]["key.pem"].is_string());

    // Arc NodePort with GPUs.
    let gpu = by_name("arc-nodeport-https-gpu");
    assert_eq!(
        gpu.find("Service", "azureml-fe").unwrap()["spec"]["type"].as_str(),
        Some("NodePort")
    );
    assert!(gpu
        .find("DaemonSet", "nvidia-device-plugin-daemonset")
        .is_some());
    assert!(gpu.find("DaemonSet", "dcgm-exporter").is_some());
    assert!(gpu.find("ServiceMonitor", "dcgm-exporter").is_some());
}

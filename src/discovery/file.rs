//! The routes file: endpoints and deployments declared in YAML, with Azure ML's names and
//! defaults, reloaded when the file changes.
//!
//! ```yaml
//! endpoints:
//!   - name: my-endpoint
//!     auth_mode: key            # key | aml_token
//!     keys: { primary: "…", secondary: "…" }
//!     traffic: { blue: 90, green: 10 }
//!     mirror_traffic: {}
//! deployments:
//!   - name: blue
//!     endpoint: my-endpoint
//!     pods: ["10.0.0.5:5001", { address: "10.0.0.6:5001", ready: false }]
//!     request_settings:
//!       request_timeout_ms: 5000
//!       max_concurrent_requests_per_instance: 1
//!       max_queue_wait_ms: 500
//!     outlier_detection:          # scoregate's; these are the defaults
//!       consecutive_failures: 5
//!       base_ejection_ms: 30000
//!       max_ejection_percent: 50
//!     routing:                    # scoregate's; see model::routing (policy, prefix, pod_metrics)
//!       policy: prefix_affinity
//! ```
//!
//! The file is watched as [`crate::watch`] describes, so editors' atomic renames and every symlink
//! swap of a Kubernetes ConfigMap volume are seen. A file that does not parse or validate is
//! refused, logged and counted; the last good table stays.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::Publisher;
use crate::model::{
    AuthMode, DeploymentSpec, EndpointKeys, EndpointSpec, OutlierDetection, PodSpec,
    RequestSettings, RouteSpec, RoutingSettings, DEFAULT_MODEL_PORT,
};
use crate::watch::FileWatcher;

/// Why a routes file was not loaded.
#[derive(Debug)]
pub struct RoutesError {
    /// The file.
    pub path: PathBuf,
    /// Every problem found, each naming its field and the fix.
    pub problems: Vec<String>,
}

impl fmt::Display for RoutesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{}: {one}", self.path.display()),
            many => {
                write!(f, "{}: {} problems:", self.path.display(), many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RoutesError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    endpoints: Vec<EndpointEntry>,
    #[serde(default)]
    deployments: Vec<DeploymentEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    name: String,
    #[serde(default)]
    auth_mode: AuthModeEntry,
    keys: KeysEntry,
    #[serde(default)]
    traffic: BTreeMap<String, u8>,
    #[serde(default)]
    mirror_traffic: BTreeMap<String, u8>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum AuthModeEntry {
    #[default]
    Key,
    AmlToken,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysEntry {
    primary: String,
    #[serde(default)]
    secondary: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentEntry {
    name: String,
    endpoint: String,
    #[serde(default)]
    pods: Vec<PodEntry>,
    #[serde(default)]
    request_settings: RequestSettingsEntry,
    #[serde(default)]
    outlier_detection: OutlierDetectionEntry,
    #[serde(default)]
    routing: RoutingSettings,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OutlierDetectionEntry {
    consecutive_failures: Option<u32>,
    base_ejection_ms: Option<u64>,
    max_ejection_percent: Option<u8>,
}

impl From<OutlierDetectionEntry> for OutlierDetection {
    fn from(o: OutlierDetectionEntry) -> Self {
        let defaults = OutlierDetection::default();
        OutlierDetection {
            consecutive_failures: o
                .consecutive_failures
                .unwrap_or(defaults.consecutive_failures),
            base_ejection_ms: o.base_ejection_ms.unwrap_or(defaults.base_ejection_ms),
            max_ejection_percent: o
                .max_ejection_percent
                .unwrap_or(defaults.max_ejection_percent),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequestSettingsEntry {
    request_timeout_ms: Option<u64>,
    max_concurrent_requests_per_instance: Option<u32>,
    max_queue_wait_ms: Option<u64>,
    max_queue_length: Option<u32>,
}

/// A pod: `"ip:port"`, `"ip"` (port 5001), or `{address, ready, terminating}`.
struct PodEntry(PodSpec);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodObject {
    address: String,
    #[serde(default = "default_true")]
    ready: bool,
    #[serde(default)]
    terminating: bool,
}

fn default_true() -> bool {
    true
}

/// Parses `ip:port`, `[v6]:port` or a bare IP (port 5001).
fn parse_pod_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_MODEL_PORT));
    }
    Err(format!(
        "`{text}` is not a pod address: use an IP and port such as `10.0.0.5:5001` (host names are not resolved)"
    ))
}

impl<'de> Deserialize<'de> for PodEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PodVisitor;
        impl<'de> Visitor<'de> for PodVisitor {
            type Value = PodEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a pod address such as \"10.0.0.5:5001\" or {address, ready, terminating}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PodEntry, E> {
                parse_pod_address(v)
                    .map(|a| PodEntry(PodSpec::ready(a)))
                    .map_err(E::custom)
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<PodEntry, M::Error> {
                let pod = PodObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let address = parse_pod_address(&pod.address).map_err(de::Error::custom)?;
                Ok(PodEntry(PodSpec {
                    address,
                    ready: pod.ready,
                    terminating: pod.terminating,
                }))
            }
        }
        deserializer.deserialize_any(PodVisitor)
    }
}

/// Parses routes YAML into a [`RouteSpec`]; problems are returned as text naming their field.
pub fn parse_routes(text: &str) -> Result<RouteSpec, Vec<String>> {
    let file: RoutesFile = if text.trim().is_empty() {
        RoutesFile {
            endpoints: Vec::new(),
            deployments: Vec::new(),
        }
    } else {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            vec![format!("field `{field}`: {}", e.into_inner())]
        })?
    };
    let mut problems = Vec::new();
    let mut spec = RouteSpec::default();
    for (i, e) in file.endpoints.into_iter().enumerate() {
        if spec.endpoints.contains_key(&e.name) {
            problems.push(format!(
                "field `endpoints[{i}].name`: endpoint `{}` is declared twice: keep one",
                e.name
            ));
            continue;
        }
        spec.endpoints.insert(e.name.clone(), endpoint_spec(e));
    }
    for (i, d) in file.deployments.into_iter().enumerate() {
        let key = (d.endpoint.clone(), d.name.clone());
        if spec.deployments.contains_key(&key) {
            problems.push(format!(
                "field `deployments[{i}].name`: deployment `{}` of endpoint `{}` is declared twice: keep one",
                d.name, d.endpoint
            ));
            continue;
        }
        spec.deployments.insert(key, deployment_spec(d));
    }
    if let Err(errors) = spec.validate() {
        problems.extend(
            errors
                .into_iter()
                .map(|e| format!("field `{}`: {}", e.field, e.message)),
        );
    }
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

/// An endpoint as the routes file declares it.
fn endpoint_spec(e: EndpointEntry) -> EndpointSpec {
    EndpointSpec {
        name: e.name,
        auth_mode: match e.auth_mode {
            AuthModeEntry::Key => AuthMode::Key,
            AuthModeEntry::AmlToken => AuthMode::AmlToken,
        },
        keys: EndpointKeys {
            primary: e.keys.primary,
            secondary: e.keys.secondary,
        },
        traffic: e.traffic,
        mirror_traffic: e.mirror_traffic,
    }
}

/// A deployment as the routes file declares it, the request settings it leaves out defaulted.
fn deployment_spec(d: DeploymentEntry) -> DeploymentSpec {
    let defaults = RequestSettings::default();
    let s = d.request_settings;
    DeploymentSpec {
        name: d.name,
        endpoint: d.endpoint,
        pods: d.pods.into_iter().map(|p| p.0).collect(),
        settings: RequestSettings {
            request_timeout_ms: s.request_timeout_ms.unwrap_or(defaults.request_timeout_ms),
            max_concurrent_requests_per_instance: s
                .max_concurrent_requests_per_instance
                .unwrap_or(defaults.max_concurrent_requests_per_instance),
            max_queue_wait_ms: s.max_queue_wait_ms.unwrap_or(defaults.max_queue_wait_ms),
            max_queue_length: s.max_queue_length,
        },
        outlier_detection: d.outlier_detection.into(),
        routing: d.routing,
    }
}

/// Reads, parses and validates a routes file.
pub fn load_routes(path: &Path) -> Result<RouteSpec, RoutesError> {
    let text = std::fs::read_to_string(path).map_err(|e| RoutesError {
        path: path.to_owned(),
        problems: vec![format!("cannot read the routes file: {e}")],
    })?;
    parse_routes(&text).map_err(|problems| RoutesError {
        path: path.to_owned(),
        problems,
    })
}

/// How long file events are gathered before one reload.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Watches `path` and publishes it again whenever it changes, until the returned task is aborted.
/// The first load must already have succeeded.
pub fn watch(
    path: PathBuf,
    mut publisher: Publisher,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut watcher = FileWatcher::new(std::slice::from_ref(&path))?;
    let mut last = std::fs::read(&path).ok();
    Ok(tokio::spawn(async move {
        while watcher.changed(DEBOUNCE).await {
            let current = std::fs::read(&path).ok();
            if current == last {
                continue;
            }
            last = current;
            if last
                .as_deref()
                .is_some_and(|text| text.iter().all(u8::is_ascii_whitespace))
            {
                // Most likely a rewrite caught between truncating and writing; a file that
                // really means "no endpoints" says `endpoints: []`.
                publisher.refuse(&format!(
                    "{}: the routes file is empty (a write in progress?): to remove every \
                     endpoint write `endpoints: []`",
                    path.display()
                ));
                continue;
            }
            match load_routes(&path) {
                Ok(spec) => {
                    if let Err(errors) = publisher.apply(&spec) {
                        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        publisher.refuse(&format!("{}: {}", path.display(), text.join("; ")));
                    }
                }
                Err(e) => publisher.refuse(&e.to_string()),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
endpoints:
  - name: my-endpoint
    keys: { primary: "primary-key-123456" }
    traffic: { blue: 90, green: 10 }
deployments:
  - name: blue
    endpoint: my-endpoint
    pods: ["127.0.0.1:5001", "127.0.0.2", { address: "127.0.0.3:7000", ready: false }]
  - name: green
    endpoint: my-endpoint
    pods: []
    request_settings: { request_timeout_ms: 1000, max_queue_wait_ms: 0 }
"#;

    #[test]
    fn parses_with_azure_defaults() {
        let spec = parse_routes(GOOD).unwrap();
        let blue = &spec.deployments[&("my-endpoint".into(), "blue".into())];
        assert_eq!(blue.settings, RequestSettings::default());
        assert_eq!(blue.pods.len(), 3);
        assert_eq!(blue.pods[1].address, "127.0.0.2:5001".parse().unwrap());
        assert!(!blue.pods[2].ready);
        let green = &spec.deployments[&("my-endpoint".into(), "green".into())];
        assert_eq!(green.settings.request_timeout_ms, 1000);
        assert_eq!(green.settings.max_queue_wait_ms, 0);
        assert_eq!(spec.endpoints["my-endpoint"].auth_mode, AuthMode::Key);
    }

    #[test]
    fn unknown_field_names_path_and_the_real_fields() {
        let bad = GOOD.replace("max_queue_wait_ms: 0", "max_queue_wait: 0");
        let problems = parse_routes(&bad).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("deployments[1].request_settings.max_queue_wait"),
            "{problems:?}"
        );
        assert!(problems[0].contains("max_queue_wait_ms"), "{problems:?}");
    }

    #[test]
    fn bad_pod_address_says_how_to_write_one() {
        let bad = GOOD.replace("\"127.0.0.2\"", "\"model-pod.local:5001\"");
        let problems = parse_routes(&bad).unwrap_err();
        assert!(
            problems[0].contains("deployments[0].pods[1]"),
            "{problems:?}"
        );
        assert!(problems[0].contains("10.0.0.5:5001"), "{problems:?}");
    }

    #[test]
    fn rule_violations_are_all_reported() {
        let bad = GOOD
            .replace("green: 10 }", "green: 5 }")
            .replace("name: green", "name: g");
        let problems = parse_routes(&bad).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("weights sum to 95")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`g` is not a valid name")),
            "{problems:?}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let bad = format!("{GOOD}  - name: blue\n    endpoint: my-endpoint\n");
        let problems = parse_routes(&bad).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("declared twice")),
            "{problems:?}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let e = load_routes(Path::new("/nonexistent/routes.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/routes.yaml: cannot read"),
            "{e}"
        );
    }
}

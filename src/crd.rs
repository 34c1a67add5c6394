//! scoregate's custom resources: `OnlineEndpoint` and `OnlineDeployment` (group `scoregate.io`,
//! version `v1`, namespaced), the Kubernetes form of Azure ML's online endpoints and deployments
//! (`docs/ARCHITECTURE.md`, "The contract").
//!
//! ```yaml
//! apiVersion: scoregate.io/v1
//! kind: OnlineEndpoint
//! metadata: { name: my-endpoint, namespace: azureml }
//! spec:
//!   authMode: key                 # key | amlToken
//!   keysSecretName: my-endpoint-keys   # a Secret with data keys primaryKey, secondaryKey
//!   traffic: { blue: 90, green: 10 }
//!   mirrorTraffic: {}
//! ---
//! apiVersion: scoregate.io/v1
//! kind: OnlineDeployment
//! metadata: { name: my-endpoint-blue, namespace: azureml }
//! spec:
//!   endpointName: my-endpoint
//!   deploymentName: blue          # optional; defaults to metadata.name
//!   serviceName: my-endpoint-blue # the Service whose EndpointSlices list the model pods
//!   port: 5001
//!   requestSettings: { requestTimeoutMs: 5000, maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 500 }
//!   outlierDetection: { consecutiveFailures: 5, baseEjectionMs: 30000, maxEjectionPercent: 50 }
//!   scaleSettings: { type: targetUtilization, minInstances: 1, maxInstances: 3, targetUtilizationPercentage: 70, pollingInterval: 1, targetDeployment: my-endpoint-blue }
//! ```
//!
//! The router reads these through [`crate::discovery::kube`]; the installer imports the types to
//! write them. [`crds`] returns the definitions (schemas with OpenAPI validation where OpenAPI can
//! express a rule, printer columns), [`crd_yaml`] renders them, and `deploy/crds/` holds the
//! rendered files (checked by `tests/crds.rs`; regenerate with `UPDATE_CRDS=1 cargo test --test
//! crds` or `scoregate crds --write deploy/crds`).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::{
    OutlierDetection, RequestSettings, RoutingSettings,
    DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE, DEFAULT_MAX_QUEUE_WAIT_MS, DEFAULT_MODEL_PORT,
    DEFAULT_REQUEST_TIMEOUT_MS, MAX_BASE_EJECTION_MS, MAX_MIRROR_PERCENT, MAX_REQUEST_TIMEOUT_MS,
};

/// The API group of scoregate's custom resources.
pub const GROUP: &str = "scoregate.io";
/// The API version of scoregate's custom resources.
pub const VERSION: &str = "v1";
/// The data key of an endpoint's primary key in its keys Secret (as `az ml online-endpoint
/// get-credentials` names it).
pub const PRIMARY_KEY: &str = "primaryKey";
/// The data key of an endpoint's secondary key in its keys Secret.
pub const SECONDARY_KEY: &str = "secondaryKey";
/// The data key of the certificate chain in the TLS Secret (Azure ML's `sslSecret`).
pub const TLS_CERT_KEY: &str = "cert.pem";
/// The data key of the private key in the TLS Secret.
pub const TLS_KEY_KEY: &str = "key.pem";
/// The data key of the certificate chain in a `kubernetes.io/tls` Secret (as cert-manager and
/// `kubectl create secret tls` write it). When a Secret holds both pairs, this one is served.
pub const K8S_TLS_CERT_KEY: &str = "tls.crt";
/// The data key of the private key in a `kubernetes.io/tls` Secret.
pub const K8S_TLS_KEY_KEY: &str = "tls.key";
/// Every entry of a TLS Secret the router reads (the others are dropped on arrival).
pub const TLS_SECRET_KEYS: [&str; 4] =
    [K8S_TLS_CERT_KEY, K8S_TLS_KEY_KEY, TLS_CERT_KEY, TLS_KEY_KEY];
/// Azure ML's limit of deployments per endpoint.
pub const MAX_DEPLOYMENTS_PER_ENDPOINT: usize = 20;

/// Azure ML's name rule as a regular expression over lowercase Kubernetes names: a letter first,
/// then letters, digits and single dashes, not ending with a dash (lengths are separate).
const NAME_PATTERN: &str = "^[a-z](-?[a-z0-9])*$";
/// A Kubernetes Service name (RFC 1035 label).
const SERVICE_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// An online endpoint: a stable scoring URI (`/api/v1/endpoint/{metadata.name}/score`), its
/// credentials and how live and mirrored traffic is split between its deployments.
///
/// The endpoint name is `metadata.name`; it must be unique across the namespaces a router watches.
// The lint mistakes the repeated `type_ = …` of several `printcolumn(…)` for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[kube(
    group = "scoregate.io",
    version = "v1",
    kind = "OnlineEndpoint",
    namespaced,
    shortname = "oep",
    category = "scoregate",
    doc = "An online endpoint: a scoring URI, its credentials and its traffic split (Azure ML's online endpoint).",
    derive = "PartialEq",
    status = "OnlineEndpointStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Auth", type_ = "string", json_path = ".spec.authMode"),
    printcolumn(name = "Keys", type_ = "string", json_path = ".spec.keysSecretName"),
    printcolumn(name = "Traffic", type_ = "string", json_path = ".spec.traffic"),
    printcolumn(
        name = "Mirror",
        type_ = "string",
        json_path = ".spec.mirrorTraffic",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OnlineEndpointSpec {
    /// How clients authenticate: `key` (`Authorization: Bearer <primary or secondary key>`) or
    /// `amlToken` (a signed, expiring token; the keys sign and verify it).
    #[serde(default)]
    pub auth_mode: AuthModeSpec,
    /// The Secret, in the endpoint's namespace, whose data keys `primaryKey` and (optionally)
    /// `secondaryKey` hold the endpoint's keys. Updating the Secret rotates the keys live.
    #[schemars(length(min = 1, max = 253))]
    pub keys_secret_name: String,
    /// Live traffic: deployment name → percent (0–100). The weights sum to 0 (no live traffic)
    /// or 100. A request naming a deployment in `azureml-model-deployment` bypasses them.
    #[serde(default)]
    #[schemars(schema_with = "traffic_schema")]
    pub traffic: BTreeMap<String, u8>,
    /// Mirrored traffic: at most one deployment → percent (0–50); copies of that share of
    /// requests go to it and its responses are discarded. It must not also have live traffic.
    #[serde(default)]
    #[schemars(schema_with = "mirror_schema")]
    pub mirror_traffic: BTreeMap<String, u8>,
}

/// Azure ML's `auth_mode` for Kubernetes online endpoints (`key` and `aml_token` only).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AuthModeSpec {
    /// Primary or secondary key as a bearer token.
    #[default]
    #[serde(rename = "key")]
    Key,
    /// A signed, expiring token.
    #[serde(rename = "amlToken")]
    AmlToken,
}

impl From<AuthModeSpec> for crate::model::AuthMode {
    fn from(mode: AuthModeSpec) -> Self {
        match mode {
            AuthModeSpec::Key => crate::model::AuthMode::Key,
            AuthModeSpec::AmlToken => crate::model::AuthMode::AmlToken,
        }
    }
}

/// An online deployment: one model version behind an endpoint, served by the pods that the
/// EndpointSlices of `serviceName` list.
// The lint mistakes the repeated `type_ = …` of several `printcolumn(…)` for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[kube(
    group = "scoregate.io",
    version = "v1",
    kind = "OnlineDeployment",
    namespaced,
    shortname = "odep",
    category = "scoregate",
    doc = "An online deployment: the model pods (through a Service) and request settings of one deployment of an online endpoint (Azure ML's online deployment).",
    derive = "PartialEq",
    status = "OnlineDeploymentStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpointName"),
    printcolumn(
        name = "Deployment",
        type_ = "string",
        json_path = ".spec.deploymentName"
    ),
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.serviceName"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port"),
    printcolumn(
        name = "Timeout",
        type_ = "integer",
        json_path = ".spec.requestSettings.requestTimeoutMs",
        priority = 1
    ),
    printcolumn(
        name = "Max-Replicas",
        type_ = "integer",
        json_path = ".spec.scaleSettings.maxInstances",
        priority = 1
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.autoscale.currentReplicas"
    ),
    printcolumn(
        name = "Autoscale",
        type_ = "string",
        json_path = ".status.autoscale.reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OnlineDeploymentSpec {
    /// The OnlineEndpoint (in the same namespace) this deployment belongs to.
    #[schemars(length(min = 3, max = 32), regex(pattern = NAME_PATTERN))]
    pub endpoint_name: String,
    /// The deployment's name within its endpoint (what `traffic` and the
    /// `azureml-model-deployment` header use). Defaults to `metadata.name`; set it when two
    /// endpoints in one namespace each have, say, a `blue` deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 32), regex(pattern = NAME_PATTERN))]
    pub deployment_name: Option<String>,
    /// The Service (in the same namespace) whose EndpointSlices list the model pods. Pods whose
    /// endpoint condition is `ready` get new requests; `terminating` ones finish what they have.
    #[schemars(length(min = 1, max = 63), regex(pattern = SERVICE_PATTERN))]
    pub service_name: String,
    /// The pods' inference-server port (Azure ML's is 5001); requests go to `podIP:port`.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Timeouts and concurrency, with Azure ML's defaults.
    #[serde(default)]
    pub request_settings: RequestSettingsSpec,
    /// When pods whose connections keep failing leave the rotation (scoregate's).
    #[serde(default)]
    pub outlier_detection: OutlierDetectionSpec,
    /// Autoscaling settings, stored for the request-based autoscaler (not used for routing).
    #[serde(default)]
    pub scale_settings: ScaleSettingsSpec,
    /// How requests are spread over the pods (scoregate's): the picking policy, the prefix key
    /// of `prefix_affinity`, and scraping of the pods' own metrics.
    #[serde(default, skip_serializing_if = "is_default_routing")]
    pub routing: RoutingSettings,
}

fn is_default_routing(routing: &RoutingSettings) -> bool {
    *routing == RoutingSettings::default()
}

impl OnlineDeploymentSpec {
    /// The deployment's name within its endpoint: `deploymentName`, else the object's name.
    pub fn deployment_name_or<'a>(&'a self, object_name: &'a str) -> &'a str {
        self.deployment_name.as_deref().unwrap_or(object_name)
    }
}

/// Azure ML's `request_settings`, plus scoregate's optional queue bound.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestSettingsSpec {
    /// Time the pod has to send response headers (504 after); default 5000, at most 300000
    /// (the Kubernetes endpoint maximum).
    #[serde(default = "default_request_timeout_ms")]
    #[schemars(range(min = 1, max = MAX_REQUEST_TIMEOUT_MS))]
    pub request_timeout_ms: u64,
    /// Requests one pod serves at a time from this router; default 1.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent_requests_per_instance: u32,
    /// Time a request may wait for a free pod (503 after); default 500.
    #[serde(default = "default_max_queue_wait_ms")]
    #[schemars(range(min = 0, max = MAX_REQUEST_TIMEOUT_MS))]
    pub max_queue_wait_ms: u64,
    /// Requests that may wait at once (429 above); unset means one per pod slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_queue_length: Option<u32>,
}

impl Default for RequestSettingsSpec {
    fn default() -> Self {
        RequestSettingsSpec {
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_concurrent_requests_per_instance: DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE,
            max_queue_wait_ms: DEFAULT_MAX_QUEUE_WAIT_MS,
            max_queue_length: None,
        }
    }
}

impl From<RequestSettingsSpec> for RequestSettings {
    fn from(s: RequestSettingsSpec) -> Self {
        RequestSettings {
            request_timeout_ms: s.request_timeout_ms,
            max_concurrent_requests_per_instance: s.max_concurrent_requests_per_instance,
            max_queue_wait_ms: s.max_queue_wait_ms,
            max_queue_length: s.max_queue_length,
        }
    }
}

/// scoregate's passive outlier detection: a pod whose connections fail `consecutiveFailures`
/// times in a row (refused, reset, broken responses; not a model's 5xx, not a timeout) gets no
/// requests for `baseEjectionMs`, longer on each repeated ejection; at most
/// `maxEjectionPercent` of the pods are out at once, and never the last one.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Failures in a row that eject a pod; 0 turns ejection off; default 5.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: u32,
    /// How long a first ejection lasts, in ms; the n-th in a row lasts n times as long (at most
    /// 300 s, or the base when longer); default 30000.
    #[serde(default = "default_base_ejection_ms")]
    #[schemars(range(min = 1, max = MAX_BASE_EJECTION_MS))]
    pub base_ejection_ms: u64,
    /// The largest share of pods ejected at once, in percent; default 50.
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetectionSpec {
    fn default() -> Self {
        OutlierDetection::default().into()
    }
}

impl From<OutlierDetection> for OutlierDetectionSpec {
    fn from(o: OutlierDetection) -> Self {
        OutlierDetectionSpec {
            consecutive_failures: o.consecutive_failures,
            base_ejection_ms: o.base_ejection_ms,
            max_ejection_percent: o.max_ejection_percent,
        }
    }
}

impl From<OutlierDetectionSpec> for OutlierDetection {
    fn from(o: OutlierDetectionSpec) -> Self {
        OutlierDetection {
            consecutive_failures: o.consecutive_failures,
            base_ejection_ms: o.base_ejection_ms,
            max_ejection_percent: o.max_ejection_percent,
        }
    }
}

fn default_consecutive_failures() -> u32 {
    OutlierDetection::default().consecutive_failures
}
fn default_base_ejection_ms() -> u64 {
    OutlierDetection::default().base_ejection_ms
}
fn default_max_ejection_percent() -> u8 {
    OutlierDetection::default().max_ejection_percent
}

/// Azure ML's `scale_settings`: defaults `targetUtilization`, 1–1 instances, 70 %, 1 s.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minInstances <= self.maxInstances",
    "message": "minInstances must not be above maxInstances",
}]))]
pub struct ScaleSettingsSpec {
    /// `targetUtilization` (the router's autoscaler sets replicas) or `default` (manual).
    #[serde(default, rename = "type")]
    pub scale_type: ScaleType,
    /// Fewest replicas; default 1.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_instances: u32,
    /// Most replicas; default 1.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_instances: u32,
    /// Utilization the autoscaler aims for: (busy pods + queued requests) / pods; default 70.
    #[serde(default = "default_target_utilization")]
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization_percentage: u32,
    /// Seconds between the autoscaler's decisions; default 1.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 3600))]
    pub polling_interval: u32,
    /// The `apps/v1` Deployment (same namespace) whose replicas the autoscaler sets; unset means
    /// the autoscaler leaves this deployment alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target_deployment: Option<String>,
}

impl Default for ScaleSettingsSpec {
    fn default() -> Self {
        ScaleSettingsSpec {
            scale_type: ScaleType::default(),
            min_instances: 1,
            max_instances: 1,
            target_utilization_percentage: 70,
            polling_interval: 1,
            target_deployment: None,
        }
    }
}

/// What the router reports about an online endpoint (the `status` subresource).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OnlineEndpointStatus {
    /// `Ready`: whether the endpoint is served as declared, with a reason and message when not
    /// (`KeysMissing`, `InvalidSpec`, `WeightsInvalid`, `NameConflict`, …). Written by one router
    /// replica, with server-side apply under the field manager `scoregate-status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// What the router reports about an online deployment (the `status` subresource).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OnlineDeploymentStatus {
    /// The request-based autoscaler's last decision; written only by the replica that owns the
    /// deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,
    /// `Ready`: whether the deployment is served with ready pods, with a reason and message when
    /// not (`ServiceNotFound`, `NoReadyPods`, `InvalidSpec`, `EndpointNotFound`, …). Written by
    /// the replica that owns the deployment, with server-side apply (field manager
    /// `scoregate-status`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// `status.conditions`: a list of `metav1.Condition` keyed by `type`, so that each writer owns
/// its own conditions under server-side apply.
fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), json!("map"));
    object.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    object.insert(
        "description".into(),
        json!("Conditions of the object as the router sees it; `Ready` says whether it is served as declared."),
    );
    schema
}

/// The autoscaler's last decision about one deployment (`status.autoscale`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// Replicas of the target Deployment after the last decision (`spec.replicas` of its scale
    /// subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<u32>,
    /// Replicas the load asks for, within `minInstances..maxInstances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
    /// When the autoscaler last changed the replica count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// A machine-readable word: `ScaledUp`, `ScaledDown`, `Steady`, `WaitingToScaleDown`,
    /// `BelowMinimum`, `AboveMaximum`, `HpaConflict`, `TargetNotFound`, `ScaleFailed`.
    #[serde(default)]
    pub reason: String,
    /// What happened, for a person, with the numbers that led to it.
    #[serde(default)]
    pub message: String,
}

/// Azure ML's `scale_settings.type`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ScaleType {
    /// The request-based autoscaler sets replicas between `minInstances` and `maxInstances`.
    #[default]
    #[serde(rename = "targetUtilization")]
    TargetUtilization,
    /// Manual: replicas are whatever the Deployment says.
    #[serde(rename = "default")]
    Default,
}

fn default_port() -> u16 {
    DEFAULT_MODEL_PORT
}
fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_max_concurrent() -> u32 {
    DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE
}
fn default_max_queue_wait_ms() -> u64 {
    DEFAULT_MAX_QUEUE_WAIT_MS
}
fn default_one() -> u32 {
    1
}
fn default_target_utilization() -> u32 {
    70
}

fn weights_schema(max: u8, max_entries: usize, description: &str) -> Schema {
    let mut schema = Schema::default();
    let object = schema.ensure_object();
    object.insert("type".into(), json!("object"));
    object.insert("description".into(), json!(description));
    object.insert(
        "additionalProperties".into(),
        json!({"type": "integer", "minimum": 0, "maximum": max}),
    );
    object.insert("maxProperties".into(), json!(max_entries));
    object.insert("default".into(), json!({}));
    schema
}

fn traffic_schema(_: &mut SchemaGenerator) -> Schema {
    weights_schema(
        100,
        MAX_DEPLOYMENTS_PER_ENDPOINT,
        "Live traffic: deployment name → percent (0–100); the weights sum to 0 or 100.",
    )
}

fn mirror_schema(_: &mut SchemaGenerator) -> Schema {
    weights_schema(
        MAX_MIRROR_PERCENT,
        1,
        "Mirrored traffic: at most one deployment → percent (0–50); responses are discarded.",
    )
}

/// Rules OpenAPI cannot express field by field, as CEL `x-kubernetes-validations` on the root
/// (where `metadata.name` is visible). Only bounded strings are used, so the rules stay well
/// within the API server's cost budget.
fn root_rules(kind: &str) -> Value {
    match kind {
        "OnlineEndpoint" => json!([{
            "rule": format!("size(self.metadata.name) >= 3 && size(self.metadata.name) <= 32 && self.metadata.name.matches('{NAME_PATTERN}')"),
            "message": "the endpoint name (metadata.name) must be 3-32 characters: a letter first, then letters, digits and single dashes, not ending with a dash (Azure ML's rule)",
        }]),
        _ => json!([
            {
                "rule": format!("has(self.spec.deploymentName) || (size(self.metadata.name) >= 3 && size(self.metadata.name) <= 32 && self.metadata.name.matches('{NAME_PATTERN}'))"),
                "message": "without spec.deploymentName, metadata.name is the deployment name and must be 3-32 characters: a letter first, then letters, digits and single dashes; or set spec.deploymentName",
            },
            {
                "rule": "size(self.spec.endpointName) + size(has(self.spec.deploymentName) ? self.spec.deploymentName : self.metadata.name) >= 6 && size(self.spec.endpointName) + size(has(self.spec.deploymentName) ? self.spec.deploymentName : self.metadata.name) <= 62",
                "message": "endpoint name plus deployment name must be 6-62 characters (Azure ML's rule for Kubernetes online endpoints)",
            },
        ]),
    }
}

/// Rewrites Rust-specific integer formats (`uint8`, `uint16`, ...) that Kubernetes does not know
/// into `int32`/`int64`; the ranges already bound the values.
fn normalise_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(format)) = map.get("format") {
                let replacement = match format.as_str() {
                    "uint8" | "int8" | "uint16" | "int16" | "uint32" | "uint" => Some("int32"),
                    "uint64" => Some("int64"),
                    _ => None,
                };
                if let Some(r) = replacement {
                    map.insert("format".into(), json!(r));
                }
            }
            for v in map.values_mut() {
                normalise_formats(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_formats),
        _ => {}
    }
}

fn finish(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let kind = crd.spec.names.kind.clone();
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    normalise_formats(&mut value);
    for version in value["spec"]["versions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        let root = &mut version["schema"]["openAPIV3Schema"];
        root["x-kubernetes-validations"] = root_rules(&kind);
    }
    serde_json::from_value(value).expect("the edited CRD deserializes")
}

/// The definitions of `OnlineEndpoint` and `OnlineDeployment`, ready to apply.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        finish(OnlineEndpoint::crd()),
        finish(OnlineDeployment::crd()),
    ]
}

/// One YAML file per CRD: (file name, contents), as checked in under `deploy/crds/`.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(&crd).expect("a CRD renders as YAML");
            (
                format!("{name}.yaml"),
                format!("# Generated by `scoregate crds`; do not edit.\n{yaml}"),
            )
        })
        .collect()
}

/// Every CRD as one multi-document YAML stream (what `scoregate crds` prints).
pub fn crd_yaml() -> String {
    crd_files()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_azure_ml() {
        let spec: OnlineDeploymentSpec = serde_json::from_value(json!({
            "endpointName": "my-endpoint", "serviceName": "svc"
        }))
        .unwrap();
        assert_eq!(spec.port, 5001);
        assert_eq!(
            RequestSettings::from(spec.request_settings),
            RequestSettings::default()
        );
        assert_eq!(
            OutlierDetection::from(spec.outlier_detection),
            OutlierDetection::default()
        );
        assert_eq!(spec.scale_settings.target_utilization_percentage, 70);
        assert_eq!(spec.scale_settings.scale_type, ScaleType::TargetUtilization);
        assert_eq!(spec.deployment_name_or("blue"), "blue");
        let endpoint: OnlineEndpointSpec =
            serde_json::from_value(json!({"keysSecretName": "k"})).unwrap();
        assert_eq!(endpoint.auth_mode, AuthModeSpec::Key);
        assert!(endpoint.traffic.is_empty());
    }

    #[test]
    fn schemas_carry_the_rules() {
        let crds = crds();
        let endpoint = serde_json::to_value(&crds[0]).unwrap();
        let root = &endpoint["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let traffic = &root["properties"]["spec"]["properties"]["traffic"];
        assert_eq!(
            traffic["additionalProperties"]["maximum"].as_f64(),
            Some(100.0)
        );
        assert_eq!(
            root["properties"]["spec"]["properties"]["mirrorTraffic"]["maxProperties"],
            1
        );
        assert!(root["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("metadata.name"));
        let text = crd_yaml();
        assert!(!text.contains("uint"), "no Rust-only formats:\n{text}");
        assert!(text.contains("onlinedeployments.scoregate.io"));
    }
}

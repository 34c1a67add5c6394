//! The declared routing model: endpoints, deployments and their pods, as a discovery source
//! (the routes file, Kubernetes watches) describes them, before they become a [`crate::table::RoutingTable`].
//!
//! Names, defaults and rules follow Azure ML's online endpoints
//! (`docs/ARCHITECTURE.md`, "The contract": scoring URIs, traffic and mirroring, request settings).

pub mod routing;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

pub use routing::{
    MetricNames, MetricsPreset, PodMetricsSettings, PolicyKind, PrefixSettings, RoutingSettings,
};

/// Azure ML's default `request_timeout_ms`.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Azure ML's default `max_concurrent_requests_per_instance`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE: u32 = 1;
/// Azure ML's default `max_queue_wait_ms`.
pub const DEFAULT_MAX_QUEUE_WAIT_MS: u64 = 500;
/// The longest request timeout Azure ML allows for Kubernetes online endpoints (300 s).
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 300_000;
/// The largest share of traffic that may be mirrored.
pub const MAX_MIRROR_PERCENT: u8 = 50;
/// The port of the Azure ML inference server in model pods.
pub const DEFAULT_MODEL_PORT: u16 = 5001;
/// The longest base ejection time of outlier detection (1 hour).
pub const MAX_BASE_EJECTION_MS: u64 = 3_600_000;
/// The shortest endpoint key accepted (Azure ML's own keys are 32 characters).
pub const MIN_KEY_LENGTH: usize = 16;

/// Everything a discovery source knows: the input of a table build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// Online endpoints by name.
    pub endpoints: BTreeMap<String, EndpointSpec>,
    /// Deployments by (endpoint name, deployment name).
    pub deployments: BTreeMap<(String, String), DeploymentSpec>,
}

/// One online endpoint: its credentials and how traffic is split between its deployments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Endpoint name, the `{endpoint}` of `/api/v1/endpoint/{endpoint}/...`.
    pub name: String,
    /// How clients authenticate.
    pub auth_mode: AuthMode,
    /// The endpoint's two keys (in token mode, the keys that sign and verify tokens).
    pub keys: EndpointKeys,
    /// Live traffic: deployment name → percent; sums to 0 or 100.
    pub traffic: BTreeMap<String, u8>,
    /// Mirrored traffic: at most one deployment → percent (≤ 50); responses are discarded.
    pub mirror_traffic: BTreeMap<String, u8>,
}

/// Azure ML's `auth_mode` for Kubernetes online endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMode {
    /// `Authorization: Bearer <primary or secondary key>`.
    Key,
    /// `Authorization: Bearer <token>`: a signed, expiring token whose audience is the endpoint.
    AmlToken,
}

impl AuthMode {
    /// The spelling used in files and custom resources.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Key => "key",
            AuthMode::AmlToken => "aml_token",
        }
    }
}

/// An endpoint's primary and secondary key.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointKeys {
    /// The primary key; in token mode it also signs new tokens.
    pub primary: String,
    /// The secondary key, accepted like the primary one (for rotation).
    pub secondary: Option<String>,
}

impl fmt::Debug for EndpointKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointKeys")
            .field("primary", &"<redacted>")
            .field("secondary", &self.secondary.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One deployment of an endpoint: its pods and request settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentSpec {
    /// Deployment name, unique within its endpoint.
    pub name: String,
    /// The endpoint this deployment belongs to.
    pub endpoint: String,
    /// The model pods, with their readiness.
    pub pods: Vec<PodSpec>,
    /// Timeouts and concurrency limits.
    pub settings: RequestSettings,
    /// When pods whose connections keep failing leave the rotation.
    pub outlier_detection: OutlierDetection,
    /// How requests are spread over the pods.
    pub routing: RoutingSettings,
}

/// One model pod address and its state, as an EndpointSlice reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodSpec {
    /// Where the pod's inference server listens.
    pub address: SocketAddr,
    /// Ready pods get new requests.
    pub ready: bool,
    /// Terminating pods get no new requests but finish what they have.
    pub terminating: bool,
}

impl PodSpec {
    /// A ready pod at `address`.
    pub fn ready(address: SocketAddr) -> Self {
        PodSpec {
            address,
            ready: true,
            terminating: false,
        }
    }

    /// Whether new requests may go to this pod.
    pub fn routable(&self) -> bool {
        self.ready && !self.terminating
    }
}

/// Azure ML's `request_settings` of a deployment, plus the queue bound scoregate adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestSettings {
    /// Time the pod has to send response headers, from admission.
    pub request_timeout_ms: u64,
    /// Requests one pod may serve at a time (from this router).
    pub max_concurrent_requests_per_instance: u32,
    /// Time a request may wait in the deployment's queue for a free pod.
    pub max_queue_wait_ms: u64,
    /// Requests that may wait at once; `None` means one per free-able slot
    /// (`max_concurrent_requests_per_instance` × routable pods), so that at most
    /// 2 × capacity requests are in the router, as Azure ML documents for managed endpoints.
    pub max_queue_length: Option<u32>,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_concurrent_requests_per_instance: DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE,
            max_queue_wait_ms: DEFAULT_MAX_QUEUE_WAIT_MS,
            max_queue_length: None,
        }
    }
}

/// scoregate's passive outlier detection of one deployment (Envoy's outlier detection, nginx's
/// `max_fails`/`fail_timeout`): a pod whose connections fail `consecutive_failures` times in a
/// row (refused, reset, broken responses; not a model's 5xx, not a timeout) gets no requests
/// for `base_ejection_ms`, longer on each repeated ejection; at most `max_ejection_percent` of
/// the pods are out at once, and never the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutlierDetection {
    /// Failures in a row that eject a pod; 0 turns ejection off. Default 5.
    pub consecutive_failures: u32,
    /// How long a first ejection lasts, in ms; the n-th in a row lasts n times as long (at most
    /// 300 s, or the base when longer). Default 30000.
    pub base_ejection_ms: u64,
    /// The largest share of pods ejected at once, in percent (one pod may always go when there
    /// are two or more). Default 50.
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_percent: 50,
        }
    }
}

/// One broken rule: where it is and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// Path of the offending field, e.g. `endpoints[my-ep].traffic`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks an Azure ML endpoint or deployment name: 3–32 characters, a lower-case letter first,
/// then lower-case letters, digits and single dashes, not ending with a dash. Names are
/// lower-case because an endpoint's name is also a host name (`{endpoint}.{domain}`, matched
/// whatever the case the client sends) and a Kubernetes object name.
pub fn check_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    let first_is_letter = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let allowed = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !(3..=32).contains(&len)
        || !first_is_letter
        || !allowed
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(format!(
            "`{name}` is not a valid name: use 3–32 characters, a letter first, then letters, digits \
             and single dashes, not ending with a dash (for example `my-endpoint`)"
        ));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "`{name}` has upper-case letters: write it in lower case (`{}`); requests match \
             endpoint names whatever their case, as host names do",
            name.to_ascii_lowercase()
        ));
    }
    Ok(())
}

/// Checks one endpoint key: empty, or shorter than [`MIN_KEY_LENGTH`], is refused.
fn check_key(key: &str) -> Result<(), String> {
    let len = key.chars().count();
    match len {
        0 => Err(format!(
            "the key is empty: set a key of at least {MIN_KEY_LENGTH} characters"
        )),
        n if n < MIN_KEY_LENGTH => Err(format!(
            "the key has {n} characters: use at least {MIN_KEY_LENGTH} (Azure ML's keys have 32)"
        )),
        _ => Ok(()),
    }
}

impl RouteSpec {
    /// Checks every rule and returns all broken ones, so a person can fix a file in one pass.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        for (name, endpoint) in &self.endpoints {
            endpoint.validate(&format!("endpoints[{name}]"), self, &mut errors);
        }
        for ((endpoint, name), deployment) in &self.deployments {
            deployment.validate(
                &format!("deployments[{endpoint}/{name}]"),
                self,
                &mut errors,
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The deployments of one endpoint, in name order.
    pub fn deployments_of<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> impl Iterator<Item = &'a DeploymentSpec> + 'a {
        self.deployments
            .range((endpoint.to_owned(), String::new())..)
            .take_while(move |((e, _), _)| e == endpoint)
            .map(|(_, d)| d)
    }
}

/// Adds a problem with the field `at` + the field it names to `errors`.
fn reporter<'a>(at: &'a str, errors: &'a mut Vec<SpecError>) -> impl FnMut(&str, String) + 'a {
    move |field: &str, message: String| {
        errors.push(SpecError {
            field: format!("{at}{field}"),
            message,
        })
    }
}

impl EndpointSpec {
    fn validate(&self, at: &str, spec: &RouteSpec, errors: &mut Vec<SpecError>) {
        let mut err = reporter(at, errors);
        if let Err(message) = check_name(&self.name) {
            err(".name", message);
        }
        if let Err(message) = check_key(&self.keys.primary) {
            err(".keys.primary", message);
        }
        if let Some(Err(message)) = self.keys.secondary.as_deref().map(check_key) {
            err(".keys.secondary", message);
        }
        self.validate_traffic(spec, &mut err);
        self.validate_mirror(spec, &mut err);
    }

    /// Whether `spec` declares deployment `deployment` of this endpoint.
    fn has_deployment(&self, spec: &RouteSpec, deployment: &str) -> bool {
        spec.deployments
            .contains_key(&(self.name.clone(), deployment.to_owned()))
    }

    /// Live traffic: known deployments, weights summing to 0 or 100.
    fn validate_traffic(&self, spec: &RouteSpec, err: &mut impl FnMut(&str, String)) {
        let mut total: u32 = 0;
        for (deployment, percent) in &self.traffic {
            total += u32::from(*percent);
            if *percent > 100 {
                err(
                    ".traffic",
                    format!("`{deployment}: {percent}` is above 100 percent"),
                );
            }
            if !self.has_deployment(spec, deployment) {
                err(
                    ".traffic",
                    format!(
                        "deployment `{deployment}` does not exist in endpoint `{}`: create it first or \
                         remove it from traffic",
                        self.name
                    ),
                );
            }
        }
        if total != 0 && total != 100 {
            err(
                ".traffic",
                format!("weights sum to {total}: they must sum to 0 (no live traffic) or 100"),
            );
        }
    }

    /// Mirrored traffic: one known deployment without live traffic, at most 50 percent.
    fn validate_mirror(&self, spec: &RouteSpec, err: &mut impl FnMut(&str, String)) {
        if self.mirror_traffic.len() > 1 {
            err(
                ".mirror_traffic",
                "only one deployment can receive mirrored traffic: keep one entry".into(),
            );
        }
        for (deployment, percent) in &self.mirror_traffic {
            if *percent > MAX_MIRROR_PERCENT {
                err(
                    ".mirror_traffic",
                    format!("`{deployment}: {percent}` mirrors more than {MAX_MIRROR_PERCENT} percent: lower it"),
                );
            }
            if self.traffic.get(deployment).is_some_and(|p| *p > 0) {
                err(
                    ".mirror_traffic",
                    format!(
                        "deployment `{deployment}` has live traffic and cannot also receive mirrored \
                         traffic: set its traffic to 0 or mirror another deployment"
                    ),
                );
            }
            if !self.has_deployment(spec, deployment) {
                err(
                    ".mirror_traffic",
                    format!(
                        "deployment `{deployment}` does not exist in endpoint `{}`",
                        self.name
                    ),
                );
            }
        }
    }
}

impl DeploymentSpec {
    fn validate(&self, at: &str, spec: &RouteSpec, errors: &mut Vec<SpecError>) {
        let mut err = reporter(at, errors);
        if let Err(message) = check_name(&self.name) {
            err(".name", message);
        }
        if !spec.endpoints.contains_key(&self.endpoint) {
            err(
                ".endpoint",
                format!(
                    "endpoint `{}` is not declared: declare it under `endpoints`",
                    self.endpoint
                ),
            );
        }
        let combined = self.endpoint.len() + self.name.len();
        if !(6..=62).contains(&combined) {
            err(
                ".name",
                format!(
                    "endpoint name plus deployment name is {combined} characters: Kubernetes online \
                     endpoints need 6–62"
                ),
            );
        }
        self.validate_settings(&mut err);
        for (field, message) in self.routing.problems() {
            err(&format!(".routing{field}"), message);
        }
        let mut seen = std::collections::HashSet::new();
        for pod in &self.pods {
            if !seen.insert(pod.address) {
                err(
                    ".pods",
                    format!("pod `{}` is listed twice: list it once", pod.address),
                );
            }
        }
    }

    /// The request settings and outlier detection, each within its range.
    fn validate_settings(&self, err: &mut impl FnMut(&str, String)) {
        let s = &self.settings;
        if s.request_timeout_ms == 0 || s.request_timeout_ms > MAX_REQUEST_TIMEOUT_MS {
            err(
                ".request_settings.request_timeout_ms",
                format!(
                    "{} is out of range: use 1..={MAX_REQUEST_TIMEOUT_MS} (the Kubernetes endpoint maximum, 300 s)",
                    s.request_timeout_ms
                ),
            );
        }
        if s.max_concurrent_requests_per_instance == 0 {
            err(
                ".request_settings.max_concurrent_requests_per_instance",
                "must be at least 1 (Azure ML's default is 1)".into(),
            );
        }
        if s.max_queue_wait_ms > MAX_REQUEST_TIMEOUT_MS {
            err(
                ".request_settings.max_queue_wait_ms",
                format!(
                    "{} is above {MAX_REQUEST_TIMEOUT_MS}: lower it",
                    s.max_queue_wait_ms
                ),
            );
        }
        let o = &self.outlier_detection;
        if o.base_ejection_ms == 0 || o.base_ejection_ms > MAX_BASE_EJECTION_MS {
            err(
                ".outlier_detection.base_ejection_ms",
                format!(
                    "{} is out of range: use 1..={MAX_BASE_EJECTION_MS} (default 30000)",
                    o.base_ejection_ms
                ),
            );
        }
        if o.max_ejection_percent > 100 {
            err(
                ".outlier_detection.max_ejection_percent",
                format!("{} is above 100: lower it", o.max_ejection_percent),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, traffic: &[(&str, u8)], mirror: &[(&str, u8)]) -> EndpointSpec {
        EndpointSpec {
            name: name.into(),
            auth_mode: AuthMode::Key,
            keys: EndpointKeys {
                primary: "primary-key-0123456789".into(),
                secondary: None,
            },
            traffic: traffic.iter().map(|(d, p)| (d.to_string(), *p)).collect(),
            mirror_traffic: mirror.iter().map(|(d, p)| (d.to_string(), *p)).collect(),
        }
    }

    fn deployment(endpoint: &str, name: &str) -> DeploymentSpec {
        DeploymentSpec {
            name: name.into(),
            endpoint: endpoint.into(),
            pods: vec![PodSpec::ready("127.0.0.1:5001".parse().unwrap())],
            settings: RequestSettings::default(),
            outlier_detection: OutlierDetection::default(),
            routing: RoutingSettings::default(),
        }
    }

    fn spec(endpoints: Vec<EndpointSpec>, deployments: Vec<DeploymentSpec>) -> RouteSpec {
        RouteSpec {
            endpoints: endpoints.into_iter().map(|e| (e.name.clone(), e)).collect(),
            deployments: deployments
                .into_iter()
                .map(|d| ((d.endpoint.clone(), d.name.clone()), d))
                .collect(),
        }
    }

    fn messages(spec: &RouteSpec) -> Vec<String> {
        spec.validate()
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn keys_have_at_least_sixteen_characters() {
        let with_keys = |primary: &str, secondary: Option<&str>| {
            let mut e = endpoint("my-endpoint", &[], &[]);
            e.keys = EndpointKeys {
                primary: primary.into(),
                secondary: secondary.map(Into::into),
            };
            spec(vec![e], vec![]).validate()
        };
        assert!(with_keys("0123456789abcdef", Some("0123456789abcdef")).is_ok());
        let errors = with_keys("k", Some("")).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].field.ends_with(".keys.primary"), "{errors:?}");
        assert!(errors[0].message.contains("1 characters: use at least 16"));
        assert!(errors[1]
            .message
            .contains("empty: set a key of at least 16"));
    }

    #[test]
    fn names_follow_azure_rules() {
        for good in [
            "abc",
            "my-endpoint",
            "a1b2",
            "x23456789012345678901234567890ab",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "ab",
            "1abc",
            "-abc",
            "abc-",
            "a--b",
            "a_b",
            "x234567890123456789012345678901ab",
            "ab c",
            "My-Endpoint",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_must_sum_to_zero_or_hundred() {
        let ok = spec(
            vec![endpoint("ep-one", &[("blue", 90), ("green", 10)], &[])],
            vec![deployment("ep-one", "blue"), deployment("ep-one", "green")],
        );
        assert!(ok.validate().is_ok());
        let zero = spec(
            vec![endpoint("ep-one", &[("blue", 0)], &[])],
            vec![deployment("ep-one", "blue")],
        );
        assert!(zero.validate().is_ok());
        let bad = spec(
            vec![endpoint("ep-one", &[("blue", 90), ("green", 5)], &[])],
            vec![deployment("ep-one", "blue"), deployment("ep-one", "green")],
        );
        assert_eq!(
            messages(&bad),
            ["endpoints[ep-one].traffic: weights sum to 95: they must sum to 0 (no live traffic) or 100"]
        );
    }

    #[test]
    fn mirror_rules() {
        let live = spec(
            vec![endpoint("ep-one", &[("blue", 100)], &[("blue", 10)])],
            vec![deployment("ep-one", "blue")],
        );
        assert!(messages(&live)[0].contains("has live traffic"));
        let too_much = spec(
            vec![endpoint("ep-one", &[("blue", 100)], &[("green", 60)])],
            vec![deployment("ep-one", "blue"), deployment("ep-one", "green")],
        );
        assert!(messages(&too_much)[0].contains("more than 50 percent"));
        let two = spec(
            vec![endpoint(
                "ep-one",
                &[("blue", 100)],
                &[("green", 10), ("red", 10)],
            )],
            vec![
                deployment("ep-one", "blue"),
                deployment("ep-one", "green"),
                deployment("ep-one", "red"),
            ],
        );
        assert!(messages(&two)[0].contains("only one deployment"));
    }

    #[test]
    fn references_must_exist() {
        let s = spec(
            vec![endpoint("ep-one", &[("blue", 100)], &[])],
            vec![deployment("ep-two", "green")],
        );
        let m = messages(&s);
        assert!(
            m.iter()
                .any(|m| m.contains("deployment `blue` does not exist")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m.contains("endpoint `ep-two` is not declared")),
            "{m:?}"
        );
    }

    #[test]
    fn settings_ranges() {
        let mut d = deployment("ep-one", "blue");
        d.settings.max_concurrent_requests_per_instance = 0;
        d.settings.request_timeout_ms = 400_000;
        let s = spec(vec![endpoint("ep-one", &[("blue", 100)], &[])], vec![d]);
        let m = messages(&s);
        assert_eq!(m.len(), 2, "{m:?}");
    }

    #[test]
    fn deployments_of_lists_one_endpoint() {
        let s = spec(
            vec![endpoint("ep-one", &[], &[]), endpoint("ep-two", &[], &[])],
            vec![
                deployment("ep-one", "blue"),
                deployment("ep-one", "green"),
                deployment("ep-two", "blue"),
            ],
        );
        let names: Vec<_> = s
            .deployments_of("ep-one")
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["blue", "green"]);
    }
}

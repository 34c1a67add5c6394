//! Router settings: listeners, TLS, discovery, limits, timeouts and logging.
//!
//! Settings come from defaults, then an optional YAML file (`--config`), then command-line
//! flags, each overriding the one before. Unknown keys are errors that name the file and the key.
//!
//! Values that have a closed set of meanings are typed as they are read ([`TlsVersion`],
//! [`FallbackMode`], the log modes); settings that depend on each other are checked by
//! [`RouterConfig::validate`], section by section, each problem a [`ConfigError::field`] that
//! names the key and the fix. The certificate's source is read as a [`TlsSource`] by
//! [`TlsConfig::source`], the one place its three keys are checked.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::telemetry::{AccessLogMode, LogFormat};

/// Everything a router instance needs to start.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Worker threads; 0 means one per CPU. 1 runs a single-threaded runtime.
    pub workers: usize,
    /// Serve plain HTTP as well (Azure ML's `allowInsecureConnections`); default false.
    pub allow_insecure_connections: bool,
    /// Listening addresses.
    pub listen: ListenConfig,
    /// TLS termination; required unless `allow_insecure_connections` is true.
    pub tls: Option<TlsConfig>,
    /// Where routes come from.
    pub discovery: DiscoveryConfig,
    /// Request routing options.
    pub routing: RoutingConfig,
    /// Protocol limits.
    pub limits: LimitsConfig,
    /// Connections to model pods.
    pub upstream: UpstreamConfig,
    /// Mirrored traffic.
    pub mirror: MirrorConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Coordinated admission with the other router replicas; unset means this replica admits
    /// on its own.
    pub cluster: Option<ClusterConfig>,
    /// Request-based autoscaling of model deployments (needs Kubernetes discovery).
    pub autoscale: AutoscaleConfig,
    /// W3C trace context is always propagated; spans are exported when an endpoint is set.
    pub tracing: TracingConfig,
}

/// Listening addresses.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Plain HTTP (only with `allow_insecure_connections`).
    pub http: SocketAddr,
    /// HTTPS (when `tls` is set).
    pub https: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            https: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin: SocketAddr::from(([0, 0, 0, 0], 9091)),
        }
    }
}

/// TLS termination: the certificate comes from PEM files or from a Kubernetes Secret.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first (Azure ML's `sslCertPemFile`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Private key, unencrypted (Azure ML's `sslKeyPemFile`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A Secret with keys `cert.pem` and `key.pem` (Azure ML's `sslSecret`), watched through the
    /// Kubernetes API; needs Kubernetes discovery.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// Lowest TLS version offered: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// The expected server name (Azure ML's `sslCname`); other SNI values are logged, not refused.
    #[serde(default)]
    pub server_name: Option<String>,
    /// TLS session resumption (tickets and a session cache); off makes every connection a full
    /// handshake.
    #[serde(default = "TlsConfig::default_session_resumption")]
    pub session_resumption: bool,
}

impl TlsConfig {
    fn default_session_resumption() -> bool {
        true
    }

    /// TLS from a Kubernetes Secret with keys `cert.pem` and `key.pem` (Azure ML's `sslSecret`),
    /// other settings at their defaults.
    pub fn from_secret(secret: SecretRef) -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            secret: Some(secret),
            min_version: TlsVersion::default(),
            server_name: None,
            session_resumption: true,
        }
    }

    /// TLS from a certificate file and a key file, other settings at their defaults.
    pub fn from_files(cert_file: PathBuf, key_file: PathBuf) -> Self {
        TlsConfig {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            secret: None,
            min_version: TlsVersion::default(),
            server_name: None,
            session_resumption: true,
        }
    }

    /// Where the certificate comes from: exactly the files or the Secret.
    pub fn source(&self) -> Result<TlsSource, ConfigError> {
        match (&self.cert_file, &self.key_file, &self.secret) {
            (Some(cert_file), Some(key_file), None) => Ok(TlsSource::Files {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            }),
            (None, None, Some(secret)) => Ok(TlsSource::Secret(secret.clone())),
            (Some(_), Some(_), Some(_)) => Err(ConfigError::field(
                "tls",
                "both certificate files and `tls.secret` are set: keep one (Azure ML lets the files \
                 win; scoregate asks you to choose)",
            )),
            (None, None, None) => Err(ConfigError::field(
                "tls",
                "no certificate: set `tls.cert_file` and `tls.key_file`, or `tls.secret`",
            )),
            _ => Err(ConfigError::field(
                "tls",
                "`cert_file` and `key_file` go together: set both",
            )),
        }
    }

    /// Checks the section; `kube` says whether Kubernetes discovery is configured.
    pub fn validate(&self, kube: bool) -> Result<(), ConfigError> {
        match self.source()? {
            TlsSource::Secret(secret) if !kube => Err(ConfigError::field(
                "tls.secret",
                format!(
                    "the certificate Secret {}/{} is read through the Kubernetes API, which needs \
                     Kubernetes discovery: set `discovery.kube` (or --discovery kube)",
                    secret.namespace, secret.name
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Where the served certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files, watched for changes (Azure ML's `sslCertPemFile` and `sslKeyPemFile`).
    Files {
        /// Certificate chain, leaf first.
        cert_file: PathBuf,
        /// Private key, unencrypted.
        key_file: PathBuf,
    },
    /// A Secret watched through the Kubernetes API (Azure ML's `sslSecret`).
    Secret(SecretRef),
}

/// The lowest TLS version the router offers (it always offers 1.3 too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (Azure ML offers only 1.2).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl TlsVersion {
    /// `"1.2"` or `"1.3"`, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

impl FromStr for TlsVersion {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            other => Err(ConfigError(format!(
                "`{other}` is not a TLS version scoregate offers: use \"1.2\" or \"1.3\""
            ))),
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A namespaced Secret.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Its namespace (Azure ML keeps `sslSecret` in `azureml`).
    #[serde(default = "SecretRef::default_namespace")]
    pub namespace: String,
}

impl SecretRef {
    fn default_namespace() -> String {
        "azureml".into()
    }

    /// Parses `name` (namespace `azureml`, as Azure ML keeps `sslSecret`) or `namespace/name`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let (namespace, name) = match text.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (Self::default_namespace(), text.to_string()),
        };
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(ConfigError(format!(
                "`{text}` is not a Secret reference: write `name` (in namespace azureml) or `namespace/name`"
            )));
        }
        Ok(SecretRef { name, namespace })
    }
}

/// Where routes come from: exactly one of a routes file or Kubernetes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// A routes YAML file, reloaded when it changes.
    pub routes_file: Option<PathBuf>,
    /// Kubernetes watches of OnlineEndpoints, OnlineDeployments, EndpointSlices and Secrets.
    pub kube: Option<KubeDiscoveryConfig>,
}

/// Kubernetes discovery.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KubeDiscoveryConfig {
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// A kubeconfig file; without it, `KUBECONFIG` (or `~/.kube/config`) is used, else the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Write the `Ready` condition of OnlineEndpoints and OnlineDeployments (`status.conditions`,
    /// one replica writing each); needs `patch` on their `status` (the installer grants it).
    pub write_conditions: bool,
}

impl Default for KubeDiscoveryConfig {
    fn default() -> Self {
        KubeDiscoveryConfig {
            namespaces: Vec::new(),
            kubeconfig: None,
            write_conditions: true,
        }
    }
}

/// Request routing options.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Route `Host: {endpoint}.{host_domain}` as well as `/api/v1/endpoint/{endpoint}/…`.
    pub host_domain: Option<String>,
}

/// Protocol limits. Every one is documented in the README.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body (413 above). Azure ML v1 documents 100 MB.
    pub max_request_body_bytes: u64,
    /// Largest request head, start line included (431 above).
    pub max_header_bytes: usize,
    /// Most request header fields (431 above).
    pub max_headers: usize,
    /// Time a client has to send a complete request head (408 and close after).
    pub header_read_timeout_ms: u64,
    /// Time an idle keep-alive client connection stays open.
    pub keep_alive_timeout_ms: u64,
    /// Client connections open at once per listener; beyond it, new ones wait to be accepted.
    pub max_connections: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// Largest decoded HTTP/2 header list.
    pub h2_max_header_list_bytes: u32,
    /// Streams reset by the client before the router answered, tolerated per connection
    /// (rapid reset, CVE-2023-44487), before the connection is closed.
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams the router had to reset because of client errors, tolerated per connection.
    pub h2_max_local_error_reset_streams: usize,
    /// Request bodies up to this size are received whole before the request takes a slot on a
    /// pod (a slow upload occupies no pod); larger ones are received this far, then streamed.
    pub request_buffer_bytes: u64,
    /// A request body that makes no progress for this long gets 408 `BodyTimeout` (its first
    /// `request_buffer_bytes` must arrive within it; after that, no pause may last longer).
    pub body_timeout_ms: u64,
    /// A client that accepts no response bytes for this long is disconnected (nginx
    /// `send_timeout`, HAProxy `timeout client`); on HTTP/2, one stream stalled by flow control
    /// this long closes the connection too.
    pub send_timeout_ms: u64,
    /// Accepted HTTP/2 streams a client may reset (or abandon) per second on one connection, on
    /// average, with bursts of ten times as many; beyond, GOAWAY `ENHANCE_YOUR_CALM`.
    pub h2_reset_streams_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_body_bytes: 100 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 75_000,
            max_connections: 25_000,
            h2_max_concurrent_streams: 256,
            h2_max_header_list_bytes: 64 * 1024,
            h2_max_pending_accept_reset_streams: 64,
            h2_max_local_error_reset_streams: 256,
            request_buffer_bytes: 1024 * 1024,
            body_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            h2_reset_streams_per_second: 50,
        }
    }
}

/// Connections to model pods.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Time to establish a TCP connection to a pod.
    pub connect_timeout_ms: u64,
    /// Pooled connections idle longer than this are closed rather than reused; keep it below
    /// the model server's keep-alive (gunicorn's default is 2 s).
    pub idle_timeout_ms: u64,
    /// Up to this much of a pod's response is read ahead of the client, so the pod is freed
    /// when it has sent its response, however slowly the client reads; larger and streamed
    /// responses flow at the client's pace beyond it.
    pub response_buffer_bytes: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 1_000,
            idle_timeout_ms: 1_500,
            response_buffer_bytes: 1024 * 1024,
        }
    }
}

/// Mirrored traffic.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Largest request body copied to the mirror deployment; larger requests are not mirrored.
    pub max_body_bytes: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Request-based autoscaling: the router sets the replicas of the Deployments that
/// `targetUtilization` OnlineDeployments name (see `crate::autoscale`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscaleConfig {
    /// Run the autoscaler (with Kubernetes discovery only); default false (the installer turns it
    /// on). With a `cluster` section each deployment's owner acts for it, and only that replica;
    /// without one, every replica that runs it acts on every deployment: run one.
    pub enabled: bool,
    /// The stabilisation period before a scale-down, in decision intervals: every recommendation
    /// in it must ask for fewer replicas (Azure ML: "around 20 times" the scale-up interval);
    /// default 20.
    pub scale_down_intervals: u32,
    /// The stable window busy slots are averaged over, in ms (Knative's KPA: 60 s); default
    /// 60000.
    pub stable_window_ms: u64,
    /// The panic window demand is averaged over, in ms (KPA: 6 s); default 6000.
    pub panic_window_ms: u64,
    /// The field manager of the autoscaler's writes (scale and status); default
    /// `scoregate-autoscaler`.
    pub field_manager: String,
}

impl AutoscaleConfig {
    /// Checks the section; `kube` says whether Kubernetes discovery is configured.
    pub fn validate(&self, kube: bool) -> Result<(), ConfigError> {
        if self.enabled && !kube {
            return Err(ConfigError::field(
                "autoscale.enabled",
                "the autoscaler sets Deployment replicas through the \
                 Kubernetes API, which needs Kubernetes discovery: set `discovery.kube` (or \
                 --discovery kube), or turn the autoscaler off",
            ));
        }
        if self.scale_down_intervals == 0 {
            return Err(ConfigError::field(
                "autoscale.scale_down_intervals",
                "must be at least 1 (Azure ML waits about 20 \
                 intervals before removing a replica)",
            ));
        }
        if self.panic_window_ms < 100 || self.stable_window_ms < self.panic_window_ms {
            return Err(ConfigError::field(
                "autoscale.panic_window_ms",
                format!(
                    "the panic window ({} ms) must be at least 100 ms and no longer than the \
                     stable window ({} ms); Knative's defaults are 6000 and 60000",
                    self.panic_window_ms, self.stable_window_ms
                ),
            ));
        }
        let manager = &self.field_manager;
        if manager.is_empty() || manager.len() > 128 || manager.chars().any(char::is_control) {
            return Err(ConfigError::field(
                "autoscale.field_manager",
                format!(
                    "`{manager}` is not a field manager name: use 1-128 \
                 printable characters, e.g. `scoregate-autoscaler`"
                ),
            ));
        }
        Ok(())
    }
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            enabled: false,
            scale_down_intervals: 20,
            stable_window_ms: 60_000,
            panic_window_ms: 6_000,
            field_manager: "scoregate-autoscaler".into(),
        }
    }
}

/// Graceful shutdown on SIGTERM or SIGINT.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After the signal, `/readyz` fails at once but listeners keep accepting this long, so the
    /// Service stops sending before the router stops listening.
    pub drain_delay_ms: u64,
    /// Then in-flight requests have this long to finish.
    pub grace_period_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_delay_ms: 5_000,
            grace_period_ms: 30_000,
        }
    }
}

/// Logging.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `on`, `off` or `errors`.
    pub access_log: AccessLogMode,
    /// Log one in N successful requests (errors are always logged unless the access log is off).
    pub access_log_sample: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            access_log: AccessLogMode::On,
            access_log_sample: 1,
        }
    }
}

/// Span export (OTLP/HTTP, protobuf); off unless `otlp_endpoint` is set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces` (plain
    /// HTTP: a collector agent on the node or beside the router).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (requests without `traceparent`) sampled, 0 to 1; a client's
    /// `traceparent` decides for its own requests.
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: "scoregate".into(),
            sample_ratio: 1.0,
        }
    }
}

impl TracingConfig {
    /// The export settings, when export is on; an endpoint that is not a plain-HTTP URL is an
    /// error naming the field.
    pub fn export(&self) -> Result<Option<crate::trace::export::ExportSettings>, ConfigError> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint.parse().map_err(|e| {
            ConfigError::field(
                "tracing.otlp_endpoint",
                format!("`{endpoint}` is not a URL: {e}"),
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ConfigError::field(
                "tracing.otlp_endpoint",
                format!(
                    "`{endpoint}`: use an http:// URL of an OTLP/HTTP collector, e.g. \
                     http://localhost:4318/v1/traces (spans are sent in plain HTTP, to a collector \
                     agent next to the router)"
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::field(
                "tracing.sample_ratio",
                format!("{} is not between 0 and 1", self.sample_ratio),
            ));
        }
        Ok(Some(crate::trace::export::ExportSettings {
            endpoint: uri,
            service_name: self.service_name.clone(),
            sample_ratio: self.sample_ratio,
        }))
    }
}

/// Coordinated admission across router replicas: one replica owns each deployment's slots.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The internal port other replicas ask for slots on (HTTP/2, shared-secret authenticated).
    pub listen: SocketAddr,
    /// How the other replicas reach this one; default: `listen`, or `$POD_IP` with `listen`'s
    /// port when `listen` is a wildcard address.
    pub advertise: Option<SocketAddr>,
    /// Every replica's `advertise` address (this one's included), for routes from a file.
    pub peers: Vec<SocketAddr>,
    /// The router's own headless Service, whose EndpointSlices list the replicas (Kubernetes).
    pub peer_service: Option<PeerServiceConfig>,
    /// A file holding the shared credential (at least 16 bytes; surrounding whitespace is
    /// ignored); without it, `$SCOREGATE_CLUSTER_SECRET`.
    pub secret_file: Option<PathBuf>,
    /// What an isolated replica does (its peers refuse its credential, or it has had no agreed
    /// view of a majority of the replicas for `isolation_after_ms`), and what any replica does
    /// when the owner of a deployment does not route it: `local` admits against this replica's
    /// own cap (the cap may then be exceeded cluster-wide), `reject` answers 503
    /// `OwnerUnreachable`. An isolated replica is not ready either way.
    pub fallback: FallbackMode,
    /// A lease a requester never released expires this long after twice `request_timeout_ms`
    /// (the longest an abandoned request keeps its slot).
    pub lease_margin_ms: u64,
    /// Time between two hellos to each peer.
    pub heartbeat_ms: u64,
    /// A peer that does not answer a hello within this is not live; also the length of a lease
    /// on a view: an owner that has not heard its members for this long stops granting, and a
    /// new owner waits this long after every member took the new view. Failover after an owner
    /// dies takes about twice this, plus a heartbeat; an owner stopped or partitioned but alive
    /// keeps its deployments until it is back or its slots have provably ended
    /// (`docs/ARCHITECTURE.md`, "Coordinated admission").
    pub peer_timeout_ms: u64,
    /// A replica without an agreed view of a majority of the replicas for this long (running
    /// time, not time stopped) is isolated: not ready, admitting only under `fallback`. Before
    /// that, requests wait for the view to settle.
    pub isolation_after_ms: u64,
    /// No longer used: a new owner waits for every replica that can reach it to report its
    /// slots, without a timeout. Accepted so that older configurations still load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handover_settle_ms: Option<u64>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9190)),
            advertise: None,
            peers: Vec::new(),
            peer_service: None,
            secret_file: None,
            fallback: FallbackMode::Local,
            lease_margin_ms: 1_000,
            heartbeat_ms: 100,
            peer_timeout_ms: 300,
            isolation_after_ms: 1_000,
            handover_settle_ms: None,
        }
    }
}

/// The router's headless Service in Kubernetes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerServiceConfig {
    /// Its namespace.
    pub namespace: String,
    /// Its name (the EndpointSlices carry it as `kubernetes.io/service-name`).
    pub name: String,
}

/// Admission when the owner of a deployment is unreachable.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FallbackMode {
    /// Admit against this replica's own per-pod cap (requests keep flowing; the cap may be
    /// exceeded cluster-wide meanwhile, and it is counted).
    #[default]
    Local,
    /// Answer 503 until an owner is reachable again.
    Reject,
}

/// A configuration problem, said so a person can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// A problem with the setting at `field` (a path such as `tls.min_version`): what is wrong
    /// and how to fix it.
    pub fn field(field: &str, message: impl fmt::Display) -> Self {
        ConfigError(format!("field `{field}`: {message}"))
    }
}

impl RouterConfig {
    /// Reads a YAML configuration file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "{}: cannot read the configuration file: {e}",
                path.display()
            ))
        })?;
        Self::from_yaml(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses YAML configuration text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(RouterConfig::default());
        }
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            ConfigError(format!("field `{field}`: {inner}"))
        })
    }

    /// Checks the settings against each other; the message says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listeners()?;
        self.validate_settings()
    }

    /// Checks that there is something to serve on: HTTPS, or plain HTTP when allowed.
    pub fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.tls.is_none() && !self.allow_insecure_connections {
            return Err(ConfigError(
                "no listener to serve: HTTPS needs `tls.cert_file` and `tls.key_file` (or --tls-cert and \
                 --tls-key) or `tls.secret` (or --ssl-secret), and plain HTTP needs \
                 `allow_insecure_connections: true` (or --allow-insecure-connections)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks every setting but the choice of listeners (what `scoregate check` validates),
    /// section by section.
    pub fn validate_settings(&self) -> Result<(), ConfigError> {
        let kube = self.discovery.kube.is_some();
        if let Some(tls) = &self.tls {
            tls.validate(kube)?;
        }
        self.discovery.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate(kube)?;
        }
        self.limits.validate()?;
        self.routing.validate()?;
        self.tracing.export()?;
        self.autoscale.validate(kube)
    }
}

impl DiscoveryConfig {
    /// Checks that there is exactly one route source, and the namespaces' names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.routes_file, &self.kube) {
            (None, None) => {
                return Err(ConfigError(
                    "no route source: pass --routes routes.yaml (or set `discovery.routes_file`), \
                     or --discovery kube (or set `discovery.kube`)"
                        .into(),
                ))
            }
            (Some(file), Some(_)) => {
                return Err(ConfigError(format!(
                    "two route sources: the routes file {} and Kubernetes discovery: keep one",
                    file.display()
                )))
            }
            _ => {}
        }
        let namespaces = self.kube.iter().flat_map(|kube| &kube.namespaces);
        if let Some(bad) = namespaces.into_iter().find(|ns| !valid_namespace(ns)) {
            return Err(ConfigError::field(
                "discovery.kube.namespaces",
                format!(
                    "`{bad}` is not a namespace name (lowercase letters, digits and dashes, at \
                     most 63)"
                ),
            ));
        }
        Ok(())
    }
}

impl LimitsConfig {
    /// Checks the limits that have a floor.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::field(
                "limits.max_header_bytes",
                format!(
                    "{} is below the 8192-byte minimum HTTP/1 parsing needs",
                    self.max_header_bytes
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::field(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        for (field, value) in [
            ("limits.body_timeout_ms", self.body_timeout_ms),
            ("limits.send_timeout_ms", self.send_timeout_ms),
            (
                "limits.h2_reset_streams_per_second",
                u64::from(self.h2_reset_streams_per_second),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl RoutingConfig {
    /// Checks the host domain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.host_domain {
            Some(domain)
                if domain.is_empty() || domain.starts_with('.') || domain.contains(':') =>
            {
                Err(ConfigError::field(
                    "routing.host_domain",
                    format!("`{domain}` should be a bare domain such as `ml.example.com`"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A DNS-1123 label, as namespace names are.
fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-')
}

impl ClusterConfig {
    /// Checks the cluster section; `kube` says whether routes come from Kubernetes.
    pub fn validate(&self, kube: bool) -> Result<(), ConfigError> {
        match (&self.peer_service, self.peers.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::field(
                    "cluster",
                    "both `peers` and `peer_service` are set: keep `peers` for a \
                     static list, or `peer_service` to find the replicas through Kubernetes",
                ))
            }
            (Some(_), true) if !kube => {
                return Err(ConfigError::field(
                    "cluster.peer_service",
                    "finding replicas through their Service needs \
                     Kubernetes discovery: set `discovery.kube`, or list the replicas in `cluster.peers`",
                ))
            }
            (None, true) => {
                return Err(ConfigError::field(
                    "cluster",
                    "no way to find the other replicas: list every replica's address \
                     in `cluster.peers` (this one's included), or name the router's headless Service \
                     in `cluster.peer_service`",
                ))
            }
            _ => {}
        }
        if let Some(service) = &self.peer_service {
            if !valid_namespace(&service.namespace) {
                return Err(ConfigError::field(
                    "cluster.peer_service.namespace",
                    format!("`{}` is not a namespace name", service.namespace),
                ));
            }
        }
        if self.lease_margin_ms == 0 {
            return Err(ConfigError::field(
                "cluster.lease_margin_ms",
                "0 would expire leases while their response still \
                 streams: use at least 1 (default 1000)",
            ));
        }
        self.validate_timing()
    }

    /// The heartbeat, the peer timeout and the isolation bound fit together.
    fn validate_timing(&self) -> Result<(), ConfigError> {
        if self.heartbeat_ms == 0 {
            return Err(ConfigError::field(
                "cluster.heartbeat_ms",
                "must be at least 1 (default 100)",
            ));
        }
        if self.peer_timeout_ms < 2 * self.heartbeat_ms {
            return Err(ConfigError::field(
                "cluster.peer_timeout_ms",
                format!(
                    "{} ms is less than two heartbeats ({} ms): one late hello would take the \
                     owner's lease away; use at least {} (default 300)",
                    self.peer_timeout_ms,
                    self.heartbeat_ms,
                    2 * self.heartbeat_ms
                ),
            ));
        }
        if self.isolation_after_ms < self.peer_timeout_ms {
            return Err(ConfigError::field(
                "cluster.isolation_after_ms",
                format!(
                    "{} ms is less than the peer timeout ({} ms): a replica would fall back \
                     before it could notice its peers again; use at least {} (default 1000)",
                    self.isolation_after_ms, self.peer_timeout_ms, self.peer_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_and_certificate_sources_are_checked() {
        let mut c = RouterConfig {
            allow_insecure_connections: true,
            ..RouterConfig::default()
        };
        assert!(c.validate().unwrap_err().0.contains("--discovery kube"));
        c.discovery.kube = Some(KubeDiscoveryConfig::default());
        c.validate().unwrap();
        c.discovery.routes_file = Some("r.yaml".into());
        assert!(c.validate().unwrap_err().0.contains("two route sources"));
        c.discovery.routes_file = None;
        c.tls = Some(TlsConfig::from_secret(SecretRef::parse("tls").unwrap()));
        c.validate().unwrap();
        assert_eq!(
            c.tls.as_ref().unwrap().secret.as_ref().unwrap().namespace,
            "azureml"
        );
        c.discovery.kube = None;
        c.discovery.routes_file = Some("r.yaml".into());
        assert!(c
            .validate()
            .unwrap_err()
            .0
            .contains("needs Kubernetes discovery"));
        assert_eq!(SecretRef::parse("ns/tls").unwrap().namespace, "ns");
        assert!(SecretRef::parse("a/b/c").is_err());
        c.tls = None;
        c.discovery.routes_file = None;
        c.discovery.kube = Some(KubeDiscoveryConfig {
            namespaces: vec!["Bad_Name".into()],
            ..KubeDiscoveryConfig::default()
        });
        assert!(c.validate().unwrap_err().0.contains("Bad_Name"));
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(
            RouterConfig::from_yaml("").unwrap(),
            RouterConfig::default()
        );
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let e = RouterConfig::from_yaml("limits:\n  max_body: 10\n").unwrap_err();
        assert!(e.0.contains("limits.max_body"), "{e}");
        assert!(
            e.0.contains("max_request_body_bytes"),
            "suggests the real keys: {e}"
        );
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = RouterConfig::from_yaml(
            "limits:\n  max_headers: 50\nallow_insecure_connections: true\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_headers, 50);
        assert_eq!(
            c.limits.max_request_body_bytes,
            LimitsConfig::default().max_request_body_bytes
        );
        assert!(c.allow_insecure_connections);
    }

    #[test]
    fn https_only_without_tls_is_refused() {
        let mut c = RouterConfig::default();
        c.discovery.routes_file = Some("r.yaml".into());
        let e = c.validate().unwrap_err();
        assert!(e.0.contains("allow_insecure_connections"), "{e}");
        c.allow_insecure_connections = true;
        c.validate().unwrap();
    }

    #[test]
    fn a_cluster_section_must_say_how_to_find_the_replicas() {
        let c = RouterConfig::from_yaml(
            "allow_insecure_connections: true\ndiscovery: { routes_file: r.yaml }\ncluster: { listen: \"127.0.0.1:9190\" }\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err();
        assert!(
            e.0.contains("cluster.peers") && e.0.contains("cluster.peer_service"),
            "{e}"
        );

        let c = RouterConfig::from_yaml(
            "allow_insecure_connections: true\ndiscovery: { routes_file: r.yaml }\ncluster: { peer_service: { namespace: azureml, name: peers } }\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.0.contains("discovery.kube"), "{e}");

        let c = RouterConfig::from_yaml(
            "allow_insecure_connections: true\ndiscovery: { routes_file: r.yaml }\ncluster: { peers: [\"127.0.0.1:9190\"], fallback: reject }\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.unwrap().fallback, FallbackMode::Reject);

        let e = RouterConfig::from_yaml("cluster: { fallback: sometimes }\n").unwrap_err();
        assert!(e.0.contains("cluster.fallback"), "{e}");
    }
}

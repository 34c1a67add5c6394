//! Logs and metrics: the metric names, pre-registered per-deployment handles, the access log,
//! and the tracing subscriber.
//!
//! Every router instance owns its own Prometheus recorder, so handles are registered once (at
//! table build) and the request path only does atomic adds. Labels are bounded: endpoint and
//! deployment names come from configuration, status codes from a small set; never pod IPs, paths
//! or names a client typed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::Mutex;

use crate::admission::AdmissionStats;

/// Metric names, in one place.
pub mod names {
    /// Requests answered, by endpoint, deployment and status code.
    pub const REQUESTS: &str = "scoregate_requests_total";
    /// Time from request arrival to response headers, in seconds.
    pub const REQUEST_DURATION: &str = "scoregate_request_duration_seconds";
    /// Time from sending to the pod to its response headers, in seconds.
    pub const UPSTREAM_DURATION: &str = "scoregate_upstream_duration_seconds";
    /// Time spent waiting in a deployment's queue, in seconds.
    pub const QUEUE_WAIT: &str = "scoregate_queue_wait_seconds";
    /// Requests on pods now, by endpoint and deployment.
    pub const IN_FLIGHT: &str = "scoregate_in_flight_requests";
    /// Requests waiting in a deployment's queue now.
    pub const QUEUE_DEPTH: &str = "scoregate_queue_depth";
    /// Pods that get new requests now.
    pub const ROUTABLE_PODS: &str = "scoregate_routable_pods";
    /// Pods with at least one request in flight now.
    pub const BUSY_PODS: &str = "scoregate_busy_pods";
    /// Failed connection attempts to pods.
    pub const UPSTREAM_CONNECT_ERRORS: &str = "scoregate_upstream_connect_errors_total";
    /// Mirrored copies, by outcome (`sent`, `skipped`, `dropped`, `failed`).
    pub const MIRROR_REQUESTS: &str = "scoregate_mirror_requests_total";
    /// Routing-table loads by source and result (`applied`, `refused`).
    pub const TABLE_RELOADS: &str = "scoregate_table_reloads_total";
    /// Endpoints in the routing table now.
    pub const TABLE_ENDPOINTS: &str = "scoregate_table_endpoints";
    /// Client connections open now, by listener.
    pub const OPEN_CONNECTIONS: &str = "scoregate_open_connections";
    /// Certificate loads by result (`applied`, `refused`).
    pub const TLS_RELOADS: &str = "scoregate_tls_certificate_reloads_total";
    /// Days until the served certificate expires (negative once expired).
    pub const TLS_EXPIRY_DAYS: &str = "scoregate_tls_certificate_expiry_days";
    /// TLS handshakes whose server name was not `sslCname` (served anyway).
    pub const TLS_SNI_MISMATCHES: &str = "scoregate_tls_sni_mismatches_total";
    /// TLS handshakes that failed or timed out.
    pub const TLS_HANDSHAKE_ERRORS: &str = "scoregate_tls_handshake_errors_total";
    /// Time from asking the deployment's owner replica for a slot to having it (queue wait at
    /// the owner included); the cluster's other metrics are named in `cluster::metrics`.
    pub const CLUSTER_GRANT_DURATION: &str = "scoregate_cluster_grant_duration_seconds";
}

/// Histogram buckets for durations, in seconds: 100 µs to 300 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets for remote grant latency, in seconds: 25 µs steps up to 300 µs, then coarser.
const GRANT_BUCKETS: &[f64] = &[
    0.000025, 0.00005, 0.000075, 0.0001, 0.000125, 0.00015, 0.000175, 0.0002, 0.00025, 0.0003,
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0,
];

/// A router's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Run before every render: gauges computed from live state.
    at_scrape: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A new, empty registry.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(names::CLUSTER_GRANT_DURATION.into()),
                GRANT_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        Metrics {
            inner: Arc::new(MetricsInner {
                recorder,
                handle,
                at_scrape: Mutex::new(Vec::new()),
            }),
        }
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }

    fn metadata() -> Metadata<'static> {
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
    }

    /// A counter handle.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.inner
            .recorder
            .register_counter(&Self::key(name, labels), &Self::metadata())
    }

    /// A gauge handle.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&Self::key(name, labels), &Self::metadata())
    }

    /// A histogram handle.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.inner
            .recorder
            .register_histogram(&Self::key(name, labels), &Self::metadata())
    }

    /// Runs `refresh` before every render, for a gauge whose value is computed from live state
    /// (it must not hold what owns this registry, or neither is ever freed).
    pub fn refresh_at_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.inner.at_scrape.lock().push(Box::new(refresh));
    }

    /// The Prometheus text exposition, gauges computed at scrape time refreshed first.
    pub fn render(&self) -> String {
        for refresh in self.inner.at_scrape.lock().iter() {
            refresh();
        }
        self.inner.handle.render()
    }

    /// Folds recorded histogram samples into buckets; run periodically so memory stays flat
    /// between scrapes.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }
}

/// Status codes that get a lock-free counter; others share a small locked map.
const COMMON_CODES: [u16; 20] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 413, 415, 422, 429, 431, 500, 502, 503, 504,
    424,
];

/// `scoregate_requests_total` counters for one (endpoint, deployment) pair, one per status code.
pub struct StatusCounters {
    metrics: Metrics,
    endpoint: Arc<str>,
    deployment: Arc<str>,
    common: [OnceLock<Counter>; COMMON_CODES.len()],
    other: Mutex<HashMap<u16, Counter>>,
}

impl StatusCounters {
    /// Counters labelled with `endpoint` and `deployment` (empty when not known).
    pub fn new(metrics: &Metrics, endpoint: &str, deployment: &str) -> Self {
        StatusCounters {
            metrics: metrics.clone(),
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            common: Default::default(),
            other: Mutex::new(HashMap::new()),
        }
    }

    fn register(&self, code: u16) -> Counter {
        self.metrics.counter(
            names::REQUESTS,
            &[
                ("endpoint", &self.endpoint),
                ("deployment", &self.deployment),
                ("code", itoa::Buffer::new().format(code)),
            ],
        )
    }

    /// Counts one response with `code`.
    pub fn record(&self, code: u16) {
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => self.common[i]
                .get_or_init(|| self.register(code))
                .increment(1),
            None => self
                .other
                .lock()
                .entry(code)
                .or_insert_with(|| self.register(code))
                .increment(1),
        }
    }
}

/// Handles for one deployment. The gauges are registered at once (they are set at scrape time
/// and say how many pods are routable); the histograms and the error and mirror counters are
/// registered on first use, so a router with thousands of idle deployments does not export
/// hundreds of thousands of empty series (1,000 endpoints × 3 deployments: 19.7 MB → 0.8 MB
/// per scrape). After the first use each costs one atomic load.
pub struct DeploymentMetrics {
    /// Responses by status code.
    pub requests: StatusCounters,
    metrics: Metrics,
    endpoint: Arc<str>,
    deployment: Arc<str>,
    duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    queue_wait: OnceLock<Histogram>,
    connect_errors: OnceLock<Counter>,
    mirror: [OnceLock<Counter>; MIRROR_RESULTS.len()],
    in_flight: Gauge,
    queue_depth: Gauge,
    routable_pods: Gauge,
    busy_pods: Gauge,
}

/// The `result` label values of `scoregate_mirror_requests_total`.
const MIRROR_RESULTS: [&str; 4] = ["sent", "skipped", "dropped", "failed"];

/// What became of a mirror copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorResult {
    /// Sent, and the mirror pod answered.
    Sent = 0,
    /// Not sent: the body was over the mirror cap or not fully received.
    Skipped = 1,
    /// Dropped: the mirror deployment had no free slot in time.
    Dropped = 2,
    /// Failed at the pod.
    Failed = 3,
}

impl DeploymentMetrics {
    /// Handles of deployment `deployment` of `endpoint`.
    pub fn new(metrics: &Metrics, endpoint: &str, deployment: &str) -> Self {
        let labels = [("endpoint", endpoint), ("deployment", deployment)];
        DeploymentMetrics {
            requests: StatusCounters::new(metrics, endpoint, deployment),
            metrics: metrics.clone(),
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            queue_wait: OnceLock::new(),
            connect_errors: OnceLock::new(),
            mirror: Default::default(),
            in_flight: metrics.gauge(names::IN_FLIGHT, &labels),
            queue_depth: metrics.gauge(names::QUEUE_DEPTH, &labels),
            routable_pods: metrics.gauge(names::ROUTABLE_PODS, &labels),
            busy_pods: metrics.gauge(names::BUSY_PODS, &labels),
        }
    }

    fn histogram<'a>(&'a self, cell: &'a OnceLock<Histogram>, name: &'static str) -> &'a Histogram {
        cell.get_or_init(|| {
            self.metrics.histogram(
                name,
                &[
                    ("endpoint", &self.endpoint),
                    ("deployment", &self.deployment),
                ],
            )
        })
    }

    /// Arrival to response headers, in seconds.
    pub fn duration(&self) -> &Histogram {
        self.histogram(&self.duration, names::REQUEST_DURATION)
    }

    /// Send to response headers, in seconds.
    pub fn upstream_duration(&self) -> &Histogram {
        self.histogram(&self.upstream_duration, names::UPSTREAM_DURATION)
    }

    /// Time in the queue, in seconds.
    pub fn queue_wait(&self) -> &Histogram {
        self.histogram(&self.queue_wait, names::QUEUE_WAIT)
    }

    /// Failed connects to pods.
    pub fn connect_errors(&self) -> &Counter {
        self.connect_errors.get_or_init(|| {
            self.metrics.counter(
                names::UPSTREAM_CONNECT_ERRORS,
                &[
                    ("endpoint", &self.endpoint),
                    ("deployment", &self.deployment),
                ],
            )
        })
    }

    /// Counts one mirror copy with its result.
    pub fn mirror(&self, result: MirrorResult) {
        let i = result as usize;
        self.mirror[i]
            .get_or_init(|| {
                self.metrics.counter(
                    names::MIRROR_REQUESTS,
                    &[
                        ("endpoint", &self.endpoint),
                        ("deployment", &self.deployment),
                        ("result", MIRROR_RESULTS[i]),
                    ],
                )
            })
            .increment(1);
    }

    /// Sets the gauges from live admission counts (done at scrape time, not per request).
    pub fn set_admission(&self, stats: AdmissionStats) {
        self.in_flight.set(f64::from(stats.in_flight));
        self.queue_depth.set(f64::from(stats.queued));
        self.routable_pods.set(f64::from(stats.pods));
        self.busy_pods.set(f64::from(stats.busy_pods));
    }
}

impl Drop for DeploymentMetrics {
    /// A deployment that left the routing table stops reporting pods and requests: its gauges
    /// read 0 (the exporter keeps a series until restart). Every scrape sets the gauges of the
    /// deployments in the table before rendering, so one that comes back reports again.
    fn drop(&mut self) {
        self.set_admission(AdmissionStats::default());
    }
}

/// Which requests get an access-log line.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    /// Every request.
    #[default]
    On,
    /// No request.
    Off,
    /// Only responses with status 400 and above.
    Errors,
}

impl AccessLogMode {
    /// The spelling used in files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogMode::On => "on",
            AccessLogMode::Off => "off",
            AccessLogMode::Errors => "errors",
        }
    }
}

const MODE_ON: u8 = 0;
const MODE_OFF: u8 = 1;
const MODE_ERRORS: u8 = 2;

/// The access-log policy: a mode and a sampling rate for successful requests.
#[derive(Debug)]
pub struct AccessLog {
    mode: AtomicU8,
    sample_one_in: AtomicU32,
}

impl AccessLog {
    /// Logs per `mode`, keeping one in `sample_one_in` successful requests (errors always).
    pub fn new(mode: AccessLogMode, sample_one_in: u32) -> Self {
        let mode = match mode {
            AccessLogMode::On => MODE_ON,
            AccessLogMode::Off => MODE_OFF,
            AccessLogMode::Errors => MODE_ERRORS,
        };
        AccessLog {
            mode: AtomicU8::new(mode),
            sample_one_in: AtomicU32::new(sample_one_in.max(1)),
        }
    }

    /// Whether a response with `status` is logged.
    pub fn wants(&self, status: u16) -> bool {
        match self.mode.load(Ordering::Relaxed) {
            MODE_OFF => false,
            MODE_ERRORS => status >= 400,
            _ => {
                if status >= 400 {
                    return true;
                }
                let n = self.sample_one_in.load(Ordering::Relaxed);
                n <= 1 || fastrand::u32(..n) == 0
            }
        }
    }
}

/// What the access log says about one routed request, filled in along the way and written when
/// the response body ends (or the client goes away).
pub struct RequestRecord {
    /// When the request arrived.
    pub started: Instant,
    /// The request id sent to the pod and the client.
    pub request_id: http::HeaderValue,
    /// Request method.
    pub method: http::Method,
    /// Path and query as the client sent them.
    pub path: Option<http::uri::PathAndQuery>,
    /// Endpoint name.
    pub endpoint: Arc<str>,
    /// Deployment that served.
    pub deployment: Arc<str>,
    /// Pod that served.
    pub pod: SocketAddr,
    /// Response status.
    pub status: u16,
    /// Time waiting for a slot.
    pub queue_wait: Duration,
    /// Time from send to response headers.
    pub upstream: Duration,
    /// The client's address.
    pub client: SocketAddr,
}

impl RequestRecord {
    /// Writes the access-log line: `complete` says whether the body reached its end.
    pub fn finish(self, response_bytes: u64, complete: bool) {
        tracing::info!(
            target: "scoregate::access",
            request_id = self.request_id.to_str().unwrap_or(""),
            client = %self.client,
            method = %self.method,
            path = self.path.as_ref().map_or("", |p| p.as_str()),
            endpoint = &*self.endpoint,
            deployment = &*self.deployment,
            pod = %self.pod,
            status = self.status,
            queue_ms = ms(self.queue_wait),
            upstream_ms = ms(self.upstream),
            total_ms = ms(self.started.elapsed()),
            response_bytes,
            complete,
        );
    }
}

/// Milliseconds with microsecond precision, for log fields.
pub fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Log output format.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber, writing through a background thread so a slow
/// terminal never slows requests. Keep the returned guard alive until exit: dropping it flushes.
/// `RUST_LOG` overrides the default filter (`info`).
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters_render_with_bounded_labels() {
        let m = Metrics::new();
        let c = StatusCounters::new(&m, "ep-one", "blue");
        c.record(200);
        c.record(200);
        c.record(418);
        let text = m.render();
        assert!(
            text.contains(
                r#"scoregate_requests_total{endpoint="ep-one",deployment="blue",code="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"scoregate_requests_total{endpoint="ep-one",deployment="blue",code="418"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_dropped_deployment_reports_zero_pods() {
        let m = Metrics::new();
        let d = DeploymentMetrics::new(&m, "ep-one", "blue");
        d.set_admission(AdmissionStats {
            pods: 3,
            busy_pods: 1,
            in_flight: 2,
            queued: 1,
        });
        let series = r#"scoregate_routable_pods{endpoint="ep-one",deployment="blue"}"#;
        assert!(m.render().contains(&format!("{series} 3")));
        drop(d);
        let text = m.render();
        assert!(text.contains(&format!("{series} 0")), "{text}");
        assert!(
            text.contains(r#"scoregate_in_flight_requests{endpoint="ep-one",deployment="blue"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn access_log_modes() {
        assert!(AccessLog::new(AccessLogMode::On, 1).wants(200));
        assert!(!AccessLog::new(AccessLogMode::Off, 1).wants(500));
        let errors = AccessLog::new(AccessLogMode::Errors, 1);
        assert!(!errors.wants(200) && errors.wants(404));
        let sampled = AccessLog::new(AccessLogMode::On, 1_000_000);
        assert!(sampled.wants(503));
        assert!((0..100).filter(|_| sampled.wants(200)).count() < 5);
    }
}

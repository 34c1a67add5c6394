//! Logs and metrics: the metric names and their catalog, pre-registered per-deployment
//! handles, the access log, process metrics and the tracing subscriber.
//!
//! Every router instance owns its own Prometheus recorder, so handles are registered once (at
//! table build) and the request path only does atomic adds. Every metric is described in
//! [`catalog`] (its `# HELP` line, and the README's table). Labels are bounded: endpoint and
//! deployment names come from configuration, status and error codes from small sets; never pod
//! IPs, paths or names a client typed.
//!
//! | module | concern |
//! |---|---|
//! | [`catalog`] | every metric: name, type, labels, meaning |
//! | [`handles`] | per-deployment handles, and requests counted by status and source |
//! | [`access`] | the access-log policy and line |
//! | [`logging`] | the subscriber: formats, colours, library logs throttled |
//! | [`process`] | `process_*` metrics and `scoregate_build_info` |

pub mod access;
pub mod catalog;
pub mod handles;
pub mod logging;
pub mod process;
pub mod stream;

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::Mutex;

pub use access::{ms, AccessLog, AccessLogMode, RequestRecord};
pub use handles::{
    AbandonOutcome, DeploymentMetrics, MirrorResult, ScrapeOutcome, Source, StatusCounters,
};
pub use logging::{init_logging, LogFormat};

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
    /// Requests sent again to another pod after connecting to the first one failed.
    pub const UPSTREAM_RETRIES: &str = "scoregate_upstream_retries_total";
    /// Request bodies of a declared length, in bytes.
    pub const REQUEST_SIZE: &str = "scoregate_request_size_bytes";
    /// Response bodies streamed from pods, in bytes.
    pub const RESPONSE_SIZE: &str = "scoregate_response_size_bytes";
    /// Streamed responses: arrival to the body's first byte (time to first token), seconds.
    pub const RESPONSE_FIRST_BYTE: &str = "scoregate_response_first_byte_seconds";
    /// Streamed responses: time between two chunks of a body, seconds.
    pub const RESPONSE_CHUNK_GAP: &str = "scoregate_response_chunk_gap_seconds";
    /// Streamed responses: chunks per body.
    pub const RESPONSE_CHUNKS: &str = "scoregate_response_chunks";
    /// 1, labelled with the version and the git revision of the build.
    pub const BUILD_INFO: &str = "scoregate_build_info";
    /// Writes of `status.conditions`, by kind and result.
    pub const STATUS_WRITES: &str = "scoregate_status_writes_total";
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
    /// Requests the router gave up on while their pod was busy, by how their slot was freed.
    pub const ABANDONED_REQUESTS: &str = "scoregate_abandoned_requests_total";
    /// Time an abandoned request kept its slot after the router gave up on it, in seconds.
    pub const ABANDONED_HOLD: &str = "scoregate_abandoned_slot_hold_seconds";
    /// Pods taken out of the rotation by passive outlier detection.
    pub const POD_EJECTIONS: &str = "scoregate_pod_ejections_total";
    /// Scrapes of pods' own metrics (routing `podMetrics`), by outcome.
    pub const POD_SCRAPES: &str = "scoregate_pod_scrapes_total";
    /// Pods out of the rotation now (ejected by outlier detection).
    pub const EJECTED_PODS: &str = "scoregate_ejected_pods";
    /// Client connections closed because the client accepted no response bytes for the send
    /// timeout (a stalled socket, or an HTTP/2 stream stalled by flow control).
    pub const CLIENT_SEND_TIMEOUTS: &str = "scoregate_client_send_timeouts_total";
    /// HTTP/2 connections closed with GOAWAY `ENHANCE_YOUR_CALM` for abandoning accepted
    /// streams faster than allowed.
    pub const H2_RESET_FLOODS: &str = "scoregate_h2_reset_floods_total";
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

/// Buckets for body sizes, in bytes: 256 B to 100 MiB (the default body limit), ×4 apart.
const SIZE_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    104857600.0,
];

/// Buckets for chunks per streamed response: 1 to 10,000.
const CHUNK_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// A router's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: process::ProcessMetrics,
    /// Run before every render: gauges computed from live state.
    at_scrape: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A new registry: every metric described (`# HELP`), the build info set.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(names::CLUSTER_GRANT_DURATION.into()),
                GRANT_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(Matcher::Suffix("_size_bytes".into()), SIZE_BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(Matcher::Full(names::RESPONSE_CHUNKS.into()), CHUNK_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        catalog::describe(&recorder);
        let handle = recorder.handle();
        let metrics = Metrics {
            inner: Arc::new(MetricsInner {
                recorder,
                handle,
                process: process::ProcessMetrics::default(),
                at_scrape: Mutex::new(Vec::new()),
            }),
        };
        process::set_build_info(&metrics);
        metrics
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

    /// The Prometheus text exposition: gauges computed at scrape time and the process's own
    /// metrics refreshed first.
    pub fn render(&self) -> String {
        for refresh in self.inner.at_scrape.lock().iter() {
            refresh();
        }
        metrics::with_local_recorder(&self.inner.recorder, || self.inner.process.collect());
        self.inner.handle.render()
    }

    /// Folds recorded histogram samples into buckets; run periodically so memory stays flat
    /// between scrapes.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }
}

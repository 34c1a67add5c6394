//! One span per request, exported over OTLP/HTTP (protobuf) when `tracing.otlp_endpoint` is set;
//! off by default, and then nothing here runs.
//!
//! Each request becomes a server span (`POST /api/v1/endpoint/{endpoint}/…`, from arrival to the
//! end of the response body) with two children: `queue` (arrival to the slot) and `upstream`
//! (sending to the pod's response head; the pod's `traceparent` names this span as its parent).
//! Spans are built as the OpenTelemetry SDK's `SpanData`, encoded by `opentelemetry-proto`, and
//! sent in batches (up to 512 spans or every second) by one task over the router's own HTTP/1.1
//! client, so the request path only hands a span to a bounded channel. A full channel or a
//! collector that is away drops spans (counted and logged once a minute), never requests.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message as _;
use tokio::sync::mpsc;

use super::{new_span_id, TraceContext};

/// Spans waiting to be sent at most; more are dropped.
const QUEUE: usize = 8_192;
/// Spans per export request at most.
const BATCH: usize = 512;
/// A batch leaves at the latest this long after its first span.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Time an export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how spans are exported.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`.
    pub endpoint: Uri,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Share of new traces (requests without a `traceparent`) that are sampled, 0 to 1; a
    /// client's `traceparent` decides for its requests.
    pub sample_ratio: f64,
}

/// What the router knows of one request when it ends, for its spans.
#[derive(Clone, Debug)]
pub struct RequestSpans {
    /// Its trace.
    pub trace: TraceContext,
    /// The span id the pod got as its parent (the `upstream` span), when one was sent.
    pub upstream_span: Option<[u8; 8]>,
    /// Method and path, for the span's name and attributes.
    pub method: String,
    /// The path the client asked for.
    pub path: String,
    /// Endpoint and deployment names.
    pub endpoint: String,
    /// The deployment chosen (`""` before one was).
    pub deployment: String,
    /// The pod, when one was chosen.
    pub pod: Option<String>,
    /// Status answered, and the router's error code for its own answers.
    pub status: u16,
    /// The router's `error.code`, for its own answers.
    pub error: Option<&'static str>,
    /// How long ago the request arrived.
    pub elapsed: Duration,
    /// Time from arrival to the slot, when it got one.
    pub queue_wait: Option<Duration>,
    /// Time from sending to the pod to its response head.
    pub upstream: Option<Duration>,
}

/// The exporter: a channel to the batching task.
pub struct Exporter {
    tx: mpsc::Sender<SpanData>,
    sample_ratio: f64,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the batching task (on the current tokio runtime).
    pub fn start(settings: ExportSettings) -> Arc<Exporter> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(send_batches(rx, settings.clone(), dropped.clone()));
        Arc::new(Exporter {
            tx,
            sample_ratio: settings.sample_ratio.clamp(0.0, 1.0),
            dropped,
        })
    }

    /// Whether a new trace is sampled.
    pub fn sample_new(&self) -> bool {
        self.sample_ratio >= 1.0 || fastrand::f64() < self.sample_ratio
    }

    /// Spans dropped so far (queue full, collector away).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands the spans of `request` to the batching task, if its trace is sampled.
    pub fn record(&self, request: &RequestSpans) {
        if !request.trace.sampled() {
            return;
        }
        for span in spans_of(request, SystemTime::now()) {
            if self.tx.try_send(span).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn span_context(trace: &TraceContext, span: [u8; 8]) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(span),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    )
}

fn span(
    request: &RequestSpans,
    (id, parent): ([u8; 8], [u8; 8]),
    kind: SpanKind,
    name: Cow<'static, str>,
    (start, end): (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
) -> SpanData {
    let mut data = SpanData {
        span_context: span_context(&request.trace, id),
        parent_span_id: SpanId::from_bytes(parent),
        span_kind: kind,
        name,
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("scoregate").build(),
    };
    if request.error.is_some() || request.status >= 500 {
        data.status = Status::error(request.error.unwrap_or(""));
    }
    data
}

/// The server span and its `queue` and `upstream` children, ending at `end`.
fn spans_of(request: &RequestSpans, end: SystemTime) -> Vec<SpanData> {
    let start = end.checked_sub(request.elapsed).unwrap_or(end);
    let server = new_span_id();
    let parent = request.trace.parent.unwrap_or([0; 8]);
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.method.clone()),
        KeyValue::new("url.path", request.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(request.status)),
        KeyValue::new("scoregate.endpoint", request.endpoint.clone()),
        KeyValue::new("scoregate.deployment", request.deployment.clone()),
    ];
    if let Some(error) = request.error {
        attributes.push(KeyValue::new("error.type", error));
    }
    let name = format!("{} {}", request.method, request.path);
    let mut spans = vec![span(
        request,
        (server, parent),
        SpanKind::Server,
        name.into(),
        (start, end),
        attributes,
    )];
    if let Some(queue) = request.queue_wait {
        let window = (start, start + queue);
        spans.push(span(
            request,
            (new_span_id(), server),
            SpanKind::Internal,
            "queue".into(),
            window,
            Vec::new(),
        ));
    }
    if let (Some(upstream), Some(id)) = (request.upstream, request.upstream_span) {
        let sent = start + request.queue_wait.unwrap_or_default();
        let mut attributes = Vec::new();
        if let Some(pod) = &request.pod {
            attributes.push(KeyValue::new("server.address", pod.clone()));
        }
        spans.push(span(
            request,
            (id, server),
            SpanKind::Client,
            "upstream".into(),
            (sent, sent + upstream),
            attributes,
        ));
    }
    spans
}

/// Collects spans into batches and posts each to the collector.
async fn send_batches(
    mut rx: mpsc::Receiver<SpanData>,
    settings: ExportSettings,
    dropped: Arc<AtomicU64>,
) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .build();
    let resource = ResourceAttributesWithSchema::from(&resource);
    let mut last_complaint: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let body = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &resource),
        }
        .encode_to_vec();
        let request = Request::post(settings.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("a POST with a valid URI");
        let outcome = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await;
        let failure = match outcome {
            Ok(Ok(response)) if response.status().is_success() => None,
            Ok(Ok(response)) => Some(format!("the collector answered {}", response.status())),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
        };
        if let Some(failure) = failure {
            dropped.fetch_add(count, Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            if last_complaint.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
                last_complaint = Some(now);
                tracing::warn!(endpoint = %settings.endpoint, %failure, dropped = dropped.load(Ordering::Relaxed), "cannot export spans to the OTLP collector; spans are dropped meanwhile");
            }
        }
    }
}

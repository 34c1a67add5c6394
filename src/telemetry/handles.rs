//! Handles for the request path: a deployment's counters, histograms and gauges, and requests
//! counted by status code and by who answered ([`Source`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;

use super::{names, Metrics};
use crate::admission::AdmissionStats;

/// Status codes of model answers that get a lock-free counter; others share a small locked map.
const COMMON_CODES: [u16; 20] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 413, 415, 422, 429, 431, 500, 502, 503, 504,
    424,
];

/// Router error codes with a lock-free counter per (endpoint, deployment): more than the router
/// has, so the locked map below is a backstop that is never used.
const ROUTER_SLOTS: usize = 32;

/// Who made an answer: the `source` and `error` labels of `scoregate_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The model pod answered; its status passed through (`source="model"`, `error=""`).
    Model,
    /// The router answered by itself, with this `error.code` (`source="router"`).
    Router(&'static str),
}

/// `scoregate_requests_total` counters for one (endpoint, deployment) pair: one per status code
/// of model answers, one per error code of router answers.
pub struct StatusCounters {
    metrics: Metrics,
    endpoint: Arc<str>,
    deployment: Arc<str>,
    common: [OnceLock<Counter>; COMMON_CODES.len()],
    router: [OnceLock<(&'static str, u16, Counter)>; ROUTER_SLOTS],
    other: Mutex<HashMap<(u16, &'static str), Counter>>,
}

impl StatusCounters {
    /// Counters labelled with `endpoint` and `deployment` (empty when not known).
    pub fn new(metrics: &Metrics, endpoint: &str, deployment: &str) -> Self {
        StatusCounters {
            metrics: metrics.clone(),
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            common: Default::default(),
            router: std::array::from_fn(|_| OnceLock::new()),
            other: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint these counters are for (`""` for requests no endpoint was found for).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn register(&self, code: u16, source: Source) -> Counter {
        let (source, error) = match source {
            Source::Model => ("model", ""),
            Source::Router(error) => ("router", error),
        };
        self.metrics.counter(
            names::REQUESTS,
            &[
                ("endpoint", &self.endpoint),
                ("deployment", &self.deployment),
                ("code", itoa::Buffer::new().format(code)),
                ("source", source),
                ("error", error),
            ],
        )
    }

    /// Counts one answer with status `code` made by `source`.
    pub fn record(&self, code: u16, source: Source) {
        match source {
            Source::Model => match COMMON_CODES.iter().position(|c| *c == code) {
                Some(i) => self.common[i]
                    .get_or_init(|| self.register(code, source))
                    .increment(1),
                None => self.other_counter(code, ""),
            },
            Source::Router(error) => self.router_counter(code, error),
        }
    }

    /// A router answer: the slot already holding (`error`, `code`), else the first free one
    /// (taken without a lock; a slot another thread filled with another code is passed by).
    fn router_counter(&self, code: u16, error: &'static str) {
        for slot in &self.router {
            let (held, held_code, counter) =
                slot.get_or_init(|| (error, code, self.register(code, Source::Router(error))));
            if *held == error && *held_code == code {
                counter.increment(1);
                return;
            }
        }
        self.other_counter(code, error);
    }

    fn other_counter(&self, code: u16, error: &'static str) {
        let source = match error {
            "" => Source::Model,
            error => Source::Router(error),
        };
        self.other
            .lock()
            .entry((code, error))
            .or_insert_with(|| self.register(code, source))
            .increment(1);
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
    request_size: OnceLock<Histogram>,
    response_size: OnceLock<Histogram>,
    first_byte: OnceLock<Histogram>,
    chunk_gap: OnceLock<Histogram>,
    chunks: OnceLock<Histogram>,
    connect_errors: OnceLock<Counter>,
    retries: OnceLock<Counter>,
    mirror: [OnceLock<Counter>; MIRROR_RESULTS.len()],
    abandoned: [OnceLock<Counter>; ABANDON_OUTCOMES.len()],
    abandoned_hold: OnceLock<Histogram>,
    ejections: OnceLock<Counter>,
    scrapes: [OnceLock<Counter>; SCRAPE_OUTCOMES.len()],
    ejected_pods: OnceLock<Gauge>,
    in_flight: Gauge,
    queue_depth: Gauge,
    routable_pods: Gauge,
    busy_pods: Gauge,
}

/// The `result` label values of `scoregate_mirror_requests_total`.
const MIRROR_RESULTS: [&str; 4] = ["sent", "skipped", "dropped", "failed"];

/// The `outcome` label values of `scoregate_abandoned_requests_total`.
const ABANDON_OUTCOMES: [&str; 3] = ["drained", "closed", "failed"];

/// The `outcome` label values of `scoregate_pod_scrapes_total`.
const SCRAPE_OUTCOMES: [&str; 3] = ["ok", "failed", "timeout"];

/// How one scrape of a pod's own metrics went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScrapeOutcome {
    /// The page was read and had the load metrics.
    Ok = 0,
    /// The pod refused, answered an error, or its page had none of the metrics.
    Failed = 1,
    /// The pod did not answer in time.
    Timeout = 2,
}

/// How the slot of a request the router gave up on was freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbandonOutcome {
    /// The pod's answer was read to its end and discarded: the pod was done.
    Drained = 0,
    /// The router closed the pod connection and held the slot to its bound.
    Closed = 1,
    /// The pod broke or closed the connection: it was done.
    Failed = 2,
}

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
            request_size: OnceLock::new(),
            response_size: OnceLock::new(),
            first_byte: OnceLock::new(),
            chunk_gap: OnceLock::new(),
            chunks: OnceLock::new(),
            connect_errors: OnceLock::new(),
            retries: OnceLock::new(),
            mirror: Default::default(),
            abandoned: Default::default(),
            abandoned_hold: OnceLock::new(),
            ejections: OnceLock::new(),
            scrapes: Default::default(),
            ejected_pods: OnceLock::new(),
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

    /// A request body's declared length, in bytes.
    pub fn request_size(&self) -> &Histogram {
        self.histogram(&self.request_size, names::REQUEST_SIZE)
    }

    /// A response body's length as streamed to the client, in bytes.
    pub fn response_size(&self) -> &Histogram {
        self.histogram(&self.response_size, names::RESPONSE_SIZE)
    }

    /// A streamed response's time from the request's arrival to its body's first byte, in
    /// seconds.
    pub fn first_byte(&self) -> &Histogram {
        self.histogram(&self.first_byte, names::RESPONSE_FIRST_BYTE)
    }

    /// The time between two chunks of a streamed response, in seconds.
    pub fn chunk_gap(&self) -> &Histogram {
        self.histogram(&self.chunk_gap, names::RESPONSE_CHUNK_GAP)
    }

    /// Chunks of a streamed response.
    pub fn chunks(&self) -> &Histogram {
        self.histogram(&self.chunks, names::RESPONSE_CHUNKS)
    }

    /// Failed connects to pods.
    pub fn connect_errors(&self) -> &Counter {
        self.counter(&self.connect_errors, names::UPSTREAM_CONNECT_ERRORS)
    }

    /// Requests sent again to another pod.
    pub fn retries(&self) -> &Counter {
        self.counter(&self.retries, names::UPSTREAM_RETRIES)
    }

    fn counter<'a>(&'a self, cell: &'a OnceLock<Counter>, name: &'static str) -> &'a Counter {
        self.labelled_counter(cell, name, None)
    }

    /// A counter with the deployment's labels and `extra`, registered on first use.
    fn labelled_counter<'a>(
        &'a self,
        cell: &'a OnceLock<Counter>,
        name: &'static str,
        extra: Option<(&'static str, &str)>,
    ) -> &'a Counter {
        cell.get_or_init(|| {
            let mut labels = vec![
                ("endpoint", &*self.endpoint),
                ("deployment", &*self.deployment),
            ];
            labels.extend(extra);
            self.metrics.counter(name, &labels)
        })
    }

    /// The endpoint's name, as the labels carry it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The deployment's name, as the labels carry it.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// Counts one mirror copy with its result.
    pub fn mirror(&self, result: MirrorResult) {
        let i = result as usize;
        let label = Some(("result", MIRROR_RESULTS[i]));
        self.labelled_counter(&self.mirror[i], names::MIRROR_REQUESTS, label)
            .increment(1);
    }

    /// Counts one request the router gave up on while its pod was busy, and how long its slot
    /// stayed taken after that.
    pub fn abandoned(&self, outcome: AbandonOutcome, hold: Duration) {
        let i = outcome as usize;
        let label = Some(("outcome", ABANDON_OUTCOMES[i]));
        self.labelled_counter(&self.abandoned[i], names::ABANDONED_REQUESTS, label)
            .increment(1);
        self.histogram(&self.abandoned_hold, names::ABANDONED_HOLD)
            .record(hold.as_secs_f64());
    }

    /// Counts one pod taken out of the rotation by outlier detection.
    pub fn ejection(&self) {
        self.counter(&self.ejections, names::POD_EJECTIONS)
            .increment(1);
    }

    /// Counts one scrape of a pod's own metrics.
    pub fn pod_scrape(&self, outcome: ScrapeOutcome) {
        let i = outcome as usize;
        let label = Some(("outcome", SCRAPE_OUTCOMES[i]));
        self.labelled_counter(&self.scrapes[i], names::POD_SCRAPES, label)
            .increment(1);
    }

    /// Sets the gauges from live admission counts (done at scrape time, not per request).
    pub fn set_admission(&self, stats: AdmissionStats) {
        self.in_flight.set(f64::from(stats.in_flight));
        self.queue_depth.set(f64::from(stats.queued));
        self.routable_pods.set(f64::from(stats.pods));
        self.busy_pods.set(f64::from(stats.busy_pods));
        // Registered with the first ejection: most deployments never have one.
        if stats.ejected > 0 || self.ejected_pods.get().is_some() {
            let labels = [
                ("endpoint", &*self.endpoint),
                ("deployment", &*self.deployment),
            ];
            self.ejected_pods
                .get_or_init(|| self.metrics.gauge(names::EJECTED_PODS, &labels))
                .set(f64::from(stats.ejected));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters_render_with_bounded_labels() {
        let m = Metrics::new();
        let c = StatusCounters::new(&m, "ep-one", "blue");
        c.record(200, Source::Model);
        c.record(200, Source::Model);
        c.record(418, Source::Model);
        c.record(503, Source::Router("QueueTimeout"));
        c.record(503, Source::Router("NoReadyPod"));
        c.record(503, Source::Router("QueueTimeout"));
        let text = m.render();
        assert!(
            text.contains(
                r#"scoregate_requests_total{endpoint="ep-one",deployment="blue",code="200",source="model",error=""} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"scoregate_requests_total{endpoint="ep-one",deployment="blue",code="418",source="model",error=""} 1"#
            ),
            "{text}"
        );
        for (error, count) in [("QueueTimeout", 2), ("NoReadyPod", 1)] {
            let series = format!(
                r#"scoregate_requests_total{{endpoint="ep-one",deployment="blue",code="503",source="router",error="{error}"}} {count}"#
            );
            assert!(text.contains(&series), "{series} in {text}");
        }
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
            ejected: 0,
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
}

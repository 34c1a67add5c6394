//! Scraping of model pods' own Prometheus metrics, for deployments whose `routing.podMetrics`
//! is set: every interval, each pod's metrics page is fetched (bounded time and size), the
//! running and waiting requests and the KV-cache usage are read, and the deployment's
//! [`PodLoads`] is replaced with the new reports.
//!
//! Scraping never blocks routing: it runs in its own task, the request path only reads the last
//! published reports, a pod whose scrape fails keeps its previous report (which ages out, see
//! [`crate::picking::load`]), and a pod never scraped is weighed on the router's own count.
//! Every scrape is counted by outcome in `scoregate_pod_scrapes_total`.

pub mod text;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::{PodLoads, Report};
use crate::admission::Pod;
use crate::model::{MetricNames, PodMetricsSettings};
use crate::telemetry::{DeploymentMetrics, ScrapeOutcome};

/// Largest metrics page read.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Longest time one scrape may take.
const MAX_SCRAPE_TIME: Duration = Duration::from_secs(2);

/// The scrape client: plain HTTP/1, short connect timeout.
type ScrapeClient = Client<HttpConnector, Empty<Bytes>>;

/// One deployment's scraping: what to read, from which pods, into which board. Its task runs
/// while the plan is alive (the table holds it), and ends within one interval of its drop.
pub struct Plan {
    path: String,
    port: Option<u16>,
    interval: Duration,
    names: MetricNames,
    loads: Arc<PodLoads>,
    pods: ArcSwap<Box<[Arc<Pod>]>>,
    metrics: Arc<DeploymentMetrics>,
}

impl Plan {
    /// A plan for `settings`, publishing into `loads` and counting scrapes in `metrics`, with
    /// its task started when a Tokio runtime is running (table builds always run in one).
    pub fn start(
        settings: &PodMetricsSettings,
        loads: Arc<PodLoads>,
        metrics: Arc<DeploymentMetrics>,
    ) -> Arc<Self> {
        let plan = Arc::new(Plan {
            path: settings.path().to_owned(),
            port: settings.port,
            interval: Duration::from_millis(settings.interval_ms()),
            names: settings.names(),
            loads,
            pods: ArcSwap::from_pointee(Box::default()),
            metrics,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(Arc::downgrade(&plan)));
        }
        plan
    }

    /// Sets the pods to scrape (the table builder, when the deployment's pods change).
    pub fn set_pods(&self, pods: Box<[Arc<Pod>]>) {
        self.pods.store(Arc::new(pods));
    }

    fn uri(&self, address: SocketAddr) -> Option<Uri> {
        let address = SocketAddr::new(address.ip(), self.port.unwrap_or(address.port()));
        format!("http://{address}{}", self.path).parse().ok()
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("path", &self.path)
            .field("port", &self.port)
            .field("interval", &self.interval)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Scrapes a plan's pods every interval until the plan is dropped.
async fn run(plan: Weak<Plan>) {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(MAX_SCRAPE_TIME));
    http.set_nodelay(true);
    let client: ScrapeClient = Client::builder(TokioExecutor::new()).build(http);
    let Some(interval) = plan.upgrade().map(|p| p.interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(plan) = plan.upgrade() else {
            return;
        };
        round(&plan, &client).await;
    }
}

/// One round over a plan's pods: all scraped at once, the successes published over the
/// previous reports of pods still listed.
async fn round(plan: &Plan, client: &ScrapeClient) {
    let pods = plan.pods.load_full();
    let previous = plan.loads.reports();
    let scrapes = pods
        .iter()
        .map(|pod| scrape_one(plan, client, pod, previous.get(&pod.address())));
    let reports: HashMap<SocketAddr, Report> = futures_util::future::join_all(scrapes)
        .await
        .into_iter()
        .flatten()
        .collect();
    plan.loads.publish(reports);
}

/// One pod's report: a fresh one, or its `previous` one when the scrape fails (counted either
/// way).
async fn scrape_one(
    plan: &Plan,
    client: &ScrapeClient,
    pod: &Pod,
    previous: Option<&Report>,
) -> Option<(SocketAddr, Report)> {
    let ours = pod.in_flight();
    let timeout = plan.interval.min(MAX_SCRAPE_TIME);
    let result = tokio::time::timeout(timeout, scrape(plan, client, pod.address())).await;
    let (outcome, report) = match result {
        Ok(Ok(values)) => (ScrapeOutcome::Ok, Some(values.report(ours, previous))),
        Ok(Err(e)) => {
            tracing::debug!(pod = %pod.address(), error = %e, "pod metrics scrape failed");
            (ScrapeOutcome::Failed, previous.copied())
        }
        Err(_) => {
            tracing::debug!(pod = %pod.address(), "pod metrics scrape timed out");
            (ScrapeOutcome::Timeout, previous.copied())
        }
    };
    plan.metrics.pod_scrape(outcome);
    Some((pod.address(), report?))
}

/// Fetches and reads one pod's page.
async fn scrape(
    plan: &Plan,
    client: &ScrapeClient,
    address: SocketAddr,
) -> Result<text::Values, String> {
    let uri = plan.uri(address).ok_or("the metrics URI is not valid")?;
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let page = std::str::from_utf8(&body).map_err(|_| "the page is not UTF-8".to_string())?;
    text::read(page, &plan.names)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::model::MetricsPreset;

    /// A metrics page that answers 500 while `healthy` is false.
    async fn metrics_server(healthy: Arc<AtomicBool>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let healthy = healthy.clone();
                let service = service_fn(move |_| {
                    let ok = healthy.load(Ordering::SeqCst);
                    async move {
                        let page = "vllm:num_requests_running 3\nvllm:num_requests_waiting 2\n";
                        let mut response = http::Response::new(Full::new(Bytes::from(page)));
                        if !ok {
                            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(connection);
            }
        });
        address
    }

    async fn poll(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn failures_keep_the_last_report_which_then_ages_out() {
        let healthy = Arc::new(AtomicBool::new(true));
        let live = metrics_server(healthy.clone()).await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let settings = PodMetricsSettings {
            preset: MetricsPreset::Vllm,
            interval_ms: Some(100),
            max_age_ms: Some(300),
            ..PodMetricsSettings::default()
        };
        let (fresh_for, max_age) = (Duration::from_millis(200), Duration::from_millis(300));
        let loads = PodLoads::new(fresh_for, max_age);
        let metrics = crate::telemetry::Metrics::new();
        let counts = Arc::new(DeploymentMetrics::new(&metrics, "e", "d"));
        let plan = Plan::start(&settings, loads.clone(), counts);
        plan.set_pods(Box::new([
            Arc::new(Pod::new(live)),
            Arc::new(Pod::new(dead)),
        ]));
        poll("a report of the live pod", || {
            loads.reports().contains_key(&live)
        })
        .await;
        let first = loads.reports()[&live];
        assert_eq!(
            (first.running, first.waiting, first.kv_usage),
            (3.0, 2.0, None)
        );
        // The pod that refuses connections has no report and did not hold the other's up.
        assert!(!loads.reports().contains_key(&dead));
        // The pod fails from now on: its last report stays, and counts less and less.
        healthy.store(false, Ordering::SeqCst);
        let last = loads.reports()[&live].at;
        poll("the last report to age out", || {
            Instant::now() >= last + max_age + Duration::from_millis(300)
        })
        .await;
        let kept = loads.reports()[&live];
        assert!(kept.at >= last);
        assert_eq!(kept.freshness(Instant::now(), fresh_for, max_age), 0.0);
        drop(plan);
        // Every scrape was counted: the refused ones and the 500s as failed.
        let page = metrics.render();
        let count = |outcome: &str| {
            let series = format!(
                "scoregate_pod_scrapes_total{{endpoint=\"e\",deployment=\"d\",outcome=\"{outcome}\"}} "
            );
            page.lines()
                .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(count("ok") >= 1, "{page}");
        // At least two rounds for the dead pod, one per round while the live one fails.
        assert!(count("failed") >= 4, "{page}");
    }
}

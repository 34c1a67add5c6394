//! Bodies stream both ways without buffering: 200 MB up and 200 MB down with the process's RSS
//! growing by less than 50 MB (router, pod and client all live in this process, and none of
//! them may hold the body), and server-sent events reach the client one by one while the pod
//! is still producing them.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::Method;
use http_body_util::BodyExt;
use scoregate::sample_model::SampleModel;
use support::*;

const MB: u64 = 1024 * 1024;
const BIG: u64 = 200 * MB;
const RSS_BUDGET: u64 = 50 * MB;

/// The RSS tests measure the whole process, so they must not overlap each other.
static RSS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tracks the highest RSS seen from `start()` on: the kernel's peak counter when it can be
/// reset, and a sampling thread as well.
struct PeakRss {
    baseline: u64,
    kernel_peak: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sampled: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let baseline = rss_bytes();
        let kernel_peak = reset_peak_rss();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampled = Arc::new(AtomicU64::new(baseline));
        let thread = {
            let (stop, sampled) = (stop.clone(), sampled.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sampled.fetch_max(rss_bytes(), Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        PeakRss {
            baseline,
            kernel_peak,
            stop,
            sampled,
            thread: Some(thread),
        }
    }

    /// Growth over the baseline at the highest point.
    fn growth(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let mut peak = self.sampled.load(Ordering::Relaxed).max(rss_bytes());
        if self.kernel_peak {
            peak = peak.max(peak_rss_bytes());
        }
        peak.saturating_sub(self.baseline)
    }
}

async fn big_router(pod: &SampleModel) -> Harness {
    let h = Harness::start_with(
        &simple_routes(
            "ep-one",
            &[pod.address()],
            "request_timeout_ms: 300000, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0",
        ),
        |c| c.limits.max_request_body_bytes = 300 * MB,
    )
    .await;
    // Warm up connections, buffers and lazily registered metrics before the baseline.
    for _ in 0..3 {
        assert_eq!(
            h.score("ep-one", "?response_bytes=1048576").await.status,
            200
        );
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_streams_through() {
    let _serial = RSS_LOCK.lock().await;
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = big_router(&pod).await;
    let before = pod.stats().scored_bytes();

    let rss = PeakRss::start();
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let auth = format!("Bearer {KEY}");
    let length = BIG.to_string();
    let r = send(
        &h.client,
        Method::POST,
        &h.url("ep-one", "/score"),
        &[
            ("authorization", &auth),
            ("content-type", "application/octet-stream"),
            ("content-length", &length),
        ],
        generated(BIG, 64 * 1024, sent.clone()),
    )
    .await;
    let took = started.elapsed();
    let growth = rss.growth();
    eprintln!(
        "200 MB upload: {took:?}, RSS growth {:.1} MB",
        growth as f64 / MB as f64
    );

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sent.load(Ordering::Relaxed), BIG);
    assert_eq!(r.json()["input_bytes"], BIG, "the pod got every byte");
    assert_eq!(pod.stats().scored_bytes() - before, BIG);
    assert!(
        growth < RSS_BUDGET,
        "RSS grew by {:.1} MB during a 200 MB upload (budget 50 MB)",
        growth as f64 / MB as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_chunked_upload_streams_through() {
    let _serial = RSS_LOCK.lock().await;
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = big_router(&pod).await;

    let rss = PeakRss::start();
    let sent = Arc::new(AtomicU64::new(0));
    let auth = format!("Bearer {KEY}");
    let r = send(
        &h.client,
        Method::POST,
        &h.url("ep-one", "/score"),
        &[("authorization", &auth)],
        generated(BIG, 16 * 1024, sent.clone()),
    )
    .await;
    let growth = rss.growth();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["input_bytes"], BIG);
    assert!(
        growth < RSS_BUDGET,
        "RSS grew by {:.1} MB during a 200 MB chunked upload",
        growth as f64 / MB as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_response_streams_through() {
    let _serial = RSS_LOCK.lock().await;
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = big_router(&pod).await;

    let rss = PeakRss::start();
    let started = Instant::now();
    let auth = format!("Bearer {KEY}");
    let (status, received, frames) = guard("the 200 MB download", async {
        let response = h
            .client
            .request(request(
                Method::POST,
                &h.url("ep-one", &format!("/score?response_bytes={BIG}")),
                &[("authorization", &auth)],
                full("{}"),
            ))
            .await
            .unwrap();
        let status = response.status();
        let mut body = response.into_body();
        let (mut received, mut frames) = (0u64, 0u64);
        // Read and drop chunk by chunk: the test holds nothing.
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                assert!(data.iter().all(|b| *b == b'x'));
                received += data.len() as u64;
                frames += 1;
            }
        }
        (status, received, frames)
    })
    .await;
    let took = started.elapsed();
    let growth = rss.growth();
    eprintln!(
        "200 MB download: {took:?} in {frames} frames, RSS growth {:.1} MB",
        growth as f64 / MB as f64
    );
    assert_eq!(status, 200);
    assert_eq!(received, BIG);
    assert!(frames > 100, "it arrived in pieces ({frames} frames)");
    assert!(
        growth < RSS_BUDGET,
        "RSS grew by {:.1} MB during a 200 MB download (budget 50 MB)",
        growth as f64 / MB as f64
    );
    // The slot was released when the body ended.
    h.wait_in_flight("ep-one", "blue", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_event_arrives_while_the_pod_is_still_streaming() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod.address()],
        "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0",
    ))
    .await;
    // The second event comes ten minutes after the first: a router that waited for the end
    // (or for more bytes) would deliver nothing before the hang guard fires.
    let auth = format!("Bearer {KEY}");
    let mut held = Held::open(
        h.http,
        &h.url("ep-one", "/score?stream_events=2&event_interval_ms=600000"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(held.status, 200);
    assert_eq!(held.first, "data: {\"token\": 0}\n\n");
    assert_eq!(
        held.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    assert_eq!(
        held.headers.get("azureml-model-deployment").unwrap(),
        "blue"
    );
    assert!(held.headers.get("content-length").is_none());
    // The response is still open: the slot is held until it ends.
    h.wait_in_flight("ep-one", "blue", 1).await;
    let next = tokio::time::timeout(std::time::Duration::from_millis(200), held.next()).await;
    assert!(next.is_err(), "nothing else yet: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_pass_one_by_one() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], "")).await;
    let auth = format!("Bearer {KEY}");
    let mut held = Held::open(
        h.http,
        &h.url("ep-one", "/score?stream_events=5&event_interval_ms=500"),
        &[("authorization", &auth)],
    )
    .await;
    // The first event came alone, before the pod produced the rest.
    assert_eq!(held.first, "data: {\"token\": 0}\n\n");
    let mut all = held.first.to_vec();
    while let Some(frame) = guard("the next event", held.next()).await {
        all.extend_from_slice(&frame);
    }
    let expected: String = (0..5)
        .map(|i| format!("data: {{\"token\": {i}}}\n\n"))
        .collect();
    assert_eq!(String::from_utf8(all).unwrap(), expected);
    h.wait_in_flight("ep-one", "blue", 0).await;
}

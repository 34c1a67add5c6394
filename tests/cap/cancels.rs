//! The per-pod cap as a pod counts it, whatever the router gives up on: requests cancelled by
//! HTTP/1 clients, HTTP/2 streams reset on one connection, requests that time out (504), and
//! mirror copies to a slow mirror. The sample pods are slow and record their peak concurrency;
//! every test asserts that the peak equals the cap (so the load did fill it) and never went
//! above it, and that the deployment serves again once the slow work is done. Requests whose
//! client left are counted as 499.

use std::time::Duration;

use crate::support::load::Load;
use crate::support::*;
use http::Request;
use scoregate::sample_model::SampleModel;
use tokio::net::TcpStream;

/// A deployment `blue` of `ep-one` on one slow pod with `cap` slots and a deep, patient queue.
async fn slow_pod(cap: u32, delay_ms: u64, request_timeout_ms: u64) -> (SampleModel, Harness) {
    let pod = SampleModel::start_local("blue").await.unwrap();
    pod.stats().set_delay(Duration::from_millis(delay_ms));
    let settings = format!(
        "request_timeout_ms: {request_timeout_ms}, max_concurrent_requests_per_instance: {cap}, \
         max_queue_wait_ms: 30000, max_queue_length: 1000"
    );
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], &settings)).await;
    (pod, h)
}

/// Once the slow work is done, the deployment is whole again: nothing in flight, and a request
/// is answered at once (`max_queue_wait_ms` would not let it wait behind a held slot for long).
async fn serves_again(h: &Harness, pod: &SampleModel) {
    h.wait_in_flight("ep-one", "blue", 0).await;
    pod.stats().set_delay(Duration::ZERO);
    let r = h.score("ep-one", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The labels of `scoregate_requests_total` for the router's answers of `blue` with status
/// `code` and error `error`.
fn answers<'a>(code: &'a str, error: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("endpoint", "ep-one"),
        ("deployment", "blue"),
        ("code", code),
        ("source", "router"),
        ("error", error),
    ]
}

/// `n` requests, `parallel` at a time, each on its own connection, closed 50 ms after it was
/// sent: the client goes away while the pod works.
async fn cancel_http1(h: &Harness, n: usize, parallel: usize) {
    let auth = format!("Bearer {KEY}");
    let mut workers = Vec::new();
    for worker in 0..parallel {
        let (address, auth) = (h.http, auth.clone());
        let count = n / parallel + usize::from(worker < n % parallel);
        workers.push(tokio::spawn(async move {
            for _ in 0..count {
                let path = "/api/v1/endpoint/ep-one/score";
                let gone = raw_open(address, path, &[("authorization", &auth)]).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(gone);
            }
        }));
    }
    for worker in workers {
        guard("a cancelling client", worker).await.unwrap();
    }
}

/// After 200 requests whose clients went away: each is a 499, the pod's peak is its cap, and
/// the deployment serves again.
async fn all_cancelled_within_the_cap(h: &Harness, pod: &SampleModel, cap: u32) {
    let gone = answers("499", "ClientClosedRequest");
    h.wait_metric("scoregate_requests_total", &gone, |v| v == 200.0)
        .await;
    assert_eq!(
        pod.stats().peak_concurrency(),
        cap,
        "the pod's peak is its cap"
    );
    serves_again(h, pod).await;
    assert_eq!(pod.stats().peak_concurrency(), cap);
}

async fn http1_cancels_keep_the_cap(cap: u32) {
    let (pod, h) = slow_pod(cap, 300, 5_000).await;
    cancel_http1(&h, 200, 20).await;
    all_cancelled_within_the_cap(&h, &pod, cap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_http1_cancels_never_exceed_a_cap_of_one() {
    http1_cancels_keep_the_cap(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_http1_cancels_never_exceed_a_cap_of_four() {
    http1_cancels_keep_the_cap(4).await;
}

/// A cap-1 pod taking 300 ms whose slot is held after each cancel for as long as the pod works,
/// and a patient client beside the cancelling ones that may wait 20 s in the queue. The hold
/// bound (`request_timeout_ms`) is 120 s: a slot kept to its bound rather than to the end of the
/// pod's work would turn the patient client's requests into 503 `QueueTimeout`.
async fn patient_beside_cancels() -> (SampleModel, Harness, Load) {
    let pod = SampleModel::start_local("blue").await.unwrap();
    pod.stats().set_delay(Duration::from_millis(300));
    let settings = "request_timeout_ms: 120000, max_concurrent_requests_per_instance: 1, \
                    max_queue_wait_ms: 20000, max_queue_length: 1000";
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], settings)).await;
    let patient = Load::start(&[h.url("ep-one", "/score")], 1);
    (pod, h, patient)
}

/// The patient client was never refused and was served meanwhile; the pod never had two.
async fn the_patient_client_was_never_refused(pod: &SampleModel, h: &Harness, patient: Load) {
    let served = patient.ok();
    eventually(
        "the patient client to be served after the cancels",
        || async { patient.ok() > served },
    )
    .await;
    let (ok, failures) = patient.finish().await;
    assert!(failures.is_empty(), "the patient client: {failures:?}");
    assert!(ok >= 1);
    assert_eq!(
        pod.stats().peak_concurrency(),
        1,
        "the pod's peak is its cap"
    );
    h.wait_in_flight("ep-one", "blue", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_cancels_keep_others_waiting_no_longer_than_the_pod_works() {
    let (pod, h, patient) = patient_beside_cancels().await;
    cancel_http1(&h, 60, 10).await;
    let gone = answers("499", "ClientClosedRequest");
    h.wait_metric("scoregate_requests_total", &gone, |v| v == 60.0)
        .await;
    the_patient_client_was_never_refused(&pod, &h, patient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_resets_keep_others_waiting_no_longer_than_the_pod_works() {
    let (pod, h, patient) = patient_beside_cancels().await;
    let ended = reset_h2_streams(&h, 60, 10).await;
    assert!(
        ended.is_none(),
        "60 resets are within the budget: {ended:?}"
    );
    let gone = answers("499", "ClientClosedRequest");
    h.wait_metric("scoregate_requests_total", &gone, |v| v == 60.0)
        .await;
    the_patient_client_was_never_refused(&pod, &h, patient).await;
}

/// `n` streams on one HTTP/2 connection, `parallel` at a time, each reset 50 ms after it was
/// opened. Returns how the connection ended (still open: `None`).
async fn reset_h2_streams(h: &Harness, n: usize, parallel: usize) -> Option<h2::Error> {
    let tcp = TcpStream::connect(h.http).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let url = format!("http://{}/api/v1/endpoint/ep-one/score", h.http);
    let mut sent = 0;
    let mut refused = false;
    while sent < n && !refused {
        let mut streams = Vec::new();
        for _ in 0..parallel.min(n - sent) {
            let Ok(mut ready) = guard("h2 ready", client.clone().ready()).await else {
                refused = true;
                break;
            };
            let request = Request::post(&url)
                .header("authorization", format!("Bearer {KEY}"))
                .body(())
                .unwrap();
            match ready.send_request(request, true) {
                Ok((_, stream)) => streams.push(stream),
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        sent += streams.len();
        for mut stream in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    drop(client);
    if refused {
        return guard("the connection to end", connection)
            .await
            .unwrap()
            .err();
    }
    None
}

async fn h2_resets_keep_the_cap(cap: u32) {
    let (pod, h) = slow_pod(cap, 300, 5_000).await;
    let ended = reset_h2_streams(&h, 200, 20).await;
    assert!(
        ended.is_none(),
        "200 resets are within the budget: {ended:?}"
    );
    all_cancelled_within_the_cap(&h, &pod, cap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_h2_resets_on_one_connection_never_exceed_a_cap_of_one() {
    h2_resets_keep_the_cap(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_h2_resets_on_one_connection_never_exceed_a_cap_of_four() {
    h2_resets_keep_the_cap(4).await;
}

/// Ten requests time out (the pod takes 350 ms, the router waits 300 ms for the head), then a
/// steady load follows: the pod never serves more than its cap, because each timed-out request
/// keeps its slot until the pod has answered it (within the hold bound of 2 × 300 ms).
async fn timeouts_then_load_keep_the_cap(cap: u32) {
    let (pod, h) = slow_pod(cap, 350, 300).await;
    let timeouts: Vec<_> = (0..10).map(|_| h.spawn_score("ep-one", "")).collect();
    for t in timeouts {
        let r = guard("a request that times out", t).await.unwrap();
        assert_router_error(&r, 504, "UpstreamTimeout");
    }
    pod.stats().set_delay(Duration::ZERO);
    let load = Load::start(&[h.url("ep-one", "/score")], 2 * cap as usize);
    eventually("the steady load to be served", || async {
        load.ok() >= 100
    })
    .await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok >= 100);
    let timeouts = answers("504", "UpstreamTimeout");
    assert_eq!(
        h.metric_or_zero("scoregate_requests_total", &timeouts)
            .await,
        10.0
    );
    assert_eq!(
        pod.stats().peak_concurrency(),
        cap,
        "the pod's peak is its cap"
    );
    // The last timed-out requests may still hold their slots (the load did not need them).
    h.wait_in_flight("ep-one", "blue", 0).await;
    eventually("every timed-out request to have been held", || async {
        let text = h.metrics_text().await;
        metric_sum(&text, "scoregate_abandoned_requests_total") == Some(10.0)
    })
    .await;
    assert_eq!(pod.stats().peak_concurrency(), cap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_followed_by_steady_load_never_exceed_a_cap_of_one() {
    timeouts_then_load_keep_the_cap(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_followed_by_steady_load_never_exceed_a_cap_of_four() {
    timeouts_then_load_keep_the_cap(4).await;
}

/// Live traffic on a fast pod, half of it mirrored to a slow pod (400 ms) whose deployment
/// waits 300 ms for a head: the mirror copies time out, and their slots stay taken until the
/// mirror pod has answered them (within the hold bound of 2 × 300 ms).
async fn a_slow_mirror_keeps_its_cap(cap: u32) {
    let live = SampleModel::start_local("blue").await.unwrap();
    let mirror = SampleModel::start_local("shadow").await.unwrap();
    mirror.stats().set_delay(Duration::from_millis(400));
    let shadow = format!(
        "request_timeout_ms: 300, max_concurrent_requests_per_instance: {cap}, max_queue_wait_ms: 50"
    );
    let yaml = routes(
        &[endpoint(
            "ep-one",
            &[
                "traffic: { blue: 100, shadow: 0 }",
                "mirror_traffic: { shadow: 50 }",
            ],
        )],
        &[
            deployment("blue", "ep-one", &[live.address()], CAP_ONE),
            deployment("shadow", "ep-one", &[mirror.address()], &shadow),
        ],
    );
    let h = Harness::start(&yaml).await;
    let load = Load::start(&[h.url("ep-one", "/score")], 4);
    eventually("mirror copies to have filled the mirror pod", || async {
        load.ok() >= 200 && mirror.stats().requests() >= 4 * u64::from(cap)
    })
    .await;
    let (_, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "live traffic is untouched: {failures:?}"
    );
    assert_eq!(
        mirror.stats().peak_concurrency(),
        cap,
        "the mirror pod's peak is its cap"
    );
    h.wait_in_flight("ep-one", "shadow", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mirror_never_exceeds_a_cap_of_one() {
    a_slow_mirror_keeps_its_cap(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mirror_never_exceeds_a_cap_of_four() {
    a_slow_mirror_keeps_its_cap(4).await;
}

/// Beyond the reset budget, the connection gets GOAWAY `ENHANCE_YOUR_CALM` and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_that_resets_too_fast_is_told_to_calm_down() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    pod.stats().set_delay(Duration::from_millis(200));
    let settings =
        "max_concurrent_requests_per_instance: 4, max_queue_wait_ms: 30000, max_queue_length: 1000";
    let h = Harness::start_with(&simple_routes("ep-one", &[pod.address()], settings), |c| {
        c.limits.h2_reset_streams_per_second = 2
    })
    .await;
    let ended = reset_h2_streams(&h, 200, 10).await;
    let error = ended.expect("the router ended the connection");
    assert!(error.is_go_away(), "{error:?}");
    assert_eq!(
        error.reason(),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{error:?}"
    );
    h.wait_metric("scoregate_h2_reset_floods_total", &[], |v| v == 1.0)
        .await;
    assert!(pod.stats().peak_concurrency() <= 4);
    serves_again(&h, &pod).await;
}

/// Answers without a body (OPTIONS with `content-length: 0`, anything to HEAD) end their
/// exchange with the head: the slot is free before the client has read anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_a_body_end_their_exchange_at_the_head() {
    let (pod, h) = slow_pod(1, 0, 5_000).await;
    let auth = format!("Bearer {KEY}");
    for method in [
        http::Method::OPTIONS,
        http::Method::HEAD,
        http::Method::OPTIONS,
    ] {
        let url = h.url("ep-one", "/score");
        let r = send(
            &h.client,
            method.clone(),
            &url,
            &[("authorization", &auth)],
            empty(),
        )
        .await;
        assert!(r.body.is_empty(), "{method}: {r:?}");
        assert_eq!(r.deployment(), Some("blue"), "{method}: {r:?}");
    }
    h.wait_in_flight("ep-one", "blue", 0).await;
    assert_eq!(pod.stats().requests(), 3);
}

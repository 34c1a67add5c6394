//! Admission over real sockets: the per-pod cap as the pods count it, the FIFO queue, its
//! bound, and slots freed when clients go away.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use scoregate::sample_model::SampleModel;
use support::*;

/// Fires `n` requests at once (each on its own connection) and returns their responses.
async fn burst(h: &Harness, n: usize, query: &str) -> Vec<Resp> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (uri, barrier) = (h.url("ep-one", &format!("/score{query}")), barrier.clone());
            tokio::spawn(async move {
                let client = client();
                barrier.wait().await;
                let auth = format!("Bearer {KEY}");
                send(
                    &client,
                    Method::POST,
                    &uri,
                    &[("authorization", &auth)],
                    full("{}"),
                )
                .await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(guard("a burst request", t).await.unwrap());
    }
    out
}

async fn two_pods(cap: u32) -> (SampleModel, SampleModel, Harness) {
    let a = SampleModel::start_local("blue").await.unwrap();
    let b = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[a.address(), b.address()],
        &format!(
            "max_concurrent_requests_per_instance: {cap}, max_queue_wait_ms: 120000, max_queue_length: 100"
        ),
    ))
    .await;
    (a, b, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_never_put_two_on_a_pod_with_cap_one() {
    let (a, b, h) = two_pods(1).await;
    let responses = burst(&h, 50, "?sleep_ms=100").await;
    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(a.stats().requests() + b.stats().requests(), 50);
    assert_eq!(a.stats().peak_concurrency(), 1, "pod a");
    assert_eq!(b.stats().peak_concurrency(), 1, "pod b");
    assert!(
        a.stats().requests() > 0 && b.stats().requests() > 0,
        "both pods served"
    );
    h.wait_in_flight("ep-one", "blue", 0).await;
    assert_eq!(h.queue_depth("ep-one", "blue").await, 0.0);
}

/// The control of the test above: the same burst with a cap of 4 does overlap on a pod, so a
/// peak of 1 there is the router's doing, not the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_burst_with_cap_four_overlaps_on_the_pods() {
    let (a, b, h) = two_pods(4).await;
    let responses = burst(&h, 50, "?sleep_ms=100").await;
    assert!(responses.iter().all(|r| r.status == 200));
    let peaks = (a.stats().peak_concurrency(), b.stats().peak_concurrency());
    assert!(peaks.0 <= 4 && peaks.1 <= 4, "cap 4 holds: {peaks:?}");
    assert!(peaks.0 > 1 || peaks.1 > 1, "requests overlapped: {peaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_first_in_first_out() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod.address()],
        // A stream dropped mid-body holds its slot to its request's deadline: keep it short.
        "request_timeout_ms: 300, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 120000, max_queue_length: 20",
    ))
    .await;
    // Every request holds the one slot until it is dropped, so exactly one is admitted at a
    // time and the test sees which one.
    let mut holder = h.hold("ep-one", &[]).await;
    let auth = format!("Bearer {KEY}");
    let mut waiters = Vec::new();
    for i in 0..8 {
        let uri = h.url(
            "ep-one",
            &format!("/score?order={i}&stream_events=1000000&event_interval_ms=50"),
        );
        let (address, auth) = (h.http, auth.clone());
        waiters.push(tokio::spawn(async move {
            Held::open(address, &uri, &[("authorization", &auth)]).await
        }));
        // Each one is in the queue before the next is sent.
        h.wait_queue_depth("ep-one", "blue", i + 1).await;
    }
    for i in 0..8 {
        drop(holder);
        h.wait_queue_depth("ep-one", "blue", 7 - i).await;
        holder = guard("the oldest waiter", &mut waiters[i]).await.unwrap();
        assert_eq!(holder.status, 200);
        for (j, later) in waiters.iter().enumerate().skip(i + 1) {
            assert!(
                !later.is_finished(),
                "waiter {j} was admitted before waiter {i}"
            );
        }
    }
    drop(holder);
    h.wait_in_flight("ep-one", "blue", 0).await;
    assert_eq!(pod.stats().requests(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_frees_its_slot_when_the_pod_has_stopped() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod.address()],
        "request_timeout_ms: 200, max_concurrent_requests_per_instance: 1, \
         max_queue_wait_ms: 10000, max_queue_length: 10",
    ))
    .await;
    for round in 1..=3 {
        let mut held = h.hold("ep-one", &[]).await;
        assert!(held.next().await.is_some(), "round {round}: mid-response");
        // While it is held, the one slot is taken: the next request waits for it.
        let next = h.spawn_score("ep-one", "");
        h.wait_queue_depth("ep-one", "blue", 1).await;
        // The client keeps reading past the request's deadline (200 ms), then goes away.
        let past_deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while tokio::time::Instant::now() < past_deadline {
            assert!(
                held.next().await.is_some(),
                "round {round}: the stream goes on"
            );
        }
        drop(held);
        // The pod would stream for 14 hours, past the request's deadline: the router tells it
        // nothing more is coming (a half-close), the pod stops and closes, and only then is the
        // slot freed for the waiting request — not at once, while the pod is still on the
        // stream until its next write.
        let r = guard("the waiting request", next).await.unwrap();
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(
            pod.stats().peak_concurrency(),
            1,
            "round {round}: the waiting request reached the pod while it was still streaming"
        );
        let pod_closed = [
            ("endpoint", "ep-one"),
            ("deployment", "blue"),
            ("outcome", "failed"),
        ];
        h.wait_metric("scoregate_abandoned_requests_total", &pod_closed, |v| {
            v == f64::from(round)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_queued_leaves_the_queue() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod.address()],
        "request_timeout_ms: 300, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 120000, max_queue_length: 1",
    ))
    .await;
    let held = h.hold("ep-one", &[]).await;
    let auth = format!("Bearer {KEY}");
    let gone = raw_open(
        h.http,
        "/api/v1/endpoint/ep-one/score",
        &[("authorization", &auth)],
    )
    .await;
    h.wait_queue_depth("ep-one", "blue", 1).await;
    drop(gone);
    // The client is gone: its place in the queue is free again.
    h.wait_queue_depth("ep-one", "blue", 0).await;
    let next = h.spawn_score("ep-one", "");
    h.wait_queue_depth("ep-one", "blue", 1).await;
    drop(held);
    let r = guard("the second queued request", next).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        pod.stats().requests(),
        2,
        "the abandoned request never reached the pod"
    );
    h.wait_in_flight("ep-one", "blue", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_never_leaked_whatever_the_outcome() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start_with(
        &simple_routes(
            "ep-one",
            &[pod.address()],
            "request_timeout_ms: 300, max_concurrent_requests_per_instance: 2, max_queue_wait_ms: 2000, max_queue_length: 50",
        ),
        |c| c.limits.max_request_body_bytes = 4096,
    )
    .await;
    let auth = format!("Bearer {KEY}");
    let mut tasks = Vec::new();
    for i in 0..30 {
        let query = match i % 5 {
            0 => "?fail=1",
            1 => "?reset=1",
            2 => "?sleep_ms=1000",
            3 => "?stream_events=3&event_interval_ms=1",
            _ => "",
        };
        let (uri, auth) = (h.url("ep-one", &format!("/score{query}")), auth.clone());
        let big = i % 7 == 0;
        tasks.push(tokio::spawn(async move {
            let body = if big {
                full(vec![b'z'; 8192])
            } else {
                full("{}")
            };
            send(
                &client(),
                Method::POST,
                &uri,
                &[("authorization", &auth)],
                body,
            )
            .await
            .status
            .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(guard("a mixed request", t).await.unwrap());
    }
    for s in [200, 500, 502, 504, 413] {
        assert!(statuses.contains(&s), "{s} happened: {statuses:?}");
    }
    h.wait_in_flight("ep-one", "blue", 0).await;
    h.wait_queue_depth("ep-one", "blue", 0).await;
    // Both slots are free: two held requests fit, a third does not.
    let _a = h.hold("ep-one", &[]).await;
    let _b = h.hold("ep-one", &[]).await;
    h.wait_in_flight("ep-one", "blue", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_before_the_answer_leaves_its_slot_taken_until_the_pod_is_done() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod.address()],
        "request_timeout_ms: 120000, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 60000",
    ))
    .await;
    let auth = format!("Bearer {KEY}");
    let gone = raw_open(
        h.http,
        "/api/v1/endpoint/ep-one/score?sleep_ms=500",
        &[("authorization", &auth)],
    )
    .await;
    h.wait_in_flight("ep-one", "blue", 1).await;
    drop(gone);
    // The pod computes on: the next request waits for it rather than being sent beside it.
    let r = h.score("ep-one", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pod.stats().requests(), 2);
    assert_eq!(
        pod.stats().peak_concurrency(),
        1,
        "never two at once on a cap-1 pod"
    );
    let drained = [
        ("endpoint", "ep-one"),
        ("deployment", "blue"),
        ("outcome", "drained"),
    ];
    assert_eq!(
        h.metric_or_zero("scoregate_abandoned_requests_total", &drained)
            .await,
        1.0
    );
    h.wait_in_flight("ep-one", "blue", 0).await;
}

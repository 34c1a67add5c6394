//! Passive outlier ejection: a pod that refuses connections leaves the rotation by itself after
//! `outlier_detection.consecutive_failures`, requests that were refused are retried on another
//! pod (nothing was sent), the pod returns once its ejection has run out and it answers again,
//! and a deployment whose pods are all dead fails fast.

use std::net::SocketAddr;

use crate::support::load::Load;
use crate::support::*;
use scoregate::sample_model::SampleModel;

/// `ep-one/blue` on `pods`, two slots each, with outlier detection `outlier` (a flow map).
fn routes_with(pods: &[SocketAddr], outlier: &str) -> String {
    let settings =
        "max_concurrent_requests_per_instance: 2, max_queue_wait_ms: 10000, max_queue_length: 1000";
    let mut yaml = simple_routes("ep-one", pods, settings);
    yaml.push_str(&format!("    outlier_detection: {{ {outlier} }}\n"));
    yaml
}

const BLUE: [(&str, &str); 2] = [("endpoint", "ep-one"), ("deployment", "blue")];

/// Scores one request after the other until a pod has been ejected; until then, a request that
/// meets the dead pod is retried on a live one.
async fn score_until_ejected(h: &Harness) {
    guard("the dead pod's ejection", async {
        while h
            .metric_or_zero("scoregate_pod_ejections_total", &BLUE)
            .await
            < 1.0
        {
            h.score("ep-one", "").await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_refuses_connections_is_ejected_and_then_nothing_fails() {
    let live = pods(2).await;
    let dead = dead_address();
    let yaml = routes_with(
        &[live[0].address(), live[1].address(), dead],
        "consecutive_failures: 3, base_ejection_ms: 600000",
    );
    let h = Harness::start(&yaml).await;
    score_until_ejected(&h).await;
    assert_eq!(h.metric_or_zero("scoregate_ejected_pods", &BLUE).await, 1.0);
    let refused = h
        .metric_or_zero("scoregate_upstream_connect_errors_total", &BLUE)
        .await;
    assert_eq!(refused, 3.0, "ejected after its third failure in a row");
    let load = Load::start(&[h.url("ep-one", "/score")], 8);
    eventually("1,000 requests", || async { load.ok() >= 1_000 }).await;
    let (_, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    let after = h
        .metric_or_zero("scoregate_upstream_connect_errors_total", &BLUE)
        .await;
    assert_eq!(after, refused, "the ejected pod got no request");
    assert_eq!(
        h.metric_or_zero("scoregate_pod_ejections_total", &BLUE)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_pod_returns_once_it_answers_again() {
    let live = pods(1).await;
    let dead = dead_address();
    let yaml = routes_with(
        &[live[0].address(), dead],
        "consecutive_failures: 1, base_ejection_ms: 200",
    );
    let h = Harness::start(&yaml).await;
    score_until_ejected(&h).await;
    // The pod comes back on its address; once its ejection has run out it gets requests again.
    let back = SampleModel::start(dead, "blue").await.unwrap();
    guard("the recovered pod to serve", async {
        while back.stats().requests() == 0 {
            h.score("ep-one", "").await;
        }
    })
    .await;
    h.wait_metric("scoregate_ejected_pods", &BLUE, |v| v == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_pod_dead_requests_fail_fast_with_502() {
    let dead = [dead_address(), dead_address(), dead_address()];
    let h = Harness::start(&routes_with(&dead, "consecutive_failures: 2")).await;
    for _ in 0..20 {
        let r = h.score("ep-one", "").await;
        assert_router_error(&r, 502, "UpstreamConnectFailed");
    }
    // At most half of the pods are ejected at once (one of three), never all of them.
    assert_eq!(h.metric_or_zero("scoregate_ejected_pods", &BLUE).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_is_off_with_zero_consecutive_failures() {
    let live = pods(1).await;
    let dead = dead_address();
    let h = Harness::start(&routes_with(
        &[live[0].address(), dead],
        "consecutive_failures: 0",
    ))
    .await;
    for _ in 0..30 {
        h.score("ep-one", "").await;
    }
    assert!(
        h.metric_or_zero("scoregate_upstream_connect_errors_total", &BLUE)
            .await
            > 2.0
    );
    assert_eq!(
        h.metric_or_zero("scoregate_pod_ejections_total", &BLUE)
            .await,
        0.0
    );
}

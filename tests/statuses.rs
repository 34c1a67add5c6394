//! Every status of the table in `docs/ARCHITECTURE.md` that the router core owns, each created for real over
//! sockets: 404, 401, 503, 429, 504, 502, 413, and the model's own 500 passed through.
//! Every router error carries `{"error":{"code","message","requestId"}}` with the request id of
//! the `x-request-id` header.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Method;
use hyper::body::Frame;
use scoregate::model::EndpointKeys;
use scoregate::sample_model::SampleModel;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETTINGS: &str = "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0";

async fn one_pod(settings: &str) -> (SampleModel, Harness) {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], settings)).await;
    (pod, h)
}

/// The labels of `scoregate_requests_total` for answers with `code`: made by the model when
/// `error` is empty, by the router with that `error.code` otherwise.
fn requests_total(
    endpoint: &str,
    deployment: &str,
    code: &str,
    error: &str,
) -> [(&'static str, String); 5] {
    let source = if error.is_empty() { "model" } else { "router" };
    [
        ("endpoint", endpoint.to_owned()),
        ("deployment", deployment.to_owned()),
        ("code", code.to_owned()),
        ("source", source.to_owned()),
        ("error", error.to_owned()),
    ]
}

async fn count(h: &Harness, labels: [(&'static str, String); 5]) -> f64 {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.metric_or_zero("scoregate_requests_total", &labels).await
}

/// The sum of the series of `name` whose labels include `labels` (the text parsed as Prometheus
/// does).
fn sum_matching(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn unknown_endpoint_is_404_and_reaches_no_pod() {
    let (pod, h) = one_pod(SETTINGS).await;
    let r = h.score("no-such-endpoint", "").await;
    assert_router_error(&r, 404, "EndpointNotFound");
    assert_eq!(pod.stats().requests(), 0);
    assert_eq!(
        count(&h, requests_total("", "", "404", "EndpointNotFound")).await,
        1.0,
        "counted without a client-chosen label"
    );
    // Names match whatever their case, as host names do (names are declared in lower case).
    assert_eq!(h.score("EP-ONE", "").await.status, 200);
    assert_eq!(h.score("ep-one", "").await.status, 200);
}

#[tokio::test]
async fn paths_outside_the_scoring_prefix_are_404_route_not_found() {
    let (pod, h) = one_pod(SETTINGS).await;
    let auth = format!("Bearer {KEY}");
    for path in [
        "/score",
        "/",
        "/api/v1/service/ep-one/score",
        "/api/v1/endpoint/",
        "/api/v1/endpoint//score",
        "/api/v1/endpointep-one/score",
    ] {
        let r = send(
            &h.client,
            Method::POST,
            &h.raw_url(path),
            &[("authorization", &auth)],
            full("{}"),
        )
        .await;
        assert_router_error(&r, 404, "RouteNotFound");
        assert!(r.deployment().is_none(), "{path}: no deployment was chosen");
    }
    assert_eq!(pod.stats().requests(), 0);
}

#[tokio::test]
async fn all_weights_zero_is_404_no_deployment_with_traffic() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&routes(
        &[endpoint("ep-one", &["traffic: { blue: 0 }"])],
        &[deployment("blue", "ep-one", &[pod.address()], SETTINGS)],
    ))
    .await;
    let r = h.score("ep-one", "").await;
    assert_router_error(&r, 404, "NoDeploymentWithTraffic");
    // No traffic section at all is the same as all zero.
    h.write_routes(&routes(
        &[endpoint("ep-one", &[])],
        &[deployment("blue", "ep-one", &[pod.address()], SETTINGS)],
    ));
    h.wait_metric(
        "scoregate_table_reloads_total",
        &[("source", "file"), ("result", "applied")],
        |v| v >= 2.0,
    )
    .await;
    let r = h.score("ep-one", "").await;
    assert_router_error(&r, 404, "NoDeploymentWithTraffic");
    assert_eq!(pod.stats().requests(), 0);
    // Naming the deployment still reaches it.
    let r = h
        .score_with("ep-one", "", &[("azureml-model-deployment", "blue")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.deployment(), Some("blue"));
}

#[tokio::test]
async fn unknown_deployment_in_the_header_is_404() {
    let (pod, h) = one_pod(SETTINGS).await;
    // (Header values lose surrounding whitespace in HTTP parsing, so "blue " would be "blue".)
    for name in ["green", "BLUE", "blu", ""] {
        let r = h
            .score_with("ep-one", "", &[("azureml-model-deployment", name)])
            .await;
        assert!(r.status == 404, "{name:?}: {}", r.status);
        assert_router_error(&r, 404, "DeploymentNotFound");
    }
    assert_eq!(pod.stats().requests(), 0);
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_with_www_authenticate_bearer() {
    let (pod, h) = one_pod(SETTINGS).await;
    let url = h.url("ep-one", "/score");
    let post = |headers: Vec<(&'static str, String)>| {
        let (client, url) = (h.client.clone(), url.clone());
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(&client, Method::POST, &url, &headers, full("{}")).await
        }
    };

    let r = post(vec![]).await;
    assert_router_error(&r, 401, "MissingCredentials");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    for (header, code) in [
        (format!("Bearer {KEY}x"), "InvalidKey"),
        (format!("Bearer {}", &KEY[..KEY.len() - 1]), "InvalidKey"),
        ("Bearer not-a-key".to_string(), "InvalidKey"),
        (format!("Basic {KEY}"), "MissingCredentials"),
        (KEY.to_string(), "MissingCredentials"),
        ("Bearer ".to_string(), "MissingCredentials"),
    ] {
        let r = post(vec![("authorization", header.clone())]).await;
        assert_router_error(&r, 401, code);
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "{header:?}: WWW-Authenticate {challenge:?}"
        );
    }
    // Authentication comes before choosing a deployment: an unauthenticated client learns
    // nothing about deployment names.
    let r = post(vec![("azureml-model-deployment", "nope".into())]).await;
    assert_router_error(&r, 401, "MissingCredentials");

    assert_eq!(
        pod.stats().requests(),
        0,
        "no refused request reached a pod"
    );
    assert_eq!(
        sum_matching(
            &h.metrics_text().await,
            "scoregate_requests_total",
            &[
                ("endpoint", "ep-one"),
                ("code", "401"),
                ("source", "router")
            ]
        ),
        8.0,
        "401s are counted against the endpoint, as the router's answers"
    );
    // Both keys work (the same requests with a right key are 200).
    let r = post(vec![("authorization", format!("Bearer {KEY}"))]).await;
    assert_eq!(r.status, 200);
    let r = post(vec![("authorization", format!("bearer {KEY2}"))]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn token_mode_refuses_expired_wrong_audience_and_forged_tokens() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let signing = "token-signing-key-0123456789";
    let h = Harness::start(&routes(
        &[endpoint_with_auth(
            "ep-token",
            "aml_token",
            signing,
            &["traffic: { blue: 100 }"],
        )],
        &[deployment("blue", "ep-token", &[pod.address()], SETTINGS)],
    ))
    .await;
    let keys = EndpointKeys {
        primary: signing.into(),
        secondary: None,
    };
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let token = |endpoint: &str, keys: &EndpointKeys, ttl: Duration, at: SystemTime| {
        scoregate::auth::issue_token(endpoint, keys, ttl, at)
            .unwrap()
            .access_token
    };
    let url = h.url("ep-token", "/score");
    let with = |credential: String| {
        let (client, url) = (h.client.clone(), url.clone());
        async move {
            let auth = format!("Bearer {credential}");
            send(
                &client,
                Method::POST,
                &url,
                &[("authorization", &auth)],
                full("{}"),
            )
            .await
        }
    };

    let good = with(token("ep-token", &keys, hour, now)).await;
    assert_eq!(good.status, 200, "{}", good.text());
    assert_eq!(pod.stats().requests(), 1);

    let expired = with(token(
        "ep-token",
        &keys,
        Duration::from_secs(60),
        now - 2 * hour,
    ))
    .await;
    assert_router_error(&expired, 401, "ExpiredToken");
    assert!(expired
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));

    let other_audience = with(token("ep-other", &keys, hour, now)).await;
    assert_router_error(&other_audience, 401, "InvalidToken");

    let forged_keys = EndpointKeys {
        primary: "someone-elses-key-0123".into(),
        secondary: None,
    };
    let forged = with(token("ep-token", &forged_keys, hour, now)).await;
    assert_router_error(&forged, 401, "InvalidToken");

    // A token with its signature cut off, and the signing key itself, are not tokens.
    let t = token("ep-token", &keys, hour, now);
    let unsigned = format!("{}.", &t[..t.rfind('.').unwrap()]);
    assert_router_error(&with(unsigned).await, 401, "InvalidToken");
    assert_router_error(&with(signing.to_string()).await, 401, "InvalidToken");

    let missing = send(&h.client, Method::POST, &url, &[], full("{}")).await;
    assert_router_error(&missing, 401, "MissingCredentials");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));

    assert_eq!(pod.stats().requests(), 1, "only the good token got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_past_max_queue_wait_ms_is_503() {
    let (pod, h) = one_pod("max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 200").await;
    let held = h.hold("ep-one", &[]).await;
    h.wait_in_flight("ep-one", "blue", 1).await;

    let r = h.score("ep-one", "").await;
    assert_router_error(&r, 503, "QueueTimeout");
    assert_eq!(r.deployment(), Some("blue"));
    assert_eq!(
        pod.stats().requests(),
        1,
        "only the held request reached the pod"
    );
    assert_eq!(
        h.queue_depth("ep-one", "blue").await,
        0.0,
        "it left the queue"
    );
    assert_eq!(
        count(&h, requests_total("ep-one", "blue", "503", "QueueTimeout")).await,
        1.0
    );

    drop(held);
    h.wait_in_flight("ep-one", "blue", 0).await;
    assert_eq!(h.score("ep-one", "").await.status, 200);
}

#[tokio::test]
async fn no_ready_pod_is_503() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let p = pod.address();
    let cases = [
        "pods: []".to_string(),
        format!("pods: [{{ address: \"{p}\", ready: false }}]"),
        format!("pods: [{{ address: \"{p}\", terminating: true }}]"),
    ];
    for pods in cases {
        let yaml = format!(
            "endpoints:\n{}deployments:\n  - name: blue\n    endpoint: ep-one\n    {pods}\n    request_settings: {{ max_queue_wait_ms: 5000 }}\n",
            endpoint("ep-one", &["traffic: { blue: 100 }"])
        );
        let h = Harness::start(&yaml).await;
        let r = h.score("ep-one", "").await;
        assert_router_error(&r, 503, "NoReadyPod");
        assert_eq!(r.deployment(), Some("blue"), "{pods}");
    }
    assert_eq!(pod.stats().requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429() {
    let (pod, h) = one_pod(
        "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 60000, max_queue_length: 1",
    )
    .await;
    let held = h.hold("ep-one", &[]).await;
    let waiting = h.spawn_score("ep-one", "");
    h.wait_queue_depth("ep-one", "blue", 1).await;

    let r = h.score("ep-one", "").await;
    assert_router_error(&r, 429, "QueueFull");
    assert_eq!(r.deployment(), Some("blue"));
    assert_eq!(h.queue_depth("ep-one", "blue").await, 1.0);

    drop(held);
    let r = guard("the queued request", waiting).await.unwrap();
    assert_eq!(
        r.status, 200,
        "the queued request is served once the slot frees"
    );
    assert_eq!(pod.stats().requests(), 2);
    assert_eq!(
        count(&h, requests_total("ep-one", "blue", "429", "QueueFull")).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_queue_bound_is_one_waiter_per_slot() {
    // Two pods with two slots each: four in flight, four waiting, the ninth is refused.
    let a = SampleModel::start_local("blue").await.unwrap();
    let b = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[a.address(), b.address()],
        "max_concurrent_requests_per_instance: 2, max_queue_wait_ms: 60000",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(h.hold("ep-one", &[]).await);
    }
    h.wait_in_flight("ep-one", "blue", 4).await;
    let mut waiting = Vec::new();
    for i in 1..=4 {
        waiting.push(h.spawn_score("ep-one", ""));
        h.wait_queue_depth("ep-one", "blue", i).await;
    }
    assert_router_error(&h.score("ep-one", "").await, 429, "QueueFull");
    drop(held);
    for w in waiting {
        assert_eq!(guard("a queued request", w).await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_request_timeout_ms_is_504_and_frees_the_slot() {
    let (pod, h) = one_pod(
        "request_timeout_ms: 300, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0",
    )
    .await;
    let r = h.score("ep-one", "?sleep_ms=10000").await;
    assert_router_error(&r, 504, "UpstreamTimeout");
    assert_eq!(r.deployment(), Some("blue"));
    assert_eq!(
        count(
            &h,
            requests_total("ep-one", "blue", "504", "UpstreamTimeout")
        )
        .await,
        1.0
    );
    // The pod is still sleeping, but the router's slot is free again.
    assert_eq!(pod.stats().requests(), 1);
    h.wait_in_flight("ep-one", "blue", 0).await;
    let r = h.score("ep-one", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A pod on one keep-alive connection: answers its first request at once, then reads the
/// next request's head and never answers it. Counts the connections it accepted.
async fn answers_once_then_hangs() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 4096];
                for heads in 1..=2 {
                    while read.windows(4).filter(|w| *w == b"\r\n\r\n").count() < heads {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&buf[..n]),
                        }
                    }
                    if heads == 1 {
                        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        stream.write_all(ok.as_bytes()).await.unwrap();
                    }
                }
                // The second request is never answered; the connection stays open.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    (address, accepted)
}

/// The request timeout's timer is kept with a pooled pod connection and set anew for each
/// request on it: it still fires for a later request on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_fires_on_a_reused_pod_connection() {
    let (pod, accepted) = answers_once_then_hangs().await;
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod],
        "request_timeout_ms: 300, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0",
    ))
    .await;
    assert_eq!(h.score("ep-one", "").await.status, 200);
    let r = guard("the second request", h.score("ep-one", "")).await;
    assert_router_error(&r, 504, "UpstreamTimeout");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "both went on one connection"
    );
}

#[tokio::test]
async fn a_pod_that_resets_is_502_and_the_request_is_not_retried() {
    let a = SampleModel::start_local("blue").await.unwrap();
    let b = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[a.address(), b.address()],
        "max_concurrent_requests_per_instance: 4",
    ))
    .await;
    for _ in 0..5 {
        let r = h.score("ep-one", "?reset=1").await;
        assert_router_error(&r, 502, "UpstreamFailed");
        assert_eq!(r.deployment(), Some("blue"));
    }
    assert_eq!(
        a.stats().requests() + b.stats().requests(),
        5,
        "a request the pod received is never sent again"
    );
    assert_eq!(
        count(
            &h,
            requests_total("ep-one", "blue", "502", "UpstreamFailed")
        )
        .await,
        5.0
    );
    h.wait_in_flight("ep-one", "blue", 0).await;
    assert_eq!(h.score("ep-one", "").await.status, 200);
}

#[tokio::test]
async fn an_invalid_response_is_502() {
    let pod = RawPod::start(RawMode::Respond("this is not HTTP\r\n\r\n")).await;
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], SETTINGS)).await;
    let r = h.score("ep-one", "").await;
    assert_router_error(&r, 502, "UpstreamFailed");
    assert_eq!(pod.requests(), 1);
}

#[tokio::test]
async fn nothing_listening_is_502_after_exactly_one_retry() {
    let dead: Vec<_> = (0..3).map(|_| dead_address()).collect();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &dead,
        "max_concurrent_requests_per_instance: 1",
    ))
    .await;
    let r = h.score("ep-one", "").await;
    assert_router_error(&r, 502, "UpstreamConnectFailed");
    assert_eq!(r.deployment(), Some("blue"));
    let errors = h
        .metric_or_zero(
            "scoregate_upstream_connect_errors_total",
            &[("endpoint", "ep-one"), ("deployment", "blue")],
        )
        .await;
    assert_eq!(
        errors, 2.0,
        "one attempt and one retry, on two different pods"
    );
    h.wait_in_flight("ep-one", "blue", 0).await;

    // A single dead pod: nothing to retry on.
    let h = Harness::start(&simple_routes("ep-one", &dead[..1], SETTINGS)).await;
    assert_router_error(&h.score("ep-one", "").await, 502, "UpstreamConnectFailed");
    let errors = h
        .metric_or_zero(
            "scoregate_upstream_connect_errors_total",
            &[("endpoint", "ep-one"), ("deployment", "blue")],
        )
        .await;
    assert_eq!(errors, 1.0);
}

#[tokio::test]
async fn a_failed_connect_is_retried_on_another_pod() {
    let live = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[dead_address(), live.address()],
        "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0",
    ))
    .await;
    for i in 0..40 {
        let r = h.score("ep-one", "").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(live.stats().requests(), 40);
    let errors = h
        .metric_or_zero(
            "scoregate_upstream_connect_errors_total",
            &[("endpoint", "ep-one"), ("deployment", "blue")],
        )
        .await;
    // P2C puts the dead pod first about half the time; never in 40 tries is a 1e-12 event.
    assert!(errors >= 1.0, "the retry path was exercised ({errors})");
    assert_eq!(
        count(&h, requests_total("ep-one", "blue", "200", "")).await,
        40.0
    );
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_413_before_reaching_the_pod() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start_with(&simple_routes("ep-one", &[pod.address()], SETTINGS), |c| {
        c.limits.max_request_body_bytes = 1024
    })
    .await;
    let auth = format!("Bearer {KEY}");
    let url = h.url("ep-one", "/score");
    let r = send(
        &h.client,
        Method::POST,
        &url,
        &[("authorization", &auth)],
        full(vec![b'x'; 1025]),
    )
    .await;
    assert_router_error(&r, 413, "PayloadTooLarge");
    assert_eq!(r.deployment(), Some("blue"));
    assert_eq!(pod.stats().requests(), 0, "refused before forwarding");

    // Exactly at the limit passes.
    let r = send(
        &h.client,
        Method::POST,
        &url,
        &[("authorization", &auth)],
        full(vec![b'x'; 1024]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["input_bytes"], 1024);
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_413() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start_with(&simple_routes("ep-one", &[pod.address()], SETTINGS), |c| {
        c.limits.max_request_body_bytes = 1024
    })
    .await;
    let auth = format!("Bearer {KEY}");
    let url = h.url("ep-one", "/score");
    let chunks = |n: usize| {
        streamed(futures_util::stream::iter((0..n).map(|_| {
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(&[b'y'; 512])))
        })))
    };
    let r = send(
        &h.client,
        Method::POST,
        &url,
        &[("authorization", &auth)],
        chunks(3),
    )
    .await;
    assert_router_error(&r, 413, "PayloadTooLarge");
    assert_eq!(r.deployment(), Some("blue"));
    assert_eq!(
        pod.stats().scored_bytes(),
        0,
        "the pod never got a whole body"
    );
    h.wait_in_flight("ep-one", "blue", 0).await;

    // Two chunks are exactly the limit and pass, streamed without a Content-Length.
    let r = send(
        &h.client,
        Method::POST,
        &url,
        &[("authorization", &auth)],
        chunks(2),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["input_bytes"], 1024);
}

#[tokio::test]
async fn the_models_500_passes_through_unchanged() {
    let (pod, h) = one_pod(SETTINGS).await;
    let r = h.score("ep-one", "?fail=1").await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        r#"{"message": "An unexpected error occurred in scoring script. Check the logs for more info."}"#,
        "the model's body, not a router error"
    );
    assert_eq!(r.header("x-ms-run-function-failed"), Some("True"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.deployment(), Some("blue"));
    assert!(
        r.header("x-ms-run-fn-exec-ms").is_some(),
        "model headers kept"
    );
    assert_eq!(pod.stats().requests(), 1);
    assert_eq!(
        count(&h, requests_total("ep-one", "blue", "500", "")).await,
        1.0
    );
}

#[tokio::test]
async fn router_errors_carry_the_clients_request_id() {
    let (_pod, h) = one_pod(SETTINGS).await;
    let guid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let r = h
        .score_with(
            "nope",
            "",
            &[
                ("x-request-id", guid),
                ("x-ms-client-request-id", "my id/1"),
            ],
        )
        .await;
    assert_router_error(&r, 404, "EndpointNotFound");
    assert_eq!(r.header("x-request-id"), Some(guid));
    assert_eq!(r.json()["error"]["requestId"], guid);
    assert_eq!(r.header("x-ms-client-request-id"), Some("myid1"));

    // An id that is not a GUID is replaced, in the header and the body alike.
    let r = h
        .score_with("nope", "", &[("x-request-id", "not-a-guid")])
        .await;
    assert_router_error(&r, 404, "EndpointNotFound");
    assert_ne!(r.header("x-request-id"), Some("not-a-guid"));
}

#[tokio::test]
async fn metrics_never_carry_client_chosen_names_or_pod_addresses() {
    let (pod, h) = one_pod(SETTINGS).await;
    let _ = h.score("made-up-endpoint", "").await;
    let _ = h
        .score_with(
            "ep-one",
            "",
            &[("azureml-model-deployment", "made-up-deployment")],
        )
        .await;
    let auth = format!("Bearer {KEY}");
    let _ = send(
        &h.client,
        Method::GET,
        &h.raw_url("/made-up-path"),
        &[("authorization", &auth)],
        empty(),
    )
    .await;
    let _ = h.score("ep-one", "?made-up-query=1").await;
    let _ = h.score("ep-one", "?fail=1").await;
    let text = h.metrics_text().await;
    assert!(text.contains("scoregate_requests_total"), "{text}");
    for secret in [
        "made-up",
        &pod.address().to_string(),
        &pod.address().port().to_string(),
        KEY,
    ] {
        assert!(!text.contains(secret), "{secret:?} in /metrics:\n{text}");
    }
}

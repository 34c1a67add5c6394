//! Routing for LLM deployments (issue 18): the picking policy chosen per deployment in the
//! routes file and in OnlineDeployment resources, prefix affinity on chat-completions bodies,
//! and the streaming latency metrics, against simulated LLM pods over real sockets.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use scoregate::sample_llm::{LlmProfile, SampleLlm, POD_HEADER};
use support::kube::{self, NS};
use support::*;

/// `n` simulated LLM pods on 127.0.0.1, fast (no test waits on a model).
async fn llm_pods(n: usize, profile: LlmProfile) -> Vec<SampleLlm> {
    let mut pods = Vec::new();
    for _ in 0..n {
        pods.push(SampleLlm::start_local(profile.clone()).await.unwrap());
    }
    pods
}

fn fast() -> LlmProfile {
    LlmProfile {
        prefill_per_token: Duration::ZERO,
        decode_step: Duration::from_millis(1),
        ..LlmProfile::default()
    }
}

fn addresses(pods: &[SampleLlm]) -> Vec<SocketAddr> {
    pods.iter().map(SampleLlm::address).collect()
}

/// A deployment entry with `routing` (a flow map).
fn llm_deployment(name: &str, endpoint: &str, pods: &[SocketAddr], routing: &str) -> String {
    let settings = "max_concurrent_requests_per_instance: 8, max_queue_wait_ms: 10000";
    format!(
        "{}    routing: {routing}\n",
        deployment(name, endpoint, pods, settings)
    )
}

/// A chat-completions body for `messages`.
fn chat_body(messages: &[(&str, &str)], stream: bool, max_tokens: u32) -> String {
    let messages: Vec<_> = messages
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    serde_json::json!({"model": "m", "messages": messages, "stream": stream, "max_tokens": max_tokens})
        .to_string()
}

/// Sends one turn of a chat to `url`; returns the pod that answered.
async fn chat(client: &Client, url: &str, messages: &[(&str, &str)]) -> String {
    let headers = [
        ("authorization", &*format!("Bearer {KEY}")),
        ("content-type", "application/json"),
    ];
    let body = full(chat_body(messages, false, 4));
    let resp = send(client, Method::POST, url, &headers, body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.header(POD_HEADER)
        .expect("the pod names itself")
        .to_owned()
}

/// The pods each of `conversations` (4 turns each, sequential) was served by.
async fn conversations(client: &Client, url: &str, conversations: usize) -> Vec<BTreeSet<String>> {
    let mut served = Vec::new();
    for c in 0..conversations {
        let system = format!("You are assistant number {c}. ").repeat(40);
        let mut messages = vec![("system".to_string(), system)];
        let mut pods = BTreeSet::new();
        for turn in 0..4 {
            messages.push((
                "user".into(),
                format!("Question {turn} of conversation {c}?"),
            ));
            let borrowed: Vec<(&str, &str)> = messages
                .iter()
                .map(|(r, m)| (r.as_str(), m.as_str()))
                .collect();
            pods.insert(chat(client, url, &borrowed).await);
            messages.push(("assistant".into(), "An answer.".into()));
        }
        served.push(pods);
    }
    served
}

#[tokio::test]
async fn policy_per_deployment_from_the_routes_file() {
    let (sticky, spread) = (llm_pods(4, fast()).await, llm_pods(4, fast()).await);
    let routes = routes(
        &[
            endpoint("sticky", &["traffic: { chat: 100 }"]),
            endpoint("spread", &["traffic: { chat: 100 }"]),
        ],
        &[
            llm_deployment(
                "chat",
                "sticky",
                &addresses(&sticky),
                "{ policy: prefix_affinity }",
            ),
            llm_deployment(
                "chat",
                "spread",
                &addresses(&spread),
                "{ policy: least_outstanding }",
            ),
        ],
    );
    let h = Harness::start(&routes).await;
    let url = |e| h.url(e, "/v1/chat/completions");
    // Prefix affinity: every turn of a conversation on one pod.
    let sticky_served = conversations(&h.client, &url("sticky"), 6).await;
    for pods in &sticky_served {
        assert_eq!(pods.len(), 1, "a conversation moved between pods: {pods:?}");
    }
    let used: BTreeSet<_> = sticky_served.iter().flatten().collect();
    assert!(
        used.len() > 1,
        "conversations all landed on one pod: {used:?}"
    );
    // Least outstanding with one request at a time: ties are broken at random, so the 24
    // turns are spread (all on one pod has a chance of 4 × 4^-24).
    let spread_served = conversations(&h.client, &url("spread"), 6).await;
    let used: BTreeSet<_> = spread_served.iter().flatten().collect();
    assert!(used.len() > 1, "{used:?}");
    assert!(spread_served.iter().any(|pods| pods.len() > 1));
    // The policy changes with the file, without a restart.
    let applied = h.reloads("applied").await;
    let swapped = routes.replace(
        "{ policy: prefix_affinity }",
        "{ policy: least_outstanding }",
    );
    h.write_routes(&swapped);
    let reloads = (
        "scoregate_table_reloads_total",
        [("source", "file"), ("result", "applied")],
    );
    h.wait_metric(reloads.0, &reloads.1, |n| n > applied).await;
    let after = conversations(&h.client, &url("sticky"), 3).await;
    assert!(after.iter().any(|pods| pods.len() > 1), "{after:?}");
}

#[tokio::test]
async fn a_bad_routing_setting_is_refused_with_its_field() {
    let pods = llm_pods(1, fast()).await;
    let routes = routes(
        &[endpoint("chat", &["traffic: { blue: 100 }"])],
        &[llm_deployment(
            "blue",
            "chat",
            &addresses(&pods),
            "{ policy: pod_load }",
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, &routes).unwrap();
    let error = match scoregate::router::Router::start(base_config(file)).await {
        Ok(_) => panic!("pod_load without podMetrics was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("routing.podMetrics"), "{error}");
}

#[tokio::test]
async fn policy_per_deployment_from_online_deployments() {
    let fake = kube::fake().await;
    let port = kube::free_port();
    let mut pods = Vec::new();
    for i in 1..=3u8 {
        let address = SocketAddr::new(kube::ip(7, i), port);
        pods.push(SampleLlm::start(address, fast()).await.unwrap());
    }
    fake.apply(kube::key_secret(NS, "chat-keys", KEY, None))
        .unwrap();
    fake.apply(kube::endpoint(NS, "chat", "chat-keys", &[("blue", 100)]))
        .unwrap();
    let mut deployment = kube::deployment(NS, "chat", "blue", "blue-svc", port);
    deployment["spec"]["routing"] = serde_json::json!({
        "policy": "prefix_affinity",
        "prefix": {"blockBytes": 64},
        "podMetrics": {"preset": "vllm", "intervalMs": 200},
    });
    fake.apply(deployment).unwrap();
    let ready: Vec<_> = pods
        .iter()
        .map(|p| kube::PodState::ready(p.address().ip()))
        .collect();
    fake.apply(kube::slice(NS, "blue-svc-x1", "blue-svc", port, &ready))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let router = kube::ready_router(kube::router_config(&fake, &[NS], &dir)).await;
    let url = format!(
        "http://{}/api/v1/endpoint/chat/v1/chat/completions",
        router.http_addr().unwrap()
    );
    let client = client();
    eventually("the deployment to be routable", || async {
        kube::routable(&router, "chat")
            .iter()
            .any(|(_, pods)| pods.len() == 3)
    })
    .await;
    for pods in conversations(&client, &url, 4).await {
        assert_eq!(pods.len(), 1, "a conversation moved between pods: {pods:?}");
    }
}

#[tokio::test]
async fn streaming_metrics_against_a_pod_with_known_delays() {
    // Every token takes at least 150 ms: the first byte of the body comes after at least one
    // step, and each gap between tokens is at least one step.
    let step = Duration::from_millis(150);
    let profile = LlmProfile {
        prefill_per_token: Duration::ZERO,
        decode_step: step,
        ..LlmProfile::default()
    };
    let pods = llm_pods(1, profile).await;
    let routes = simple_routes("chat", &addresses(&pods), "max_queue_wait_ms: 1000");
    let h = Harness::start(&routes).await;
    let headers = [("authorization", &*format!("Bearer {KEY}"))];
    let body = full(chat_body(&[("user", "hello")], true, 3));
    let url = h.url("chat", "/v1/chat/completions");
    let resp = send(&h.client, Method::POST, &url, &headers, body).await;
    assert_eq!(resp.status, 200);
    assert!(resp.text().ends_with("data: [DONE]\n\n"), "{}", resp.text());
    let labels = [("endpoint", "chat"), ("deployment", "blue")];
    h.wait_metric(
        "scoregate_response_first_byte_seconds_count",
        &labels,
        |n| n >= 1.0,
    )
    .await;
    let text = h.metrics_text().await;
    let value = |name: &str| metric_value(&text, name, &labels).unwrap_or(f64::NAN);
    assert!(value("scoregate_response_first_byte_seconds_sum") >= step.as_secs_f64());
    // Three tokens, then `[DONE]`: at least two gaps of a step each.
    let gaps = value("scoregate_response_chunk_gap_seconds_count");
    assert!((2.0..=3.0).contains(&gaps), "{gaps} gaps");
    assert!(value("scoregate_response_chunk_gap_seconds_sum") >= 2.0 * step.as_secs_f64());
    let chunks = value("scoregate_response_chunks_sum");
    assert!((3.0..=4.0).contains(&chunks), "{chunks} chunks");
    assert_eq!(value("scoregate_response_chunks_count"), 1.0);
}

#[tokio::test]
async fn pod_scrapes_are_counted_by_outcome_and_a_failing_pod_never_blocks_routing() {
    let pods = llm_pods(1, fast()).await;
    let dead = dead_address();
    let routing = "{ policy: pod_load, pod_metrics: { preset: vllm, interval_ms: 100 } }";
    let routes = routes(
        &[endpoint("chat", &["traffic: { blue: 100 }"])],
        &[llm_deployment(
            "blue",
            "chat",
            &[pods[0].address(), dead],
            routing,
        )],
    );
    let h = Harness::start(&routes).await;
    let labels = |outcome| {
        [
            ("endpoint", "chat"),
            ("deployment", "blue"),
            ("outcome", outcome),
        ]
    };
    let name = "scoregate_pod_scrapes_total";
    // The live pod's page is read, the dead address's refused, round after round.
    h.wait_metric(name, &labels("ok"), |n| n >= 2.0).await;
    h.wait_metric(name, &labels("failed"), |n| n >= 2.0).await;
    assert_eq!(h.metric_or_zero(name, &labels("timeout")).await, 0.0);
    // Requests are still routed: to the live pod, or, for the dead one, retried on the live one.
    let url = h.url("chat", "/v1/chat/completions");
    for turn in 0..4 {
        let question = format!("Question {turn}?");
        assert_eq!(
            chat(&h.client, &url, &[("user", &question)]).await,
            pods[0].address().to_string()
        );
    }
}

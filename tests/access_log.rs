//! One access-log line per request, with the request id the client saw, for routed requests
//! (written when the response body ends or the client goes away) and for the router's own
//! errors alike. Its own test binary: it installs the process-wide tracing subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use scoregate::sample_model::SampleModel;
use support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("scoregate::access=info")
            .with_writer(move || writer.clone())
            .init();
        capture
    })
}

/// The access-log lines (as JSON) that carry `request_id`.
fn lines_for(request_id: &str) -> Vec<serde_json::Value> {
    let text = String::from_utf8(captured().0.lock().unwrap().clone()).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "scoregate::access" && v["request_id"] == request_id)
        .collect()
}

async fn the_line_for(request_id: &str) -> serde_json::Value {
    guard("the access-log line", async {
        loop {
            let lines = lines_for(request_id);
            if !lines.is_empty() {
                // Give a duplicate the chance to show up, then insist there is one line.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let lines = lines_for(request_id);
                assert_eq!(lines.len(), 1, "one line per request: {lines:#?}");
                return lines.into_iter().next().unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_access_log_line_with_its_request_id() {
    captured();
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod.address()],
        "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0, request_timeout_ms: 1000",
    ))
    .await;

    let ok = h
        .score_with("ep-one", "?x=1", &[("user-agent", "access-log-test/1.0")])
        .await;
    let id = ok.header("x-request-id").unwrap();
    let line = the_line_for(id).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["endpoint"], "ep-one", "{line}");
    assert_eq!(line["deployment"], "blue", "{line}");
    assert_eq!(line["complete"], true, "{line}");
    assert_eq!(line["source"], "model", "{line}");
    assert_eq!(line["pod"], pod.address().to_string(), "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/api/v1/endpoint/ep-one/score?x=1", "{line}");
    assert_eq!(line["user_agent"], "access-log-test/1.0", "{line}");
    assert!(
        line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    for field in ["total_ms", "upstream_ms", "queue_ms", "response_bytes"] {
        assert!(line[field].is_number(), "{field}: {line}");
    }
    assert!(line.get("code").is_none(), "the model answered: {line}");
    assert!(
        line.get("ttft_ms").is_none(),
        "a body of known length: {line}"
    );

    // A streamed answer (server-sent events) is timed: first byte, chunks, longest gap.
    let streamed = h
        .score("ep-one", "?stream_events=3&event_interval_ms=20")
        .await;
    let line = the_line_for(streamed.header("x-request-id").unwrap()).await;
    assert!(line["ttft_ms"].as_f64().unwrap() > 0.0, "{line}");
    let chunks = line["chunks"].as_u64().unwrap();
    assert!((1..=3).contains(&chunks), "{line}");
    assert!(line["max_gap_ms"].is_number(), "{line}");

    let failed = h.score("ep-one", "?fail=1").await;
    let line = the_line_for(failed.header("x-request-id").unwrap()).await;
    assert_eq!(line["status"], 500, "{line}");

    let unknown = h.score("no-such-endpoint", "").await;
    let line = the_line_for(unknown.header("x-request-id").unwrap()).await;
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["code"], "EndpointNotFound", "{line}");
    assert_eq!(line["source"], "router", "{line}");
    assert_eq!(
        line["endpoint"], "no-such-endpoint",
        "the name asked for: {line}"
    );
    for field in ["client", "method", "path", "request_id", "total_ms"] {
        assert!(!line[field].is_null(), "{field}: {line}");
    }

    // A wrong key: the line names the endpoint targeted and the client (key guessing can be
    // traced), and the credential appears nowhere.
    let refused = send(
        &h.client,
        http::Method::POST,
        &h.url("ep-one", "/score"),
        &[("authorization", "Bearer not-the-key-0123456789")],
        empty(),
    )
    .await;
    let line = the_line_for(refused.header("x-request-id").unwrap()).await;
    assert_eq!(
        (line["status"].as_u64(), line["code"].as_str()),
        (Some(401), Some("InvalidKey")),
        "{line}"
    );
    assert_eq!(line["endpoint"], "ep-one", "{line}");
    assert!(
        line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(!line.to_string().contains("not-the-key"), "{line}");

    // A pod too slow for request_timeout_ms: the 504's line names the pod and the times.
    let slow = h.score("ep-one", "?sleep_ms=3000").await;
    let line = the_line_for(slow.header("x-request-id").unwrap()).await;
    assert_eq!(line["code"], "UpstreamTimeout", "{line}");
    assert_eq!(line["pod"], pod.address().to_string(), "{line}");
    assert!(line["upstream_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert!(line["queue_ms"].is_number(), "{line}");

    // The timed-out request keeps its slot while the pod computes on (at most
    // request_timeout_ms more).
    h.wait_in_flight("ep-one", "blue", 0).await;
    // A client that goes away mid-response still gets its line, marked incomplete.
    let guid = "0b7c1b0e-8f1c-4c53-9a55-2d7f4f0c9e11";
    let held = h.hold("ep-one", &[("x-request-id", guid)]).await;
    assert_eq!(held.headers["x-request-id"], guid);
    let busy = h.score("ep-one", "").await;
    let line = the_line_for(busy.header("x-request-id").unwrap()).await;
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["deployment"], "blue", "{line}");
    assert!(
        lines_for(guid).is_empty(),
        "not written before the body ends"
    );
    drop(held);
    let line = the_line_for(guid).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["complete"], false, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_before_the_answer_gets_a_499_line_and_sample() {
    captured();
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes(
        "ep-one",
        &[pod.address()],
        "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 10000",
    ))
    .await;
    let guid = "5d0f6c1a-3b2e-4f7a-9c8d-1e2f3a4b5c6d";
    let auth = format!("Bearer {KEY}");
    let gone = raw_open(
        h.http,
        "/api/v1/endpoint/ep-one/score?sleep_ms=300",
        &[("authorization", &auth), ("x-request-id", guid)],
    )
    .await;
    h.wait_in_flight("ep-one", "blue", 1).await;
    drop(gone);
    let line = the_line_for(guid).await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["code"], "ClientClosedRequest", "{line}");
    assert_eq!(line["deployment"], "blue", "{line}");
    assert!(
        line["total_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{line}"
    );
    let labels = [
        ("endpoint", "ep-one"),
        ("deployment", "blue"),
        ("code", "499"),
        ("source", "router"),
        ("error", "ClientClosedRequest"),
    ];
    let text = h.metrics_text().await;
    let gone = metric_value(&text, "scoregate_requests_total", &labels);
    assert_eq!(gone, Some(1.0), "{text}");
}

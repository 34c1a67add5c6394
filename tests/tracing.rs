//! W3C trace context and span export: a client's `traceparent` is accepted and propagated to
//! the pod, one is created when absent (its trace id is the request id), and with an OTLP
//! endpoint each request is exported as a server span with `queue` and `upstream` children, to
//! a small OTLP/HTTP receiver run by the test (protobuf, decoded with `opentelemetry-proto`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use scoregate::sample_model::SampleModel;
use support::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// An OTLP/HTTP receiver: keeps every span posted to it.
struct Receiver {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for resource in export.resource_spans {
                                for scope in resource.scope_spans {
                                    kept.lock().unwrap().extend(scope.spans);
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { address, spans }
    }

    async fn spans_of(&self, trace_id: &str, count: usize) -> Vec<Span> {
        guard("the exported spans", async {
            loop {
                let spans: Vec<Span> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| hex(&s.trace_id) == trace_id)
                    .cloned()
                    .collect();
                if spans.len() >= count {
                    return spans;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pod_saw(pod: &SampleModel, name: &str) -> Option<String> {
    pod.stats()
        .last_headers()
        .and_then(|h| h.get(name).map(|v| v.to_str().unwrap().to_owned()))
}

#[tokio::test]
async fn without_export_the_clients_context_passes_and_a_new_one_is_the_request_id() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], "")).await;
    let r = h
        .score_with(
            "ep-one",
            "",
            &[("traceparent", PARENT), ("tracestate", "vendor=1")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        pod_saw(&pod, "traceparent").as_deref(),
        Some(PARENT),
        "unchanged"
    );
    assert_eq!(pod_saw(&pod, "tracestate").as_deref(), Some("vendor=1"));
    assert_eq!(
        r.header("x-request-id"),
        Some("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"),
        "no request id from the client: the trace id is the request id"
    );

    let r = h.score("ep-one", "").await;
    let request_id = r.header("x-request-id").unwrap().replace('-', "");
    let sent = pod_saw(&pod, "traceparent").unwrap();
    assert_eq!(
        &sent[3..35],
        request_id,
        "a new trace's id is the request id"
    );
    assert!(sent.starts_with("00-") && sent.ends_with("-00"), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_each_request_is_a_span_with_queue_and_upstream_children() {
    let receiver = Receiver::start().await;
    let pod = SampleModel::start_local("blue").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", receiver.address);
    let h = Harness::start_with(&simple_routes("ep-one", &[pod.address()], ""), |c| {
        c.tracing.otlp_endpoint = Some(endpoint);
    })
    .await;
    let r = h.score_with("ep-one", "", &[("traceparent", PARENT)]).await;
    assert_eq!(r.status, 200);
    let sent = pod_saw(&pod, "traceparent").unwrap();
    assert!(
        sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-01"),
        "{sent}"
    );
    let spans = receiver.spans_of(TRACE_ID, 3).await;
    let server = spans
        .iter()
        .find(|s| s.name.starts_with("POST "))
        .expect("the server span");
    assert_eq!(server.name, "POST /api/v1/endpoint/ep-one/score");
    assert_eq!(
        hex(&server.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span is its parent"
    );
    let child = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let (queue, upstream) = (child("queue"), child("upstream"));
    assert_eq!(queue.parent_span_id, server.span_id);
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(
        hex(&upstream.span_id),
        &sent[36..52],
        "the pod's parent is the upstream span"
    );
    assert!(queue.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(upstream.end_time_unix_nano <= server.end_time_unix_nano);

    // A new trace, and a request the router refuses, are exported too.
    let refused = send(
        &h.client,
        Method::POST,
        &h.url("ep-one", "/score"),
        &[],
        empty(),
    )
    .await;
    assert_eq!(refused.status, 401);
    let trace = refused.header("x-request-id").unwrap().replace('-', "");
    let spans = receiver.spans_of(&trace, 1).await;
    let status = spans[0].status.as_ref().expect("an error status");
    assert_eq!(status.message, "MissingCredentials");
}

//! Micro-benchmarks of the request path's pieces (issue 6).
//!
//! - `request_path`: step 1 (target parse) + 2 (snapshot) + 3 (key auth) + 4 (weighted choice)
//!   + 5 (admission, fast path) and the slot's release, on a table of 10,000 endpoints.
//! - `p2c_admission`: taking and releasing a slot among 1,000 pods, idle and loaded.
//! - `picking`: what each routing policy costs to choose among 1,000 pods, half of them busy
//!   (the choice only: admission's slot is measured above), and prefix affinity's key of a
//!   4 KiB chat-completions body.
//! - `http1_codec`: the byte-level HTTP/1 path's pieces on a typical scoring exchange: the
//!   request head checked and indexed in one pass, rewritten for the pod, the pod's response
//!   head parsed and written for the client, and a chunked body decoded and re-chunked.
//! - `table_rebuild`: publishing a table that differs from the current one in one pod, at
//!   10,000 endpoints × 10 pods: comparing the whole spec (the routes file) and rebuilding only
//!   the endpoint a watch named (Kubernetes discovery).
//!
//! Run with `cargo bench --bench hot_path` (add `-- p2c` to run one group). The figures are
//! for comparing revisions on the same machine: nothing here asserts a timing.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};

use scoregate::admission::{Candidates, DeploymentAdmission, Pod, Policy, PowerOfTwoChoices};
use scoregate::http1::body::{BodyDecoder, BodyEncoder};
use scoregate::http1::chunked::Chunk;
use scoregate::http1::head::{HeadLimits, Known, RequestHead};
use scoregate::http1::relay::{relayed_head, Change};
use scoregate::http1::reply::{Asked, BodyLength};
use scoregate::http1::response::{Parsed, ResponseFraming, ResponseHead};
use scoregate::http1::write;
use scoregate::model::PrefixSettings;
use scoregate::model::{
    AuthMode, DeploymentSpec, EndpointKeys, EndpointSpec, OutlierDetection, PodSpec,
    RequestSettings, RouteSpec,
};
use scoregate::picking::{
    LeastOutstanding, PodLoadAware, PodLoads, PrefixAffinity, PrefixKey, Report,
};
use scoregate::proxy::target;
use scoregate::table::{TableBuilder, TableHandle};
use scoregate::telemetry::Metrics;

/// Endpoints in the large tables.
const ENDPOINTS: usize = 10_000;

fn endpoint_name(i: usize) -> String {
    format!("ep-{i:05}")
}

fn primary_key(i: usize) -> String {
    format!("primary-key-{i:05}-0123456789abcdef")
}

/// A distinct pod address per (endpoint, deployment, pod).
fn pod_address(endpoint: usize, deployment: usize, pod: usize) -> SocketAddr {
    let n = (endpoint * 16 + deployment * 8 + pod) as u32;
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | n), 5001))
}

/// `endpoints` endpoints in key mode, each with the given deployments (name, traffic percent)
/// of `pods` ready pods each, `cap` slots per pod.
fn route_spec(endpoints: usize, deployments: &[(&str, u8)], pods: usize, cap: u32) -> RouteSpec {
    let mut spec = RouteSpec::default();
    for e in 0..endpoints {
        let name = endpoint_name(e);
        spec.endpoints.insert(
            name.clone(),
            EndpointSpec {
                name: name.clone(),
                auth_mode: AuthMode::Key,
                keys: EndpointKeys {
                    primary: primary_key(e),
                    secondary: Some(format!("secondary-key-{e:05}-0123456789abcdef")),
                },
                traffic: deployments
                    .iter()
                    .map(|(d, p)| (d.to_string(), *p))
                    .collect(),
                mirror_traffic: BTreeMap::new(),
            },
        );
        for (d, (deployment, _)) in deployments.iter().enumerate() {
            spec.deployments.insert(
                (name.clone(), deployment.to_string()),
                DeploymentSpec {
                    name: deployment.to_string(),
                    endpoint: name.clone(),
                    pods: (0..pods)
                        .map(|p| PodSpec::ready(pod_address(e, d, p)))
                        .collect(),
                    settings: RequestSettings {
                        max_concurrent_requests_per_instance: cap,
                        ..RequestSettings::default()
                    },
                    outlier_detection: OutlierDetection::default(),
                    routing: Default::default(),
                },
            );
        }
    }
    spec.validate()
        .unwrap_or_else(|errors| panic!("the bench spec is invalid: {errors:?}"));
    spec
}

/// One client request as the proxy sees it before routing: a path and its headers.
struct Request {
    path: String,
    headers: HeaderMap,
}

fn request(endpoint: usize) -> Request {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", primary_key(endpoint))).unwrap(),
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Request {
        path: format!("/api/v1/endpoint/{}/score", endpoint_name(endpoint)),
        headers,
    }
}

/// Steps 1–5 for one request; the slot is released when it goes out of scope.
fn route_once(table: &TableHandle, request: &Request) {
    let (endpoint, rest) = target::from_path(&request.path).expect("a scoring path");
    let snapshot = table.load();
    let endpoint = snapshot.endpoint(endpoint).expect("a known endpoint");
    endpoint
        .auth
        .check(
            request
                .headers
                .get(AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )
        .expect("the primary key");
    let deployment = endpoint.choose().expect("a deployment with traffic");
    let slot = deployment
        .admission
        .try_acquire(&deployment.pods)
        .expect("a free slot");
    black_box((rest, slot.pod().address()));
}

fn request_path(c: &mut Criterion) {
    // Two deployments split 90/10, as during a blue/green rollout, three pods each.
    let spec = route_spec(ENDPOINTS, &[("blue", 90), ("green", 10)], 3, 100);
    let mut builder = TableBuilder::new(TableHandle::default(), Metrics::new());
    builder.publish(&spec);
    let table = builder.handle().clone();
    assert_eq!(table.load().len(), ENDPOINTS);
    let requests: Vec<Request> = (0..ENDPOINTS).map(request).collect();

    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_auth_choose_admit/10k_endpoints_rotating", |b| {
        let mut i = 0;
        b.iter(|| {
            // Every request for another endpoint, so lookups miss the cache as real traffic would.
            i = (i + 7919) % ENDPOINTS;
            route_once(&table, &requests[i]);
        })
    });
    group.bench_function("parse_auth_choose_admit/10k_endpoints_one_hot", |b| {
        let hot = &requests[ENDPOINTS / 2];
        b.iter(|| route_once(&table, black_box(hot)))
    });
    group.finish();
}

fn pods(n: usize) -> Box<[Arc<Pod>]> {
    (0..n)
        .map(|i| Arc::new(Pod::new(pod_address(i, 0, 0))))
        .collect()
}

fn p2c_admission(c: &mut Criterion) {
    const PODS: usize = 1_000;
    const CAP: u32 = 4;
    let mut group = c.benchmark_group("p2c_admission");
    group.throughput(Throughput::Elements(1));

    let idle = pods(PODS);
    let admission = DeploymentAdmission::new(CAP, None);
    admission.update(CAP, None, idle.clone());
    group.bench_function("1000_pods/idle", |b| {
        b.iter(|| drop(black_box(admission.try_acquire(&idle).expect("free"))))
    });

    // 90 % of the pods at their cap: the two samples often both miss, so the scan runs.
    let loaded = pods(PODS);
    let admission = DeploymentAdmission::new(CAP, None);
    admission.update(CAP, None, loaded.clone());
    let mut held = Vec::new();
    for i in 0..PODS * 9 / 10 {
        let pod = &loaded[(i * 10 / 9) % PODS..][..1];
        for _ in 0..CAP {
            held.push(admission.try_acquire(pod).expect("free"));
        }
    }
    group.bench_function("1000_pods/90pct_full", |b| {
        b.iter(|| drop(black_box(admission.try_acquire(&loaded).expect("free"))))
    });

    // Every pod at its cap: what a request pays before it queues.
    let full = pods(PODS);
    let admission = DeploymentAdmission::new(CAP, None);
    admission.update(CAP, None, full.clone());
    let mut held_full = Vec::new();
    while let Some(slot) = admission.try_acquire(&full) {
        held_full.push(slot);
    }
    assert_eq!(held_full.len(), PODS * CAP as usize);
    group.bench_function("1000_pods/all_full", |b| {
        b.iter(|| black_box(admission.try_acquire(&full)).is_none())
    });
    group.finish();
    drop((held, held_full));
}

fn picking(c: &mut Criterion) {
    const PODS: usize = 1_000;
    const CAP: u32 = 8;
    let mut group = c.benchmark_group("picking");
    group.throughput(Throughput::Elements(1));
    let pods = pods(PODS);
    let admission = DeploymentAdmission::new(CAP, None);
    admission.update(CAP, None, pods.clone());
    // Half the pods busy, 1 to 7 requests each.
    let mut held = Vec::new();
    for (i, pod) in pods.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        for _ in 0..(1 + i % 7) {
            held.push(
                admission
                    .try_acquire(std::slice::from_ref(pod))
                    .expect("free"),
            );
        }
    }
    let candidates = Candidates::new(&pods, CAP, None);
    let loads = PodLoads::new(Duration::from_secs(2), Duration::from_secs(5));
    loads.publish(
        pods.iter()
            .enumerate()
            .map(|(i, pod)| {
                let report = Report {
                    running: (i % 5) as f64,
                    waiting: (i % 3) as f64,
                    kv_usage: Some(0.5),
                    token_latency: None,
                    seconds_per_token: Some(0.02 + (i % 4) as f64 * 0.01),
                    ours_at_scrape: pod.in_flight(),
                    at: std::time::Instant::now(),
                };
                (pod.address(), report)
            })
            .collect(),
    );
    let policies: [(&str, Box<dyn Policy>); 3] = [
        ("power_of_two_choices", Box::new(PowerOfTwoChoices)),
        ("least_outstanding", Box::new(LeastOutstanding)),
        ("pod_load", Box::new(PodLoadAware::new(loads.clone()))),
    ];
    for (name, policy) in &policies {
        group.bench_function(format!("1000_pods/{name}"), |b| {
            b.iter(|| black_box(policy.choose(&candidates)))
        });
    }
    let key = PrefixKey::of(&PrefixSettings::default());
    let system = "You are a helpful assistant for a bank. ".repeat(80);
    let body = serde_json::json!({"model": "m", "stream": true, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "What is my balance?"}]})
    .to_string();
    group.bench_function("prefix_key/4KiB_chat_body", |b| {
        b.iter(|| black_box(key.body_blocks(black_box(body.as_bytes()))))
    });
    let affinity = PrefixAffinity::new(65_536, Some(loads));
    for conversation in 0..2_000u64 {
        let blocks: Vec<u64> = (0..16).map(|b| conversation * 1_000 + b).collect();
        affinity.served(&blocks, &pods[conversation as usize % PODS]);
    }
    let blocks = key.body_blocks(body.as_bytes());
    affinity.served(&blocks, &pods[1]);
    group.bench_function("1000_pods/prefix_affinity", |b| {
        b.iter(|| black_box(affinity.pick(&candidates, black_box(&blocks))))
    });
    group.finish();
    drop(held);
}

fn table_rebuild(c: &mut Criterion) {
    const PODS: usize = 10;
    let before = route_spec(ENDPOINTS, &[("blue", 100)], PODS, 1);
    // The same routes with one pod of one deployment no longer ready, as an EndpointSlice
    // update would report it.
    let mut after = before.clone();
    let key = (endpoint_name(ENDPOINTS / 2), "blue".to_string());
    after
        .deployments
        .get_mut(&key)
        .expect("the deployment")
        .pods[3]
        .ready = false;

    let mut builder = TableBuilder::new(TableHandle::default(), Metrics::new());
    builder.publish(&before);
    let mut group = c.benchmark_group("table_rebuild");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    // The file source: the whole new spec is compared with the last one.
    group.bench_function(
        "10k_endpoints_x_10_pods/one_pod_changed/full_compare",
        |b| {
            let mut flip = false;
            b.iter(|| {
                flip = !flip;
                let report = builder.publish(if flip { &after } else { &before });
                debug_assert_eq!(report.endpoints_rebuilt, 1);
                black_box(report)
            })
        },
    );
    // Kubernetes discovery: the watch says which endpoint changed.
    let changed = key.0.clone();
    group.bench_function("10k_endpoints_x_10_pods/one_pod_changed/incremental", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            let spec = if flip { &after } else { &before };
            let report = builder.publish_changed(spec, [changed.as_str()]);
            debug_assert_eq!(report.endpoints_rebuilt, 1);
            black_box(report)
        })
    });
    group.finish();
}

/// A scoring request as a client library sends it.
const SCORE_HEAD: &[u8] =
    b"POST /api/v1/endpoint/ep-00042/score HTTP/1.1\r\nHost: ml.example.com\r\n\
    User-Agent: python-requests/2.32.3\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n\
    Connection: keep-alive\r\nAuthorization: Bearer primary-key-00042-0123456789abcdef\r\n\
    Content-Type: application/json\r\nContent-Length: 46\r\n\r\n";

/// The model's answer, as the Azure ML inference server (gunicorn) sends it.
const SCORE_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\n\
    Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n\
    Content-Type: application/json\r\nContent-Length: 107\r\nx-ms-run-function-failed: False\r\n\r\n";

fn http1_codec(c: &mut Criterion) {
    let limits = HeadLimits {
        max_header_bytes: 64 * 1024,
        max_headers: 100,
    };
    let mut group = c.benchmark_group("http1_codec");
    group.throughput(Throughput::Elements(1));
    let request_bytes = bytes::Bytes::from_static(SCORE_HEAD);
    group.bench_function("request_head_parse", |b| {
        b.iter(|| RequestHead::parse(black_box(request_bytes.clone()), limits).unwrap())
    });
    let head = RequestHead::parse(request_bytes.clone(), limits).unwrap();
    let mut out = Vec::with_capacity(1024);
    group.bench_function("request_head_rewrite", |b| {
        b.iter(|| {
            out.clear();
            let path = target::from_path(head.path()).unwrap().1;
            write::forward_request(
                &mut out,
                black_box(&head),
                &[path.as_bytes()],
                |known| known == Known::Authorization,
                |w| {
                    w.field(b"x-forwarded-for", b"10.1.2.3");
                    w.field(b"x-forwarded-proto", b"http");
                    w.field(b"x-request-id", b"3f2504e0-4f89-11d3-9a0c-0305e82c3301");
                },
            )
        })
    });
    let asked = Asked {
        head_request: false,
        keep_alive: true,
    };
    let changes = [Change {
        name: b"azureml-model-deployment",
        value: Some(b"blue"),
    }];
    group.bench_function("response_head_parse_and_write", |b| {
        b.iter(|| {
            out.clear();
            let Ok(Parsed::Complete(response, _)) =
                ResponseHead::parse(black_box(SCORE_RESPONSE), false)
            else {
                panic!("the response parses");
            };
            let length = match response.framing() {
                ResponseFraming::Length(n) => BodyLength::Known(n),
                _ => BodyLength::Unknown,
            };
            relayed_head(&mut out, &response, SCORE_RESPONSE, &changes, length, asked)
        })
    });
    let chunked: Vec<u8> = (0..16)
        .flat_map(|_| b"100\r\n".iter().chain(&[b'x'; 256]).chain(b"\r\n"))
        .chain(b"0\r\n\r\n")
        .copied()
        .collect();
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("chunked_body_4k_reframe", |b| {
        b.iter(|| {
            out.clear();
            let mut decoder = BodyDecoder::chunked(1024);
            let mut input = black_box(chunked.as_slice());
            loop {
                let (used, found) = decoder.decode(input).unwrap();
                if let Chunk::Data(data) = found {
                    BodyEncoder::Chunked.encode(data, &mut out);
                }
                input = &input[used..];
                if found == Chunk::End {
                    break;
                }
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    request_path,
    p2c_admission,
    picking,
    http1_codec,
    table_rebuild
);
criterion_main!(benches);

//! The LLM routing benchmark: every picking policy against the same simulated LLM pods and the
//! same multi-turn chat workload, side by side, with one pod slowed down 3× as a second scenario.
//!
//! ```text
//! benches/llm/run.sh            # or: cargo bench --bench llm -- [--duration 60] [--load 0.7] [--out FILE]
//! ```
//!
//! One process runs a router (in-process, from a routes file), one endpoint per scenario with
//! its own four fresh simulated pods (`scoregate::sample_llm`), and the workload
//! (`workload.rs`); scenarios run one after another with the same seed. Each request is a
//! streamed chat completion; time to first token is measured at the client, from sending the
//! request to the first content event.
//!
//! The load is calibrated first: the same workload, closed-loop with enough requests in flight
//! to fill every pod's batch twice over, through P2C on four fresh equal pods, measures what the
//! pods sustain; the scenarios then run Poisson arrivals at `--load` (default 0.7) of that
//! (`--rate` sets the rate directly and skips the calibration).

mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use scoregate::config::RouterConfig;
use scoregate::router::Router;
use scoregate::sample_llm::{LlmProfile, SampleLlm};
use tokio::sync::mpsc;

use workload::{Shape, Turn, Workload};

const KEY: &str = "bench-key-0123456789abcdef";
const PODS: usize = 4;
const SLOWDOWN: f64 = 3.0;
/// The router's cap per pod (twice the simulated pod's batch: the pods queue the rest).
const CAP: u32 = 32;
/// Requests in flight while measuring capacity: every pod's batch filled twice over (the
/// router's cap of all four pods).
const CLOSED_LOOP: usize = PODS * CAP as usize;
/// How long the capacity is measured, after the warm-up.
const CALIBRATION_TIME: Duration = Duration::from_secs(20);

/// The calibration's endpoint: equal pods, P2C.
const CALIBRATION: Scenario = Scenario {
    name: "capacity",
    routing: "{ policy: power_of_two_choices }",
    slow_pod: false,
};

/// One scenario: a policy, and whether one pod is slowed down.
struct Scenario {
    name: &'static str,
    routing: &'static str,
    slow_pod: bool,
}

const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "p2c",
        routing: "{ policy: power_of_two_choices }",
        slow_pod: false,
    },
    Scenario {
        name: "least",
        routing: "{ policy: least_outstanding }",
        slow_pod: false,
    },
    Scenario {
        name: "podload",
        routing: "{ policy: pod_load, pod_metrics: { preset: vllm, interval_ms: 250 } }",
        slow_pod: false,
    },
    Scenario {
        name: "prefix",
        routing: "{ policy: prefix_affinity, pod_metrics: { preset: vllm, interval_ms: 250 } }",
        slow_pod: false,
    },
    Scenario {
        name: "p2c-slow",
        routing: "{ policy: power_of_two_choices }",
        slow_pod: true,
    },
    Scenario {
        name: "least-slow",
        routing: "{ policy: least_outstanding }",
        slow_pod: true,
    },
    Scenario {
        name: "podload-slow",
        routing: "{ policy: pod_load, pod_metrics: { preset: vllm, interval_ms: 250 } }",
        slow_pod: true,
    },
    Scenario {
        name: "prefix-slow",
        routing: "{ policy: prefix_affinity, pod_metrics: { preset: vllm, interval_ms: 250 } }",
        slow_pod: true,
    },
];

struct Options {
    duration: Duration,
    warmup: Duration,
    rate: Option<f64>,
    load: f64,
    seed: u64,
    out: Option<PathBuf>,
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        duration: Duration::from_secs(60),
        warmup: Duration::from_secs(10),
        rate: None,
        load: 0.7,
        seed: 18,
        out: None,
        only: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--duration" => {
                o.duration = Duration::from_secs(value.parse().expect("--duration SECONDS"))
            }
            "--warmup" => o.warmup = Duration::from_secs(value.parse().expect("--warmup SECONDS")),
            "--rate" => o.rate = Some(value.parse().expect("--rate REQUESTS_PER_SECOND")),
            "--load" => o.load = value.parse().expect("--load SHARE_OF_CAPACITY"),
            "--seed" => o.seed = value.parse().expect("--seed N"),
            "--out" => o.out = Some(PathBuf::from(value)),
            "--only" => o.only = Some(value),
            // `cargo bench` passes `--bench`.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// What one request measured.
struct Sample {
    sent: Instant,
    ttft: Option<Duration>,
    total: Duration,
    tokens: usize,
    ok: bool,
}

/// One scenario's figures.
struct Figures {
    requests: usize,
    errors: usize,
    ttft_p50: f64,
    ttft_p99: f64,
    e2e_p50: f64,
    throughput: f64,
    tokens_per_s: f64,
    cache_hit: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends one turn as a streamed chat completion; returns the answer text and the measures.
async fn send(client: &HttpClient, url: &str, turn: &Turn) -> (String, Sample) {
    let messages: Vec<_> = turn
        .conversation
        .messages
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    let body = serde_json::json!({"model": "sample-llm", "stream": true, "max_tokens": turn.max_tokens, "messages": messages});
    let request = Request::post(url)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    let sent = Instant::now();
    let mut sample = Sample {
        sent,
        ttft: None,
        total: Duration::ZERO,
        tokens: 0,
        ok: false,
    };
    let mut answer = String::new();
    let Ok(response) = client.request(request).await else {
        sample.total = sent.elapsed();
        return (answer, sample);
    };
    let ok_status = response.status() == StatusCode::OK;
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Some(data) = frame.data_ref() else {
            continue;
        };
        sample.ttft.get_or_insert_with(|| sent.elapsed());
        pending.extend_from_slice(data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            if let Some(token) = content_of(&event) {
                answer.push_str(&token);
                sample.tokens += 1;
            }
        }
    }
    sample.total = sent.elapsed();
    sample.ok = ok_status && sample.tokens > 0;
    (answer, sample)
}

/// The content of one `data: {chunk}` event.
fn content_of(event: &[u8]) -> Option<String> {
    let data = std::str::from_utf8(event)
        .ok()?
        .trim()
        .strip_prefix("data: ")?;
    let chunk: serde_json::Value = serde_json::from_str(data).ok()?;
    chunk["choices"][0]["delta"]["content"]
        .as_str()
        .map(str::to_owned)
}

/// How requests arrive.
#[derive(Clone, Copy)]
enum Arrivals {
    /// Poisson arrivals at this many per second.
    Open(f64),
    /// A new request as soon as one ends, this many in flight.
    Closed(usize),
}

/// Sends `turn` in its own task; its result comes back on `done`.
fn launch(client: &HttpClient, url: &str, turn: Turn, done: &mpsc::UnboundedSender<Done>) {
    let (client, url, done) = (client.clone(), url.to_owned(), done.clone());
    tokio::spawn(async move {
        let (answer, sample) = send(&client, &url, &turn).await;
        let _ = done.send((turn, answer, sample));
    });
}

type Done = (Turn, String, Sample);

/// Runs the workload against `url` for the warm-up and `duration`; returns every sample sent
/// after the warm-up.
async fn drive(
    client: &HttpClient,
    url: &str,
    o: &Options,
    arrivals: Arrivals,
    duration: Duration,
) -> Vec<Sample> {
    let mut workload = Workload::new(Shape::default(), o.seed);
    let (done, mut finished) = mpsc::unbounded_channel::<Done>();
    let start = Instant::now();
    let end = start + o.warmup + duration;
    let mut next = start;
    let mut in_flight = 0usize;
    let mut samples = Vec::new();
    let mut record = |workload: &mut Workload, (turn, answer, sample): Done| {
        if sample.sent >= start + o.warmup && sample.sent < end {
            samples.push(sample);
        }
        workload.answered(turn, answer);
    };
    while Instant::now() < end {
        let arrival = match arrivals {
            Arrivals::Open(_) => next,
            Arrivals::Closed(n) => {
                while in_flight < n {
                    launch(client, url, workload.next_turn(), &done);
                    in_flight += 1;
                }
                end
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(arrival.into()) => {
                if let Arrivals::Open(rate) = arrivals {
                    next += Duration::from_secs_f64(workload.gap(rate));
                    launch(client, url, workload.next_turn(), &done);
                    in_flight += 1;
                }
            }
            Some(result) = finished.recv() => {
                in_flight -= 1;
                record(&mut workload, result);
            }
        }
    }
    while in_flight > 0 {
        let Some(result) = finished.recv().await else {
            break;
        };
        in_flight -= 1;
        record(&mut workload, result);
    }
    samples
}

fn figures(samples: &[Sample], window: Duration, pods: &[SampleLlm]) -> Figures {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let mut ttft: Vec<f64> = ok
        .iter()
        .filter_map(|s| s.ttft)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    ttft.sort_by(f64::total_cmp);
    let mut e2e: Vec<f64> = ok.iter().map(|s| s.total.as_secs_f64() * 1e3).collect();
    e2e.sort_by(f64::total_cmp);
    let tokens: usize = ok.iter().map(|s| s.tokens).sum();
    let (prompt, cached) = pods.iter().fold((0, 0), |(p, c), pod| {
        let s = pod.engine().stats();
        (p + s.prompt_tokens(), c + s.cached_tokens())
    });
    Figures {
        requests: samples.len(),
        errors: samples.len() - ok.len(),
        ttft_p50: percentile(&ttft, 0.5),
        ttft_p99: percentile(&ttft, 0.99),
        e2e_p50: percentile(&e2e, 0.5),
        throughput: ok.len() as f64 / window.as_secs_f64(),
        tokens_per_s: tokens as f64 / window.as_secs_f64(),
        cache_hit: cached as f64 / prompt.max(1) as f64 * 100.0,
    }
}

fn routes(pods: &BTreeMap<&str, Vec<SocketAddr>>) -> String {
    let mut yaml = String::from("endpoints:\n");
    for name in pods.keys() {
        yaml += &format!(
            "  - name: {name}\n    keys: {{ primary: \"{KEY}\" }}\n    traffic: {{ chat: 100 }}\n"
        );
    }
    yaml += "deployments:\n";
    let all = std::iter::once(&CALIBRATION).chain(&SCENARIOS);
    for scenario in all.filter(|s| pods.contains_key(s.name)) {
        let list: Vec<String> = pods[scenario.name]
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        yaml += &format!(
            "  - name: chat\n    endpoint: {}\n    pods: [{}]\n    request_settings: {{ request_timeout_ms: 300000, max_concurrent_requests_per_instance: {CAP}, max_queue_wait_ms: 60000 }}\n    routing: {}\n",
            scenario.name,
            list.join(", "),
            scenario.routing
        );
    }
    yaml
}

/// What the run was: load, pods, workload, machine.
struct Setting {
    rate: f64,
    capacity: Option<f64>,
    load_average: (String, String),
}

fn report(o: &Options, setting: &Setting, rows: &[(&Scenario, Figures)]) -> String {
    let p = LlmProfile::default();
    let mut out = String::new();
    if let Some(capacity) = setting.capacity {
        out += &format!(
            "Capacity: {capacity:.1} requests/s (closed loop, {CLOSED_LOOP} in flight, P2C, 4 equal pods); \
             load: {:.0} % of it, {:.1} requests/s Poisson, the same rate in every scenario (with one pod 3× \
             slower, the pods can do less: about {:.0} % of theirs).\n\n",
            o.load * 100.0,
            setting.rate,
            setting.rate / (capacity * (PODS as f64 - 1.0 + 1.0 / SLOWDOWN) / PODS as f64) * 100.0
        );
    } else {
        out += &format!(
            "Load: {:.1} requests/s Poisson (set with --rate, not calibrated).\n\n",
            setting.rate
        );
    }
    out += &format!(
        "{PODS} simulated pods: prefill {} µs per uncached prompt token (not chunked), decode step {} ms, \
         batches of {}, prefix cache of {} blocks of {} tokens; router cap {CAP} per pod. \
         {} s measured after {} s of warm-up per scenario, seed {}; load average {} before, {} after.\n\n",
        p.prefill_per_token.as_micros(),
        p.decode_step.as_millis(),
        p.max_batch,
        p.cache_blocks,
        p.block_tokens,
        o.duration.as_secs(),
        o.warmup.as_secs(),
        o.seed,
        setting.load_average.0,
        setting.load_average.1,
    );
    out += "| scenario | policy | requests | errors | TTFT p50 ms | vs P2C | TTFT p99 ms | vs P2C | e2e p50 ms | req/s | tokens/s | pod prefix-cache hits |\n";
    out += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (s, f) in rows {
        let base = rows
            .iter()
            .find(|(b, _)| b.slow_pod == s.slow_pod && b.routing == SCENARIOS[0].routing)
            .map(|(_, f)| f);
        let versus = |mine: f64, theirs: Option<f64>| match theirs {
            Some(theirs) if theirs > 0.0 => format!("{:+.0} %", (mine / theirs - 1.0) * 100.0),
            _ => "".into(),
        };
        out += &format!(
            "| {} | `{}` | {} | {} | {:.0} | {} | {:.0} | {} | {:.0} | {:.1} | {:.0} | {:.0} % |\n",
            if s.slow_pod {
                "one pod 3× slower"
            } else {
                "all pods equal"
            },
            s.routing,
            f.requests,
            f.errors,
            f.ttft_p50,
            versus(f.ttft_p50, base.map(|b| b.ttft_p50)),
            f.ttft_p99,
            versus(f.ttft_p99, base.map(|b| b.ttft_p99)),
            f.e2e_p50,
            f.throughput,
            f.tokens_per_s,
            f.cache_hit
        );
    }
    out
}

/// The 1- and 5-minute load averages now.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Four fresh pods, the last one slowed down when `slow`.
async fn start_pods(slow: bool) -> Vec<SampleLlm> {
    let mut pods = Vec::new();
    for i in 0..PODS {
        let pod = SampleLlm::start_local(LlmProfile::default())
            .await
            .expect("a pod starts");
        if slow && i == PODS - 1 {
            pod.engine().set_slowdown(SLOWDOWN);
        }
        pods.push(pod);
    }
    pods
}

/// A router in this process, routing `pods` (endpoints named after the scenarios).
async fn start_router(pods: &BTreeMap<&str, Vec<SampleLlm>>, dir: &std::path::Path) -> Router {
    let addresses = pods
        .iter()
        .map(|(k, v)| (*k, v.iter().map(SampleLlm::address).collect()))
        .collect();
    let routes_file = dir.join("routes.yaml");
    std::fs::write(&routes_file, routes(&addresses)).expect("the routes file is written");
    let mut config = RouterConfig {
        allow_insecure_connections: true,
        ..RouterConfig::default()
    };
    config.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    config.discovery.routes_file = Some(routes_file);
    Router::start(config).await.expect("the router starts")
}

#[tokio::main]
async fn main() {
    let o = options();
    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| {
            o.only
                .as_deref()
                .is_none_or(|only| only.split(',').any(|n| n == s.name))
        })
        .collect();
    let mut all_pods: BTreeMap<&str, Vec<SampleLlm>> = BTreeMap::new();
    if o.rate.is_none() {
        all_pods.insert(CALIBRATION.name, start_pods(false).await);
    }
    for s in &scenarios {
        all_pods.insert(s.name, start_pods(s.slow_pod).await);
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let router = start_router(&all_pods, dir.path()).await;
    let http = router.http_addr().expect("an HTTP listener");
    let url = |name: &str| format!("http://{http}/api/v1/endpoint/{name}/v1/chat/completions");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let before = load_average();
    let (rate, capacity) = match o.rate {
        Some(rate) => (rate, None),
        None => {
            eprintln!("llm bench: capacity ({CLOSED_LOOP} in flight, closed loop, P2C)");
            let arrivals = Arrivals::Closed(CLOSED_LOOP);
            let samples = drive(
                &client,
                &url(CALIBRATION.name),
                &o,
                arrivals,
                CALIBRATION_TIME,
            )
            .await;
            let f = figures(&samples, CALIBRATION_TIME, &all_pods[CALIBRATION.name]);
            let rate = f.throughput * o.load;
            eprintln!(
                "  capacity {:.1} requests/s ({} errors): running at {:.0} % of it, {rate:.1} requests/s",
                f.throughput,
                f.errors,
                o.load * 100.0
            );
            (rate, Some(f.throughput))
        }
    };
    let mut rows = Vec::new();
    for s in scenarios {
        eprintln!(
            "llm bench: {} ({}), {rate:.1} requests/s",
            s.name, s.routing
        );
        let samples = drive(&client, &url(s.name), &o, Arrivals::Open(rate), o.duration).await;
        let f = figures(&samples, o.duration, &all_pods[s.name]);
        eprintln!(
            "  {} requests, {} errors, TTFT p50 {:.0} ms p99 {:.0} ms, {:.1} req/s, cache hits {:.0} %",
            f.requests, f.errors, f.ttft_p50, f.ttft_p99, f.throughput, f.cache_hit
        );
        rows.push((s, f));
    }
    let setting = Setting {
        rate,
        capacity,
        load_average: (before, load_average()),
    };
    let text = report(&o, &setting, &rows);
    println!("{text}");
    if let Some(out) = &o.out {
        std::fs::write(out, &text).expect("the report is written");
    }
    drop(router);
}

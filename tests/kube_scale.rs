//! Scale: 1,000 endpoints × 3 deployments × 10 pods (1,000 key Secrets, 3,000 OnlineDeployments,
//! 3,000 Services' EndpointSlices, 30,000 pods) in a fake API server.
//!
//! Ignored by default; it prints its figures:
//!
//! ```text
//! cargo test --release -p scoregate --test kube_scale -- --ignored --nocapture
//! ```
//!
//! Phase 1 runs `scoregate serve --discovery kube` as a child process (so its memory is its own):
//! time to ready, resident memory, and the router's own `scoregate_discovery_event_to_routable_seconds`
//! over a burst of pod changes. Phase 2 runs a router in this process and measures, change by
//! change, the time from writing an object to the API server to the published table showing it.
//! Nothing is asserted about time: the figures are reported.

mod support;

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scoregate_fake_kube::FakeApiServer;
use serde_json::json;
use support::kube::*;

const ENDPOINTS: usize = 1_000;
const DEPLOYMENTS: [&str; 3] = ["blue", "green", "red"];
const PODS: usize = 10;
/// Pod changes in each churn phase (`SCALE_CHANGES` overrides).
fn changes() -> usize {
    std::env::var("SCALE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}
const SCALE_NS: &str = "scale";

fn pod_ip(endpoint: usize, deployment: usize, pod: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        10,
        (deployment * PODS + pod) as u8,
        (endpoint >> 8) as u8,
        (endpoint & 0xff) as u8,
    ))
}

fn service(endpoint: usize, deployment: usize) -> String {
    format!("ep-{endpoint:04}-{}", DEPLOYMENTS[deployment])
}

fn slice_of(endpoint: usize, deployment: usize, unready: Option<usize>) -> serde_json::Value {
    let pods: Vec<PodState> = (0..PODS)
        .map(|p| PodState {
            ip: pod_ip(endpoint, deployment, p),
            ready: Some(p) != unready,
            terminating: false,
        })
        .collect();
    let svc = service(endpoint, deployment);
    slice(SCALE_NS, &format!("{svc}-x1"), &svc, 5001, &pods)
}

fn populate(fake: &FakeApiServer) {
    for e in 0..ENDPOINTS {
        let name = format!("ep-{e:04}");
        fake.apply(key_secret(
            SCALE_NS,
            &format!("{name}-keys"),
            KEY,
            Some(KEY2),
        ))
        .unwrap();
        fake.apply(endpoint(
            SCALE_NS,
            &name,
            &format!("{name}-keys"),
            &[("blue", 80), ("green", 20), ("red", 0)],
        ))
        .unwrap();
        for (d, deployment_name) in DEPLOYMENTS.iter().enumerate() {
            fake.apply(json!({
                "apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
                "metadata": {"name": service(e, d), "namespace": SCALE_NS},
                "spec": {"endpointName": name, "deploymentName": deployment_name,
                    "serviceName": service(e, d), "port": 5001},
            }))
            .unwrap();
            fake.apply(slice_of(e, d, None)).unwrap();
        }
    }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The upper bound of the bucket holding quantile `q` of a Prometheus histogram.
fn bucket_quantile(text: &str, name: &str, q: f64) -> Option<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    let rank = (q * total as f64).ceil() as u64;
    buckets
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(le, _)| (*le, total))
}

struct ChildRouter(Child);

impl Drop for ChildRouter {
    /// Stops the router's process group (a `SCALE_WRAP` profiler and the router under it).
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale figures: cargo test --release -p scoregate --test kube_scale -- --ignored --nocapture"]
async fn a_thousand_endpoints_of_three_deployments_of_ten_pods() {
    let fake = fake().await;
    fake.set_history_limit(1_000_000);
    let built = Instant::now();
    populate(&fake);
    println!(
        "cluster: {ENDPOINTS} endpoints × {} deployments × {PODS} pods written to the fake in {:?}",
        DEPLOYMENTS.len(),
        built.elapsed()
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, SCALE_NS).unwrap();
    let client = client();

    // Phase 0: the same router process watching an empty namespace, for a baseline.
    let spawn = |namespace: &str, admin: u16| {
        // `SCALE_WRAP="heaptrack -o /tmp/scoregate"` runs the measured router under a profiler.
        let wrap = match namespace {
            SCALE_NS => std::env::var("SCALE_WRAP").unwrap_or_default(),
            _ => String::new(),
        };
        let mut words: Vec<String> = wrap.split_whitespace().map(str::to_string).collect();
        words.push(env!("CARGO_BIN_EXE_scoregate").to_string());
        ChildRouter(
            Command::new(&words[0])
                .args(&words[1..])
                .args(["serve", "--discovery", "kube", "--namespace", namespace])
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--allow-insecure-connections", "--listen", "127.0.0.1:0"])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .args(["--access-log", "off"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .env("RUST_LOG", "warn")
                .process_group(0)
                .spawn()
                .expect("start scoregate"),
        )
    };
    let wait_ready = |admin: u16| {
        let client = client.clone();
        async move {
            let ready_uri = format!("http://127.0.0.1:{admin}/readyz");
            eventually("the router process to be ready", || async {
                let request = http::Request::get(&ready_uri).body(empty()).unwrap();
                matches!(client.request(request).await, Ok(r) if r.status() == 200)
            })
            .await;
        }
    };
    let admin = free_port();
    let empty = spawn("empty", admin);
    wait_ready(admin).await;
    let (rss_empty, _) = rss_kib(empty.0.id());
    drop(empty);
    println!(
        "phase 0: router process watching an empty namespace: {:.1} MiB resident",
        rss_empty as f64 / 1024.0
    );

    // Phase 1: a router process.
    let admin = free_port();
    let started = Instant::now();
    let child = spawn(SCALE_NS, admin);
    let pid = child.0.id();
    wait_ready(admin).await;
    let ready_after = started.elapsed();
    let (rss_ready, _) = rss_kib(pid);

    let churn = Instant::now();
    for i in 0..changes() {
        let (e, d) = ((i * 7919) % ENDPOINTS, i % DEPLOYMENTS.len());
        fake.apply(slice_of(e, d, Some(i % PODS))).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        if (i + 1) % 1000 == 0 {
            println!(
                "  after {} changes: {:.1} MiB resident",
                i + 1,
                rss_kib(pid).0 as f64 / 1024.0
            );
        }
    }
    let churn_took = churn.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = scrape(&client, ([127, 0, 0, 1], admin).into()).await;
    let (rss_after, hwm) = rss_kib(pid);
    let name = "scoregate_discovery_event_to_routable_seconds";
    let p50 = bucket_quantile(&text, name, 0.5);
    let p99 = bucket_quantile(&text, name, 0.99);
    let rebuild_p99 = bucket_quantile(&text, "scoregate_discovery_rebuild_seconds", 0.99);
    println!("phase 1 (router process {pid}):");
    println!("  time to ready (process start to /readyz 200): {ready_after:?}");
    println!(
        "  resident memory: {:.1} MiB at ready, {:.1} MiB after {} changes, peak {:.1} MiB",
        rss_ready as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        changes(),
        hwm as f64 / 1024.0
    );
    println!(
        "  {} slice changes written in {churn_took:?}; event-to-routable (router histogram, bucket upper bounds): p50 ≤ {:?} s, p99 ≤ {:?} s; rebuild p99 ≤ {:?} s",
        changes(),
        p50.map(|p| p.0),
        p99.map(|p| p.0),
        rebuild_p99.map(|p| p.0)
    );
    println!(
        "  endpoints in the table: {:?}",
        metric(&text, "scoregate_table_endpoints")
    );
    drop(child);

    // Phase 2: a router in this process; each change is timed from the write to the table.
    let started = Instant::now();
    let router = ready_router(router_config(&fake, &[SCALE_NS], &dir)).await;
    let ready_in_process = started.elapsed();
    let table = router.table().snapshot();
    assert_eq!(table.len(), ENDPOINTS);
    let sample = table.endpoint("ep-0042").unwrap();
    assert_eq!(sample.deployments.len(), DEPLOYMENTS.len());
    let routable_pods = |e: usize, d: &str| {
        router
            .table()
            .snapshot()
            .endpoint(&format!("ep-{e:04}"))
            .and_then(|ep| ep.deployment_named(d.as_bytes()).map(|d| d.pods.len()))
    };
    let mut latencies = Vec::with_capacity(changes());
    for i in 0..changes() {
        let (e, d) = ((i * 104_729 + 13) % ENDPOINTS, (i + 1) % DEPLOYMENTS.len());
        // Alternate between one pod not ready and all ready.
        let unready = (i % 2 == 0).then_some(i % PODS);
        let expected = if unready.is_some() { PODS - 1 } else { PODS };
        let before = routable_pods(e, DEPLOYMENTS[d]);
        let written = Instant::now();
        fake.apply(slice_of(e, d, unready)).unwrap();
        if before == Some(expected) {
            continue;
        }
        loop {
            if routable_pods(e, DEPLOYMENTS[d]) == Some(expected) {
                break;
            }
            assert!(written.elapsed() < HANG, "change {i} never became routable");
            tokio::task::yield_now().await;
        }
        latencies.push(written.elapsed());
    }
    latencies.sort();
    println!("phase 2 (router in the test process):");
    println!("  time to ready: {ready_in_process:?}");
    println!(
        "  write-to-routable over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    let text = metrics_text(&client, &router).await;
    println!(
        "  router histogram: event-to-routable p99 ≤ {:?} s, rebuild p99 ≤ {:?} s",
        bucket_quantile(&text, name, 0.99).map(|p| p.0),
        bucket_quantile(&text, "scoregate_discovery_rebuild_seconds", 0.99).map(|p| p.0)
    );
    router.shutdown().await;
}

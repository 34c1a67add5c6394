//! Coordinated admission with real router processes: the owner of a deployment is killed
//! (SIGKILL) under load; the others elect the next owner among themselves, report the slots they
//! hold, and keep serving. Also, ignored by default, the measurement behind the figures
//! (throughput on three replicas against one, remote grant latency at 5,000 requests/s).
//!
//! Durations are printed, never asserted.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoregate::sample_model::SampleModel;
use support::load::Load;
use support::*;

const SECRET: &str = "cluster-secret-for-process-tests-01";

/// One router process.
struct Replica {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    cluster: SocketAddr,
}

impl Replica {
    fn url(&self, query: &str) -> String {
        format!("http://{}/api/v1/endpoint/credit/score{query}", self.http)
    }

    async fn metrics(&self, client: &Client) -> String {
        send(
            client,
            http::Method::GET,
            &format!("http://{}/metrics", self.admin),
            &[],
            empty(),
        )
        .await
        .text()
    }

    async fn metric(&self, client: &Client, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(client).await, name, labels).unwrap_or(0.0)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a router process; `cluster` is `None` for a replica on its own.
fn spawn_replica(
    dir: &Path,
    routes: &Path,
    cluster: Option<(SocketAddr, &[SocketAddr], &Path)>,
) -> Replica {
    let (http, admin) = (dead_address(), dead_address());
    let mut yaml = format!(
        "allow_insecure_connections: true\nlisten: {{ http: \"{http}\", admin: \"{admin}\" }}\n\
         discovery: {{ routes_file: \"{}\" }}\nlog: {{ access_log: off }}\n\
         shutdown: {{ drain_delay_ms: 0, grace_period_ms: 1000 }}\n",
        routes.display()
    );
    let me = match cluster {
        Some((me, peers, secret)) => {
            let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
            yaml.push_str(&format!(
                "cluster: {{ listen: \"{me}\", peers: [{}], secret_file: \"{}\" }}\n",
                peers.join(", "),
                secret.display()
            ));
            me
        }
        None => dead_address(),
    };
    let config = dir.join(format!("router-{}.yaml", admin.port()));
    std::fs::write(&config, yaml).unwrap();
    let log = std::fs::File::create(dir.join(format!("router-{}.log", admin.port()))).unwrap();
    // SCOREGATE_BIN: measure a fully optimised binary built elsewhere.
    let binary =
        std::env::var("SCOREGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_scoregate").into());
    let child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Replica {
        child,
        http,
        admin,
        cluster: me,
    }
}

async fn wait_members(client: &Client, replicas: &[&Replica], n: usize) {
    guard("the replicas seeing each other", async {
        loop {
            let mut all = true;
            for r in replicas {
                let ok = tokio::time::timeout(Duration::from_secs(1), async {
                    client
                        .get(format!("http://{}/metrics", r.admin).parse().unwrap())
                        .await
                })
                .await;
                let text = match ok {
                    Ok(Ok(response)) => {
                        use http_body_util::BodyExt as _;
                        let body = response.into_body().collect().await.unwrap().to_bytes();
                        String::from_utf8_lossy(&body).into_owned()
                    }
                    _ => String::new(),
                };
                if metric_value(&text, "scoregate_cluster_members", &[]) != Some(n as f64) {
                    all = false;
                }
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn write_routes(dir: &Path, pods: &[SampleModel], settings: &str) -> PathBuf {
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let path = dir.join("routes.yaml");
    std::fs::write(&path, simple_routes("credit", &addresses, settings)).unwrap();
    path
}

fn owner_index(addresses: &[SocketAddr]) -> usize {
    owner_of(addresses, "credit", "blue")
}

fn three_replicas(dir: &Path, routes: &Path) -> Vec<Replica> {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let addresses: Vec<SocketAddr> = (0..3).map(|_| dead_address()).collect();
    addresses
        .iter()
        .map(|me| spawn_replica(dir, routes, Some((*me, &addresses, &secret))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_moves_ownership_and_no_other_request_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let routes = write_routes(dir.path(), &pods, CAP_ONE);
    let mut replicas = three_replicas(dir.path(), &routes);
    let client = client();
    wait_members(&client, &replicas.iter().collect::<Vec<_>>(), 3).await;
    let addresses: Vec<SocketAddr> = replicas.iter().map(|r| r.cluster).collect();
    let owner = owner_index(&addresses);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let next_owner = {
        let left: Vec<SocketAddr> = survivors.iter().map(|i| addresses[*i]).collect();
        survivors[owner_index(&left)]
    };

    let survivor_urls: Vec<String> = survivors
        .iter()
        .map(|i| replicas[*i].url("?sleep_ms=5"))
        .collect();
    let on_survivors = Load::start(&survivor_urls, 3);
    let on_owner = Load::start(&[replicas[owner].url("?sleep_ms=5")], 2);
    wait_owner_admissions(&client, &replicas[owner], 20.0, "load through the owner").await;
    let before = replicas[next_owner]
        .metric(
            &client,
            "scoregate_cluster_admissions_total",
            &[("via", "owner")],
        )
        .await;
    assert_eq!(
        before, 0.0,
        "the next owner admitted as owner before the kill"
    );

    replicas[owner].kill();
    let killed = Instant::now();
    let survivor_refs: Vec<&Replica> = survivors.iter().map(|i| &replicas[*i]).collect();
    wait_members(&client, &survivor_refs, 2).await;
    let view_changed = killed.elapsed();
    guard("the next owner admitting as owner", async {
        loop {
            let n = replicas[next_owner]
                .metric(
                    &client,
                    "scoregate_cluster_admissions_total",
                    &[("via", "owner")],
                )
                .await;
            if n > 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let took_over = killed.elapsed();
    wait_owner_admissions(
        &client,
        &replicas[next_owner],
        50.0,
        "the survivors' load through the next owner",
    )
    .await;
    let (ok, failed) = on_survivors.finish().await;
    let (_, failed_on_killed) = on_owner.finish().await;

    let mut over = 0.0;
    let mut fallbacks = 0.0;
    for i in &survivors {
        over += replicas[*i]
            .metric(&client, "scoregate_cluster_over_admissions_total", &[])
            .await;
        fallbacks += replicas[*i]
            .metric(
                &client,
                "scoregate_cluster_admissions_total",
                &[("via", "fallback")],
            )
            .await;
    }
    let peaks: Vec<u32> = pods.iter().map(|p| p.stats().peak_concurrency()).collect();
    println!(
        "owner killed: view without it after {view_changed:?}, next owner admitting after {took_over:?}; \
         {ok} requests served through the survivors, {} failed; {} failures on the killed router; \
         over-admissions counted {over}, fallback admissions {fallbacks}, pod peaks {peaks:?}",
        failed.len(),
        failed_on_killed.len()
    );
    assert!(
        failed.is_empty(),
        "requests through the survivors failed: {failed:?}"
    );
    assert!(ok > 0);
}

/// Waits until `replica` has admitted `at_least` requests as the owner of the deployment.
async fn wait_owner_admissions(client: &Client, replica: &Replica, at_least: f64, what: &str) {
    guard(what, async {
        while replica
            .metric(
                client,
                "scoregate_cluster_admissions_total",
                &[("via", "owner")],
            )
            .await
            < at_least
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Worker `w` of `workers` sending `rate` requests per second in all: each worker ticks every
/// `workers / rate` seconds, offset by its share of the period, so the load is even rather than
/// bursts of `workers` requests at once.
fn staggered(w: u64, workers: u64, rate: u64) -> tokio::time::Interval {
    let period = Duration::from_micros(1_000_000 * workers / rate);
    let start = tokio::time::Instant::now() + period.mul_f64(w as f64 / workers as f64);
    let mut tick = tokio::time::interval_at(start, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// `cargo test --release --test cluster_failover -- --ignored --nocapture` (optionally with
/// `SCOREGATE_BIN=target/release/scoregate` and `MEASURE_SECS`): the figures. Prints
/// them; asserts only the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it alone, in release"]
async fn measure_throughput_and_grant_latency() {
    let seconds: u64 = std::env::var("MEASURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let rate: u64 = std::env::var("MEASURE_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    let parts = std::env::var("MEASURE_PARTS").unwrap_or_else(|_| "123".into());
    let client = client();

    // 1. Two pods at cap 1: the same closed-loop load on one router, then spread over three.
    for round in 0..if parts.contains('1') { 2 } else { 0 } {
        let dir = tempfile::tempdir().unwrap();
        let pods = pods(2).await;
        let routes = write_routes(dir.path(), &pods, CAP_ONE);
        let single = vec![spawn_replica(dir.path(), &routes, None)];
        let three = three_replicas(dir.path(), &routes);
        for (name, replicas) in [("one router", &single), ("three routers", &three)] {
            let refs: Vec<&Replica> = replicas.iter().collect();
            if replicas.len() == 3 {
                wait_members(&client, &refs, 3).await;
            } else {
                guard("the router's readiness", async {
                    while client
                        .get(
                            format!("http://{}/readyz", replicas[0].admin)
                                .parse()
                                .unwrap(),
                        )
                        .await
                        .map(|r| r.status() != 200)
                        .unwrap_or(true)
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
            }
            for p in &pods {
                p.stats().reset_peak();
            }
            // 12 clients in all, however many routers share them.
            let per_router = 12 / replicas.len();
            let urls: Vec<String> = replicas.iter().map(|r| r.url("?sleep_ms=5")).collect();
            let load = Load::start(&urls, per_router);
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let (ok, failed) = load.finish().await;
            let peaks: Vec<u32> = pods.iter().map(|p| p.stats().peak_concurrency()).collect();
            println!(
                "round {round}, {name}: {:.0} requests/s over {seconds} s, {} failed, pod peaks {peaks:?}",
                ok as f64 / seconds as f64,
                failed.len()
            );
            assert!(peaks.iter().all(|p| *p <= 1), "a pod saw {peaks:?}");
        }
    }

    // 2. Remote grant latency at 5,000 requests/s, sent to the two replicas that do not own
    //    the deployment (pods far from their cap, so no grant waits in a queue).
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let routes = write_routes(
        dir.path(),
        &pods,
        "max_concurrent_requests_per_instance: 1000, max_queue_wait_ms: 1000",
    );
    let three = three_replicas(dir.path(), &routes);
    wait_members(&client, &three.iter().collect::<Vec<_>>(), 3).await;
    let addresses: Vec<SocketAddr> = three.iter().map(|r| r.cluster).collect();
    let owner = owner_index(&addresses);
    let askers: Vec<&Replica> = (0..3).filter(|i| *i != owner).map(|i| &three[i]).collect();
    let workers = 100u64.min(rate);
    let stop = Instant::now() + Duration::from_secs(if parts.contains('2') { seconds } else { 0 });
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = askers[(w % 2) as usize].url("");
        tasks.push(tokio::spawn(async move {
            let client = support::client();
            let auth = format!("Bearer {KEY}");
            let mut tick = staggered(w, workers, rate);
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < stop {
                tick.tick().await;
                let req = request(
                    http::Method::POST,
                    &url,
                    &[("authorization", &auth)],
                    full("{}"),
                );
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt as _;
                        let _ = r.into_body().collect().await;
                        ok += 1;
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    println!(
        "grant latency run at {rate}/s: {:.0} requests/s achieved, {failed} failed",
        ok as f64 / seconds as f64
    );
    for asker in &askers {
        let text = asker.metrics(&client).await;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("scoregate_cluster_grant_duration_seconds"))
            .collect();
        println!("{}:\n{}", asker.cluster, lines.join("\n"));
    }

    // 3. The same rate of grants asked directly of the owner by one authenticated peer (the
    //    protocol alone, without proxying): exact percentiles of the round trip.
    let owner_addr = three[owner].cluster;
    let (sender, _connection) = support::peer::authenticated_peer(owner_addr, SECRET).await;
    let hellos = parts.contains('h');
    let samples = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (mut sender, samples) = (sender.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = staggered(w, workers, rate);
            while Instant::now() < stop {
                tick.tick().await;
                let asked = Instant::now();
                if hellos {
                    // The protocol's cheapest exchange, for comparison.
                    let hello = http::Request::get(format!("http://{owner_addr}/v1/hello"))
                        .header("x-scoregate-nonce", "measure")
                        .body(())
                        .unwrap();
                    let mut ready = sender.clone().ready().await.unwrap();
                    let (response, _) = ready.send_request(hello, true).unwrap();
                    assert_eq!(response.await.unwrap().status(), 200);
                    samples.lock().push(asked.elapsed());
                    continue;
                }
                let (response, mut lease) =
                    support::peer::grant(&mut sender, owner_addr, "credit/blue").await;
                let took = asked.elapsed();
                assert_eq!(response.status(), 200);
                let _ = lease.send_data(bytes::Bytes::new(), true);
                samples.lock().push(took);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut samples = samples.lock().clone();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "direct {}: {:.0}/s, round trip p50 {:?}, p90 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        if hellos { "hellos" } else { "grants" },
        samples.len() as f64 / seconds as f64,
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        samples.last().unwrap()
    );
}

//! Coordinated admission through stalls (issue 14): three router processes over two pods of cap
//! 1 that record how many requests they ran at once, load through every replica, and one
//! replica stopped with SIGSTOP for 5 s (as a long GC pause or a frozen VM would), then
//! continued with SIGCONT: the owner of the deployment, or a replica that does not own it.
//!
//! Each scenario asserts that no pod ever ran two requests at once and that the replicas'
//! own figure of the most requests they knew to be on a pod
//! (`scoregate_cluster_pod_peak_in_flight`, the highest over the replicas) matches what the pods
//! saw; it prints the time without service through the replicas that kept running (never
//! asserted: machines are noisy). `--nocapture` shows the figures.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use scoregate::sample_model::SampleModel;
use support::load::Load;
use support::replica::{known_peaks, logs_of, start_cluster, wait_members, Place, Replica, Start};
use support::*;

/// How long the stopped replica stays stopped.
const STOPPED_FOR: Duration = Duration::from_secs(5);

/// Three replicas on loopback, the owner's index, and the routes.
fn three_replicas(dir: &Path, pods: &[SampleModel]) -> (Vec<Replica>, usize) {
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let routes = dir.join("routes.yaml");
    std::fs::write(&routes, simple_routes("credit", &addresses, CAP_ONE)).unwrap();
    let places: Vec<Place> = (0..3).map(|_| Place::loopback()).collect();
    let replicas = start_cluster(dir, &routes, &places, &[]);
    let ids: Vec<SocketAddr> = replicas.iter().map(|r| r.cluster).collect();
    let owner = owner_of(&ids, "credit", "blue");
    (replicas, owner)
}

/// What a scenario measured.
struct Outcome {
    gap: Duration,
    peaks: Vec<u32>,
    known: Vec<f64>,
    over: f64,
    failed_elsewhere: Vec<String>,
    failed_on_stopped: Vec<String>,
    ok: u64,
}

/// Stops replica `stopped` for [`STOPPED_FOR`] under load through all three, continues it,
/// and waits until the three agree again and requests flow through every one.
async fn stop_and_continue(replicas: &[Replica], stopped: usize, pods: &[SampleModel]) -> Outcome {
    let client = client();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_members(&client, &all, 3).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != stopped).collect();
    let urls: Vec<String> = others
        .iter()
        .map(|i| replicas[*i].url("?sleep_ms=5"))
        .collect();
    let elsewhere = Load::start(&urls, 3);
    let on_stopped = Load::start(&[replicas[stopped].url("?sleep_ms=5")], 2);
    eventually("requests through every replica", || async {
        elsewhere.ok() > 50 && on_stopped.ok() > 20
    })
    .await;

    let paused = Instant::now();
    replicas[stopped].pause();
    tokio::time::sleep(STOPPED_FOR).await;
    replicas[stopped].resume();
    let resumed = Instant::now();
    wait_members(&client, &all, 3).await;
    let served = on_stopped.ok();
    eventually("requests through the continued replica", || async {
        on_stopped.ok() > served + 20
    })
    .await;
    let settled = Instant::now();
    let gap = elsewhere.longest_gap(paused, settled);
    let (ok, failed_elsewhere) = elsewhere.finish().await;
    let (_, failed_on_stopped) = on_stopped.finish().await;
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let known = known_peaks(&client, &all, &addresses).await;
    let mut over = 0.0;
    for r in replicas {
        over += r
            .metric(&client, "scoregate_cluster_over_admissions_total", &[])
            .await;
    }
    println!(
        "  stopped for {STOPPED_FOR:?}, back in the view {:?} after SIGCONT",
        settled.saturating_duration_since(resumed)
    );
    Outcome {
        gap,
        peaks: pods.iter().map(|p| p.stats().peak_concurrency()).collect(),
        known,
        over,
        failed_elsewhere,
        failed_on_stopped,
        ok,
    }
}

fn check(what: &str, outcome: &Outcome, replicas: &[Replica]) {
    println!(
        "{what}: time without service through the others {:?}; {} requests served through them, \
         {} failed; through the stopped one: {:?}; pods' peaks {:?}, the replicas' known \
         peaks {:?}, over-admissions counted {}",
        outcome.gap,
        outcome.ok,
        outcome.failed_elsewhere.len(),
        outcome.failed_on_stopped,
        outcome.peaks,
        outcome.known,
        outcome.over
    );
    let logs = || logs_of(replicas);
    assert!(
        outcome.peaks.iter().all(|p| *p == 1),
        "{what}: a pod of cap 1 ran {:?} requests at once\n{}",
        outcome.peaks,
        logs()
    );
    let known: Vec<u32> = outcome.known.iter().map(|k| *k as u32).collect();
    assert_eq!(
        known,
        outcome.peaks,
        "{what}: the replicas' figure differs from what the pods saw\n{}",
        logs()
    );
    assert_eq!(outcome.over, 0.0, "{what}: over-admissions were counted");
    assert!(
        outcome.failed_elsewhere.is_empty(),
        "{what}: requests through the running replicas failed: {:?}",
        outcome.failed_elsewhere
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_owner_for_5_s_never_puts_two_requests_on_a_pod() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let (replicas, owner) = three_replicas(dir.path(), &pods);
    let outcome = stop_and_continue(&replicas, owner, &pods).await;
    check("owner stopped", &outcome, &replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_replica_that_does_not_own_the_deployment_never_puts_two_requests_on_a_pod() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let (replicas, owner) = three_replicas(dir.path(), &pods);
    let outcome = stop_and_continue(&replicas, (owner + 1) % 3, &pods).await;
    check("non-owner stopped", &outcome, &replicas);
}

/// The owner stopped while only the other two have clients: every slot it holds was granted to
/// them, so the replica that takes over knows them all and serves while the owner is still
/// stopped. A request timeout of 60 s makes the longest a slot can live (2 × 60 s + 1 s)
/// outlast the wait: a new owner that held the deployment as a whole until then would fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_owner_whose_slots_are_all_known_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let routes = dir.path().join("routes.yaml");
    let settings = format!("{CAP_ONE}, request_timeout_ms: 60000");
    std::fs::write(&routes, simple_routes("credit", &addresses, &settings)).unwrap();
    let places: Vec<Place> = (0..3).map(|_| Place::loopback()).collect();
    let replicas = start_cluster(dir.path(), &routes, &places, &[]);
    let ids: Vec<SocketAddr> = replicas.iter().map(|r| r.cluster).collect();
    let owner = owner_of(&ids, "credit", "blue");
    let client = client();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_members(&client, &all, 3).await;
    let urls: Vec<String> = (0..3)
        .filter(|i| *i != owner)
        .map(|i| replicas[i].url("?sleep_ms=5"))
        .collect();
    let load = Load::start(&urls, 3);
    eventually("requests through the others", || async { load.ok() > 50 }).await;

    let paused = Instant::now();
    replicas[owner].pause();
    let before = load.ok();
    eventually(
        "requests served through the others while the owner is stopped",
        || async { load.ok() > before + 50 },
    )
    .await;
    let served_after = paused.elapsed();
    replicas[owner].resume();
    wait_members(&client, &all, 3).await;
    let (ok, failed) = load.finish().await;
    let known = known_peaks(&client, &all, &addresses).await;
    let peaks: Vec<u32> = pods.iter().map(|p| p.stats().peak_concurrency()).collect();
    println!(
        "owner stopped, no clients of its own: 50 more requests served through the others \
         {served_after:?} after the stop; {ok} served, {} failed; pods' peaks {peaks:?}, known \
         peaks {known:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(peaks, [1, 1], "{}", logs_of(&replicas));
    let known: Vec<u32> = known.iter().map(|k| *k as u32).collect();
    assert_eq!(known, peaks, "{}", logs_of(&replicas));
}

/// Three replicas of which the last has another cluster credential, all with `fallback`.
fn one_with_a_wrong_credential(dir: &Path, pods: &[SampleModel], fallback: &str) -> Vec<Replica> {
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let routes = dir.join("routes.yaml");
    std::fs::write(&routes, simple_routes("credit", &addresses, CAP_ONE)).unwrap();
    let places: Vec<Place> = (0..3).map(|_| Place::loopback()).collect();
    let extra = format!("fallback: {fallback}");
    let mut replicas = start_cluster(dir, &routes, &places[..2], &[&extra, &extra]);
    let wrong = dir.join("wrong-secret");
    std::fs::write(&wrong, "another-cluster-secret-0123456789").unwrap();
    let ids: Vec<SocketAddr> = places.iter().map(|p| p.cluster).collect();
    replicas.push(Replica::start(Start {
        dir,
        routes: &routes,
        http: places[2].http,
        admin: places[2].admin,
        cluster: Some((places[2].cluster, &ids)),
        secret: Some(&wrong),
        cluster_extra: &extra,
        netns: None,
    }));
    replicas
}

/// Waits until `replica` says it is not ready for a reason that contains `why`, and returns
/// what it says.
async fn not_ready(client: &Client, replica: &Replica, why: &str) -> String {
    guard("the misconfigured replica turning not ready", async {
        loop {
            if let Some((503, body)) = replica.readyz(client).await {
                if body.contains(why) {
                    return body;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// What the misconfigured replica says and logs: not ready with the reason, and the reason
/// logged once per peer however often it reconnects.
async fn misconfigured_is_loud(client: &Client, replicas: &[Replica]) {
    let reason = not_ready(client, &replicas[2], "cannot authenticate").await;
    assert!(
        reason.contains("cannot authenticate") && reason.contains("cluster secret"),
        "{reason}"
    );
    for good in &replicas[..2] {
        eventually("the others to be ready", || async {
            good.readyz(client).await.map(|r| r.0) == Some(200)
        })
        .await;
    }
    // Reconnection attempts go on (about three a second per peer); the reason is logged once.
    let attempts = replicas[2]
        .metric(client, "scoregate_cluster_refused_total", &[])
        .await;
    eventually("more refused attempts", || async {
        replicas[2]
            .metric(client, "scoregate_cluster_refused_total", &[])
            .await
            > attempts + 4.0
    })
    .await;
    let log = replicas[2].log_text();
    for good in &replicas[..2] {
        let lines = log
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains(&good.cluster.to_string()))
            .count();
        assert_eq!(
            lines, 1,
            "the reason for {} logged {lines} times:\n{log}",
            good.cluster
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_credential_with_fallback_reject_is_not_ready_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let replicas = one_with_a_wrong_credential(dir.path(), &pods, "reject");
    let client = client();
    wait_members(&client, &[&replicas[0], &replicas[1]], 2).await;
    misconfigured_is_loud(&client, &replicas).await;

    let good: Vec<String> = replicas[..2].iter().map(|r| r.url("?sleep_ms=5")).collect();
    let through_good = Load::start(&good, 3);
    let through_wrong = Load::start(&[replicas[2].url("?sleep_ms=5")], 3);
    eventually("load through every replica", || async {
        through_good.ok() > 100
    })
    .await;
    let (served_wrong, refused) = through_wrong.finish().await;
    let (served, failed) = through_good.finish().await;
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let known = known_peaks(&client, &all, &addresses).await;
    let peaks: Vec<u32> = pods.iter().map(|p| p.stats().peak_concurrency()).collect();
    println!(
        "wrong credential, fallback reject: {served} served through the others ({} failed), \
         {served_wrong} through the misconfigured one, refused there: {:?}; pods' peaks \
         {peaks:?}, known peaks {known:?}",
        failed.len(),
        refused.first()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        served_wrong, 0,
        "the misconfigured replica admitted requests"
    );
    assert!(
        refused
            .iter()
            .skip(1)
            .all(|r| r.contains("503") && r.contains("OwnerUnreachable")),
        "{refused:?}"
    );
    assert_eq!(peaks, [1, 1]);
    assert_eq!(known, [1.0, 1.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_credential_with_fallback_local_is_not_ready_and_admits_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let replicas = one_with_a_wrong_credential(dir.path(), &pods, "local");
    let client = client();
    wait_members(&client, &[&replicas[0], &replicas[1]], 2).await;
    misconfigured_is_loud(&client, &replicas).await;

    // A request sent to it anyway is admitted against its own cap, and counted as a fallback.
    let resp = post_score(&client, &replicas[2].url(""), KEY, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        replicas[2]
            .metric(
                &client,
                "scoregate_cluster_admissions_total",
                &[("via", "fallback")]
            )
            .await,
        1.0
    );
    // A Service sends traffic to ready replicas only: the cap holds.
    let ready: Vec<String> = replicas[..2].iter().map(|r| r.url("?sleep_ms=5")).collect();
    let load = Load::start(&ready, 3);
    eventually("load through the ready replicas", || async {
        load.ok() > 150
    })
    .await;
    let (served, failed) = load.finish().await;
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let known = known_peaks(&client, &all, &addresses).await;
    let peaks: Vec<u32> = pods.iter().map(|p| p.stats().peak_concurrency()).collect();
    println!(
        "wrong credential, fallback local: {served} served through the ready replicas ({} failed); \
         pods' peaks {peaks:?}, known peaks {known:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(peaks, [1, 1]);
    assert_eq!(known, [1.0, 1.0]);
}

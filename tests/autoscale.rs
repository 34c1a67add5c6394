//! Request-based autoscaling (issues 8 and 14) against the fake API server, with sample model
//! pods and real routers: a load step panics the autoscaler into scaling the target Deployment up
//! while the queued requests wait, and they are served as the new pods turn ready; without load
//! it comes back down after the stable window, at most halving per step, never below
//! `minInstances`; the Deployment's replicas come from its watch (no GET of the scale, ever);
//! with three router replicas only the owner writes, also when one of them has the wrong cluster
//! credential; an HPA on the Deployment stops the autoscaler with a clear status.
//!
//! A small "Deployment controller" in the test stands in for Kubernetes: when the Deployment's
//! `spec.replicas` changes it waits a moment (pods starting) and rewrites the EndpointSlice with
//! that many ready pods. Time is never asserted as an upper bound; the decision's timing over
//! minutes of load is tested on a virtual clock in `tests/autoscale_traces.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use parking_lot::Mutex;
use scoregate::autoscale::{self, Ownership};
use scoregate::config::AutoscaleConfig;
use scoregate::router::Router;
use scoregate_fake_kube::{FakeApiServer, RecordedRequest};
use serde_json::{json, Value};
use support::kube::*;

const SCALE_PATH: &str = "/apis/apps/v1/namespaces/models/deployments/ep-blue/scale";
const STATUS_PATH: &str =
    "/apis/scoregate.io/v1/namespaces/models/onlinedeployments/ep-blue/status";
/// How long each request of a burst keeps its pod busy.
const BUSY_MS: u64 = 2_000;
/// Requests in a burst: 1 on the single pod, 4 queued.
const BURST: usize = 5;

/// An OnlineDeployment `ep-blue` (deployment `blue` of `my-ep`) scaled by the router between 1 and
/// 3 replicas of the apps/v1 Deployment `ep-blue`, one slot per pod, every second. At 30 % a
/// single request already asks for ceil(100 / 30) = 4 replicas, so whichever moment of a burst a
/// decision samples, it scales 1 → 3 in one step.
fn autoscaled(port: u16) -> Value {
    autoscaled_blue(
        port,
        json!({"maxConcurrentRequestsPerInstance": 1, "maxQueueWaitMs": 6000, "maxQueueLength": 20}),
        json!({"minInstances": 1, "maxInstances": 3, "targetUtilizationPercentage": 30}),
    )
}

fn slice_of(pods: &Pods, ready: usize) -> Value {
    let states: Vec<PodState> = pods.ips()[..ready.min(pods.pods.len())]
        .iter()
        .map(|ip| PodState::ready(*ip))
        .collect();
    slice(NS, "svc-blue-1", "svc-blue", pods.port, &states)
}

/// The world around one autoscaled deployment: fake API server, three sample pods (one ready),
/// the endpoint and its keys.
async fn world() -> (FakeApiServer, Pods) {
    let fake = fake().await;
    let port = free_port();
    let pods = pods(7, 3, "blue-model", port).await;
    fake.apply(key_secret(NS, "ep-keys", KEY, None)).unwrap();
    fake.apply(endpoint(NS, "my-ep", "ep-keys", &[("blue", 100)]))
        .unwrap();
    fake.apply(autoscaled(port)).unwrap();
    fake.apply(apps_deployment_blue(1)).unwrap();
    fake.apply(slice_of(&pods, 1)).unwrap();
    (fake, pods)
}

/// The replicas of the Deployment in the fake.
fn replicas(fake: &FakeApiServer) -> u32 {
    fake.get("apps/v1", "Deployment", NS, "ep-blue")
        .and_then(|d| d.pointer("/spec/replicas").and_then(Value::as_u64))
        .unwrap_or(0) as u32
}

/// Stands in for the Deployment controller and the kubelet: every replica count the Deployment
/// is set to becomes, a moment later, that many ready pods in the EndpointSlice. Returns the
/// counts seen, in order.
fn pod_controller(fake: Arc<FakeApiServer>, pods: Arc<Pods>) -> Arc<Mutex<Vec<u32>>> {
    let history = Arc::new(Mutex::new(vec![replicas(&fake)]));
    let seen = history.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = replicas(&fake);
            if seen.lock().last() == Some(&now) {
                continue;
            }
            seen.lock().push(now);
            tokio::time::sleep(Duration::from_millis(300)).await; // pods start
            fake.apply(slice_of(&pods, now as usize)).unwrap();
        }
    });
    history
}

/// A scoring request that keeps its pod busy for `busy_ms`.
async fn slow_score(addr: SocketAddr, busy_ms: u64) -> StatusCode {
    let url = format!("http://{addr}/api/v1/endpoint/my-ep/score?sleep_ms={busy_ms}");
    post_score(&client(), &url, KEY, &[]).await.status
}

/// `n` concurrent slow requests through `addr`.
fn burst(addr: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    (0..n)
        .map(|_| tokio::spawn(slow_score(addr, BUSY_MS)))
        .collect()
}

fn scale_requests(fake: &FakeApiServer, method: &str) -> Vec<RecordedRequest> {
    fake.requests_with_prefix(SCALE_PATH)
        .into_iter()
        .filter(|r| r.method == method && r.path == SCALE_PATH)
        .collect()
}

/// Time between two recorded requests (0 when out of order).
fn between(from: &RecordedRequest, to: &RecordedRequest) -> Duration {
    to.at.duration_since(from.at).unwrap_or_default()
}

/// The decisions `router` made as the owner so far.
fn decisions(router: &Router) -> f64 {
    metric(&router.metrics().render(), autoscale::names::DECISIONS).unwrap_or(0.0)
}

/// The scale subresource and the Deployment itself were never read one by one (the watch
/// supplies the replicas).
fn assert_no_scale_reads(fake: &FakeApiServer) {
    let reads = reads_of_blue_deployment(fake);
    assert!(
        reads.is_empty(),
        "reads of the Deployment or its scale: {reads:?}"
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.is_watch() && r.path.starts_with("/apis/apps/v1/")),
        "the Deployments are watched"
    );
}

fn autoscale_status(fake: &FakeApiServer) -> Value {
    fake.get("scoregate.io/v1", "OnlineDeployment", NS, "ep-blue")
        .and_then(|o| o.pointer("/status/autoscale").cloned())
        .unwrap_or(Value::Null)
}

/// A router on `fake` whose own autoscaler is `autoscale`.
async fn router(
    fake: &FakeApiServer,
    dir: &tempfile::TempDir,
    autoscale: AutoscaleConfig,
) -> Router {
    let mut config = router_config(fake, &[NS], dir);
    config.autoscale = autoscale;
    let router = ready_router(config).await;
    eventually("the first pod to be routable", || async {
        routable(&router, "my-ep")
            .iter()
            .any(|(_, pods)| !pods.is_empty())
    })
    .await;
    router
}

/// The autoscaler on, with short windows (a stable window of 3 s, a panic window of 1 s) so a
/// test in real time sees a whole cycle in seconds; `scale_down_intervals` decisions of
/// stabilisation.
fn enabled(scale_down_intervals: u32, field_manager: &str) -> AutoscaleConfig {
    AutoscaleConfig {
        enabled: true,
        scale_down_intervals,
        stable_window_ms: 3_000,
        panic_window_ms: 1_000,
        field_manager: field_manager.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_step_scales_up_at_once_and_down_after_the_windows_without_reading_the_scale() {
    let (fake, pods) = world().await;
    let (fake, pods) = (Arc::new(fake), Arc::new(pods));
    let dir = tempfile::tempdir().unwrap();
    let router = router(&fake, &dir, enabled(3, "scoregate-autoscaler")).await;
    let addr = router.http_addr().unwrap();
    let history = pod_controller(fake.clone(), pods.clone());

    // Load step: one pod busy, four requests queued: 5 slots of demand on 1 slot, a panic
    // (5 / 0.3 pods wanted: above max, so 3).
    let requests = burst(addr, BURST);
    eventually("the Deployment to be scaled up", || async {
        replicas(&fake) == 3
    })
    .await;
    let first_write = scale_requests(&fake, "PUT")[0].clone();
    assert_eq!(first_write.status, 200);
    assert_eq!(
        first_write.field_manager.as_deref(),
        Some("scoregate-autoscaler")
    );
    eventually("the status of the panic", || async {
        autoscale_status(&fake)["reason"] == "Panic"
    })
    .await;

    // The queue waits while the new pods start, and they serve it.
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert!(
        pods.requests()[1..].iter().sum::<u64>() > 0,
        "queued requests were served by the new pods: {:?}",
        pods.requests()
    );

    // No load: the panic holds for a stable window (3 s) after the burst, then down by at
    // most half a step, to minInstances and no further.
    eventually("the Deployment to be scaled down to 1", || async {
        replicas(&fake) == 1
    })
    .await;
    let writes = scale_requests(&fake, "PUT");
    assert_eq!(writes.len(), 3, "1 → 3, 3 → 2, 2 → 1: {writes:?}");
    assert!(
        between(&writes[0], &writes[1]) >= Duration::from_secs(3),
        "down {:?} after the scale-up, within the panic's stable window",
        between(&writes[0], &writes[1])
    );
    let settled = decisions(&router);
    eventually("four more decision intervals", || async {
        decisions(&router) >= settled + 4.0
    })
    .await;
    assert_eq!(
        scale_requests(&fake, "PUT").len(),
        3,
        "never below minInstances"
    );
    assert_eq!(*history.lock(), [1, 3, 2, 1]);
    assert_no_scale_reads(&fake);

    let status = autoscale_status(&fake);
    assert_eq!(status["reason"], "Steady", "{status}");
    assert_eq!(status["currentReplicas"], 1);
    assert_eq!(status["desiredReplicas"], 1);
    assert!(status["lastScaleTime"].is_string(), "{status}");
    let text = router.metrics().render();
    let events = |direction: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(autoscale::names::SCALE_EVENTS)
                    && l.contains(&format!("direction=\"{direction}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(events("up"), Some(2.0), "{text}");
    assert_eq!(events("down"), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, autoscale::names::CURRENT_REPLICAS),
        Some(1.0),
        "{text}"
    );

    // Manual scaling from now on: the autoscaler lets go, and its gauges read 0.
    let mut manual = autoscaled(pods.port);
    manual["spec"]["scaleSettings"]["type"] = json!("default");
    fake.apply(manual).unwrap();
    eventually("the autoscaler to let go", || async {
        metric(
            &router.metrics().render(),
            autoscale::names::CURRENT_REPLICAS,
        ) == Some(0.0)
    })
    .await;
    router.shutdown().await;
}

/// Ownership that the test moves from one replica to another.
struct Owner {
    me: usize,
    owner: Arc<AtomicUsize>,
}

impl Ownership for Owner {
    fn owns(&self, _endpoint: &str, _deployment: &str) -> bool {
        self.owner.load(Ordering::SeqCst) == self.me
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_replicas_only_the_owner_writes_even_as_ownership_moves() {
    let (fake, pods) = world().await;
    let (fake, pods) = (Arc::new(fake), Arc::new(pods));
    let dir = tempfile::tempdir().unwrap();
    let owner = Arc::new(AtomicUsize::new(0));
    let mut routers = Vec::new();
    let mut controllers = Vec::new();
    for me in 0..3 {
        let router = router(&fake, &dir, AutoscaleConfig::default()).await;
        let client = fake.client(NS).await.unwrap();
        controllers.push(autoscale::spawn(
            client,
            &[NS.to_string()],
            &enabled(3, &format!("replica-{me}")),
            router.table().clone(),
            Arc::new(Owner {
                me,
                owner: owner.clone(),
            }),
            router.metrics(),
        ));
        routers.push(router);
    }
    let _history = pod_controller(fake.clone(), pods.clone());

    // Replica 0 owns the deployment (and, as the coordination owner would, sees its load).
    let requests = burst(routers[0].http_addr().unwrap(), BURST);
    eventually("the Deployment to be scaled up", || async {
        replicas(&fake) == 3
    })
    .await;
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    eventually("replica 0 to write the status", || async {
        autoscale_status(&fake)["currentReplicas"] == 3
    })
    .await;

    // Ownership moves to replica 1, which sees no load and scales down after its own window.
    let moved = SystemTime::now();
    owner.store(1, Ordering::SeqCst);
    eventually("the Deployment to be scaled down to 1", || async {
        replicas(&fake) == 1
    })
    .await;
    eventually("replica 1 to write the status", || async {
        autoscale_status(&fake)["currentReplicas"] == 1
    })
    .await;

    let writes: Vec<RecordedRequest> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && (r.path == SCALE_PATH || r.path == STATUS_PATH))
        // The autoscaler's writes: not the Ready conditions (field manager scoregate-status).
        .filter(|r| r.field_manager.as_deref() != Some("scoregate-status"))
        .collect();
    let scales: Vec<&RecordedRequest> = writes.iter().filter(|r| r.path == SCALE_PATH).collect();
    assert_eq!(
        scales.len(),
        3,
        "one write per change, no conflicts: {scales:?}"
    );
    assert!(scales.iter().all(|r| r.status == 200), "{scales:?}");
    for pair in scales.windows(2) {
        assert!(
            between(pair[0], pair[1]) >= Duration::from_millis(900),
            "two scale writes within one decision interval: {pair:?}"
        );
    }
    assert_no_scale_reads(&fake);
    let by = |manager: &str| -> Vec<&RecordedRequest> {
        writes
            .iter()
            .filter(|w| w.field_manager.as_deref() == Some(manager))
            .collect()
    };
    let (old, new) = (by("replica-0"), by("replica-1"));
    assert_eq!(
        old.len() + new.len(),
        writes.len(),
        "only owners write: {writes:?}"
    );
    assert!(!old.is_empty() && !new.is_empty(), "{writes:?}");
    assert!(
        new.iter().all(|w| w.at > moved),
        "replica 1 waited for ownership: {new:?}"
    );
    assert!(
        old.iter().all(|w| w.at < new[0].at),
        "replica 0 stopped before replica 1 acted: {writes:?}"
    );
    assert_eq!(scales[0].field_manager.as_deref(), Some("replica-0"));
    assert!(scales[1..]
        .iter()
        .all(|w| w.field_manager.as_deref() == Some("replica-1")));
    assert!(
        writes.iter().any(|w| w.path == STATUS_PATH && w.at < moved)
            && writes.iter().any(|w| w.path == STATUS_PATH && w.at > moved),
        "both owners wrote the status in turn: {writes:?}"
    );
    for controller in controllers {
        controller.abort();
    }
    for router in routers {
        router.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_on_the_deployment_stops_the_autoscaler_with_a_clear_status() {
    let (fake, pods) = world().await;
    let (fake, pods) = (Arc::new(fake), Arc::new(pods));
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "blue-cpu", "namespace": NS},
        "spec": {"minReplicas": 1, "maxReplicas": 5,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ep-blue"}},
    });
    fake.apply(hpa.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let router = router(&fake, &dir, enabled(3, "scoregate-autoscaler")).await;
    let addr = router.http_addr().unwrap();
    let _history = pod_controller(fake.clone(), pods.clone());

    let requests = burst(addr, BURST);
    eventually("the HpaConflict status", || async {
        autoscale_status(&fake)["reason"] == "HpaConflict"
    })
    .await;
    let status = autoscale_status(&fake);
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("HorizontalPodAutoscaler blue-cpu") && message.contains("Delete the HPA"),
        "{status}"
    );
    let text = router.metrics().render();
    assert_eq!(
        metric(&text, autoscale::names::REFUSED),
        Some(1.0),
        "{text}"
    );
    assert_eq!(replicas(&fake), 1);
    for request in requests {
        let _ = request.await.unwrap();
    }

    // Without the HPA the autoscaler takes over again.
    let deleted = SystemTime::now();
    fake.delete("autoscaling/v2", "HorizontalPodAutoscaler", NS, "blue-cpu")
        .unwrap();
    let requests = burst(addr, BURST);
    eventually("the Deployment to be scaled up", || async {
        replicas(&fake) == 3
    })
    .await;
    assert!(
        scale_requests(&fake, "PUT")
            .iter()
            .chain(&scale_requests(&fake, "GET"))
            .all(|r| r.at > deleted),
        "no scale write, not even a read, while the HPA existed"
    );
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    let text = router.metrics().render();
    assert_eq!(
        metric(&text, autoscale::names::REFUSED),
        Some(0.0),
        "{text}"
    );

    // A new HPA stops it again, and the status stops showing the last decision's counts.
    eventually("the status of the scale-up", || async {
        autoscale_status(&fake)["currentReplicas"] == 3
    })
    .await;
    fake.apply(hpa).unwrap();
    eventually("the HpaConflict status again", || async {
        autoscale_status(&fake)["reason"] == "HpaConflict"
    })
    .await;
    let status = autoscale_status(&fake);
    assert!(
        status["currentReplicas"].is_null() && status["desiredReplicas"].is_null(),
        "{status}"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_write_that_loses_a_race_is_decided_again_not_retried() {
    let (fake, pods) = world().await;
    let (fake, pods) = (Arc::new(fake), Arc::new(pods));
    // The first scale write finds the Deployment changed since its watch saw it (409 Conflict).
    fake.fail_next_writes(SCALE_PATH, 409, 1);
    let dir = tempfile::tempdir().unwrap();
    let router = router(&fake, &dir, enabled(3, "scoregate-autoscaler")).await;
    let _history = pod_controller(fake.clone(), pods.clone());

    let requests = burst(router.http_addr().unwrap(), BURST);
    eventually("the Deployment to be scaled up", || async {
        replicas(&fake) == 3
    })
    .await;
    let writes = scale_requests(&fake, "PUT");
    assert_eq!(
        writes.iter().map(|w| w.status).collect::<Vec<_>>(),
        [409, 200],
        "{writes:?}"
    );
    assert!(
        between(&writes[0], &writes[1]) >= Duration::from_millis(900),
        "the second write waited for the next decision: {writes:?}"
    );
    assert_no_scale_reads(&fake);
    let text = router.metrics().render();
    assert_eq!(
        metric(&text, autoscale::names::CONFLICTS),
        Some(1.0),
        "{text}"
    );
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    router.shutdown().await;
}

/// Three routers coordinating admission (issue 7) with their autoscalers on: load through all
/// three lands in the owner's queue, the owner alone scales, once, and no pod ever holds more
/// than its one slot.
/// Three routers coordinating admission on `fake`, their autoscalers on (field managers
/// `replica-0..2`); the first `wrong` of them have a cluster secret the others do not share.
/// Returns them once the others are ready, see each other and route the first pod, with their
/// cluster addresses.
async fn cluster_of_three(
    fake: &FakeApiServer,
    dir: &tempfile::TempDir,
    wrong: usize,
) -> (Vec<Router>, Vec<SocketAddr>) {
    let secret = dir.path().join("cluster-secret");
    std::fs::write(&secret, "autoscale-cluster-secret-0123456789").unwrap();
    let other = dir.path().join("other-secret");
    std::fs::write(&other, "a-different-cluster-secret-987654321").unwrap();
    let addresses: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut routers = Vec::new();
    for (i, me) in addresses.iter().enumerate() {
        let mut config = router_config(fake, &[NS], dir);
        config.autoscale = enabled(100, &format!("replica-{i}"));
        config.cluster = Some(scoregate::config::ClusterConfig {
            listen: *me,
            peers: addresses.clone(),
            secret_file: Some(if i < wrong { &other } else { &secret }.clone()),
            ..Default::default()
        });
        // Started together, as a Deployment's replicas are: one alone has no majority yet.
        routers.push(Router::start(config).await.expect("router starts"));
    }
    let members = 3 - wrong;
    eventually(
        "the replicas to be ready, see each other and the first pod",
        || async {
            routers[wrong..].iter().all(|r| {
                r.is_ready()
                    && r.cluster().unwrap().view().members().len() == members
                    && routable(r, "my-ep").iter().any(|(_, p)| !p.is_empty())
            })
        },
    )
    .await;
    (routers, addresses)
}

/// The autoscaler's writes to the scale and status of the OnlineDeployment (not the Ready
/// conditions, field manager scoregate-status).
fn autoscaler_writes(fake: &FakeApiServer) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method != "GET" && (r.path == SCALE_PATH || r.path == STATUS_PATH))
        .filter(|r| r.field_manager.as_deref() != Some("scoregate-status"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_replicas_scale_once_through_the_owner_with_load_on_every_replica() {
    let (fake, pods) = world().await;
    let (fake, pods) = (Arc::new(fake), Arc::new(pods));
    let dir = tempfile::tempdir().unwrap();
    let (routers, addresses) = cluster_of_three(&fake, &dir, 0).await;
    // Before the replicas reach each other, each owns everything in its own view and may write
    // a first status: from here on, only the owner acts.
    let converged = SystemTime::now();
    let ids: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let owner = scoregate::cluster::ring::owner(&ids, "my-ep", "blue").unwrap();
    let _history = pod_controller(fake.clone(), pods.clone());

    // Five slow requests, spread over the three routers: one pod busy, four queued at the owner.
    let mut requests = Vec::new();
    for (i, router) in routers.iter().enumerate() {
        requests.extend(burst(
            router.http_addr().unwrap(),
            if i == 2 { 1 } else { 2 },
        ));
    }
    eventually("the Deployment to be scaled up", || async {
        replicas(&fake) == 3
    })
    .await;
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    let writes = autoscaler_writes(&fake);
    let owner_manager = format!("replica-{owner}");
    assert!(
        writes
            .iter()
            .filter(|w| w.at > converged)
            .all(|w| w.field_manager.as_deref() == Some(owner_manager.as_str())),
        "only the owner ({owner_manager}) writes: {writes:?}"
    );
    let scales: Vec<&RecordedRequest> = writes.iter().filter(|w| w.path == SCALE_PATH).collect();
    assert_eq!(scales.len(), 1, "one decision, 1 → 3: {scales:?}");
    assert_eq!(
        scales[0].field_manager.as_deref(),
        Some(owner_manager.as_str()),
        "the owner scaled: {scales:?}"
    );
    for pod in &pods.pods {
        assert!(
            pod.stats().peak_concurrency() <= 1,
            "a pod of cap 1 saw {} requests at once",
            pod.stats().peak_concurrency()
        );
    }
    for router in routers {
        router.shutdown().await;
    }
}

/// One replica of three has the wrong cluster credential (issue 14): it is not ready, admits
/// under `fallback: local`, and, having no majority, never acts for the deployment; the two
/// others agree on one owner, and that one alone scales and writes the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_wrong_credential_on_one_replica_there_is_one_writer() {
    let (fake, pods) = world().await;
    let (fake, pods) = (Arc::new(fake), Arc::new(pods));
    let dir = tempfile::tempdir().unwrap();
    let (routers, _) = cluster_of_three(&fake, &dir, 1).await;
    assert!(
        !routers[0].is_ready(),
        "the misconfigured replica is not ready"
    );
    let converged = SystemTime::now();
    let _history = pod_controller(fake.clone(), pods.clone());

    // Load through every replica, the misconfigured one included (a client that reaches it
    // directly: the Service would not send it requests while it is not ready).
    let mut requests = Vec::new();
    for router in &routers {
        requests.extend(burst(router.http_addr().unwrap(), 2));
    }
    eventually("the Deployment to be scaled up", || async {
        replicas(&fake) == 3
    })
    .await;
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    // Some decisions later, still one writer.
    let made = decisions(&routers[1]) + decisions(&routers[2]);
    eventually("three more decisions", || async {
        decisions(&routers[1]) + decisions(&routers[2]) >= made + 3.0
    })
    .await;
    let writes: Vec<RecordedRequest> = autoscaler_writes(&fake)
        .into_iter()
        .filter(|w| w.at > converged)
        .collect();
    let managers: std::collections::BTreeSet<&str> = writes
        .iter()
        .filter_map(|w| w.field_manager.as_deref())
        .collect();
    assert_eq!(managers.len(), 1, "one writer: {writes:?}");
    assert!(!managers.contains("replica-0"), "{writes:?}");
    assert_eq!(
        decisions(&routers[0]),
        0.0,
        "the misconfigured replica never decides"
    );
    let scales = writes.iter().filter(|w| w.path == SCALE_PATH).count();
    assert_eq!(scales, 1, "one decision, 1 → 3: {writes:?}");
    assert_no_scale_reads(&fake);
    for router in routers {
        router.shutdown().await;
    }
}

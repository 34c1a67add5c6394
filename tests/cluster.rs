//! Coordinated admission across router replicas (issue 7): the per-pod cap holds cluster-wide,
//! ownership moves with the live replicas without over-admitting, a replica without the shared
//! credential is refused, and an unreachable owner means the configured fallback.
//!
//! Routers run in this process (each with its own cluster port on 127.0.0.1) unless a test
//! needs to kill one, which then runs the real binary. No test asserts a duration.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use scoregate::config::{ClusterConfig, FallbackMode, RouterConfig};
use scoregate::sample_model::SampleModel;
use support::load::Load;
use support::peer::{authenticated_peer, grant};
use support::*;

const SECRET: &str = "cluster-secret-for-tests-0123456789";

/// `n` addresses on 127.0.0.1 free now, for cluster ports.
fn cluster_addresses(n: usize) -> Vec<SocketAddr> {
    (0..n).map(|_| dead_address()).collect()
}

/// A deployment name of endpoint `credit` that replica `owner` of `addresses` owns, and a
/// routes file where it takes all of the endpoint's traffic on `pods`.
fn routes_owned_by(
    addresses: &[SocketAddr],
    owner: usize,
    pods: &[SampleModel],
) -> (String, String) {
    let deployment = (0..200)
        .map(|i| format!("dep{i}"))
        .find(|d| owner_of(addresses, "credit", d) == owner)
        .expect("one of 200 names hashes to every replica");
    let routes = routes(
        &[endpoint(
            "credit",
            &[&format!("traffic: {{ {deployment}: 100 }}")],
        )],
        &[support::deployment(
            &deployment,
            "credit",
            &addresses_of(pods),
            CAP_ONE,
        )],
    );
    (deployment, routes)
}

fn write_secret(dir: &Path, secret: &str) -> std::path::PathBuf {
    let path = dir.join(format!("secret-{}", fastrand::u32(..)));
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

fn cluster_config(me: SocketAddr, peers: &[SocketAddr], secret_file: &Path) -> ClusterConfig {
    ClusterConfig {
        listen: me,
        peers: peers.to_vec(),
        secret_file: Some(secret_file.to_path_buf()),
        ..ClusterConfig::default()
    }
}

/// Starts one router per address, all listing each other, and waits until every one sees all.
async fn start_replicas(
    routes_yaml: &str,
    addresses: &[SocketAddr],
    secret_dir: &Path,
    tweak: impl Fn(&mut RouterConfig),
) -> Vec<Harness> {
    let secret = write_secret(secret_dir, SECRET);
    let mut routers = Vec::new();
    for me in addresses {
        let config = cluster_config(*me, addresses, &secret);
        routers.push(
            Harness::start_with(routes_yaml, |c| {
                c.cluster = Some(config);
                tweak(c);
            })
            .await,
        );
    }
    wait_for_members(&routers, addresses.len()).await;
    routers
}

/// Waits until every replica sees `n` members in one agreed view, and the owner of
/// `credit/blue` grants (its lease holds, the view settled, the reports are in).
async fn wait_for_members(routers: &[Harness], n: usize) {
    guard("every replica seeing the others", async {
        loop {
            let clusters: Vec<_> = routers
                .iter()
                .map(|h| h.router.as_ref().unwrap().cluster().unwrap())
                .collect();
            let agreed = clusters
                .iter()
                .all(|c| c.view().members().len() == n && c.view().id() == clusters[0].view().id());
            if agreed && clusters.iter().any(|c| c.grants("credit", "blue")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn addresses_of(pods: &[SampleModel]) -> Vec<SocketAddr> {
    pods.iter().map(|p| p.address()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_put_two_requests_on_a_pod_of_cap_one() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let routes = simple_routes("credit", &addresses_of(&pods), CAP_ONE);
    let addresses = cluster_addresses(3);
    let routers = start_replicas(&routes, &addresses, dir.path(), |_| {}).await;
    let owner = owner_of(&addresses, "credit", "blue");

    let urls: Vec<String> = routers
        .iter()
        .map(|r| r.url("credit", "/score?sleep_ms=5"))
        .collect();
    let load = Load::start(&urls, 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failed) = load.finish().await;

    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 50, "only {ok} requests were served");
    for pod in &pods {
        assert_eq!(
            pod.stats().peak_concurrency(),
            1,
            "a pod of cap 1 saw more than one request at once"
        );
    }
    for (i, router) in routers.iter().enumerate() {
        let remote = router
            .metric_or_zero("scoregate_cluster_admissions_total", &[("via", "remote")])
            .await;
        let as_owner = router
            .metric_or_zero("scoregate_cluster_admissions_total", &[("via", "owner")])
            .await;
        if i == owner {
            assert!(
                as_owner > 0.0 && remote == 0.0,
                "owner: {as_owner} local, {remote} remote"
            );
            let served = router
                .metric_or_zero("scoregate_cluster_grants_served_total", &[])
                .await;
            assert!(served > 0.0, "the owner served no grants");
        } else {
            assert!(
                remote > 0.0 && as_owner == 0.0,
                "replica {i}: {as_owner} as owner, {remote} remote"
            );
        }
        let fallback = router
            .metric_or_zero("scoregate_cluster_admissions_total", &[("via", "fallback")])
            .await;
        assert_eq!(fallback, 0.0, "replica {i} fell back to local admission");
    }
    for router in routers {
        router.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_shared_429_and_503_mean_the_same_cluster_wide() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(1).await;
    // A held stream dropped mid-body keeps its slot to its request's deadline: keep it short.
    let settings = "request_timeout_ms: 300, max_concurrent_requests_per_instance: 1, \
                    max_queue_wait_ms: 300, max_queue_length: 1";
    let routes = simple_routes("credit", &addresses_of(&pods), settings);
    let addresses = cluster_addresses(2);
    let routers = start_replicas(&routes, &addresses, dir.path(), |_| {}).await;
    let owner = owner_of(&addresses, "credit", "blue");
    let other = 1 - owner;

    // The only slot, taken through the replica that does not own the deployment.
    let held = routers[other].hold("credit", &[]).await;
    assert_eq!(held.status, 200);
    // One request waits (through the owner) ...
    let waiting = routers[owner].spawn_score("credit", "");
    routers[owner].wait_queue_depth("credit", "blue", 1).await;
    // ... so the next one, through the other replica, finds the shared queue full.
    let full = routers[other].score("credit", "").await;
    assert_router_error(&full, 429, "QueueFull");
    // The waiting one times out in the owner's queue.
    let timed_out = guard("the queued request", waiting).await.unwrap();
    assert_router_error(&timed_out, 503, "QueueTimeout");
    drop(held);
    // Released through the stream: the slot is free cluster-wide again.
    let resp = routers[other].score("credit", "").await;
    assert_eq!(resp.status, 200);
    assert_eq!(pods[0].stats().peak_concurrency(), 1);
    for router in routers {
        router.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_owner_counts_the_slots_in_use_before_granting() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(2).await;
    let addresses = cluster_addresses(3);
    // A deployment the third replica will own once it joins.
    let (deployment, routes) = routes_owned_by(&addresses, 2, &pods);
    let secret = write_secret(dir.path(), SECRET);
    let mut routers = Vec::new();
    for me in &addresses[..2] {
        let config = cluster_config(*me, &addresses, &secret);
        routers.push(Harness::start_with(&routes, |c| c.cluster = Some(config)).await);
    }
    wait_for_members(&routers, 2).await;
    // Both pods busy: one request through each of the first two replicas.
    let a = routers[0].hold("credit", &[]).await;
    let b = routers[1].hold("credit", &[]).await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));

    let config = cluster_config(addresses[2], &addresses, &secret);
    routers.push(Harness::start_with(&routes, |c| c.cluster = Some(config)).await);
    wait_for_members(&routers, 3).await;
    let newcomer = &routers[2];
    newcomer
        .wait_metric(
            "scoregate_in_flight_requests",
            &[("endpoint", "credit"), ("deployment", deployment.as_str())],
            |v| v == 2.0,
        )
        .await;
    // The new owner knows both pods are busy: a request through it waits instead of landing
    // on a busy pod.
    let waiting = newcomer.spawn_score("credit", "");
    newcomer.wait_queue_depth("credit", &deployment, 1).await;
    drop(a);
    let resp = guard("the queued request", waiting).await.unwrap();
    assert_eq!(resp.status, 200);
    drop(b);
    for pod in &pods {
        assert_eq!(
            pod.stats().peak_concurrency(),
            1,
            "over-admitted during the handover"
        );
    }
    let over = newcomer
        .metric_or_zero("scoregate_cluster_over_admissions_total", &[])
        .await;
    assert_eq!(over, 0.0);
    let reported: f64 = {
        let mut sum = 0.0;
        for r in &routers[..2] {
            sum += r
                .metric_or_zero("scoregate_cluster_leases_reported_total", &[])
                .await;
        }
        sum
    };
    assert!(
        reported >= 1.0,
        "no held slot was reported to the new owner"
    );
    for router in routers {
        router.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_without_the_shared_credential_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(1).await;
    let routes = simple_routes("credit", &addresses_of(&pods), CAP_ONE);
    let addresses = cluster_addresses(2);
    let good = write_secret(dir.path(), SECRET);
    let bad = write_secret(dir.path(), "another-secret-entirely-0123456789");
    let a = Harness::start_with(&routes, |c| {
        c.cluster = Some(cluster_config(addresses[0], &addresses, &good))
    })
    .await;
    let b = Harness::start_with(&routes, |c| {
        c.cluster = Some(cluster_config(addresses[1], &addresses, &bad))
    })
    .await;
    // Both try to connect to each other and both refuse.
    a.wait_metric("scoregate_cluster_refused_total", &[], |v| v >= 1.0)
        .await;
    b.wait_metric("scoregate_cluster_refused_total", &[], |v| v >= 1.0)
        .await;
    for h in [&a, &b] {
        let view = h.router.as_ref().unwrap().cluster().unwrap().view();
        assert_eq!(
            view.members().len(),
            1,
            "a replica with another secret was admitted"
        );
    }

    // A plain HTTP/2 client that skips the handshake gets 401 for a grant.
    let stream = tokio::net::TcpStream::connect(addresses[0]).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
    tokio::spawn(connection);
    let grant = http::Request::post(format!("http://{}/v1/grant", addresses[0]))
        .header("x-scoregate-deployment", "credit/blue")
        .header("x-scoregate-wait-ms", "0")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(grant).await.unwrap();
    assert_eq!(response.status(), 401);
    // Neither can tell which secret is wrong: both are isolated (not ready) and, under the
    // default `fallback: local`, still serve on their own.
    for h in [&a, &b] {
        let cluster = h.router.as_ref().unwrap().cluster().unwrap().clone();
        eventually("the replica to be isolated", || {
            let cluster = cluster.clone();
            async move {
                cluster
                    .not_ready_reason()
                    .is_some_and(|r| r.contains("cannot authenticate"))
            }
        })
        .await;
        assert_eq!(h.score("credit", "").await.status, 200);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_cannot_serve_the_deployment_means_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(1).await;
    let secret = write_secret(dir.path(), SECRET);
    for (mode, expected) in [(FallbackMode::Local, 200), (FallbackMode::Reject, 503)] {
        // Replica 1 owns the deployment but has not seen its endpoint (its routes lag).
        let addresses = cluster_addresses(2);
        let (_, full_routes) = routes_owned_by(&addresses, 1, &pods);
        let lagging_routes = simple_routes("other", &addresses_of(&pods), CAP_ONE);
        let asker = 0;
        let mut routers = Vec::new();
        for (i, routes_yaml) in [full_routes, lagging_routes].iter().enumerate() {
            let mut config = cluster_config(addresses[i], &addresses, &secret);
            config.fallback = mode;
            routers.push(Harness::start_with(routes_yaml, |c| c.cluster = Some(config)).await);
        }
        wait_for_members(&routers, 2).await;
        let resp = routers[asker].score("credit", "").await;
        assert_eq!(resp.status, expected, "fallback {mode:?}: {}", resp.text());
        if expected == 503 {
            assert_router_error(&resp, 503, "OwnerUnreachable");
        }
        let fallbacks = routers[asker]
            .metric_or_zero("scoregate_cluster_admissions_total", &[("via", "fallback")])
            .await;
        assert_eq!(fallbacks, 1.0);
        for router in routers {
            router.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_never_released_expires() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(1).await;
    let (router, me) = alone(dir.path(), &pods, 300, 100).await;

    // A peer takes the only slot and never releases it: the lease runs out by itself
    // (2 × request_timeout_ms + lease_margin_ms) and the waiting request gets the pod.
    let (mut peer, _connection) = authenticated_peer(me, SECRET).await;
    let (granted, _kept_open) = grant(&mut peer, me, "credit/blue").await;
    assert_eq!(granted.status(), 200);
    assert_eq!(
        granted.headers()["x-scoregate-pod"].to_str().unwrap(),
        pods[0].address().to_string()
    );
    let resp = router.score("credit", "").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        router
            .metric_or_zero("scoregate_cluster_lease_expiries_total", &[])
            .await,
        1.0
    );
    router.shutdown().await;
}

/// A lease is released at once when its holder ends the stream or resets it with CANCEL; a
/// holder that vanishes with its connection (crashed, stopped, partitioned) may still have its
/// request on the pod, so the slot stays taken until the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lease_is_freed_at_once_a_vanished_one_when_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(1).await;
    let (router, me) = alone(dir.path(), &pods, 1500, 100).await;

    let (mut peer, connection) = authenticated_peer(me, SECRET).await;
    let (granted, mut lease) = grant(&mut peer, me, "credit/blue").await;
    assert_eq!(granted.status(), 200);
    router.wait_in_flight("credit", "blue", 1).await;
    lease.send_reset(h2::Reason::CANCEL);
    router.wait_in_flight("credit", "blue", 0).await;

    let (granted, _kept_open) = grant(&mut peer, me, "credit/blue").await;
    assert_eq!(granted.status(), 200);
    router.wait_in_flight("credit", "blue", 1).await;
    connection.abort();
    assert_kept_after_vanishing(&router).await;
    router.wait_in_flight("credit", "blue", 0).await;
    assert_eq!(
        router
            .metric_or_zero("scoregate_cluster_lease_expiries_total", &[])
            .await,
        1.0,
        "the vanished holder's slot was freed by its lease's expiry"
    );
    router.shutdown().await;
}

/// A holder that stops answering (its process stopped: its socket stays open, nothing is read
/// or sent) loses its connection to the owner's keep-alive, and its slot stays taken until the
/// lease expires: its request may still be on the pod, or be sent when it continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_answering_keeps_its_slot_until_the_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let pods = pods(1).await;
    let (router, me) = alone(dir.path(), &pods, 8000, 1000).await;

    let (paused, connection) = support::peer::pausable_peer(me, SECRET).await;
    let mut sender = paused.sender.clone();
    let (granted, _kept_open) = grant(&mut sender, me, "credit/blue").await;
    assert_eq!(granted.status(), 200);
    paused.pause();
    assert_kept_after_vanishing(&router).await;
    drop(connection);
    router.shutdown().await;
}

/// One clustered replica on its own, `credit/blue` on `pods` at cap 1 with `request_timeout_ms`,
/// leases `lease_margin_ms` longer; its cluster address.
async fn alone(
    dir: &Path,
    pods: &[SampleModel],
    request_timeout_ms: u64,
    lease_margin_ms: u64,
) -> (Harness, SocketAddr) {
    let secret = write_secret(dir, SECRET);
    let settings = format!(
        "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 20000, request_timeout_ms: {request_timeout_ms}"
    );
    let routes = simple_routes("credit", &addresses_of(pods), &settings);
    let me = cluster_addresses(1)[0];
    let mut config = cluster_config(me, &[me], &secret);
    config.lease_margin_ms = lease_margin_ms;
    let router = Harness::start_with(&routes, |c| c.cluster = Some(config)).await;
    wait_for_members(std::slice::from_ref(&router), 1).await;
    (router, me)
}

/// Waits until the router kept a vanished holder's lease, and checks its slot is still taken.
async fn assert_kept_after_vanishing(router: &Harness) {
    router
        .wait_metric("scoregate_cluster_leases_vanished_total", &[], |v| v >= 1.0)
        .await;
    let in_flight = router
        .metric_or_zero(
            "scoregate_in_flight_requests",
            &[("endpoint", "credit"), ("deployment", "blue")],
        )
        .await;
    assert_eq!(in_flight, 1.0, "the vanished holder's slot is still taken");
}

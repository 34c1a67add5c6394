//! Kubernetes discovery under API-server faults: a dropped watch connection, an expired
//! resourceVersion (410), and the API server gone for ten seconds. Requests keep flowing through
//! the router during each fault, and none may fail; afterwards the table converges to what the
//! cluster holds.

mod support;

use std::time::Duration;

use http::StatusCode;
use scoregate::router::Router;
use scoregate_fake_kube::FakeApiServer;
use support::kube::*;

struct Setup {
    fake: FakeApiServer,
    router: Router,
    blue: Pods,
    _dir: tempfile::TempDir,
}

/// `my-endpoint` → `blue` on Service `blue-svc`: slice `x1` with pods 1–2 and slice `x2` with
/// pod 3; pod 4 is started but not listed.
async fn setup() -> Setup {
    let fake = fake().await;
    // Small watch cache and frequent bookmarks, as a busy real cluster would have.
    fake.set_history_limit(20);
    fake.set_bookmark_interval(Duration::from_millis(200));
    let port = free_port();
    let blue = pods(1, 4, "blue", port).await;
    let pods = blue.all_ready();
    fake.apply(key_secret(NS, "keys", KEY, None)).unwrap();
    fake.apply(endpoint(NS, "my-endpoint", "keys", &[("blue", 100)]))
        .unwrap();
    fake.apply(deployment(NS, "my-endpoint", "blue", "blue-svc", port))
        .unwrap();
    fake.apply(slice(NS, "blue-svc-x1", "blue-svc", port, &pods[..2]))
        .unwrap();
    fake.apply(slice(NS, "blue-svc-x2", "blue-svc", port, &pods[2..3]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    Setup {
        fake,
        router,
        blue,
        _dir: dir,
    }
}

impl Setup {
    fn pods_now(&self) -> Vec<std::net::SocketAddr> {
        routable(&self.router, "my-endpoint")
            .into_iter()
            .find(|(d, _)| d == "blue")
            .map(|(_, pods)| pods)
            .unwrap_or_default()
    }

    fn expect_pods(&self, indexes: &[usize]) -> Vec<std::net::SocketAddr> {
        let ips = self.blue.ips();
        addrs(
            &indexes.iter().map(|i| ips[*i]).collect::<Vec<_>>(),
            self.blue.port,
        )
    }

    async fn load(&self) -> Load {
        let url = format!(
            "http://{}/api/v1/endpoint/my-endpoint/score",
            self.router.http_addr().unwrap()
        );
        let load = Load::start(&[url], 2);
        eventually("the load to flow", || async { load.ok() >= 20 }).await;
        load
    }

    async fn metrics(&self) -> String {
        metrics_text(&client(), &self.router).await
    }
}

async fn no_failures(load: Load) {
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_connection_resumes_without_a_relist() {
    let s = setup().await;
    let load = s.load().await;
    s.fake.drop_watches();
    // A change after the drop reaches the router through the resumed watch.
    let pods = s.blue.all_ready();
    s.fake
        .apply(slice(
            NS,
            "blue-svc-x2",
            "blue-svc",
            s.blue.port,
            &pods[2..4],
        ))
        .unwrap();
    eventually("the fourth pod", || async {
        s.pods_now() == s.expect_pods(&[0, 1, 2, 3])
    })
    .await;
    let before = load.ok();
    eventually("more requests after the change", || async {
        load.ok() > before + 20
    })
    .await;
    no_failures(load).await;
    let text = s.metrics().await;
    assert_eq!(
        metric(&text, "scoregate_discovery_relists_total"),
        None,
        "a dropped connection re-watches from the last resourceVersion: {text}"
    );
    s.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_resource_version_relists_without_dropping_routes() {
    let s = setup().await;
    let load = s.load().await;

    // 1. An in-stream ERROR 410 on every open watch: each relists; nothing changes.
    s.fake.expire_watches();
    eventually("the relists", || async {
        metric(&s.metrics().await, "scoregate_discovery_relists_total").is_some()
    })
    .await;
    assert_eq!(s.pods_now(), s.expect_pods(&[0, 1, 2]));
    let relists = || async {
        metric_sum(&s.metrics().await, "scoregate_discovery_relists_total").unwrap_or(0.0)
    };
    let after_first = relists().await;

    // 2. Changes whose events are then compacted away, and the watches cut: re-watching from the
    //    old resourceVersion gets a 410, and only the relist can see that slice x2 was deleted
    //    and slice x1 changed.
    let pods = s.blue.all_ready();
    s.fake
        .delete("discovery.k8s.io/v1", "EndpointSlice", NS, "blue-svc-x2")
        .unwrap();
    s.fake.stall_watches(Duration::from_secs(60));
    s.fake
        .apply(slice(
            NS,
            "blue-svc-x1",
            "blue-svc",
            s.blue.port,
            &[pods[0], pods[3]],
        ))
        .unwrap();
    s.fake.compact();
    s.fake.drop_watches();
    s.fake.resume_watches();
    eventually("the relisted state", || async {
        s.pods_now() == s.expect_pods(&[0, 3])
    })
    .await;
    assert!(
        relists().await > after_first,
        "the compaction caused a relist"
    );
    let before = load.ok();
    eventually("more requests after the relist", || async {
        load.ok() > before + 20
    })
    .await;
    no_failures(load).await;
    let text = s.metrics().await;
    assert!(
        text.contains("scoregate_discovery_relists_total{resource=\"endpointslices\"}"),
        "{text}"
    );
    assert_eq!(metric(&text, "scoregate_discovery_up"), Some(1.0));
    s.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_gone_for_ten_seconds() {
    let s = setup().await;
    let load = s.load().await;
    let client = client();

    s.fake.stop().await;
    eventually("the outage to be reported", || async {
        metric(&s.metrics().await, "scoregate_discovery_up") == Some(0.0)
    })
    .await;
    assert_eq!(
        readyz(&client, &s.router).await,
        StatusCode::OK,
        "the router stays ready on its last table"
    );
    // The cluster changes while the router cannot see it.
    let pods = s.blue.all_ready();
    s.fake
        .apply(slice(
            NS,
            "blue-svc-x2",
            "blue-svc",
            s.blue.port,
            &pods[2..4],
        ))
        .unwrap();
    s.fake
        .apply(key_secret(
            NS,
            "keys",
            KEY,
            Some("secondary-key-after-outage"),
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        s.pods_now(),
        s.expect_pods(&[0, 1, 2]),
        "the last table is served"
    );
    let during = load.ok();

    s.fake.restart().await.expect("the API server comes back");
    eventually("the router to catch up", || async {
        s.pods_now() == s.expect_pods(&[0, 1, 2, 3])
    })
    .await;
    eventually("the new secondary key", || async {
        score(
            &client,
            s.router.http_addr().unwrap(),
            "my-endpoint",
            "secondary-key-after-outage",
            None,
        )
        .await
        .status
            == StatusCode::OK
    })
    .await;
    eventually("the outage to be over", || async {
        metric(&s.metrics().await, "scoregate_discovery_up") == Some(1.0)
    })
    .await;
    assert!(during > 20, "requests flowed during the outage");
    no_failures(load).await;
    let text = s.metrics().await;
    assert!(
        metric(&text, "scoregate_discovery_watch_errors_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    s.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_answering_503_for_a_while() {
    let s = setup().await;
    let load = s.load().await;
    s.fake.refuse_requests_for(Duration::from_secs(3));
    s.fake.drop_watches();
    let pods = s.blue.all_ready();
    s.fake
        .apply(slice(
            NS,
            "blue-svc-x2",
            "blue-svc",
            s.blue.port,
            &pods[3..4],
        ))
        .unwrap();
    eventually("the change after the refusals", || async {
        s.pods_now() == s.expect_pods(&[0, 1, 3])
    })
    .await;
    no_failures(load).await;
    s.router.shutdown().await;
}

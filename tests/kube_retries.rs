//! Retries against a failing API server, counted at the fake: a LIST that keeps failing (503, and
//! 403 as with missing RBAC) is retried on the backoff's schedule, not every few hundred
//! milliseconds; watches the server ends at once are reopened after a growing delay, not in a
//! tight loop. The log says so once per cause and says "again" only after real progress.
//!
//! The counts are compared with generous bounds derived from the schedule (250 ms doubling to
//! 5 s, each delay at least 80 % of nominal); no test asserts how long anything took.

mod support;

use std::time::{Duration, SystemTime};

use http::StatusCode;
use scoregate::router::Router;
use scoregate_fake_kube::{FakeApiServer, RecordedRequest};
use support::kube::*;

const ENDPOINTS: &str = "/apis/scoregate.io/v1/namespaces/models/onlineendpoints";
const SECRETS: &str = "/api/v1/namespaces/models/secrets";
/// The window whose requests are counted, from the first failed one.
const WINDOW: Duration = Duration::from_secs(8);
/// Most requests the schedule allows in [`WINDOW`]: delays of at least 0.8 × 250 ms, 500 ms,
/// 1 s, 2 s, 4 s, 5 s… put attempts at 0, 0.2, 0.6, 1.4, 3.0 and 6.2 s (six), plus slack.
const MOST: usize = 9;
/// Fewest: it keeps retrying (attempts by 0.3, 0.9, 2.1, 4.5 s at most 120 % of nominal).
const FEWEST: usize = 3;

struct Setup {
    fake: FakeApiServer,
    router: Router,
    _pods: Pods,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let fake = fake().await;
    let pods = pods(1, 1, "blue", free_port()).await;
    one_endpoint(&fake, &pods).await;
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    Setup {
        fake,
        router,
        _pods: pods,
        _dir: dir,
    }
}

impl Setup {
    /// When the first request under `prefix` matching `what` and answered `status` arrived.
    async fn first(
        &self,
        prefix: &str,
        status: u16,
        what: fn(&RecordedRequest) -> bool,
    ) -> SystemTime {
        let found = || {
            self.fake
                .requests_with_prefix(prefix)
                .into_iter()
                .find(|r| r.status == status && what(r))
                .map(|r| r.at)
        };
        eventually("the first faulty answer", || async { found().is_some() }).await;
        found().unwrap()
    }

    /// How many requests under `prefix` matching `what` arrived in the window from `from`.
    fn count(&self, prefix: &str, what: fn(&RecordedRequest) -> bool, from: SystemTime) -> usize {
        requests_between(&self.fake, prefix, what, from, from + WINDOW)
    }

    async fn scores(&self) -> bool {
        let client = client();
        let addr = self.router.http_addr().unwrap();
        score(&client, addr, "my-endpoint", KEY, None).await.status == StatusCode::OK
    }
}

#[tokio::test]
async fn a_failing_list_backs_off_and_is_back_once_it_lists() {
    let (logs, _capture) = Logs::capture();
    let s = setup().await;
    s.fake.fail_lists(ENDPOINTS, 503);
    s.fake.fail_lists(SECRETS, 403);
    s.fake.expire_watches(); // every watch relists
    let endpoints_from = s.first(ENDPOINTS, 503, is_list).await;
    let secrets_from = s.first(SECRETS, 403, is_list).await;
    tokio::time::sleep(WINDOW).await; // the counted window (no condition to wait for)

    for (prefix, from) in [(ENDPOINTS, endpoints_from), (SECRETS, secrets_from)] {
        let lists = s.count(prefix, is_list, from);
        eprintln!("{prefix}: {lists} LISTs in {WINDOW:?}");
        assert!(
            (FEWEST..=MOST).contains(&lists),
            "{prefix}: {lists} LISTs in {WINDOW:?}"
        );
    }
    assert!(s.scores().await, "the last good table is served");
    let failing = logs.lines(&[
        "WARN",
        "cannot list or watch onlineendpoints in models",
        "503",
    ]);
    assert_eq!(failing.len(), 1, "one line per cause: {failing:#?}");
    let forbidden = logs.lines(&["WARN", "cannot list or watch secrets in models", "403"]);
    assert_eq!(forbidden.len(), 1, "{forbidden:#?}");
    assert!(
        forbidden[0].contains("allow the router's service account to get, list and watch secrets"),
        "{forbidden:#?}"
    );
    assert_eq!(
        logs.lines(&["again"]),
        Vec::<String>::new(),
        "nothing has recovered"
    );

    s.fake.clear_list_failures();
    eventually("both watches to be back", || async {
        logs.lines(&["INFO", "watching onlineendpoints in models again"])
            .len()
            == 1
            && logs
                .lines(&["INFO", "watching secrets in models again"])
                .len()
                == 1
    })
    .await;
    let text = metrics_text(&client(), &s.router).await;
    assert_eq!(metric(&text, "scoregate_discovery_up"), Some(1.0), "{text}");
    s.router.shutdown().await;
}

#[tokio::test]
async fn watches_the_server_ends_at_once_are_reopened_after_a_growing_delay() {
    let (logs, _capture) = Logs::capture();
    let s = setup().await;
    let since = SystemTime::now();
    s.fake.end_watches_at_once(true);
    s.fake.drop_watches();
    let is_new_watch = |r: &RecordedRequest| r.is_watch();
    eventually("a watch after the drop", || async {
        requests_between(&s.fake, ENDPOINTS, is_new_watch, since, SystemTime::now()) > 0
    })
    .await;
    let from = s
        .fake
        .requests_with_prefix(ENDPOINTS)
        .into_iter()
        .find(|r| r.is_watch() && r.at >= since)
        .unwrap()
        .at;
    tokio::time::sleep(WINDOW).await; // the counted window (no condition to wait for)
    let watches = s.count(ENDPOINTS, RecordedRequest::is_watch, from);
    eprintln!("{ENDPOINTS}: {watches} watches in {WINDOW:?}");
    assert!(
        (FEWEST..=MOST + 1).contains(&watches),
        "{watches} watches in {WINDOW:?}"
    );
    let paced = logs.lines(&["WARN", "right after accepting it"]);
    assert_eq!(paced.len(), 1, "one line per cause: {paced:#?}");
    assert!(s.scores().await);

    // Watches that stay open again carry changes again.
    s.fake.end_watches_at_once(false);
    s.fake
        .apply(key_secret(
            NS,
            "my-endpoint-keys",
            KEY,
            Some("a-new-secondary-key-0123"),
        ))
        .unwrap();
    eventually("the new key", || async {
        let addr = s.router.http_addr().unwrap();
        score(
            &client(),
            addr,
            "my-endpoint",
            "a-new-secondary-key-0123",
            None,
        )
        .await
        .status
            == StatusCode::OK
    })
    .await;
    s.router.shutdown().await;
}

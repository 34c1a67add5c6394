//! `/metrics` as Prometheus reads it (the `prometheus-parse` crate, not regular expressions):
//! every metric a router exports has `# HELP`, and the type and labels the catalog says; the
//! README's table is the catalog's. Routers are driven through outcomes that create the lazy
//! series: model answers, router answers, a retry, a mirror copy, Kubernetes discovery.

mod support;

use std::collections::BTreeSet;

use prometheus_parse::{Scrape, Value};
use scoregate::sample_model::SampleModel;
use scoregate::telemetry::catalog::{self, Kind};
use support::{deployment, endpoint, kube, routes, Harness};

const README_START: &str = "<!-- metrics: generated from src/telemetry/catalog.rs; `UPDATE_README=1 cargo test --test metrics` rewrites it -->\n";
const README_END: &str = "<!-- end of metrics -->";

#[test]
fn the_readme_table_is_the_catalog() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme
        .find(README_START)
        .expect("the README marks its metrics table")
        + README_START.len();
    let end = start
        + readme[start..]
            .find(README_END)
            .expect("the table's end is marked");
    let table = catalog::markdown_table();
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        table,
        "README's metrics table differs from src/telemetry/catalog.rs: run UPDATE_README=1 cargo test --test metrics"
    );
}

/// Parses a scrape and checks every family against the catalog; returns the families seen.
fn check_against_catalog(text: &str) -> BTreeSet<String> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a valid exposition");
    let mut seen = BTreeSet::new();
    for sample in &scrape.samples {
        // A histogram's `_sum` and `_count` come as samples of their own.
        let histogram_part = ["_sum", "_count"]
            .iter()
            .filter_map(|suffix| sample.metric.strip_suffix(suffix))
            .find(|base| catalog::find(base).is_some_and(|e| e.kind == Kind::Histogram));
        if let Some(base) = histogram_part {
            let labels: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
            let expected: BTreeSet<&str> = catalog::find(base)
                .unwrap()
                .labels
                .iter()
                .copied()
                .collect();
            assert_eq!(labels, expected, "{}: labels", sample.metric);
            continue;
        }
        let entry = catalog::find(&sample.metric).unwrap_or_else(|| {
            panic!(
                "{} is exported but not in the catalog (README)",
                sample.metric
            )
        });
        let kind = match sample.value {
            Value::Counter(_) => Kind::Counter,
            Value::Gauge(_) => Kind::Gauge,
            Value::Histogram(_) => Kind::Histogram,
            _ => panic!("{}: untyped or summary", sample.metric),
        };
        assert_eq!(kind, entry.kind, "{}: type", sample.metric);
        let labels: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = entry.labels.iter().copied().collect();
        assert_eq!(labels, expected, "{}: labels", sample.metric);
        assert!(
            scrape
                .docs
                .get(&sample.metric)
                .is_some_and(|h| h == entry.help),
            "{}: # HELP missing or not the catalog's",
            sample.metric
        );
        seen.insert(sample.metric.clone());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_help_and_the_catalogs_type_and_labels() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let shadow = SampleModel::start_local("shadow").await.unwrap();
    let yaml = routes(
        &[endpoint(
            "ep-one",
            &["traffic: { blue: 100 }", "mirror_traffic: { shadow: 50 }"],
        )],
        &[
            deployment(
                "blue",
                "ep-one",
                &[support::dead_address(), pod.address()],
                "max_concurrent_requests_per_instance: 8, request_timeout_ms: 1000",
            ),
            deployment("shadow", "ep-one", &[shadow.address()], ""),
        ],
    );
    let h = Harness::start(&yaml).await;
    for _ in 0..20 {
        assert_eq!(h.score("ep-one", "").await.status, 200);
    }
    assert_eq!(h.score("ep-one", "?fail=1").await.status, 500);
    assert_eq!(h.score("ep-one", "?sleep_ms=3000").await.status, 504);
    assert_eq!(h.score("no-such-endpoint", "").await.status, 404);
    let text = h.metrics_text().await;
    let seen = check_against_catalog(&text);
    for wanted in [
        "scoregate_requests_total",
        "scoregate_request_size_bytes",
        "scoregate_response_size_bytes",
        "scoregate_upstream_retries_total",
        "scoregate_mirror_requests_total",
        "scoregate_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(seen.contains(wanted), "{wanted} not exported:\n{text}");
    }
    // The model's 500 and the router's 504 and 404 are told apart.
    for series in [
        r#"code="500",source="model",error="""#,
        r#"code="504",source="router",error="UpstreamTimeout""#,
        r#"endpoint="",deployment="",code="404",source="router",error="EndpointNotFound""#,
    ] {
        assert!(text.contains(series), "{series} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_discovery_metrics_follow_the_catalog_too() {
    kube::crypto();
    let fake = kube::fake().await;
    let pods = kube::pods(61, 1, "blue", 5001).await;
    kube::one_endpoint(&fake, &pods).await;
    let dir = tempfile::tempdir().unwrap();
    let router = kube::ready_router(kube::router_config(&fake, &[kube::NS], &dir)).await;
    let client = support::client();
    let seen = check_against_catalog(&kube::metrics_text(&client, &router).await);
    assert!(seen.contains("scoregate_discovery_up"), "{seen:?}");
    assert!(
        seen.contains("scoregate_discovery_event_to_routable_seconds"),
        "{seen:?}"
    );
}

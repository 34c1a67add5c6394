//! Bad objects in the cluster: each kind is logged once, naming the object and the field, and
//! counted under its reason, while everything else is served from the last good table. A rebuild
//! that finds the same problem again says nothing; a fix says so once.

mod support;

use http::StatusCode;
use serde_json::json;
use support::kube::*;

/// The log line, and the `reason` label, of each bad object below.
const EXPECTED: [(&[&str], &str); 5] = [
    (
        &[
            "OnlineDeployment models/ghost-blue",
            "spec.serviceName",
            "no-such-svc",
        ],
        "service_missing",
    ),
    (
        &["OnlineDeployment models/bare has no `spec`"],
        "invalid_spec",
    ),
    (
        &["OnlineEndpoint models/strung: field `spec`: invalid type: string"],
        "invalid_spec",
    ),
    (
        &["OnlineDeployment models/stray names endpoint `nowhere`"],
        "endpoint_missing",
    ),
    (
        &["EndpointSlice models/blue-svc-fqdn", "pod.example"],
        "slice_address",
    ),
];

fn bad_objects(port: u16) -> Vec<serde_json::Value> {
    let mut fqdn = slice(NS, "blue-svc-fqdn", "blue-svc", port, &[]);
    fqdn["addressType"] = json!("FQDN");
    fqdn["endpoints"] = json!([{"addresses": ["pod.example"], "conditions": {"ready": true}}]);
    vec![
        endpoint(NS, "ep-ghost", "my-endpoint-keys", &[("ghost-blue", 100)]),
        deployment(NS, "ep-ghost", "ghost-blue", "no-such-svc", port),
        json!({"apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
            "metadata": {"name": "bare", "namespace": NS}}),
        json!({"apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
            "metadata": {"name": "strung", "namespace": NS}, "spec": "keysSecretName: keys"}),
        deployment(NS, "nowhere", "stray", "stray-svc", port),
        fqdn,
    ]
}

fn rejections(text: &str, reason: &str) -> usize {
    let prefix = format!("scoregate_discovery_rejections_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse::<f64>().unwrap() as usize)
}

#[tokio::test]
async fn each_bad_object_is_logged_once_with_its_field_and_counted() {
    let (logs, _capture) = Logs::capture();
    let fake = fake().await;
    let blue = pods(1, 2, "blue", free_port()).await;
    one_endpoint(&fake, &blue).await;
    for object in bad_objects(blue.port) {
        fake.apply(object).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    let (client, addr) = (client(), router.http_addr().unwrap());
    eventually("every bad object to be reported", || async {
        EXPECTED
            .iter()
            .all(|(needles, _)| !logs.lines(needles).is_empty())
    })
    .await;
    assert_eq!(
        score(&client, addr, "my-endpoint", KEY, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        score(&client, addr, "ep-ghost", KEY, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a deployment without pods refuses requests, as before"
    );

    // Rebuilds that find the same problems say nothing more: new keys and a pod more.
    fake.apply(key_secret(
        NS,
        "my-endpoint-keys",
        KEY,
        Some("rotated-secondary-0123456789"),
    ))
    .unwrap();
    fake.apply(slice(
        NS,
        "blue-svc-x1",
        "blue-svc",
        blue.port,
        &blue.all_ready()[..1],
    ))
    .unwrap();
    eventually("the rebuilds", || async {
        score(
            &client,
            addr,
            "ep-ghost",
            "rotated-secondary-0123456789",
            None,
        )
        .await
        .status
            == StatusCode::SERVICE_UNAVAILABLE
            && routable(&router, "my-endpoint")[0].1.len() == 1
    })
    .await;
    let text = metrics_text(&client, &router).await;
    for (needles, reason) in EXPECTED {
        let lines = logs.lines(needles);
        assert_eq!(lines.len(), 1, "logged once: {needles:?}: {lines:#?}");
        assert!(lines[0].contains("WARN"), "{lines:#?}");
        assert!(rejections(&text, reason) >= 1, "{reason}: {text}");
    }
    assert_eq!(rejections(&text, "invalid_spec"), 2, "{text}");
    assert_eq!(
        metric(&text, "scoregate_discovery_rejected"),
        Some(5.0),
        "{text}"
    );

    // A fix is said once.
    fake.apply(slice(
        NS,
        "no-such-svc-x1",
        "no-such-svc",
        blue.port,
        &blue.all_ready(),
    ))
    .unwrap();
    eventually("the ghost deployment to be served", || async {
        score(&client, addr, "ep-ghost", KEY, None).await.status == StatusCode::OK
    })
    .await;
    eventually("the fix to be logged", || async {
        logs.lines(&["OnlineDeployment models/ghost-blue is served as declared again"])
            .len()
            == 1
    })
    .await;
    let text = metrics_text(&client, &router).await;
    assert_eq!(
        metric(&text, "scoregate_discovery_rejected"),
        Some(4.0),
        "{text}"
    );
    router.shutdown().await;
}

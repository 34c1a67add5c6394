//! `status.conditions` of OnlineEndpoints and OnlineDeployments, written by the router with
//! server-side apply (field manager `scoregate-status`) through the in-repo fake API server: the
//! `Ready` condition with its reason for each kind of bad object, cleared (True, `Serving`) when
//! the object is fixed, `observedGeneration` following `metadata.generation`, and no write while
//! nothing changes.

mod support;

use scoregate_fake_kube::FakeApiServer;
use serde_json::{json, Value};
use support::kube::*;

const API: &str = "scoregate.io/v1";

/// The `Ready` condition `kind` `name` shows now: (status, reason, the whole condition).
fn ready(fake: &FakeApiServer, kind: &str, name: &str) -> Option<(String, String, Value)> {
    let object = fake.get(API, kind, NS, name)?;
    let conditions = object["status"]["conditions"].as_array()?.clone();
    let ready = conditions.into_iter().find(|c| c["type"] == "Ready")?;
    Some((
        ready["status"].as_str()?.to_string(),
        ready["reason"].as_str()?.to_string(),
        ready,
    ))
}

async fn wait_ready(
    fake: &FakeApiServer,
    kind: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> Value {
    let what = format!("{kind} {name} to show Ready={status} ({reason})");
    let mut last = None;
    let found = tokio::time::timeout(HANG, async {
        loop {
            last = ready(fake, kind, name);
            if let Some((s, r, condition)) = &last {
                if s == status && r == reason {
                    return condition.clone();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}; it shows {last:?}"))
}

fn status_writes(fake: &FakeApiServer) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .filter(|r| r.field_manager.as_deref() == Some("scoregate-status"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_conditions_say_why_and_clear_when_fixed() {
    crypto();
    let fake = fake().await;
    let blue = pods(71, 1, "blue", free_port()).await;
    one_endpoint(&fake, &blue).await;
    // An endpoint whose keys Secret does not exist, with a deployment.
    fake.apply(endpoint(NS, "no-keys", "missing-keys", &[("nk-blue", 100)]))
        .unwrap();
    fake.apply(deployment(NS, "no-keys", "nk-blue", "blue-svc", blue.port))
        .unwrap();
    // A deployment whose Service has no EndpointSlices, and one whose pods are not ready.
    fake.apply(endpoint(
        NS,
        "ghost",
        "my-endpoint-keys",
        &[("ghost-blue", 100)],
    ))
    .unwrap();
    fake.apply(deployment(
        NS,
        "ghost",
        "ghost-blue",
        "no-such-svc",
        blue.port,
    ))
    .unwrap();
    fake.apply(endpoint(
        NS,
        "sleepy",
        "my-endpoint-keys",
        &[("sleepy-blue", 100)],
    ))
    .unwrap();
    fake.apply(deployment(
        NS,
        "sleepy",
        "sleepy-blue",
        "sleepy-svc",
        blue.port,
    ))
    .unwrap();
    let unready = [PodState {
        ready: false,
        ..PodState::ready(ip(71, 9))
    }];
    fake.apply(slice(NS, "sleepy-svc-1", "sleepy-svc", blue.port, &unready))
        .unwrap();
    // A spec that cannot be read, and weights that do not sum to 100.
    fake.apply(endpoint(
        NS,
        "broken",
        "my-endpoint-keys",
        &[("bad-port", 100)],
    ))
    .unwrap();
    let mut bad_port = deployment(NS, "broken", "bad-port", "blue-svc", blue.port);
    bad_port["spec"]["port"] = json!("x");
    fake.apply(bad_port).unwrap();
    fake.apply(endpoint(
        NS,
        "weights",
        "my-endpoint-keys",
        &[("w-blue", 90)],
    ))
    .unwrap();
    fake.apply(deployment(NS, "weights", "w-blue", "blue-svc", blue.port))
        .unwrap();
    // A deployment naming an endpoint its namespace does not have.
    fake.apply(deployment(NS, "nowhere", "stray", "blue-svc", blue.port))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let _router = ready_router(router_config(&fake, &[NS], &dir)).await;

    let good = wait_ready(&fake, "OnlineEndpoint", "my-endpoint", "True", "Serving").await;
    let object = fake.get(API, "OnlineEndpoint", NS, "my-endpoint").unwrap();
    assert_eq!(good["observedGeneration"], object["metadata"]["generation"]);
    assert!(good["lastTransitionTime"].is_string());
    wait_ready(&fake, "OnlineDeployment", "blue", "True", "Serving").await;
    let keys = wait_ready(&fake, "OnlineEndpoint", "no-keys", "False", "KeysMissing").await;
    assert!(
        keys["message"].as_str().unwrap().contains("missing-keys"),
        "{keys}"
    );
    wait_ready(
        &fake,
        "OnlineDeployment",
        "nk-blue",
        "False",
        "EndpointNotReady",
    )
    .await;
    wait_ready(
        &fake,
        "OnlineDeployment",
        "sleepy-blue",
        "False",
        "NoReadyPods",
    )
    .await;
    let spec = wait_ready(
        &fake,
        "OnlineDeployment",
        "bad-port",
        "False",
        "InvalidSpec",
    )
    .await;
    assert!(
        spec["message"].as_str().unwrap().contains("spec.port"),
        "{spec}"
    );
    wait_ready(&fake, "OnlineEndpoint", "broken", "False", "InvalidSpec").await;
    wait_ready(
        &fake,
        "OnlineEndpoint",
        "weights",
        "False",
        "WeightsInvalid",
    )
    .await;
    wait_ready(
        &fake,
        "OnlineDeployment",
        "stray",
        "False",
        "EndpointNotFound",
    )
    .await;
    // The Service gets 5 s to have slices before it is reported.
    wait_ready(
        &fake,
        "OnlineDeployment",
        "ghost-blue",
        "False",
        "ServiceNotFound",
    )
    .await;

    // Nothing changes: nothing is written, even when unrelated objects change.
    let settled = status_writes(&fake);
    fake.apply(key_secret(
        NS,
        "my-endpoint-keys",
        KEY,
        Some("rotated-secondary-0123456789"),
    ))
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        status_writes(&fake),
        settled,
        "a condition is written only when it changes"
    );

    // Each fix clears its condition.
    fake.apply(key_secret(NS, "missing-keys", KEY, None))
        .unwrap();
    let cleared = wait_ready(&fake, "OnlineEndpoint", "no-keys", "True", "Serving").await;
    assert_ne!(
        cleared["lastTransitionTime"], keys["lastTransitionTime"],
        "a transition"
    );
    wait_ready(&fake, "OnlineDeployment", "nk-blue", "True", "Serving").await;
    let ready_pod = [PodState::ready(ip(71, 1))];
    fake.apply(slice(
        NS,
        "sleepy-svc-1",
        "sleepy-svc",
        blue.port,
        &ready_pod,
    ))
    .unwrap();
    wait_ready(&fake, "OnlineDeployment", "sleepy-blue", "True", "Serving").await;
    fake.apply(slice(
        NS,
        "ghost-svc-1",
        "no-such-svc",
        blue.port,
        &ready_pod,
    ))
    .unwrap();
    wait_ready(&fake, "OnlineDeployment", "ghost-blue", "True", "Serving").await;
    fake.apply(deployment(NS, "broken", "bad-port", "blue-svc", blue.port))
        .unwrap();
    let fixed = wait_ready(&fake, "OnlineDeployment", "bad-port", "True", "Serving").await;
    let object = fake.get(API, "OnlineDeployment", NS, "bad-port").unwrap();
    assert_eq!(
        fixed["observedGeneration"],
        object["metadata"]["generation"]
    );
    wait_ready(&fake, "OnlineEndpoint", "broken", "True", "Serving").await;
    fake.apply(endpoint(
        NS,
        "weights",
        "my-endpoint-keys",
        &[("w-blue", 100)],
    ))
    .unwrap();
    wait_ready(&fake, "OnlineEndpoint", "weights", "True", "Serving").await;
    fake.apply(endpoint(
        NS,
        "nowhere",
        "my-endpoint-keys",
        &[("stray", 100)],
    ))
    .unwrap();
    wait_ready(&fake, "OnlineDeployment", "stray", "True", "Serving").await;
}

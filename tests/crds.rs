//! The checked-in CRDs under `deploy/crds/` match what `scoregate::crd` generates, and a fake API
//! server accepts them and then serves the kinds they define.

use std::path::Path;

use scoregate::crd::{crd_files, OnlineDeployment, OnlineEndpoint};

const HOW_TO_FIX: &str = "regenerate them with `UPDATE_CRDS=1 cargo test --test crds` \
                          (or `cargo run -- crds --write deploy/crds`) and commit the result";

#[test]
fn checked_in_crds_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
    let update = std::env::var_os("UPDATE_CRDS").is_some_and(|v| v != "0");
    let mut stale = Vec::new();
    for (name, generated) in crd_files() {
        let path = dir.join(&name);
        if update {
            std::fs::create_dir_all(&dir).expect("create deploy/crds");
            std::fs::write(&path, &generated).expect("write a CRD file");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == generated => {}
            Ok(_) => stale.push(format!("{} differs from the generated CRD", path.display())),
            Err(e) => stale.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "the CRDs in deploy/crds are out of date:\n  {}\n{HOW_TO_FIX}",
        stale.join("\n  ")
    );
}

#[tokio::test]
async fn a_fake_api_server_accepts_the_crds_and_serves_the_kinds() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server = scoregate_fake_kube::FakeApiServer::start()
        .await
        .expect("fake API server");
    for crd in scoregate::crd::crds() {
        server
            .apply(serde_json::to_value(&crd).unwrap())
            .expect("the fake accepts the CRD");
    }
    let client = server.client("ns").await.expect("client");
    let endpoints: kube::Api<OnlineEndpoint> = kube::Api::namespaced(client.clone(), "ns");
    let endpoint = OnlineEndpoint::new(
        "my-endpoint",
        serde_json::from_value(
            serde_json::json!({"keysSecretName": "keys", "traffic": {"blue": 100}}),
        )
        .unwrap(),
    );
    endpoints
        .create(&Default::default(), &endpoint)
        .await
        .expect("create an OnlineEndpoint");
    let deployments: kube::Api<OnlineDeployment> = kube::Api::namespaced(client, "ns");
    let deployment = OnlineDeployment::new(
        "blue",
        serde_json::from_value(
            serde_json::json!({"endpointName": "my-endpoint", "serviceName": "blue"}),
        )
        .unwrap(),
    );
    deployments
        .create(&Default::default(), &deployment)
        .await
        .expect("create an OnlineDeployment");
    let listed = deployments.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].spec.port, 5001);
    assert_eq!(
        endpoints.get("my-endpoint").await.unwrap().spec.traffic["blue"],
        100
    );
}

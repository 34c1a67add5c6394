//! Replicas find each other through the EndpointSlices of the router's own headless Service,
//! served by the fake API server to the real `kube::Client`.

mod support;

use std::net::SocketAddr;

use scoregate::config::{ClusterConfig, PeerServiceConfig};
use serde_json::json;
use support::kube::*;

const SECRET: &str = "cluster-secret-for-kube-tests-0123";

/// An EndpointSlice of the router Service with one ready replica at `address`.
fn router_slice(name: &str, address: SocketAddr, ready: bool) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "azureml",
            "labels": {"kubernetes.io/service-name": "azureml-fe-peers"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address.ip().to_string()], "conditions": {"ready": ready}}],
        "ports": [{"name": "cluster", "port": address.port(), "protocol": "TCP"}],
    })
}

fn members(router: &scoregate::router::Router) -> usize {
    router.cluster().unwrap().view().members().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_endpoint_slices_of_their_service() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let addresses: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut routers = Vec::new();
    for me in &addresses {
        let mut config = router_config(&fake, &[NS], &dir);
        config.cluster = Some(ClusterConfig {
            listen: *me,
            peer_service: Some(PeerServiceConfig {
                namespace: "azureml".into(),
                name: "azureml-fe-peers".into(),
            }),
            secret_file: Some(secret.clone()),
            ..ClusterConfig::default()
        });
        routers.push(ready_router(config).await);
    }
    // No slices yet: each replica is alone.
    eventually("each replica counting itself", || async {
        routers.iter().all(|r| members(r) == 1)
    })
    .await;
    fake.apply(router_slice("peers-a", addresses[0], true))
        .unwrap();
    fake.apply(router_slice("peers-b", addresses[1], true))
        .unwrap();
    eventually("both replicas seeing each other", || async {
        routers.iter().all(|r| members(r) == 2)
    })
    .await;
    // A replica that turns unready in its Service leaves the others' view.
    fake.apply(router_slice("peers-b", addresses[1], false))
        .unwrap();
    eventually("replica a dropping b", || async {
        members(&routers[0]) == 1
    })
    .await;
    // And comes back.
    fake.apply(router_slice("peers-b", addresses[1], true))
        .unwrap();
    eventually("replica a seeing b again", || async {
        members(&routers[0]) == 2
    })
    .await;
    for r in routers {
        r.shutdown().await;
    }
}

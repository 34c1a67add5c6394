//! `create`, `show`, `list`, `update` and `delete` through the CLI, against the fake API server
//! (real HTTP, server-side apply, request log). The fake runs no controllers, so the tests play
//! the Deployment controller and the cloud load balancer by writing `.status`.

mod support;

use serde_json::{json, Value};
use support::kube::Cluster;

fn protected() -> Vec<String> {
    support::fixture_protected()
}

const PRODUCTION: &[&str] = &[
    "enableInference=True",
    "inferenceRouterServiceType=LoadBalancer",
    "sslCname=ml.contoso.com",
];

fn create_args<'a>(config: &'a [&'a str], protected: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["create", "--name", "scoregate", "--config"];
    args.extend_from_slice(config);
    if !protected.is_empty() {
        args.push("--config-protected");
        args.extend(protected.iter().map(String::as_str));
    }
    args
}

#[tokio::test]
async fn create_show_update_delete() {
    let cluster = Cluster::start(4).await;
    let controllers = cluster.controllers();
    let protected = protected();

    // create: server-side apply of every object with field manager `scoregate`, then wait.
    let (out, err) = cluster.ok(&create_args(PRODUCTION, &protected)).await;
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["provisioningState"], "Succeeded", "{out}\n{err}");
    assert_eq!(
        status["configurationSettings"]["sslCname"],
        "ml.contoso.com"
    );
    assert_eq!(
        status["configurationProtectedSettings"]["sslCertPemFile"], "(not stored)",
        "protected values are never stored or shown"
    );
    let applies: Vec<_> = cluster
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(!applies.is_empty());
    for r in &applies {
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{r:?}"
        );
        assert_eq!(r.field_manager.as_deref(), Some("scoregate"), "{r:?}");
        assert_eq!(r.param("force").as_deref(), Some("true"), "{r:?}");
    }
    let deployment = cluster
        .get("apps/v1", "Deployment", "azureml", "azureml-fe-v2")
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3, "4 nodes: HA stays on");
    let record = cluster
        .get("v1", "ConfigMap", "azureml", "scoregate-ext-scoregate")
        .unwrap();
    assert_eq!(
        record["metadata"]["annotations"]["scoregate.io/created-namespace"],
        "true"
    );
    assert!(
        !record["data"]["extension.yaml"]
            .as_str()
            .unwrap()
            .contains("BEGIN"),
        "the record never holds protected values"
    );
    assert!(cluster
        .get("v1", "Secret", "azureml", "azureml-fe-tls")
        .is_some());
    // HA: the replicas share a random credential and find each other through a headless Service.
    let credential = cluster
        .get("v1", "Secret", "azureml", "azureml-fe-cluster")
        .expect("the cluster credential is created");
    let credential = credential["data"]["secret"].as_str().unwrap().to_owned();
    assert!(
        credential.len() >= 40,
        "32 random bytes, base64: {credential}"
    );
    let peers = cluster
        .get("v1", "Service", "azureml", "azureml-fe-peers")
        .unwrap();
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert!(cluster
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "onlineendpoints.scoregate.io"
        )
        .is_some());
    assert!(cluster
        .get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "",
            "scoregate-router"
        )
        .is_some());

    // show, as az and kubectl would.
    let (out, _) = cluster.ok(&["show", "--name", "scoregate"]).await;
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["provisioningState"], "Succeeded");
    let components = shown["components"].as_array().unwrap();
    assert!(components
        .iter()
        .any(|c| c["name"] == "azureml-fe-v2" && c["ready"] == "3/3"));
    assert!(components
        .iter()
        .any(|c| c["name"] == "azureml-fe" && c["ready"] == "20.1.2.3"));
    let (table, _) = cluster
        .ok(&["show", "--name", "scoregate", "-o", "table"])
        .await;
    assert!(table.contains("provisioningState Succeeded"), "{table}");
    assert!(
        table.contains("Deployment   azureml-fe-v2   3/3"),
        "{table}"
    );
    let (listed, _) = cluster.ok(&["list", "-o", "yaml"]).await;
    assert!(listed.contains("name: scoregate"), "{listed}");

    // update: a change that impacts live endpoints needs --yes (az rule 10) …
    let e = cluster
        .fails(&[
            "update",
            "--name",
            "scoregate",
            "--config",
            "allowInsecureConnections=True",
        ])
        .await;
    assert!(
        e.contains("will IMPACT your active online endpoints and deployments"),
        "{e}"
    );
    assert!(e.contains("allowInsecureConnections: False → True"), "{e}");
    // … and protected settings must be given again: dropping them turns TLS off.
    let e = cluster
        .fails(&[
            "update",
            "--name",
            "scoregate",
            "--config",
            "installNvidiaDevicePlugin=True",
        ])
        .await;
    assert!(e.contains("allowInsecureConnections"), "{e}");
    assert!(e.contains("sslCertPemFile, sslKeyPemFile dropped"), "{e}");

    // A dry run shows the change and its impact, and writes nothing.
    cluster.server.clear_requests();
    let mut dry = vec![
        "update",
        "--name",
        "scoregate",
        "--dry-run",
        "--config",
        "allowInsecureConnections=True",
        "--config-protected",
    ];
    dry.extend(protected.iter().map(String::as_str));
    let (out, _) = cluster.ok(&dry).await;
    assert!(
        out.contains("# NOTE allowInsecureConnections: False → True: will IMPACT"),
        "{out}"
    );
    assert!(out.contains("port: 80"), "{out}");
    assert!(cluster.server.requests().iter().all(|r| r.method == "GET"));

    let mut update = vec![
        "update",
        "--name",
        "scoregate",
        "--yes",
        "--config",
        "allowInsecureConnections=True",
        "installNvidiaDevicePlugin=True",
        "--config-protected",
    ];
    update.extend(protected.iter().map(String::as_str));
    let (out, err) = cluster.ok(&update).await;
    assert!(
        err.contains("warning: allowInsecureConnections: False → True"),
        "{err}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["provisioningState"],
        "Pending",
        "the fake has no DaemonSet controller: {out}"
    );
    let service = cluster
        .get("v1", "Service", "azureml", "azureml-fe")
        .unwrap();
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [80, 443]);
    assert!(cluster
        .get(
            "apps/v1",
            "DaemonSet",
            "azureml",
            "nvidia-device-plugin-daemonset"
        )
        .is_some());
    let deployment = cluster
        .get("apps/v1", "Deployment", "azureml", "azureml-fe-v2")
        .unwrap();
    assert_eq!(
        deployment["metadata"]["generation"], 2,
        "the config digest rolled the router"
    );
    assert_eq!(
        cluster
            .get("v1", "Secret", "azureml", "azureml-fe-cluster")
            .unwrap()["data"]["secret"]
            .as_str(),
        Some(credential.as_str()),
        "an update keeps the replicas' credential"
    );

    // Turning the plugin off again prunes it; the rest stays.
    let mut update = vec![
        "update",
        "--name",
        "scoregate",
        "--yes",
        "--config",
        "installNvidiaDevicePlugin=False",
        "--config-protected",
    ];
    update.extend(protected.iter().map(String::as_str));
    let (out, err) = cluster.ok(&update).await;
    assert!(
        err.contains("removed DaemonSet/nvidia-device-plugin-daemonset"),
        "{err}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["provisioningState"],
        "Succeeded"
    );
    assert!(cluster
        .get(
            "apps/v1",
            "DaemonSet",
            "azureml",
            "nvidia-device-plugin-daemonset"
        )
        .is_none());

    // delete: exactly what create and update made, the namespace too (create made it).
    let e = cluster.fails(&["delete", "--name", "scoregate"]).await;
    assert!(e.contains("run again with --yes"), "{e}");
    let (out, err) = cluster
        .ok(&["delete", "--name", "scoregate", "--yes"])
        .await;
    assert!(out.contains("deleted Deployment/azureml-fe-v2"), "{out}");
    assert!(
        out.contains("deleted CustomResourceDefinition/onlineendpoints.scoregate.io"),
        "{out}"
    );
    assert!(out.contains("deleted Namespace/azureml"), "{out}\n{err}");
    for (api_version, kind, ns) in [
        ("v1", "ConfigMap", "azureml"),
        ("v1", "Secret", "azureml"),
        ("v1", "Service", "azureml"),
        ("apps/v1", "Deployment", "azureml"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", ""),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", ""),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition", ""),
        ("v1", "Namespace", ""),
    ] {
        assert!(
            cluster.labelled(api_version, kind, ns).is_empty(),
            "{kind} left behind"
        );
    }
    let e = cluster.fails(&["show", "--name", "scoregate"]).await;
    assert!(e.contains("no extension `scoregate`"), "{e}");
    controllers.abort();
}

#[tokio::test]
async fn delete_keeps_what_it_does_not_own() {
    let cluster = Cluster::start(1).await;
    // The namespace exists first, with someone else's Secret in it.
    cluster.server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "azureml", "labels": {"team": "ml"}}})).unwrap();
    cluster.server.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "theirs", "namespace": "azureml"}})).unwrap();
    cluster
        .ok(&[
            "create",
            "--name",
            "scoregate",
            "--no-wait",
            "--config",
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
            "allowInsecureConnections=True",
        ])
        .await;
    let ns = cluster.get("v1", "Namespace", "", "azureml").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["scoregate.io/extension"],
        "scoregate"
    );
    // An endpoint exists: its CRD must stay.
    cluster.server.apply(json!({"apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint", "metadata": {"name": "e", "namespace": "models"}, "spec": {}})).unwrap();

    let (out, err) = cluster
        .ok(&["delete", "--name", "scoregate", "--yes"])
        .await;
    assert!(
        out.contains("deleted CustomResourceDefinition/onlinedeployments.scoregate.io"),
        "{out}"
    );
    assert!(err.contains("CustomResourceDefinition/onlineendpoints.scoregate.io kept: 1 of its custom resources still exist"), "{err}");
    assert!(
        err.contains("Namespace/azureml kept: it existed before the extension was created"),
        "{err}"
    );
    let ns = cluster.get("v1", "Namespace", "", "azureml").unwrap();
    // A real API server keeps their `team` label (server-side apply removes only the keys this
    // manager owned); the fake's simplified apply drops the whole `labels` map, so that is not
    // asserted here (reported as a fake-kube gap).
    assert!(
        ns["metadata"]["labels"]["scoregate.io/extension"].is_null(),
        "ours are gone: {ns}"
    );
    assert!(cluster.get("v1", "Secret", "azureml", "theirs").is_some());
    assert!(cluster
        .get("apps/v1", "Deployment", "azureml", "azureml-fe-v2")
        .is_none());
}

#[tokio::test]
async fn default_ha_is_turned_off_on_a_two_node_cluster() {
    let cluster = Cluster::start(2).await;
    let controllers = cluster.controllers();
    let (_, err) = cluster
        .ok(&[
            "create",
            "--name",
            "scoregate",
            "--config",
            "enableInference=True",
            "inferenceRouterServiceType=nodePort",
            "allowInsecureConnections=True",
        ])
        .await;
    assert!(
        err.contains("inferenceRouterHA: set to False (1 router replica)"),
        "{err}"
    );
    let deployment = cluster
        .get("apps/v1", "Deployment", "azureml", "azureml-fe-v2")
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 1);
    // Explicit HA on the same cluster is refused before anything is applied.
    cluster
        .ok(&["delete", "--name", "scoregate", "--yes"])
        .await;
    cluster.server.clear_requests();
    let e = cluster
        .fails(&[
            "create",
            "--name",
            "scoregate",
            "--config",
            "enableInference=True",
            "inferenceRouterServiceType=nodePort",
            "allowInsecureConnections=True",
            "inferenceRouterHA=True",
        ])
        .await;
    assert!(
        e.contains("inferenceRouterHA: True needs 3 schedulable nodes"),
        "{e}"
    );
    assert!(
        cluster.server.requests().iter().all(|r| r.method == "GET"),
        "nothing was written"
    );
    controllers.abort();
}

#[tokio::test]
async fn ssl_secret_is_checked_in_the_cluster() {
    let cluster = Cluster::start(1).await;
    let config = [
        "enableInference=True",
        "inferenceRouterServiceType=clusterIP",
        "sslCname=ml.contoso.com",
        "sslSecret=contoso-tls",
        "inferenceRouterHA=False",
    ];
    let e = cluster.fails(&create_args(&config, &[])).await;
    assert!(
        e.contains("sslSecret: Secret `contoso-tls` does not exist in namespace azureml"),
        "{e}"
    );

    // Secret data is base64 on the wire; ByteString encodes it as kube would.
    let b64 = |name: &str| {
        serde_json::to_value(k8s_openapi::ByteString(
            std::fs::read(support::fixture(name)).unwrap(),
        ))
        .unwrap()
    };
    cluster
        .server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "azureml"}}))
        .unwrap();
    cluster
        .server
        .apply(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "contoso-tls", "namespace": "azureml"},
            "data": {"cert.pem": b64("cert.pem"), "key.pem": b64("key.pem")},
        }))
        .unwrap();
    let mut args = create_args(&config, &[]);
    args.push("--no-wait");
    cluster.ok(&args).await;
    let deployment = cluster
        .get("apps/v1", "Deployment", "azureml", "azureml-fe-v2")
        .unwrap();
    let sources = &deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"];
    assert_eq!(sources[1]["secret"]["name"], "contoso-tls");
    assert!(
        cluster
            .get("v1", "Secret", "azureml", "azureml-fe-tls")
            .is_none(),
        "no Secret of our own"
    );
}

#[tokio::test]
async fn a_router_that_never_becomes_ready_times_out_and_a_failed_one_fails() {
    let cluster = Cluster::start(1).await;
    let mut args = vec![
        "create",
        "--name",
        "scoregate",
        "--timeout",
        "200ms",
        "--config",
        "enableInference=True",
        "inferenceRouterServiceType=clusterIP",
        "allowInsecureConnections=True",
    ];
    let e = cluster.fails(&args).await;
    assert!(
        e.contains("the router was not ready within 200ms (provisioningState Pending)"),
        "{e}"
    );
    let (out, _) = cluster.ok(&["show", "--name", "scoregate"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["provisioningState"],
        "Pending"
    );

    cluster
        .server
        .set_status("apps/v1", "Deployment", "azureml", "azureml-fe-v2", json!({
            "observedGeneration": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet has timed out progressing."}],
        }))
        .unwrap();
    let (out, _) = cluster.ok(&["show", "--name", "scoregate"]).await;
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["provisioningState"], "Failed");
    assert!(out.contains("ProgressDeadlineExceeded"), "{out}");

    // A second extension is refused: one router per cluster.
    args[2] = "other";
    let e = cluster.fails(&args).await;
    assert!(
        e.contains("extension `scoregate` is already installed"),
        "{e}"
    );
}

#[tokio::test]
async fn dry_run_against_a_cluster_writes_nothing() {
    let cluster = Cluster::start(2).await;
    let (out, _) = cluster
        .ok(&[
            "create",
            "--name",
            "scoregate",
            "--dry-run",
            "--config",
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
            "allowInsecureConnections=True",
        ])
        .await;
    assert!(
        out.contains("# NOTE inferenceRouterHA: set to False"),
        "the cluster was checked: {out}"
    );
    assert!(out.contains("replicas: 1"), "{out}");
    assert!(cluster.server.requests().iter().all(|r| r.method == "GET"));
}

//! Installer safety on a real (fake) cluster: objects something else manages are not taken over
//! without `--take-over`, servers older than the supported minimum are refused and 1.28–1.29 get
//! a `preStop` they support, an update that drops HTTPS needs `--yes`, and namespace-scoped mode
//! grants Roles only where endpoints live, pruned and deleted like the rest.

mod support;

use serde_json::{json, Value};
use support::kube::Cluster;

const HTTP: &[&str] = &[
    "--config",
    "enableInference=True",
    "inferenceRouterServiceType=LoadBalancer",
    "allowInsecureConnections=True",
    "inferenceRouterHA=False",
];

fn create(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["create", "--name", "scoregate", "--no-wait"];
    args.extend_from_slice(HTTP);
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn azure_ml_objects_are_not_taken_over_without_take_over() {
    let cluster = Cluster::start(1).await;
    // What the Azure ML extension's Helm release leaves: same names, its own labels.
    let helm = json!({"app.kubernetes.io/managed-by": "Helm"});
    let release = json!({"meta.helm.sh/release-name": "azureml"});
    cluster.server.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "azureml-fe", "namespace": "azureml", "labels": helm, "annotations": release}, "spec": {"type": "LoadBalancer", "selector": {"azuremlappname": "azureml-fe"}}})).unwrap();
    cluster.server.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "azureml-fe-v2", "namespace": "azureml", "labels": helm}, "spec": {}})).unwrap();
    cluster.server.clear_requests();

    let e = cluster.fails(&create(&[])).await;
    assert!(
        e.contains("Service/azureml-fe (managed by Helm (release azureml))"),
        "{e}"
    );
    assert!(
        e.contains("Deployment/azureml-fe-v2 (managed by Helm)"),
        "{e}"
    );
    assert!(
        e.contains("--take-over") && e.contains("Nothing was changed"),
        "{e}"
    );
    assert_eq!(cluster.writes(), 0, "the refusal wrote nothing");

    // A dry run against the cluster says the same, as notices.
    let (out, _) = cluster.ok(&create(&["--dry-run"])).await;
    assert!(
        out.contains("# NOTE Service/azureml-fe exists, managed by Helm (release azureml): create and update refuse to replace it without --take-over"),
        "{out}"
    );

    let (_, err) = cluster.ok(&create(&["--take-over"])).await;
    assert!(
        err.contains("--take-over: replacing Deployment/azureml-fe-v2 (managed by Helm), Service/azureml-fe (managed by Helm (release azureml)); they now belong to extension `scoregate`"),
        "{err}"
    );
    let service = cluster
        .get("v1", "Service", "azureml", "azureml-fe")
        .unwrap();
    assert_eq!(
        service["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "scoregate-ext"
    );
    // Now ours: an update does not ask again, and delete removes them.
    cluster
        .ok(&[
            "update",
            "--name",
            "scoregate",
            "--no-wait",
            "--config",
            "installPromOp=False",
        ])
        .await;
    cluster
        .ok(&["delete", "--name", "scoregate", "--yes"])
        .await;
    assert!(cluster
        .get("v1", "Service", "azureml", "azureml-fe")
        .is_none());
}

#[tokio::test]
async fn servers_older_than_the_minimum_are_refused_and_1_29_gets_an_exec_pre_stop() {
    let cluster = Cluster::start(1).await;
    cluster.server.set_server_version(27);
    let e = cluster.fails(&create(&[])).await;
    assert!(
        e.contains("Kubernetes 1.27, older than 1.28, the oldest scoregate-ext supports"),
        "{e}"
    );
    assert_eq!(cluster.writes(), 0);

    cluster.server.set_server_version(29);
    let (out, _) = cluster.ok(&create(&["--dry-run"])).await;
    assert!(
        out.contains("# NOTE Kubernetes 1.29: the router's preStop hook runs `scoregate sleep`"),
        "{out}"
    );
    let deployment = out
        .split("---\n")
        .find(|d| d.contains("kind: Deployment"))
        .unwrap();
    let deployment: Value = serde_yaml::from_str(deployment).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["lifecycle"]["preStop"],
        json!({"exec": {"command": ["scoregate", "sleep", "5s"]}})
    );

    cluster.server.set_server_version(30);
    let (out, _) = cluster.ok(&create(&["--dry-run"])).await;
    assert!(out.contains("sleep:\n              seconds: 5"), "{out}");
}

#[tokio::test]
async fn an_update_that_drops_https_needs_yes() {
    let cluster = Cluster::start(1).await;
    let protected = support::fixture_protected();
    let mut args = vec![
        "create",
        "--name",
        "scoregate",
        "--no-wait",
        "--config",
        "enableInference=True",
        "inferenceRouterServiceType=LoadBalancer",
        "inferenceRouterHA=False",
        "sslCname=ml.contoso.com",
        "--config-protected",
    ];
    args.extend(protected.iter().map(String::as_str));
    cluster.ok(&args).await;

    // Plain HTTP on, the PEM files not given again: HTTPS would go.
    let update = [
        "update",
        "--name",
        "scoregate",
        "--no-wait",
        "--config",
        "allowInsecureConnections=True",
    ];
    cluster.server.clear_requests();
    let e = cluster.fails(&update).await;
    assert!(e.contains("will IMPACT"), "{e}");
    assert!(e.contains("HTTPS: on → off"), "{e}");
    assert_eq!(cluster.writes(), 0);
    let mut confirmed = update.to_vec();
    confirmed.push("--yes");
    let (_, err) = cluster.ok(&confirmed).await;
    assert!(err.contains("warning: HTTPS: on → off"), "{err}");
    let service = cluster
        .get("v1", "Service", "azureml", "azureml-fe")
        .unwrap();
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert!(ports.iter().all(|p| p["port"] != 443), "{service}");
    assert!(cluster
        .get("v1", "Secret", "azureml", "azureml-fe-tls")
        .is_none());
}

#[tokio::test]
async fn namespace_scoped_mode_grants_roles_only_where_endpoints_live() {
    let cluster = Cluster::start(3).await;
    let mut args = create(&[]);
    args.retain(|a| *a != "inferenceRouterHA=False");
    args.push("inferenceRouterNamespaces=team-a,team-b");
    cluster.ok(&args).await;
    assert!(cluster
        .get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "",
            "scoregate-router"
        )
        .is_none());
    for ns in ["team-a", "team-b"] {
        let role = cluster
            .get(
                "rbac.authorization.k8s.io/v1",
                "Role",
                ns,
                "scoregate-router",
            )
            .unwrap_or_else(|| panic!("a Role in {ns}"));
        let rules = role["rules"].to_string();
        assert!(
            rules.contains("secrets") && rules.contains("onlineendpoints"),
            "{rules}"
        );
        assert!(cluster
            .get(
                "rbac.authorization.k8s.io/v1",
                "RoleBinding",
                ns,
                "scoregate-router"
            )
            .is_some());
    }
    // HA: the replicas find each other through EndpointSlices in azureml.
    let peers = cluster
        .get(
            "rbac.authorization.k8s.io/v1",
            "Role",
            "azureml",
            "scoregate-router-peers",
        )
        .unwrap();
    assert!(peers["rules"].to_string().contains("endpointslices"));
    let config = cluster
        .get("v1", "ConfigMap", "azureml", "azureml-fe-config")
        .unwrap();
    let yaml = config["data"]["config.yaml"].as_str().unwrap();
    assert!(
        yaml.contains("- team-a\n") && yaml.contains("- team-b\n"),
        "{yaml}"
    );

    // One namespace fewer: its Role and RoleBinding are pruned.
    let (_, err) = cluster
        .ok(&[
            "update",
            "--name",
            "scoregate",
            "--no-wait",
            "--config",
            "inferenceRouterNamespaces=team-a",
        ])
        .await;
    assert!(
        err.contains("removed Role/scoregate-router in team-b"),
        "{err}"
    );
    assert!(cluster
        .get(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "team-b",
            "scoregate-router"
        )
        .is_none());
    assert!(cluster
        .get(
            "rbac.authorization.k8s.io/v1",
            "Role",
            "team-a",
            "scoregate-router"
        )
        .is_some());
    let (out, _) = cluster
        .ok(&["delete", "--name", "scoregate", "--yes"])
        .await;
    assert!(
        out.contains("deleted Role/scoregate-router in team-a"),
        "{out}"
    );
    assert!(cluster
        .get(
            "rbac.authorization.k8s.io/v1",
            "Role",
            "team-a",
            "scoregate-router"
        )
        .is_none());
}

//! `create`, `show`, `list`, `update` and `delete` through the CLI, against the fake API server
//! (real HTTP, server-side apply, request log). The fake runs no controllers, so the tests play
//! the Deployment controller and the cloud load balancer by writing `.status`.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use scoregate_ext::cli::{run, Cli};
use scoregate_fake_kube::FakeApiServer;
use serde_json::{json, Value};
use tempfile::TempDir;

struct Cluster {
    server: Arc<FakeApiServer>,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

impl Cluster {
    /// A fake cluster with `nodes` Ready nodes.
    async fn start(nodes: usize) -> Cluster {
        let server = Arc::new(FakeApiServer::start().await.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig, "default").unwrap();
        for i in 0..nodes {
            server
                .apply(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                }))
                .unwrap();
        }
        Cluster {
            server,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Runs `scoregate-ext <args> --kubeconfig …`; (result, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (anyhow::Result<()>, String, String) {
        let mut argv: Vec<String> = vec!["scoregate-ext".into()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv.push("--kubeconfig".into());
        argv.push(self.kubeconfig.display().to_string());
        if matches!(args[0], "create" | "update") {
            argv.extend(["--poll-interval".into(), "10ms".into()]);
        }
        let cli = Cli::try_parse_from(argv).expect("arguments parse");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = run(cli, &mut out, &mut err).await;
        (
            result,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    async fn ok(&self, args: &[&str]) -> (String, String) {
        let (result, out, err) = self.run(args).await;
        if let Err(e) = result {
            panic!("scoregate-ext {args:?} failed: {e:#}\nstderr:\n{err}");
        }
        (out, err)
    }

    async fn fails(&self, args: &[&str]) -> String {
        let (result, _, _) = self.run(args).await;
        format!("{:#}", result.expect_err("the command should fail"))
    }

    fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.server.get(api_version, kind, ns, name)
    }

    /// Plays the controllers: the scoring Service gets a load balancer address (once), and the
    /// router Deployment's current generation turns ready, but only once that Service is
    /// settled, so a finished `create` always sees both (as a real rollout would, the address
    /// comes long before the pods are ready).
    fn controllers(&self) -> tokio::task::JoinHandle<()> {
        let server = self.server.clone();
        tokio::spawn(async move {
            loop {
                let service_settled = match server.get("v1", "Service", "azureml", "azureml-fe") {
                    None => false,
                    Some(s) if s["spec"]["type"] != "LoadBalancer" => true,
                    Some(s) if !s["status"]["loadBalancer"]["ingress"].is_null() => true,
                    Some(_) => {
                        server
                            .set_status(
                                "v1",
                                "Service",
                                "azureml",
                                "azureml-fe",
                                json!({
                                    "loadBalancer": {"ingress": [{"ip": "20.1.2.3"}]},
                                }),
                            )
                            .unwrap();
                        true
                    }
                };
                if let Some(d) = server.get("apps/v1", "Deployment", "azureml", "azureml-fe-v2") {
                    let generation = d["metadata"]["generation"].clone();
                    if service_settled && d["status"]["observedGeneration"] != generation {
                        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
                        server
                            .set_status("apps/v1", "Deployment", "azureml", "azureml-fe-v2", json!({
                                "observedGeneration": generation, "replicas": replicas,
                                "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
                                "conditions": [{"type": "Available", "status": "True"}],
                            }))
                            .unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn labelled(&self, api_version: &str, kind: &str, ns: &str) -> Vec<String> {
        self.server
            .list(api_version, kind, ns)
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["scoregate.io/extension"] == "scoregate")
            .map(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

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

    // update: a change that impacts live endpoints needs --yes (§9.3 item 10) …
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

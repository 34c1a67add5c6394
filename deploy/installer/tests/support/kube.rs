//! A fake cluster for the CLI tests: the fake API server with Ready nodes, a kubeconfig, the
//! CLI run against it, and the controllers the fake does not run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use scoregate_fake_kube::FakeApiServer;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A fake cluster (the fake API server) and a kubeconfig for it.
pub struct Cluster {
    /// The fake API server.
    pub server: Arc<FakeApiServer>,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

impl Cluster {
    /// A fake cluster with `nodes` Ready nodes.
    pub async fn start(nodes: usize) -> Cluster {
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
    pub async fn run(&self, args: &[&str]) -> (anyhow::Result<()>, String, String) {
        let mut argv: Vec<String> = vec!["scoregate-ext".into()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv.push("--kubeconfig".into());
        argv.push(self.kubeconfig.display().to_string());
        if matches!(args[0], "create" | "update") {
            argv.extend(["--poll-interval".into(), "10ms".into()]);
        }
        super::run_cli(argv).await
    }

    pub async fn ok(&self, args: &[&str]) -> (String, String) {
        let (result, out, err) = self.run(args).await;
        if let Err(e) = result {
            panic!("scoregate-ext {args:?} failed: {e:#}\nstderr:\n{err}");
        }
        (out, err)
    }

    pub async fn fails(&self, args: &[&str]) -> String {
        let (result, _, _) = self.run(args).await;
        format!("{:#}", result.expect_err("the command should fail"))
    }

    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.server.get(api_version, kind, ns, name)
    }

    /// Plays the controllers: the scoring Service gets a load balancer address (once), and the
    /// router Deployment's current generation turns ready, but only once that Service is
    /// settled, so a finished `create` always sees both (as a real rollout would, the address
    /// comes long before the pods are ready).
    pub fn controllers(&self) -> tokio::task::JoinHandle<()> {
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

    pub fn labelled(&self, api_version: &str, kind: &str, ns: &str) -> Vec<String> {
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

impl Cluster {
    /// Requests that changed something (anything but GET).
    pub fn writes(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    }
}

//! Talking to the cluster before installing: the client, and the facts validation needs (nodes
//! for high availability, the `sslSecret`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::problem::Notice;
use crate::render::meta;
use crate::settings::Settings;
use crate::validate::{ClusterFacts, KubernetesVersion, NodeFact, SecretFact};

/// A client from `kubeconfig`, or from `KUBECONFIG` / `~/.kube/config` / the in-cluster service
/// account when none is given.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| {
                format!("cannot read kubeconfig `{}`: give a readable kubeconfig with --kubeconfig", path.display())
            })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig `{}` is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no cluster configured: pass --kubeconfig, set KUBECONFIG, or run inside a cluster (use --dry-run to render without one)",
        )?,
    };
    Client::try_from(config).context("cannot build a Kubernetes client from the kubeconfig")
}

/// Whether `e` is an API answer with HTTP `code`.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Gathers what validation checks against; where the installer may not look (403), it says so
/// and leaves the fact unknown.
pub async fn gather(
    client: &Client,
    settings: &Settings,
) -> anyhow::Result<(ClusterFacts, Vec<Notice>)> {
    let mut notices = Vec::new();
    let mut facts = ClusterFacts {
        kubernetes_version: Some(server_version(client).await?),
        ..ClusterFacts::default()
    };
    if settings.enable_inference.value
        || settings.install_nvidia_device_plugin.value
        || settings.install_dcgm_exporter.value
    {
        match Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => facts.nodes = Some(list.items.iter().map(node_fact).collect()),
            Err(e) if is_status(&e, 403) => notices.push(Notice::about(
                "inferenceRouterHA",
                "the node count was not checked: you may not list nodes (403)",
            )),
            Err(e) => {
                return Err(e)
                    .context("cannot list the cluster's nodes (for the inferenceRouterHA check)")
            }
        }
        let files = settings.ssl_cert_pem_file.is_some() && settings.ssl_key_pem_file.is_some();
        if let (Some(name), false) = (&settings.ssl_secret, files) {
            let secrets = Api::<Secret>::namespaced(client.clone(), meta::NAMESPACE);
            match secrets.get_opt(name).await {
                Ok(None) => facts.ssl_secret = Some(SecretFact::Missing),
                Ok(Some(secret)) => {
                    let data = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    facts.ssl_secret = Some(SecretFact::Found { data });
                }
                Err(e) if is_status(&e, 403) => notices.push(Notice::about(
                    "sslSecret",
                    format!("Secret `{name}` was not checked: you may not read Secrets in namespace azureml (403)"),
                )),
                Err(e) => return Err(e).with_context(|| format!("cannot read Secret azureml/{name}")),
            }
        }
    }
    Ok((facts, notices))
}

/// The API server's version (`GET /version`).
pub async fn server_version(client: &Client) -> anyhow::Result<KubernetesVersion> {
    let info = client
        .apiserver_version()
        .await
        .context("cannot ask the API server for its version (GET /version)")?;
    KubernetesVersion::parse(&format!("{}.{}", info.major, info.minor)).with_context(|| {
        format!(
            "the API server reports version {:?}.{:?}, which is not a Kubernetes version",
            info.major, info.minor
        )
    })
}

fn node_fact(node: &Node) -> NodeFact {
    let name = node.metadata.name.clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    let spec = node.spec.clone().unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let taint = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .find(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"));
    let unschedulable = if spec.unschedulable == Some(true) {
        Some("cordoned".to_owned())
    } else if !ready {
        Some("not Ready".to_owned())
    } else {
        taint.map(|t| {
            let value = t.value.map(|v| format!("={v}")).unwrap_or_default();
            format!("tainted {}{value}:{}", t.key, t.effect)
        })
    };
    NodeFact {
        name,
        labels,
        unschedulable,
    }
}

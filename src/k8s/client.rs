//! The Kubernetes client every watch and write of the router shares.

use std::path::Path;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

/// A client from `kubeconfig`, else `KUBECONFIG` or `~/.kube/config`, else the in-cluster service
/// account. Installs rustls's crypto provider first (kube's TLS needs one).
///
/// kube's default per-request retry (429/503/504, up to 15 times, 5 ms doubling to minutes) is
/// off: it would hide an outage from the watches' own backoff, logs and metrics, and could delay
/// the resumption by its last, longest wait. The watches retry themselves.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
                format!(
                    "cannot read the kubeconfig {} (discovery.kube.kubeconfig / --kubeconfig)",
                    path.display()
                )
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration found: run in a cluster with a service account, set \
             KUBECONFIG, or pass --kubeconfig",
        )?,
    };
    config.default_retry = false;
    Client::try_from(config).context("cannot build a Kubernetes client")
}

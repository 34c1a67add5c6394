//! The TLS certificate from a Secret, feeding [`CertStore`]. Two layouts are read: a
//! `kubernetes.io/tls` Secret's `tls.crt` and `tls.key` (as cert-manager and `kubectl create
//! secret tls` write them) and Azure ML's `sslSecret` keys `cert.pem` and `key.pem`. When both
//! pairs are complete, `tls.crt`/`tls.key` is served: that is the pair a certificate manager
//! renews, and Azure ML's pair next to it is most likely the one it replaced. Entries of the two
//! pairs are never mixed.
//!
//! The first pair is read at startup and the router refuses to start without a good one, saying
//! which Secret to fix and how. After that a watch of that one Secret (field selector
//! `metadata.name`) offers every changed pair to [`CertStore::offer`], which swaps it in for new
//! handshakes or refuses it, logs and counts, and keeps serving the current certificate.
//! (Endpoint key Secrets are read by the routing watches; see [`super::translate::keys_from`].)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::health::WatchMetrics;
use super::resources::{spawn_tls_secret, Body, Kind, Object, WatchId};
use crate::config::SecretRef;
use crate::crd::{K8S_TLS_CERT_KEY, K8S_TLS_KEY_KEY, TLS_CERT_KEY, TLS_KEY_KEY};
use crate::k8s::Health;
use crate::telemetry::Metrics;
use crate::tls::CertStore;

/// How long startup keeps retrying when the API server cannot be reached.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

fn origin(secret: &SecretRef) -> String {
    format!("Secret {}/{}", secret.namespace, secret.name)
}

fn how_to_create(secret: &SecretRef) -> String {
    format!(
        "create it with `kubectl -n {ns} create secret tls {name} --cert=<chain.pem> --key=<key.pem>` \
         (keys {K8S_TLS_CERT_KEY} and {K8S_TLS_KEY_KEY}; Azure ML's {TLS_CERT_KEY} and {TLS_KEY_KEY} \
         work too), certificate chain server first, unencrypted key",
        ns = secret.namespace,
        name = secret.name
    )
}

/// The PEM pair in a TLS Secret and the keys it came from: `tls.crt`/`tls.key` when both are
/// there, else `cert.pem`/`key.pem` when either is, else whichever of `tls.*` is there. A missing
/// entry is empty (and refused by the store with a message naming what is missing).
fn pair(secret: &Secret) -> (PemPair, [&'static str; 2]) {
    let get = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .unwrap_or_default()
    };
    let has = |key: &str| !get(key).is_empty();
    let kubernetes = [K8S_TLS_CERT_KEY, K8S_TLS_KEY_KEY];
    let azureml = [TLS_CERT_KEY, TLS_KEY_KEY];
    let keys = if kubernetes.iter().all(|k| has(k)) {
        kubernetes
    } else if azureml.iter().any(|k| has(k)) || !kubernetes.iter().any(|k| has(k)) {
        azureml
    } else {
        kubernetes
    };
    ((get(keys[0]), get(keys[1])), keys)
}

/// Where a pair came from, for messages: the Secret and its keys.
fn pair_origin(secret: &SecretRef, keys: [&str; 2]) -> String {
    format!("{} (keys {} and {})", origin(secret), keys[0], keys[1])
}

/// The PEM pair a store serves: (certificate chain, key).
pub type PemPair = (Vec<u8>, Vec<u8>);

/// Reads the TLS Secret and builds the certificate store from it (returned with the pair it
/// serves); fails, naming the Secret and the fix, when it is missing, unreadable or does not hold
/// a good pair. Retries for a while when the API server cannot be reached.
pub async fn load_certificate(
    client: &Client,
    secret: &SecretRef,
    expected_name: Option<String>,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<CertStore>, PemPair)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    let object = loop {
        match api.get_opt(&secret.name).await {
            Ok(Some(object)) => break object,
            Ok(None) => anyhow::bail!(
                "TLS {} (tls.secret) does not exist: {}",
                origin(secret),
                how_to_create(secret)
            ),
            Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => {
                anyhow::bail!(
                    "cannot read TLS {}: {} (HTTP {}): allow the router's service account to get, list and \
                     watch secrets in namespace {}",
                    origin(secret),
                    status.message,
                    status.code,
                    secret.namespace
                )
            }
            Err(e) if started.elapsed() < STARTUP_PATIENCE => {
                tracing::warn!("cannot read TLS {} yet: {e}; retrying", origin(secret));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                    "cannot read TLS {} (tried for {} s): is the Kubernetes API server reachable?",
                    origin(secret),
                    STARTUP_PATIENCE.as_secs()
                )
                })
            }
        }
    };
    let ((cert, key), keys) = pair(&object);
    let from = pair_origin(secret, keys);
    let store = CertStore::new(&cert, &key, &from, expected_name, metrics).with_context(|| {
        format!(
            "fix the data of {}: {}",
            origin(secret),
            how_to_create(secret)
        )
    })?;
    Ok((store, (cert, key)))
}

/// Watches the TLS Secret and offers each changed pair to `store`. `served` is the pair the store
/// was built from.
pub fn watch_certificate(
    client: Client,
    secret: SecretRef,
    store: Arc<CertStore>,
    served: PemPair,
    metrics: &Metrics,
) -> tokio::task::JoinHandle<()> {
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel(16);
        let id = WatchId::of(Kind::Secrets, &Some(secret.namespace.clone()));
        let health = Health::new(
            "keeping the current certificate",
            Arc::new(WatchMetrics::new(&metrics, None)),
        );
        let _watch = spawn_tls_secret(&client, &secret.namespace, &secret.name, id, tx, &health);
        let mut offered = served;
        let origin = origin(&secret);
        let mut offer = |object: &Secret| {
            let (current, keys) = pair(object);
            if offered == current {
                return;
            }
            let from = pair_origin(&secret, keys);
            if store.offer(&current.0, &current.1, &from).is_ok() {
                tracing::info!("TLS certificate from {from} is now served");
            }
            offered = current;
        };
        while let Some(message) = rx.recv().await {
            match message.body {
                Body::Apply(Object::Secret(object)) => offer(&object),
                Body::Synced(objects) => match objects.first() {
                    Some(Object::Secret(object)) => offer(object),
                    _ => tracing::warn!(
                        "TLS {origin} does not exist any more; keeping the current certificate: {}",
                        how_to_create(&secret)
                    ),
                },
                Body::Delete(_) => tracing::warn!(
                    "TLS {origin} was deleted; keeping the current certificate: {}",
                    how_to_create(&secret)
                ),
                Body::Apply(_) => {}
            }
        }
    })
}

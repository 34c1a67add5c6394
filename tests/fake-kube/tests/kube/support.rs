//! Shared fixtures: a server with a client, objects, and helpers that drive watch streams.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use scoregate_fake_kube::FakeApiServer;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::mpsc;

/// The namespace the tests use.
pub const NS: &str = "ns";

/// A started server and a client for [`NS`].
pub async fn setup() -> (FakeApiServer, Client) {
    let server = FakeApiServer::start()
        .await
        .expect("fake API server starts");
    let client = server.client(NS).await.expect("client from kubeconfig");
    (server, client)
}

/// A ConfigMap in [`NS`] as JSON.
pub fn cm_json(name: &str, app: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "data": {"key": "value"},
    })
}

/// A ConfigMap in [`NS`].
pub fn cm(name: &str, app: &str) -> ConfigMap {
    serde_json::from_value(cm_json(name, app)).expect("valid ConfigMap")
}

/// Polls `condition` until it holds; fails the test after a generous safety limit.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Receives the next item; fails the test after a generous safety limit.
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("timed out waiting for a watch item")
        .expect("watch driver ended")
}

/// Drives a fallible stream in a task, forwarding its items; a short pause after each error
/// stands in for the default backoff.
pub fn spawn_stream<T, E, S>(stream: S) -> mpsc::UnboundedReceiver<Result<T, E>>
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    rx
}

/// A reflector over `api`, driven in a task; returns its store.
pub fn spawn_reflector<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(reflector::reflector(writer, watcher(api, config)));
        while let Some(item) = stream.next().await {
            if item.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    reader
}

/// The names in a reflector store, sorted.
pub fn names<K: Resource + Clone>(store: &Store<K>) -> Vec<String>
where
    K::DynamicType: Eq + Hash + Clone,
{
    let mut names: Vec<String> = store
        .state()
        .iter()
        .filter_map(|o| o.meta().name.clone())
        .collect();
    names.sort();
    names
}

//! Fixtures of the Kubernetes tests: a fake API server with scoregate's CRDs, objects as the
//! cluster would hold them, sample model pods on loopback addresses, a router pointed at the fake
//! by kubeconfig, captured logs, and the request counts the fake saw. The generic fixtures they
//! use (keys, the client, scoring, polling, metrics, load) are re-exported from the parent
//! module, so a Kubernetes test needs only `use support::kube::*;`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use scoregate::config::{KubeDiscoveryConfig, RouterConfig};
use scoregate::router::Router;
use scoregate::sample_model::SampleModel;
use scoregate_fake_kube::FakeApiServer;

// Not every test binary uses every re-export.
#[allow(unused_imports)]
pub use super::load::Load;
#[allow(unused_imports)]
pub use super::{
    client, empty, eventually, full, metric, metric_sum, post_score, scrape, send, Client, Resp,
    HANG, KEY, KEY2,
};

/// The namespace the tests use.
pub const NS: &str = "models";

/// Installs the crypto provider kube's client needs (once per process), and logs to the test
/// output at the level `TEST_LOG` names (e.g. `TEST_LOG=scoregate=debug`). Without it, the
/// router's own info lines and everyone's warnings: the test harness shows them only for a test
/// that failed, where they say what the router saw (e.g. "first complete list published …
/// endpoint_slices=0").
pub fn crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,scoregate=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// A fake API server that knows scoregate's CRDs (applied as a cluster admin would).
pub async fn fake() -> FakeApiServer {
    crypto();
    let server = FakeApiServer::start()
        .await
        .expect("fake API server starts");
    for crd in scoregate::crd::crds() {
        server
            .apply(serde_json::to_value(&crd).unwrap())
            .expect("the fake accepts the CRD");
    }
    server
}

/// A router config for `fake`, watching `namespaces` (empty: all), serving plain HTTP.
pub fn router_config(
    fake: &FakeApiServer,
    namespaces: &[&str],
    dir: &tempfile::TempDir,
) -> RouterConfig {
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, NS)
        .expect("write kubeconfig");
    let mut config = RouterConfig {
        allow_insecure_connections: true,
        ..RouterConfig::default()
    };
    config.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.https = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    config.shutdown.drain_delay_ms = 0;
    config.shutdown.grace_period_ms = 1_000;
    config.log.access_log = scoregate::telemetry::AccessLogMode::Off;
    config.discovery.kube = Some(KubeDiscoveryConfig {
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        kubeconfig: Some(kubeconfig),
        ..KubeDiscoveryConfig::default()
    });
    config
}

/// Starts a router and waits until it is ready.
pub async fn ready_router(config: RouterConfig) -> Router {
    let router = Router::start(config).await.expect("router starts");
    eventually("the router to become ready", || async { router.is_ready() }).await;
    router
}

// ---------------------------------------------------------------------------------------------
// Objects

/// An `OnlineEndpoint`.
pub fn endpoint(ns: &str, name: &str, secret: &str, traffic: &[(&str, u8)]) -> Value {
    let traffic: serde_json::Map<String, Value> = traffic
        .iter()
        .map(|(d, p)| (d.to_string(), json!(p)))
        .collect();
    json!({
        "apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"authMode": "key", "keysSecretName": secret, "traffic": traffic},
    })
}

/// An `OnlineDeployment` named `name` of `endpoint`, whose pods are those of Service `service`.
pub fn deployment(ns: &str, endpoint: &str, name: &str, service: &str, port: u16) -> Value {
    json!({
        "apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"endpointName": endpoint, "serviceName": service, "port": port,
            "requestSettings": {"maxConcurrentRequestsPerInstance": 4, "maxQueueWaitMs": 2000}},
    })
}

/// One endpoint `my-endpoint` with deployment `blue` (Service `blue-svc`) on `pods`.
pub async fn one_endpoint(fake: &FakeApiServer, pods: &Pods) {
    fake.apply(key_secret(NS, "my-endpoint-keys", KEY, Some(KEY2)))
        .unwrap();
    fake.apply(endpoint(
        NS,
        "my-endpoint",
        "my-endpoint-keys",
        &[("blue", 100)],
    ))
    .unwrap();
    fake.apply(deployment(NS, "my-endpoint", "blue", "blue-svc", pods.port))
        .unwrap();
    fake.apply(slice(
        NS,
        "blue-svc-x1",
        "blue-svc",
        pods.port,
        &pods.all_ready(),
    ))
    .unwrap();
}

/// A pod entry of an EndpointSlice.
#[derive(Clone, Copy, Debug)]
pub struct PodState {
    /// The pod IP.
    pub ip: IpAddr,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl PodState {
    /// A ready pod.
    pub fn ready(ip: IpAddr) -> Self {
        PodState {
            ip,
            ready: true,
            terminating: false,
        }
    }
}

/// An EndpointSlice of Service `service` listing `pods`.
pub fn slice(ns: &str, name: &str, service: &str, port: u16, pods: &[PodState]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({"addresses": [p.ip.to_string()],
                "conditions": {"ready": p.ready, "serving": p.ready || p.terminating, "terminating": p.terminating},
                "targetRef": {"kind": "Pod", "name": format!("pod-{}", p.ip)}, "nodeName": "node-1"})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

fn b64(text: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// An Opaque Secret with an endpoint's keys.
pub fn key_secret(ns: &str, name: &str, primary: &str, secondary: Option<&str>) -> Value {
    let mut data = json!({"primaryKey": b64(primary.as_bytes())});
    if let Some(secondary) = secondary {
        data["secondaryKey"] = json!(b64(secondary.as_bytes()));
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": ns}, "data": data})
}

/// An Opaque Secret with `cert.pem` and `key.pem` (Azure ML's `sslSecret`).
pub fn tls_secret(ns: &str, name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Value {
    secret_of_type(
        ns,
        name,
        "Opaque",
        &[("cert.pem", cert_pem), ("key.pem", key_pem)],
    )
}

/// A Secret of `type_` with `entries` (key, value) as its data.
pub fn secret_of_type(ns: &str, name: &str, type_: &str, entries: &[(&str, &[u8])]) -> Value {
    let data: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": type_,
        "metadata": {"name": name, "namespace": ns}, "data": data})
}

/// A self-signed certificate for `localhost`, as (certificate DER, certificate PEM, key PEM).
pub fn localhost_certificate() -> (rustls::pki_types::CertificateDer<'static>, Vec<u8>, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = c.cert.pem().into_bytes();
    (
        c.cert.der().clone(),
        pem,
        c.signing_key.serialize_pem().into_bytes(),
    )
}

/// The certificate the TLS listener at `https` serves to a client trusting `roots`.
pub async fn served_certificate(
    https: SocketAddr,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> rustls::pki_types::CertificateDer<'static> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Pods

/// Sample model pods of one deployment, on `127.<net>.0.1`, `127.<net>.0.2`, … all on one port
/// (as pods of a Deployment share their container port).
pub struct Pods {
    /// The pods, in address order.
    pub pods: Vec<SampleModel>,
    /// Their shared port.
    pub port: u16,
}

/// Starts `count` pods named `model` on `127.<net>.0.x:<port>`, with `port` free on all of them.
pub async fn pods(net: u8, count: u8, model: &str, port: u16) -> Pods {
    let mut started = Vec::new();
    for i in 1..=count {
        let address = SocketAddr::from(([127, net, 0, i], port));
        started.push(
            SampleModel::start(address, model)
                .await
                .unwrap_or_else(|e| panic!("sample pod on {address}: {e}")),
        );
    }
    Pods {
        pods: started,
        port,
    }
}

/// A port free on every loopback address the tests use (probed, then released), never one this
/// test process was handed before.
pub fn free_port() -> u16 {
    super::fresh_port(|port| {
        (1..=8u8).all(|net| {
            (1..=6u8).all(|i| {
                std::net::TcpListener::bind(SocketAddr::from(([127, net, 0, i], port))).is_ok()
            })
        })
    })
}

impl Pods {
    /// The pod IPs.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.pods.iter().map(|p| p.address().ip()).collect()
    }

    /// Every pod ready.
    pub fn all_ready(&self) -> Vec<PodState> {
        self.ips().into_iter().map(PodState::ready).collect()
    }

    /// Requests each pod has received.
    pub fn requests(&self) -> Vec<u64> {
        self.pods.iter().map(|p| p.stats().requests()).collect()
    }
}

/// `127.<net>.0.<i>`.
pub fn ip(net: u8, i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net, 0, i))
}

// ---------------------------------------------------------------------------------------------
// Scoring

/// POSTs a scoring request to `endpoint` through the router at `addr` with `key`, optionally
/// naming a deployment.
pub async fn score(
    client: &Client,
    addr: SocketAddr,
    endpoint: &str,
    key: &str,
    deployment: Option<&str>,
) -> Resp {
    let url = format!("http://{addr}/api/v1/endpoint/{endpoint}/score");
    let named = deployment.map(|d| ("azureml-model-deployment", d));
    post_score(client, &url, key, named.as_slice()).await
}

/// The router's Prometheus text.
pub async fn metrics_text(client: &Client, router: &Router) -> String {
    scrape(client, router.admin_addr()).await
}

/// `/readyz` status.
pub async fn readyz(client: &Client, router: &Router) -> StatusCode {
    let url = format!("http://{}/readyz", router.admin_addr());
    send(client, Method::GET, &url, &[], empty()).await.status
}

/// The routable pod addresses of each deployment of `endpoint` in the published table, sorted.
pub fn routable(router: &Router, endpoint: &str) -> Vec<(String, Vec<SocketAddr>)> {
    let table = router.table().snapshot();
    let Some(ep) = table.endpoint(endpoint) else {
        return Vec::new();
    };
    ep.deployments
        .iter()
        .map(|d| {
            let mut pods: Vec<SocketAddr> = d.pods.iter().map(|p| p.address()).collect();
            pods.sort();
            (d.name.to_string(), pods)
        })
        .collect()
}

/// Addresses of `ips` on `port`, sorted.
pub fn addrs(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Logs

/// The router's log lines, captured for one test: a subscriber set as the default of the test's
/// thread, so the test must run on a current-thread runtime (`#[tokio::test]`), where every task
/// the router spawns runs on that thread.
#[derive(Clone, Default)]
pub struct Logs {
    text: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Starts capturing info-level lines and above; capture ends when the guard is dropped.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        crypto();
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The lines that contain every one of `needles`.
    pub fn lines(&self, needles: &[&str]) -> Vec<String> {
        let text = self.text.lock().unwrap();
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .map(str::to_string)
            .collect()
    }
}

/// The requests `fake` received under `prefix` that match `what`, in `[from, to)`.
pub fn requests_between(
    fake: &FakeApiServer,
    prefix: &str,
    what: impl Fn(&scoregate_fake_kube::RecordedRequest) -> bool,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> usize {
    fake.requests_with_prefix(prefix)
        .iter()
        .filter(|r| what(r) && r.at >= from && r.at < to)
        .count()
}

/// Whether a recorded request is a LIST (a GET that is not a watch).
pub fn is_list(request: &scoregate_fake_kube::RecordedRequest) -> bool {
    request.method == "GET" && !request.is_watch()
}

/// An OnlineDeployment `ep-blue` (deployment `blue` of endpoint `my-ep`, Service `svc-blue` on
/// `port`) with `request_settings`, autoscaled by the router under `scale_settings` (`type`
/// `targetUtilization`, a decision a second and the apps/v1 Deployment `ep-blue` as the target
/// are filled in).
pub fn autoscaled_blue(port: u16, request_settings: Value, mut scale_settings: Value) -> Value {
    scale_settings["type"] = json!("targetUtilization");
    scale_settings["pollingInterval"] = json!(1);
    scale_settings["targetDeployment"] = json!("ep-blue");
    json!({
        "apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
        "metadata": {"name": "ep-blue", "namespace": NS},
        "spec": {"endpointName": "my-ep", "deploymentName": "blue", "serviceName": "svc-blue",
            "port": port, "requestSettings": request_settings, "scaleSettings": scale_settings},
    })
}

/// The apps/v1 Deployment `ep-blue` with `replicas`, all ready.
pub fn apps_deployment_blue(replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ep-blue", "namespace": NS},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "blue"}},
            "template": {"metadata": {"labels": {"app": "blue"}}, "spec": {"containers": []}}},
        "status": {"replicas": replicas, "readyReplicas": replicas},
    })
}

/// GETs of the Deployment `ep-blue` or its scale subresource (an autoscaler that takes the
/// replicas from its watch makes none).
pub fn reads_of_blue_deployment(fake: &FakeApiServer) -> Vec<scoregate_fake_kube::RecordedRequest> {
    fake.requests_with_prefix("/apis/apps/v1/namespaces/models/deployments/ep-blue")
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect()
}

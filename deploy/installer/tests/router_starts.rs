//! The rendered router configuration starts the real `scoregate` binary.
//!
//! The config YAML is taken from the rendered ConfigMap and the certificate from the rendered
//! Secret, and the binary is started as the Deployment starts it (`scoregate serve --config …`).
//! Its Kubernetes discovery runs as rendered (all namespaces, no kubeconfig in the config) against
//! the fake API server, which holds the rendered CRDs and one endpoint whose pod is a sample model
//! server; `KUBECONFIG` stands in for the pod's service account. Only what a pod gets from its
//! surroundings is substituted: listen addresses (free local ports instead of the pod's) and the
//! certificate paths (a directory laid out like the projected volume).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoregate::config::RouterConfig;
use scoregate_ext::render::Manifest;
use serde_json::json;

/// The `scoregate` binary of this workspace, built (or found fresh) by cargo.
fn router_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let target_dir = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "scoregate",
            "--bin",
            "scoregate",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the scoregate binary failed");
    profile_dir.join("scoregate")
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The namespace of the test endpoint.
const NS: &str = "models";
/// The test endpoint's primary key.
const KEY: &str = "primary-key-0123456789";

/// The cluster the router discovers: the fake API server with the rendered CRDs, endpoint `demo`
/// whose deployment `blue` is one sample model pod, and a kubeconfig pointing at it.
struct World {
    runtime: tokio::runtime::Runtime,
    server: Option<scoregate_fake_kube::FakeApiServer>,
    model: Option<scoregate::sample_model::SampleModel>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        let _guard = self.runtime.enter();
        self.model.take();
        self.server.take();
    }
}

fn world(manifest: &Manifest) -> World {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, model) = runtime.block_on(async {
        let server = scoregate_fake_kube::FakeApiServer::start().await.unwrap();
        let model = scoregate::sample_model::SampleModel::start_local("blue")
            .await
            .unwrap();
        (server, model)
    });
    for object in &manifest.objects {
        if object["kind"] == "CustomResourceDefinition" {
            server.apply(serde_json::to_value(object).unwrap()).unwrap();
        }
    }
    let port = model.address().port();
    let key = serde_json::to_value(k8s_openapi::ByteString(KEY.as_bytes().to_vec())).unwrap();
    for object in [
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "demo-keys", "namespace": NS}, "data": {"primaryKey": key}}),
        json!({"apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
            "metadata": {"name": "demo", "namespace": NS},
            "spec": {"authMode": "key", "keysSecretName": "demo-keys", "traffic": {"blue": 100}}}),
        json!({"apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
            "metadata": {"name": "blue", "namespace": NS},
            "spec": {"endpointName": "demo", "serviceName": "demo-blue", "port": port}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "demo-blue-x1", "namespace": NS,
                "labels": {"kubernetes.io/service-name": "demo-blue"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}),
    ] {
        server.apply(object).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig, NS).unwrap();
    World {
        runtime,
        server: Some(server),
        model: Some(model),
        kubeconfig,
        _dir: dir,
    }
}

struct Router {
    child: Child,
    admin: SocketAddr,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with the configuration and certificate `manifest` renders, discovering
/// `world`.
fn start(manifest: &Manifest, world: &World) -> Router {
    let dir = tempfile::tempdir().unwrap();
    let cm = manifest
        .find("ConfigMap", "azureml-fe-config")
        .expect("config rendered");
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let mut config = RouterConfig::from_yaml(text).expect("the router reads its rendered config");

    let (admin, http, https) = (free_port(), free_port(), free_port());
    config.listen.admin = admin;
    config.listen.http = http;
    config.listen.https = https;
    if let Some(tls) = config.tls.as_mut() {
        // Lay the rendered Secret out as the projected volume does (`tls/cert.pem`, `tls/key.pem`).
        let secret = manifest
            .find("Secret", "azureml-fe-tls")
            .expect("TLS Secret rendered");
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_yaml::from_value(secret.clone()).unwrap();
        let data = secret.data.unwrap();
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        for key in ["cert.pem", "key.pem"] {
            std::fs::write(dir.path().join("tls").join(key), &data[key].0).unwrap();
        }
        tls.cert_file = Some(dir.path().join("tls/cert.pem"));
        tls.key_file = Some(dir.path().join("tls/key.pem"));
    }
    if let Some(cluster) = config.cluster.as_mut() {
        // HA: the replicas' credential as `scoregate-ext` creates it, at the projected path's
        // place; the internal port on loopback (the pod would advertise $POD_IP).
        let service = cluster
            .peer_service
            .as_ref()
            .expect("replicas find each other by Service");
        assert!(
            manifest.find("Service", &service.name).is_some(),
            "the peer Service is rendered"
        );
        let secret = dir.path().join("cluster-secret");
        std::fs::write(
            &secret,
            scoregate::cluster::credential::Credential::generate().unwrap(),
        )
        .unwrap();
        cluster.secret_file = Some(secret);
        cluster.listen = free_port();
    }
    let kube = config
        .discovery
        .kube
        .as_ref()
        .expect("Kubernetes discovery is rendered");
    assert!(
        kube.namespaces.is_empty() && kube.kubeconfig.is_none(),
        "all namespaces, in-cluster"
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();

    // The Deployment's command and args, with the config path moved.
    let deployment = manifest.find("Deployment", "azureml-fe-v2").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0].as_str(), Some("scoregate"));
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args, ["serve", "--config", "/etc/scoregate/config.yaml"]);
    let child = Command::new(router_binary())
        .args(&args[..2])
        .arg(&path)
        .env("KUBECONFIG", &world.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the router starts");
    Router {
        child,
        admin,
        http: config.allow_insecure_connections.then_some(http),
        https: config.tls.is_some().then_some(https),
        _dir: dir,
    }
}

/// One HTTP/1.1 request over `stream` (a POST when `body` is given, with the endpoint key); the
/// status code.
fn status_over(
    mut stream: impl Read + Write,
    path: &str,
    host: &str,
    body: Option<&str>,
) -> std::io::Result<u16> {
    match body {
        None => write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?,
        Some(body) => write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?,
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    status_over(TcpStream::connect(addr)?, path, "localhost", None)
}

/// A scoring request to endpoint `demo` over plain HTTP.
fn score(addr: SocketAddr) -> std::io::Result<u16> {
    status_over(
        TcpStream::connect(addr)?,
        "/api/v1/endpoint/demo/score",
        "localhost",
        Some(r#"{"data": [1, 2, 3]}"#),
    )
}

/// Polls `/readyz` until it answers 200 (the router loaded its table), or gives up.
fn wait_ready(router: &mut Router) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(exit) = router.child.try_wait().unwrap() {
            panic!("the router exited with {exit} before it was ready");
        }
        if get(router.admin, "/readyz").ok() == Some(200) {
            return;
        }
        assert!(Instant::now() < deadline, "the router never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, as the kubelet sends after `preStop`; the router must exit cleanly.
fn terminate(mut router: Router) {
    let status = Command::new("kill")
        .args(["-TERM", &router.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = router.child.wait().unwrap();
    assert!(exit.success(), "graceful exit, got {exit}");
}

fn scenario(name: &str) -> Manifest {
    let s = support::scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap();
    support::render(&s)
}

#[test]
fn the_http_scenario_config_starts_the_router_and_it_routes() {
    let manifest = scenario("aks-proof-of-concept");
    let world = world(&manifest);
    let mut router = start(&manifest, &world);
    wait_ready(&mut router);
    assert_eq!(get(router.admin, "/healthz").unwrap(), 200);
    let http = router.http.expect("plain HTTP is allowed");
    assert_eq!(get(http, "/api/v1/endpoint/unknown/score").unwrap(), 404);
    // The endpoint it discovered answers through the router.
    let mut status = score(http).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        status = score(http).unwrap();
    }
    assert_eq!(
        status, 200,
        "a scoring request reaches the discovered model pod"
    );
    assert!(router.https.is_none());
    terminate(router);
}

#[test]
fn the_https_scenario_config_serves_the_rendered_certificate() {
    let manifest = scenario("aks-production-https");
    let world = world(&manifest);
    let mut router = start(&manifest, &world);
    wait_ready(&mut router);
    assert!(router.http.is_none(), "HTTPS only");

    // Trust the rendered certificate and speak TLS to `sslCname`.
    let pem = std::fs::read(support::fixture("cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let https = router.https.expect("HTTPS is on");
    let over_tls = |body: Option<&str>| {
        let name = rustls::pki_types::ServerName::try_from("ml.contoso.com").unwrap();
        let connection = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let tls = rustls::StreamOwned::new(connection, TcpStream::connect(https).unwrap());
        status_over(tls, "/api/v1/endpoint/demo/score", "ml.contoso.com", body).unwrap()
    };
    let mut status = over_tls(Some("{}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while status != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        status = over_tls(Some("{}"));
    }
    assert_eq!(
        status, 200,
        "scoring over HTTPS with the rendered certificate"
    );
    assert_eq!(over_tls(None), 401, "no key, no answer");
    terminate(router);
}

#[test]
fn the_pre_stop_command_rendered_for_kubernetes_1_29_runs_in_the_router_binary() {
    let s = support::scenarios()
        .into_iter()
        .find(|s| s.name == "aks-proof-of-concept")
        .unwrap();
    let manifest = support::render_for(&s, 29);
    let deployment = manifest.find("Deployment", "azureml-fe-v2").unwrap();
    let command: Vec<String> = serde_yaml::from_value(
        deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]
            ["command"]
            .clone(),
    )
    .unwrap();
    assert_eq!(
        command[0], "scoregate",
        "the image's entrypoint, on its PATH"
    );
    let status = Command::new(router_binary())
        .args(&command[1..])
        .status()
        .unwrap();
    assert!(status.success(), "{command:?} exits 0 after its sleep");
    // A malformed duration is refused, not slept on.
    let status = Command::new(router_binary())
        .args(["sleep", "five"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
}

//! The rendered router configuration starts the real `scoregate` binary.
//!
//! The config YAML is taken from the rendered ConfigMap and the certificate from the rendered
//! Secret, and the binary is started as the Deployment starts it (`scoregate serve --config …`).
//! Only what a pod gets from its surroundings is substituted: listen addresses (free local ports
//! instead of the pod's), the certificate paths (a directory laid out like the projected volume)
//! and the route source (see [`route_source`]).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoregate::config::RouterConfig;
use scoregate_ext::render::Manifest;

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

/// A routes file with one endpoint and no ready pods: the router becomes ready on it (a table is
/// loaded) and answers 404 for other endpoints.
fn route_source(dir: &Path, config: &mut RouterConfig) {
    // Kubernetes discovery (what the rendered config asks for) is not in the router yet; until it
    // is, the rendered `discovery.kube` is swapped for the file source.
    assert!(
        config.discovery.kube.is_some(),
        "the rendered config uses Kubernetes discovery"
    );
    let routes = dir.join("routes.yaml");
    std::fs::write(
        &routes,
        "endpoints:\n  - name: demo\n    auth_mode: key\n    keys: { primary: \"p\", secondary: \"s\" }\n    traffic: { blue: 100 }\ndeployments:\n  - name: blue\n    endpoint: demo\n    pods: []\n",
    )
    .unwrap();
    config.discovery.kube = None;
    config.discovery.routes_file = Some(routes);
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

/// Starts the binary with the configuration and certificate `manifest` renders.
fn start(manifest: &Manifest) -> Router {
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
    route_source(dir.path(), &mut config);
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

/// One HTTP/1.1 request over `stream`; the status code.
fn status_over(mut stream: impl Read + Write, path: &str, host: &str) -> std::io::Result<u16> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    status_over(TcpStream::connect(addr)?, path, "localhost")
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
fn the_http_scenario_config_starts_the_router() {
    let mut router = start(&scenario("aks-proof-of-concept"));
    wait_ready(&mut router);
    assert_eq!(get(router.admin, "/healthz").unwrap(), 200);
    let http = router.http.expect("plain HTTP is allowed");
    assert_eq!(get(http, "/api/v1/endpoint/unknown/score").unwrap(), 404);
    assert!(router.https.is_none());
    terminate(router);
}

#[test]
fn the_https_scenario_config_serves_the_rendered_certificate() {
    let manifest = scenario("aks-production-https");
    let mut router = start(&manifest);
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
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("ml.contoso.com").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
    let tcp = TcpStream::connect(router.https.expect("HTTPS is on")).unwrap();
    let tls = rustls::StreamOwned::new(connection, tcp);
    assert_eq!(
        status_over(tls, "/api/v1/endpoint/unknown/score", "ml.contoso.com").unwrap(),
        404
    );
    terminate(router);
}

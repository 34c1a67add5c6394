//! TLS termination (issue 3): handshakes, ALPN, the chain served, key formats, startup
//! refusals, expiry, SNI, minimum version, and certificate reload under load.
//!
//! Certificates are generated at test time (rcgen; openssl for the PKCS#1, SEC1 and encrypted
//! key formats). Clients are rustls + hyper over real sockets on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use scoregate::config::{TlsConfig, TlsVersion};
use scoregate::sample_model::SampleModel;
use support::{guard, simple_routes, Harness, KEY};

/// Request settings that never queue in these tests.
const ROOMY: &str = "max_concurrent_requests_per_instance: 64, max_queue_length: 64";

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A CA, an intermediate signed by it, and a leaf for `names` signed by the intermediate.
struct Pki {
    root_der: CertificateDer<'static>,
    chain_pem: String,
    key_pem: String,
    leaf_der: CertificateDer<'static>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    params
}

fn pki(names: &[&str]) -> Pki {
    let root =
        CertifiedIssuer::self_signed(ca_params("test root"), KeyPair::generate().unwrap()).unwrap();
    let intermediate = CertifiedIssuer::signed_by(
        ca_params("test intermediate"),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &intermediate)
        .unwrap();
    Pki {
        root_der: root.der().clone(),
        chain_pem: format!("{}{}", leaf.pem(), intermediate.pem()),
        key_pem: leaf_key.serialize_pem(),
        leaf_der: leaf.der().clone(),
    }
}

fn client_config(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Accepts any certificate (for the expired-certificate test only).
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// One POST to the demo endpoint's score over an established TLS stream; returns the status
/// and the HTTP version the response came in.
async fn score_over(stream: TlsStream<TcpStream>) -> (StatusCode, http::Version) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = |version| {
        Request::post("https://ml.example.com/api/v1/endpoint/secure/score")
            .version(version)
            .header("authorization", format!("Bearer {KEY}"))
            .header("host", "ml.example.com")
            .body(http_body_util::Full::new(Bytes::from_static(
                b"{\"data\": 1}",
            )))
            .unwrap()
    };
    if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = request(http::Version::HTTP_2);
        req.headers_mut().remove("host");
        let response = sender.send_request(req).await.unwrap();
        let version = response.version();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        (status, version)
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender
            .send_request(request(http::Version::HTTP_11))
            .await
            .unwrap();
        let version = response.version();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        (status, version)
    }
}

struct TlsRouter {
    harness: Harness,
    https: SocketAddr,
    _pod: SampleModel,
    dir: tempfile::TempDir,
}

impl TlsRouter {
    fn cert_file(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }
    fn key_file(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// A router serving HTTPS with `chain_pem`/`key_pem` written as files in a fresh directory.
async fn tls_router(
    chain_pem: &str,
    key_pem: &str,
    tweak: impl FnOnce(&mut TlsConfig),
) -> TlsRouter {
    install_provider();
    let pod = SampleModel::start_local("blue").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, chain_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let mut tls = TlsConfig::from_files(cert, key);
    tweak(&mut tls);
    // Enough slots for the load loops: these tests are about TLS, not admission.
    let harness = Harness::start_with(&simple_routes("secure", &[pod.address()], ROOMY), |c| {
        c.tls = Some(tls);
        c.listen.https = SocketAddr::from(([127, 0, 0, 1], 0));
    })
    .await;
    let https = harness.router.as_ref().unwrap().https_addr().unwrap();
    TlsRouter {
        harness,
        https,
        _pod: pod,
        dir,
    }
}

#[tokio::test]
async fn tls12_and_tls13_handshakes_alpn_and_the_served_chain() {
    let pki = pki(&["ml.example.com"]);
    let r = tls_router(&pki.chain_pem, &pki.key_pem, |_| {}).await;
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        for (alpn, http) in [
            (&b"h2"[..], http::Version::HTTP_2),
            (&b"http/1.1"[..], http::Version::HTTP_11),
        ] {
            // The client trusts only the root: the handshake works only if the intermediate is served.
            let config = client_config(&[&pki.root_der], &[version], &[alpn]);
            let stream = guard("handshake", connect(r.https, "ml.example.com", config))
                .await
                .unwrap();
            let (_, session) = stream.get_ref();
            assert_eq!(session.protocol_version(), Some(expected));
            assert_eq!(session.alpn_protocol(), Some(alpn));
            let chain = session.peer_certificates().unwrap();
            assert_eq!(chain.len(), 2, "leaf and intermediate are served");
            assert_eq!(chain[0], pki.leaf_der);
            let (status, got) = guard("score over TLS", score_over(stream)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(got, http);
        }
    }
}

#[tokio::test]
async fn minimum_version_13_refuses_tls12_clients() {
    let pki = pki(&["ml.example.com"]);
    let r = tls_router(&pki.chain_pem, &pki.key_pem, |t| {
        t.min_version = TlsVersion::V1_3
    })
    .await;
    let tls12 = client_config(&[&pki.root_der], &[&rustls::version::TLS12], &[b"http/1.1"]);
    assert!(guard("tls12", connect(r.https, "ml.example.com", tls12))
        .await
        .is_err());
    let tls13 = client_config(&[&pki.root_der], &[&rustls::version::TLS13], &[b"http/1.1"]);
    assert!(guard("tls13", connect(r.https, "ml.example.com", tls13))
        .await
        .is_ok());
}

#[tokio::test]
async fn other_server_names_are_served_and_counted() {
    let pki = pki(&["ml.example.com", "127.0.0.1", "other.example.com"]);
    let r = tls_router(&pki.chain_pem, &pki.key_pem, |t| {
        t.server_name = Some("ml.example.com".into())
    })
    .await;
    let config = client_config(&[&pki.root_der], &[&rustls::version::TLS13], &[b"http/1.1"]);
    for name in ["127.0.0.1", "other.example.com"] {
        let stream = guard("handshake", connect(r.https, name, config.clone()))
            .await
            .unwrap();
        assert_eq!(guard("score", score_over(stream)).await.0, StatusCode::OK);
    }
    let stream = guard("handshake", connect(r.https, "ml.example.com", config))
        .await
        .unwrap();
    assert_eq!(guard("score", score_over(stream)).await.0, StatusCode::OK);
    assert_eq!(
        r.harness
            .metric_or_zero("scoregate_tls_sni_mismatches_total", &[])
            .await,
        2.0
    );
}

#[tokio::test]
async fn an_expired_certificate_is_served_with_a_negative_days_left_metric() {
    install_provider();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["ml.example.com".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let r = tls_router(&cert.pem(), &key.serialize_pem(), |_| {}).await;
    let mut config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = guard(
        "handshake",
        connect(r.https, "ml.example.com", Arc::new(config)),
    )
    .await
    .unwrap();
    assert_eq!(guard("score", score_over(stream)).await.0, StatusCode::OK);
    let days = r
        .harness
        .metric("scoregate_tls_certificate_expiry_days", &[])
        .await
        .expect("the days-left gauge is exported");
    assert!(days < -1000.0, "days left {days}");
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate for `key` signed by a throwaway openssl CA (so the key format is openssl's
/// and the leaf is an end-entity certificate); returns (leaf PEM, CA certificate).
fn openssl_leaf(dir: &Path, key: &str) -> (String, CertificateDer<'static>) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let ca_key = p(&format!("{key}.ca.key"));
    let ca_crt = p(&format!("{key}.ca.crt"));
    let csr = p(&format!("{key}.csr"));
    let leaf = p(&format!("{key}.crt"));
    let ext = p(&format!("{key}.ext"));
    std::fs::write(&ext, "subjectAltName=DNS:ml.example.com\n").unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &ca_key,
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &ca_key,
        "-subj",
        "/CN=test ca",
        "-days",
        "2",
        "-out",
        &ca_crt,
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        &p(key),
        "-subj",
        "/CN=ml.example.com",
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &leaf,
    ]);
    let ca = std::fs::read(&ca_crt).unwrap();
    let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(&ca).unwrap();
    (std::fs::read_to_string(&leaf).unwrap(), ca_der)
}

#[tokio::test]
async fn rsa_and_ecdsa_keys_in_pkcs1_pkcs8_and_sec1_are_served() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &d("rsa-pkcs8.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &d("rsa-pkcs8.pem"),
        "-traditional",
        "-out",
        &d("rsa-pkcs1.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &d("ec-pkcs8.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &d("ec-pkcs8.pem"),
        "-traditional",
        "-out",
        &d("ec-sec1.pem"),
    ]);
    for (file, label) in [
        ("rsa-pkcs1.pem", "BEGIN RSA PRIVATE KEY"),
        ("rsa-pkcs8.pem", "BEGIN PRIVATE KEY"),
        ("ec-sec1.pem", "BEGIN EC PRIVATE KEY"),
        ("ec-pkcs8.pem", "BEGIN PRIVATE KEY"),
    ] {
        let key = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(key.contains(label), "{file} is in the intended format");
        let (cert, ca) = openssl_leaf(dir.path(), file);
        let r = tls_router(&cert, &key, |_| {}).await;
        let config = client_config(
            &[&ca],
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            &[b"http/1.1"],
        );
        let stream = guard("handshake", connect(r.https, "ml.example.com", config))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            guard("score", score_over(stream)).await.0,
            StatusCode::OK,
            "{file}"
        );
    }
}

/// Runs `scoregate serve` with TLS files and expects it to refuse to start; runs `scoregate
/// check` with the same arguments and expects the same refusal. Returns serve's message.
fn refused_startup(cert: &Path, key: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        simple_routes("secure", &["127.0.0.1:9".parse().unwrap()], ""),
    )
    .unwrap();
    let run = |command: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
            .args([command, "--routes"])
            .arg(&routes)
            .args([
                "--tls-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--tls-cert",
            ])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command} must refuse");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let served = run("serve");
    let checked = run("check");
    let last = |text: &str| text.trim().lines().last().unwrap_or("").to_string();
    assert_eq!(last(&served), last(&checked), "check agrees with serve");
    served
}

#[test]
fn check_agrees_with_serve_on_listeners_and_good_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        simple_routes("secure", &["127.0.0.1:9".parse().unwrap()], ""),
    )
    .unwrap();
    let check = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_scoregate"))
            .args(["check", "--routes"])
            .arg(&routes)
            .args(extra)
            .output()
            .unwrap()
    };
    let no_listener = check(&[]);
    assert!(!no_listener.status.success());
    let text = String::from_utf8_lossy(&no_listener.stderr);
    assert!(text.contains("no listener to serve"), "{text}");
    let plain = check(&["--allow-insecure-connections"]);
    assert!(plain.status.success(), "{plain:?}");
    let a = pki(&["a.example.com"]);
    std::fs::write(dir.path().join("cert.pem"), &a.chain_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &a.key_pem).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let tls = check(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&tls.stdout);
    assert!(tls.status.success(), "{tls:?}");
    assert!(
        text.contains("certificate") && text.contains("a.example.com"),
        "{text}"
    );
}

#[tokio::test]
async fn plain_http_to_the_https_port_gets_400_like_nginx() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = pki(&["ml.example.com"]);
    let r = tls_router(&pki.chain_pem, &pki.key_pem, |_| {}).await;
    let mut tcp = TcpStream::connect(r.https).await.unwrap();
    tcp.write_all(b"GET /api/v1/endpoint/secure/score HTTP/1.1\r\nHost: ml.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    guard("the plain answer", tcp.read_to_end(&mut answer))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("PlainHttpToHttpsPort"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // TLS still works on the same port.
    let config = client_config(&[&pki.root_der], &[&rustls::version::TLS13], &[b"http/1.1"]);
    let stream = guard("handshake", connect(r.https, "ml.example.com", config))
        .await
        .unwrap();
    assert_eq!(guard("score", score_over(stream)).await.0, StatusCode::OK);
}

#[test]
fn startup_refuses_bad_pairs_saying_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    let a = pki(&["a.example.com"]);
    let b = pki(&["b.example.com"]);
    std::fs::write(path("cert.pem"), &a.chain_pem).unwrap();
    std::fs::write(path("key.pem"), &a.key_pem).unwrap();
    std::fs::write(path("other-key.pem"), &b.key_pem).unwrap();
    std::fs::write(path("not-a-cert.pem"), "hello\n").unwrap();
    openssl(&[
        "pkey",
        "-in",
        path("key.pem").to_str().unwrap(),
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        path("encrypted.pem").to_str().unwrap(),
    ]);

    let missing = refused_startup(&path("missing.pem"), &path("key.pem"));
    assert!(
        missing.contains("missing.pem") && missing.contains("cannot read the certificate"),
        "{missing}"
    );
    let no_cert = refused_startup(&path("not-a-cert.pem"), &path("key.pem"));
    assert!(
        no_cert.contains("no certificate found") && no_cert.contains("BEGIN CERTIFICATE"),
        "{no_cert}"
    );
    let mismatch = refused_startup(&path("cert.pem"), &path("other-key.pem"));
    assert!(
        mismatch.contains("does not match the certificate"),
        "{mismatch}"
    );
    let encrypted = refused_startup(&path("cert.pem"), &path("encrypted.pem"));
    assert!(
        encrypted.contains("encrypted with a passphrase") && encrypted.contains("openssl pkey"),
        "{encrypted}"
    );
}

/// Writes `content` to `path` atomically (temp file + rename), as editors and tools do.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Swaps the Kubernetes Secret-volume way: files are symlinks into `..data`, itself a symlink to
/// a timestamped directory that is replaced by renaming a new symlink over it.
fn kubernetes_swap(dir: &Path, generation: u32, cert: &str, key: &str) {
    let versioned = dir.join(format!("..2026_{generation}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("cert.pem"), cert).unwrap();
    std::fs::write(versioned.join("key.pem"), key).unwrap();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp_link).unwrap();
    std::fs::rename(&tmp_link, dir.join("..data")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        if std::fs::symlink_metadata(dir.join(f)).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(f), dir.join(f)).unwrap();
        }
    }
}

/// Leaf certificate a new connection sees.
async fn served_leaf(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
) -> CertificateDer<'static> {
    let config = client_config(roots, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let stream = guard("handshake", connect(addr, "ml.example.com", config))
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Opens new TLS connections in a loop until stopped; returns (requests that succeeded, what
/// went wrong with the others).
fn load(
    addr: SocketAddr,
    roots: Vec<CertificateDer<'static>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let done = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (roots, stop, done, failures) =
                (roots.clone(), stop.clone(), done.clone(), failures.clone());
            workers.push(tokio::spawn(async move {
                let refs: Vec<&CertificateDer<'static>> = roots.iter().collect();
                let config = client_config(&refs, &[&rustls::version::TLS13], &[b"http/1.1"]);
                while !stop.load(Ordering::Relaxed) {
                    match connect(addr, "ml.example.com", config.clone()).await {
                        Ok(stream) => match score_over(stream).await.0 {
                            StatusCode::OK => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            status => failures.lock().push(format!("status {status}")),
                        },
                        Err(e) => failures.lock().push(format!("handshake: {e}")),
                    }
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let failures = failures.lock().clone();
        (done.load(Ordering::Relaxed), failures)
    })
}

async fn wait_for_leaf(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
    leaf: &CertificateDer<'static>,
) {
    guard("the new certificate to be served", async {
        while served_leaf(addr, roots).await != *leaf {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_under_load_without_a_failed_request() {
    let first = pki(&["ml.example.com"]);
    let second = pki(&["ml.example.com"]);
    let third = pki(&["ml.example.com"]);
    let r = tls_router(&first.chain_pem, &first.key_pem, |_| {}).await;
    let roots = vec![
        first.root_der.clone(),
        second.root_der.clone(),
        third.root_der.clone(),
    ];
    let root_refs: Vec<&CertificateDer<'static>> = roots.iter().collect();

    // A keep-alive connection made with the first certificate, used again after every swap.
    let config = client_config(&root_refs, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let old = guard("old connection", connect(r.https, "ml.example.com", config))
        .await
        .unwrap();
    assert_eq!(
        old.get_ref().1.peer_certificates().unwrap()[0],
        first.leaf_der
    );
    let (mut old_sender, old_conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(old_conn);
    let mut old_request = || {
        let request = Request::get("/api/v1/endpoint/secure/swagger.json")
            .header("host", "ml.example.com")
            .header("authorization", format!("Bearer {KEY}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        old_sender.send_request(request)
    };
    assert_eq!(old_request().await.unwrap().status(), StatusCode::OK);

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(r.https, roots.clone(), stop.clone());

    // Atomic rename of both files.
    replace_file(&r.key_file(), &second.key_pem);
    replace_file(&r.cert_file(), &second.chain_pem);
    wait_for_leaf(r.https, &root_refs, &second.leaf_der).await;
    assert_eq!(
        old_request().await.unwrap().status(),
        StatusCode::OK,
        "the old connection keeps working"
    );

    // A broken pair is refused and the second certificate stays.
    replace_file(&r.key_file(), &first.key_pem);
    guard("the refusal to be counted", async {
        while r
            .harness
            .metric_or_zero(
                "scoregate_tls_certificate_reloads_total",
                &[("result", "refused")],
            )
            .await
            < 1.0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(served_leaf(r.https, &root_refs).await, second.leaf_der);
    replace_file(&r.key_file(), &second.key_pem);

    stop.store(true, Ordering::Relaxed);
    let (done, failures) = guard("load", running).await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the reloads: {failures:?}",
        failures.len(),
        done + failures.len() as u64
    );
    assert!(done > 0);
    assert_eq!(old_request().await.unwrap().status(), StatusCode::OK);

    // The Kubernetes Secret-volume swap, on a router whose files are symlinks from the start.
    let dir = tempfile::tempdir().unwrap();
    kubernetes_swap(dir.path(), 1, &second.chain_pem, &second.key_pem);
    let pod = SampleModel::start_local("blue").await.unwrap();
    let tls = TlsConfig::from_files(dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let k8s = Harness::start_with(&simple_routes("secure", &[pod.address()], ROOMY), |c| {
        c.tls = Some(tls);
        c.listen.https = SocketAddr::from(([127, 0, 0, 1], 0));
    })
    .await;
    let https = k8s.router.as_ref().unwrap().https_addr().unwrap();
    assert_eq!(served_leaf(https, &root_refs).await, second.leaf_der);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(https, roots.clone(), stop.clone());
    kubernetes_swap(dir.path(), 2, &third.chain_pem, &third.key_pem);
    wait_for_leaf(https, &root_refs, &third.leaf_der).await;
    stop.store(true, Ordering::Relaxed);
    let (done, failures) = guard("load", running).await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the Secret-volume swap: {failures:?}",
        failures.len(),
        done + failures.len() as u64
    );
}

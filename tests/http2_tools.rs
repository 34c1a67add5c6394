//! HTTP/2 with real third-party clients (issue 3): `curl --http2` over TLS, `curl
//! --http2-prior-knowledge` over plain TCP, and `h2load` (Debian nghttp2-client) for both.
//! `.ci/run` installs curl and nghttp2-client; a missing tool fails the test with that advice.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use scoregate::config::TlsConfig;
use scoregate::sample_model::SampleModel;
use support::{simple_routes, Harness, KEY};

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "`{name}` is not installed: run .ci/run, or `apt-get install -y curl nghttp2-client`"
    );
    Command::new(name)
}

async fn tls_router() -> (Harness, SocketAddr, SampleModel, tempfile::TempDir) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pod = SampleModel::start_local("blue").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let tls = TlsConfig::from_files(dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let harness = Harness::start_with(
        &simple_routes(
            "ep-one",
            &[pod.address()],
            "max_concurrent_requests_per_instance: 64, max_queue_length: 64",
        ),
        |c| {
            c.tls = Some(tls);
            c.listen.https = SocketAddr::from(([127, 0, 0, 1], 0));
        },
    )
    .await;
    let https = harness.router.as_ref().unwrap().https_addr().unwrap();
    (harness, https, pod, dir)
}

/// Runs a blocking command off the runtime (the router serves on the runtime meanwhile).
async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_over_tls_and_prior_knowledge() {
    let (harness, https, _pod, dir) = tls_router().await;
    let auth = format!("Authorization: Bearer {KEY}");
    let mut over_tls = tool("curl");
    over_tls
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--http2",
            "--cacert",
        ])
        .arg(dir.path().join("cert.pem"))
        .args(["-H", &auth, "-d", "{}"])
        .arg(format!("https://{https}/api/v1/endpoint/ep-one/score"));
    let out = run(over_tls).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut prior = tool("curl");
    prior
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--http2-prior-knowledge",
        ])
        .args(["-H", &auth, "-d", "{}"])
        .arg(format!(
            "http://{}/api/v1/endpoint/ep-one/score",
            harness.http
        ));
    let out = run(prior).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `h2load`'s summary line: `requests: N total, N started, N done, N succeeded, N failed, ...`.
fn h2load_counts(output: &str) -> (u64, u64) {
    let line = output
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no summary in h2load output:\n{output}"));
    let count = |word: &str| -> u64 {
        line.split(',')
            .find(|part| part.trim().ends_with(word))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{word}` in {line:?}"))
    };
    (count("succeeded"), count("failed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_gets_only_successes() {
    let (harness, https, _pod, _dir) = tls_router().await;
    let auth = format!("authorization: Bearer {KEY}");
    for url in [
        format!("http://{}/api/v1/endpoint/ep-one/score", harness.http),
        format!("https://{https}/api/v1/endpoint/ep-one/score"),
    ] {
        let mut h2load = tool("h2load");
        h2load
            .args(["-n", "2000", "-c", "8", "-m", "8", "-H", &auth])
            .arg(&url);
        let out = run(h2load).await;
        let text = String::from_utf8_lossy(&out.stdout);
        let (succeeded, failed) = h2load_counts(&text);
        assert_eq!((succeeded, failed), (2000, 0), "{url}:\n{text}");
        assert!(text.contains("status codes: 2000 2xx"), "{url}:\n{text}");
    }
}

//! The embedded default and the command line: the demo's printed `curl` commands do what they
//! say, and `scoregate check`, `routes` and `token` behave, run as the real binary.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::Method;
use scoregate::demo::{Demo, DemoOptions};
use scoregate::sample_model::SampleModel;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_scoregate");

async fn sh(command: &str) -> Output {
    guard(
        command,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
}

async fn scoregate(args: &[&str]) -> Output {
    guard(
        &format!("scoregate {args:?}"),
        tokio::process::Command::new(BIN)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The status code of `curl -i` output.
fn curl_status(text: &str) -> u16 {
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

async fn start_demo() -> Demo {
    Demo::start(&DemoOptions {
        port: 0,
        admin_port: 0,
    })
    .await
    .unwrap()
}

/// The command lines the demo prints (lines that start with `curl`), in order.
fn printed_commands(demo: &Demo) -> Vec<String> {
    demo.instructions()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_first_curl_returns_a_score() {
    let demo = start_demo().await;
    let text = demo.instructions();
    assert!(text.contains(&demo.scoring_uri()), "{text}");
    assert!(text.contains(&demo.key), "{text}");
    let first = printed_commands(&demo)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no curl printed:\n{text}"));
    for _ in 0..5 {
        let out = sh(&first).await;
        assert!(out.status.success(), "{first}: {}", stderr(&out));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{first} printed no JSON ({e}): {}", stdout(&out)));
        let model = body["model"].as_str().unwrap();
        assert!(model == "blue" || model == "green", "{body}");
        assert_eq!(body["input"], serde_json::json!({"data": [[1, 2, 3, 4]]}));
        assert!(body["result"].is_array(), "a score: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_other_commands_do_what_their_comments_say() {
    let demo = start_demo().await;
    let commands = printed_commands(&demo);
    let find = |needle: &str| {
        commands
            .iter()
            .find(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no printed command with {needle:?}: {commands:#?}"))
            .clone()
    };

    let green = sh(&find("azureml-model-deployment: green")).await;
    let body: serde_json::Value = serde_json::from_slice(&green.stdout).unwrap();
    assert_eq!(body["model"], "green");

    let failing = stdout(&sh(&find("fail=1")).await);
    assert_eq!(curl_status(&failing), 500, "{failing}");
    assert!(
        failing
            .to_ascii_lowercase()
            .contains("x-ms-run-function-failed: true"),
        "{failing}"
    );

    let reset = stdout(&sh(&find("reset=1")).await);
    assert_eq!(curl_status(&reset), 502, "{reset}");
    assert!(reset.contains("UpstreamFailed"), "{reset}");

    let no_key = commands
        .iter()
        .find(|c| !c.contains("Authorization"))
        .expect("a command without a key");
    let no_key = stdout(&sh(no_key).await);
    assert_eq!(curl_status(&no_key), 401, "{no_key}");
    assert!(
        no_key
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{no_key}"
    );

    let slow = stdout(&sh(&find("sleep_ms=")).await);
    assert_eq!(curl_status(&slow), 504, "{slow}");
    assert!(slow.contains("UpstreamTimeout"), "{slow}");
}

/// A taken port: the demo's error names its own flags, not `serve`'s.
#[tokio::test]
async fn the_demo_names_its_own_flag_for_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = free.local_addr().unwrap().port().to_string();
    drop(free);
    let out = scoregate(&["demo", "--port", &port, "--admin-port", &admin]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--port") && err.contains(&port), "{err}");
    assert!(!err.contains("--listen"), "{err}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn good_routes() -> String {
    routes(
        &[
            endpoint("ep-one", &["traffic: { blue: 90, green: 10 }"]),
            endpoint_with_auth(
                "ep-token",
                "aml_token",
                "token-signing-key-0123456789",
                &["traffic: { blue: 100 }"],
            ),
        ],
        &[
            deployment(
                "blue",
                "ep-one",
                &["10.0.0.5:5001".parse().unwrap()],
                "request_timeout_ms: 3000",
            ),
            "  - name: green\n    endpoint: ep-one\n    pods: [\"10.0.0.6\", { address: \"10.0.0.7:5001\", ready: false }, { address: \"10.0.0.8:5001\", terminating: true }]\n".into(),
            deployment("blue", "ep-token", &["10.0.0.9:5001".parse().unwrap()], ""),
        ],
    )
}

/// `scoregate check --routes F`, exactly as an operator would type it: the file is checked and
/// said good, and, as `serve` would, check refuses a setup with no listener to serve on.
#[tokio::test]
async fn check_with_only_a_routes_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yaml", &good_routes());
    let out = scoregate(&["check", "--routes", &good]).await;
    assert!(!out.status.success(), "serve would refuse: no listener");
    assert!(stdout(&out).contains("good.yaml: ok"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no listener to serve"),
        "{}",
        stderr(&out)
    );
    let out = scoregate(&["check", "--routes", &good, "--allow-insecure-connections"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let bad = write(
        dir.path(),
        "bad.yaml",
        &good_routes().replace("green: 10", "green: 5"),
    );
    let out = scoregate(&["check", "--routes", &bad]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("weights sum to 95"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn check_accepts_a_good_routes_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "routes.yaml", &good_routes());
    let out = scoregate(&["check", "--routes", &good, "--allow-insecure-connections"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&good), "names the file: {text}");
    assert!(text.contains("ok"), "{text}");
    assert!(text.contains("2 endpoints, 3 deployments"), "{text}");
}

#[tokio::test]
async fn check_names_the_file_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown-field.yaml",
            good_routes().replace("request_timeout_ms: 3000", "request_timeout: 3000"),
            // the path of the field, and the real field names to use instead
            vec![
                "deployments[0].request_settings.request_timeout",
                "request_timeout_ms",
                "max_queue_wait_ms",
                "max_concurrent_requests_per_instance",
            ],
        ),
        (
            "unknown-top.yaml",
            good_routes().replace("deployments:", "deployment:"),
            vec!["deployment", "endpoints", "deployments"],
        ),
        (
            "weights.yaml",
            good_routes().replace("green: 10", "green: 5"),
            vec!["endpoints[ep-one].traffic", "weights sum to 95", "0", "100"],
        ),
        (
            "mirror.yaml",
            good_routes().replace(
                "traffic: { blue: 90, green: 10 }",
                "traffic: { blue: 100 }\n    mirror_traffic: { green: 70 }",
            ),
            vec!["endpoints[ep-one].mirror_traffic", "70", "50"],
        ),
    ];
    for (name, text, wanted) in cases {
        let path = write(dir.path(), name, &text);
        let out = scoregate(&["check", "--routes", &path, "--allow-insecure-connections"]).await;
        assert!(!out.status.success(), "{name} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains(&path),
            "{name}: the message names the file: {err}"
        );
        for w in wanted {
            assert!(err.contains(w), "{name}: {w:?} missing from: {err}");
        }
        assert!(
            stdout(&out).is_empty(),
            "{name}: nothing on stdout: {}",
            stdout(&out)
        );
    }
}

#[tokio::test]
async fn routes_prints_the_table_a_file_makes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "routes.yaml", &good_routes());
    let out = scoregate(&["routes", "--routes", &path]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "endpoint ep-one (auth key)",
        "endpoint ep-token (auth aml_token)",
        "deployment blue: timeout 3000 ms, 1 per pod, queue wait 500 ms",
        "deployment green: timeout 5000 ms, 1 per pod, queue wait 500 ms",
        "pod 10.0.0.5:5001 ready",
        "pod 10.0.0.6:5001 ready",
        "pod 10.0.0.7:5001 not ready",
        "pod 10.0.0.8:5001 terminating",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    assert!(
        !text.contains("primary-key") && !text.contains("token-signing-key"),
        "keys are not printed:\n{text}"
    );

    let bad = write(dir.path(), "bad.yaml", "endpoints: 7\n");
    let out = scoregate(&["routes", "--routes", &bad]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&bad), "{}", stderr(&out));
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mints_a_token_the_router_accepts() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let yaml = routes(
        &[
            endpoint_with_auth(
                "ep-token",
                "aml_token",
                "token-signing-key-0123456789",
                &["traffic: { blue: 100 }"],
            ),
            endpoint("ep-one", &["traffic: { blue: 100 }"]),
        ],
        &[
            deployment("blue", "ep-token", &[pod.address()], ""),
            deployment("blue", "ep-one", &[pod.address()], ""),
        ],
    );
    let h = Harness::start(&yaml).await;
    let routes_file = h.routes_file.to_str().unwrap().to_owned();

    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = scoregate(&[
        "token",
        "--routes",
        &routes_file,
        "--endpoint",
        "ep-token",
        "--ttl",
        "1h",
    ])
    .await;
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(out.status.success(), "{}", stderr(&out));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)));
    let token = issued["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(issued["tokenType"], "Bearer");

    // The times reported are the token's own, an hour and half an hour from issue.
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    assert!((before..=after).contains(&iat), "{claims}");
    assert_eq!(exp - iat, 3600);
    assert_eq!(claims["aud"], "ep-token");
    assert_eq!(issued["expiryTimeUtc"], rfc3339(exp));
    assert_eq!(issued["refreshAfterTimeUtc"], rfc3339(iat + 1800));

    let call = |endpoint: &'static str, credential: String| {
        let (client, url) = (h.client.clone(), h.url(endpoint, "/score"));
        async move {
            let auth = format!("Bearer {credential}");
            send(
                &client,
                Method::POST,
                &url,
                &[("authorization", &auth)],
                full("{}"),
            )
            .await
        }
    };
    let r = call("ep-token", token.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // It is a token for ep-token only, and not a key anywhere.
    assert_router_error(&call("ep-one", token.clone()).await, 401, "InvalidKey");
    let mut tampered = token.clone();
    tampered.push('x');
    assert_router_error(&call("ep-token", tampered).await, 401, "InvalidToken");

    // --ttl is honoured.
    let out = scoregate(&[
        "token",
        "--routes",
        &routes_file,
        "--endpoint",
        "ep-token",
        "--ttl",
        "30m",
    ])
    .await;
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let short = issued["accessToken"].as_str().unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(short.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1800
    );

    // A key endpoint has no tokens; an unknown endpoint is named with the ones that exist.
    let out = scoregate(&["token", "--routes", &routes_file, "--endpoint", "ep-one"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("aml_token"), "{}", stderr(&out));
    let out = scoregate(&["token", "--routes", &routes_file, "--endpoint", "ep-nope"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ep-nope") && err.contains("ep-token"), "{err}");
}

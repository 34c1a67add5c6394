//! Graceful shutdown of the real `scoregate` binary (issue 3): SIGTERM during 100 in-flight slow
//! requests; all complete, `/readyz` turns 503 at once, listeners keep accepting for the drain
//! delay and then stop, HTTP/1.1 keep-alive answers carry `Connection: close`, an HTTP/2
//! connection gets GOAWAY after its stream finishes, and the process exits 0.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use scoregate::sample_model::SampleModel;
use support::{client, empty, guard, send, simple_routes, KEY};

/// The binary, started with a JSON log so its bound addresses can be read.
struct Serving {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start(pods: &[SocketAddr]) -> Serving {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        simple_routes(
            "ep-one",
            pods,
            "max_concurrent_requests_per_instance: 200, max_queue_length: 200, request_timeout_ms: 30000",
        ),
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "allow_insecure_connections: true\n\
             listen: {{ http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }}\n\
             discovery: {{ routes_file: \"{}\" }}\n\
             shutdown: {{ drain_delay_ms: 1000, grace_period_ms: 30000 }}\n\
             log: {{ format: json, access_log: off }}\n",
            routes.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The serving line names the bound addresses as values: `"http":"127.0.0.1:N"`,
    // `"admin":"127.0.0.1:M"`; an unset setting is left out, never `None`.
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = loop {
        let line = lines
            .next()
            .expect("the router printed its serving line")
            .unwrap();
        if line.contains("scoregate is serving") {
            break line;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    assert!(
        !line.contains("Some(") && !line.contains("None"),
        "settings are printed as values: {line}"
    );
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(value.get("https").is_none(), "{line}");
    let http = value["http"].as_str().unwrap().parse().unwrap();
    let admin = value["admin"].as_str().unwrap().parse().unwrap();
    Serving {
        child,
        http,
        admin,
        _dir: dir,
    }
}

fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

fn signal(child: &Child, which: &str) {
    let status = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Ctrl-C twice: the first starts the graceful shutdown (which would wait up to 30 s for the
/// slow request), the second exits at once with 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_exits_at_once() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let mut serving = start(&[pod.address()]);
    let score = format!(
        "http://{}/api/v1/endpoint/ep-one/score?sleep_ms=25000",
        serving.http
    );
    let auth = format!("Bearer {KEY}");
    let slow = tokio::spawn(async move {
        send(
            &client(),
            Method::POST,
            &score,
            &[("authorization", &auth)],
            empty(),
        )
        .await
    });
    support::eventually("the slow request reaches the pod", || async {
        pod.stats().requests() == 1
    })
    .await;
    signal(&serving.child, "-INT");
    let admin = serving.admin;
    support::eventually("readiness turns 503", || async move {
        let url = format!("http://{admin}/readyz");
        send(&client(), Method::GET, &url, &[], empty())
            .await
            .status
            == 503
    })
    .await;
    signal(&serving.child, "-INT");
    let status = guard("the process exits", async {
        loop {
            if let Some(status) = serving.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(130), "forced exit");
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_100_in_flight_requests_finish_and_exits_0() {
    let pods = [
        SampleModel::start_local("blue").await.unwrap(),
        SampleModel::start_local("blue").await.unwrap(),
    ];
    let serving = start(&[pods[0].address(), pods[1].address()]);
    let score = format!(
        "http://{}/api/v1/endpoint/ep-one/score?sleep_ms=8000",
        serving.http
    );
    let auth = format!("Bearer {KEY}");

    // 100 slow requests, each on its own keep-alive connection.
    let mut in_flight = Vec::new();
    for _ in 0..100 {
        let (score, auth) = (score.clone(), auth.clone());
        in_flight.push(tokio::spawn(async move {
            let c = client();
            send(
                &c,
                Method::POST,
                &score,
                &[("authorization", &auth)],
                empty(),
            )
            .await
        }));
    }
    // One more slow request over HTTP/2 (h2c), to see GOAWAY after it finishes.
    let tcp = TcpStream::connect(serving.http).await.unwrap();
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let h2_request = Request::post(&score)
        .header("authorization", &auth)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let h2_response = tokio::spawn(h2.send_request(h2_request));
    guard("101 requests to reach the pods", async {
        while pods[0].stats().in_flight() + pods[1].stats().in_flight() < 101 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    sigterm(&serving.child);
    let readyz = format!("http://{}/readyz", serving.admin);
    let probes = client();
    guard("/readyz to turn 503", async {
        while send(&probes, Method::GET, &readyz, &[], empty())
            .await
            .status
            != 503
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Within the drain delay the listener still accepts, and the answer closes its connection.
    let fast = format!("http://{}/api/v1/endpoint/ep-one/score", serving.http);
    let during_drain = send(
        &client(),
        Method::POST,
        &fast,
        &[("authorization", &auth)],
        empty(),
    )
    .await;
    assert_eq!(
        during_drain.status, 200,
        "requests are still served during the drain delay"
    );

    let mut statuses = Vec::new();
    let mut closing = 0;
    for request in in_flight {
        let response = guard("an in-flight request", request).await.unwrap();
        statuses.push(response.status.as_u16());
        if response.header("connection") == Some("close") {
            closing += 1;
        }
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every in-flight request completes: {statuses:?}"
    );
    assert_eq!(
        closing, 100,
        "keep-alive responses finished after the signal say Connection: close"
    );
    let h2_response = guard("the HTTP/2 request", h2_response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h2_response.status(), 200);
    h2_response.into_body().collect().await.unwrap();
    guard("the HTTP/2 connection to end with GOAWAY", h2_conn)
        .await
        .unwrap()
        .unwrap();

    // After the drain delay nothing new is accepted.
    guard("the listener to close", async {
        while TcpStream::connect(serving.http).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut child = serving.child;
    let status = guard("the process to exit", async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
}

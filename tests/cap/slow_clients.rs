//! Clients that hold resources without progress: one that stops reading its response (HTTP/1,
//! and an HTTP/2 stream whose flow-control window stays 0), one whose body trickles in at
//! 1 byte/s, an HTTP/2 connection that never opens a stream. None of them may keep a cap-1
//! deployment from others beyond the pod's own response time (a response that fits the
//! response buffer) or the send timeout (a larger one); each is disconnected and counted.

use std::time::Duration;

use crate::support::*;
use http::Request;
use scoregate::sample_model::SampleModel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A deployment `blue` of `ep-one` on one pod with one slot, waiting up to 30 s for it.
async fn cap_one(
    tweak: impl FnOnce(&mut scoregate::config::RouterConfig),
) -> (SampleModel, Harness) {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let settings = "request_timeout_ms: 300, max_concurrent_requests_per_instance: 1, \
                    max_queue_wait_ms: 30000, max_queue_length: 10";
    let h = Harness::start_with(&simple_routes("ep-one", &[pod.address()], settings), tweak).await;
    (pod, h)
}

/// A plain connection to the router whose receive buffer is small, so a client that does not
/// read stalls the router's writes soon.
async fn small_window_connection(h: &Harness) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(h.http).await.unwrap()
}

/// Whether the router has closed `stream` (reads drain what it had sent first).
async fn closed_by_router(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn send_timeouts(h: &Harness) -> f64 {
    h.metric_or_zero("scoregate_client_send_timeouts_total", &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_4_mib_is_disconnected_at_the_send_timeout() {
    let (pod, h) = cap_one(|c| c.limits.send_timeout_ms = 500).await;
    let mut stalled = small_window_connection(&h).await;
    let head = format!(
        "GET /api/v1/endpoint/ep-one/score?response_bytes=4194304 HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {KEY}\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    h.wait_in_flight("ep-one", "blue", 1).await;
    // The response is larger than the buffer: the pod is paced by the client, which reads
    // nothing, until the send timeout disconnects it; then the next request gets the pod.
    let next = h.score("ep-one", "").await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(send_timeouts(&h).await, 1.0);
    guard("the stalled connection to be closed", async {
        while !closed_by_router(&mut stalled).await {}
    })
    .await;
    assert_eq!(pod.stats().peak_concurrency(), 1);
    // Abandoned mid-body: the router half-closed the pod connection and read on; the slot was
    // freed when the pod had stopped (closed the connection) or finished its answer, not held
    // to the bound.
    let mut outcomes = Vec::new();
    for outcome in ["drained", "failed", "closed"] {
        let labels = [
            ("endpoint", "ep-one"),
            ("deployment", "blue"),
            ("outcome", outcome),
        ];
        let n = h
            .metric_or_zero("scoregate_abandoned_requests_total", &labels)
            .await;
        outcomes.push((outcome, n));
    }
    let ended_by_the_pod = outcomes[0].1 + outcomes[1].1;
    assert_eq!(
        (ended_by_the_pod, outcomes[2].1),
        (1.0, 0.0),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_a_response_that_fits_the_buffer_frees_the_pod_at_once()
{
    let (pod, h) = cap_one(|_| {}).await;
    let mut stalled = small_window_connection(&h).await;
    let head = format!(
        "GET /api/v1/endpoint/ep-one/score?response_bytes=524288 HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {KEY}\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    // The pod has sent its 512 KiB into the router's buffer: the slot is free while the client
    // still has not read it, and stays connected (the send timeout is 60 s).
    eventually("the pod to have answered", || async {
        pod.stats().requests() == 1
    })
    .await;
    let next = h.score("ep-one", "").await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert!(
        !closed_by_router(&mut stalled).await,
        "the slow client is still served"
    );
    assert_eq!(send_timeouts(&h).await, 0.0);
    assert_eq!(pod.stats().peak_concurrency(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_stuck_at_window_0_frees_the_pod_and_is_closed_at_the_send_timeout() {
    let (pod, h) = cap_one(|c| c.limits.send_timeout_ms = 500).await;
    let tcp = TcpStream::connect(h.http).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut client = guard("h2 ready", client.ready()).await.unwrap();
    let request = Request::get(format!(
        "http://{}/api/v1/endpoint/ep-one/score?response_bytes=8192",
        h.http
    ))
    .header("authorization", format!("Bearer {KEY}"))
    .body(())
    .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = guard("the response head", response).await.unwrap();
    assert_eq!(response.status(), 200);
    // 8 KiB fits the response buffer: the pod is free although the client takes none of it.
    let next = h.score("ep-one", "").await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(pod.stats().peak_concurrency(), 1);
    // The stalled stream closes its connection at the send timeout.
    guard("the stalled connection to end", connection)
        .await
        .unwrap()
        .ok();
    h.wait_metric("scoregate_client_send_timeouts_total", &[], |v| v == 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_one_byte_a_second_gets_408_and_never_reaches_the_pod() {
    let (pod, h) = cap_one(|c| c.limits.body_timeout_ms = 1_000).await;
    let mut stream = TcpStream::connect(h.http).await.unwrap();
    let head = format!(
        "POST /api/v1/endpoint/ep-one/score HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\
         authorization: Bearer {KEY}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    guard("the 408", async {
        while !String::from_utf8_lossy(&response).contains("BodyTimeout") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"BodyTimeout""#), "{text}");
    assert_eq!(pod.stats().requests(), 0, "the pod never saw it");
    let labels = [
        ("endpoint", "ep-one"),
        ("deployment", "blue"),
        ("code", "408"),
        ("source", "router"),
        ("error", "BodyTimeout"),
    ];
    let requests = h.metrics_text().await;
    let timeouts = metric_value(&requests, "scoregate_requests_total", &labels);
    assert_eq!(timeouts, Some(1.0));
    let all = metric_sum(&requests, "scoregate_requests_total");
    assert_eq!(all, Some(1.0), "nothing else was answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_that_never_opens_a_stream_closes_at_the_header_timeout() {
    let (_pod, h) = cap_one(|c| c.limits.header_read_timeout_ms = 300).await;
    let tcp = TcpStream::connect(h.http).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = guard("the idle connection to end", connection).await;
    if let Err(e) = ended {
        assert!(e.is_go_away() || e.is_io(), "{e:?}");
    }
}

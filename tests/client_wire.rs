//! The client connection's wire choices on HTTP/1.1, made by the router's own byte-level server
//! path (hyper's server made them before; `server::h1`): pipelined requests answered in order,
//! the client's `Connection: close`, a body that arrives after its head, `Expect: 100-continue`
//! and HTTP/1.0 (the last three go on with hyper's server). Over raw TCP against a sample pod.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use scoregate::sample_model::SampleModel;
use support::{guard, read_response, read_to_close, simple_routes, Harness, KEY};

async fn router() -> (Harness, SampleModel) {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let routes = simple_routes(
        "ep-one",
        &[pod.address()],
        "max_concurrent_requests_per_instance: 4",
    );
    (Harness::start(&routes).await, pod)
}

fn score(request_id: &str, extra: &str) -> String {
    format!(
        "POST /api/v1/endpoint/ep-one/score HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {KEY}\r\n\
         x-request-id: {request_id}\r\nContent-Length: 2\r\n{extra}\r\n{{}}"
    )
}

fn split(text: &str) -> Option<(String, String)> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.to_ascii_lowercase(), body.to_string()))
}

fn length(head: &str) -> usize {
    field(head, "content-length").map_or(0, |v| v.parse().unwrap())
}

fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Responses one after the other in `text`, each a lowercase head and its body.
fn responses(mut text: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    while let Some((head, rest)) = text.split_once("\r\n\r\n") {
        let head = head.to_ascii_lowercase();
        let n = length(&head);
        all.push((head, rest[..n].to_string()));
        text = &rest[n..];
    }
    all
}

const IDS: [&str; 3] = [
    "00000000-0000-4000-8000-00000000000a",
    "00000000-0000-4000-8000-00000000000b",
    "00000000-0000-4000-8000-00000000000c",
];

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_the_clients_close_ends_the_connection() {
    let (h, pod) = router().await;
    let mut stream = TcpStream::connect(h.http).await.unwrap();
    let nowhere = format!(
        "GET /nowhere HTTP/1.1\r\nHost: a\r\nx-request-id: {}\r\n\r\n",
        IDS[1]
    );
    let pipelined = [
        score(IDS[0], ""),
        nowhere,
        score(IDS[2], "Connection: close\r\n"),
    ]
    .concat();
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let text = read_to_close(&mut stream).await;
    let answers = responses(&text);
    let statuses: Vec<&str> = answers.iter().map(|(head, _)| &head[9..12]).collect();
    assert_eq!(statuses, ["200", "404", "200"], "{text}");
    for ((head, body), id) in answers.iter().zip(IDS) {
        assert_eq!(field(head, "x-request-id"), Some(id), "{head}");
        assert!(field(head, "date").is_some(), "{head}");
        assert_eq!(length(head), body.len(), "{head}");
    }
    assert!(answers[1].1.contains("RouteNotFound"), "{text}");
    let closes: Vec<bool> = answers
        .iter()
        .map(|(head, _)| field(head, "connection") == Some("close"))
        .collect();
    assert_eq!(closes, [false, false, true], "{text}");
    assert_eq!(pod.stats().requests(), 2);
}

#[tokio::test]
async fn a_body_that_arrives_after_its_head_is_received_and_the_connection_goes_on() {
    let (h, pod) = router().await;
    let mut stream = TcpStream::connect(h.http).await.unwrap();
    let request = score(IDS[0], "");
    let (head, body) = request.split_at(request.len() - 2);
    stream.write_all(head.as_bytes()).await.unwrap();
    // The body comes later, as from a client that writes the head and the body apart.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(body.as_bytes()).await.unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    for id in &IDS[1..] {
        stream.write_all(score(id, "").as_bytes()).await.unwrap();
        let next = read_response(&mut stream).await;
        let (head, _) = split(&next).unwrap();
        assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{next}");
        assert_eq!(field(&head, "x-request-id"), Some(*id), "{next}");
    }
    assert_eq!(pod.stats().requests(), 3);
}

#[tokio::test]
async fn an_http10_request_is_answered_in_http10_and_closed() {
    let (h, pod) = router().await;
    let mut stream = TcpStream::connect(h.http).await.unwrap();
    let request = score(IDS[0], "").replace("HTTP/1.1", "HTTP/1.0");
    stream.write_all(request.as_bytes()).await.unwrap();
    let text = read_to_close(&mut stream).await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    let answers = responses(&text);
    assert_eq!(answers.len(), 1, "{text}");
    assert_eq!(field(&answers[0].0, "x-request-id"), Some(IDS[0]));
    assert_eq!(pod.stats().requests(), 1);
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_before_sending_its_body() {
    let (h, pod) = router().await;
    let mut stream = TcpStream::connect(h.http).await.unwrap();
    let request = score(IDS[0], "Expect: 100-continue\r\n");
    let (head, body) = request.split_at(request.len() - 2);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    guard("100 Continue", async {
        let mut buf = [0u8; 256];
        while !interim.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed instead of answering");
            interim.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_eq!(pod.stats().requests(), 1);
}

/// A refused head whose client goes on sending (its body, say): the router reads and discards
/// what comes until the client closes (`server::linger`), so the client's writes are not
/// answered by a TCP reset (which fails them, and can reach the client before the refusal) and
/// the client reads the refusal. Two refusals are tried (a bare line feed, a head over the
/// limit). The body is larger than the sockets' buffers, so the router has closed before it is
/// all written.
#[tokio::test]
async fn a_refused_client_still_sending_reads_the_refusal() {
    let (h, pod) = router().await;
    let too_large = format!(
        "POST /api/v1/endpoint/ep-one/score HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\
         Content-Length: 33554432\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let bare_lf = "POST /api/v1/endpoint/ep-one/score HTTP/1.1\nHost: a\r\n\
                   Content-Length: 33554432\r\n\r\n"
        .to_string();
    for head in [bare_lf, too_large] {
        let mut stream = TcpStream::connect(h.http).await.unwrap();
        let (mut read, mut write) = stream.split();
        let sending = async {
            write.write_all(head.as_bytes()).await?;
            write.write_all(&vec![b'x'; 32 * 1024 * 1024]).await?;
            write.shutdown().await
        };
        let mut answer = Vec::new();
        let reading = read.read_to_end(&mut answer);
        let (sent, read) = guard("the refusal", async { tokio::join!(sending, reading) }).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(sent.is_ok(), "{sent:?}");
        assert!(read.is_ok(), "{read:?} after {text}");
        assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    }
    assert_eq!(pod.stats().requests(), 0);
}

//! Protocol hardening (issue 3) over raw TCP: every limit and every request-smuggling vector.
//!
//! A refused request gets its status, a JSON body, a closed connection, and never reaches the
//! pod (the sample pod counts what it receives).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use scoregate::sample_model::SampleModel;
use support::{guard, read_response, read_to_close, simple_routes, Harness, KEY};

struct Raw {
    harness: Harness,
    pod: SampleModel,
}

async fn router(tweak: impl FnOnce(&mut scoregate::config::RouterConfig)) -> Raw {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let harness = Harness::start_with(
        &simple_routes(
            "ep-one",
            &[pod.address()],
            "max_concurrent_requests_per_instance: 16",
        ),
        |c| {
            c.limits.header_read_timeout_ms = 400;
            c.limits.keep_alive_timeout_ms = 400;
            c.limits.max_header_bytes = 8192;
            c.limits.max_headers = 20;
            c.limits.max_request_body_bytes = 1000;
            tweak(c);
        },
    )
    .await;
    Raw { harness, pod }
}

/// Writes `bytes`, then reads until the router closes the connection; returns all it sent.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn json_code(response: &str) -> String {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const SCORE: &str = "POST /api/v1/endpoint/ep-one/score HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer primary-key-0123456789\r\n";

#[tokio::test]
async fn smuggling_vectors_get_400_close_and_never_reach_the_pod() {
    let r = router(|_| {}).await;
    let vectors: &[(&str, String)] = &[
        ("CL.TE", format!("{SCORE}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG")),
        ("TE.CL", format!("{SCORE}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n")),
        ("duplicate CL", format!("{SCORE}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}")),
        ("conflicting CL", format!("{SCORE}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}x")),
        ("signed CL", format!("{SCORE}Content-Length: +2\r\n\r\n{{}}")),
        ("CL list", format!("{SCORE}Content-Length: 2, 2\r\n\r\n{{}}")),
        ("TE not chunked", format!("{SCORE}Transfer-Encoding: gzip\r\n\r\n")),
        ("TE chunked twice", format!("{SCORE}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE obfuscated", format!("{SCORE}Transfer-Encoding: xchunked\r\n\r\n")),
        ("obs-fold", format!("{SCORE}X-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{{}}")),
        ("space before colon", format!("{SCORE}Content-Length : 2\r\n\r\n{{}}")),
        ("bare LF", format!("{SCORE}Content-Length: 2\n\r\n{{}}")),
        ("TE on HTTP/1.0", "POST /api/v1/endpoint/ep-one/score HTTP/1.0\r\nHost: a\r\nAuthorization: Bearer primary-key-0123456789\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string()),
    ];
    for (name, bytes) in vectors {
        let response = exchange(r.harness.http, bytes.as_bytes()).await;
        assert_eq!(status_of(&response), 400, "{name}: {response}");
        assert_eq!(json_code(&response), "BadRequestFraming", "{name}");
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{name}: {response}"
        );
    }
    assert_eq!(
        r.pod.stats().requests(),
        0,
        "no smuggling vector reached the pod"
    );
}

#[tokio::test]
async fn a_bad_chunk_size_fails_the_request_and_never_completes_upstream() {
    let r = router(|_| {}).await;
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "fffffffffffffffff\r\n",
    ] {
        let response = exchange(
            r.harness.http,
            format!("{SCORE}Transfer-Encoding: chunked\r\n\r\n{body}").as_bytes(),
        )
        .await;
        // The head and the broken chunk arrive together: refused like a broken head.
        assert_eq!(status_of(&response), 400, "{body:?}: {response}");
        assert_eq!(json_code(&response), "BadRequestFraming", "{body:?}");
    }
    assert_eq!(
        r.pod.stats().requests(),
        0,
        "no broken request reached the model"
    );
    // The broken chunk arrives after the body has started streaming to the pod: the upstream
    // request is aborted before its body completes.
    let mut stream = TcpStream::connect(r.harness.http).await.unwrap();
    stream
        .write_all(format!("{SCORE}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stream.write_all(b"zz\r\n").await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert_eq!(
        r.pod.stats().scored_bytes(),
        0,
        "no broken body was delivered to the model"
    );
}

#[tokio::test]
async fn http11_requests_need_exactly_one_host() {
    let r = router(|_| {}).await;
    let score = SCORE.replace("Host: a\r\n", "");
    let cases = [
        (
            "no Host",
            format!("{score}Content-Length: 2\r\n\r\n{{}}"),
            400,
        ),
        (
            "two Hosts",
            format!("{SCORE}Host: b\r\nContent-Length: 2\r\n\r\n{{}}"),
            400,
        ),
        (
            "HTTP/1.0 without Host",
            format!(
                "{}Content-Length: 2\r\n\r\n{{}}",
                score.replace("HTTP/1.1", "HTTP/1.0")
            ),
            200,
        ),
    ];
    for (name, request, status) in cases {
        let response = exchange(r.harness.http, request.as_bytes()).await;
        assert_eq!(status_of(&response), status, "{name}: {response}");
        if status == 400 {
            assert_eq!(json_code(&response), "InvalidHost", "{name}");
        }
    }
    assert_eq!(
        r.pod.stats().requests(),
        1,
        "only the HTTP/1.0 request was forwarded"
    );
}

#[tokio::test]
async fn a_bad_request_pipelined_after_a_good_one_is_refused_after_it() {
    let r = router(|_| {}).await;
    let good = format!("{SCORE}Content-Length: 2\r\n\r\n{{}}");
    let bad = format!("{SCORE}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}");
    let response = exchange(r.harness.http, format!("{good}{bad}").as_bytes()).await;
    let statuses: Vec<u16> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| response[i + 9..i + 12].parse().unwrap())
        .collect();
    assert_eq!(statuses, [200, 400], "{response}");
    assert_eq!(r.pod.stats().requests(), 1);
}

#[tokio::test]
async fn slow_heads_get_408_and_silent_clients_are_closed_quietly() {
    let r = router(|_| {}).await;
    // Slowloris: part of a head, then nothing.
    let response = exchange(
        r.harness.http,
        b"GET /api/v1/endpoint/ep-one/score HTTP/1.1\r\nHost: a\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 408, "{response}");
    assert_eq!(json_code(&response), "RequestTimeout");
    // A head dripped one byte at a time never resets the clock.
    let mut stream = TcpStream::connect(r.harness.http).await.unwrap();
    let drip = guard("dripping", async {
        for byte in b"GET /api/v1/endpoint/ep-one/score HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    drip.await;
    let response = read_to_close(&mut stream).await;
    assert_eq!(status_of(&response), 408, "{response}");
    // A connection that sends nothing is closed without a response.
    assert_eq!(exchange(r.harness.http, b"").await, "");
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_the_timeout() {
    let r = router(|_| {}).await;
    let mut stream = TcpStream::connect(r.harness.http).await.unwrap();
    stream
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let response = read_to_close(&mut stream).await;
    assert_eq!(
        status_of(&response),
        404,
        "the first response arrives, then the idle connection closes"
    );
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "it was a keep-alive response"
    );
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let r = router(|_| {}).await;
    let big = "x".repeat(9000);
    let response = exchange(
        r.harness.http,
        format!("{SCORE}X-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&response), 431, "{response}");
    assert_eq!(json_code(&response), "RequestHeaderFieldsTooLarge");
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = exchange(r.harness.http, format!("{SCORE}{many}\r\n").as_bytes()).await;
    assert_eq!(status_of(&response), 431, "{response}");
    assert_eq!(r.pod.stats().requests(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let r = router(|_| {}).await;
    let response = exchange(
        r.harness.http,
        format!("{SCORE}Content-Length: 5000\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&response), 413, "{response}");
    assert_eq!(json_code(&response), "PayloadTooLarge");
    let chunk = "a".repeat(600);
    let chunked = format!(
        "{SCORE}Transfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let response = exchange(r.harness.http, chunked.as_bytes()).await;
    assert_eq!(status_of(&response), 413, "{response}");
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_one() {
    let r = router(|c| {
        c.limits.max_connections = 2;
        c.limits.keep_alive_timeout_ms = 60_000;
        c.limits.header_read_timeout_ms = 60_000;
    })
    .await;
    let request = b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut first = TcpStream::connect(r.harness.http).await.unwrap();
    let mut second = TcpStream::connect(r.harness.http).await.unwrap();
    let mut buf = [0u8; 4096];
    for s in [&mut first, &mut second] {
        s.write_all(request).await.unwrap();
        assert!(guard("a response", s.read(&mut buf)).await.unwrap() > 0);
    }
    let mut third = TcpStream::connect(r.harness.http).await.unwrap();
    third.write_all(request).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection must not be served while two are open"
    );
    drop(first);
    let n = guard("the third connection to be served", third.read(&mut buf))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn http2_advertises_its_stream_limit_and_closes_on_rapid_reset() {
    let r = router(|c| {
        c.limits.h2_max_concurrent_streams = 7;
        c.limits.h2_max_pending_accept_reset_streams = 20;
    })
    .await;
    let tcp = TcpStream::connect(r.harness.http).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = guard("h2 ready", client.ready()).await.unwrap();
    // The router's SETTINGS arrive right after the handshake.
    guard("the router's SETTINGS", async {
        while client.current_max_send_streams() != 7 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Rapid reset (CVE-2023-44487): open streams and cancel them at once, many times.
    let mut refused = false;
    for _ in 0..2_000 {
        let request = Request::post("http://a/api/v1/endpoint/ep-one/score?sleep_ms=1000")
            .header("authorization", format!("Bearer {KEY}"))
            .body(())
            .unwrap();
        match client.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
        match guard("h2 ready", client.ready()).await {
            Ok(c) => client = c,
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let ended = guard("the connection to end", connection).await.unwrap();
    assert!(
        refused || ended.is_err(),
        "the router must end a rapid-reset connection"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_serves_requests() {
    let r = router(|_| {}).await;
    let tcp = TcpStream::connect(r.harness.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::post(format!(
        "http://{}/api/v1/endpoint/ep-one/score",
        r.harness.http
    ))
    .header("authorization", format!("Bearer {KEY}"))
    .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
    .unwrap();
    let response = guard("h2c request", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["azureml-model-deployment"], "blue");
}

#[tokio::test]
async fn http2_host_that_contradicts_authority_is_refused() {
    let r = router(|_| {}).await;
    let tcp = TcpStream::connect(r.harness.http).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = guard("h2 ready", client.ready()).await.unwrap();
    let request = Request::post("http://ml.example.com/api/v1/endpoint/ep-one/score")
        .header("host", "other.example.com")
        .header("authorization", format!("Bearer {KEY}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = guard("h2 response", response).await.unwrap();
    assert_eq!(response.status(), 400);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = guard("h2 body", body.data()).await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"]["code"], "HostMismatch");
    assert_eq!(r.pod.stats().requests(), 0);
}

/// Sends one request on an open connection and reads one response.
async fn request_on(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(stream).await
}

#[tokio::test]
async fn a_parked_idle_connection_serves_its_next_requests() {
    // Idle HTTP/1 connections release their hyper buffers after 2 s and are served again by a
    // fresh hyper connection when the client speaks.
    let r = router(|c| c.limits.keep_alive_timeout_ms = 60_000).await;
    let mut stream = TcpStream::connect(r.harness.http).await.unwrap();
    for round in 0..3 {
        let response = request_on(&mut stream, "/nowhere").await;
        assert!(
            response.starts_with("HTTP/1.1 404"),
            "round {round}: {response}"
        );
        assert!(
            !response.to_ascii_lowercase().contains("connection: close"),
            "round {round}: {response}"
        );
        tokio::time::sleep(Duration::from_millis(2_600)).await;
    }
    // The first bytes of the next request wake the parked connection; the rest follow.
    stream.write_all(b"GET /nowh").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"ere HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains("RouteNotFound"), "{response}");
}

#[tokio::test]
async fn a_parked_connection_still_closes_at_the_keep_alive_timeout() {
    let r = router(|c| c.limits.keep_alive_timeout_ms = 2_500).await;
    let mut stream = TcpStream::connect(r.harness.http).await.unwrap();
    let response = request_on(&mut stream, "/nowhere").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let rest = read_to_close(&mut stream).await;
    assert_eq!(rest, "", "closed quietly after the keep-alive timeout");
}

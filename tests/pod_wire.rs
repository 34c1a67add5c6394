//! The pod connection's wire choices, made by the router's own HTTP/1.1 client code (hyper's
//! client made them before): interim responses, framing conflicts, bodiless responses, a pod
//! that closes (said or unsaid, between responses or in the middle of one), keep-alive reuse,
//! a pod that answers before the request body is sent, and the framing of request bodies.
//!
//! The pod here is scripted on raw TCP: it reads each request whole (head and body), records
//! it, and writes the bytes its script gives for that request.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

const WIDE: &str = "max_concurrent_requests_per_instance: 4, max_queue_wait_ms: 5000";

/// What the scripted pod does after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Waits for the next request on the connection.
    Stay,
    /// Closes the connection.
    Close,
    /// Answers before reading the request's body, then closes.
    AnswerEarly,
}

/// One request as the pod read it.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
    connection: usize,
}

type Script = Arc<dyn Fn(&Seen, usize) -> (Vec<u8>, Then) + Send + Sync>;

/// A pod on raw TCP that answers request `n` with what `script` gives.
struct ScriptedPod {
    address: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedPod {
    async fn start(
        script: impl Fn(&Seen, usize) -> (Vec<u8>, Then) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let (count, log) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, connection, script.clone(), log.clone()));
            }
        });
        ScriptedPod {
            address,
            connections,
            seen,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ScriptedPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    script: Script,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut stream, &mut buf, |b| find(b, b"\r\n\r\n")).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let index = log.lock().unwrap().len();
        let mut seen = Seen {
            head,
            body: Vec::new(),
            connection,
        };
        let (reply, then) = script(&seen, index);
        if then == Then::AnswerEarly {
            log.lock().unwrap().push(seen);
            let _ = stream.write_all(&reply).await;
            return;
        }
        seen.body = match read_body(&mut stream, &mut buf, &seen.head).await {
            Some(body) => body,
            None => return,
        };
        log.lock().unwrap().push(seen);
        if stream.write_all(&reply).await.is_err() || then == Then::Close {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + needle.len())
}

/// Reads into `buf` until `done` finds an end in it; `None` when the connection ends first.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let mut piece = [0u8; 8192];
    loop {
        if let Some(end) = done(buf) {
            return Some(end);
        }
        match stream.read(&mut piece).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    }
}

/// The request body as it came (chunked bodies undecoded, to check their framing).
async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, head: &str) -> Option<Vec<u8>> {
    let head = head.to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let end = if head.contains("transfer-encoding: chunked") {
        read_until(stream, buf, |b| find(b, b"0\r\n\r\n")).await?
    } else {
        let n = length.unwrap_or(0);
        read_until(stream, buf, |b| (b.len() >= n).then_some(n)).await?
    };
    Some(buf.drain(..end).collect())
}

async fn router_for(pod: &ScriptedPod) -> Harness {
    Harness::start(&simple_routes("ep-wire", &[pod.address], WIDE)).await
}

fn ok(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped() {
    let pod = ScriptedPod::start(|_, _| {
        let mut reply =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n".to_vec();
        reply.extend(ok("{}", ""));
        (reply, Then::Stay)
    })
    .await;
    let h = router_for(&pod).await;
    let r = h.score("ep-wire", "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "{}"));
    assert!(r.headers.get("link").is_none(), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_wins_over_content_length_and_the_connection_is_reused_after_it() {
    let pod = ScriptedPod::start(|_, n| {
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n2;ext=1\r\n{n:02}\r\n0\r\nx-trailer: 1\r\n\r\n"
        );
        (reply.into_bytes(), Then::Stay)
    })
    .await;
    let h = router_for(&pod).await;
    for n in 0..3 {
        let r = h.score("ep-wire", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("hello{n:02}"));
    }
    assert_eq!(pod.connections(), 1, "one pod connection carried the three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_have_no_body_whatever_their_fields_say() {
    let pod = ScriptedPod::start(|seen, _| {
        let reply = if seen.head.starts_with("HEAD ") {
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"
        } else if seen.head.contains("x-want: 204") {
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"
        } else if seen.head.contains("x-want: 304") {
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        };
        (reply.as_bytes().to_vec(), Then::Stay)
    })
    .await;
    let h = router_for(&pod).await;
    let auth = format!("Bearer {KEY}");
    let url = h.url("ep-wire", "/score");
    let r = send(
        &h.client,
        Method::HEAD,
        &url,
        &[("authorization", &auth)],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("9"), "{:?}", r.headers);
    assert!(r.body.is_empty());
    for want in ["204", "304"] {
        let headers = [("authorization", auth.as_str()), ("x-want", want)];
        let r = send(&h.client, Method::GET, &url, &headers, empty()).await;
        assert_eq!(r.status.as_str(), want);
        assert!(r.body.is_empty());
    }
    let r = h.score("ep-wire", "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "{}"));
    assert_eq!(
        pod.connections(),
        1,
        "no body was waited for: the connection carried every request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_says_close_or_just_closes_gets_a_new_connection() {
    let pod = ScriptedPod::start(|_, n| match n {
        0 => (ok("{}", "connection: close\r\n"), Then::Close),
        // Keep-alive said, the connection closed anyway (a server's idle timeout).
        1 => (ok("{}", ""), Then::Close),
        _ => (ok("{}", ""), Then::Stay),
    })
    .await;
    let h = router_for(&pod).await;
    for _ in 0..4 {
        let r = h.score("ep-wire", "").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "{}"));
        assert!(r.headers.get("connection").is_none(), "{:?}", r.headers);
    }
    assert_eq!(pod.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_until_close_arrives_whole_and_one_cut_short_fails() {
    let pod = ScriptedPod::start(|seen, _| {
        if seen.head.contains("x-want: cut") {
            let reply = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
            (reply.as_bytes().to_vec(), Then::Close)
        } else {
            let reply = "HTTP/1.1 200 OK\r\n\r\nuntil the pod closes";
            (reply.as_bytes().to_vec(), Then::Close)
        }
    })
    .await;
    let h = router_for(&pod).await;
    let r = h.score("ep-wire", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "until the pod closes");
    let auth = format!("Bearer {KEY}");
    let url = h.url("ep-wire", "/score");
    let headers = [("authorization", auth.as_str()), ("x-want", "cut")];
    let cut = guard("the cut response", async {
        let response = h
            .client
            .request(request(Method::POST, &url, &headers, full("{}")))
            .await?;
        response.into_body().collect().await?;
        Ok::<_, BoxError>(())
    })
    .await;
    // The head may or may not have reached the client before the body broke; either way the
    // client sees the response fail, never a short body taken as whole.
    assert!(cut.is_err(), "a body cut short is an error for the client");
    let r = h.score("ep-wire", "").await;
    assert_eq!(
        r.status, 200,
        "the next request gets a connection of its own"
    );
}

/// A client body that sends `first` and then never ends.
fn endless(first: &'static [u8]) -> Body {
    let first =
        futures_util::stream::once(async move { Ok(Frame::data(Bytes::from_static(first))) });
    streamed(futures_util::StreamExt::chain(
        first,
        futures_util::stream::pending(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_answers_before_the_body_is_sent_is_heard() {
    let pod = ScriptedPod::start(|_, _| {
        let reply =
            "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!";
        (reply.as_bytes().to_vec(), Then::AnswerEarly)
    })
    .await;
    let h = Harness::start_with(&simple_routes("ep-wire", &[pod.address], WIDE), |c| {
        c.limits.request_buffer_bytes = 16;
    })
    .await;
    let auth = format!("Bearer {KEY}");
    let url = h.url("ep-wire", "/score");
    let body = endless(b"more than sixteen bytes of a body that never ends");
    let r = send(
        &h.client,
        Method::POST,
        &url,
        &[("authorization", &auth)],
        body,
    )
    .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (413, "big!"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_framed_by_length_or_chunked_as_they_stream() {
    let pod = ScriptedPod::start(|_, _| (ok("{}", ""), Then::Stay)).await;
    let h = Harness::start_with(&simple_routes("ep-wire", &[pod.address], WIDE), |c| {
        c.limits.request_buffer_bytes = 4;
    })
    .await;
    let auth = format!("Bearer {KEY}");
    let url = h.url("ep-wire", "/score");
    let whole = send(
        &h.client,
        Method::POST,
        &url,
        &[("authorization", &auth)],
        full("{\"a\":1}"),
    )
    .await;
    assert_eq!(whole.status, 200);
    let pieces = futures_util::stream::iter(
        ["{\"a\"", ":", "2}"]
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes())))),
    );
    let chunked = send(
        &h.client,
        Method::POST,
        &url,
        &[("authorization", &auth)],
        streamed(pieces),
    )
    .await;
    assert_eq!(chunked.status, 200);
    let seen = pod.seen();
    assert_eq!(seen.len(), 2);
    let first = seen[0].head.to_ascii_lowercase();
    assert!(first.contains("content-length: 7\r\n"), "{first}");
    assert_eq!(seen[0].body, b"{\"a\":1}");
    let second = seen[1].head.to_ascii_lowercase();
    assert!(
        second.contains("transfer-encoding: chunked\r\n"),
        "{second}"
    );
    assert!(!second.contains("content-length"), "{second}");
    let body = String::from_utf8(seen[1].body.clone()).unwrap();
    let data: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| pair[1])
        .collect();
    assert_eq!(data, "{\"a\":2}", "{body:?}");
    assert_eq!(seen[0].connection, seen[1].connection);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_bodys_trailers_reach_an_http2_client() {
    let pod = ScriptedPod::start(|_, _| {
        let reply = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
                     2\r\n{}\r\n0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n";
        (reply.as_bytes().to_vec(), Then::Stay)
    })
    .await;
    let h = router_for(&pod).await;
    let h2c: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let auth = format!("Bearer {KEY}");
    let url = h.url("ep-wire", "/score");
    for _ in 0..2 {
        let headers = [("authorization", auth.as_str())];
        let response = guard(
            "the h2c request",
            h2c.request(request(Method::POST, &url, &headers, full("{}"))),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let collected = guard("the body", response.into_body().collect())
            .await
            .unwrap();
        let trailers = collected.trailers().cloned().expect("the pod's trailers");
        assert_eq!(trailers["x-checksum"], "abc");
        assert_eq!(trailers["x-more"], "1");
        assert_eq!(collected.to_bytes(), "{}");
    }
    assert_eq!(
        pod.connections(),
        1,
        "the connection is reused after trailers"
    );
}

/// Reads one response framed by its `content-length` from a raw connection, after a
/// `100 Continue` when one comes first (it is left out).
async fn read_final_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    guard("a response", async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&out);
            let text = text
                .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
                .unwrap_or(&text);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.parse().unwrap());
                if body.len() >= length {
                    return text.to_string();
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed instead of answering");
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// A pod's head goes to an HTTP/1.1 client from its bytes on the router's own server path
/// (`http1::relay`); a connection handed to hyper's server (here by `Expect: 100-continue`)
/// gets it as an `http` response written by hyper. Both give the client the same bytes:
/// repeated names together, the field a `Connection` lists and the hop-by-hop ones gone, the
/// pod's own request id replaced where it stood, a custom reason and the pod's date kept, a
/// `Content-Length` beside a `Transfer-Encoding` dropped (the body, read ahead whole, goes with
/// its length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_head_reaches_the_client_as_hypers_server_wrote_it() {
    let pod = ScriptedPod::start(|_, _| {
        let reply = "HTTP/1.1 200 Fine Thanks\r\nX-A: 1\r\nConnection: x-hop\r\nX-Hop: secret\r\n\
                     Set-Cookie: a=1\r\nx-request-id: pod\r\nX-B: 2\r\nset-cookie: b=2\r\n\
                     Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nKeep-Alive: timeout=5\r\n\
                     Transfer-Encoding: chunked\r\nContent-Length: 99\r\nX-Last: 3\r\n\r\n\
                     2\r\n{}\r\n0\r\n\r\n";
        (reply.as_bytes().to_vec(), Then::Stay)
    })
    .await;
    let h = router_for(&pod).await;
    let request = |extra: &str| {
        format!(
            "POST /api/v1/endpoint/ep-wire/score HTTP/1.1\r\nHost: a\r\n\
             Authorization: Bearer {KEY}\r\nx-request-id: 00000000-0000-4000-8000-00000000000a\r\n\
             x-ms-client-request-id: c-1\r\nContent-Length: 2\r\n{extra}\r\n{{}}"
        )
    };
    let mut own = TcpStream::connect(h.http).await.unwrap();
    own.write_all(request("").as_bytes()).await.unwrap();
    let by_bytes = read_final_response(&mut own).await;
    let mut handed = TcpStream::connect(h.http).await.unwrap();
    handed
        .write_all(request("Expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let by_hyper = read_final_response(&mut handed).await;
    assert_eq!(by_bytes, by_hyper);
    assert_eq!(
        by_bytes,
        "HTTP/1.1 200 Fine Thanks\r\nx-a: 1\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
         x-last: 3\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\
         x-request-id: 00000000-0000-4000-8000-00000000000a\r\nx-b: 2\r\n\
         azureml-model-deployment: blue\r\nx-ms-client-request-id: c-1\r\n\
         content-length: 2\r\n\r\n{}"
    );
}

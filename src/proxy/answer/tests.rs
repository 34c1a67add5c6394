//! The pod's head written from its bytes (`http1::relay`) against the way it was written
//! before: made `http` parts, the hop-by-hop fields stripped and the policy's fields set on the
//! map, then written by `http1::reply` — byte for byte, over a table of pod responses and
//! generated ones.

use bytes::Bytes;
use http::HeaderValue;
use proptest::prelude::*;

use super::*;
use crate::http1::response::{Parsed, ResponseHead};
use crate::proxy::headers::{IdFields, RequestIds, Tracing};

/// The requests' sides: keep-alive, closing, `HEAD`.
const ASKED: [Asked; 4] = [
    Asked {
        head_request: false,
        keep_alive: true,
    },
    Asked {
        head_request: false,
        keep_alive: false,
    },
    Asked {
        head_request: true,
        keep_alive: true,
    },
    Asked {
        head_request: true,
        keep_alive: false,
    },
];

fn pod_head(text: &str, to_head: bool) -> Option<PodHead> {
    let bytes = Bytes::copy_from_slice(text.as_bytes());
    match ResponseHead::parse(&bytes, to_head) {
        Ok(Parsed::Complete(head, _)) => Some(PodHead { head, bytes }),
        _ => None,
    }
}

/// The policies: with and without a deployment, with and without a client request id.
fn policies() -> Vec<ResponseHeaders> {
    let plain = RequestIds::read(IdFields::default(), Tracing::default());
    let sent = IdFields {
        request_id: Some(b"3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        client_request_id: Some(b"client-7"),
        ..IdFields::default()
    };
    let client = RequestIds::read(sent, Tracing::default());
    let blue = HeaderValue::from_static("blue");
    vec![
        ResponseHeaders::new(&plain, Some(&blue)),
        ResponseHeaders::new(&client, Some(&blue)),
        ResponseHeaders::new(&client, None),
    ]
}

/// The head as it was written before: a header map, stripped, the policy applied, by `reply`.
fn through_a_map(
    pod: &PodHead,
    headers: &ResponseHeaders,
    length: BodyLength,
    asked: Asked,
) -> (String, Framing, bool) {
    let mut parts = pod.parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers.apply(&mut parts.headers);
    let mut out = Vec::new();
    let (framing, close) = reply::response_head(&mut out, &parts, length, asked);
    (undated(out), framing, close)
}

/// The head written from the pod's bytes.
fn from_bytes(
    pod: &PodHead,
    headers: &ResponseHeaders,
    length: BodyLength,
    asked: Asked,
) -> (String, Framing, bool) {
    let mut out = Vec::new();
    let changes = relay_changes(headers);
    let (framing, close) =
        relay::relayed_head(&mut out, &pod.head, &pod.bytes, &changes, length, asked);
    (undated(out), framing, close)
}

/// The head's text with the `date` the writer added (this second's) made constant.
fn undated(out: Vec<u8>) -> String {
    let text = String::from_utf8(out).expect("heads are ASCII here");
    let now = |line: &str| line.starts_with("date: ") && line.ends_with(" GMT") && line.len() == 35;
    text.split("\r\n")
        .map(|line| if now(line) { "date: <now>" } else { line })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Every way of writing `text`'s head: the requests' sides, the policies, the body lengths.
fn assert_same(text: &str) {
    let lengths = [
        BodyLength::Ended,
        BodyLength::Known(0),
        BodyLength::Known(3),
        BodyLength::Unknown,
    ];
    for asked in ASKED {
        let Some(pod) = pod_head(text, asked.head_request) else {
            panic!("{text:?} parses");
        };
        for headers in policies() {
            for length in lengths {
                let before = through_a_map(&pod, &headers, length, asked);
                let now = from_bytes(&pod, &headers, length, asked);
                assert_eq!(now, before, "{text:?} {asked:?} {length:?} {headers:?}");
            }
        }
    }
}

const DATE: &str = "Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n";

#[test]
fn a_pods_head_written_from_its_bytes_is_the_head_a_header_map_gave() {
    let table = [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
        // Duplicate fields: a map keeps a name's values together.
        "HTTP/1.1 200 OK\r\nX-A: 1\r\nSet-Cookie: a=1\r\nX-B: 2\r\nset-cookie: b=2\r\nx-a: 3\r\nContent-Length: 2\r\n\r\n",
        // Connection-listed fields, in two Connection fields, beside other hop-by-hop ones.
        "HTTP/1.1 200 OK\r\nX-First: 1\r\nConnection: X-Hop, close\r\nX-Hop: a\r\nX-Mid: 2\r\nKeep-Alive: timeout=5\r\nconnection: x-other\r\nX-Other: b\r\nX-Last: 3\r\nContent-Length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: content-length, Date, upgrade, host\r\nContent-Length: 5\r\nDate: x\r\nUpgrade: h2c\r\nHost: h\r\nX-K: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-A: 1\r\nUpgrade: x\r\nTrailer: x-t\r\nContent-Length: 1\r\n\r\n",
        // Chunked bodies, and a Content-Length beside a Transfer-Encoding.
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nX-After: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r\nTransfer-Encoding: gzip, chunked\r\nX-B: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nContent-Length: 3\r\n\r\n",
        // 204 and 304.
        "HTTP/1.1 204 No Content\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
        &format!("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n{DATE}\r\n"),
        // HTTP/1.0 pods.
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n\r\n",
        "HTTP/1.0 201 Created\r\nContent-Length: 3\r\n\r\n",
        // Reason phrases: custom, none for an unknown status, another case, canonical.
        "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 799\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 404 not found\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n",
        // The pod's date, and the pod's own ids and deployment (replaced where they stand).
        &format!("HTTP/1.1 200 OK\r\nX-A: 1\r\n{DATE}Content-Length: 2\r\n\r\n"),
        "HTTP/1.1 500 Internal Server Error\r\nx-request-id: pod\r\nX-Ms-Client-Request-Id: pod\r\nAzureml-Model-Deployment: other\r\nx-request-id: again\r\nX-Tail: 1\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Empty:\r\nCONTENT-TYPE: a\r\nContent-type: b\r\n\r\n",
    ];
    for text in table {
        assert_same(text);
    }
}

#[test]
fn the_answer_writes_the_head_hyper_gets_as_a_response() {
    let text = "HTTP/1.1 200 Fine\r\nX-A: 1\r\nConnection: x-a\r\nContent-Length: 2\r\n\r\n";
    let asked = ASKED[0];
    for headers in policies() {
        let pod = || pod_head(text, false).expect("the head parses");
        let answer = |headers: &ResponseHeaders| {
            Answer::Pod(Box::new(PodAnswer {
                head: pod(),
                headers: headers.clone(),
                body: ResponseBody::full(Bytes::from_static(b"{}")),
            }))
        };
        let mut out = Vec::new();
        let (framing, close, _) = answer(&headers).write_http1_head(&mut out, asked);
        let (parts, _) = answer(&headers).into_response().into_parts();
        let mut before = Vec::new();
        let written = reply::response_head(&mut before, &parts, BodyLength::Known(2), asked);
        assert_eq!(undated(out), undated(before));
        assert_eq!((framing, close), written);
        assert_eq!(answer(&headers).status(), 200);
    }
}

/// A field line of a generated pod head: names that repeat, framing, hop-by-hop and the
/// policy's own names among others.
fn field() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "X-A",
        "x-a",
        "X-B",
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "connection",
        "Keep-Alive",
        "Date",
        "x-request-id",
        "X-Ms-Client-Request-Id",
        "azureml-model-deployment",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Connection",
        "Host",
    ]);
    let values = prop::sample::select(vec![
        "1",
        "3",
        "0",
        "chunked",
        "gzip",
        "close",
        "x-a",
        "X-B, keep-alive",
        "content-length",
        "keep-alive",
        "date, x-request-id",
        "upgrade, X-Ms-Client-Request-Id",
        "",
    ]);
    (names, values).prop_map(|(name, value)| format!("{name}: {value}\r\n"))
}

proptest! {
    #[test]
    fn generated_pod_heads_are_written_as_a_header_map_wrote_them(
        status in prop::sample::select(vec![200u16, 201, 204, 304, 404, 500, 799]),
        reason in prop::sample::select(vec!["", "OK", "Fine", "Not Found"]),
        http10 in any::<bool>(),
        fields in prop::collection::vec(field(), 0..12),
        asked in prop::sample::select(ASKED.to_vec()),
        length in prop::sample::select(vec![BodyLength::Ended, BodyLength::Known(0), BodyLength::Known(3), BodyLength::Unknown]),
        policy in 0usize..3,
    ) {
        let version = if http10 { "1.0" } else { "1.1" };
        let text = format!("HTTP/{version} {status} {reason}\r\n{}\r\n", fields.concat());
        // Heads the pod's parser refuses (an invalid length, a coding on HTTP/1.0) never reach
        // a client.
        if let Some(pod) = pod_head(&text, asked.head_request) {
            let headers = &policies()[policy];
            prop_assert_eq!(
                from_bytes(&pod, headers, length, asked),
                through_a_map(&pod, headers, length, asked),
                "{:?}", text
            );
        }
    }
}

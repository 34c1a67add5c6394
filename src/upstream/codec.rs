//! The HTTP/1.1 client codec of pod connections: the request head written as bytes (from `http`
//! parts, or by the proxy from a client's head, [`PodRequest`]), and the pod's response head
//! kept as bytes with its index ([`PodHead`]), made `http` parts where hyper writes the
//! response.
//!
//! The request's framing follows the choices hyper's client made on this path before, so pods
//! see what they saw:
//!
//! | request body | framing written |
//! |---|---|
//! | none (ended before it started) | none added; a `Content-Length` the request has is kept |
//! | a `Content-Length` in the request | that length |
//! | length known | `content-length` |
//! | length unknown, `GET`, `HEAD` or `CONNECT` | none: the body is not sent |
//! | length unknown, any other method | `transfer-encoding: chunked` |
//!
//! A `Transfer-Encoding` the request carries is never copied (the body is re-framed here).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::Body;

use super::body::RequestBody;
use crate::http1::body::BodyEncoder;
use crate::http1::head::Known;
use crate::http1::response::ResponseHead;

/// How a request body goes to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Nothing is sent after the head (no body, or one hyper's client never sent either).
    Nothing,
    /// The body, written with this framing.
    Body(BodyEncoder),
}

/// A request head as the pod gets it, written: its bytes, whether the request is `HEAD` (its
/// response has no body) and how its body goes.
#[derive(Clone, Debug)]
pub struct WrittenHead {
    pub(super) bytes: Vec<u8>,
    pub(super) to_head: bool,
    pub(super) outgoing: Outgoing,
}

impl WrittenHead {
    /// The head as the pod gets it.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A request as the pod gets it: its head written, and its body.
#[derive(Debug)]
pub struct PodRequest {
    pub(super) head: WrittenHead,
    pub(super) body: RequestBody,
}

impl PodRequest {
    /// `request` as it is: its fields written by the codec's rules (names lowercase, in the
    /// map's order) and its framing by the table above.
    pub fn from_http(request: http::Request<RequestBody>) -> Self {
        let (parts, body) = request.into_parts();
        let mut bytes = Vec::with_capacity(512);
        let outgoing = request_head(&parts, &body, &mut bytes);
        let to_head = parts.method == Method::HEAD;
        let head = WrittenHead {
            bytes,
            to_head,
            outgoing,
        };
        PodRequest { head, body }
    }

    /// A request whose line and fields `write` writes (a `Content-Length` among them when
    /// `declares_length`), its framing added by the table above.
    pub fn written(
        method: &[u8],
        declares_length: bool,
        body: RequestBody,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Self {
        let mut bytes = Vec::with_capacity(512);
        write(&mut bytes);
        let outgoing = framing(method, declares_length, &body, &mut bytes);
        bytes.extend_from_slice(b"\r\n");
        let to_head = method == b"HEAD";
        let head = WrittenHead {
            bytes,
            to_head,
            outgoing,
        };
        PodRequest { head, body }
    }

    /// A request with a head written before, and its body (as framed as the body that head was
    /// written for).
    pub fn new(head: WrittenHead, body: RequestBody) -> Self {
        PodRequest { head, body }
    }

    /// The head.
    pub fn head(&self) -> &WrittenHead {
        &self.head
    }
}

/// Writes the head of the request `parts`, whose body is `body`, into `out`: the request line
/// (origin form), every field as it is (names lowercase, in the map's order), and the framing
/// of the table above. Returns how the body goes.
fn request_head(parts: &Parts, body: &RequestBody, out: &mut Vec<u8>) -> Outgoing {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in parts.headers.iter() {
        if name != TRANSFER_ENCODING {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let method = parts.method.as_str().as_bytes();
    let declares_length = parts.headers.contains_key(CONTENT_LENGTH);
    let outgoing = framing(method, declares_length, body, out);
    out.extend_from_slice(b"\r\n");
    outgoing
}

/// The body's framing, its field added to `out` when the request declares no length.
fn framing(
    method: &[u8],
    declares_length: bool,
    body: &RequestBody,
    out: &mut Vec<u8>,
) -> Outgoing {
    if body.is_end_stream() {
        return Outgoing::Nothing;
    }
    if declares_length {
        return Outgoing::Body(BodyEncoder::Length);
    }
    match body.size_hint().exact() {
        Some(length) => {
            field(
                out,
                b"content-length",
                itoa::Buffer::new().format(length).as_bytes(),
            );
            Outgoing::Body(BodyEncoder::Length)
        }
        None if matches!(method, b"GET" | b"HEAD" | b"CONNECT") => Outgoing::Nothing,
        None => {
            field(out, b"transfer-encoding", b"chunked");
            Outgoing::Body(BodyEncoder::Chunked)
        }
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A pod's response head: its index, and the bytes it was parsed from (sharing the
/// connection's read buffer). It goes to an HTTP/1.1 client on the byte-level path as it is
/// (`http1::relay`), and as `http` parts ([`PodHead::parts`]) where hyper writes the response.
#[derive(Debug)]
pub struct PodHead {
    /// Where the head's parts are in `bytes` (boxed when parsed, `http1::response::Parsed`).
    pub head: Box<ResponseHead>,
    /// The head's bytes.
    pub bytes: Bytes,
}

impl PodHead {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status()
    }

    /// The head as `http` parts: its status, version and every field as the pod sent it (values
    /// share the head's bytes) but a `Content-Length` beside a `Transfer-Encoding`, and a reason
    /// phrase that is not the status's canonical one kept as hyper's
    /// [`hyper::ext::ReasonPhrase`] (the client gets it). The head was checked as it was parsed
    /// (`http1::response`): its status, names and values are what `http` takes.
    pub fn parts(&self) -> http::response::Parts {
        let (head, bytes) = (&self.head, &self.bytes);
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = StatusCode::from_u16(head.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        parts.version = if head.is_http10() {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        parts.headers.reserve(head.fields().len());
        // A body framed by Transfer-Encoding is re-framed for the client: a Content-Length sent
        // with it is wrong for the body the client gets (RFC 9112 §6.3), so it is not passed on.
        let encoded = head
            .fields()
            .iter()
            .any(|f| f.known() == Some(Known::TransferEncoding));
        for f in head.fields() {
            if encoded && f.known() == Some(Known::ContentLength) {
                continue;
            }
            let name = HeaderName::from_bytes(f.name(bytes));
            let value = HeaderValue::from_maybe_shared(bytes.slice_ref(f.value(bytes)));
            if let (Ok(name), Ok(value)) = (name, value) {
                parts.headers.append(name, value);
            }
        }
        let reason = head.reason(bytes);
        if !reason.is_empty() && parts.status.canonical_reason().map(str::as_bytes) != Some(reason)
        {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(bytes.slice_ref(reason)) {
                parts.extensions.insert(reason);
            }
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::response::Parsed;
    use crate::upstream::Frames;

    fn head_of(request: http::Request<RequestBody>) -> (String, Outgoing) {
        let (parts, body) = request.into_parts();
        let mut out = Vec::new();
        let outgoing = request_head(&parts, &body, &mut out);
        (String::from_utf8(out).unwrap(), outgoing)
    }

    #[test]
    fn request_framing_follows_the_body() {
        let post = |body| {
            http::Request::post("/score?x=1")
                .header("host", "h")
                .header("transfer-encoding", "gzip")
                .body(body)
                .unwrap()
        };
        let (text, outgoing) = head_of(post(RequestBody::full(Bytes::from_static(b"{}"))));
        assert_eq!(
            text,
            "POST /score?x=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n"
        );
        assert_eq!(outgoing, Outgoing::Body(BodyEncoder::Length));
        let (text, outgoing) = head_of(post(RequestBody::whole(Frames::default())));
        assert_eq!(text, "POST /score?x=1 HTTP/1.1\r\nhost: h\r\n\r\n");
        assert_eq!(outgoing, Outgoing::Nothing);
        let declared = http::Request::put("/")
            .header("content-length", "2")
            .body(RequestBody::full(Bytes::from_static(b"{}")))
            .unwrap();
        let (text, outgoing) = head_of(declared);
        assert_eq!(text, "PUT / HTTP/1.1\r\ncontent-length: 2\r\n\r\n");
        assert_eq!(outgoing, Outgoing::Body(BodyEncoder::Length));
    }

    #[test]
    fn response_parts_keep_every_field_and_an_unusual_reason() {
        let pod = Bytes::from_static(
            b"HTTP/1.1 200 Fine Thanks\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n",
        );
        let Parsed::Complete(head, _) = ResponseHead::parse(&pod, false).unwrap() else {
            panic!("a whole head")
        };
        let parts = PodHead { head, bytes: pod }.parts();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.version, Version::HTTP_11);
        let values: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
        let pod = Bytes::from_static(b"HTTP/1.0 404 Not Found\r\n\r\n");
        let Parsed::Complete(head, _) = ResponseHead::parse(&pod, false).unwrap() else {
            panic!("a whole head")
        };
        let parts = PodHead { head, bytes: pod }.parts();
        assert_eq!(parts.version, Version::HTTP_10);
        assert!(parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
    }
}

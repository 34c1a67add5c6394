//! What [`super::Proxy::handle`] gives: the pod's response, kept as its head's bytes with the
//! response-header policy beside them ([`PodAnswer`]), or a response the router made itself.
//! The byte-level HTTP/1.1 server path writes a pod's head straight from its bytes with the
//! contract's changes (hop-by-hop fields and those `Connection` lists removed, the policy's
//! fields set; `http1::relay`), so no header map is built for it; the paths hyper serves
//! (HTTP/2, HTTP/1 handed over) take an `http::Response` made from the same parts
//! ([`Answer::into_response`]). Both give the client the same head (`docs/ARCHITECTURE.md`,
//! "The request path").

use http::{HeaderValue, Response};
use http_body::Body;
use smallvec::SmallVec;

use super::body::ResponseBody;
use super::headers::{self, ResponseHeaders};
use crate::http1::relay::{self, Change};
use crate::http1::reply::{self, Asked, BodyLength, Framing};
use crate::upstream::PodHead;

/// The answer to a request.
pub enum Answer {
    /// The pod's response (boxed: its head's index is large, and the answer is moved through
    /// the request's futures).
    Pod(Box<PodAnswer>),
    /// A response the router made itself (a router error; boxed as the pod's is, so an answer
    /// moves as a pointer).
    Router(Box<Response<ResponseBody>>),
}

/// The pod's response as the client gets it: the pod's head, the fields the router sets on
/// it, and the body.
pub struct PodAnswer {
    /// The pod's response head.
    pub head: PodHead,
    /// The response-header policy's fields for this request.
    pub headers: ResponseHeaders,
    /// The body, the pod's, with what records it when it ends.
    pub body: ResponseBody,
}

impl Answer {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Answer::Pod(pod) => pod.head.status(),
            Answer::Router(response) => response.status().as_u16(),
        }
    }

    /// The answer as an `http` response (for hyper): the pod's head as `http` parts with the
    /// hop-by-hop fields removed and the policy's fields set.
    pub fn into_response(self) -> Response<ResponseBody> {
        match self {
            Answer::Router(response) => *response,
            Answer::Pod(pod) => {
                let mut parts = pod.head.parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                pod.headers.apply(&mut parts.headers);
                Response::from_parts(parts, pod.body)
            }
        }
    }

    /// Writes the answer's head for an HTTP/1.1 client to `out` (by `http1::reply`'s rules,
    /// from the pod's bytes or the router's parts). Returns how the body is written, whether
    /// the connection must close after it, and the body.
    pub fn write_http1_head(
        self,
        out: &mut Vec<u8>,
        asked: Asked,
    ) -> (Framing, bool, ResponseBody) {
        match self {
            Answer::Router(response) => {
                let (parts, body) = (*response).into_parts();
                let length = body_length(&body);
                let (framing, close) = reply::response_head(out, &parts, length, asked);
                (framing, close, body)
            }
            Answer::Pod(pod) => {
                let (head, changes) = (&pod.head, relay_changes(&pod.headers));
                let length = body_length(&pod.body);
                let (framing, close) =
                    relay::relayed_head(out, &head.head, &head.bytes, &changes, length, asked);
                (framing, close, pod.body)
            }
        }
    }
}

/// The policy's changes as the byte-level writer takes them.
fn relay_changes(headers: &ResponseHeaders) -> SmallVec<[Change<'_>; 3]> {
    headers
        .changes()
        .map(|(name, value)| Change {
            name: name.as_str().as_bytes(),
            value: value.map(HeaderValue::as_bytes),
        })
        .collect()
}

/// What is known of `body` before its first byte.
fn body_length(body: &ResponseBody) -> BodyLength {
    match body.size_hint().exact() {
        _ if body.is_end_stream() => BodyLength::Ended,
        Some(n) => BodyLength::Known(n),
        None => BodyLength::Unknown,
    }
}

#[cfg(test)]
mod tests;

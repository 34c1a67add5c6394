//! The request as the phases read it: an `http` request (HTTP/2, and the HTTP/1 connections
//! hyper serves), or a head the byte-level HTTP/1.1 path checked and indexed once
//! (`http1::head::RequestHead`), read in place: no header map is built for it. Every phase that
//! reads the request does so through [`ClientRequest`]'s accessors; the forward phase writes the
//! pod's head from whichever it is (`docs/ARCHITECTURE.md`, "The request path").

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE, USER_AGENT,
};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Uri};

use super::headers::{
    IdFields, CLIENT_REQUEST_ID, FORWARDED_FOR, FORWARDED_HOST, FORWARDED_PROTO, MODEL_DEPLOYMENT,
    REQUEST_ID,
};
use super::receive::ClientBody;
use crate::http1::head::{Known, RequestHead};
use crate::telemetry::access::RequestLine;
use crate::trace::TRACEPARENT;

/// A client's request, as the server hands it to the proxy.
pub enum ClientRequest<B = ClientBody> {
    /// An `http` request (HTTP/2, and HTTP/1 served by hyper): its parts, boxed (they are
    /// large, and a request is moved from phase to phase; a head is a pointer and a few
    /// offsets), and its body.
    Http(Box<Parts>, B),
    /// A head read by the byte-level HTTP/1.1 path, with its body.
    Head(HeadRequest<B>),
}

/// A request whose head is read in place.
pub struct HeadRequest<B> {
    head: RequestHead,
    /// The target as a `Uri` when it is not in origin form (absolute form: rare, so parsed).
    uri: Option<Box<Uri>>,
    body: B,
}

impl<B> HeadRequest<B> {
    /// The head.
    pub fn head(&self) -> &RequestHead {
        &self.head
    }

    /// The target as a `Uri`, when it is not in origin form.
    pub fn absolute(&self) -> Option<&Uri> {
        self.uri.as_deref()
    }
}

/// The longest target a `Uri` holds; a longer one is left to hyper, as before.
const MAX_TARGET: usize = u16::MAX as usize - 1;

impl<B> ClientRequest<B> {
    /// An `http` request.
    pub fn from_http(request: Request<B>) -> Self {
        let (parts, body) = request.into_parts();
        ClientRequest::Http(Box::new(parts), body)
    }

    /// The request of the byte-level path from its checked `head`; the head back when the
    /// target is one `http` cannot hold (too long, or not a URI), which hyper then serves.
    pub fn from_head(head: RequestHead, body: B) -> Result<Self, RequestHead> {
        if head.target().len() > MAX_TARGET {
            return Err(head);
        }
        let uri = match head.is_origin_form() {
            true => None,
            false => match Uri::from_maybe_shared(head.shared().slice_ref(head.target())) {
                Ok(uri) => Some(Box::new(uri)),
                Err(_) => return Err(head),
            },
        };
        Ok(ClientRequest::Head(HeadRequest { head, uri, body }))
    }

    /// The body.
    pub fn body(&self) -> &B {
        match self {
            ClientRequest::Http(_, body) => body,
            ClientRequest::Head(request) => &request.body,
        }
    }

    /// The request without its body, and the body.
    pub fn into_parts(self) -> (ClientRequest<()>, B) {
        match self {
            ClientRequest::Http(parts, body) => (ClientRequest::Http(parts, ()), body),
            ClientRequest::Head(HeadRequest { head, uri, body }) => {
                let request = HeadRequest {
                    head,
                    uri,
                    body: (),
                };
                (ClientRequest::Head(request), body)
            }
        }
    }

    /// The request with `body` instead of its own.
    pub fn with_body<C>(self, body: C) -> ClientRequest<C> {
        match self {
            ClientRequest::Http(parts, _) => ClientRequest::Http(parts, body),
            ClientRequest::Head(HeadRequest { head, uri, .. }) => {
                ClientRequest::Head(HeadRequest { head, uri, body })
            }
        }
    }

    /// The method, as sent.
    pub fn method(&self) -> &[u8] {
        match self {
            ClientRequest::Http(parts, _) => parts.method.as_str().as_bytes(),
            ClientRequest::Head(request) => request.head.method(),
        }
    }

    /// The target's authority (HTTP/2's `:authority`, an absolute-form target's).
    pub fn authority(&self) -> Option<&str> {
        self.uri().and_then(Uri::authority).map(|a| a.as_str())
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        match self {
            ClientRequest::Http(parts, _) => parts.uri.path(),
            ClientRequest::Head(request) => match &request.uri {
                Some(uri) => uri.path(),
                None => request.head.path(),
            },
        }
    }

    /// The query, without `?`.
    pub fn query(&self) -> Option<&str> {
        match self {
            ClientRequest::Http(parts, _) => parts.uri.query(),
            ClientRequest::Head(request) => match &request.uri {
                Some(uri) => uri.query(),
                None => request.head.query(),
            },
        }
    }

    /// The path and query as a `PathAndQuery`, from the request's `Uri` (an `http` request's, or
    /// a head's not in origin form); `None` for a head in origin form, or when there is none.
    pub fn path_and_query(&self) -> Option<http::uri::PathAndQuery> {
        self.uri().and_then(Uri::path_and_query).cloned()
    }

    /// The `Uri` of an `http` request, or of a head whose target is not in origin form.
    fn uri(&self) -> Option<&Uri> {
        match self {
            ClientRequest::Http(parts, _) => Some(&parts.uri),
            ClientRequest::Head(request) => request.uri.as_deref(),
        }
    }

    /// Whether the request came over HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self, ClientRequest::Http(parts, _) if parts.version == http::Version::HTTP_2)
    }

    /// The value of the first field of kind `known` (the head's is found by its one pass).
    pub fn field(&self, known: Known) -> Option<&[u8]> {
        match self {
            ClientRequest::Http(parts, _) => {
                parts.headers.get(name_of(known)).map(HeaderValue::as_bytes)
            }
            ClientRequest::Head(request) => request.head.get_known(known),
        }
    }

    /// The value of the first field named `name` (a search: for names the proxy does not know
    /// in advance, such as a deployment's prefix-key header).
    pub fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            ClientRequest::Http(parts, _) => parts.headers.get(name).map(HeaderValue::as_bytes),
            ClientRequest::Head(request) => request.head.get(name.as_str().as_bytes()),
        }
    }

    /// The request's `Content-Length`, when it has exactly one valid one.
    pub fn declared_length(&self) -> Option<u64> {
        std::str::from_utf8(self.field(Known::ContentLength)?)
            .ok()?
            .parse()
            .ok()
    }

    /// The fields the request ids and trace context are read from.
    pub fn id_fields(&self) -> IdFields<'_> {
        let may_repeat = match self {
            // A repeated field anywhere (rare) means a repeated id may be among them.
            ClientRequest::Http(parts, _) => parts.headers.len() != parts.headers.keys_len(),
            ClientRequest::Head(request) => {
                request.head.is_repeated(Known::RequestId)
                    || request.head.is_repeated(Known::ClientRequestId)
            }
        };
        IdFields {
            request_id: self.field(Known::RequestId),
            client_request_id: self.field(Known::ClientRequestId),
            traceparent: self.field(Known::Traceparent),
            may_repeat,
        }
    }

    /// The request line for the access log; `declared_length` is its body's exact size hint.
    pub fn line(&self, declared_length: Option<u64>) -> RequestLine {
        // A head's value is kept as its bytes: the framing guard checked them already.
        let user_agent = match self {
            ClientRequest::Http(parts, _) => parts
                .headers
                .get(USER_AGENT)
                .map(|value| Bytes::copy_from_slice(value.as_bytes())),
            ClientRequest::Head(request) => (request.head.get_known(Known::UserAgent))
                .map(|value| request.head.shared().slice_ref(value)),
        };
        let method = Method::from_bytes(self.method()).unwrap_or_default();
        match (self, self.uri()) {
            (ClientRequest::Head(request), None) => {
                let (target, path_len) = (request.head.path_and_query(), request.head.path_len());
                RequestLine::of_target(method, target, path_len, user_agent, declared_length)
            }
            (_, uri) => {
                let path = uri.and_then(Uri::path_and_query).cloned();
                RequestLine::of_path(method, path, user_agent, declared_length)
            }
        }
    }

    /// The path and query of a head in origin form as sent (without a fragment), from byte
    /// `from` of its path on, shared with the head; `None` for other requests.
    pub fn sent_path_from(&self, from: usize) -> Option<Bytes> {
        let ClientRequest::Head(request) = self else {
            return None;
        };
        let sent = request.head.path_and_query();
        (request.uri.is_none() && from <= sent.len()).then(|| sent.slice(from..))
    }
}

/// The name of the fields of kind `known`, to find them in an `http` request's map.
pub(super) fn name_of(known: Known) -> &'static HeaderName {
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    match known {
        Known::Host => &HOST,
        Known::ContentLength => &CONTENT_LENGTH,
        Known::TransferEncoding => &TRANSFER_ENCODING,
        Known::Connection => &CONNECTION,
        Known::KeepAlive => &KEEP_ALIVE,
        Known::ProxyConnection => &PROXY_CONNECTION,
        Known::Te => &TE,
        Known::Trailer => &TRAILER,
        Known::Upgrade => &UPGRADE,
        Known::Expect => &EXPECT,
        Known::Authorization => &AUTHORIZATION,
        Known::UserAgent => &USER_AGENT,
        Known::ModelDeployment => &MODEL_DEPLOYMENT,
        Known::RequestId => &REQUEST_ID,
        Known::ClientRequestId => &CLIENT_REQUEST_ID,
        Known::Traceparent => &TRACEPARENT,
        Known::ForwardedFor => &FORWARDED_FOR,
        Known::ForwardedHost => &FORWARDED_HOST,
        Known::ForwardedProto => &FORWARDED_PROTO,
    }
}

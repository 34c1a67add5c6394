//! The request as the pod gets it: the contract's rules for its fields ([`Rules`]: hop-by-hop
//! fields and those a `Connection` field lists, `Authorization`, `Expect`, `Host` when the
//! target names an authority or the client's `Host` cannot cross, the forwarding fields and,
//! when they change, the request ids and `traceparent`; `docs/ARCHITECTURE.md`, "The request as
//! the pod gets it"), decided once per request whatever its representation, and applied to it:
//! a head the byte-level HTTP/1.1 path indexed is written from its bytes ([`pod_request`]: its
//! field lines copied as they came but those the rules leave out, then the fields they set); an
//! `http` request's map is rewritten ([`rewrite_map`]) and written by `upstream::codec`. The
//! framing field is written for the body (`upstream::codec`). The tests below hold the two ways
//! to the same head.

use http::header::CONNECTION;
use http::request::Parts;
use http::{HeaderName, HeaderValue};

use super::context::Context;
use super::headers;
use super::request::{name_of, HeadRequest};
use crate::http1::head::{tokens, Known};
use crate::http1::write;
use crate::upstream::{PodRequest, RequestBody};

/// The head of `request` as the pod gets it, `path` its path and query, with `body`;
/// `pod_authority` is its `Host` when it names none.
pub(super) fn pod_request(
    request: &HeadRequest<()>,
    path: &[u8],
    body: RequestBody,
    cx: &Context,
    pod_authority: &HeaderValue,
) -> PodRequest {
    let head = request.head();
    let rules = Rules::of(request, cx);
    let declares_length = head.get_known(Known::ContentLength).is_some()
        && !head.is_connection_listed(b"content-length");
    PodRequest::written(head.method(), declares_length, body, |out| {
        write::forward_request(
            out,
            head,
            &[path],
            |known| rules.replaces(known),
            |writer| {
                rules.set(cx, pod_authority, |name, value| {
                    writer.field_parts(name.as_bytes(), value);
                })
            },
        );
    })
}

/// Applies the rules to the fields of the `http` request of `request`: hop-by-hop fields and those
/// a `Connection` field lists, and the fields the rules leave out, removed; the fields they set
/// added.
pub(super) fn rewrite_map(request: &mut Parts, cx: &Context, pod_authority: &HeaderValue) {
    let (set, left_out) = {
        let rules = Rules::of(&*request, cx);
        let mut set: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(6);
        rules.set(cx, pod_authority, |name, value| {
            if let Ok(value) = HeaderValue::from_bytes(&value.concat()) {
                set.push((HeaderName::from_static(name), value));
            }
        });
        let left_out = REPLACEABLE.into_iter().filter(|k| rules.replaces(*k));
        (set, left_out.collect::<Vec<_>>())
    };
    let headers = &mut request.headers;
    headers::strip_hop_by_hop(headers);
    for known in left_out {
        headers.remove(name_of(known));
    }
    for (name, value) in set {
        headers.append(name, value);
    }
}

/// What the rules read of a request, in either representation.
trait Fields {
    /// The target's authority.
    fn authority(&self) -> Option<&[u8]>;
    /// The value of the first field of kind `known`.
    fn field(&self, known: Known) -> Option<&[u8]>;
    /// Whether a `Connection` field lists `name`.
    fn is_connection_listed(&self, name: &[u8]) -> bool;
}

impl<B> Fields for HeadRequest<B> {
    fn authority(&self) -> Option<&[u8]> {
        let authority = self.absolute()?.authority()?;
        Some(authority.as_str().as_bytes())
    }

    fn field(&self, known: Known) -> Option<&[u8]> {
        self.head().get_known(known)
    }

    fn is_connection_listed(&self, name: &[u8]) -> bool {
        self.head().is_connection_listed(name)
    }
}

impl Fields for Parts {
    fn authority(&self) -> Option<&[u8]> {
        Some(self.uri.authority()?.as_str().as_bytes())
    }

    fn field(&self, known: Known) -> Option<&[u8]> {
        self.headers.get(name_of(known)).map(HeaderValue::as_bytes)
    }

    fn is_connection_listed(&self, name: &[u8]) -> bool {
        !name.eq_ignore_ascii_case(b"close")
            && !name.eq_ignore_ascii_case(b"keep-alive")
            && self
                .headers
                .get_all(CONNECTION)
                .iter()
                .flat_map(|value| tokens(value.as_bytes()))
                .any(|token| token.eq_ignore_ascii_case(name))
    }
}

/// The kinds of fields the rules may leave out.
const REPLACEABLE: [Known; 9] = [
    Known::Authorization,
    Known::Expect,
    Known::ForwardedFor,
    Known::ForwardedHost,
    Known::ForwardedProto,
    Known::Host,
    Known::RequestId,
    Known::ClientRequestId,
    Known::Traceparent,
];

/// What the contract changes in one request's fields.
struct Rules<'r> {
    /// The host the request names: the target's authority, else its `Host`.
    original_host: Option<&'r [u8]>,
    /// `Host` is written anew (with the original host, else the pod's authority).
    new_host: bool,
    /// The `X-Forwarded-For` the client sent, when the pod gets it with the client's address.
    forwarded_for: Option<&'r [u8]>,
    /// The request ids are written anew.
    new_ids: bool,
    /// A `traceparent` is written anew.
    new_traceparent: bool,
}

impl<'r> Rules<'r> {
    fn of(request: &'r impl Fields, cx: &Context) -> Self {
        let authority = request.authority();
        let host = request.field(Known::Host);
        Rules {
            original_host: authority.or(host),
            new_host: authority.is_some()
                || host.is_none()
                || request.is_connection_listed(b"host"),
            forwarded_for: request
                .field(Known::ForwardedFor)
                .filter(|_| !request.is_connection_listed(b"x-forwarded-for")),
            new_ids: !cx.ids.request_unchanged(),
            new_traceparent: cx.ids.upstream_span.is_some(),
        }
    }

    /// Whether the client's fields of kind `known` are left out (dropped, or set anew).
    fn replaces(&self, known: Known) -> bool {
        match known {
            Known::Authorization
            | Known::Expect
            | Known::ForwardedFor
            | Known::ForwardedHost
            | Known::ForwardedProto => true,
            Known::Host => self.new_host,
            Known::RequestId | Known::ClientRequestId => self.new_ids,
            Known::Traceparent => self.new_traceparent,
            _ => false,
        }
    }

    /// The fields the rules set, each given to `set` as its name and its value in parts.
    fn set(
        &self,
        cx: &Context,
        pod_authority: &HeaderValue,
        mut set: impl FnMut(&'static str, &[&[u8]]),
    ) {
        if self.new_host {
            set(
                "host",
                &[self.original_host.unwrap_or(pod_authority.as_bytes())],
            );
        }
        let client = cx.conn.client_ip.as_bytes();
        match self.forwarded_for {
            Some(previous) if !previous.trim_ascii().is_empty() => {
                set("x-forwarded-for", &[previous, b", ", client])
            }
            _ => set("x-forwarded-for", &[client]),
        };
        let proto: &[u8] = if cx.conn.tls { b"https" } else { b"http" };
        set("x-forwarded-proto", &[proto]);
        if let Some(host) = self.original_host {
            set("x-forwarded-host", &[host]);
        }
        let ids = &cx.ids;
        if self.new_ids {
            set("x-request-id", &[ids.request_id.as_bytes()]);
            if let Some(id) = &ids.client_request_id {
                set("x-ms-client-request-id", &[id.as_bytes()]);
            }
        }
        if let Some(span) = ids.upstream_span {
            set("traceparent", &[&ids.trace.header_bytes(span)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use http::{HeaderName, Method};

    use super::*;
    use crate::http1::head::{test_head, RequestHead, Version};
    use crate::proxy::context::{ClientConn, ProxySettings};
    use crate::proxy::headers::{RequestIds, Tracing};
    use crate::proxy::request::ClientRequest;
    use crate::proxy::{forward, route};

    /// The `http` request hyper (and, before the head was read in place, the byte-level path)
    /// made of `head`: every field in order, values trimmed.
    fn as_http(head: &RequestHead) -> http::Request<()> {
        let bytes = head.shared();
        let mut request = http::Request::new(());
        *request.method_mut() = Method::from_bytes(head.method()).unwrap();
        *request.uri_mut() = http::Uri::from_maybe_shared(bytes.slice_ref(head.target())).unwrap();
        *request.version_mut() = match head.version() {
            Version::Http11 => http::Version::HTTP_11,
            Version::Http10 => http::Version::HTTP_10,
        };
        for field in head.fields() {
            let name = HeaderName::from_bytes(field.name(bytes)).unwrap();
            let value = HeaderValue::from_bytes(field.value(bytes)).unwrap();
            request.headers_mut().append(name, value);
        }
        request
    }

    /// A head in a canonical form: the request line as it is, then each field with its name
    /// lowercase, ordered by name (fields of one name keep their order: the only order HTTP
    /// gives a meaning to, RFC 9110 §5.3).
    fn canonical(head: &[u8]) -> String {
        let text = String::from_utf8(head.to_vec()).unwrap();
        let (line, fields) = text.split_once("\r\n").unwrap();
        let fields = fields.strip_suffix("\r\n\r\n").unwrap_or(fields.trim_end());
        let mut fields: Vec<(String, String)> = fields
            .split("\r\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (name, value) = f.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_string())
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = format!("{line}\n");
        for (name, value) in fields {
            out.push_str(&format!("{name}: {value}\n"));
        }
        out
    }

    /// The pod's head of `text` with `body`, both ways: from the `http` request, and from the
    /// head read in place.
    fn both_ways(text: &str, body: &'static [u8], tls: bool, exporting: bool) -> [String; 2] {
        let settings = ProxySettings {
            max_request_body_bytes: 1 << 20,
            request_buffer_bytes: 1 << 20,
            body_timeout: std::time::Duration::from_secs(1),
            mirror_max_body_bytes: 0,
            host_domain: Some("ml.example.com".into()),
        };
        let tracing = Tracing {
            exporting,
            sample_new: false,
        };
        let conn = ClientConn::new("192.0.2.7:40000".parse().unwrap(), tls);
        let pod = HeaderValue::from_static("10.0.0.9:5001");
        let head = test_head(text);
        let http = ClientRequest::from_http(as_http(&head));
        let Ok(bytes) = ClientRequest::from_head(head, ()) else {
            panic!("a head the byte-level path serves: {text:?}")
        };
        let ids = RequestIds::read(http.id_fields(), tracing);
        let mut head_ids = RequestIds::read(bytes.id_fields(), tracing);
        // The same new ids both ways (they are random); whether the client's go on as they
        // came is each way's own.
        head_ids.request_id = ids.request_id.clone();
        head_ids.trace = ids.trace;
        head_ids.upstream_span = ids.upstream_span;
        let context = |ids| Context {
            started: Instant::now(),
            ids,
            conn: conn.clone(),
            line: http.line(None),
        };
        let (cx, head_cx) = (context(ids), context(head_ids));
        let body = || RequestBody::full(Bytes::from_static(body));
        let (_, path) = route::target_of(&settings, &http).expect("routed");
        let ClientRequest::Http(parts, ()) = http else {
            unreachable!()
        };
        let path = path.into_path_and_query();
        let request = forward::upstream_request(*parts, body(), path, &cx, &pod);
        let today = PodRequest::from_http(request);
        let (_, path) = route::target_of(&settings, &bytes).expect("routed");
        let ClientRequest::Head(request) = bytes else {
            unreachable!()
        };
        let written = pod_request(&request, path.as_bytes(), body(), &head_cx, &pod);
        [today, written].map(|r| canonical(r.head().bytes()))
    }

    const GUID: &str = "0e706d93-9306-4d6e-939e-e1ad8a9440f1";
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_pod_gets_the_same_head_from_the_bytes_as_from_the_map() {
        let ep = "/api/v1/endpoint/ep";
        let cases: Vec<(String, &'static [u8])> = vec![
            (format!("POST {ep}/score?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"), b"{}"),
            (format!("POST {ep}/score HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\nContent-Length: 2\r\n\r\n"), b"{}"),
            (format!("GET {ep}/score HTTP/1.1\r\nHost: h\r\nX-Request-Id: {GUID}\r\nx-request-id: other\r\n\r\n"), b""),
            (format!("GET {ep}/score HTTP/1.1\r\nHost: h\r\nX-Request-Id: {GUID}\r\nX-Ms-Client-Request-Id: abc\r\n\r\n"), b""),
            (format!("GET {ep}/score HTTP/1.1\r\nHost: h\r\nX-Request-Id: {GUID}\r\nx-ms-client-request-id: a b!c\r\ntraceparent: {PARENT}\r\n\r\n"), b""),
            (format!("POST http://ml.example.com:8080{ep}/score?x=1 HTTP/1.1\r\nHost: other\r\nContent-Length: 1\r\n\r\n"), b"x"),
            ("GET http://ep.ml.example.com/swagger.json HTTP/1.1\r\nHost: elsewhere\r\n\r\n".into(), b""),
            (format!("GET {ep}/score HTTP/1.0\r\nUser-Agent: old\r\n\r\n"), b""),
            (format!("GET {ep}/score HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, Host\r\nX-Secret: s\r\nKeep-Alive: 5\r\n\r\n"), b""),
            (format!("POST {ep}/score HTTP/1.1\r\nHost: h\r\nConnection: x-forwarded-for, content-length\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 3\r\n\r\n"), b"abc"),
            (format!("GET {ep}/score HTTP/1.1\r\nHost: h\r\nConnection: X-Request-Id, traceparent\r\nX-Request-Id: {GUID}\r\ntraceparent: {PARENT}\r\n\r\n"), b""),
            (format!("POST {ep}/score HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"), b"{}"),
            (format!("POST {ep}/score HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\r\n"), b"abc"),
            (format!("POST {ep}/score HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"), b""),
            (format!("PUT {ep} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer k\r\nazureml-model-deployment: blue\r\nContent-Length: 007\r\n\r\n"), b"1234567"),
            (format!("GET {ep}?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-Forwarded-Host: x\r\nX-Forwarded-Proto: ftp\r\nForwarded: for=1.2.3.4\r\n\r\n"), b""),
            (format!("GET {ep}/a/b?c=d&e#frag HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:   \r\nX-Tab: a\tb\r\nX-Obs: \u{e9}t\u{e9}\r\n\r\n"), b""),
            ("GET /score?x=1 HTTP/1.1\r\nHost: ep.ml.example.com:443\r\nCookie: a\r\nCookie: b\r\n\r\n".into(), b""),
            (format!("HEAD {ep}/ HTTP/1.1\r\nHOST: h\r\nX-REQUEST-ID: {GUID}\r\nConnection: close\r\n\r\n"), b""),
        ];
        for (i, (text, body)) in cases.iter().enumerate() {
            let [today, written] = both_ways(text, body, i % 2 == 0, i % 3 == 0);
            assert_eq!(written, today, "{text:?}");
        }
    }

    /// The fields of a request of `pairs` from `client` as the pod gets them, and its ids.
    fn to_pod(
        pairs: &[(&str, &str)],
        client: &str,
        tls: bool,
        tracing: Tracing,
    ) -> (http::HeaderMap, RequestIds) {
        let mut request = http::Request::new(());
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().append(name, value.parse().unwrap());
        }
        let received = ClientRequest::from_http(request.clone());
        let ids = RequestIds::read(received.id_fields(), tracing);
        let cx = Context {
            started: Instant::now(),
            ids,
            conn: ClientConn::new(
                (client.parse::<std::net::IpAddr>().unwrap(), 40000).into(),
                tls,
            ),
            line: received.line(None),
        };
        let pod = HeaderValue::from_static("10.0.0.9:5001");
        let (mut parts, ()) = request.into_parts();
        rewrite_map(&mut parts, &cx, &pod);
        (parts.headers, cx.ids)
    }

    #[test]
    fn the_pod_gets_the_trace_context_the_rules_give() {
        // The client's traceparent goes to the pod as it came without export; with export, the
        // router's upstream span is the pod's parent; without one, the router's new trace.
        let (h, _) = to_pod(
            &[("traceparent", PARENT)],
            "192.0.2.7",
            false,
            Tracing::default(),
        );
        assert_eq!(h["traceparent"], PARENT);
        let exporting = Tracing {
            exporting: true,
            sample_new: true,
        };
        let (h, ids) = to_pod(&[("traceparent", PARENT)], "192.0.2.7", false, exporting);
        assert_eq!(
            h["traceparent"],
            ids.trace.header_for(ids.upstream_span.unwrap())
        );
        assert_ne!(h["traceparent"], PARENT);
        let (h, ids) = to_pod(&[], "192.0.2.7", false, Tracing::default());
        assert_eq!(
            h["traceparent"],
            ids.trace.header_for(ids.upstream_span.unwrap())
        );
    }

    #[test]
    fn repeated_ids_reach_the_pod_once() {
        let pairs = [("x-request-id", GUID), ("x-request-id", "second")];
        let (h, _) = to_pod(&pairs, "192.0.2.7", false, Tracing::default());
        let ids: Vec<_> = h.get_all("x-request-id").iter().collect();
        assert_eq!(ids, [GUID]);
    }

    #[test]
    fn a_host_named_in_connection_is_set_again() {
        let pairs = [("connection", "host"), ("host", "ml.example.com")];
        let (h, _) = to_pod(&pairs, "192.0.2.7", false, Tracing::default());
        assert_eq!(
            h["host"], "ml.example.com",
            "the proxy must set a Host again"
        );
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn forwarded_headers() {
        let pairs = [("x-forwarded-for", "10.0.0.1"), ("host", "ml.example.com")];
        let (h, _) = to_pod(&pairs, "192.0.2.7", true, Tracing::default());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "ml.example.com");
        let (h, _) = to_pod(&[], "::1", false, Tracing::default());
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
    }
}

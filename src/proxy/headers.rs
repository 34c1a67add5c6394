//! Header rules: request ids and hop-by-hop removal (the forwarding headers and the rest of the
//! request's rewrite for the pod: `proxy::pod_head`).
//!
//! `x-request-id` is kept when it is a GUID and replaced otherwise; `x-ms-client-request-id`
//! keeps only `[A-Za-z0-9_-]`, cut to 40 characters (the client contract in
//! `docs/ARCHITECTURE.md`). Both go to the pod and back to the client.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

use crate::trace::{new_span_id, write_hex, TraceContext};

/// `azureml-model-deployment`: request header that picks a deployment; response header naming it.
pub static MODEL_DEPLOYMENT: HeaderName = HeaderName::from_static("azureml-model-deployment");
/// `x-request-id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-ms-client-request-id`.
pub static CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
/// `x-forwarded-for`.
pub static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest `x-ms-client-request-id` kept.
const CLIENT_REQUEST_ID_MAX: usize = 40;

/// The ids of one request: its request ids and its place in a trace (`crate::trace`).
#[derive(Clone, Debug)]
pub struct RequestIds {
    /// The client's GUID, or the trace id of the client's `traceparent` as a GUID, or a new one.
    pub request_id: HeaderValue,
    /// The client's id, cleaned; `None` when absent or empty after cleaning.
    pub client_request_id: Option<HeaderValue>,
    /// The request already carries both ids exactly as they go to the pod.
    request_unchanged: bool,
    /// The trace the request belongs to.
    pub trace: TraceContext,
    /// The span the pod gets as its parent in a new `traceparent`; `None` when the client's
    /// goes to the pod unchanged.
    pub upstream_span: Option<[u8; 8]>,
}

/// How a router treats trace context: whether it exports spans, and which new traces it samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracing {
    /// Spans are exported: the router's span is the pod's parent.
    pub exporting: bool,
    /// A new trace (no `traceparent`) is sampled.
    pub sample_new: bool,
}

/// The fields a request's ids and trace context are read from, and whether one of the ids may be
/// repeated (its request to the pod then gets them anew).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdFields<'a> {
    /// The first `x-request-id`.
    pub request_id: Option<&'a [u8]>,
    /// The first `x-ms-client-request-id`.
    pub client_request_id: Option<&'a [u8]>,
    /// The first `traceparent`.
    pub traceparent: Option<&'a [u8]>,
    /// An id field may be repeated.
    pub may_repeat: bool,
}

impl RequestIds {
    /// Applies the id and trace-context rules to the request's id `fields`.
    pub fn read(fields: IdFields<'_>, tracing: Tracing) -> Self {
        let client_guid = fields
            .request_id
            .filter(|v| is_guid(v))
            .and_then(|v| HeaderValue::from_bytes(v).ok());
        let client_trace = fields.traceparent.and_then(TraceContext::parse);
        let sent_client_id = fields.client_request_id;
        let client_request_id = sent_client_id.and_then(clean_client_id);
        let request_unchanged = client_guid.is_some()
            && sent_client_id == client_request_id.as_ref().map(HeaderValue::as_bytes)
            && !fields.may_repeat;
        let (request_id, trace) = match (client_guid, client_trace) {
            (Some(id), Some(trace)) => (id, trace),
            (None, Some(trace)) => (trace.trace_id_guid(), trace),
            (Some(id), None) => {
                let trace_id = *uuid::Uuid::new_v4().as_bytes();
                (id, TraceContext::start(&trace_id, tracing.sample_new))
            }
            (None, None) => {
                let guid = uuid::Uuid::new_v4();
                let trace = TraceContext::start(guid.as_bytes(), tracing.sample_new);
                (guid_value(&guid), trace)
            }
        };
        RequestIds {
            request_unchanged,
            request_id,
            client_request_id,
            upstream_span: (tracing.exporting || client_trace.is_none()).then(new_span_id),
            trace,
        }
    }

    /// The ids of a request whose head was never read (refused by the framing guard): a new
    /// request id, no client id.
    pub fn fresh() -> Self {
        let guid = uuid::Uuid::new_v4();
        RequestIds {
            request_id: guid_value(&guid),
            client_request_id: None,
            request_unchanged: false,
            trace: TraceContext::start(guid.as_bytes(), false),
            upstream_span: None,
        }
    }

    /// Whether the request already carries both ids exactly as they go to the pod.
    pub fn request_unchanged(&self) -> bool {
        self.request_unchanged
    }

    /// The request id as text.
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// Sets both ids on a header map (request to the pod, or response to the client).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(REQUEST_ID.clone(), self.request_id.clone());
        match &self.client_request_id {
            Some(v) => {
                headers.insert(CLIENT_REQUEST_ID.clone(), v.clone());
            }
            None => {
                headers.remove(&CLIENT_REQUEST_ID);
            }
        }
    }
}

/// The response-header policy, as data: the fields every response to a client carries,
/// whatever the exit (a routed response, a router error, a framing refusal), set after the
/// response's own fields — the deployment that served when one was chosen, and the request ids
/// (`x-ms-client-request-id` removed when the client sent none). A header map applies it
/// ([`ResponseHeaders::apply`]); the byte-level path writes a pod's head with the same changes
/// (`proxy::answer`).
#[derive(Clone, Debug)]
pub struct ResponseHeaders {
    deployment: Option<HeaderValue>,
    request_id: HeaderValue,
    client_request_id: Option<HeaderValue>,
}

impl ResponseHeaders {
    /// The fields for a request with `ids`, answered by `deployment` when one was chosen.
    pub fn new(ids: &RequestIds, deployment: Option<&HeaderValue>) -> Self {
        ResponseHeaders {
            deployment: deployment.cloned(),
            request_id: ids.request_id.clone(),
            client_request_id: ids.client_request_id.clone(),
        }
    }

    /// The fields for a routed request with `ids`, answered by `deployment`: its request id is
    /// taken from `ids` (left empty there), not copied (a new id's first copy allocates).
    pub fn taking_request_id(ids: &mut RequestIds, deployment: &HeaderValue) -> Self {
        ResponseHeaders {
            deployment: Some(deployment.clone()),
            request_id: std::mem::replace(&mut ids.request_id, HeaderValue::from_static("")),
            client_request_id: ids.client_request_id.clone(),
        }
    }

    /// The request id the response carries.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The changes, in order: a name with the value that replaces the response's (or is added),
    /// or without one: the name is removed.
    pub fn changes(&self) -> impl Iterator<Item = (&'static HeaderName, Option<&HeaderValue>)> {
        let deployment = self
            .deployment
            .as_ref()
            .map(|d| (&MODEL_DEPLOYMENT, Some(d)));
        deployment.into_iter().chain([
            (&REQUEST_ID, Some(&self.request_id)),
            (&CLIENT_REQUEST_ID, self.client_request_id.as_ref()),
        ])
    }

    /// Makes the changes on `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.changes() {
            match value {
                Some(value) => {
                    headers.insert(name.clone(), value.clone());
                }
                None => {
                    headers.remove(name);
                }
            }
        }
    }
}

/// A new random (v4) GUID as a header value.
pub fn new_request_id() -> HeaderValue {
    guid_value(&uuid::Uuid::new_v4())
}

/// `guid` in its 8-4-4-4-12 form (lower case), as a header value: two digits per byte from a
/// table (a request without an id gets a new one, so this is on every such request's path).
fn guid_value(guid: &uuid::Uuid) -> HeaderValue {
    let mut text = [b'-'; 36];
    let bytes = guid.as_bytes();
    for (from, to, at) in [(0, 4, 0), (4, 6, 9), (6, 8, 14), (8, 10, 19), (10, 16, 24)] {
        write_hex(&bytes[from..to], &mut text[at..at + 2 * (to - from)]);
    }
    HeaderValue::from_bytes(&text).expect("a GUID is a valid header value")
}

/// Whether `value` is a GUID in its 8-4-4-4-12 hexadecimal form.
pub fn is_guid(value: &[u8]) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse_ascii(value).is_ok()
}

fn clean_client_id(value: &[u8]) -> Option<HeaderValue> {
    let clean = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    if !value.is_empty() && value.len() <= CLIENT_REQUEST_ID_MAX && value.iter().all(clean) {
        // Already clean (the usual case): keep the client's value as it is.
        return HeaderValue::from_bytes(value).ok();
    }
    let cleaned: Vec<u8> = value
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        .take(CLIENT_REQUEST_ID_MAX)
        .collect();
    if cleaned.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&cleaned).ok()
}

/// The hop-by-hop headers by definition (RFC 9110 §7.6.1).
fn hop_by_hop_names() -> [&'static HeaderName; 7] {
    [
        &CONNECTION,
        &TRANSFER_ENCODING,
        &TE,
        &TRAILER,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ]
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = hop_by_hop_names();
    // Bit `i` set: the `i`-th of the hop-by-hop names is present.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in `Connection` other than the usual tokens, which are removed anyway
        // or are not header names (`close`).
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|token| {
                !token.is_empty()
                    && !token.eq_ignore_ascii_case(b"close")
                    && !hop
                        .iter()
                        .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
            })
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .collect();
        for name in listed {
            headers.remove(&name);
        }
    }
    for (i, name) in hop.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// A client address as a header value, made once per connection.
pub fn client_ip_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string()).expect("an IP address is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TRACEPARENT;

    /// The ids of a request whose fields are `headers`.
    fn read(headers: &HeaderMap, tracing: Tracing) -> RequestIds {
        let value = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
        let fields = IdFields {
            request_id: value(&REQUEST_ID),
            client_request_id: value(&CLIENT_REQUEST_ID),
            traceparent: value(&TRACEPARENT),
            may_repeat: headers.len() != headers.keys_len(),
        };
        RequestIds::read(fields, tracing)
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn valid_guid_is_kept_and_other_ids_replaced() {
        let guid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        assert_eq!(
            read(&map(&[("x-request-id", guid)]), Tracing::default()).request_id,
            guid
        );
        for bad in [
            "abc",
            "3f2504e04f8911d39a0c0305e82c3301",
            "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
            "",
        ] {
            let ids = read(&map(&[("x-request-id", bad)]), Tracing::default());
            assert_ne!(ids.request_id, bad);
            assert!(is_guid(ids.request_id.as_bytes()));
        }
        assert!(is_guid(
            read(&HeaderMap::new(), Tracing::default())
                .request_id
                .as_bytes()
        ));
    }

    #[test]
    fn trace_context_rules() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // The client's traceparent, no request id: the request id is its trace id; without
        // export the traceparent goes to the pod as it came (no span of the router's).
        let ids = read(&map(&[("traceparent", parent)]), Tracing::default());
        assert_eq!(ids.request_id, "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
        assert!(ids.upstream_span.is_none());
        // With export, the pod's parent is the router's upstream span, same trace and flags.
        let exporting = Tracing {
            exporting: true,
            sample_new: true,
        };
        let ids = read(&map(&[("traceparent", parent)]), exporting);
        let sent = ids.trace.header_for(ids.upstream_span.unwrap());
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"));
        assert_ne!(sent, parent);
        // No traceparent: a new trace whose id is the new request id, not sampled without export.
        let ids = read(&HeaderMap::new(), Tracing::default());
        let sent = ids.trace.header_for(ids.upstream_span.unwrap());
        let sent = sent.to_str().unwrap().to_string();
        let hex: String = ids.request_id_str().chars().filter(|c| *c != '-').collect();
        assert_eq!(&sent[3..35], hex);
        assert!(sent.ends_with("-00"), "{sent}");
        // A request id from the client stays, and the new trace has its own id.
        let guid = "0e706d93-9306-4d6e-939e-e1ad8a9440f1";
        let ids = read(&map(&[("x-request-id", guid)]), Tracing::default());
        assert_eq!(ids.request_id, guid);
        assert_ne!(ids.trace.trace_id_guid(), guid);
    }

    #[test]
    fn client_request_id_is_cleaned_and_cut() {
        let ids = read(
            &map(&[("x-ms-client-request-id", "ab c/d_e-f!")]),
            Tracing::default(),
        );
        assert_eq!(ids.client_request_id.unwrap(), "abcd_e-f");
        let long = "x".repeat(60);
        let ids = read(
            &map(&[("x-ms-client-request-id", &long)]),
            Tracing::default(),
        );
        assert_eq!(ids.client_request_id.unwrap().len(), 40);
        let ids = read(
            &map(&[("x-ms-client-request-id", "!!!")]),
            Tracing::default(),
        );
        assert!(ids.client_request_id.is_none());
    }

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }

    /// A GUID is written as `uuid` writes it (8-4-4-4-12, lower case).
    #[test]
    fn guids_are_written_as_uuid_writes_them() {
        for _ in 0..1000 {
            let guid = uuid::Uuid::new_v4();
            assert_eq!(guid_value(&guid), guid.hyphenated().to_string().as_str());
        }
        let all = uuid::Uuid::from_bytes(std::array::from_fn(|i| (i * 17) as u8));
        assert_eq!(guid_value(&all), all.hyphenated().to_string().as_str());
    }
}

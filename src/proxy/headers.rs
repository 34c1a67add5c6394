//! Header rules: request ids, hop-by-hop removal, and the forwarding headers.
//!
//! `x-request-id` is kept when it is a GUID and replaced otherwise; `x-ms-client-request-id`
//! keeps only `[A-Za-z0-9_-]`, cut to 40 characters (`shared/reference/azureml-fe-behaviour.md`
//! §3.2). Both go to the pod and back to the client.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

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

/// The ids of one request.
#[derive(Clone, Debug)]
pub struct RequestIds {
    /// The client's GUID, or a new one.
    pub request_id: HeaderValue,
    /// The client's id, cleaned; `None` when absent or empty after cleaning.
    pub client_request_id: Option<HeaderValue>,
}

impl RequestIds {
    /// Applies the id rules to the request's headers.
    pub fn read(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get(&REQUEST_ID)
            .filter(|v| is_guid(v.as_bytes()))
            .cloned()
            .unwrap_or_else(new_request_id);
        let client_request_id = headers
            .get(&CLIENT_REQUEST_ID)
            .and_then(|v| clean_client_id(v.as_bytes()));
        RequestIds {
            request_id,
            client_request_id,
        }
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

/// A new random (v4) GUID as a header value.
pub fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a GUID is a valid header value")
}

/// Whether `value` is a GUID in its 8-4-4-4-12 hexadecimal form.
pub fn is_guid(value: &[u8]) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse_ascii(value).is_ok()
}

fn clean_client_id(value: &[u8]) -> Option<HeaderValue> {
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

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("").split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        headers.remove(CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        &TRANSFER_ENCODING,
        &TE,
        &TRAILER,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Appends the client address to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (when the original host is known).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
) {
    let client_text = client.to_string();
    let forwarded_for = match headers.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) if !previous.trim().is_empty() => format!("{previous}, {client_text}"),
        _ => client_text,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(FORWARDED_FOR.clone(), value);
    }
    headers.insert(
        FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(host) => {
            headers.insert(FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            RequestIds::read(&map(&[("x-request-id", guid)])).request_id,
            guid
        );
        for bad in [
            "abc",
            "3f2504e04f8911d39a0c0305e82c3301",
            "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
            "",
        ] {
            let ids = RequestIds::read(&map(&[("x-request-id", bad)]));
            assert_ne!(ids.request_id, bad);
            assert!(is_guid(ids.request_id.as_bytes()));
        }
        assert!(is_guid(
            RequestIds::read(&HeaderMap::new()).request_id.as_bytes()
        ));
    }

    #[test]
    fn client_request_id_is_cleaned_and_cut() {
        let ids = RequestIds::read(&map(&[("x-ms-client-request-id", "ab c/d_e-f!")]));
        assert_eq!(ids.client_request_id.unwrap(), "abcd_e-f");
        let long = "x".repeat(60);
        let ids = RequestIds::read(&map(&[("x-ms-client-request-id", &long)]));
        assert_eq!(ids.client_request_id.unwrap().len(), 40);
        let ids = RequestIds::read(&map(&[("x-ms-client-request-id", "!!!")]));
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

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(
            &mut h,
            "192.0.2.7".parse().unwrap(),
            true,
            Some(HeaderValue::from_static("ml.example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "ml.example.com");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "::1".parse().unwrap(), false, None);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}

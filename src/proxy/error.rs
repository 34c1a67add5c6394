//! Everything the router answers by itself, in one type, rendered in one place: a status from
//! the table in `docs/ARCHITECTURE.md` and a small JSON body with a stable machine-readable
//! code, a message for people, and the request id.
//!
//! ```json
//! {"error":{"code":"QueueTimeout","message":"…","requestId":"3f2504e0-…"}}
//! ```
//!
//! Every exit renders here: rejections of the request path ([`error_response`]) and the
//! refusals the HTTP/1 framing guard writes before a request reaches the proxy
//! ([`http1_refusal`]). Both carry the same response headers
//! ([`super::headers::ResponseHeaders`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::body::ResponseBody;
use super::headers::{RequestIds, ResponseHeaders};
use crate::admission::AdmitError;
use crate::auth::AuthError;
use crate::http1::framing::Violation;
use crate::table::{Deployment, Endpoint};
use crate::telemetry::StatusCounters;

/// Everything the router itself answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterError {
    /// The path is not `/api/v1/endpoint/{endpoint}/…` (and host routing did not match).
    RouteNotFound,
    /// No endpoint with that name.
    EndpointNotFound,
    /// The endpoint's traffic weights are all 0.
    NoDeploymentWithTraffic,
    /// `azureml-model-deployment` names no deployment of the endpoint.
    DeploymentNotFound,
    /// Missing or wrong credentials.
    Unauthorized(AuthError),
    /// The deployment's queue is at its bound.
    QueueFull,
    /// The request waited `max_queue_wait_ms` for a slot.
    QueueTimeout,
    /// The deployment has no ready pod.
    NoReadyPod,
    /// The replica that owns the deployment's slots cannot be reached (fallback `reject`).
    OwnerUnreachable,
    /// The pod sent no response headers within `request_timeout_ms`.
    UpstreamTimeout,
    /// No pod could be connected to.
    UpstreamConnectFailed,
    /// The pod reset the connection or sent an invalid response.
    UpstreamFailed,
    /// The request body is over the limit.
    PayloadTooLarge,
    /// The request body could not be read (bad chunking, client reset).
    BadRequestBody,
    /// An HTTP/2 request whose `Host` names another authority than `:authority` (RFC 9113 §8.3.1).
    HostMismatch,
    /// An HTTP/1 request head the framing guard refused before the proxy saw it.
    Framing(Violation),
    /// An HTTP/1 request head that did not arrive within the header timeout.
    HeadTimeout,
    /// The request body made no progress for the body timeout.
    BodyTimeout,
    /// The client went away before the answer (nginx's 499; never written to a client, only
    /// counted and logged).
    ClientClosedRequest,
    /// Plain HTTP sent to the HTTPS port (answered in plain HTTP, as nginx does).
    PlainHttpToHttpsPort,
}

impl From<AdmitError> for RouterError {
    /// The one place an admission refusal becomes what the client is told.
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::NoReadyPod => RouterError::NoReadyPod,
            AdmitError::QueueFull => RouterError::QueueFull,
            AdmitError::QueueTimeout => RouterError::QueueTimeout,
            AdmitError::OwnerUnreachable => RouterError::OwnerUnreachable,
        }
    }
}

impl RouterError {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            RouterError::RouteNotFound
            | RouterError::EndpointNotFound
            | RouterError::NoDeploymentWithTraffic
            | RouterError::DeploymentNotFound => StatusCode::NOT_FOUND,
            RouterError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RouterError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            RouterError::QueueTimeout | RouterError::NoReadyPod | RouterError::OwnerUnreachable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RouterError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            RouterError::UpstreamConnectFailed | RouterError::UpstreamFailed => {
                StatusCode::BAD_GATEWAY
            }
            RouterError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RouterError::BadRequestBody
            | RouterError::HostMismatch
            | RouterError::PlainHttpToHttpsPort => StatusCode::BAD_REQUEST,
            RouterError::Framing(violation) => violation.status(),
            RouterError::HeadTimeout | RouterError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            RouterError::ClientClosedRequest => client_closed_request(),
        }
    }

    /// The stable code in the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            RouterError::RouteNotFound => "RouteNotFound",
            RouterError::EndpointNotFound => "EndpointNotFound",
            RouterError::NoDeploymentWithTraffic => "NoDeploymentWithTraffic",
            RouterError::DeploymentNotFound => "DeploymentNotFound",
            RouterError::Unauthorized(AuthError::Missing) => "MissingCredentials",
            RouterError::Unauthorized(AuthError::InvalidKey) => "InvalidKey",
            RouterError::Unauthorized(AuthError::InvalidToken) => "InvalidToken",
            RouterError::Unauthorized(AuthError::ExpiredToken) => "ExpiredToken",
            RouterError::QueueFull => "QueueFull",
            RouterError::QueueTimeout => "QueueTimeout",
            RouterError::NoReadyPod => "NoReadyPod",
            RouterError::OwnerUnreachable => "OwnerUnreachable",
            RouterError::UpstreamTimeout => "UpstreamTimeout",
            RouterError::UpstreamConnectFailed => "UpstreamConnectFailed",
            RouterError::UpstreamFailed => "UpstreamFailed",
            RouterError::PayloadTooLarge => "PayloadTooLarge",
            RouterError::BadRequestBody => "BadRequestBody",
            RouterError::HostMismatch => "HostMismatch",
            RouterError::Framing(violation) => violation.code(),
            RouterError::HeadTimeout => "RequestTimeout",
            RouterError::PlainHttpToHttpsPort => "PlainHttpToHttpsPort",
            RouterError::BodyTimeout => "BodyTimeout",
            RouterError::ClientClosedRequest => "ClientClosedRequest",
        }
    }

    /// What happened and what the client can do.
    pub fn message(self) -> &'static str {
        match self {
            RouterError::RouteNotFound => {
                "no endpoint in the request: send it to /api/v1/endpoint/{endpoint}/score"
            }
            RouterError::EndpointNotFound => "no endpoint with this name: check the scoring URI",
            RouterError::NoDeploymentWithTraffic => {
                "the endpoint doesn't have any valid deployment with positive weight: set its traffic, \
                 or name a deployment in the azureml-model-deployment header"
            }
            RouterError::DeploymentNotFound => {
                "the deployment named in azureml-model-deployment does not exist in this endpoint"
            }
            RouterError::Unauthorized(e) => e.message(),
            RouterError::QueueFull => {
                "too many pending requests for this deployment: retry later, or raise its capacity"
            }
            RouterError::QueueTimeout => {
                "no model pod was free within max_queue_wait_ms: retry later, or add capacity"
            }
            RouterError::NoReadyPod => "the deployment has no ready model pod: retry later",
            RouterError::OwnerUnreachable => {
                "the router replica that admits requests for this deployment cannot be reached: retry later"
            }
            RouterError::UpstreamTimeout => {
                "the model did not respond within request_timeout_ms: raise the timeout or speed up scoring"
            }
            RouterError::UpstreamConnectFailed => "the model pod could not be reached",
            RouterError::UpstreamFailed => "the model pod closed the connection or sent an invalid response",
            RouterError::PayloadTooLarge => "the request body is larger than the router accepts",
            RouterError::BadRequestBody => "the request body could not be read",
            RouterError::HostMismatch => "the Host header and :authority name different hosts: send one, or make them equal",
            RouterError::Framing(violation) => violation.message(),
            RouterError::HeadTimeout => {
                "the request head was not received in time: send the whole head promptly"
            }
            RouterError::PlainHttpToHttpsPort => {
                "the plain HTTP request was sent to the HTTPS port: use https://, or the plain HTTP port"
            }
            RouterError::BodyTimeout => {
                "the request body stopped arriving (limits.body_timeout_ms): send the whole body promptly"
            }
            RouterError::ClientClosedRequest => "the client went away before the answer",
        }
    }
}

/// 499, nginx's status for a request whose client went away before the answer.
pub fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).expect("499 is a valid status code")
}

/// A request the router answers itself, with what to count it against.
pub struct Rejection {
    /// The answer.
    pub error: RouterError,
    /// How far routing got.
    pub scope: Scope,
    /// How far the request got after routing (for its access-log line).
    pub attempt: Option<Attempt>,
}

/// How far a rejected request got after routing: queued, then sent to a pod.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// The pod it was admitted on (and sent to), when it got a slot.
    pub pod: Option<SocketAddr>,
    /// Time from its arrival to its slot (or to giving up waiting for one).
    pub queue_wait: Duration,
    /// Time from sending it to the pod to giving up on the pod.
    pub upstream: Option<Duration>,
}

impl Attempt {
    /// A request that waited `queue_wait` and got no slot.
    pub fn queued(queue_wait: Duration) -> Self {
        Attempt {
            pod: None,
            queue_wait,
            upstream: None,
        }
    }

    /// A request admitted on `pod` after `queue_wait`, given up on `upstream` after sending.
    pub fn sent(pod: SocketAddr, queue_wait: Duration, upstream: Duration) -> Self {
        Attempt {
            pod: Some(pod),
            queue_wait,
            upstream: Some(upstream),
        }
    }
}

/// How far routing got before a rejection: it is counted there.
pub enum Scope {
    /// No endpoint is known (404 for the path, 400 for the host).
    Unknown,
    /// The endpoint is known, no deployment yet (401, 404).
    Endpoint(Arc<StatusCounters>),
    /// The deployment is chosen.
    Deployment(Arc<Deployment>),
}

impl Rejection {
    /// A rejection before any endpoint was known.
    pub fn unknown(error: RouterError) -> Self {
        Rejection {
            error,
            scope: Scope::Unknown,
            attempt: None,
        }
    }

    /// A rejection of a request for `endpoint` before a deployment was chosen.
    pub fn at_endpoint(error: RouterError, endpoint: &Endpoint) -> Self {
        Rejection {
            error,
            scope: Scope::Endpoint(endpoint.unrouted.clone()),
            attempt: None,
        }
    }

    /// A rejection of a request for `deployment`.
    pub fn at_deployment(error: RouterError, deployment: &Arc<Deployment>) -> Self {
        Rejection {
            error,
            scope: Scope::Deployment(deployment.clone()),
            attempt: None,
        }
    }

    /// The same rejection, saying how far the request got.
    pub fn after(mut self, attempt: Attempt) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// The name of the deployment, when one was chosen (the response names it).
    pub fn deployment_name(&self) -> Option<&HeaderValue> {
        match &self.scope {
            Scope::Deployment(deployment) => Some(&deployment.name_header),
            Scope::Unknown | Scope::Endpoint(_) => None,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

/// The JSON body of a router error.
fn error_json(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code,
            message,
            request_id,
        },
    })
    .unwrap_or_default()
}

/// The status, headers and body of `error`: `WWW-Authenticate` or `Retry-After` where they
/// apply, and the response headers every exit carries.
fn render(
    error: RouterError,
    ids: &RequestIds,
    deployment: Option<&HeaderValue>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let body = error_json(error.code(), error.message(), ids.request_id_str());
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match error {
        RouterError::Unauthorized(AuthError::Missing) => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        RouterError::Unauthorized(_) => {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        RouterError::QueueFull
        | RouterError::QueueTimeout
        | RouterError::NoReadyPod
        | RouterError::OwnerUnreachable => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    ResponseHeaders::new(ids, deployment).apply(&mut headers);
    (error.status(), headers, body)
}

/// The response for `error` to a request with `ids`, naming `deployment` when one was chosen.
pub fn error_response(
    error: RouterError,
    ids: &RequestIds,
    deployment: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let (status, headers, body) = render(error, ids, deployment);
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The HTTP/1.1 bytes of a refusal written before any request was parsed (a framing violation,
/// a head that timed out): a new request id, and the connection closes after it.
pub fn http1_refusal(error: RouterError) -> Vec<u8> {
    let (status, mut headers, body) = render(error, &RequestIds::fresh(), None);
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    crate::http1::encode::response(status, &headers, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_message_and_request_id() {
        let body = error_json("QueueFull", "too many", "abc");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"error":{"code":"QueueFull","message":"too many","requestId":"abc"}}"#
        );
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let ids = RequestIds::fresh();
        let r = error_response(RouterError::Unauthorized(AuthError::Missing), &ids, None);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        let r = error_response(RouterError::Unauthorized(AuthError::InvalidKey), &ids, None);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
}

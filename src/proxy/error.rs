//! Responses the router writes itself: a status from DESIGN.md's table and a small JSON body
//! with a stable machine-readable code, a message for people, and the request id.
//!
//! ```json
//! {"error":{"code":"QueueTimeout","message":"…","requestId":"3f2504e0-…"}}
//! ```

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::body::ResponseBody;
use crate::auth::AuthError;

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
            RouterError::BadRequestBody | RouterError::HostMismatch => StatusCode::BAD_REQUEST,
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
pub fn error_json(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code,
            message,
            request_id,
        },
    })
    .unwrap_or_default()
}

/// The full response for `error`: status, JSON body, and `WWW-Authenticate` or `Retry-After`
/// where they apply.
pub fn error_response(error: RouterError, request_id: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(error_json(
        error.code(),
        error.message(),
        request_id,
    )));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
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
    response
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
        let r = error_response(RouterError::Unauthorized(AuthError::Missing), "id");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        let r = error_response(RouterError::Unauthorized(AuthError::InvalidKey), "id");
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
}

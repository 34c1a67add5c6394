//! The hyper service: request-level faults (delay, unavailability, injected failures), body
//! reading, the request log, and response helpers.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;
use http::{Method, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use serde_json::Value;

use crate::faults::RequestKind;
use crate::paths::{parse_path, Target};
use crate::requests_log::RecordedRequest;
use crate::routes;
use crate::selectors::Filter;
use crate::server::Shared;
use crate::status::ApiError;
use crate::watch::Chunk;

/// The response body type: a full JSON document or a watch stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// A received request's head with its decoded query parameters.
pub(crate) struct Request {
    parts: http::request::Parts,
    params: Vec<(String, String)>,
}

impl Request {
    fn new(parts: http::request::Parts) -> Self {
        let params = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self { parts, params }
    }

    pub(crate) fn method(&self) -> &Method {
        &self.parts.method
    }

    pub(crate) fn path(&self) -> &str {
        self.parts.uri.path()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first value of a query parameter.
    pub(crate) fn param(&self, name: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Whether a boolean query parameter is `true` (or `1`).
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(self.param(name).as_deref(), Some("true" | "1"))
    }

    /// A numeric query parameter; 400 if it is not a number.
    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.param(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid {name} {v:?}")))
            })
            .transpose()
    }

    /// The `labelSelector` and `fieldSelector` parameters.
    pub(crate) fn filter(&self) -> Result<Filter, ApiError> {
        let (labels, fields) = (self.param("labelSelector"), self.param("fieldSelector"));
        Filter::parse(labels.as_deref(), fields.as_deref())
    }

    /// Whether `Accept` asks for `PartialObjectMetadata` (or its list).
    pub(crate) fn metadata_only(&self) -> bool {
        self.header("accept")
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
    }
}

/// Parses a JSON request body; 400 if it is malformed.
pub(crate) fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut response = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A streamed (chunked) JSON response for watches.
pub(crate) fn stream_response(
    stream: impl Stream<Item = Chunk> + Send + 'static,
) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The `Status` response for an error.
pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.to_status(),
    )
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// What failure rules need to know about a request.
fn request_kind(req: &Request) -> RequestKind {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let collection = matches!(parse_path(req.path()), Some(Target::Object(p)) if p.name.is_none());
    RequestKind {
        write,
        list: *req.method() == Method::GET && collection && !req.flag("watch"),
    }
}

/// Serves one request and records it in the request log.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let at = SystemTime::now();
    let (parts, body) = req.into_parts();
    let req = Request::new(parts);
    let delay = shared.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = if shared.faults.is_unavailable() {
        error_response(&ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ))
    } else if let Some(code) = shared
        .faults
        .injected_failure(request_kind(&req), req.path())
    {
        error_response(&ApiError::new(
            code,
            reason_for(code),
            "failure injected by a fault hook",
        ))
    } else {
        match body.collect().await {
            Ok(collected) => routes::dispatch(&shared, &req, &collected.to_bytes()),
            Err(e) => error_response(&ApiError::bad_request(format!(
                "could not read the request body: {e}"
            ))),
        }
    };
    let header = |name: &str| req.header(name).map(str::to_string);
    shared.log.push(RecordedRequest {
        method: req.method().to_string(),
        path: req.path().to_string(),
        query: req.parts.uri.query().map(str::to_string),
        accept: header("accept"),
        accept_encoding: header("accept-encoding"),
        content_type: header("content-type"),
        field_manager: req.param("fieldManager"),
        status: response.status().as_u16(),
        at,
    });
    Ok(response)
}

//! The hyper service: steps 1–8 of the request path (DESIGN.md), in order, in [`Proxy::route`].
//!
//! 1 target → 2 snapshot → 3 auth → 4 choose → 5 admit → 6 forward → 7 respond → 8 record.
//! Every early exit is a [`RouterError`] answered by [`Proxy::reject`]; every routed response
//! carries `azureml-model-deployment`, `x-request-id` and, when sent, `x-ms-client-request-id`.

pub mod body;
pub mod error;
pub mod headers;
pub mod mirror;
pub mod target;

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, CONTENT_LENGTH, EXPECT, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::admission::{AdmitError, Admitter};
use crate::table::{Deployment, TableHandle};
use crate::telemetry::{AccessLog, Metrics, RequestRecord, StatusCounters};
use crate::upstream::{
    Ending, Exchange, MirrorTee, RequestBody, RequestBodyError, SendError, Upstream,
};

pub use body::ResponseBody;
pub use error::RouterError;
use headers::{RequestIds, MODEL_DEPLOYMENT};

/// Settings of the proxy itself (listeners and limits on connections live in the server).
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Largest request body accepted (413 above).
    pub max_request_body_bytes: u64,
    /// Largest body copied to a mirror deployment; larger requests are not mirrored.
    pub mirror_max_body_bytes: usize,
    /// `Some("ml.example.com")` routes `Host: {endpoint}.ml.example.com` (lowercase, no dot).
    pub host_domain: Option<String>,
}

/// The connection a request came in on.
#[derive(Clone, Debug)]
pub struct ClientConn {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's IP as a header value, formatted once per connection.
    client_ip: HeaderValue,
}

impl ClientConn {
    /// A connection from `remote`, over TLS or not.
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        ClientConn {
            remote,
            tls,
            client_ip: headers::client_ip_value(remote.ip()),
        }
    }
}

/// An early answer, with what to count it against.
struct Rejection {
    error: RouterError,
    counters: Counted,
}

enum Counted {
    Unknown,
    Endpoint(Arc<StatusCounters>),
    Deployment(Arc<Deployment>),
}

impl Rejection {
    fn unknown(error: RouterError) -> Self {
        Rejection {
            error,
            counters: Counted::Unknown,
        }
    }
}

/// The router's request handler.
pub struct Proxy {
    table: TableHandle,
    admitter: Admitter,
    upstream: Upstream,
    settings: ProxySettings,
    access_log: AccessLog,
    unknown: StatusCounters,
}

/// What step 6 hands to step 7.
struct Forwarded {
    response: Response<Incoming>,
    exchange: Exchange,
}

enum ForwardError {
    ConnectFailed,
    Failed(hyper::Error),
}

impl Proxy {
    /// A proxy reading routes from `table` and admitting through `admitter`.
    pub fn new(
        table: TableHandle,
        admitter: Admitter,
        upstream: Upstream,
        settings: ProxySettings,
        access_log: AccessLog,
        metrics: &Metrics,
    ) -> Self {
        Proxy {
            table,
            admitter,
            upstream,
            settings,
            access_log,
            unknown: StatusCounters::new(metrics, "", ""),
        }
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ClientConn,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let ids = RequestIds::read(request.headers());
        match self.route(request, conn, &ids, started).await {
            Ok(response) => response,
            Err(rejection) => self.reject(rejection, &ids, started),
        }
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        conn: ClientConn,
        ids: &RequestIds,
        started: Instant,
    ) -> Result<Response<ResponseBody>, Rejection> {
        // 1 target, 2 snapshot, 3 auth, 4 choose: all against one snapshot, released before awaiting.
        if host_mismatch(&request) {
            return Err(Rejection::unknown(RouterError::HostMismatch));
        }
        let (deployment, mirror_to, forward_path) = {
            let (endpoint_name, forward_path) = self
                .target(&request)
                .ok_or_else(|| Rejection::unknown(RouterError::RouteNotFound))?;
            let table = self.table.load();
            let endpoint = table
                .endpoint(endpoint_name)
                .ok_or_else(|| Rejection::unknown(RouterError::EndpointNotFound))?;
            let reject = |error| Rejection {
                error,
                counters: Counted::Endpoint(endpoint.unrouted.clone()),
            };
            endpoint
                .auth
                .check(request.headers())
                .map_err(|e| reject(RouterError::Unauthorized(e)))?;
            let (deployment, named) = match request.headers().get(&MODEL_DEPLOYMENT) {
                Some(name) => (
                    endpoint
                        .deployment_named(name.as_bytes())
                        .ok_or_else(|| reject(RouterError::DeploymentNotFound))?,
                    true,
                ),
                None => (
                    endpoint
                        .choose()
                        .ok_or_else(|| reject(RouterError::NoDeploymentWithTraffic))?,
                    false,
                ),
            };
            // Requests that name a deployment are not mirrored (Azure ML's rule).
            let mirror_to = if named {
                None
            } else {
                endpoint.mirror_roll().cloned()
            };
            (deployment.clone(), mirror_to, forward_path)
        };
        let reject = |error| Rejection {
            error,
            counters: Counted::Deployment(deployment.clone()),
        };
        if declared_length(&request).is_some_and(|n| n > self.settings.max_request_body_bytes) {
            return Err(reject(RouterError::PayloadTooLarge));
        }

        // 5 admit
        let max_wait = Duration::from_millis(deployment.settings.max_queue_wait_ms);
        let slot = self
            .admitter
            .admit(deployment.target(), max_wait)
            .await
            .map_err(|e| {
                reject(match e {
                    AdmitError::NoReadyPod => RouterError::NoReadyPod,
                    AdmitError::QueueFull => RouterError::QueueFull,
                    AdmitError::QueueTimeout => RouterError::QueueTimeout,
                    AdmitError::OwnerUnreachable => RouterError::OwnerUnreachable,
                })
            })?;
        let queue_wait = started.elapsed();
        deployment
            .metrics
            .queue_wait()
            .record(queue_wait.as_secs_f64());

        // 6 forward
        let (parts, body) = request.into_parts();
        let method = parts.method.clone();
        let client_path = parts.uri.path_and_query().cloned();
        let (tee, mirror_body) = match &mirror_to {
            Some(_) => {
                let (done, body) = oneshot::channel();
                (
                    Some(MirrorTee::new(self.settings.mirror_max_body_bytes, done)),
                    Some(body),
                )
            }
            None => (None, None),
        };
        let body = RequestBody::streaming(body, self.settings.max_request_body_bytes, tee);
        let exchange = self.upstream.exchange(slot);
        let upstream_request =
            self.upstream_request(parts, body, forward_path, ids, &conn, exchange.authority());
        if let (Some(mirror), Some(mirror_body)) = (mirror_to, mirror_body) {
            let head = mirror::MirrorHead {
                method: upstream_request.method().clone(),
                uri: upstream_request.uri().clone(),
                headers: upstream_request.headers().clone(),
            };
            mirror::spawn(
                self.upstream.clone(),
                self.admitter.clone(),
                mirror,
                head,
                mirror_body,
            );
        }
        let sent_at = Instant::now();
        let timeout = Duration::from_millis(deployment.settings.request_timeout_ms);
        let exchange = match tokio::time::timeout(
            timeout,
            self.forward(&deployment, exchange, upstream_request),
        )
        .await
        {
            Err(_) => return Err(reject(RouterError::UpstreamTimeout)),
            Ok(Err(ForwardError::ConnectFailed)) => {
                return Err(reject(RouterError::UpstreamConnectFailed))
            }
            Ok(Err(ForwardError::Failed(e))) => return Err(reject(classify_failure(&e))),
            Ok(Ok(exchange)) => exchange,
        };
        let upstream_time = sent_at.elapsed();

        // 7 respond
        let Forwarded { response, exchange } = exchange;
        let pod = exchange.pod().address();
        let (mut head, body) = exchange.respond(response).into_parts();
        headers::strip_hop_by_hop(&mut head.headers);
        head.headers
            .insert(MODEL_DEPLOYMENT.clone(), deployment.name_header.clone());
        ids.apply(&mut head.headers);
        let status = head.status.as_u16();

        // 8 record (the access-log line is written when the body ends)
        let metrics = &deployment.metrics;
        metrics.requests.record(status);
        metrics.duration().record(started.elapsed().as_secs_f64());
        metrics
            .upstream_duration()
            .record(upstream_time.as_secs_f64());
        let record = self.access_log.wants(status).then(|| {
            Box::new(RequestRecord {
                started,
                request_id: ids.request_id.clone(),
                method,
                path: client_path,
                endpoint: deployment.endpoint.clone(),
                deployment: deployment.name.clone(),
                pod,
                status,
                queue_wait,
                upstream: upstream_time,
                client: conn.remote,
            })
        });
        Ok(Response::from_parts(
            head,
            ResponseBody::streaming(body, record),
        ))
    }

    /// Step 1: the endpoint name and the path to send to the pod.
    fn target<'r>(&self, request: &'r Request<Incoming>) -> Option<(&'r str, PathAndQuery)> {
        let uri = request.uri();
        if let Some((endpoint, rest)) = target::from_path(uri.path()) {
            let path = match uri.query() {
                Some(query) => PathAndQuery::try_from(format!("{rest}?{query}")).ok()?,
                None => PathAndQuery::try_from(rest).ok()?,
            };
            return Some((endpoint, path));
        }
        let domain = self.settings.host_domain.as_deref()?;
        // The request target's authority wins over Host (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(HOST).and_then(|h| h.to_str().ok()))?;
        let endpoint = target::from_host(host, domain)?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Some((endpoint, path))
    }

    /// Step 6a: the request as the pod gets it.
    fn upstream_request(
        &self,
        mut parts: Parts,
        body: RequestBody,
        path: PathAndQuery,
        ids: &RequestIds,
        conn: &ClientConn,
        pod_authority: &HeaderValue,
    ) -> Request<RequestBody> {
        let mut present = headers::Present::scan(&parts.headers);
        let original_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(HOST).cloned());
        let headers = &mut parts.headers;
        headers::strip_present_hop_by_hop(headers, &mut present);
        if present.authorization {
            // The credential is for the router, not for the model's code.
            headers.remove(AUTHORIZATION);
        }
        if present.expect {
            // The router already answered `100-continue` by reading the body.
            headers.remove(EXPECT);
        }
        if !present.host || parts.uri.authority().is_some() {
            // An authority in the target (HTTP/2, or HTTP/1 absolute form) is the host; an
            // origin-form request keeps its Host as it is.
            headers.insert(
                HOST,
                original_host
                    .clone()
                    .unwrap_or_else(|| pod_authority.clone()),
            );
        }
        headers::add_present_forwarded(headers, &present, &conn.client_ip, conn.tls, original_host);
        ids.apply_to_request(headers);
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }

    /// Step 6b: sends on the admitted pod; when connecting fails (nothing was sent), retries once
    /// on another pod that has a free slot now.
    async fn forward(
        &self,
        deployment: &Arc<Deployment>,
        mut exchange: Exchange,
        request: Request<RequestBody>,
    ) -> Result<Forwarded, ForwardError> {
        let (request, error) = match exchange.send(request).await {
            Ok(response) => return Ok(Forwarded { response, exchange }),
            Err(SendError::Failed(e)) => {
                exchange.end(Ending::Discarded);
                return Err(ForwardError::Failed(e));
            }
            Err(SendError::NotSent { request, error }) => (request, error),
        };
        deployment.metrics.connect_errors().increment(1);
        let failed_pod = exchange.pod().clone();
        tracing::debug!(pod = %failed_pod.address(), %error, "connecting to the pod failed; retrying elsewhere");
        exchange.end(Ending::Discarded);
        let retry = self
            .admitter
            .retry(deployment.target(), &failed_pod)
            .await
            .ok_or(ForwardError::ConnectFailed)?;
        let mut exchange = self.upstream.exchange(retry);
        match exchange.send(*request).await {
            Ok(response) => Ok(Forwarded { response, exchange }),
            Err(SendError::Failed(e)) => {
                exchange.end(Ending::Discarded);
                Err(ForwardError::Failed(e))
            }
            Err(SendError::NotSent { error, .. }) => {
                deployment.metrics.connect_errors().increment(1);
                tracing::debug!(pod = %exchange.pod().address(), %error, "connecting to the retry pod failed");
                exchange.end(Ending::Discarded);
                Err(ForwardError::ConnectFailed)
            }
        }
    }

    /// Answers with a router error, counting it and logging it with the request id.
    fn reject(
        &self,
        rejection: Rejection,
        ids: &RequestIds,
        started: Instant,
    ) -> Response<ResponseBody> {
        let error = rejection.error;
        let status = error.status().as_u16();
        let mut response = error::error_response(error, ids.request_id_str());
        ids.apply(response.headers_mut());
        let (endpoint, deployment): (&str, &str) = match &rejection.counters {
            Counted::Unknown => {
                self.unknown.record(status);
                ("", "")
            }
            Counted::Endpoint(counters) => {
                counters.record(status);
                ("", "")
            }
            Counted::Deployment(d) => {
                d.metrics.requests.record(status);
                d.metrics.duration().record(started.elapsed().as_secs_f64());
                response
                    .headers_mut()
                    .insert(MODEL_DEPLOYMENT.clone(), d.name_header.clone());
                (&d.endpoint, &d.name)
            }
        };
        if self.access_log.wants(status) {
            tracing::info!(
                target: "scoregate::access",
                request_id = ids.request_id_str(),
                endpoint,
                deployment,
                status,
                code = error.code(),
                total_ms = crate::telemetry::ms(started.elapsed()),
                "rejected"
            );
        }
        response
    }
}

/// An HTTP/2 request whose `Host` header names another authority than `:authority`.
fn host_mismatch<B>(request: &Request<B>) -> bool {
    if request.version() != Version::HTTP_2 {
        return false;
    }
    match (request.uri().authority(), request.headers().get(HOST)) {
        (Some(authority), Some(host)) => !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes()),
        _ => false,
    }
}

/// The request's `Content-Length`, when it has exactly one valid one.
fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Which router error an exchange failure is: the client's body (413, 400) or the pod (502).
fn classify_failure(error: &hyper::Error) -> RouterError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(body_error) = cause.downcast_ref::<RequestBodyError>() {
            return match body_error {
                RequestBodyError::TooLarge { .. } => RouterError::PayloadTooLarge,
                RequestBodyError::Client(_) => RouterError::BadRequestBody,
            };
        }
        source = cause.source();
    }
    RouterError::UpstreamFailed
}

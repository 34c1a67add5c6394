//! Phase "route": which deployment serves a request, from one snapshot of the routing table.
//!
//! The endpoint comes from the path (`/api/v1/endpoint/{endpoint}/…`) or, with a host domain,
//! from the host; its credentials are checked; the deployment is the one named in
//! `azureml-model-deployment`, else one chosen by traffic weight; a share of the requests that
//! name no deployment is mirrored. A declared body over the limit is refused here, before the
//! request waits for a slot. Nothing here awaits: the snapshot is released before the request
//! waits for anything.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Version};

use super::context::ProxySettings;
use super::error::{Rejection, RouterError};
use super::headers::MODEL_DEPLOYMENT;
use super::target;
use crate::table::{Deployment, Endpoint, TableHandle};

/// Where a routed request goes.
pub struct Routed {
    /// The deployment that serves it.
    pub deployment: Arc<Deployment>,
    /// What forwarding needs besides the deployment.
    pub target: UpstreamTarget,
}

/// The path the pod gets, and the deployment a copy goes to.
pub struct UpstreamTarget {
    /// Path and query as the pod gets them.
    pub path: PathAndQuery,
    /// The mirror deployment, when this request is one of the mirrored share.
    pub mirror: Option<Arc<Deployment>>,
}

/// Routes `request` with the table's current snapshot.
pub fn route<B>(
    table: &TableHandle,
    settings: &ProxySettings,
    request: &Request<B>,
) -> Result<Routed, Rejection> {
    if host_mismatch(request) {
        return Err(Rejection::unknown(RouterError::HostMismatch));
    }
    let (endpoint_name, path) = target_of(settings, request)
        .ok_or_else(|| Rejection::unknown(RouterError::RouteNotFound))?;
    let (deployment, mirror) = {
        let table = table.load();
        let endpoint = table
            .endpoint(endpoint_name)
            .ok_or_else(|| Rejection::unknown(RouterError::EndpointNotFound))?;
        choose(endpoint, request.headers())?
    };
    if declared_length(request).is_some_and(|n| n > settings.max_request_body_bytes) {
        return Err(Rejection::at_deployment(
            RouterError::PayloadTooLarge,
            &deployment,
        ));
    }
    Ok(Routed {
        deployment,
        target: UpstreamTarget { path, mirror },
    })
}

/// Authenticates against `endpoint` and chooses its deployment, and the mirror when this request
/// is mirrored (requests that name a deployment never are: Azure ML's rule).
fn choose(
    endpoint: &Endpoint,
    headers: &HeaderMap,
) -> Result<(Arc<Deployment>, Option<Arc<Deployment>>), Rejection> {
    let reject = |error| Rejection::at_endpoint(error, endpoint);
    endpoint
        .auth
        .check(headers)
        .map_err(|e| reject(RouterError::Unauthorized(e)))?;
    match headers.get(&MODEL_DEPLOYMENT) {
        Some(name) => endpoint
            .deployment_named(name.as_bytes())
            .map(|deployment| (deployment.clone(), None))
            .ok_or_else(|| reject(RouterError::DeploymentNotFound)),
        None => endpoint
            .choose()
            .map(|deployment| (deployment.clone(), endpoint.mirror_roll().cloned()))
            .ok_or_else(|| reject(RouterError::NoDeploymentWithTraffic)),
    }
}

/// The endpoint name and the path to send to the pod.
fn target_of<'r, B>(
    settings: &ProxySettings,
    request: &'r Request<B>,
) -> Option<(&'r str, PathAndQuery)> {
    let uri = request.uri();
    if let Some((endpoint, rest)) = target::from_path(uri.path()) {
        let path = match uri.query() {
            Some(query) => PathAndQuery::try_from(format!("{rest}?{query}")).ok()?,
            None => PathAndQuery::try_from(rest).ok()?,
        };
        return Some((endpoint, path));
    }
    let domain = settings.host_domain.as_deref()?;
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

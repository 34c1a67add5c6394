//! Phase "route": which deployment serves a request, from one snapshot of the routing table.
//!
//! The endpoint comes from the path (`/api/v1/endpoint/{endpoint}/…`) or, with a host domain,
//! from the host; its credentials are checked; the deployment is the one named in
//! `azureml-model-deployment`, else one chosen by traffic weight; a share of the requests that
//! name no deployment is mirrored. A declared body over the limit is refused here, before the
//! request waits for a slot. Nothing here awaits: the snapshot is released before the request
//! waits for anything.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;

use super::context::ProxySettings;
use super::error::{Rejection, RouterError};
use super::request::ClientRequest;
use super::target;
use crate::http1::head::Known;
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
    pub path: PodPath,
    /// The mirror deployment, when this request is one of the mirrored share.
    pub mirror: Option<Arc<Deployment>>,
}

/// The path and query the pod gets.
#[derive(Clone, Debug)]
pub enum PodPath {
    /// Made for the pod.
    Made(PathAndQuery),
    /// A part of the client's own target, shared with its head (the byte-level path).
    Sent(Bytes),
}

impl PodPath {
    /// The path and query as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            PodPath::Made(path) => path.as_str().as_bytes(),
            PodPath::Sent(bytes) => bytes,
        }
    }

    /// The path and query as a `PathAndQuery`.
    pub fn into_path_and_query(self) -> PathAndQuery {
        match self {
            PodPath::Made(path) => path,
            PodPath::Sent(bytes) => PathAndQuery::from_maybe_shared(bytes)
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
        }
    }
}

/// Routes `request` with the table's current snapshot.
pub fn route<B>(
    table: &TableHandle,
    settings: &ProxySettings,
    request: &ClientRequest<B>,
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
        choose(endpoint, request)?
    };
    if request
        .declared_length()
        .is_some_and(|n| n > settings.max_request_body_bytes)
    {
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
fn choose<B>(
    endpoint: &Endpoint,
    request: &ClientRequest<B>,
) -> Result<(Arc<Deployment>, Option<Arc<Deployment>>), Rejection> {
    let reject = |error| Rejection::at_endpoint(error, endpoint);
    endpoint
        .auth
        .check(request.field(Known::Authorization))
        .map_err(|e| reject(RouterError::Unauthorized(e)))?;
    match request.field(Known::ModelDeployment) {
        Some(name) => endpoint
            .deployment_named(name)
            .map(|deployment| (deployment.clone(), None))
            .ok_or_else(|| reject(RouterError::DeploymentNotFound)),
        None => endpoint
            .choose()
            .map(|deployment| (deployment.clone(), endpoint.mirror_roll().cloned()))
            .ok_or_else(|| reject(RouterError::NoDeploymentWithTraffic)),
    }
}

/// The endpoint name and the path to send to the pod.
pub(super) fn target_of<'r, B>(
    settings: &ProxySettings,
    request: &'r ClientRequest<B>,
) -> Option<(&'r str, PodPath)> {
    let path = request.path();
    if let Some((endpoint, rest)) = target::from_path(path) {
        // `rest` is the end of the path, or `/` when the path names only the endpoint.
        let from = path.len() - rest.len();
        let sent = (path[from..].as_ptr() == rest.as_ptr())
            .then(|| request.sent_path_from(from))
            .flatten();
        let path = match (sent, request.query()) {
            (Some(sent), _) => PodPath::Sent(sent),
            (None, Some(query)) => {
                PodPath::Made(PathAndQuery::try_from(format!("{rest}?{query}")).ok()?)
            }
            (None, None) => PodPath::Made(PathAndQuery::try_from(rest).ok()?),
        };
        return Some((endpoint, path));
    }
    let domain = settings.host_domain.as_deref()?;
    // The request target's authority wins over Host (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    let host = request
        .authority()
        .or_else(|| request.field(Known::Host).and_then(visible_ascii))?;
    let endpoint = target::from_host(host, domain)?;
    let path = match request.sent_path_from(0) {
        Some(sent) => PodPath::Sent(sent),
        None => PodPath::Made(
            request
                .path_and_query()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ),
    };
    Some((endpoint, path))
}

/// `value` as text when it is visible ASCII, spaces and tabs (what `HeaderValue::to_str` takes).
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|b| *b == b'\t' || (b' '..0x7f).contains(b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// An HTTP/2 request whose `Host` header names another authority than `:authority`.
fn host_mismatch<B>(request: &ClientRequest<B>) -> bool {
    if !request.is_http2() {
        return false;
    }
    match (request.authority(), request.field(Known::Host)) {
        (Some(authority), Some(host)) => !authority.as_bytes().eq_ignore_ascii_case(host),
        _ => false,
    }
}

//! The internal port: answers other replicas' hellos, grants, reports and sync notices.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use super::credential::{Credential, NONCE, PROOF};
use super::lease::LeaseBody;
use super::{protocol, Cluster};
use crate::admission::AdmitError;
use crate::table::Deployment;

/// A response of the internal port.
pub type Answer = Response<Either<Empty<Bytes>, LeaseBody>>;

/// Streams one peer may hold open at once: every lease it holds is one.
const MAX_STREAMS_PER_PEER: u32 = 1 << 20;
/// Longest queue wait a grant request may ask for (the Kubernetes endpoint maximum).
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Per-connection state: the challenge sent, and whether the peer answered it.
#[derive(Default)]
struct ConnectionState {
    server_nonce: Mutex<Option<String>>,
    authenticated: AtomicBool,
}

/// Serves the internal port until the cluster stops.
pub async fn serve(listener: TcpListener, cluster: Arc<Cluster>) {
    let stop = cluster.stopped.clone();
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_PEER)
        // Abandoned grant requests are reset by their requester: allow many from a peer that
        // proved the credential (a connection that did not gets nothing but 401s).
        .max_pending_accept_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .keep_alive_timeout(Duration::from_secs(2));
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cluster port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let cluster = cluster.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let state = Arc::new(ConnectionState::default());
            let service = service_fn(move |request| {
                let cluster = cluster.clone();
                let state = state.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(&cluster, &state, request, remote).await,
                    )
                }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(
    cluster: &Arc<Cluster>,
    state: &ConnectionState,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Answer {
    match request.uri().path() {
        protocol::HELLO => return hello(cluster, state, &request),
        protocol::AUTH => return authenticate(cluster, state, &request, remote),
        _ => {}
    }
    if !state.authenticated.load(Ordering::Acquire) {
        cluster.metrics.refused.increment(1);
        // Per request, so at debug: a connection that fails the proof is logged once, at warn.
        tracing::debug!(%remote, path = request.uri().path(), "cluster port: refused a request from a connection that has not proved the shared credential");
        return status(StatusCode::UNAUTHORIZED, None);
    }
    match request.uri().path() {
        protocol::GRANT => grant(cluster, request).await,
        protocol::ADOPT => adopt(cluster, request),
        protocol::SYNCED => synced(cluster, &request),
        _ => status(StatusCode::NOT_FOUND, None),
    }
}

fn hello(cluster: &Cluster, state: &ConnectionState, request: &Request<Incoming>) -> Answer {
    let Some(client_nonce) = request.headers().get(&NONCE).filter(|n| n.len() <= 64) else {
        return status(StatusCode::BAD_REQUEST, None);
    };
    let server_nonce = Credential::nonce();
    let proof = cluster
        .credential
        .server_proof(client_nonce.as_bytes(), server_nonce.as_bytes());
    let mut response = status(StatusCode::OK, None);
    let headers = response.headers_mut();
    headers.insert(
        &NONCE,
        HeaderValue::from_str(&server_nonce).expect("base64url"),
    );
    headers.insert(&PROOF, HeaderValue::from_str(&proof).expect("base64url"));
    headers.insert(&protocol::PEER, cluster.me_header.clone());
    headers.insert(
        &protocol::READY,
        HeaderValue::from_static(if cluster.is_ready() { "true" } else { "false" }),
    );
    *state.server_nonce.lock() = Some(server_nonce);
    response
}

fn authenticate(
    cluster: &Cluster,
    state: &ConnectionState,
    request: &Request<Incoming>,
    remote: SocketAddr,
) -> Answer {
    let nonce = state.server_nonce.lock().take();
    let proved = match (nonce, request.headers().get(&PROOF)) {
        (Some(nonce), Some(proof)) => cluster
            .credential
            .verify_client(nonce.as_bytes(), proof.as_bytes()),
        _ => false,
    };
    if proved {
        state.authenticated.store(true, Ordering::Release);
        status(StatusCode::NO_CONTENT, None)
    } else {
        cluster.metrics.refused.increment(1);
        tracing::warn!(%remote, "cluster port: a connection failed to prove the shared credential: check that every replica has the same cluster secret");
        status(StatusCode::UNAUTHORIZED, None)
    }
}

/// The deployment a request names, from the current table.
fn deployment_of(cluster: &Cluster, request: &Request<Incoming>) -> Option<Arc<Deployment>> {
    let key = request
        .headers()
        .get(&protocol::DEPLOYMENT)?
        .to_str()
        .ok()?;
    let (endpoint, deployment) = protocol::split_key(key)?;
    let table = cluster.table.load();
    table
        .endpoint(endpoint)?
        .deployment_named(deployment.as_bytes())
        .cloned()
}

fn millis(request: &Request<Incoming>, name: &http::HeaderName) -> Option<Duration> {
    let ms: u64 = request.headers().get(name)?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_WAIT))
}

async fn grant(cluster: &Arc<Cluster>, request: Request<Incoming>) -> Answer {
    if !cluster.is_ready() {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(protocol::REASON_NOT_READY),
        );
    }
    let Some(deployment) = deployment_of(cluster, &request) else {
        return status(
            StatusCode::NOT_FOUND,
            Some(protocol::REASON_UNKNOWN_DEPLOYMENT),
        );
    };
    let wait = millis(&request, &protocol::WAIT_MS).unwrap_or_default();
    let exclude: Option<SocketAddr> = request
        .headers()
        .get(&protocol::EXCLUDE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let deadline = Instant::now() + wait;
    cluster
        .wait_for_handover(&deployment.endpoint, &deployment.name, deadline)
        .await;
    let admitted = match exclude {
        Some(address) => {
            let excluded = deployment.pods.iter().find(|p| p.address() == address);
            deployment
                .admission
                .try_acquire_excluding(&deployment.pods, excluded)
                .ok_or(AdmitError::NoReadyPod)
        }
        None => {
            let wait = deadline.saturating_duration_since(Instant::now());
            deployment.admission.admit(&deployment.pods, wait).await
        }
    };
    let slot = match admitted {
        Ok(slot) => slot,
        Err(error) => {
            let (code, reason) = protocol::refusal(error);
            return status(code, Some(reason));
        }
    };
    cluster.metrics.served.increment(1);
    let pod = HeaderValue::from_str(&slot.pod().address().to_string()).expect("an address");
    let expires =
        Instant::now() + deployment.settings.request_timeout + cluster.settings.lease_margin;
    let body = LeaseBody::new(
        slot,
        request.into_body(),
        expires,
        cluster.metrics.expiries.clone(),
    );
    let mut response = Response::new(Either::Right(body));
    response.headers_mut().insert(&protocol::POD, pod);
    response
}

fn adopt(cluster: &Arc<Cluster>, request: Request<Incoming>) -> Answer {
    let Some(deployment) = deployment_of(cluster, &request) else {
        return status(
            StatusCode::NOT_FOUND,
            Some(protocol::REASON_UNKNOWN_DEPLOYMENT),
        );
    };
    let address: Option<SocketAddr> = request
        .headers()
        .get(&protocol::POD)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // A pod that is no longer routable gets no new requests: its slots need no accounting.
    let Some(pod) = address.and_then(|a| deployment.pods.iter().find(|p| p.address() == a)) else {
        return status(StatusCode::NOT_FOUND, None);
    };
    let lease = millis(&request, &protocol::LEASE_MS).unwrap_or_default();
    let (slot, over) = deployment.admission.force_acquire(pod);
    if over {
        cluster.metrics.over_admissions.increment(1);
        tracing::warn!(
            endpoint = %deployment.endpoint,
            deployment = %deployment.name,
            pod = %pod.address(),
            in_flight = pod.in_flight(),
            cap = deployment.admission.cap(),
            "a reported slot puts the pod above its cap: it was over-admitted during the handover"
        );
    }
    let body = LeaseBody::new(
        slot,
        request.into_body(),
        Instant::now() + lease,
        cluster.metrics.expiries.clone(),
    );
    Response::new(Either::Right(body))
}

fn synced(cluster: &Cluster, request: &Request<Incoming>) -> Answer {
    let peer = request
        .headers()
        .get(&protocol::PEER)
        .and_then(|v| v.to_str().ok());
    let view = request
        .headers()
        .get(&protocol::VIEW)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok());
    match (peer, view) {
        (Some(peer), Some(view)) => {
            cluster.peer_synced(peer.into(), view);
            status(StatusCode::NO_CONTENT, None)
        }
        _ => status(StatusCode::BAD_REQUEST, None),
    }
}

fn status(code: StatusCode, reason: Option<&'static str>) -> Answer {
    let mut response = Response::new(Either::Left(Empty::new()));
    *response.status_mut() = code;
    if let Some(reason) = reason {
        response
            .headers_mut()
            .insert(&protocol::REASON, HeaderValue::from_static(reason));
    }
    response
}

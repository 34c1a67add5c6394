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

use super::announce::{Announce, INSTANCE};
use super::credential::{Credential, NONCE, PROOF};
use super::held::REPORTED_LEASE;
use super::lease::{ConnectionEnd, Holder, LeaseBody};
use super::view::Owner;
use super::view_id::ViewId;
use super::{protocol, Cluster};
use crate::admission::{AdmitError, Slot};
use crate::table::Deployment;

/// A response of the internal port.
pub type Answer = Response<Either<Empty<Bytes>, LeaseBody>>;

/// Streams one peer may hold open at once: every lease it holds is one.
const MAX_STREAMS_PER_PEER: u32 = 1 << 20;
/// Longest queue wait a grant request may ask for (the Kubernetes endpoint maximum).
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Per-connection state: the challenge sent, whether the peer answered it, and how the
/// connection ends (for the leases it carries).
#[derive(Default)]
struct ConnectionState {
    server_nonce: Mutex<Option<String>>,
    authenticated: AtomicBool,
    /// When the peer proved the credential on this connection.
    authenticated_at: Mutex<Option<Instant>>,
    end: Arc<ConnectionEnd>,
}

/// The replicas whose failed proofs were logged already (once per claimed identity).
#[derive(Default)]
struct Refusals {
    logged: Mutex<std::collections::HashSet<String>>,
}

impl Refusals {
    /// Whether `who`'s failure is new (and so worth a log line).
    fn first(&self, who: &str) -> bool {
        self.logged.lock().insert(who.to_owned())
    }
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
    let refusals = Arc::new(Refusals::default());
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
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let state = Arc::new(ConnectionState::default());
            let end = state.end.clone();
            let service = service_fn(move |request| {
                let cluster = cluster.clone();
                let state = state.clone();
                let refusals = refusals.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(&cluster, &state, &refusals, request, remote).await,
                    )
                }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                ended = connection => {
                    if let Err(error) = &ended {
                        tracing::debug!(%remote, %error, "cluster port: a peer's connection failed");
                    }
                    end.end(ended.is_err());
                }
                _ = stop.cancelled() => end.end(false),
            }
        });
    }
}

async fn answer(
    cluster: &Arc<Cluster>,
    state: &ConnectionState,
    refusals: &Refusals,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Answer {
    match request.uri().path() {
        protocol::HELLO => return hello(cluster, state, &request),
        protocol::AUTH => return authenticate(cluster, state, refusals, &request, remote),
        _ => {}
    }
    if !state.authenticated.load(Ordering::Acquire) {
        cluster.metrics.refused.increment(1);
        // Per request, so at debug: a connection that fails the proof is logged once, at warn.
        tracing::debug!(%remote, path = request.uri().path(), "cluster port: refused a request from a connection that has not proved the shared credential");
        return status(StatusCode::UNAUTHORIZED, None);
    }
    match request.uri().path() {
        protocol::GRANT => grant(cluster, state, request).await,
        protocol::ADOPT => adopt(cluster, state, request),
        protocol::SYNCED => synced(cluster, &request),
        protocol::RECONCILED => reconciled(cluster, state, &request),
        _ => status(StatusCode::NOT_FOUND, None),
    }
}

/// The identity a request claims (its `x-scoregate-peer`).
fn claimed_peer(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get(&protocol::PEER)
        .and_then(|v| v.to_str().ok())
}

/// A hello: the challenge and this replica's proof; on an authenticated connection, also the
/// two replicas' states, both ways.
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
    let authenticated = state.authenticated.load(Ordering::Acquire);
    match claimed_peer(request) {
        Some(peer) if authenticated => {
            if let Some(theirs) = Announce::read(request.headers()) {
                cluster.heard_hello(peer, &theirs);
            }
            cluster.announce_to(peer).write(headers);
        }
        _ => {
            headers.insert(
                &protocol::READY,
                HeaderValue::from_static(if cluster.is_ready() { "true" } else { "false" }),
            );
        }
    }
    *state.server_nonce.lock() = Some(server_nonce);
    response
}

fn authenticate(
    cluster: &Cluster,
    state: &ConnectionState,
    refusals: &Refusals,
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
        *state.authenticated_at.lock() = Some(Instant::now());
        state.authenticated.store(true, Ordering::Release);
        status(StatusCode::NO_CONTENT, None)
    } else {
        cluster.metrics.refused.increment(1);
        let who = claimed_peer(request).map_or_else(|| remote.ip().to_string(), str::to_owned);
        // A listed peer's failure is logged once by this replica's own connection to it.
        let listed = cluster.peers.lock().contains_key(who.as_str());
        if !listed && refusals.first(&who) {
            tracing::error!(%remote, peer = %who, "cluster port: {who} failed to prove the shared cluster credential: every replica needs the same cluster secret (logged once per replica)");
        }
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

/// The view a request names (`x-scoregate-view`).
fn view_of(request: &Request<Incoming>) -> Option<ViewId> {
    request
        .headers()
        .get(&protocol::VIEW)
        .and_then(|v| v.to_str().ok())
        .and_then(ViewId::decode)
}

async fn grant(
    cluster: &Arc<Cluster>,
    state: &ConnectionState,
    request: Request<Incoming>,
) -> Answer {
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
    let (view, slot) =
        match grant_slot(cluster, &deployment, view_of(&request), exclude, deadline).await {
            Ok(granted) => granted,
            Err(refused) => return refused,
        };
    cluster.metrics.served.increment(1);
    cluster.peaks.record(slot.pod());
    let pod = HeaderValue::from_str(&slot.pod().address().to_string()).expect("an address");
    // The holder may keep the slot as long as any slot lives (`Settings::slot_life`, issue 13):
    // a lease that expired sooner would free a pod an abandoned request still runs on.
    let expires = Instant::now()
        + cluster
            .settings
            .slot_life(deployment.settings.request_timeout);
    let lease = cluster.next_lease.fetch_add(1, Ordering::Relaxed) & !REPORTED_LEASE;
    let holder = holder_of(&request, lease);
    let body = LeaseBody::new(
        &cluster.leases,
        (holder, false),
        slot,
        request.into_body(),
        state.end.clone(),
        expires,
    );
    let mut response = Response::new(Either::Right(body));
    response.headers_mut().insert(&protocol::POD, pod);
    response
        .headers_mut()
        .insert(&protocol::LEASE, HeaderValue::from(lease));
    response.headers_mut().insert(
        &protocol::VIEW,
        HeaderValue::from_str(&view.encode()).expect("digits and a dot"),
    );
    response
}

/// A slot for a grant, in the view it was granted in; or the refusal to answer. Fencing: only
/// an owner that acts in its current view grants, never to an asker at a newer epoch.
async fn grant_slot(
    cluster: &Arc<Cluster>,
    deployment: &Deployment,
    asker: Option<ViewId>,
    exclude: Option<SocketAddr>,
    deadline: Instant,
) -> Result<(ViewId, Slot), Answer> {
    let (endpoint, name) = (&*deployment.endpoint, &*deployment.name);
    loop {
        let view = cluster.view.load_full();
        if !matches!(view.owner(endpoint, name), Owner::Me) {
            return Err(conflict(view.id(), protocol::REASON_NOT_OWNER));
        }
        if asker.is_some_and(|asker| asker.epoch > view.id().epoch) {
            return Err(conflict(view.id(), protocol::REASON_STALE_VIEW));
        }
        let timeout = deployment.settings.request_timeout;
        let held_back = cluster.held_back(endpoint, name, timeout).is_some();
        if !cluster.grants_in(view.id()) || held_back {
            if Instant::now() >= deadline {
                let (code, reason) = protocol::refusal(AdmitError::QueueTimeout);
                return Err(status(code, Some(reason)));
            }
            cluster.wait_for_change(view.id(), deadline).await;
            continue;
        }
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
                tokio::select! {
                    admitted = deployment.admission.admit(&deployment.pods, wait) => admitted,
                    () = cluster.stops_granting(view.id()) => continue,
                }
            }
        };
        let slot = admitted.map_err(|error| {
            let (code, reason) = protocol::refusal(error);
            status(code, Some(reason))
        })?;
        // The lease may have run out while the grant waited in the queue.
        if cluster.grants_in(view.id()) {
            return Ok((view.id(), slot));
        }
    }
}

/// 409 with this replica's view: the asker asks again once the views agree.
fn conflict(view: ViewId, reason: &'static str) -> Answer {
    let mut response = status(StatusCode::CONFLICT, Some(reason));
    response.headers_mut().insert(
        &protocol::VIEW,
        HeaderValue::from_str(&view.encode()).expect("digits and a dot"),
    );
    response
}

/// How a reported slot is its holder's own ([`super::shadow`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shadowed {
    /// It is not (a slot an owner granted the sender).
    No,
    /// It is, already in use (or passed on by another replica).
    Held,
    /// It was admitted just now by the sender as the owner in this view.
    AdmittedIn(ViewId),
}

fn shadowed(request: &Request<Incoming>) -> Shadowed {
    let headers = request.headers();
    if headers.contains_key(&protocol::HOLDER) {
        return Shadowed::Held;
    }
    match headers.get(&protocol::SHADOW).and_then(|v| v.to_str().ok()) {
        None => Shadowed::No,
        Some(text) => ViewId::decode(text).map_or(Shadowed::Held, Shadowed::AdmittedIn),
    }
}

fn adopt(cluster: &Arc<Cluster>, state: &ConnectionState, request: Request<Incoming>) -> Answer {
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
    let expires = Instant::now() + millis(&request, &protocol::LEASE_MS).unwrap_or_default();
    let Some(holder) = reported_holder(&request) else {
        return status(StatusCode::BAD_REQUEST, None);
    };
    let shadowed = shadowed(&request);
    // A shadow of a slot just admitted is taken only in the view it was admitted in, and
    // before any report round for a later view read the registry: every round for a later view
    // then sees it (`docs/ARCHITECTURE.md`, "Coordinated admission").
    let in_view =
        |view: ViewId| cluster.view.load().id() == view && !cluster.rounds.read_for_later(view);
    if let Shadowed::AdmittedIn(view) = shadowed {
        if !in_view(view) {
            return conflict(cluster.view.load().id(), protocol::REASON_OTHER_VIEW);
        }
    }
    let asked_in = cluster.rounds.generation();
    let reported = Reported {
        deployment: &deployment,
        pod,
        holder: &holder,
        fallback: request.headers().contains_key(&protocol::FALLBACK),
        shadow: shadowed != Shadowed::No,
        expires,
    };
    let slot = count_reported(cluster, &reported);
    let shadow = reported.shadow;
    let body = LeaseBody::new(
        &cluster.leases,
        (holder, shadow),
        slot,
        request.into_body(),
        state.end.clone(),
        expires,
    );
    let round_read = cluster.rounds.generation() != asked_in;
    if let Shadowed::AdmittedIn(view) = shadowed {
        if !in_view(view) || round_read {
            body.give_up();
            return conflict(cluster.view.load().id(), protocol::REASON_OTHER_VIEW);
        }
    }
    if shadow && round_read {
        // A round read the registry while this shadow was being recorded.
        cluster.rounds.again();
        cluster.start_rounds();
    }
    Response::new(Either::Right(body))
}

/// The holder of a reported slot: the sender, or the replica a passed-on shadow names.
fn reported_holder(request: &Request<Incoming>) -> Option<Holder> {
    let text = |name: &http::HeaderName| request.headers().get(name)?.to_str().ok();
    let lease = text(&protocol::LEASE)?.parse::<u64>().ok()?;
    match text(&protocol::HOLDER) {
        None => Some(holder_of(request, lease)),
        Some(id) => Some(Holder {
            id: id.into(),
            instance: text(&protocol::HOLDER_INSTANCE)?.parse().ok()?,
            lease,
        }),
    }
}

/// A slot reported to this replica ([`adopt`]).
struct Reported<'a> {
    deployment: &'a Deployment,
    pod: &'a Arc<crate::admission::Pod>,
    holder: &'a Holder,
    /// Admitted under `cluster.fallback`.
    fallback: bool,
    /// Its holder's own slot ([`super::shadow`]).
    shadow: bool,
    expires: Instant,
}

/// Counts a reported slot on its pod (or takes over the lease that already counts it), records
/// a shadow in the registry, and the pod's peak or an over-admission.
fn count_reported(cluster: &Cluster, reported: &Reported<'_>) -> Slot {
    let Reported {
        deployment,
        pod,
        holder,
        fallback,
        shadow,
        expires,
    } = *reported;
    // A slot this replica already counts (it granted it, or took an earlier report of it)
    // is taken over rather than counted twice.
    let (mut slot, over, recorded) = match cluster.leases.claim(&holder.id, holder.lease) {
        Some((slot, was_shadow)) => (slot, false, was_shadow),
        None => {
            let (slot, over) = deployment.admission.force_acquire(pod);
            (slot, over, false)
        }
    };
    if shadow && !recorded {
        let key = protocol::key(&deployment.endpoint, &deployment.name);
        cluster.hold_shadow(&mut slot, &key, expires, super::shadow::shadow_of(holder));
    }
    // A slot an owner granted (or took as owner) was within that owner's cap when it was
    // taken: counted above the cap here, it overlaps a slot whose release is still on its way
    // (its grantor freed and granted it again). Only a fallback admission can be a real one.
    if over && !fallback {
        tracing::debug!(
            pod = %pod.address(),
            holder = %holder.id,
            "a reported slot overlaps a release still on its way; not an over-admission"
        );
    } else {
        cluster.peaks.record(pod);
    }
    if over && fallback {
        cluster.metrics.over_admissions.increment(1);
        tracing::warn!(
            endpoint = %deployment.endpoint,
            deployment = %deployment.name,
            pod = %pod.address(),
            holder = %holder.id,
            lease = holder.lease,
            in_flight = pod.in_flight(),
            cap = deployment.admission.cap(),
            "a slot admitted under cluster.fallback puts the pod above its cap: it was over-admitted while its replica was isolated"
        );
    }
    slot
}

/// The sender reported every slot it holds for this replica's view.
fn synced(cluster: &Cluster, request: &Request<Incoming>) -> Answer {
    let (Some(peer), Some(view)) = (claimed_peer(request), view_of(request)) else {
        return status(StatusCode::BAD_REQUEST, None);
    };
    cluster.peer_synced(peer, view);
    status(StatusCode::NO_CONTENT, None)
}

/// The sender reported again every slot this replica granted it that it still holds: the
/// leases kept for it since an earlier connection failed are slots it released meanwhile.
fn reconciled(cluster: &Cluster, state: &ConnectionState, request: &Request<Incoming>) -> Answer {
    let (Some(peer), Some(instance), Some(since)) = (
        claimed_peer(request),
        instance_of(request),
        *state.authenticated_at.lock(),
    ) else {
        return status(StatusCode::BAD_REQUEST, None);
    };
    let stale = cluster.leases.release_stale(peer, instance, since);
    if stale > 0 {
        tracing::info!(%peer, leases = stale, "cluster: released the leases a returning replica no longer holds");
    }
    status(StatusCode::NO_CONTENT, None)
}

/// The sender's instance number (`x-scoregate-instance`).
fn instance_of(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(&INSTANCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The holder of a lease numbered `lease` that `request` asks for.
fn holder_of(request: &Request<Incoming>, lease: u64) -> Holder {
    Holder {
        id: claimed_peer(request).unwrap_or_default().into(),
        instance: instance_of(request).unwrap_or_default(),
        lease,
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

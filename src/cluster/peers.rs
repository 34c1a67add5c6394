//! The other replicas: one persistent, multiplexed HTTP/2 connection to each, authenticated
//! both ways when it opens, and a hello every heartbeat that carries this replica's state and
//! brings back the peer's ([`super::announce`]). A peer is live while its connection is up and
//! authenticated, its last hello was answered within the peer timeout, and it says it may own
//! deployments. The answers also renew this replica's lease on its view ([`super::acting`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Method, Request, StatusCode};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::announce::Announce;
use super::credential::{Credential, NONCE, PROOF};
use super::held::HoldOpen;
use super::protocol;
use super::view_id::ViewId;

/// A request sender on a peer's connection.
pub type Sender = http2::SendRequest<HoldOpen>;

/// Time a peer has to accept a connection and prove the credential.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause between connection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between connection attempts: short, so a replica whose link comes back rejoins
/// within a fraction of a second.
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// What a peer's connection task needs from the cluster.
pub struct PeerContext {
    /// This replica's identity, sent with every request.
    pub me: HeaderValue,
    /// The shared credential.
    pub credential: Arc<Credential>,
    /// This replica's state, as announced to the peer called by the argument.
    pub announce: Arc<dyn Fn(&str) -> Announce + Send + Sync>,
    /// Called when something the view depends on changed (liveness, the peer's state).
    pub changed: Arc<dyn Fn() + Send + Sync>,
    /// Called with the peer's identity when an authenticated connection to it ended.
    pub disconnected: Arc<dyn Fn(&str) + Send + Sync>,
    /// Handshakes refused by a peer (its credential differs), or failed proofs.
    pub refused: metrics::Counter,
    /// Time between hellos.
    pub heartbeat: Duration,
    /// A hello not answered within this is a missed heartbeat: the peer is not live.
    pub timeout: Duration,
}

/// What a peer said in its last answer, and when this replica asked.
#[derive(Clone, Debug)]
pub struct Heard {
    /// The peer's state.
    pub state: Announce,
    /// When the hello it answered was sent (a lease counts from here, never from the answer).
    pub sent: Instant,
    /// When the answer arrived.
    pub received: Instant,
    /// The latest time the peer can have taken its current view: the earliest of
    /// `received - age` over its answers with that view.
    pub switched_by: Instant,
}

/// Why a peer cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The two replicas do not share the credential (either side refused the other's proof),
    /// or the port is not a scoregate replica's cluster port.
    Refused(String),
    /// The peer speaks another version of the cluster protocol.
    Incompatible(String),
}

impl Problem {
    /// What is wrong, for logs and `/readyz`.
    pub fn text(&self) -> &str {
        match self {
            Problem::Refused(text) | Problem::Incompatible(text) => text,
        }
    }
}

/// Another replica.
pub struct Peer {
    /// Its identity: the advertised `ip:port`.
    pub id: Arc<str>,
    addr: SocketAddr,
    sender: ArcSwapOption<Sender>,
    live: AtomicBool,
    /// Its port refused the last connection attempt: its process is gone.
    gone: AtomicBool,
    heard: ArcSwapOption<Heard>,
    problem: Mutex<Option<Problem>>,
    hello_now: Notify,
    stop: CancellationToken,
}

impl Peer {
    /// A peer at `addr`, not yet connected.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Peer {
            id: addr.to_string().into(),
            addr,
            sender: ArcSwapOption::empty(),
            live: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            heard: ArcSwapOption::empty(),
            problem: Mutex::new(None),
            hello_now: Notify::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Whether the peer is connected, authenticated, answering and may own deployments.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Whether its port refused the last connection attempt: the process is gone (a replica
    /// partitioned or stopped does not refuse: the attempt times out).
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// A sender on the peer's connection, when it is connected and authenticated.
    pub fn sender(&self) -> Option<Sender> {
        self.sender.load().as_deref().cloned()
    }

    /// What the peer said last, if it answered since its connection opened.
    pub fn heard(&self) -> Option<Arc<Heard>> {
        self.heard.load_full()
    }

    /// The peer's view, from its last answer.
    pub fn view(&self) -> Option<ViewId> {
        self.heard.load().as_ref().map(|h| h.state.view)
    }

    /// Why the peer cannot be used, if it was refused or speaks another protocol.
    pub fn problem(&self) -> Option<Problem> {
        self.problem.lock().clone()
    }

    /// Marks the peer down after a failed exchange; its task reconnects.
    pub fn set_down(&self) -> bool {
        self.sender.store(None);
        self.heard.store(None);
        self.live.swap(false, Ordering::AcqRel)
    }

    /// Sends a hello now rather than at the next heartbeat.
    pub fn hello_now(&self) {
        self.hello_now.notify_one();
    }

    /// Stops the peer's connection task (the peer left the list).
    pub fn stop(&self) {
        self.stop.cancel();
        self.set_down();
    }

    /// Keeps a connection to the peer until [`Peer::stop`].
    pub async fn maintain(self: Arc<Self>, context: Arc<PeerContext>) {
        let mut backoff = MIN_BACKOFF;
        while !self.stop.is_cancelled() {
            match self.connect(&context).await {
                Ok((sender, connection)) => {
                    backoff = MIN_BACKOFF;
                    self.sender.store(Some(Arc::new(sender.clone())));
                    self.serve_connection(sender, connection, &context).await;
                    self.sender.store(None);
                    (context.disconnected)(&self.id);
                }
                Err(error) => {
                    tracing::debug!(peer = %self.id, %error, "cannot reach peer");
                }
            }
            if self.set_down() {
                tracing::warn!(peer = %self.id, "peer is down");
            }
            self.sender.store(None);
            (context.changed)();
            let pause = backoff.mul_f64(0.5 + fastrand::f64());
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn connect(
        &self,
        context: &PeerContext,
    ) -> Result<(Sender, tokio::task::JoinHandle<()>), String> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| "connect timed out".to_string())?;
        let refused =
            matches!(&stream, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        self.gone.store(refused, Ordering::Release);
        let stream = stream.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(1)))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .handshake::<_, HoldOpen>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let proved =
            tokio::time::timeout(CONNECT_TIMEOUT, self.authenticate(&mut sender, context)).await;
        match proved {
            Ok(Ok(())) => {
                self.set_problem(None);
                Ok((sender, connection))
            }
            Ok(Err(e)) => {
                connection.abort();
                Err(e)
            }
            Err(_) => {
                connection.abort();
                Err("the peer did not complete the handshake in time".into())
            }
        }
    }

    /// Records why the peer cannot be used; logs it when it is new (once per peer and reason).
    fn set_problem(&self, problem: Option<Problem>) {
        let mut current = self.problem.lock();
        if *current == problem {
            return;
        }
        if let Some(problem) = &problem {
            tracing::error!(peer = %self.id, "cluster: {}", problem.text());
        } else if current.is_some() {
            tracing::info!(peer = %self.id, "cluster: the peer accepted this replica's credential");
        }
        *current = problem;
    }

    /// Proves both ways that the two replicas share the credential.
    async fn authenticate(&self, sender: &mut Sender, context: &PeerContext) -> Result<(), String> {
        let client_nonce = Credential::nonce();
        let hello = self
            .request(Method::GET, protocol::HELLO, context)
            .header(&NONCE, &client_nonce)
            .body(HoldOpen::empty())
            .expect("valid request");
        let response = exchange(sender, hello, CONNECT_TIMEOUT).await?;
        let server_nonce = response
            .headers()
            .get(&NONCE)
            .map(|v| v.as_bytes().to_vec());
        let proof = response.headers().get(&PROOF);
        let (Some(server_nonce), Some(proof)) = (server_nonce, proof) else {
            context.refused.increment(1);
            let text = format!(
                "{} answered the hello with {} and no proof: is it a scoregate replica's cluster port?",
                self.id,
                response.status()
            );
            self.set_problem(Some(Problem::Refused(text.clone())));
            return Err(text);
        };
        if !context.credential.verify_server(
            client_nonce.as_bytes(),
            &server_nonce,
            proof.as_bytes(),
        ) {
            context.refused.increment(1);
            self.set_problem(Some(Problem::Refused(format!(
                "{} failed to prove the shared cluster credential: every replica needs the same \
                 cluster secret (cluster.secret_file or SCOREGATE_CLUSTER_SECRET)",
                self.id
            ))));
            return Err("peer's proof is wrong".into());
        }
        let auth = self
            .request(Method::POST, protocol::AUTH, context)
            .header(
                &NONCE,
                HeaderValue::from_bytes(&server_nonce).map_err(|e| e.to_string())?,
            )
            .header(&PROOF, context.credential.client_proof(&server_nonce))
            .body(HoldOpen::empty())
            .expect("valid request");
        let response = exchange(sender, auth, CONNECT_TIMEOUT).await?;
        if response.status() != StatusCode::NO_CONTENT {
            context.refused.increment(1);
            self.set_problem(Some(Problem::Refused(format!(
                "{} refused this replica's proof of the cluster credential ({}): every replica \
                 needs the same cluster secret (cluster.secret_file or SCOREGATE_CLUSTER_SECRET)",
                self.id,
                response.status()
            ))));
            return Err(format!("peer refused our proof with {}", response.status()));
        }
        Ok(())
    }

    /// Says hello every heartbeat until the connection ends or the peer is stopped.
    async fn serve_connection(
        &self,
        mut sender: Sender,
        mut connection: tokio::task::JoinHandle<()>,
        context: &PeerContext,
    ) {
        let mut every = tokio::time::interval(context.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    connection.abort();
                    return;
                }
                _ = &mut connection => return,
                _ = every.tick() => {}
                _ = self.hello_now.notified() => {}
            }
            if !self.hello(&mut sender, context).await {
                connection.abort();
                return;
            }
        }
    }

    /// One hello; false when the connection failed.
    async fn hello(&self, sender: &mut Sender, context: &PeerContext) -> bool {
        let mut hello = self
            .request(Method::GET, protocol::HELLO, context)
            .header(&NONCE, Credential::nonce())
            .body(HoldOpen::empty())
            .expect("valid request");
        (context.announce)(&self.id).write(hello.headers_mut());
        let sent = Instant::now();
        match exchange(sender, hello, context.timeout).await {
            Ok(response) => {
                self.heard_from(&response, sent, context);
                true
            }
            Err(Failure::TimedOut) => {
                // A missed heartbeat: not live until it answers again (the connection stays; a
                // dead one is ended by the HTTP/2 keep-alive).
                if self.live.swap(false, Ordering::AcqRel) {
                    tracing::warn!(peer = %self.id, timeout = ?context.timeout, "peer missed a heartbeat");
                    (context.changed)();
                }
                true
            }
            Err(Failure::Failed(error)) => {
                tracing::debug!(peer = %self.id, %error, "peer stopped answering");
                false
            }
        }
    }

    /// Records an answer to a hello sent at `sent`.
    fn heard_from(
        &self,
        response: &http::Response<hyper::body::Incoming>,
        sent: Instant,
        context: &PeerContext,
    ) {
        let received = Instant::now();
        let Some(state) = Announce::read(response.headers()) else {
            self.set_problem(Some(Problem::Incompatible(format!(
                "{} answered a hello without its cluster state: it runs another version of \
                 scoregate; every replica needs the same version",
                self.id
            ))));
            if self.set_down() {
                (context.changed)();
            }
            return;
        };
        let switched = received.checked_sub(state.age).unwrap_or(received);
        let switched_by = match self.heard.load().as_deref() {
            Some(before) if before.state.view == state.view => before.switched_by.min(switched),
            _ => switched,
        };
        let ready = state.ready;
        self.heard.store(Some(Arc::new(Heard {
            state,
            sent,
            received,
            switched_by,
        })));
        let was = self.live.swap(ready, Ordering::AcqRel);
        if was != ready {
            if ready {
                tracing::info!(peer = %self.id, "peer is live");
            } else {
                tracing::info!(peer = %self.id, "peer is not ready to own deployments");
            }
        }
        (context.changed)();
    }

    fn request(&self, method: Method, path: &str, context: &PeerContext) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(&protocol::PEER, context.me.clone())
    }
}

/// Why an exchange gave no answer.
enum Failure {
    TimedOut,
    Failed(String),
}

impl From<Failure> for String {
    fn from(failure: Failure) -> String {
        match failure {
            Failure::TimedOut => "peer did not answer in time".into(),
            Failure::Failed(error) => error,
        }
    }
}

/// Sends one small request and waits at most `timeout` for its response head.
async fn exchange(
    sender: &mut Sender,
    request: Request<HoldOpen>,
    timeout: Duration,
) -> Result<http::Response<hyper::body::Incoming>, Failure> {
    tokio::time::timeout(timeout, async {
        sender
            .ready()
            .await
            .map_err(|e| Failure::Failed(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Failed(e.to_string()))
    })
    .await
    .map_err(|_| Failure::TimedOut)?
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("live", &self.is_live())
            .finish()
    }
}

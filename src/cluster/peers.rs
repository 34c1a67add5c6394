//! The other replicas: one persistent, multiplexed HTTP/2 connection to each, authenticated
//! both ways when it opens, re-checked for readiness every half second, re-opened with backoff
//! when it drops. A peer is live while its connection is up, authenticated, and it says ready.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Method, Request, StatusCode};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::credential::{Credential, NONCE, PROOF};
use super::lease::HoldOpen;
use super::protocol;

/// A request sender on a peer's connection.
pub type Sender = http2::SendRequest<HoldOpen>;

/// How often a live peer's readiness is re-checked.
const HELLO_EVERY: Duration = Duration::from_millis(500);
/// Time a peer has to connect, or to answer a hello.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a peer's connection task needs from the cluster.
pub struct PeerContext {
    /// This replica's identity, sent with every request.
    pub me: HeaderValue,
    /// The shared credential.
    pub credential: Arc<Credential>,
    /// Called when the peer's liveness changes.
    pub changed: Arc<dyn Fn() + Send + Sync>,
    /// Handshakes refused by a peer (its credential differs), or failed proofs.
    pub refused: metrics::Counter,
}

/// Another replica.
pub struct Peer {
    /// Its identity: the advertised `ip:port`.
    pub id: Arc<str>,
    addr: SocketAddr,
    sender: ArcSwapOption<Sender>,
    live: AtomicBool,
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
            stop: CancellationToken::new(),
        })
    }

    /// Whether the peer is connected, authenticated and ready.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// A sender on the peer's connection, when live.
    pub fn sender(&self) -> Option<Sender> {
        if !self.is_live() {
            return None;
        }
        self.sender.load().as_deref().cloned()
    }

    /// Marks the peer down after a failed exchange; its task reconnects.
    pub fn set_down(&self) -> bool {
        self.sender.store(None);
        self.live.swap(false, Ordering::AcqRel)
    }

    /// Stops the peer's connection task (the peer left the list).
    pub fn stop(&self) {
        self.stop.cancel();
        self.set_down();
    }

    fn set_live(&self, sender: Sender) -> bool {
        self.sender.store(Some(Arc::new(sender)));
        !self.live.swap(true, Ordering::AcqRel)
    }

    /// Keeps a connection to the peer until [`Peer::stop`].
    pub async fn maintain(self: Arc<Self>, context: Arc<PeerContext>) {
        let mut backoff = Duration::from_millis(50);
        while !self.stop.is_cancelled() {
            match self.connect(&context).await {
                Ok((sender, connection)) => {
                    backoff = Duration::from_millis(50);
                    self.serve_connection(sender, connection, &context).await;
                }
                Err(error) => {
                    tracing::debug!(peer = %self.id, %error, "cannot reach peer");
                }
            }
            if self.set_down() {
                tracing::warn!(peer = %self.id, "peer is down");
                (context.changed)();
            }
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
        let stream = tokio::time::timeout(PEER_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
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
        match self.authenticate(&mut sender, context).await {
            Ok(()) => Ok((sender, connection)),
            Err(e) => {
                connection.abort();
                Err(e)
            }
        }
    }

    /// Proves both ways that the two replicas share the credential.
    async fn authenticate(&self, sender: &mut Sender, context: &PeerContext) -> Result<(), String> {
        let client_nonce = Credential::nonce();
        let hello = self
            .request(Method::GET, protocol::HELLO, context)
            .header(&NONCE, &client_nonce)
            .body(HoldOpen::empty())
            .expect("valid request");
        let response = exchange(sender, hello).await?;
        let server_nonce = response
            .headers()
            .get(&NONCE)
            .map(|v| v.as_bytes().to_vec());
        let proof = response.headers().get(&PROOF);
        let (Some(server_nonce), Some(proof)) = (server_nonce, proof) else {
            context.refused.increment(1);
            return Err(format!(
                "peer answered the hello with {} and no proof: is it a scoregate replica's cluster port?",
                response.status()
            ));
        };
        if !context.credential.verify_server(
            client_nonce.as_bytes(),
            &server_nonce,
            proof.as_bytes(),
        ) {
            context.refused.increment(1);
            tracing::error!(peer = %self.id, "peer failed to prove the shared cluster credential: check that every replica has the same cluster secret");
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
        let response = exchange(sender, auth).await?;
        if response.status() != StatusCode::NO_CONTENT {
            context.refused.increment(1);
            tracing::error!(peer = %self.id, status = %response.status(), "peer refused this replica's cluster credential: check that every replica has the same cluster secret");
            return Err(format!("peer refused our proof with {}", response.status()));
        }
        Ok(())
    }

    async fn serve_connection(
        &self,
        mut sender: Sender,
        mut connection: tokio::task::JoinHandle<()>,
        context: &PeerContext,
    ) {
        let mut every = tokio::time::interval(HELLO_EVERY);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    connection.abort();
                    return;
                }
                _ = &mut connection => return,
                _ = every.tick() => {
                    let hello = self
                        .request(Method::GET, protocol::HELLO, context)
                        .header(&NONCE, Credential::nonce())
                        .body(HoldOpen::empty())
                        .expect("valid request");
                    match exchange(&mut sender, hello).await {
                        Ok(response) if response.headers().get(&protocol::READY).is_some_and(|v| v == "true") => {
                            if self.set_live(sender.clone()) {
                                tracing::info!(peer = %self.id, "peer is live");
                                (context.changed)();
                            }
                        }
                        Ok(_) => {
                            if self.set_down() {
                                tracing::info!(peer = %self.id, "peer is not ready");
                                (context.changed)();
                            }
                        }
                        Err(error) => {
                            tracing::debug!(peer = %self.id, %error, "peer stopped answering");
                            connection.abort();
                            return;
                        }
                    }
                }
            }
        }
    }

    fn request(&self, method: Method, path: &str, context: &PeerContext) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(&protocol::PEER, context.me.clone())
    }
}

/// Sends one small request and waits at most [`PEER_TIMEOUT`] for its response head.
async fn exchange(
    sender: &mut Sender,
    request: Request<HoldOpen>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    tokio::time::timeout(PEER_TIMEOUT, async {
        sender.ready().await.map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "peer did not answer in time".to_string())?
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("live", &self.is_live())
            .finish()
    }
}

//! One keep-alive HTTP/1.1 connection to a pod: hyper's client connection, whose task drives
//! the socket while the [`PodConnection`] handle sends requests on it. This is the only module
//! that knows hyper's client; the exchange sees a request handed over and a [`PendingResponse`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;

/// TCP keepalive on pod connections: a pod that vanished without closing (node lost, network
/// cut) is noticed after about 60 s idle + 3 probes 10 s apart.
pub const TCP_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// How pod connections are made and kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    /// Time to establish a connection.
    pub(super) connect: Duration,
    /// Idle time after which a pooled connection is closed rather than reused.
    pub(super) idle: Duration,
}

/// A handle that sends requests on one connection to a pod.
pub type PodConnection = http1::SendRequest<RequestBody>;

/// Why a request handed to a connection got no response head.
pub(super) enum Unanswered {
    /// The connection could not take it (it was closing): the request is handed back whole.
    Unsent(Box<Request<RequestBody>>),
    /// It was (at least partly) sent, and the exchange failed.
    Failed(hyper::Error),
}

/// The response head a request handed to a connection is waiting for. Boxed: it is kept in the
/// exchange, which may outlive the request's own task (see `upstream::abandon`).
pub(super) type PendingResponse =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, Unanswered>> + Send>>;

/// Hands `request` to `connection` (it is queued on the connection at once) and returns the
/// response to wait for.
pub(super) fn start(
    connection: &mut PodConnection,
    request: Request<RequestBody>,
) -> PendingResponse {
    let response = connection.try_send_request(request);
    Box::pin(async move {
        response.await.map_err(|mut e| match e.take_message() {
            Some(request) => Unanswered::Unsent(Box::new(request)),
            None => Unanswered::Failed(e.into_error()),
        })
    })
}

/// Connects to `address` within `timeout` and starts the connection's task.
pub(super) async fn connect(address: SocketAddr, timeout: Duration) -> io::Result<PodConnection> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream).set_tcp_keepalive(&TCP_KEEPALIVE)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%address, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

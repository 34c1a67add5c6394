//! One keep-alive HTTP/1.1 connection to a pod: hyper's client connection, whose task drives
//! the socket while the [`PodConnection`] handle sends requests on it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;

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

/// Connects to `address` within `timeout` and starts the connection's task.
pub(super) async fn connect(address: SocketAddr, timeout: Duration) -> io::Result<PodConnection> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
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

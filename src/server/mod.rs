//! Client-facing listeners: accept, serve HTTP/1.1 (byte-level, [`h1`], or with hyper) and
//! HTTP/2 (hyper) on each connection, and drain gracefully on shutdown. [`guard`] protects
//! HTTP/1 connections with the framing rules of [`crate::http1::framing`]; [`connection`]
//! serves one connection.
//!
//! Shutdown is two steps driven by [`Lifecycle`]: `stop_accepting` closes the listeners, then
//! `drain` asks every connection to finish what it has (HTTP/2 gets GOAWAY, HTTP/1.1 answers
//! its current request with `Connection: close`); the caller waits on the connection tracker
//! for at most the grace period.

pub mod connection;
pub mod guard;
pub mod h1;
pub mod h2;
pub mod linger;
pub mod send_timeout;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connection::{ConnectionSettings, Protocol};

use crate::proxy::{ClientConn, Proxy};

/// Shared shutdown state of one router instance.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Cancelled when listeners must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled when open connections must finish and close.
    pub drain: CancellationToken,
    /// Every connection task, to wait for at the end.
    pub connections: TaskTracker,
    /// Set as soon as shutdown begins; `/readyz` turns 503.
    pub shutting_down: CancellationToken,
}

/// TCP keepalive on client connections: a client that vanished without closing (a lost
/// network, a crashed host) is noticed after about 60 s idle and 3 probes 10 s apart.
pub const TCP_KEEPALIVE: socket2::TcpKeepalive = crate::upstream::connection::TCP_KEEPALIVE;

/// Binds a listener with `SO_REUSEADDR`, a deep accept backlog and TCP keepalive, which the
/// connections it accepts inherit (Linux copies the listener's socket options).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket2::SockRef::from(&socket).set_tcp_keepalive(&TCP_KEEPALIVE)?;
    socket.bind(address)?;
    socket.listen(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_keep_the_listeners_tcp_keepalive() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let address = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
    }
}

/// What a listener speaks.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP/1.1 and h2c with prior knowledge.
    Plain,
    /// TLS, then HTTP/2 or HTTP/1.1 by ALPN.
    Tls {
        /// The handshake.
        acceptor: tokio_rustls::TlsAcceptor,
        /// Time a client has to finish the handshake.
        handshake_timeout: Duration,
        /// Failed or timed-out handshakes.
        errors: metrics::Counter,
    },
}

/// Accepts clients on `listener` until `lifecycle.stop_accepting`, serving each connection with
/// `proxy`; at most `max_connections` are open at once (the rest wait in the accept backlog).
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    proxy: Arc<Proxy>,
    settings: Arc<ConnectionSettings>,
    lifecycle: Lifecycle,
    open_connections: Gauge,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let permit = tokio::select! {
            _ = lifecycle.stop_accepting.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            _ = lifecycle.stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let accepted = tokio::time::Instant::now();
        let _ = stream.set_nodelay(true);
        let (proxy, settings, drain) = (proxy.clone(), settings.clone(), lifecycle.drain.clone());
        let gauge = open_connections.clone();
        let transport = transport.clone();
        // One task type per transport: a plain connection does not carry TLS state.
        match transport {
            Transport::Plain => lifecycle.connections.spawn(async move {
                gauge.increment(1.0);
                let conn = ClientConn::new(remote, false);
                let protocol = connection::sniff_plain(&stream, settings.header_timeout()).await;
                connection::serve(stream, accepted, protocol, conn, proxy, &settings, drain).await;
                gauge.decrement(1.0);
                drop(permit);
            }),
            Transport::Tls {
                acceptor,
                handshake_timeout,
                errors,
            } => lifecycle.connections.spawn(async move {
                gauge.increment(1.0);
                let deadline = accepted + handshake_timeout;
                if connection::starts_with_plain_http(&stream, deadline).await {
                    errors.increment(1);
                    connection::refuse_plain_http(stream, deadline).await;
                    gauge.decrement(1.0);
                    drop(permit);
                    return;
                }
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let conn = ClientConn::new(remote, true);
                        let protocol = match tls.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Protocol::Http2,
                            _ => Protocol::Http1,
                        };
                        connection::serve(tls, accepted, protocol, conn, proxy, &settings, drain)
                            .await;
                    }
                    Ok(Err(e)) => {
                        errors.increment(1);
                        tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        errors.increment(1);
                        tracing::debug!(client = %remote, "TLS handshake timed out");
                    }
                }
                gauge.decrement(1.0);
                drop(permit);
            }),
        };
    }
}

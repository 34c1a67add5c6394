//! Connections to model pods: a per-pod pool of keep-alive HTTP/1.1 connections, and sending
//! with the request handed back whenever it was not sent, so the caller can retry elsewhere.
//!
//! Each [`crate::balance::Pod`] owns its idle connections, so a checkout touches only that pod's
//! short lock and never a pool shared across pods. A connection returns to its pod when the
//! response body ended cleanly; connections idle longer than the idle timeout (kept below the
//! keep-alive of common model servers: gunicorn 2 s, uvicorn 5 s) are closed instead of reused.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::balance::Pod;
use crate::body::RequestBody;

/// A sender on an HTTP/1.1 connection to a pod.
pub type PooledSender = http1::SendRequest<RequestBody>;

/// Idle connections kept per pod at most; more are closed when they come back.
const MAX_IDLE_PER_POD: usize = 256;

/// A pod's idle keep-alive connections, most recently used last.
#[derive(Default)]
pub struct IdleConnections {
    conns: Mutex<Vec<(PooledSender, Instant)>>,
}

impl IdleConnections {
    /// Returns a connection whose response ended cleanly.
    pub(crate) fn put(&self, sender: PooledSender) {
        if sender.is_closed() {
            return;
        }
        let mut conns = self.conns.lock();
        if conns.len() < MAX_IDLE_PER_POD {
            conns.push((sender, Instant::now()));
        }
    }

    /// The most recently used live connection idle for less than `idle_timeout`.
    /// Older connections are closed on the way.
    fn take(&self, idle_timeout: Duration) -> Option<PooledSender> {
        let mut conns = self.conns.lock();
        let now = Instant::now();
        // Entries are in return order: everything before the first fresh one has expired.
        let fresh_from = conns
            .iter()
            .position(|(_, since)| now.duration_since(*since) < idle_timeout)
            .unwrap_or(conns.len());
        conns.drain(..fresh_from);
        while let Some((sender, _)) = conns.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Idle connections now (live or not yet noticed as closed).
    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a request did not get response headers from a pod.
#[derive(Debug)]
pub enum SendError {
    /// Nothing reached the pod: the request is handed back for a retry elsewhere.
    NotSent {
        /// The untouched request.
        request: Box<Request<RequestBody>>,
        /// Why connecting failed.
        error: io::Error,
    },
    /// The request was (at least partly) sent and the exchange failed.
    Failed(hyper::Error),
}

/// Upstream connection settings.
#[derive(Clone, Debug)]
pub struct Upstream {
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    /// Connections time out after `connect_timeout` and are not reused after `idle_timeout` idle.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Upstream {
            connect_timeout,
            idle_timeout,
        }
    }

    /// Sends `request` to `pod` on a pooled connection, or a new one; returns the response head
    /// and the connection, which the caller gives back to the pod when the body has ended.
    ///
    /// A pooled connection that turns out to be closed is skipped without losing the request;
    /// only a failure to connect at all is reported as [`SendError::NotSent`].
    pub async fn send(
        &self,
        pod: &Pod,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, PooledSender), SendError> {
        while let Some(mut sender) = pod.idle.take(self.idle_timeout) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let mut sender = match self.connect(pod.address()).await {
            Ok(sender) => sender,
            Err(error) => {
                return Err(SendError::NotSent {
                    request: Box::new(request),
                    error,
                })
            }
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => Err(SendError::NotSent {
                    request: Box::new(unsent),
                    error: io::Error::new(io::ErrorKind::ConnectionAborted, e.into_error()),
                }),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    async fn connect(&self, address: SocketAddr) -> io::Result<PooledSender> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
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
}

//! What every phase knows besides the request itself: the proxy's settings, the client's
//! connection, and the request's [`Context`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::HeaderValue;

use super::headers::{self, RequestIds};
use crate::telemetry::access::RequestLine;

/// Settings of the proxy itself (listeners and limits on connections live in the server).
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Largest request body accepted (413 above).
    pub max_request_body_bytes: u64,
    /// Request bodies up to this size are received whole before the request takes a slot;
    /// larger ones are received this far, then streamed.
    pub request_buffer_bytes: u64,
    /// A request body that makes no progress for this long fails with 408.
    pub body_timeout: Duration,
    /// Largest body copied to a mirror deployment; larger requests are not mirrored.
    pub mirror_max_body_bytes: usize,
    /// `Some("ml.example.com")` routes `Host: {endpoint}.ml.example.com` (lowercase, no dot).
    pub host_domain: Option<String>,
}

/// The connection a request came in on.
#[derive(Clone, Debug)]
pub struct ClientConn {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's IP as a header value, formatted once per connection.
    pub(super) client_ip: HeaderValue,
}

impl ClientConn {
    /// A connection from `remote`, over TLS or not.
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        ClientConn {
            remote,
            tls,
            client_ip: headers::client_ip_value(remote.ip()),
        }
    }
}

/// What every phase knows of a request beyond its message.
#[derive(Debug)]
pub struct Context {
    /// When the request arrived.
    pub started: Instant,
    /// Its ids, as they go to the pod and back to the client.
    pub ids: RequestIds,
    /// The connection it came in on.
    pub conn: ClientConn,
    /// Its method, path, user agent and declared length, as the client sent them (for the
    /// record phase).
    pub line: RequestLine,
}

//! Upstream: everything about talking to model pods. Pods' connection pools keyed by pod,
//! checkout and return, the HTTP/1.1 client connection, and the [`Exchange`] that owns one
//! request's slot and connection until it ends explicitly.
//!
//! | module | concern |
//! |---|---|
//! | [`body`] | the request body sent to a pod (streamed with a limit, or in memory) |
//! | [`connection`] | connecting to a pod; hyper's HTTP/1.1 client connection |
//! | `pool` | idle keep-alive connections per pod, expiry, the sweep |
//! | [`exchange`] | one request's slot and connection, the send and its retry-safe failure, the response body |
//!
//! Nothing else returns a connection to a pool: an exchange does when it ends.

pub mod body;
pub mod connection;
pub mod exchange;
mod pool;

use std::sync::Arc;
use std::time::Duration;

pub use body::{MirrorTee, RequestBody, RequestBodyError};
pub use connection::PodConnection;
pub use exchange::{Ending, Exchange, PodBody, SendError};

use crate::admission::Slot;
use connection::Timeouts;
use pool::Pools;

/// The router's side of every pod connection.
#[derive(Clone)]
pub struct Upstream {
    pools: Arc<Pools>,
}

impl Upstream {
    /// Connections time out after `connect_timeout` and are not reused after `idle_timeout` idle.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let timeouts = Timeouts {
            connect: connect_timeout,
            idle: idle_timeout,
        };
        Upstream {
            pools: Arc::new(Pools::new(timeouts)),
        }
    }

    /// Starts the exchange of one request on the pod `slot` is for.
    pub fn exchange(&self, slot: Slot) -> Exchange {
        let pool = self.pools.of(slot.pod().address());
        Exchange::new(slot, pool)
    }

    /// Closes idle connections past the idle timeout and forgets pools nobody uses (run now and
    /// then: it is what ends the idle connections of a pod that went away).
    pub fn sweep(&self) {
        self.pools.sweep();
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

//! Upstream: everything about talking to model pods. Pods' connection pools keyed by pod,
//! checkout and return, the HTTP/1.1 client connection (byte-level, no task of its own), and the [`Exchange`] that owns one
//! request's slot and connection until it ends explicitly.
//!
//! | module | concern |
//! |---|---|
//! | [`body`] | the request body sent to a pod (received whole, or received in part and streamed with a limit and a timeout) |
//! | [`frames`] | body frames held in memory, never copied |
//! | `codec` | the request head written as bytes (framing as hyper's client chose it), the pod's response head kept as bytes ([`PodHead`]; `http` parts where hyper needs them) |
//! | [`connection`] | one connection to a pod, driven in the request's own task: the request and its body written, the response head and body read through one buffer |
//! | `pool` | idle keep-alive connections per pod, expiry, the sweep |
//! | [`exchange`] | one request's slot and connection, the send and its retry-safe failure, what the pod showed (for outlier detection) |
//! | [`readahead`] | the pod's response read ahead of the client up to the response buffer, so the pod is freed at its own speed |
//! | `abandon` | requests the router gave up on: the slot held until the pod is done, within a bound |
//!
//! Nothing else returns a connection to a pool: an exchange does when it ends.

mod abandon;
pub mod body;
mod codec;
pub mod connection;
pub mod exchange;
pub mod frames;
mod pool;
pub mod readahead;

use std::sync::Arc;
use std::time::Duration;

pub use body::{RequestBody, RequestBodyError};
pub use codec::{PodHead, PodRequest, WrittenHead};
pub use connection::{PodConnection, PodError};
pub use exchange::{Ending, Exchange, SendError, Terms};
pub use frames::Frames;
pub use readahead::PodBody;

use crate::admission::Slot;
use crate::telemetry::DeploymentMetrics;
use connection::Timeouts;
use pool::Pools;

/// The router's side of every pod connection.
#[derive(Clone)]
pub struct Upstream {
    pools: Arc<Pools>,
    response_buffer: u64,
}

impl Upstream {
    /// Connections time out after `connect_timeout` and are not reused after `idle_timeout` idle;
    /// up to `response_buffer` bytes of a pod's response are read ahead of the client.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, response_buffer: u64) -> Self {
        let timeouts = Timeouts {
            connect: connect_timeout,
            idle: idle_timeout,
        };
        Upstream {
            pools: Arc::new(Pools::new(timeouts)),
            response_buffer,
        }
    }

    /// Starts the exchange of one request on the pod `slot` is for, in a deployment whose pods
    /// have `request_timeout` to answer and whose counts go to `metrics`.
    pub fn exchange(
        &self,
        slot: Slot,
        request_timeout: Duration,
        metrics: &Arc<DeploymentMetrics>,
    ) -> Exchange {
        let pool = self.pools.of(slot.pod().address());
        let terms = Terms {
            request_timeout,
            metrics: metrics.clone(),
            response_buffer: self.response_buffer,
        };
        Exchange::new(slot, pool, terms)
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

//! Phase "respond": the pod's response as the client gets it. Its head is kept as the pod sent
//! it, with the response-header policy's fields for this request beside it (the hop-by-hop
//! fields go and the policy's are set where the head is written, `proxy::answer`); the body is
//! the pod's, read ahead of the client up to the response buffer (`upstream::readahead`), the
//! exchange ending when the pod's body has been read.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::forward::Forwarded;
use super::headers::{RequestIds, ResponseHeaders};
use crate::table::Deployment;
use crate::upstream::{PodBody, PodHead};

/// A response ready for the client, with what the record phase needs to know of the exchange.
pub struct Responded {
    /// The pod's response head.
    pub head: PodHead,
    /// The fields the router sets on it.
    pub headers: ResponseHeaders,
    /// The pod's body.
    pub body: PodBody,
    /// The pod that answered.
    pub pod: SocketAddr,
    /// Time from sending to the pod's response head.
    pub upstream_time: Duration,
    /// When the pod's response head arrived.
    pub answered_at: Instant,
}

/// The client's response for a request `deployment` answered; its request id moves from `ids`
/// to the response's fields (the record phase reads it there).
pub fn respond(forwarded: Forwarded, deployment: &Deployment, ids: &mut RequestIds) -> Responded {
    let Forwarded {
        head,
        exchange,
        upstream_time,
        answered_at,
    } = forwarded;
    let pod = exchange.address();
    Responded {
        head,
        headers: ResponseHeaders::taking_request_id(ids, &deployment.name_header),
        body: exchange.respond(),
        pod,
        upstream_time,
        answered_at,
    }
}

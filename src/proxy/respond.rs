//! Phase "respond": the pod's response as the client gets it. Hop-by-hop headers go; the
//! response headers every exit carries are set; the body is the pod's, read ahead of the client
//! up to the response buffer (`upstream::readahead`), the exchange ending when the pod's body
//! has been read.

use std::net::SocketAddr;
use std::time::Duration;

use http::Response;

use super::forward::Forwarded;
use super::headers::{self, RequestIds};
use crate::table::Deployment;
use crate::upstream::PodBody;

/// A response ready for the client, with what the record phase needs to know of the exchange.
pub struct Responded {
    /// The response; its body is the pod's.
    pub response: Response<PodBody>,
    /// The pod that answered.
    pub pod: SocketAddr,
    /// Time from sending to the pod's response head.
    pub upstream_time: Duration,
}

/// The client's response for a request `deployment` answered.
pub fn respond(forwarded: Forwarded, deployment: &Deployment, ids: &RequestIds) -> Responded {
    let Forwarded {
        head,
        exchange,
        upstream_time,
    } = forwarded;
    let pod = exchange.address();
    let mut response = exchange.respond(head);
    let headers = response.headers_mut();
    headers::strip_hop_by_hop(headers);
    headers::set_response_headers(headers, ids, Some(&deployment.name_header));
    Responded {
        response,
        pod,
        upstream_time,
    }
}

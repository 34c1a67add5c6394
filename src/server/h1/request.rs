//! Which requests the byte-level path serves, and each one as the proxy gets it: its head, read
//! in place (`proxy::ClientRequest::Head`), and its body, received whole with the head.

use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::Serving;
use crate::http1::head::{BodyFraming, Known, RequestHead, Version};
use crate::http1::wire::Wire;
use crate::proxy::{ClientBody, ClientRequest};

/// The request `head` starts, with its body split off `wire`; the head back (nothing consumed)
/// when hyper must serve it: HTTP/1.0, `CONNECT`, an `Expect`, `Upgrade` or `TE` field, a
/// chunked body, a body over the request buffer or not all read yet, or a target `http` cannot
/// hold.
pub(super) fn take<IO: AsyncRead + Unpin>(
    wire: &mut Wire<IO>,
    head: RequestHead,
    serving: &Serving<'_>,
) -> Result<ClientRequest, RequestHead> {
    if !served_here(&head) {
        return Err(head);
    }
    let length = match head.body() {
        BodyFraming::Empty => 0,
        BodyFraming::Length(n) if n <= serving.proxy.settings().request_buffer_bytes => n,
        BodyFraming::Length(_) | BodyFraming::Chunked => return Err(head),
    };
    let Some(length) = usize::try_from(length).ok().filter(|n| arrived(wire, *n)) else {
        return Err(head);
    };
    let request = ClientRequest::from_head(head, ())?;
    let body = match length {
        0 => Bytes::new(),
        n => wire.split_data(0, n, n),
    };
    Ok(request.with_body(ClientBody::Whole(body)))
}

/// Whether the head is one this path serves as hyper did.
fn served_here(head: &RequestHead) -> bool {
    head.version() == Version::Http11
        && head.method() != b"CONNECT"
        && !head
            .fields()
            .iter()
            .any(|f| matches!(f.known(), Some(Known::Expect | Known::Upgrade | Known::Te)))
}

/// Whether `length` bytes of body are buffered, reading what the socket already holds (never
/// waiting for more).
fn arrived<IO: AsyncRead + Unpin>(wire: &mut Wire<IO>, length: usize) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    while wire.buffered().len() < length {
        match wire.poll_fill(&mut cx) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
    true
}

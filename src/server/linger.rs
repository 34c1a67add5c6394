//! The lingering close (nginx's `lingering_close`): a connection the router ends while the
//! client may still be sending — after refusing a request, or telling an HTTP/2 client to calm
//! down — half-closes its side, then reads and discards what the client still sends until the
//! client closes or [`LINGER`] passes. Closing a socket with unread bytes in it makes the kernel
//! answer with a TCP reset, which can reach the client before the answer it was just sent is
//! read: the client would see a reset connection instead of the reason.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

/// The longest a closing connection is read and discarded.
pub const LINGER: Duration = Duration::from_secs(2);

/// Reads and discards from `io` until it ends, fails, or `until` passes.
pub fn poll_discard<T: AsyncRead + Unpin>(
    io: &mut T,
    mut until: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut discard = [0u8; 4096];
    loop {
        if until.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut buf = ReadBuf::new(&mut discard);
        match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() => continue,
            _ => return Poll::Ready(()),
        }
    }
}

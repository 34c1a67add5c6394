//! The byte-level HTTP/1.1 server path: a client connection (plain or TLS) served in its own
//! task without hyper. Each request head is read once through the framing guard
//! (`server::guard`: every byte checked, the header and keep-alive timers, refusals), checked and
//! indexed once by `http1::head` (the guard's index is reused), and handed to [`Proxy::handle`] with its body received whole; the response head
//! and body are written as bytes (`respond`); the loop then reads the next head. What this path
//! does not serve — HTTP/1.0, `Expect`, `Upgrade`, `TE`, `CONNECT`, a chunked body, a body
//! larger than the request buffer or not yet arrived with its head — is handed to hyper with
//! every byte read so far ([`Served::ToHyper`]), and hyper serves the rest of the connection.
//! The request path is described in `docs/ARCHITECTURE.md`.

mod drain;
mod request;
mod respond;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::guard::{Activity, GuardedIo};
use crate::http1::head::{HeadLimits, RequestHead};
use crate::http1::reply::Asked;
use crate::http1::wire::{RequestHeadError, Wire};
use crate::proxy::error::http1_refusal;
use crate::proxy::{Answer, ClientConn, Proxy, RouterError};
use drain::DrainWatch;

/// What a connection is served with on this path.
pub struct Serving<'a> {
    /// The request handler.
    pub proxy: &'a Arc<Proxy>,
    /// The client's connection.
    pub conn: &'a ClientConn,
    /// The connection's requests in progress (the guard's timers read it).
    pub activity: &'a Arc<Activity>,
    /// Head limits.
    pub limits: HeadLimits,
    /// Cancelled when the connection must finish its current request and close.
    pub drain: &'a CancellationToken,
}

/// How serving a connection on this path ended.
pub enum Served<IO> {
    /// The connection is closed.
    Closed,
    /// A request this path does not serve came: hyper serves the connection from it on (the
    /// bytes read so far are replayed to it).
    ToHyper(Box<GuardedIo<IO>>),
}

/// What follows a request.
enum Next {
    /// The next request.
    KeepAlive,
    /// The close.
    Close,
}

/// Serves `io` until it closes, `serving.drain` asks it to, or a request needs hyper.
pub async fn serve<IO>(mut io: GuardedIo<IO>, serving: &Serving<'_>) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The guard checks every head as it is read: its index is kept for the reader. Its timer
    // says when an idle connection is to be parked.
    io.keep_head_indexes(true);
    io.park_after(Some(PARK_AFTER));
    let mut wire = Wire::new(io);
    // Made once: a wait made anew for each request would join and leave the token's list of
    // waiters each time.
    let drained = serving.drain.cancelled();
    let mut drained = std::pin::pin!(drained);
    let mut drain = DrainWatch::new(serving.drain, drained.as_mut());
    loop {
        let head = tokio::select! {
            biased;
            _ = poll_fn(|cx| drain.poll_drained(cx)) => return close(wire).await,
            head = next_head(&mut wire, serving.activity, serving.limits) => head,
        };
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) | Err(RequestHeadError::Truncated | RequestHeadError::Io(_)) => {
                return close(wire).await
            }
            Err(RequestHeadError::Refused(violation)) => {
                let refusal = http1_refusal(RouterError::Framing(violation));
                let _ = wire.write_all(&refusal).await;
                // The client may still be sending the refused request.
                wire.get_mut().linger_on_close();
                return close(wire).await;
            }
        };
        let asked = Asked {
            head_request: head.method() == b"HEAD",
            keep_alive: head.keep_alive(),
        };
        let request = match request::take(&mut wire, head, serving) {
            Ok(request) => request,
            Err(head) => return hand_over(wire, &head),
        };
        // Boxed: the request path's state lives only while a request does, so an idle
        // connection stays small; made here, so the request is not held by this loop's future.
        let handled = Box::pin(serving.proxy.clone().handle(request, serving.conn.clone()));
        match exchange(&mut wire, handled, asked, serving, &mut drain).await {
            Next::KeepAlive => {}
            Next::Close => return close(wire).await,
        }
    }
}

/// A connection without a request for this long gives its read buffer back until its next byte
/// arrives (hyper's connections were parked after as long).
const PARK_AFTER: Duration = Duration::from_secs(2);

/// Reads the next request head. While nothing of it has arrived for [`PARK_AFTER`] (the
/// guard's timer says when, [`Activity::take_park_due`]), the connection is parked: its read
/// buffer and the guard's kept head indexes are released and its next bytes are read into a
/// small one (the guard's keep-alive timer still ends the wait).
async fn next_head<IO>(
    wire: &mut Wire<GuardedIo<IO>>,
    activity: &Activity,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, RequestHeadError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // A park time marked during an earlier wait is not this one's.
    activity.take_park_due();
    let mut idle = wire.buffered().is_empty();
    loop {
        tokio::select! {
            biased;
            head = wire.request_head_indexed(limits, GuardedIo::take_head_index) => return head,
            _ = poll_fn(|_| park_due(activity)), if idle => {}
        }
        idle = false;
        if !wire.buffered().is_empty() {
            continue;
        }
        wire.release_buffer();
        wire.get_mut().release_head_indexes();
        let mut first = [0u8; 64];
        match wire.get_mut().read(&mut first).await? {
            0 => return Ok(None),
            n => wire.extend_buffered(&first[..n]),
        }
    }
}

/// Ready when the guard marked the park time of an idle connection (its timer wakes the task).
fn park_due(activity: &Activity) -> Poll<()> {
    match activity.take_park_due() {
        true => Poll::Ready(()),
        false => Poll::Pending,
    }
}

/// Waits for the answer `handled` gives and writes it; the connection closes after it when the
/// client went away, asked for the close, the answer needs it, or the router is draining.
async fn exchange<IO, F>(
    wire: &mut Wire<GuardedIo<IO>>,
    handled: Pin<Box<F>>,
    mut asked: Asked,
    serving: &Serving<'_>,
    drain: &mut DrainWatch<'_, '_>,
) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = Answer>,
{
    let in_progress = serving.activity.begin();
    let Some(answer) = answered(wire, handled).await else {
        // The client went away: the request was dropped (counted and logged as 499).
        return Next::Close;
    };
    asked.keep_alive &= !drain.is_drained();
    let close = respond::write(wire, answer, asked).await;
    drop(in_progress);
    match close || drain.is_drained() {
        true => Next::Close,
        false => Next::KeepAlive,
    }
}

/// Waits for `handled`'s answer; `None` when the client closed the connection first (watched
/// as hyper watched it: while nothing of a next request is buffered).
async fn answered<IO, F>(wire: &mut Wire<IO>, mut handled: Pin<Box<F>>) -> Option<F::Output>
where
    IO: AsyncRead + Unpin,
    F: Future,
{
    poll_fn(|cx| {
        if let Poll::Ready(answer) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(answer));
        }
        if wire.buffered().is_empty() {
            if let Poll::Ready(Ok(0) | Err(_)) = wire.poll_fill(cx) {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await
}

/// Gives the connection to hyper with `head` and everything read after it.
fn hand_over<IO>(wire: Wire<GuardedIo<IO>>, head: &RequestHead) -> Served<IO> {
    let (mut io, rest) = wire.into_parts();
    io.keep_head_indexes(false);
    io.park_after(None);
    io.replay(head.shared().clone());
    if !rest.is_empty() {
        io.replay(rest.freeze());
    }
    tracing::trace!("an HTTP/1 connection goes on with hyper");
    Served::ToHyper(Box::new(io))
}

/// Shuts the connection down (lingering after a refusal: `server::linger`).
async fn close<IO>(wire: Wire<GuardedIo<IO>>) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut io, _) = wire.into_parts();
    let _ = io.shutdown().await;
    Served::Closed
}

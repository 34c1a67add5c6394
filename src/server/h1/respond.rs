//! Writing an answer to the client on the byte-level path: the head by hyper's rules
//! (`http1::reply`; a pod's head from its bytes, `http1::relay`, no header map built), then the body as it comes, framed for the client, in as few writes as
//! possible (the head and a body that is ready go in one write, a TLS connection sends them as
//! one record when they fit). Frames that are ready are gathered up to [`WRITE_BATCH`] bytes
//! before a write; a body that waits for its pod has what came before written and flushed
//! first. The client's close is watched as hyper watched it (while nothing of a next request is
//! buffered): the body is then dropped, and its access-log line says it did not end.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use bytes::Buf;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http1::body::BodyEncoder;
use crate::http1::pending::Pending;
use crate::http1::reply::{Asked, Framing};
use crate::http1::wire::Wire;
use crate::proxy::{Answer, ResponseBody};

/// Encoded body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// What the body has for the client next.
enum Step {
    /// Bytes to write; the body goes on.
    Write,
    /// Bytes to write; the body has ended.
    End,
    /// The body failed, or the client closed the connection.
    Broken,
}

/// Writes `answer` to the client; whether the connection must close after it (the answer
/// says so, its body only ends with the close, or writing it failed). The head is written into
/// a buffer when this is called; the returned future holds only the body and that buffer
/// (`docs/ARCHITECTURE.md`, "The request's future").
pub(super) fn write<'w, IO>(
    wire: &'w mut Wire<IO>,
    answer: Answer,
    asked: Asked,
) -> impl Future<Output = bool> + 'w
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Pending::with_capacity(512);
    let (framing, close, mut body) = answer.write_http1_head(out.buf(), asked);
    async move {
        let sent = match framing {
            Framing::None => {
                // Nothing of the body goes to the client: it is not read (as hyper did not).
                drop(body);
                out.write_to(wire.get_mut()).await.is_ok()
            }
            Framing::Body(encoder) => send_body(wire, &mut body, encoder, out).await,
        };
        close || !sent
    }
}

/// Sends `body` after what `out` holds (the head); whether all of it was sent.
async fn send_body<IO>(
    wire: &mut Wire<IO>,
    body: &mut ResponseBody,
    encoder: BodyEncoder,
    mut out: Pending,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let step = poll_fn(|cx| {
            while out.len() < WRITE_BATCH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers are not sent: the client did not ask for them (`TE`).
                        if let Ok(data) = frame.into_data() {
                            if data.has_remaining() {
                                encoder.encode(&data, out.buf());
                            }
                        }
                        if body.is_end_stream() {
                            encoder.finish(out.buf());
                            return Poll::Ready(Step::End);
                        }
                    }
                    Poll::Ready(None) => {
                        encoder.finish(out.buf());
                        return Poll::Ready(Step::End);
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Step::Broken),
                    Poll::Pending if !out.is_empty() => return Poll::Ready(Step::Write),
                    Poll::Pending => {
                        if wire.buffered().is_empty() {
                            if let Poll::Ready(Ok(0) | Err(_)) = wire.poll_fill(cx) {
                                return Poll::Ready(Step::Broken);
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
            Poll::Ready(Step::Write)
        })
        .await;
        match step {
            Step::Write if out.write_to(wire.get_mut()).await.is_ok() => {}
            Step::End => return out.write_to(wire.get_mut()).await.is_ok(),
            Step::Write | Step::Broken => return false,
        }
    }
}

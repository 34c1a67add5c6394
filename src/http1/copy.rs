//! Copying a message body from one connection to the other in the request's own task, decoded
//! with the framing it came with and encoded with the framing the other side gets.
//!
//! [`send_body`] carries a request body to the pod. It writes what is pending (the head, and
//! the body bytes that came with it, in one write when they fit), then copies the rest as it
//! arrives; it stops early when the pod starts answering before the body is sent (a pod may
//! refuse a body it does not want), and says so: that connection cannot carry another request.
//!
//! [`relay`] carries a response body to the client. It reads the pod's body ahead of the
//! client, up to a bound, so that the pod is done with the request at its own speed when the
//! body fits; it returns when the pod's body has ended, with what the client has not taken yet
//! still pending.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{BodyDecoder, BodyEncoder, BodyError};
use super::chunked::Chunk;
use super::wire::Wire;

/// Encoded bytes gathered before they are written (bigger bodies go in several writes).
const WRITE_BATCH: usize = 64 * 1024;

/// Bytes queued for a connection: `bytes[written..]` is still to be written.
#[derive(Debug, Default)]
pub struct Pending {
    bytes: Vec<u8>,
    written: usize,
}

impl Pending {
    /// Nothing queued, with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Pending {
            bytes: Vec::with_capacity(capacity),
            written: 0,
        }
    }

    /// The buffer to append to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Bytes still to be written.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.written
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what is queued to `io` until all is written (then the buffer is emptied for
    /// reuse) or `io` is not ready.
    pub fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.bytes.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.bytes.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued to `io`, then flushes it.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_to(io, cx)).await?;
        poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
    }
}

/// How a request body's sending ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The whole body reached the pod.
    Complete,
    /// The pod started answering (or closed) before the body was sent: the rest was not sent.
    PodAnswered,
}

/// Why a request body could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The client's body is malformed or ended early (400).
    #[error("reading the request body failed: {0}")]
    Client(#[from] BodyError),
    /// Reading from the client failed.
    #[error("reading the request body failed: {0}")]
    ClientIo(io::Error),
    /// The body grew past the limit (413).
    #[error("the request body is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Writing to the pod failed.
    #[error("writing to the pod failed: {0}")]
    Pod(io::Error),
}

/// Sees every piece of a body as it passes; `Send`, so a request future that copies a body can
/// run on any worker.
pub type Tap<'a> = &'a mut (dyn FnMut(&[u8]) + Send);

/// What a request body passes through on its way to the pod.
pub struct Outbound<'a> {
    /// How the body is framed where it comes from.
    pub decoder: &'a mut BodyDecoder,
    /// How it is framed for the pod.
    pub encoder: BodyEncoder,
    /// Largest body accepted.
    pub limit: u64,
    /// Body bytes seen so far (decoded).
    pub seen: u64,
    /// Sees every piece of the body (a mirror's copy).
    pub tap: Option<Tap<'a>>,
}

impl Outbound<'_> {
    /// Moves what `client` has buffered of the body into `pending`, encoded: whether the body
    /// has ended.
    fn take<C>(&mut self, client: &mut Wire<C>, pending: &mut Pending) -> Result<bool, SendError> {
        while pending.len() < WRITE_BATCH {
            let (used, found) = self.decoder.decode(client.buffered())?;
            let step = Step::of(&found);
            if let Chunk::Data(data) = found {
                self.seen += data.len() as u64;
                if self.seen > self.limit {
                    return Err(SendError::TooLarge { limit: self.limit });
                }
                if let Some(tap) = self.tap.as_mut() {
                    tap(data);
                }
                self.encoder.encode(data, pending.buf());
            }
            client.consume(used);
            match step {
                Step::End => {
                    self.encoder.finish(pending.buf());
                    return Ok(true);
                }
                Step::More => return Ok(false),
                Step::Data => {}
            }
        }
        Ok(false)
    }
}

/// What a decoding step found, without the data it borrows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Data,
    More,
    End,
}

impl Step {
    fn of(chunk: &Chunk<'_>) -> Self {
        match chunk {
            Chunk::Data(_) => Step::Data,
            Chunk::More => Step::More,
            Chunk::End => Step::End,
        }
    }
}

/// Writes `pending` to the pod, then the rest of the request body from `client`. Stops early
/// when the pod sends anything (or closes) before the body is sent; what the pod sent stays in
/// its buffer.
pub async fn send_body<C, P>(
    client: &mut Wire<C>,
    pod: &mut Wire<P>,
    pending: &mut Pending,
    mut body: Outbound<'_>,
) -> Result<Sent, SendError>
where
    C: AsyncRead + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let mut ended = body.decoder.is_done() || body.take(client, pending)?;
    poll_fn(|cx| loop {
        match pending.poll_write_to(pod.get_mut(), cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Pod(e))),
            Poll::Pending => return pod_answered(pod, cx),
        }
        if ended {
            return Poll::Ready(Ok(Sent::Complete));
        }
        ended = body.take(client, pending)?;
        if ended || !pending.is_empty() {
            continue;
        }
        match client.poll_fill(cx) {
            Poll::Ready(Ok(0)) => {
                body.decoder.at_eof()?;
                ended = true;
                body.encoder.finish(pending.buf());
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::ClientIo(e))),
            Poll::Pending => return pod_answered(pod, cx),
        }
    })
    .await
}

/// While waiting on something else: ready with [`Sent::PodAnswered`] when the pod has sent
/// something or closed.
fn pod_answered<P: AsyncRead + Unpin>(
    pod: &mut Wire<P>,
    cx: &mut Context<'_>,
) -> Poll<Result<Sent, SendError>> {
    match pod.poll_fill(cx) {
        Poll::Ready(_) => Poll::Ready(Ok(Sent::PodAnswered)),
        Poll::Pending => Poll::Pending,
    }
}

/// Why a response body could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The pod's body is malformed or ended early.
    #[error("the pod's response body broke: {0}")]
    Pod(#[from] BodyError),
    /// Reading from the pod failed.
    #[error("reading the pod's response body failed: {0}")]
    PodIo(io::Error),
    /// Writing to the client failed.
    #[error("writing to the client failed: {0}")]
    Client(io::Error),
}

/// Relays the pod's response body to `client` after `pending` (the client's head, and any
/// body bytes already encoded): reads the pod's body as it comes, at most `read_ahead` bytes
/// ahead of the client, and writes it encoded. Returns the body bytes read (decoded) once the
/// pod's body has ended; what the client has not taken yet is still in `pending`.
pub async fn relay<P, C>(
    pod: &mut Wire<P>,
    decoder: &mut BodyDecoder,
    encoder: BodyEncoder,
    client: &mut C,
    pending: &mut Pending,
    read_ahead: usize,
) -> Result<u64, RelayError>
where
    P: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut bytes = 0u64;
    let mut ended = false;
    poll_fn(|cx| loop {
        let mut read_pending = false;
        while !ended && pending.len() < read_ahead.max(1) {
            let (used, found) = decoder.decode(pod.buffered())?;
            let step = Step::of(&found);
            if let Chunk::Data(data) = found {
                bytes += data.len() as u64;
                encoder.encode(data, pending.buf());
            }
            pod.consume(used);
            match step {
                Step::End => ended = true,
                Step::Data => {}
                Step::More => match pod.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        decoder.at_eof()?;
                        ended = true;
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(RelayError::PodIo(e))),
                    Poll::Pending => {
                        read_pending = true;
                        break;
                    }
                },
            }
            if ended {
                encoder.finish(pending.buf());
            }
        }
        if ended {
            return Poll::Ready(Ok(bytes));
        }
        match pending.poll_write_to(client, cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(RelayError::Client(e))),
            Poll::Pending if read_pending => return Poll::Pending,
            // The client is full and the bound is reached: wait for the client.
            Poll::Pending if pending.len() >= read_ahead.max(1) => return Poll::Pending,
            Poll::Pending => {}
        }
        if read_pending && pending.is_empty() {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::http1::body::decode_chunked;

    /// A client wire whose peer sends `pieces`, one write each, then closes unless `hold`.
    fn client_sending(pieces: Vec<&'static [u8]>, hold: bool) -> Wire<DuplexStream> {
        let (ours, mut theirs) = duplex(1 << 20);
        tokio::spawn(async move {
            for piece in pieces {
                theirs.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if hold {
                std::future::pending::<()>().await;
            }
        });
        Wire::new(ours)
    }

    fn outbound<'a>(
        decoder: &'a mut BodyDecoder,
        encoder: BodyEncoder,
        limit: u64,
    ) -> Outbound<'a> {
        Outbound {
            decoder,
            encoder,
            limit,
            seen: 0,
            tap: None,
        }
    }

    async fn read_all(mut io: DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_chunked_body_reaches_the_pod_rechunked_after_the_head() {
        let mut client = client_sending(
            vec![b"5\r\nhel", b"lo\r\n3;x\r\n!!!\r\n0\r\nT: 1\r\n\r\nNEXT"],
            true,
        );
        let (pod_side, pod_peer) = duplex(1 << 20);
        let mut pod = Wire::new(pod_side);
        let mut pending = Pending::default();
        pending.buf().extend_from_slice(b"HEAD\r\n\r\n");
        let mut decoder = BodyDecoder::chunked(1024);
        let mut copy = Vec::new();
        let mut tap = |data: &[u8]| copy.extend_from_slice(data);
        let mut body = outbound(&mut decoder, BodyEncoder::Chunked, 100);
        body.tap = Some(&mut tap);
        let sent = send_body(&mut client, &mut pod, &mut pending, body)
            .await
            .unwrap();
        assert_eq!(sent, Sent::Complete);
        assert_eq!(
            client.buffered(),
            b"NEXT",
            "the next request stays for the next head"
        );
        assert_eq!(copy, b"hello!!!");
        drop(pod);
        let received = read_all(pod_peer).await;
        let text = String::from_utf8(received).unwrap();
        assert!(
            text.starts_with("HEAD\r\n\r\n") && text.ends_with("0\r\n\r\n"),
            "{text:?}"
        );
        let (data, _) = decode_chunked(&text.as_bytes()[8..]);
        assert_eq!(data, b"hello!!!");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_broken_or_cut_short_fail() {
        type Case = (Vec<&'static [u8]>, BodyDecoder, fn(&SendError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![b"0123456789", b"x"], BodyDecoder::length(11), |e| {
                matches!(e, SendError::TooLarge { limit: 10 })
            }),
            (vec![b"5\r\nhelloXX"], BodyDecoder::chunked(64), |e| {
                matches!(e, SendError::Client(BodyError::BadChunk(_)))
            }),
            (vec![b"abc"], BodyDecoder::length(5), |e| {
                matches!(e, SendError::Client(BodyError::Truncated))
            }),
        ];
        for (pieces, mut decoder, expected) in cases {
            let mut client = client_sending(pieces, false);
            let (pod_side, _pod_peer) = duplex(1 << 20);
            let mut pod = Wire::new(pod_side);
            let mut pending = Pending::default();
            let body = outbound(&mut decoder, BodyEncoder::Length, 10);
            let error = send_body(&mut client, &mut pod, &mut pending, body)
                .await
                .unwrap_err();
            assert!(expected(&error), "{error:?}");
        }
    }

    #[tokio::test]
    async fn a_pod_answering_before_the_body_is_sent_stops_the_sending() {
        // The client sends part of a body and waits; the pod answers at once.
        let mut client = client_sending(vec![b"part of a body"], true);
        let (pod_side, mut pod_peer) = duplex(64);
        let mut pod = Wire::new(pod_side);
        tokio::spawn(async move {
            let mut head = [0u8; 8];
            pod_peer.read_exact(&mut head).await.unwrap();
            pod_peer
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\n\r\n")
                .await
                .unwrap();
            std::future::pending::<()>().await;
        });
        let mut pending = Pending::default();
        pending.buf().extend_from_slice(b"HEAD\r\n\r\n");
        let mut decoder = BodyDecoder::length(1 << 20);
        let body = outbound(&mut decoder, BodyEncoder::Length, u64::MAX);
        let sent = send_body(&mut client, &mut pod, &mut pending, body)
            .await
            .unwrap();
        assert_eq!(sent, Sent::PodAnswered);
        let (head, _) = pod.response_head(false).await.unwrap();
        assert_eq!(head.status(), 413);
    }

    /// A pod wire whose peer sends `body` after `head`, then keeps the connection open.
    fn pod_sending(body: Vec<u8>) -> Wire<DuplexStream> {
        let (ours, mut theirs) = duplex(1 << 20);
        tokio::spawn(async move {
            for piece in body.chunks(1000) {
                theirs.write_all(piece).await.unwrap();
            }
            std::future::pending::<()>().await;
        });
        Wire::new(ours)
    }

    #[tokio::test]
    async fn a_response_that_fits_is_read_whole_while_the_client_reads_nothing() {
        let body = vec![b'x'; 100_000];
        let mut pod = pod_sending(body.clone());
        // The client's side holds 1 KiB and nobody reads it.
        let (mut client, _client_peer) = duplex(1024);
        let mut pending = Pending::default();
        pending.buf().extend_from_slice(b"HEAD\r\n\r\n");
        let mut decoder = BodyDecoder::length(body.len() as u64);
        let relayed = tokio::time::timeout(
            Duration::from_secs(10),
            relay(
                &mut pod,
                &mut decoder,
                BodyEncoder::Length,
                &mut client,
                &mut pending,
                1 << 20,
            ),
        )
        .await
        .expect("the pod's body is read although the client reads nothing")
        .unwrap();
        assert_eq!(relayed, 100_000);
        assert!(pending.len() > 90_000, "the rest waits for the client");
    }

    #[tokio::test]
    async fn a_response_over_the_bound_waits_for_the_client_and_arrives_whole() {
        let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut pod = pod_sending(body.clone());
        let (mut client, client_peer) = duplex(4096);
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            read_all(client_peer).await
        });
        let mut pending = Pending::default();
        let mut decoder = BodyDecoder::length(body.len() as u64);
        let relayed = relay(
            &mut pod,
            &mut decoder,
            BodyEncoder::Chunked,
            &mut client,
            &mut pending,
            16 * 1024,
        )
        .await
        .unwrap();
        assert_eq!(relayed, 300_000);
        pending.write_to(&mut client).await.unwrap();
        drop(client);
        let received = reader.await.unwrap();
        let (data, _) = decode_chunked(&received);
        assert_eq!(data, body);
    }

    #[tokio::test]
    async fn a_pod_that_closes_mid_body_breaks_the_relay() {
        let (ours, mut theirs) = duplex(1 << 16);
        tokio::spawn(async move {
            theirs.write_all(b"5\r\nhel").await.unwrap();
        });
        let mut pod = Wire::new(ours);
        let (mut client, _peer) = duplex(1 << 16);
        let mut pending = Pending::default();
        let mut decoder = BodyDecoder::chunked(64);
        let error = relay(
            &mut pod,
            &mut decoder,
            BodyEncoder::Chunked,
            &mut client,
            &mut pending,
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, RelayError::Pod(BodyError::Truncated)),
            "{error:?}"
        );
        let (ours, mut theirs) = duplex(1 << 16);
        tokio::spawn(async move {
            theirs.write_all(b"until the end").await.unwrap();
        });
        let mut pod = Wire::new(ours);
        let mut decoder = BodyDecoder::UntilClose;
        let relayed = relay(
            &mut pod,
            &mut decoder,
            BodyEncoder::Chunked,
            &mut client,
            &mut pending,
            1 << 20,
        )
        .await
        .unwrap();
        assert_eq!(relayed, 13, "a close-delimited body ends with the close");
    }
}

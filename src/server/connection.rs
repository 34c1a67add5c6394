//! One client connection: pick the protocol, serve it, and end it on drain or idle.
//!
//! HTTP/2 is chosen by ALPN on TLS and by the connection preface on plain TCP (h2c with prior
//! knowledge); everything else is HTTP/1.1 behind the [`GuardedIo`] framing guard, served
//! byte-level by [`super::h1`] until a request needs hyper's server, which then serves the rest
//! of the connection (`docs/ARCHITECTURE.md`, the request path). HTTP/2 runs
//! behind [`H2Io`] and its [`H2Watch`] (stalled streams, reset floods). Every write is timed
//! ([`SendTimeout`]). On drain, HTTP/2 gets GOAWAY and HTTP/1.1 answers its current request
//! with `Connection: close`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::guard::{Activity, ActivityGuard, GuardSettings, GuardedIo};
use super::h1;
use super::h2::{H2Io, H2Watch, StreamGuard};
use super::send_timeout::SendTimeout;
use crate::config::LimitsConfig;
use crate::http1::framing::HeadLimits;
use crate::proxy::{ClientBody, ClientConn, ClientRequest, Proxy, ResponseBody};
use crate::telemetry::{names, Metrics};

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How client connections are served: hyper builders and the guard's settings.
pub struct ConnectionSettings {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    guard: GuardSettings,
    pub(super) max_connections: usize,
    send_timeout: Duration,
    h2_reset_streams_per_second: u32,
    send_timeouts: metrics::Counter,
    reset_floods: metrics::Counter,
}

impl ConnectionSettings {
    /// Settings from the configured limits; connections closed for their client's sake are
    /// counted in `metrics`.
    pub fn new(limits: &LimitsConfig, metrics: &Metrics) -> Self {
        let guard = GuardSettings {
            limits: HeadLimits {
                max_header_bytes: limits.max_header_bytes,
                max_headers: limits.max_headers,
            },
            header_timeout: Duration::from_millis(limits.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(limits.keep_alive_timeout_ms),
        };
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // The guard owns both timeouts; hyper's own would close idle connections early.
            .header_read_timeout(None)
            .keep_alive(true)
            .half_close(false)
            // The guard refuses first with a JSON body; hyper's limits stay as a backstop.
            .max_buf_size((limits.max_header_bytes + 4096).max(8192));
        if limits.max_headers > 100 {
            // Above hyper's default, headers move to the heap: only pay that when configured.
            http1.max_headers(limits.max_headers);
        }
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.h2_max_header_list_bytes)
            .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams);
        ConnectionSettings {
            http1,
            http2,
            guard,
            max_connections: limits.max_connections,
            send_timeout: Duration::from_millis(limits.send_timeout_ms),
            h2_reset_streams_per_second: limits.h2_reset_streams_per_second,
            send_timeouts: metrics.counter(names::CLIENT_SEND_TIMEOUTS, &[]),
            reset_floods: metrics.counter(names::H2_RESET_FLOODS, &[]),
        }
    }

    /// `io` with its writes timed by the send timeout.
    fn timed<IO>(&self, io: IO) -> SendTimeout<IO> {
        SendTimeout::new(io, self.send_timeout, self.send_timeouts.clone())
    }

    /// Time a client has for its TLS handshake or first bytes.
    pub fn header_timeout(&self) -> Duration {
        self.guard.header_timeout
    }
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2.
    Http2,
}

/// Looks at the first bytes of a plain connection without consuming them: the HTTP/2 preface
/// means h2c with prior knowledge. Gives up (HTTP/1) at the header timeout.
///
/// A partial preface waits for the socket to receive more bytes, never on a timer: a client
/// that sends part of the preface and stops costs nothing until the header timeout.
pub async fn sniff_plain(stream: &TcpStream, timeout: Duration) -> Protocol {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Protocol::Http1,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Protocol::Http1;
        }
        if n == H2_PREFACE.len() {
            return Protocol::Http2;
        }
        let more = tokio::time::timeout_at(deadline, more_than(stream, n)).await;
        if !matches!(more, Ok(Ok(More::Arrived))) {
            return Protocol::Http1;
        }
    }
}

/// What waiting for more of a partial preface ended with.
#[derive(Debug, PartialEq, Eq)]
enum More {
    /// The socket holds more bytes than were seen.
    Arrived,
    /// The peer closed its side: no more bytes will come.
    Closed,
}

/// Waits until the socket holds more than `seen` bytes, or its peer closed.
///
/// The socket stays readable while the partial preface sits in it, so waiting for readability
/// alone would return at once, again and again. Each check peeks inside `try_io`: when nothing
/// new has arrived, the readiness is cleared — unless a new event came in meanwhile, which tokio
/// keeps (its readiness carries a tick), so bytes that arrive during the check are not missed.
/// A peer's close is a final readiness that cannot be cleared (and waiting for readiness does
/// not yield to the scheduler): once it is seen, nothing more can come and the wait ends.
async fn more_than(stream: &TcpStream, seen: usize) -> std::io::Result<More> {
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 24];
    loop {
        let ready = stream.ready(tokio::io::Interest::READABLE).await?;
        let peer_closed = ready.is_read_closed();
        let checked = stream.try_io(
            tokio::io::Interest::READABLE,
            || match socket2::SockRef::from(stream).peek(&mut scratch)? {
                n if n > seen => Ok(More::Arrived),
                n if n == 0 || peer_closed => Ok(More::Closed),
                _ => Err(std::io::ErrorKind::WouldBlock.into()),
            },
        );
        match checked {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            outcome => return outcome,
        }
    }
}

/// The longest plain-HTTP head read from a TLS port before it is answered.
const PLAIN_HEAD_MAX: usize = 16 * 1024;

/// Whether a connection to the TLS port starts with plain HTTP: a TLS record starts with a
/// content type byte (22 for a handshake), an HTTP/1 request with the method's capital letters.
/// Waits for the first byte at most until `deadline`.
pub async fn starts_with_plain_http(stream: &TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout_at(deadline, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0].is_ascii_uppercase()
    )
}

/// Answers plain HTTP sent to the TLS port with 400, as nginx does: reads the head (so closing
/// does not reset the connection before the client reads the answer), writes the refusal, closes.
pub async fn refuse_plain_http(mut stream: TcpStream, deadline: tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < PLAIN_HEAD_MAX && memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answer =
        crate::proxy::error::http1_refusal(crate::proxy::RouterError::PlainHttpToHttpsPort);
    let _ = tokio::time::timeout_at(deadline, stream.write_all(&answer)).await;
    let _ = stream.shutdown().await;
}

/// A response body that marks its request finished when it ends or is dropped; on HTTP/2, it
/// also tells the connection's watch when the body waits for the client.
pub struct TrackedBody {
    inner: ResponseBody,
    activity: Option<ActivityGuard>,
    stream: Option<StreamGuard>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream();
        if let Some(stream) = &mut self.stream {
            if ended {
                stream.finished();
            } else {
                stream.polled(polled.is_ready());
            }
        }
        if ended {
            self.activity = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // A body with nothing to send is never polled: its stream has ended all the same.
        if let (Some(stream), true) = (&mut self.stream, self.inner.is_end_stream()) {
            stream.finished();
        }
    }
}

/// An HTTP/1 connection without a request for this long releases hyper's buffers (about
/// 10 KiB) until its next byte arrives; see [`serve_http1`].
const PARK_AFTER: Duration = Duration::from_secs(2);

/// Serves an HTTP/1 connection until it closes or `drain` asks it to finish.
///
/// hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for every connection, idle or
/// not. A keep-alive connection that has been idle for [`PARK_AFTER`] is therefore *parked*:
/// the hyper connection ends without shutting the socket, the socket waits with no buffers, and
/// a new hyper connection serves it when the client's next byte arrives (that byte, and anything
/// hyper had read, is replayed). The framing guard and its timers live on across.
async fn serve_http1<IO, S>(
    mut io: GuardedIo<IO>,
    service: S,
    activity: &Activity,
    settings: &ConnectionSettings,
    drain: CancellationToken,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = TrackedBody> + Clone + Unpin,
    S::Future: Send + Unpin + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut connection = settings
            .http1
            .serve_connection(TokioIo::new(io), service.clone());
        // Set when the connection is being released to park: the requests started by then.
        let mut parking: Option<u64> = None;
        let mut draining = drain.is_cancelled();
        if draining {
            Pin::new(&mut connection).graceful_shutdown();
        }
        let result = loop {
            // Checked again at the latest one PARK_AFTER from now, busy or not.
            let park_at = (parking.is_none() && !draining).then(|| match activity.in_progress() {
                0 => activity.last_done() + PARK_AFTER,
                _ => tokio::time::Instant::now() + PARK_AFTER,
            });
            tokio::select! {
                result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break result,
                _ = drain.cancelled(), if !draining => {
                    draining = true;
                    Pin::new(&mut connection).graceful_shutdown();
                }
                _ = tokio::time::sleep_until(park_at.unwrap_or_else(tokio::time::Instant::now)), if park_at.is_some() => {
                    let idle = activity.in_progress() == 0
                        && activity.at_boundary()
                        && activity.last_done() + PARK_AFTER <= tokio::time::Instant::now();
                    if idle {
                        parking = Some(activity.started());
                        Pin::new(&mut connection).graceful_shutdown();
                    }
                }
            }
        };
        let parts = connection.into_parts();
        io = parts.io.into_inner();
        // Park only if the release found the connection idle: a request that slipped in was
        // answered with `Connection: close`, and the connection must end.
        let park = result.is_ok() && !draining && parking == Some(activity.started());
        if !park {
            let _ = io.shutdown().await;
            return result;
        }
        if !parts.read_buf.is_empty() {
            io.replay(parts.read_buf);
            continue;
        }
        // Parked: wait for the next byte (the guard's keep-alive timer ends the wait quietly).
        let mut first = [0u8; 64];
        let read = tokio::select! {
            read = io.read(&mut first) => read,
            _ = drain.cancelled() => Ok(0),
        };
        match read {
            Ok(n) if n > 0 => io.replay(Bytes::copy_from_slice(&first[..n])),
            _ => {
                let _ = io.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// What the service returns per request.
type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<TrackedBody>, Infallible>> + Send>>;

/// Serves an HTTP/2 connection until it closes, is idle (no stream yet for the header timeout,
/// none for the keep-alive timeout), a stream stalls for the send timeout, its client resets
/// too many streams (GOAWAY `ENHANCE_YOUR_CALM`), or `drain` asks it to finish (GOAWAY).
async fn serve_http2<IO, S>(
    io: H2Io<SendTimeout<IO>>,
    service: S,
    activity: &Activity,
    watch: &H2Watch,
    settings: &ConnectionSettings,
    drain: CancellationToken,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = TrackedBody>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = settings.http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let send_timeout = settings.send_timeout;
    let mut calming = false;
    loop {
        let idle = match activity.started() {
            0 => settings.guard.header_timeout,
            _ => settings.guard.keep_alive_timeout,
        };
        let next_check = match activity.in_progress() {
            0 => activity.last_done() + idle,
            _ => tokio::time::Instant::now() + (send_timeout / 4).min(idle),
        };
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = drain.cancelled() => {
                connection.as_mut().graceful_shutdown();
                break connection.await;
            }
            _ = watch.calm_requested(), if !calming => {
                // hyper's GOAWAY is written as ENHANCE_YOUR_CALM by `H2Io`, which then ends the
                // connection.
                calming = true;
                settings.reset_floods.increment(1);
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(next_check) => {
                let now = tokio::time::Instant::now();
                if activity.in_progress() == 0 && activity.last_done() + idle <= now {
                    connection.as_mut().graceful_shutdown();
                    break connection.await;
                }
                if activity.in_progress() > 0 && watch.stalled(send_timeout) {
                    settings.send_timeouts.increment(1);
                    break Ok(());
                }
            }
        }
    }
}

/// Serves one connection, accepted at `accepted`, until it closes, is idle for the keep-alive
/// timeout, or `drain` asks it to finish what it has.
pub async fn serve<IO>(
    io: IO,
    accepted: tokio::time::Instant,
    protocol: Protocol,
    conn: ClientConn,
    proxy: Arc<Proxy>,
    settings: &ConnectionSettings,
    drain: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(accepted);
    let service_activity = activity.clone();
    let watch =
        (protocol == Protocol::Http2).then(|| H2Watch::new(settings.h2_reset_streams_per_second));
    let service_watch = watch.clone();
    let remote = conn.remote;
    let (h1_proxy, h1_conn) = (proxy.clone(), conn.clone());
    let service = service_fn(move |request: Request<Incoming>| {
        let (proxy, conn) = (proxy.clone(), conn.clone());
        let guard = service_activity.begin();
        let mut stream = service_watch.as_ref().map(|watch| watch.stream());
        // Boxed: hyper keeps one service future per connection for the connection's whole
        // life; boxing makes the request path's state (about 4 KiB) live only while a request
        // does, so idle keep-alive connections stay small.
        let handled: ServiceFuture = Box::pin(async move {
            let answer = proxy
                .handle(
                    ClientRequest::from_http(request.map(ClientBody::Hyper)),
                    conn,
                )
                .await;
            let response = answer.into_response();
            if let Some(stream) = &mut stream {
                stream.responding();
            }
            Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                inner,
                activity: Some(guard),
                stream,
            }))
        });
        handled
    });
    let result = match (protocol, watch) {
        (Protocol::Http2, Some(watch)) => {
            let io = H2Io::new(settings.timed(io), watch.clone());
            // Boxed so that HTTP/1 connections do not carry HTTP/2's state.
            let served = serve_http2(io, service, &activity, &watch, settings, drain);
            Box::pin(served).await
        }
        _ => {
            let io = GuardedIo::new(settings.timed(io), settings.guard, activity.clone());
            let serving = h1::Serving {
                proxy: &h1_proxy,
                conn: &h1_conn,
                activity: &activity,
                limits: settings.guard.limits,
                drain: &drain,
            };
            // Both boxed: a connection still being sniffed, or a TLS one still shaking hands,
            // carries neither path's state, and one served here never carries hyper's.
            match Box::pin(h1::serve(io, &serving)).await {
                h1::Served::Closed => Ok(()),
                h1::Served::ToHyper(io) => {
                    let served = serve_http1(*io, service, &activity, settings, drain.clone());
                    Box::pin(served).await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %remote, error = %e, "client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A client connected to a fresh listener, and the router's side of the connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_preface_sent_in_two_parts_is_http2() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..16]).await.unwrap();
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&H2_PREFACE[16..]).await.unwrap();
            client
        });
        let sniffed = sniff_plain(&server, Duration::from_secs(30)).await;
        assert_eq!(sniffed, Protocol::Http2);
        drop(rest.await.unwrap());
    }

    /// A client that sends part of the preface and closes its side: the socket's closed
    /// readiness cannot be cleared, so the sniff must end there rather than wait (and spin)
    /// until the header timeout. Run on a thread of its own, so a spin fails the test instead
    /// of hanging it.
    #[test]
    fn a_partial_preface_whose_client_closes_is_http1_at_once() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let sniffed = runtime.block_on(async {
                let (mut client, server) = pair().await;
                client.write_all(&H2_PREFACE[..16]).await.unwrap();
                client.shutdown().await.unwrap();
                let sniffed = sniff_plain(&server, Duration::from_secs(3600)).await;
                drop(client);
                sniffed
            });
            let _ = done.send(sniffed);
        });
        let sniffed = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the sniff of a closed connection ends before its hour-long timeout");
        assert_eq!(sniffed, Protocol::Http1);
    }

    #[tokio::test]
    async fn a_preface_that_stops_is_http1_at_the_timeout_and_other_bytes_at_once() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..16]).await.unwrap();
        let sniffed = sniff_plain(&server, Duration::from_millis(100)).await;
        assert_eq!(sniffed, Protocol::Http1);
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        let sniffed = sniff_plain(&server, Duration::from_secs(30)).await;
        assert_eq!(sniffed, Protocol::Http1);
    }
}

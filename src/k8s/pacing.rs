//! Watches the API server ends right after accepting them are reopened after a growing delay.
//!
//! kube's watcher reopens a watch that ended cleanly at once and yields nothing about it, so a
//! server (or a proxy in front of it) that ends every watch immediately would be asked thousands
//! of times a second. The watcher's requests go through a client of the watch's own whose
//! [`Paced`] service sees them: a watch request that follows a watch accepted (HTTP 200) less
//! than [`SHORT_WATCH`] ago waits [`Backoff::next_delay`] first (250 ms doubling to 5 s); one
//! that follows a longer watch resets the delay. A request that follows a failed one is not
//! delayed here: the watch's own backoff already waited.
//!
//! An accepted watch is also progress for [`WatchHealth`]: a re-watch that succeeds yields no
//! event when nothing changed, and the watch works again all the same.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::health::WatchHealth;

/// A watch that ends sooner than this after the API server accepted it ended "at once".
pub const SHORT_WATCH: Duration = Duration::from_secs(1);

/// The pacing state of one watch.
pub struct Pacer {
    health: Arc<WatchHealth>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    accepted: Option<Instant>,
    backoff: Backoff,
}

impl Pacer {
    /// Pacing for the watch whose health is `health`.
    pub fn new(health: Arc<WatchHealth>) -> Arc<Pacer> {
        Arc::new(Pacer {
            health,
            state: Mutex::new(State::default()),
        })
    }

    /// A client that sends through `client` and paces its watch requests.
    pub fn client(self: &Arc<Self>, client: &Client) -> Client {
        let service = Paced {
            inner: client.clone(),
            pacer: self.clone(),
        };
        Client::new(service, client.default_namespace())
    }

    /// How long the next watch request waits.
    fn delay(&self) -> Option<Duration> {
        let mut state = self.state.lock();
        match state.accepted.take() {
            Some(at) if at.elapsed() < SHORT_WATCH => Some(state.backoff.next_delay()),
            Some(_) => {
                state.backoff.reset();
                None
            }
            None => None,
        }
    }

    fn accepted(&self) {
        self.state.lock().accepted = Some(Instant::now());
        self.health.progressed();
    }
}

/// The service of a paced client.
#[derive(Clone)]
struct Paced {
    inner: Client,
    pacer: Arc<Pacer>,
}

impl tower::Service<Request<Body>> for Paced {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (inner, pacer) = (self.inner.clone(), self.pacer.clone());
        Box::pin(async move {
            let watch = is_watch(request.uri());
            if watch {
                if let Some(delay) = pacer.delay() {
                    pacer.health.paced(delay);
                    tokio::time::sleep(delay).await;
                }
            }
            let response = inner.send(request).await?;
            if watch && response.status().is_success() {
                pacer.accepted();
            }
            Ok(response)
        })
    }
}

/// Whether a request is a watch (`watch=true` in its query).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_requests_are_recognised() {
        let watch: http::Uri = "/api/v1/secrets?&watch=true&timeoutSeconds=290"
            .parse()
            .unwrap();
        let list: http::Uri = "/api/v1/secrets?&limit=500".parse().unwrap();
        assert!(is_watch(&watch));
        assert!(!is_watch(&list));
    }

    #[tokio::test]
    async fn only_short_accepted_watches_are_delayed_and_the_delay_grows() {
        let health = crate::k8s::health::Health::new("testing", Arc::new(()));
        let pacer = Pacer::new(Arc::new(health.register("w".into(), "things")));
        assert_eq!(pacer.delay(), None, "the first watch");
        pacer.accepted();
        let first = pacer
            .delay()
            .expect("a watch that ended at once is delayed");
        pacer.accepted();
        let second = pacer.delay().expect("again");
        assert!(second > first, "{second:?} > {first:?}");
        assert_eq!(
            pacer.delay(),
            None,
            "after a failure the watch's own backoff waited"
        );
        pacer.state.lock().accepted = Some(Instant::now() - SHORT_WATCH * 2);
        assert_eq!(pacer.delay(), None, "a long watch");
        pacer.accepted();
        assert!(
            pacer.delay().unwrap() <= super::super::backoff::MIN.mul_f64(1.2),
            "reset"
        );
    }
}

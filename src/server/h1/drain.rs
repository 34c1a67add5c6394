//! The router's drain as a connection's loop watches it between requests.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use std::future::Future;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The wait for the drain, made once per connection. Once polled with the connection task's
/// waker it holds that waker in the token's list of waiters, and the token wakes it when it is
/// cancelled: from then on the wait is looked at through the token's flag alone (polling it
/// again takes the list's lock to find nothing new), and polled again only with another waker.
pub(super) struct DrainWatch<'w, 't> {
    token: &'t CancellationToken,
    wait: Pin<&'w mut WaitForCancellationFuture<'t>>,
    /// The waker the wait holds.
    waker: Option<Waker>,
    /// The token was found not cancelled by [`DrainWatch::is_drained`] since the task last
    /// waited: the next poll, before the task waits again, need not look at it again.
    checked: bool,
}

impl<'w, 't> DrainWatch<'w, 't> {
    /// Watches `token` through `wait`, its `cancelled()` future.
    pub(super) fn new(
        token: &'t CancellationToken,
        wait: Pin<&'w mut WaitForCancellationFuture<'t>>,
    ) -> Self {
        DrainWatch {
            token,
            wait,
            waker: None,
            checked: false,
        }
    }

    /// Whether the drain has begun (the token's flag, read under its lock).
    pub(super) fn is_drained(&mut self) -> bool {
        let drained = self.token.is_cancelled();
        self.checked = !drained;
        drained
    }

    /// Ready once the token is cancelled; the task is woken when it is. Called right after
    /// [`DrainWatch::is_drained`] (no wait between them), the flag is not read again.
    pub(super) fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Checked since the task last waited: a drain since then wakes the task again.
        if !std::mem::take(&mut self.checked) && self.token.is_cancelled() {
            return Poll::Ready(());
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let polled = self.wait.as_mut().poll(cx);
        if polled.is_pending() {
            self.waker = Some(cx.waker().clone());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    /// A drain that comes while the connection waits (its wait polled once, then looked at
    /// through the flag) wakes the task and ends the wait.
    #[tokio::test]
    async fn a_drain_wakes_a_watch_polled_before() {
        let token = CancellationToken::new();
        let wait = token.cancelled();
        let mut wait = std::pin::pin!(wait);
        let mut watch = DrainWatch::new(&token, wait.as_mut());
        let mut polls = 0;
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cancel.cancel();
        });
        let drained = poll_fn(|cx| {
            polls += 1;
            // Polled twice before the drain: the second time only through the flag.
            if polls == 1 {
                cx.waker().wake_by_ref();
            }
            watch.poll_drained(cx)
        });
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the drain woke the watch");
        assert!(polls >= 3, "{polls}");
    }
}

//! Runtime-togglable faults: what the HTTP layer and open watch streams consult.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// Fault state that open watch streams observe through a `watch` channel.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamFaults {
    /// Bumped to abort every open watch connection.
    pub(crate) drop_generation: u64,
    /// Bumped to send one in-stream `ERROR 410` to every open watch.
    pub(crate) expire_generation: u64,
    /// While in the future, watch streams send nothing at all.
    pub(crate) stall_until: Option<Instant>,
}

/// A rule failing the next `remaining` requests whose path starts with `path_prefix` (only
/// writes when `writes_only`).
#[derive(Clone, Debug)]
struct FailRule {
    path_prefix: String,
    code: u16,
    remaining: usize,
    writes_only: bool,
}

/// All fault switches.
#[derive(Debug)]
pub(crate) struct Faults {
    pub(crate) streams: watch::Sender<StreamFaults>,
    delay: Mutex<Duration>,
    unavailable_until: Mutex<Option<Instant>>,
    failures: Mutex<Vec<FailRule>>,
}

impl Faults {
    pub(crate) fn new() -> Self {
        Self {
            streams: watch::channel(StreamFaults::default()).0,
            delay: Mutex::new(Duration::ZERO),
            unavailable_until: Mutex::new(None),
            failures: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn drop_watches(&self) {
        self.streams.send_modify(|f| f.drop_generation += 1);
    }

    pub(crate) fn expire_watches(&self) {
        self.streams.send_modify(|f| f.expire_generation += 1);
    }

    pub(crate) fn stall_watches(&self, duration: Option<Duration>) {
        let until = duration.map(|d| Instant::now() + d);
        self.streams.send_modify(|f| f.stall_until = until);
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.delay.lock() = delay;
    }

    pub(crate) fn delay(&self) -> Duration {
        *self.delay.lock()
    }

    pub(crate) fn set_unavailable(&self, duration: Option<Duration>) {
        *self.unavailable_until.lock() = duration.map(|d| Instant::now() + d);
    }

    pub(crate) fn is_unavailable(&self) -> bool {
        self.unavailable_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
    }

    pub(crate) fn fail_next(&self, path_prefix: &str, code: u16, count: usize, writes_only: bool) {
        self.failures.lock().push(FailRule {
            path_prefix: path_prefix.to_string(),
            code,
            remaining: count,
            writes_only,
        });
    }

    /// The status code to fail this request with, if a rule matches (consuming one use).
    pub(crate) fn injected_failure(&self, method: &http::Method, path: &str) -> Option<u16> {
        let write = !matches!(*method, http::Method::GET | http::Method::HEAD);
        let mut rules = self.failures.lock();
        let rule = rules.iter_mut().find(|r| {
            r.remaining > 0 && path.starts_with(&r.path_prefix) && (write || !r.writes_only)
        })?;
        rule.remaining -= 1;
        let code = rule.code;
        rules.retain(|r| r.remaining > 0);
        Some(code)
    }
}

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

/// Which requests a failure rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verbs {
    /// Every request.
    All,
    /// Writes only (any method but GET and HEAD).
    Writes,
    /// LISTs only (a GET of a collection that is not a watch).
    Lists,
}

/// What a request is, as far as failure rules care.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestKind {
    /// Not a GET or HEAD.
    pub(crate) write: bool,
    /// A GET of a collection without `watch=true`.
    pub(crate) list: bool,
}

/// A rule failing requests whose path starts with `path_prefix`: the next `remaining` of them, or
/// every one until it is cleared (`remaining` is `None`).
#[derive(Clone, Debug)]
struct FailRule {
    path_prefix: String,
    code: u16,
    remaining: Option<usize>,
    verbs: Verbs,
}

impl FailRule {
    fn matches(&self, kind: RequestKind, path: &str) -> bool {
        let verb = match self.verbs {
            Verbs::All => true,
            Verbs::Writes => kind.write,
            Verbs::Lists => kind.list,
        };
        verb && self.remaining != Some(0) && path.starts_with(&self.path_prefix)
    }
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

    /// Fails matching requests with `code`: the next `count`, or all until cleared (`None`).
    pub(crate) fn fail(&self, path_prefix: &str, code: u16, count: Option<usize>, verbs: Verbs) {
        self.failures.lock().push(FailRule {
            path_prefix: path_prefix.to_string(),
            code,
            remaining: count,
            verbs,
        });
    }

    /// Removes every rule without a count (those that fail until cleared).
    pub(crate) fn clear_standing_failures(&self) {
        self.failures.lock().retain(|r| r.remaining.is_some());
    }

    /// The status code to fail this request with, if a rule matches (consuming one use).
    pub(crate) fn injected_failure(&self, kind: RequestKind, path: &str) -> Option<u16> {
        let mut rules = self.failures.lock();
        let rule = rules.iter_mut().find(|r| r.matches(kind, path))?;
        if let Some(remaining) = rule.remaining.as_mut() {
            *remaining -= 1;
        }
        let code = rule.code;
        rules.retain(|r| r.remaining != Some(0));
        Some(code)
    }
}

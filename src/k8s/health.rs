//! Health of a group of watches (discovery's, the TLS Secret's, the autoscaler's, the peers'):
//! which watches fail, since when, what the log says about it, and what the group's
//! [`Observer`] counts.
//!
//! **Logs.** What this module logs about failing watches is one line per cause per
//! [`REMIND_EVERY`] in a group: the first failure with a cause is a warning naming the watch, the
//! error and the consequence; further failures with that cause (of any watch of the group) are at
//! debug level until the interval has passed, when one reminder says how long and how often. A
//! watch that works again after a logged outage says so once, with the outage's length; a watch
//! is "working again" only after real progress (see [`super::watch`]). A 410 Expired is not an
//! outage: it is logged (at info, throttled the same way) and counted as a relist.
//!
//! **403s.** A refusal says which permission the router's service account lacks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::watcher;
use parking_lot::Mutex;
use tokio::time::Instant;

/// A cause is logged at most once per this interval in a group (after its first line).
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// What a group of watches reports to its owner (metrics, usually). Every method does nothing by
/// default, so `()` observes nothing.
pub trait Observer: Send + Sync + 'static {
    /// A list or watch of `resource` failed (a 410 Expired is [`Observer::relisted`] instead).
    fn failed(&self, resource: &'static str) {
        let _ = resource;
    }
    /// A watch of `resource` relists after a 410 Expired.
    fn relisted(&self, resource: &'static str) {
        let _ = resource;
    }
    /// Whether every watch of the group works now.
    fn up(&self, up: bool) {
        let _ = up;
    }
}

impl Observer for () {}

/// The health of a group of watches; clones share it.
#[derive(Clone)]
pub struct Health {
    group: Arc<Mutex<Group>>,
}

struct Group {
    consequence: &'static str,
    observer: Arc<dyn Observer>,
    watches: HashMap<u64, Entry>,
    next_id: u64,
    causes: HashMap<String, Throttle>,
}

struct Entry {
    name: String,
    resource: &'static str,
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    attempts: u32,
    logged: bool,
}

struct Throttle {
    last: Instant,
    suppressed: u32,
}

impl Group {
    /// Whether a line about `cause` may be logged now; counts it as suppressed otherwise.
    fn may_log(&mut self, cause: &str) -> Option<u32> {
        let now = Instant::now();
        match self.causes.get_mut(cause) {
            Some(throttle) if now.duration_since(throttle.last) < REMIND_EVERY => {
                throttle.suppressed += 1;
                None
            }
            Some(throttle) => {
                throttle.last = now;
                Some(std::mem::take(&mut throttle.suppressed))
            }
            None => {
                self.causes.insert(
                    cause.to_string(),
                    Throttle {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    fn refresh(&self) {
        self.observer
            .up(self.watches.values().all(|w| w.outage.is_none()));
    }
}

impl Health {
    /// A group whose failures have `consequence` (e.g. "serving the last routing table"),
    /// reported to `observer`. The group is up until a watch fails.
    pub fn new(consequence: &'static str, observer: Arc<dyn Observer>) -> Health {
        observer.up(true);
        Health {
            group: Arc::new(Mutex::new(Group {
                consequence,
                observer,
                watches: HashMap::new(),
                next_id: 0,
                causes: HashMap::new(),
            })),
        }
    }

    /// Adds a watch named `name` (for logs, e.g. "onlineendpoints in models") of `resource` (for
    /// metric labels). It leaves the group when the returned handle is dropped.
    pub fn register(&self, name: String, resource: &'static str) -> WatchHealth {
        let mut group = self.group.lock();
        let id = group.next_id;
        group.next_id += 1;
        group.watches.insert(
            id,
            Entry {
                name,
                resource,
                outage: None,
            },
        );
        WatchHealth {
            health: self.clone(),
            id,
        }
    }

    /// Whether every watch of the group works.
    pub fn is_up(&self) -> bool {
        self.group
            .lock()
            .watches
            .values()
            .all(|w| w.outage.is_none())
    }
}

/// One watch's place in its group.
pub struct WatchHealth {
    health: Health,
    id: u64,
}

impl WatchHealth {
    /// A list or watch failed with `error`; the watch retries after its backoff.
    pub fn failed(&self, error: &watcher::Error) {
        let mut group = self.health.group.lock();
        let group = &mut *group;
        let Some(entry) = group.watches.get_mut(&self.id) else {
            return;
        };
        let (name, resource) = (entry.name.clone(), entry.resource);
        let cause = cause_of(error);
        if is_expired(error) {
            group.observer.relisted(resource);
            if group.may_log(&cause).is_some() {
                tracing::info!(watch = %name, "the resourceVersion of {name} expired (410): relisting; what is known stays until the new list is complete");
            }
            return;
        }
        group.observer.failed(resource);
        let outage = entry.outage.get_or_insert(Outage {
            since: Instant::now(),
            attempts: 0,
            logged: false,
        });
        outage.attempts += 1;
        let (attempts, down_for) = (outage.attempts, round(outage.since.elapsed()));
        let line = group.may_log(&cause);
        let (consequence, hint) = (group.consequence, permission_hint(error, resource));
        match line {
            Some(_) if attempts == 1 => tracing::warn!(
                watch = %name, %cause,
                "cannot list or watch {name}: {error}{hint}; {consequence}, retrying with backoff \
                 (further failures with this cause are logged once a minute)"
            ),
            Some(suppressed) => tracing::warn!(
                watch = %name, %cause, attempts, ?down_for, other_failures = suppressed,
                "still cannot list or watch {name} ({attempts} attempts in {down_for:?}): {error}{hint}; {consequence}"
            ),
            None => tracing::debug!(watch = %name, attempts, "list or watch failed again: {error}"),
        }
        if let Some(outage) = group
            .watches
            .get_mut(&self.id)
            .and_then(|e| e.outage.as_mut())
        {
            outage.logged |= line.is_some();
        }
        group.refresh();
    }

    /// The watch made progress (a completed list, a received event, or a watch the API server
    /// accepted): a failing watch works again.
    pub fn progressed(&self) {
        let mut group = self.health.group.lock();
        let Some(entry) = group.watches.get_mut(&self.id) else {
            return;
        };
        let Some(outage) = entry.outage.take() else {
            return;
        };
        let name = entry.name.clone();
        let down_for = round(outage.since.elapsed());
        if outage.logged {
            tracing::info!(watch = %name, attempts = outage.attempts, ?down_for, "watching {name} again after {down_for:?}");
        } else {
            tracing::debug!(watch = %name, attempts = outage.attempts, ?down_for, "watching {name} again");
        }
        group.refresh();
    }

    /// The API server ended this watch right after accepting it; it is reopened after `delay`.
    pub fn paced(&self, delay: Duration) {
        let mut group = self.health.group.lock();
        let Some(name) = group.watches.get(&self.id).map(|e| e.name.clone()) else {
            return;
        };
        match group.may_log("watch ended at once") {
            Some(suppressed) => tracing::warn!(
                watch = %name, delay = ?round(delay), other_times = suppressed,
                "the API server ended the watch of {name} right after accepting it; reopening it after \
                 {delay:?} (the delay grows while watches keep ending at once)",
                delay = round(delay),
            ),
            None => {
                tracing::debug!(watch = %name, delay = ?round(delay), "reopening a watch that ended at once")
            }
        }
    }
}

impl Drop for WatchHealth {
    fn drop(&mut self) {
        let mut group = self.health.group.lock();
        if group.watches.remove(&self.id).is_some() {
            group.refresh();
        }
    }
}

/// A 410 Expired, in-stream (a compacted resourceVersion) or on a list (an expired `continue`):
/// the watcher relists at once, and that is not an outage.
pub fn is_expired(error: &watcher::Error) -> bool {
    status_of(error).is_some_and(|(code, _)| code == 410)
}

/// The HTTP status and reason of an error the API server answered, if it answered.
fn status_of(error: &watcher::Error) -> Option<(u16, &str)> {
    match error {
        watcher::Error::WatchError(status) => Some((status.code, &status.reason)),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => {
            Some((status.code, &status.reason))
        }
        _ => None,
    }
}

/// What went wrong, without the step it went wrong in: a list and a watch refused for the same
/// reason have one cause.
fn cause_of(error: &watcher::Error) -> String {
    if let Some((code, reason)) = status_of(error) {
        return format!("HTTP {code} {reason}");
    }
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// For a 401 or 403: which permission to grant.
fn permission_hint(error: &watcher::Error, resource: &str) -> String {
    match status_of(error) {
        Some((401 | 403, _)) => format!(
            " (allow the router's service account to get, list and watch {resource}, or check its token)"
        ),
        _ => String::new(),
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[derive(Default)]
    struct Counts {
        failed: AtomicU32,
        relisted: AtomicU32,
        up: AtomicBool,
    }

    impl Observer for Counts {
        fn failed(&self, _: &'static str) {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        fn relisted(&self, _: &'static str) {
            self.relisted.fetch_add(1, Ordering::Relaxed);
        }
        fn up(&self, up: bool) {
            self.up.store(up, Ordering::Relaxed);
        }
    }

    fn api_error(code: u16, reason: &str) -> watcher::Error {
        let status = kube::core::Status::failure("refused", reason).with_code(code);
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
    }

    #[tokio::test]
    async fn outages_are_tracked_per_watch_and_forgotten_on_drop() {
        let counts = Arc::new(Counts::default());
        let health = Health::new("serving what is known", counts.clone());
        assert!(counts.up.load(Ordering::Relaxed));
        let a = health.register("a".into(), "things");
        let b = health.register("b".into(), "things");
        a.failed(&api_error(503, "ServiceUnavailable"));
        b.failed(&api_error(503, "ServiceUnavailable"));
        assert!(!health.is_up() && !counts.up.load(Ordering::Relaxed));
        a.progressed();
        assert!(!health.is_up(), "b still fails");
        drop(b);
        assert!(health.is_up() && counts.up.load(Ordering::Relaxed));
        a.failed(&api_error(410, "Expired"));
        assert!(health.is_up(), "a 410 is not an outage");
        assert_eq!(counts.failed.load(Ordering::Relaxed), 2);
        assert_eq!(counts.relisted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn causes_ignore_the_step_and_name_permissions() {
        let list = api_error(403, "Forbidden");
        let watch = watcher::Error::WatchError(Box::new(
            kube::core::Status::failure("refused", "Forbidden").with_code(403),
        ));
        assert_eq!(cause_of(&list), cause_of(&watch));
        assert!(permission_hint(&list, "secrets").contains("list and watch secrets"));
        assert!(is_expired(&api_error(410, "Expired")));
        assert!(!is_expired(&list));
    }
}

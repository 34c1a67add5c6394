//! The tracing subscriber: text or JSON lines written by a background thread, colours only on a
//! terminal, and library logs throttled ([`Throttle`]) so that a dependency retrying in a loop
//! (kube's client, hyper, rustls) writes one line per cause per minute, not one per retry.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How long a library log line's cause stays quiet after it was written.
pub const LIBRARY_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Installs the global tracing subscriber, writing through a background thread so a slow
/// terminal never slows requests. Keep the returned guard alive until exit: dropping it flushes.
/// `RUST_LOG` overrides the default filter (`info`); `NO_COLOR` turns colours off on a terminal
/// too (they are never written to a file or a pipe).
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let throttle = Throttle::new(LIBRARY_LOG_INTERVAL);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(throttle.clone());
    let result = match format {
        LogFormat::Text => {
            let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer);
            registry.with(layer).try_init()
        }
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer);
            registry.with(layer).try_init()
        }
    };
    match result {
        Ok(()) => throttle.report_every(LIBRARY_LOG_INTERVAL),
        Err(e) => eprintln!("logging was already set up: {e}"),
    }
    guard
}

/// Lets through the first line of each cause from a library (any target outside `scoregate`)
/// and then none of that cause for an interval, counting what it holds back; a reporter says
/// how many were held back. A cause is the log statement and its message with the digits taken
/// out (so "503" and "403", retry counts and resource versions do not make new causes, while
/// "connection refused" and "Forbidden" stay apart).
#[derive(Clone)]
pub struct Throttle {
    interval: Duration,
    causes: Arc<Mutex<HashMap<u64, Cause>>>,
}

struct Cause {
    opened: Instant,
    held_back: u64,
    target: String,
    message: String,
}

impl Throttle {
    /// A throttle letting one line per cause through per `interval`.
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            causes: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether a line of cause `key` (from `target`, saying `message`) is written at `now`.
    pub fn admit(&self, key: u64, target: &str, message: &str, now: Instant) -> bool {
        let mut causes = self.causes.lock();
        match causes.get_mut(&key) {
            Some(cause) if now.duration_since(cause.opened) < self.interval => {
                cause.held_back += 1;
                false
            }
            Some(cause) => {
                cause.opened = now;
                true
            }
            None => {
                causes.insert(
                    key,
                    Cause {
                        opened: now,
                        held_back: 0,
                        target: target.to_string(),
                        message: message.chars().take(200).collect(),
                    },
                );
                true
            }
        }
    }

    /// Lines held back since the last call, by cause: (target, first message, count).
    pub fn take_held_back(&self) -> Vec<(String, String, u64)> {
        let mut causes = self.causes.lock();
        let mut held = Vec::new();
        for cause in causes.values_mut().filter(|c| c.held_back > 0) {
            held.push((
                cause.target.clone(),
                cause.message.clone(),
                std::mem::take(&mut cause.held_back),
            ));
        }
        held
    }

    /// Every `interval`, from a thread of its own (outside any logging call): one line per
    /// cause that had lines held back, saying how many.
    fn report_every(&self, interval: Duration) {
        let throttle = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-throttle".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                for (target, message, count) in throttle.take_held_back() {
                    tracing::warn!(
                        target: "scoregate::logs",
                        source = %target,
                        held_back = count,
                        "{count} more log lines like this one from {target} in the last {}s: {message}",
                        interval.as_secs()
                    );
                }
            });
        if let Err(e) = spawned {
            eprintln!("cannot start the log throttle's reporter: {e}");
        }
    }
}

/// Whether `target` is scoregate's own (never throttled).
fn is_own(target: &str) -> bool {
    target == "scoregate" || target.starts_with("scoregate::")
}

/// The `message` field of an event, as text.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
}

/// The cause of an event: its call site and its message without digits.
fn cause_of(event: &Event<'_>, message: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.metadata().callsite().hash(&mut hasher);
    for c in message.chars().filter(|c| !c.is_ascii_digit()) {
        c.hash(&mut hasher);
    }
    hasher.finish()
}

impl<S: Subscriber> Layer<S> for Throttle {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let target = event.metadata().target();
        if is_own(target) {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let key = cause_of(event, &message.0);
        self.admit(key, target, &message.0, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_and_the_rest_counted() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(throttle.admit(1, "kube_client", "failed: 503", t0));
        assert!(throttle.admit(2, "kube_client", "failed: Forbidden", t0));
        for i in 1..=5 {
            assert!(!throttle.admit(1, "kube_client", "failed: 503", t0 + Duration::from_secs(i)));
        }
        assert_eq!(
            throttle.take_held_back(),
            [("kube_client".to_string(), "failed: 503".to_string(), 5)]
        );
        assert!(throttle.take_held_back().is_empty());
        assert!(throttle.admit(
            1,
            "kube_client",
            "failed: 503",
            t0 + Duration::from_secs(61)
        ));
    }

    #[test]
    fn library_events_are_throttled_and_our_own_are_not() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let counter = Counter(seen.clone());
        let subscriber = tracing_subscriber::registry()
            .with(throttle.clone())
            .with(counter);
        tracing::subscriber::with_default(subscriber, || {
            for attempt in 0..10 {
                tracing::error!(target: "kube_client::client", "request failed after {attempt} tries: 503");
                tracing::warn!(target: "scoregate::discovery", "ours {attempt}");
            }
        });
        let seen = seen.lock();
        assert_eq!(
            seen.iter().filter(|t| t.starts_with("kube")).count(),
            1,
            "{seen:?}"
        );
        assert_eq!(
            seen.iter().filter(|t| t.starts_with("scoregate")).count(),
            10
        );
        assert_eq!(throttle.take_held_back()[0].2, 9);
    }

    /// Records the target of every event it is given.
    struct Counter(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Counter {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().push(event.metadata().target().to_string());
        }
    }
}

//! Watch streams: history replay, live events, bookmarks, timeouts and stream faults, written as
//! one JSON object per line on a chunked response.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use serde_json::{json, Value};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::faults::StreamFaults;
use crate::kinds::KindInfo;
use crate::selectors::Filter;
use crate::server::Shared;
use crate::status::ApiError;
use crate::store::{Change, EventType};

/// Server-side watch tuning.
#[derive(Clone, Debug)]
pub(crate) struct WatchSettings {
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub(crate) bookmark_interval: Duration,
    /// Caps `timeoutSeconds` (like an API server's request timeout), if set.
    pub(crate) max_timeout: Option<Duration>,
    /// Every new watch ends right after its replayed events (a fault).
    pub(crate) end_at_once: bool,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            max_timeout: None,
            end_at_once: false,
        }
    }
}

/// What one watch request asked for.
#[derive(Clone, Debug)]
pub(crate) struct WatchSpec {
    pub(crate) info: KindInfo,
    pub(crate) namespace: Option<String>,
    pub(crate) filter: Filter,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Duration,
    /// `None` for `resourceVersion` `0` or empty: start with the current state as ADDED events.
    pub(crate) resource_version: Option<u64>,
    pub(crate) send_initial_events: bool,
    pub(crate) metadata_only: bool,
}

/// One body frame of a watch response.
pub(crate) type Chunk = Result<Frame<Bytes>, io::Error>;

struct WatchStream {
    spec: WatchSpec,
    shared: Arc<Shared>,
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<Change>>,
    faults: watch::Receiver<StreamFaults>,
    drop_generation: u64,
    expire_generation: u64,
    last_rv: u64,
    deadline: Instant,
    next_bookmark: Instant,
    closing: bool,
    done: bool,
}

enum Wake {
    Faults,
    Change(Result<Arc<Change>, RecvError>),
    Bookmark,
    Deadline,
}

/// Starts a watch: the returned stream yields the response body's chunks.
pub(crate) fn start(shared: Arc<Shared>, mut spec: WatchSpec) -> impl Stream<Item = Chunk> + Send {
    let settings = shared.settings.lock().clone();
    if let Some(max) = settings.max_timeout {
        spec.timeout = spec.timeout.min(max);
    }
    let mut faults = shared.faults.streams.subscribe();
    let current = faults.borrow_and_update().clone();
    let now = Instant::now();
    let (pending, rx, last_rv, closing) = {
        let store = shared.store.lock();
        let mut pending = VecDeque::new();
        match spec.resource_version.filter(|_| !spec.send_initial_events) {
            Some(from) => match store.watch_from(&spec.info.gvr, from) {
                Ok((replay, rx)) => {
                    for change in &replay {
                        pending.extend(render(&spec, change));
                    }
                    (pending, rx, store.rv().max(from), false)
                }
                Err(expired) => {
                    pending.push_back(event_line("ERROR", &expired.to_status()));
                    (pending, store.subscribe(), store.rv(), true)
                }
            },
            None => {
                let ns = spec.namespace.as_deref();
                for (_, obj) in store.list(&spec.info.gvr, ns, None) {
                    if spec.filter.matches(obj) {
                        pending.push_back(event_line("ADDED", &shape(&spec, obj)));
                    }
                }
                if spec.send_initial_events {
                    pending.push_back(bookmark_line(&spec, store.rv(), true));
                }
                (pending, store.subscribe(), store.rv(), false)
            }
        }
    };
    let stream = WatchStream {
        deadline: now + spec.timeout,
        next_bookmark: now + settings.bookmark_interval,
        spec,
        shared,
        pending,
        rx,
        drop_generation: current.drop_generation,
        expire_generation: current.expire_generation,
        faults,
        last_rv,
        closing: closing || settings.end_at_once,
        done: false,
    };
    futures_util::stream::unfold(stream, |mut s| async move {
        s.next_chunk().await.map(|c| (c, s))
    })
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Chunk> {
        loop {
            if self.done {
                return None;
            }
            let faults = self.faults.borrow_and_update().clone();
            if faults.drop_generation != self.drop_generation {
                self.done = true;
                return Some(Err(io::Error::other(
                    "watch connection dropped by a fault hook",
                )));
            }
            if faults.expire_generation != self.expire_generation {
                self.expire_generation = faults.expire_generation;
                let expired =
                    ApiError::expired("too old resource version (injected by a fault hook)");
                self.pending.clear();
                self.pending
                    .push_back(event_line("ERROR", &expired.to_status()));
                self.closing = true;
            }
            if let Some(until) = faults.stall_until.filter(|u| *u > Instant::now()) {
                tokio::select! {
                    _ = sleep_until(until) => {}
                    _ = self.faults.changed() => {}
                }
                continue;
            }
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(Frame::data(line)));
            }
            if self.closing {
                self.done = true;
                return None;
            }
            let wake = tokio::select! {
                _ = self.faults.changed() => Wake::Faults,
                received = self.rx.recv() => Wake::Change(received),
                _ = sleep_until(self.next_bookmark), if self.spec.bookmarks => Wake::Bookmark,
                _ = sleep_until(self.deadline) => Wake::Deadline,
            };
            match wake {
                Wake::Faults => {}
                Wake::Change(Ok(change)) => {
                    if change.rv > self.last_rv {
                        self.last_rv = change.rv;
                        self.pending.extend(render(&self.spec, &change));
                    }
                }
                Wake::Change(Err(RecvError::Lagged(_))) => {
                    let expired = ApiError::expired("watch fell too far behind");
                    self.pending
                        .push_back(event_line("ERROR", &expired.to_status()));
                    self.closing = true;
                }
                Wake::Change(Err(RecvError::Closed)) => self.closing = true,
                Wake::Bookmark => {
                    self.pending
                        .push_back(bookmark_line(&self.spec, self.last_rv, false));
                    let interval = self.shared.settings.lock().bookmark_interval;
                    self.next_bookmark = Instant::now() + interval;
                }
                Wake::Deadline => {
                    if self.spec.bookmarks {
                        self.pending
                            .push_back(bookmark_line(&self.spec, self.last_rv, false));
                    }
                    self.closing = true;
                }
            }
        }
    }
}

/// The line for one change as this watch sees it, honouring namespace and selectors: an object
/// that starts matching arrives as ADDED and one that stops matching as DELETED.
fn render(spec: &WatchSpec, change: &Change) -> Option<Bytes> {
    if change.gvr != spec.info.gvr {
        return None;
    }
    let visible = |obj: &Value| {
        spec.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"] == ns)
            && spec.filter.matches(obj)
    };
    let now = visible(&change.object);
    let before = change.old.as_deref().is_some_and(visible);
    let event = match (change.event, before, now) {
        (EventType::Modified, true, true) => EventType::Modified,
        (EventType::Modified, false, true) | (EventType::Added, _, true) => EventType::Added,
        (EventType::Modified, true, false) | (EventType::Deleted, _, true) => EventType::Deleted,
        _ => return None,
    };
    Some(event_line(event.as_str(), &shape(spec, &change.object)))
}

/// The object as sent: whole, or as `PartialObjectMetadata` for metadata-only watches.
fn shape(spec: &WatchSpec, obj: &Value) -> Value {
    if spec.metadata_only {
        partial_metadata(obj)
    } else {
        obj.clone()
    }
}

/// An object reduced to `meta.k8s.io/v1` `PartialObjectMetadata`.
pub(crate) fn partial_metadata(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

fn bookmark_line(spec: &WatchSpec, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({"apiVersion": spec.info.gvr.api_version(), "kind": spec.info.kind, "metadata": metadata});
    event_line("BOOKMARK", &object)
}

/// `{"type":..,"object":..}` plus a newline, as Go's `json.Encoder` writes it.
fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

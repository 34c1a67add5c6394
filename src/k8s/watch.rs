//! The watch primitive: kube-runtime's `watcher` (trimmed with `.modify()`) feeding a reflector
//! store, driven by one task with a capped exponential [`Backoff`], reporting to a [`Health`]
//! group, and sending what changed on a bounded channel.
//!
//! **Progress** resets the backoff and ends an outage: a completed list (`InitDone`) or a received
//! event (`Apply`, `Delete`). The watcher's `Init` is yielded before any request is made, and
//! `InitApply` before the list is complete, so neither counts. A watch the API server accepts is
//! progress for health too (see [`super::pacing`]), not for the backoff.
//!
//! **Errors** are reported to the watch's [`WatchHealth`] and followed by the backoff's delay,
//! except a 410 Expired: the watcher relists at once, and the store swaps in the new list only
//! when it is complete, so what is known stays known in between.
//!
//! **Backpressure.** Updates go through a bounded channel: a consumer that falls behind slows the
//! watch down (kube stops reading the connection) instead of growing a queue.

use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt as _};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::backoff::Backoff;
use super::health::{is_expired, Health, WatchHealth};
use super::pacing::Pacer;

/// What a watch tells its consumer.
#[derive(Debug)]
pub enum Update<K> {
    /// An object was added or changed.
    Applied(Arc<K>),
    /// An object was deleted.
    Deleted(Arc<K>),
    /// A complete list: exactly these objects exist (in the watch's scope and selection).
    Listed(Vec<Arc<K>>),
}

/// What one watch watches, and how it is named.
pub struct Spec<K> {
    /// For logs: e.g. "onlineendpoints in models".
    pub name: String,
    /// For metric labels: e.g. "onlineendpoints".
    pub resource: &'static str,
    /// Selectors and the rest of the watcher's configuration.
    pub config: watcher::Config,
    /// Drops what the consumer does not read, before the object is stored.
    pub trim: fn(&mut K),
}

/// Where a watch sends its updates: a bounded channel, each update wrapped by a function (which
/// may add the watch's identity).
pub struct Sink<K, T> {
    tx: mpsc::Sender<T>,
    wrap: Box<dyn Fn(Update<K>) -> T + Send + Sync>,
}

impl<K, T> Sink<K, T> {
    /// Sends `wrap(update)` on `tx` for every update.
    pub fn new(tx: mpsc::Sender<T>, wrap: impl Fn(Update<K>) -> T + Send + Sync + 'static) -> Self {
        Sink {
            tx,
            wrap: Box::new(wrap),
        }
    }
}

/// A running watch. Dropping it (or its [`WatchTask`]) stops the watch.
pub struct Watch<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash,
{
    store: Store<K>,
    task: WatchTask,
}

impl<K: Resource + 'static> Watch<K>
where
    K::DynamicType: Eq + Hash,
{
    /// The objects watched, as of the last event.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// The task alone, for consumers that read only the updates.
    pub fn into_task(self) -> WatchTask {
        self.task
    }
}

/// The task of a running watch; dropping it stops the watch.
pub struct WatchTask(#[allow(dead_code)] AbortOnDropHandle<()>);

/// Starts watching what `api` (built on the client it is given) selects with `spec`, storing
/// objects of `dyntype` and sending updates to `sink`. The watch reports to `health`.
pub fn start<K, T>(
    client: &Client,
    api: impl FnOnce(Client) -> Api<K>,
    dyntype: K::DynamicType,
    spec: Spec<K>,
    health: &Health,
    sink: Option<Sink<K, T>>,
) -> Watch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
    T: Send + 'static,
{
    let watch_health = Arc::new(health.register(spec.name, spec.resource));
    let pacer = Pacer::new(watch_health.clone());
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api(pacer.client(client)), spec.config).modify(spec.trim),
    );
    let task = tokio::spawn(drive(stream, store.clone(), watch_health, sink));
    Watch {
        store,
        task: WatchTask(AbortOnDropHandle::new(task)),
    }
}

/// [`start`] for consumers that only read the store.
pub fn start_store<K>(
    client: &Client,
    api: impl FnOnce(Client) -> Api<K>,
    dyntype: K::DynamicType,
    spec: Spec<K>,
    health: &Health,
) -> Watch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    start::<K, ()>(client, api, dyntype, spec, health, None)
}

/// Drives the watcher until the consumer goes away or the task is aborted.
async fn drive<K, T>(
    stream: impl Stream<Item = watcher::Result<Event<K>>>,
    store: Store<K>,
    health: Arc<WatchHealth>,
    sink: Option<Sink<K, T>>,
) where
    K: Resource + Clone,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut stream = pin!(stream);
    let mut backoff = Backoff::default();
    while let Some(item) = stream.next().await {
        let update = match item {
            Ok(Event::Apply(object)) => Update::Applied(Arc::new(object)),
            Ok(Event::Delete(object)) => Update::Deleted(Arc::new(object)),
            Ok(Event::InitDone) => Update::Listed(store.state()),
            // No request made yet (Init) or the list not complete (InitApply): no progress.
            Ok(Event::Init | Event::InitApply(_)) => continue,
            Err(error) => {
                health.failed(&error);
                if !is_expired(&error) {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            }
        };
        backoff.reset();
        health.progressed();
        if let Some(sink) = &sink {
            if sink.tx.send((sink.wrap)(update)).await.is_err() {
                return;
            }
        }
    }
}

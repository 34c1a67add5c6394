//! `status.conditions` of OnlineEndpoints and OnlineDeployments: the `Ready` condition each
//! object should have ([`Ready`], decided by Kubernetes discovery from the problems it already
//! reports), kept on a [`Board`], and written by one router replica ([`writer`]) with
//! server-side apply under its own field manager, only when it differs from what the object
//! shows.
//!
//! Which replica writes is read through [`Election`]: for a deployment, the replica the cluster
//! elects as its owner; for endpoints (and objects not tied to a deployment), the lowest-named
//! live replica; a single replica writes everything. A replica that stops being elected stops
//! writing at its next look; the one that becomes elected finds what differs and writes it.

pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The field manager of condition writes.
pub const FIELD_MANAGER: &str = "scoregate-status";

/// Which custom resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `OnlineEndpoint`.
    Endpoint,
    /// `OnlineDeployment`.
    Deployment,
}

impl Kind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Endpoint => "OnlineEndpoint",
            Kind::Deployment => "OnlineDeployment",
        }
    }
}

/// One object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The `Ready` condition: what it says, not when it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// `True` or `False`.
    pub ready: bool,
    /// A CamelCase word: `Serving`, or why not (`KeysMissing`, `ServiceNotFound`, …).
    pub reason: &'static str,
    /// For a person: what is wrong, where, and the fix.
    pub message: String,
    /// The `metadata.generation` it was decided from.
    pub observed_generation: Option<i64>,
}

/// A `Ready` condition as an object shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// `status`.
    pub status: String,
    /// `reason`.
    pub reason: String,
    /// `message`.
    pub message: String,
    /// `observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `lastTransitionTime` (RFC 3339).
    pub last_transition_time: Option<String>,
}

impl Shown {
    /// Whether the object already shows `ready`.
    pub fn says(&self, ready: &Ready) -> bool {
        self.status == status_word(ready.ready)
            && self.reason == ready.reason
            && self.message == ready.message
            && self.observed_generation == ready.observed_generation
    }
}

/// `True` or `False`.
pub fn status_word(ready: bool) -> &'static str {
    if ready {
        "True"
    } else {
        "False"
    }
}

/// Whose replica writes an object's condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writer {
    /// The owner of deployment (endpoint, deployment).
    Deployment(String, String),
    /// The replica that writes endpoints' conditions.
    Endpoints,
}

/// Decides whether this replica writes a condition.
pub trait Election: Send + Sync + 'static {
    /// Whether this replica owns deployment `deployment` of `endpoint` now.
    fn owns_deployment(&self, endpoint: &str, deployment: &str) -> bool;
    /// Whether this replica writes the conditions of endpoints now (the lowest-named live one).
    fn writes_endpoints(&self) -> bool;
}

/// One replica: it writes everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleReplica;

impl Election for SingleReplica {
    fn owns_deployment(&self, _endpoint: &str, _deployment: &str) -> bool {
        true
    }

    fn writes_endpoints(&self) -> bool {
        true
    }
}

impl Writer {
    /// Whether this replica writes under `election`.
    pub fn is_me(&self, election: &dyn Election) -> bool {
        match self {
            Writer::Deployment(endpoint, deployment) => {
                election.owns_deployment(endpoint, deployment)
            }
            Writer::Endpoints => election.writes_endpoints(),
        }
    }
}

/// What one object should show, and what it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The condition it should have.
    pub desired: Ready,
    /// The condition it has (from the watch), if any.
    pub shown: Option<Shown>,
    /// Its `resourceVersion` when `shown` was read.
    pub version: String,
    /// Who writes it.
    pub writer: Writer,
}

/// The conditions objects should have: set by discovery, read by the writer.
#[derive(Clone, Default)]
pub struct Board {
    entries: Arc<Mutex<HashMap<ObjectRef, Entry>>>,
    changed: Arc<Notify>,
}

impl Board {
    /// Sets what `object` should show (and shows); wakes the writer when they differ.
    pub fn set(&self, object: ObjectRef, entry: Entry) {
        let differs = !entry.shown.as_ref().is_some_and(|s| s.says(&entry.desired));
        let mut entries = self.entries.lock();
        let unchanged = entries.get(&object) == Some(&entry);
        entries.insert(object, entry);
        drop(entries);
        if differs && !unchanged {
            self.changed.notify_one();
        }
    }

    /// Forgets `object` (it was deleted, or left the watched scope).
    pub fn forget(&self, object: &ObjectRef) {
        self.entries.lock().remove(object);
    }

    /// Every object whose condition differs from what it should be, and its entry.
    pub fn differing(&self) -> Vec<(ObjectRef, Entry)> {
        self.entries
            .lock()
            .iter()
            .filter(|(_, e)| !e.shown.as_ref().is_some_and(|s| s.says(&e.desired)))
            .map(|(o, e)| (o.clone(), e.clone()))
            .collect()
    }

    /// The entry of `object`, if any.
    pub fn get(&self, object: &ObjectRef) -> Option<Entry> {
        self.entries.lock().get(object).cloned()
    }

    /// Waits until something may differ.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owns only deployment `blue`, and does not write endpoints.
    struct OnlyBlue;

    impl Election for OnlyBlue {
        fn owns_deployment(&self, _endpoint: &str, deployment: &str) -> bool {
            deployment == "blue"
        }

        fn writes_endpoints(&self) -> bool {
            false
        }
    }

    fn ready(ready: bool) -> Ready {
        Ready {
            ready,
            reason: if ready { "Serving" } else { "NoReadyPods" },
            message: "m".into(),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn only_the_elected_replica_writes_and_only_what_differs() {
        let blue = Writer::Deployment("e".into(), "blue".into());
        let green = Writer::Deployment("e".into(), "green".into());
        assert!(blue.is_me(&OnlyBlue) && !green.is_me(&OnlyBlue));
        assert!(!Writer::Endpoints.is_me(&OnlyBlue));
        assert!(Writer::Endpoints.is_me(&SingleReplica));

        let board = Board::default();
        let object = |name: &str| ObjectRef {
            kind: Kind::Deployment,
            namespace: "ns".into(),
            name: name.into(),
        };
        let shown = Shown {
            status: "True".into(),
            reason: "Serving".into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: None,
        };
        let entry = |desired: Ready| Entry {
            desired,
            shown: Some(shown.clone()),
            version: "1".into(),
            writer: blue.clone(),
        };
        board.set(object("same"), entry(ready(true)));
        board.set(object("changed"), entry(ready(false)));
        let differing: Vec<String> = board.differing().into_iter().map(|(o, _)| o.name).collect();
        assert_eq!(differing, ["changed"]);
        board.forget(&object("changed"));
        assert!(board.differing().is_empty());
    }
}

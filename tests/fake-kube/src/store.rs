//! The object store: objects per resource, one global resourceVersion counter, and a bounded
//! per-resource event history (the watch cache) that watches replay from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::kinds::{Gvr, KindInfo, Kinds};
use crate::status::ApiError;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub(crate) type Key = (String, String);

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change to one object, as recorded in the history and sent to watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) gvr: Gvr,
    pub(crate) event: EventType,
    /// The state before a modification (used to turn selector transitions into ADDED/DELETED).
    pub(crate) old: Option<Arc<Value>>,
    pub(crate) object: Arc<Value>,
}

/// The history to replay plus the receiver for what comes after it.
pub(crate) type Replay = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

const DEFAULT_HISTORY: usize = 100;
const BROADCAST_CAPACITY: usize = 4096;

/// All objects, the resourceVersion counter and the watch history.
#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Gvr, BTreeMap<Key, Value>>,
    history: HashMap<Gvr, VecDeque<Arc<Change>>>,
    evicted: HashMap<Gvr, u64>,
    compacted: u64,
    history_limit: usize,
    /// Bumped by [`Store::compact`]; continue tokens from an older epoch are expired.
    pub(crate) token_epoch: u64,
    pub(crate) kinds: Kinds,
    events: broadcast::Sender<Arc<Change>>,
    uids: u64,
}

impl Store {
    pub(crate) fn new() -> Self {
        Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: HashMap::new(),
            evicted: HashMap::new(),
            compacted: 0,
            history_limit: DEFAULT_HISTORY,
            token_epoch: 0,
            kinds: Kinds::builtin(),
            events: broadcast::channel(BROADCAST_CAPACITY).0,
            uids: 0,
        }
    }

    /// The latest resourceVersion handed out.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn get(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(gvr)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of one resource in key order, optionally in one namespace, after `after`.
    pub(crate) fn list<'a>(
        &'a self,
        gvr: &Gvr,
        ns: Option<&'a str>,
        after: Option<&'a Key>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.objects
            .get(gvr)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |(key, _)| ns.is_none_or(|ns| key.0 == ns))
            .filter(move |(key, _)| after.is_none_or(|after| *key > after))
    }

    /// Subscribes to live changes together with the history after `from` (exclusive).
    /// Fails with 410 when `from` is older than the retained history.
    pub(crate) fn watch_from(&self, gvr: &Gvr, from: u64) -> Result<Replay, ApiError> {
        let oldest = self
            .compacted
            .max(self.evicted.get(gvr).copied().unwrap_or(0));
        if from < oldest {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({oldest})"
            )));
        }
        let replay = self
            .history
            .get(gvr)
            .into_iter()
            .flatten()
            .filter(|c| c.rv > from)
            .cloned()
            .collect();
        Ok((replay, self.events.subscribe()))
    }

    /// Subscribes to live changes only (for a watch that starts from the current state).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.events.subscribe()
    }

    /// Forgets all history up to now: older watches get 410 and continue tokens expire.
    pub(crate) fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
        self.token_epoch += 1;
    }

    pub(crate) fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        let gvrs: Vec<Gvr> = self.history.keys().cloned().collect();
        for gvr in gvrs {
            self.trim_history(&gvr);
        }
    }

    /// Validates and normalises an incoming object for `info` in namespace `ns`.
    pub(crate) fn prepare(&self, info: &KindInfo, ns: &str, obj: Value) -> Result<Value, ApiError> {
        let Value::Object(mut map) = obj else {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        };
        let registered = self.kinds.get(&info.gvr).is_some();
        match map.get("kind").and_then(Value::as_str) {
            Some(kind) if registered && kind != info.kind => {
                return Err(ApiError::bad_request(format!(
                    "kind {kind} does not match the expected kind {}",
                    info.kind
                )));
            }
            Some(_) => {}
            None => {
                map.insert("kind".into(), json!(info.kind));
            }
        }
        map.insert("apiVersion".into(), json!(info.gvr.api_version()));
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        if info.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        Ok(Value::Object(map))
    }

    /// Creates a prepared object; 409 if it exists. Honours `metadata.generateName`.
    pub(crate) fn create(
        &mut self,
        info: &KindInfo,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let name = match name_of(&obj) {
            Some(name) => name,
            None => {
                let prefix = obj
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "metadata.name: Required value: name or generateName is required",
                        )
                    })?;
                self.uids += 1;
                let name = format!("{prefix}{:05x}", self.uids);
                obj["metadata"]["name"] = json!(name);
                name
            }
        };
        if self.get(&info.gvr, ns, &name).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", info.gvr.plural),
            ));
        }
        Ok(self.write(info, ns, obj))
    }

    /// Replaces an existing prepared object, checking a non-empty `metadata.resourceVersion`.
    pub(crate) fn update(
        &mut self,
        info: &KindInfo,
        ns: &str,
        name: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        if name_of(&obj).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let current = self
            .get(&info.gvr, ns, name)
            .ok_or_else(|| ApiError::not_found(&info.gvr.plural, name))?;
        let wanted = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if wanted.is_some_and(|rv| {
            !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str()
        }) {
            return Err(ApiError::conflict(&info.gvr.plural, name));
        }
        let mut obj = obj;
        obj["metadata"]["name"] = json!(name);
        Ok(self.write(info, ns, obj))
    }

    /// Deletes an object (and, for a namespace, everything in it).
    pub(crate) fn delete(
        &mut self,
        info: &KindInfo,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = (ns.to_string(), name.to_string());
        let mut removed = self
            .objects
            .get_mut(&info.gvr)
            .and_then(|m| m.remove(&key))
            .ok_or_else(|| ApiError::not_found(&info.gvr.plural, name))?;
        self.rv += 1;
        removed["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(&info.gvr, EventType::Deleted, None, removed.clone());
        if info.gvr == Gvr::new("", "v1", "namespaces") {
            self.delete_namespace_contents(name);
        }
        Ok(removed)
    }

    fn delete_namespace_contents(&mut self, ns: &str) {
        let doomed: Vec<(Gvr, String)> = self
            .objects
            .iter()
            .flat_map(|(gvr, objs)| {
                objs.keys()
                    .filter(|k| k.0 == ns)
                    .map(move |k| (gvr.clone(), k.1.clone()))
            })
            .collect();
        for (gvr, name) in doomed {
            let info = self.kinds.resolve(&gvr, true);
            let _ = self.delete(&info, ns, &name);
        }
    }

    /// Stores a prepared object, stamping metadata, and emits ADDED or MODIFIED.
    pub(crate) fn write(&mut self, info: &KindInfo, ns: &str, mut obj: Value) -> Value {
        if self.kinds.get(&info.gvr).is_none() {
            let kind = obj["kind"].as_str().unwrap_or(&info.kind).to_string();
            self.kinds.register(KindInfo {
                kind,
                ..info.clone()
            });
        }
        let name = name_of(&obj).unwrap_or_default();
        let key = (ns.to_string(), name);
        let old = self
            .objects
            .get(&info.gvr)
            .and_then(|m| m.get(&key))
            .cloned();
        self.rv += 1;
        let (uid, created, generation) = match &old {
            Some(old) => {
                let meta = &old["metadata"];
                let bump = u64::from(spec_of(old) != spec_of(&obj));
                (
                    meta["uid"].clone(),
                    meta["creationTimestamp"].clone(),
                    meta["generation"].as_u64().unwrap_or(1) + bump,
                )
            }
            None => {
                self.uids += 1;
                (json!(new_uid(self.uids)), json!(now_rfc3339()), 1)
            }
        };
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        meta["generation"] = json!(generation);
        if info.gvr == Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions") {
            self.register_crd(&obj);
        }
        self.objects
            .entry(info.gvr.clone())
            .or_default()
            .insert(key, obj.clone());
        let event = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(&info.gvr, event, old.map(Arc::new), obj.clone());
        obj
    }

    fn register_crd(&mut self, crd: &Value) {
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec.pointer("/names/plural").and_then(Value::as_str),
            spec.pointer("/names/kind").and_then(Value::as_str),
        ) else {
            return;
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for version in spec["versions"].as_array().into_iter().flatten() {
            if let Some(version) = version["name"].as_str() {
                self.kinds.register(KindInfo {
                    gvr: Gvr::new(group, version, plural),
                    kind: kind.to_string(),
                    namespaced,
                });
            }
        }
    }

    fn record(&mut self, gvr: &Gvr, event: EventType, old: Option<Arc<Value>>, object: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            gvr: gvr.clone(),
            event,
            old,
            object: Arc::new(object),
        });
        self.history
            .entry(gvr.clone())
            .or_default()
            .push_back(change.clone());
        self.trim_history(gvr);
        let _ = self.events.send(change);
    }

    fn trim_history(&mut self, gvr: &Gvr) {
        let Some(history) = self.history.get_mut(gvr) else {
            return;
        };
        while history.len() > self.history_limit {
            if let Some(gone) = history.pop_front() {
                self.evicted.insert(gvr.clone(), gone.rv);
            }
        }
    }
}

/// `metadata.name`, if non-empty.
pub(crate) fn name_of(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// Everything but `metadata` and `status`: a change here bumps `metadata.generation`.
fn spec_of(obj: &Value) -> Map<String, Value> {
    let mut map = obj.as_object().cloned().unwrap_or_default();
    map.remove("metadata");
    map.remove("status");
    map
}

fn new_uid(n: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{nanos:08x}-fa4e-4000-8000-{n:012x}")
}

/// The current time as RFC 3339 with whole seconds, as Kubernetes writes timestamps.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm_info(store: &Store) -> KindInfo {
        store.kinds.lookup("v1", "ConfigMap").cloned().unwrap()
    }

    #[test]
    fn stamps_metadata_and_bounds_history() {
        let mut store = Store::new();
        store.set_history_limit(2);
        let info = cm_info(&store);
        let obj = store
            .prepare(
                &info,
                "ns",
                json!({"metadata": {"name": "a"}, "data": {"k": "1"}}),
            )
            .unwrap();
        let created = store.create(&info, "ns", obj.clone()).unwrap();
        assert_eq!(created["metadata"]["resourceVersion"], "1");
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(store.create(&info, "ns", obj).unwrap_err().code, 409);
        let mut changed = created.clone();
        changed["data"]["k"] = json!("2");
        let updated = store.update(&info, "ns", "a", changed.clone()).unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(
            store.update(&info, "ns", "a", changed).unwrap_err().code,
            409
        );
        store.delete(&info, "ns", "a").unwrap();
        assert!(store.watch_from(&info.gvr, 0).is_err());
        assert_eq!(store.watch_from(&info.gvr, 1).unwrap().0.len(), 2);
        store.compact();
        assert!(store.watch_from(&info.gvr, 2).is_err());
        assert!(store.watch_from(&info.gvr, 3).is_ok());
    }
}

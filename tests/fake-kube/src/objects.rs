//! The programmatic object API for tests: same store, same watch events as HTTP writes.

use serde_json::{json, Value};

use crate::kinds::{plural_of, split_api_version, Gvr, KindInfo};
use crate::server::FakeApiServer;
use crate::status::ApiError;
use crate::store::Store;

impl FakeApiServer {
    /// Registers a kind so that discovery lists it and paths resolve to it.
    pub fn register_kind(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
    ) {
        self.shared.store.lock().kinds.register(KindInfo {
            gvr: Gvr::new(group, version, plural),
            kind: kind.to_string(),
            namespaced,
        });
    }

    /// Creates or replaces `obj` (no resourceVersion check); `apiVersion`, `kind` and `metadata`
    /// come from the object, the plural from the known kinds (or is derived from the kind).
    pub fn apply(&self, obj: Value) -> Result<Value, ApiError> {
        self.upsert(None, obj)
    }

    /// Like [`FakeApiServer::apply`], for a kind whose plural cannot be derived from its name.
    pub fn apply_as(&self, plural: &str, obj: Value) -> Result<Value, ApiError> {
        self.upsert(Some(plural), obj)
    }

    /// Creates `obj`; 409 `AlreadyExists` if it exists.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let mut store = self.shared.store.lock();
        let (info, ns) = object_kind(&store, None, &obj)?;
        let obj = store.prepare(&info, &ns, obj)?;
        store.create(&info, &ns, obj)
    }

    /// One object; `namespace` is empty for cluster-scoped kinds.
    pub fn get(
        &self,
        api_version: &str,
        kind_or_plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let store = self.shared.store.lock();
        let info = named_kind(&store, api_version, kind_or_plural, namespace);
        store.get(&info.gvr, namespace, name).cloned()
    }

    /// All objects of a kind in `namespace`, or in every namespace if it is empty.
    pub fn list(&self, api_version: &str, kind_or_plural: &str, namespace: &str) -> Vec<Value> {
        let store = self.shared.store.lock();
        let info = named_kind(&store, api_version, kind_or_plural, namespace);
        let ns = Some(namespace).filter(|ns| !ns.is_empty());
        store
            .list(&info.gvr, ns, None)
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// Deletes one object (a namespace takes its contents with it); 404 if absent.
    pub fn delete(
        &self,
        api_version: &str,
        kind_or_plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut store = self.shared.store.lock();
        let info = named_kind(&store, api_version, kind_or_plural, namespace);
        store.delete(&info, namespace, name)
    }

    /// Replaces an object's `.status`, as a controller's status write would.
    pub fn set_status(
        &self,
        api_version: &str,
        kind_or_plural: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let mut store = self.shared.store.lock();
        let info = named_kind(&store, api_version, kind_or_plural, namespace);
        let mut obj = store
            .get(&info.gvr, namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.gvr.plural, name))?;
        obj["status"] = status;
        Ok(store.write(&info, namespace, obj))
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().rv()
    }

    fn upsert(&self, plural: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        let mut store = self.shared.store.lock();
        let (info, ns) = object_kind(&store, plural, &obj)?;
        let mut obj = store.prepare(&info, &ns, obj)?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::invalid("metadata.name: Required value"))?;
        if store.get(&info.gvr, &ns, &name).is_some() {
            obj["metadata"]["resourceVersion"] = json!("");
            store.update(&info, &ns, &name, obj)
        } else {
            store.create(&info, &ns, obj)
        }
    }
}

/// The kind and namespace of a whole object.
fn object_kind(
    store: &Store,
    plural: Option<&str>,
    obj: &Value,
) -> Result<(KindInfo, String), ApiError> {
    let api_version = obj["apiVersion"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("apiVersion is required"))?;
    let kind = obj["kind"].as_str();
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    let known = match (plural, kind) {
        (Some(plural), _) => store.kinds.lookup(api_version, plural),
        (None, Some(kind)) => store.kinds.lookup(api_version, kind),
        (None, None) => return Err(ApiError::bad_request("kind is required")),
    };
    let info = match known {
        Some(info) => info.clone(),
        None => {
            let kind = kind.ok_or_else(|| ApiError::bad_request("kind is required"))?;
            let (group, version) = split_api_version(api_version);
            let plural = plural.map_or_else(|| plural_of(kind), str::to_string);
            KindInfo {
                gvr: Gvr::new(group, version, &plural),
                kind: kind.to_string(),
                namespaced: namespace.is_some(),
            }
        }
    };
    let ns = if info.namespaced {
        namespace.unwrap_or("default")
    } else {
        ""
    };
    Ok((info, ns.to_string()))
}

/// The kind for an `apiVersion` and a kind or plural name.
fn named_kind(store: &Store, api_version: &str, kind_or_plural: &str, namespace: &str) -> KindInfo {
    if let Some(info) = store.kinds.lookup(api_version, kind_or_plural) {
        return info.clone();
    }
    let (group, version) = split_api_version(api_version);
    let is_plural = kind_or_plural
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let plural = if is_plural {
        kind_or_plural.to_string()
    } else {
        plural_of(kind_or_plural)
    };
    store
        .kinds
        .resolve(&Gvr::new(group, version, &plural), !namespace.is_empty())
}

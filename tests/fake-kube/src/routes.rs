//! URL paths → verbs on the store: get, list (paged), watch, create, replace, patch, delete, and the
//! `status` and `scale` subresources.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::discovery;
use crate::kinds::{is_builtin, Gvr, KindInfo};
use crate::patch::{record_manager, PatchBody};
use crate::selectors::Filter;
use crate::server::Shared;
use crate::service::{json_response, stream_response, Body, Request};
use crate::status::ApiError;
use crate::store::{name_of, Key};
use crate::watch::{self, partial_metadata, WatchSpec};

/// Where a request path points.
#[derive(Debug, PartialEq)]
enum Target {
    Version,
    Api,
    Apis,
    Resources { group: String, version: String },
    Object(ObjectPath),
}

/// A resource path: collection, object, or subresource.
#[derive(Debug, PartialEq)]
struct ObjectPath {
    gvr: Gvr,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Some(Target::Version),
        ["api"] => Some(Target::Api),
        ["apis"] => Some(Target::Apis),
        ["api", version, rest @ ..] => parse_resource("", version, rest),
        ["apis", group, version, rest @ ..] => parse_resource(group, version, rest),
        _ => None,
    }
}

fn parse_resource(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let namespace_subresource =
        group.is_empty() && rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    let (namespace, rest) = match rest {
        [] => {
            return Some(Target::Resources {
                group: group.to_string(),
                version: version.to_string(),
            })
        }
        ["namespaces", ns, rest @ ..] if !rest.is_empty() && !namespace_subresource => {
            (Some(ns.to_string()), rest)
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target::Object(ObjectPath {
        gvr: Gvr::new(group, version, plural),
        namespace,
        name,
        subresource,
    }))
}

/// Answers one request (after faults and logging, which `http` handles).
pub(crate) fn dispatch(shared: &Arc<Shared>, req: &Request, body: &Bytes) -> http::Response<Body> {
    let result = match parse_path(req.path()) {
        Some(Target::Object(path)) => object_request(shared, req, body, path),
        Some(target) if req.method() == Method::GET => Ok(discovery_doc(shared, req, target)),
        Some(_) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        )),
        None => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    };
    result.unwrap_or_else(|e| {
        json_response(
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_REQUEST),
            &e.to_status(),
        )
    })
}

fn discovery_doc(shared: &Shared, req: &Request, target: Target) -> http::Response<Body> {
    let store = shared.store.lock();
    let aggregated = discovery::wants_aggregated(req.header("accept"));
    let doc = match target {
        Target::Version => Some(discovery::version()),
        Target::Api if aggregated => Some(discovery::aggregated(&store.kinds, true)),
        Target::Api => Some(discovery::core_versions(&shared.addr.to_string())),
        Target::Apis if aggregated => Some(discovery::aggregated(&store.kinds, false)),
        Target::Apis => Some(discovery::groups(&store.kinds)),
        Target::Resources { group, version } => {
            discovery::resources(&store.kinds, &group, &version)
        }
        Target::Object(_) => None,
    };
    match doc {
        Some(doc) => json_response(StatusCode::OK, &doc),
        None => json_response(
            StatusCode::NOT_FOUND,
            &ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
            .to_status(),
        ),
    }
}

fn object_request(
    shared: &Arc<Shared>,
    req: &Request,
    body: &Bytes,
    path: ObjectPath,
) -> Result<http::Response<Body>, ApiError> {
    let (info, registered) = {
        let store = shared.store.lock();
        let registered = store.kinds.get(&path.gvr).is_some();
        (
            store.kinds.resolve(&path.gvr, path.namespace.is_some()),
            registered,
        )
    };
    let wrong_scope = match (&path.namespace, &path.name) {
        (Some(_), _) => !info.namespaced,
        (None, Some(_)) => info.namespaced,
        (None, None) => false,
    };
    if registered && wrong_scope {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let ns = path.namespace.clone().unwrap_or_default();
    let method = req.method().clone();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match (&method, path.name.as_deref(), path.subresource.as_deref()) {
        (&Method::GET, None, None) if req.flag("watch") => {
            watch(shared, req, &info, path.namespace)
        }
        (&Method::GET, None, None) => ok(list(shared, req, &info, path.namespace.as_deref())?),
        (&Method::POST, None, None) => {
            let mut store = shared.store.lock();
            let obj = store.prepare(&info, &ns, parse_json(body)?)?;
            let created = store.create(&info, &ns, with_update_manager(obj, req))?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::DELETE, None, None) => ok(delete_collection(
            shared,
            req,
            &info,
            path.namespace.as_deref(),
        )?),
        (_, None, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        )),
        (_, Some(name), sub) => {
            let obj = object_verb(shared, req, body, &info, &ns, name, &method, sub)?;
            let meta_only = req
                .header("accept")
                .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
            ok(if meta_only {
                partial_metadata(&obj)
            } else {
                obj
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn object_verb(
    shared: &Shared,
    req: &Request,
    body: &Bytes,
    info: &KindInfo,
    ns: &str,
    name: &str,
    method: &Method,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    let mut store = shared.store.lock();
    let scalable = info.gvr.group == "apps"
        && matches!(
            info.gvr.plural.as_str(),
            "deployments" | "statefulsets" | "replicasets"
        );
    let current = store.get(&info.gvr, ns, name).cloned();
    let existing = || {
        current
            .clone()
            .ok_or_else(|| ApiError::not_found(&info.gvr.plural, name))
    };
    match (method, sub) {
        (&Method::GET, None | Some("status")) => existing(),
        (&Method::GET, Some("scale")) if scalable => Ok(to_scale(&existing()?)),
        (&Method::PUT, None) => {
            let obj = store.prepare(info, ns, parse_json(body)?)?;
            let has_rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|rv| !rv.is_empty());
            if !is_builtin(&info.gvr) && !has_rv {
                return Err(ApiError::invalid(
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            store.update(info, ns, name, with_update_manager(obj, req))
        }
        (&Method::PATCH, None) => {
            let patch = PatchBody::parse(req.header("content-type").unwrap_or_default(), body)?;
            let manager = req.param("fieldManager");
            match current {
                Some(current) => {
                    let patched = patch.apply_to(&current, manager.as_deref())?;
                    let patched = store.prepare(info, ns, patched)?;
                    let patched = if matches!(patch, PatchBody::Apply(_)) {
                        patched
                    } else {
                        with_update_manager(patched, req)
                    };
                    store.update(info, ns, name, patched)
                }
                None if matches!(patch, PatchBody::Apply(_)) => {
                    let applied = patch.apply_to(&json!({}), manager.as_deref())?;
                    let mut applied = store.prepare(info, ns, applied)?;
                    if name_of(&applied).is_some_and(|n| n != name) {
                        return Err(ApiError::bad_request(
                            "the name of the object does not match the name on the URL",
                        ));
                    }
                    applied["metadata"]["name"] = json!(name);
                    store.create(info, ns, applied)
                }
                None => Err(ApiError::not_found(&info.gvr.plural, name)),
            }
        }
        (&Method::PUT | &Method::PATCH, Some("status")) => {
            let current = existing()?;
            let source = patched_or_body(req, body, &current)?;
            let mut updated = current;
            match source.get("status") {
                Some(status) => updated["status"] = status.clone(),
                None => {
                    updated.as_object_mut().map(|m| m.remove("status"));
                }
            }
            updated["metadata"]["resourceVersion"] = source["metadata"]["resourceVersion"].clone();
            if let (&Method::PATCH, Some(fields)) =
                (method, source.pointer("/metadata/managedFields"))
            {
                updated["metadata"]["managedFields"] = fields.clone();
            }
            store.update(info, ns, name, updated)
        }
        (&Method::PUT | &Method::PATCH, Some("scale")) if scalable => {
            let current = existing()?;
            let scale = patched_or_body(req, body, &to_scale(&current))?;
            let replicas = scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .filter(|r| *r >= 0)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "spec.replicas: Invalid value: must be a non-negative integer",
                    )
                })?;
            let mut updated = current;
            updated["spec"]["replicas"] = json!(replicas);
            updated["metadata"]["resourceVersion"] = scale["metadata"]["resourceVersion"].clone();
            Ok(to_scale(&store.update(info, ns, name, updated)?))
        }
        (&Method::DELETE, None) => {
            let current = existing()?;
            check_delete_preconditions(body, &current, &info.gvr.plural, name)?;
            store.delete(info, ns, name)
        }
        (_, Some(_)) => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        )),
    }
}

/// For a subresource write: the PUT body, or the PATCH applied to `current`.
fn patched_or_body(req: &Request, body: &Bytes, current: &Value) -> Result<Value, ApiError> {
    if req.method() == Method::PUT {
        let mut obj = parse_json(body)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if obj.get("metadata").is_none_or(|m| !m.is_object()) {
            obj["metadata"] = json!({});
        }
        return Ok(obj);
    }
    let patch = PatchBody::parse(req.header("content-type").unwrap_or_default(), body)?;
    patch.apply_to(current, req.param("fieldManager").as_deref())
}

fn check_delete_preconditions(
    body: &Bytes,
    current: &Value,
    plural: &str,
    name: &str,
) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    let options = parse_json(body)?;
    for field in ["resourceVersion", "uid"] {
        if let Some(wanted) = options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
        {
            if current["metadata"][field] != wanted {
                return Err(ApiError::conflict(plural, name));
            }
        }
    }
    Ok(())
}

fn with_update_manager(mut obj: Value, req: &Request) -> Value {
    if let Some(manager) = req.param("fieldManager") {
        let api_version = obj["apiVersion"].clone();
        record_manager(&mut obj, &manager, "Update", &api_version, json!({}));
    }
    obj
}

/// An `autoscaling/v1` `Scale` view of a deployment-like object.
fn to_scale(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn list(
    shared: &Shared,
    req: &Request,
    info: &KindInfo,
    ns: Option<&str>,
) -> Result<Value, ApiError> {
    let filter = Filter::parse(
        req.param("labelSelector").as_deref(),
        req.param("fieldSelector").as_deref(),
    )?;
    let limit = match req.param("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let store = shared.store.lock();
    let token = req
        .param("continue")
        .filter(|t| !t.is_empty())
        .map(|t| ContinueToken::decode(&t))
        .transpose()?;
    if let Some(token) = &token {
        if token.epoch != store.token_epoch {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ));
        }
    }
    let list_rv = token.as_ref().map_or(store.rv(), |t| t.rv);
    let mut matching = store
        .list(&info.gvr, ns, token.as_ref().map(|t| &t.after))
        .filter(|(_, obj)| filter.matches(obj));
    let take = if limit == 0 { usize::MAX } else { limit };
    let page: Vec<(&Key, &Value)> = matching.by_ref().take(take).collect();
    let more = matching.next().is_some();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let (true, Some((last, _))) = (more, page.last()) {
        let token = ContinueToken {
            epoch: store.token_epoch,
            rv: list_rv,
            after: (*last).clone(),
        };
        metadata["continue"] = json!(token.encode());
    }
    let meta_only = req
        .header("accept")
        .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
    let items: Vec<Value> = page
        .into_iter()
        .map(|(_, obj)| {
            if meta_only {
                partial_metadata(obj)
            } else {
                obj.clone()
            }
        })
        .collect();
    let (api_version, kind) = if meta_only {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (info.gvr.api_version(), format!("{}List", info.kind))
    };
    Ok(json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}))
}

fn delete_collection(
    shared: &Shared,
    req: &Request,
    info: &KindInfo,
    ns: Option<&str>,
) -> Result<Value, ApiError> {
    let filter = Filter::parse(
        req.param("labelSelector").as_deref(),
        req.param("fieldSelector").as_deref(),
    )?;
    let mut store = shared.store.lock();
    let doomed: Vec<Key> = store
        .list(&info.gvr, ns, None)
        .filter(|(_, obj)| filter.matches(obj))
        .map(|(key, _)| key.clone())
        .collect();
    let items: Vec<Value> = doomed
        .iter()
        .filter_map(|(ns, name)| store.delete(info, ns, name).ok())
        .collect();
    let rv = store.rv().to_string();
    Ok(
        json!({"apiVersion": info.gvr.api_version(), "kind": format!("{}List", info.kind), "metadata": {"resourceVersion": rv}, "items": items}),
    )
}

fn watch(
    shared: &Arc<Shared>,
    req: &Request,
    info: &KindInfo,
    namespace: Option<String>,
) -> Result<http::Response<Body>, ApiError> {
    let filter = Filter::parse(
        req.param("labelSelector").as_deref(),
        req.param("fieldSelector").as_deref(),
    )?;
    let resource_version = match req.param("resourceVersion").as_deref() {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = match req.param("timeoutSeconds") {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        None => 1800,
    };
    let send_initial_events = req.flag("sendInitialEvents");
    if send_initial_events && req.param("resourceVersionMatch").as_deref() != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
        ));
    }
    let spec = WatchSpec {
        info: info.clone(),
        namespace,
        filter,
        bookmarks: req.flag("allowWatchBookmarks"),
        timeout: Duration::from_secs(timeout),
        resource_version,
        send_initial_events,
        metadata_only: req
            .header("accept")
            .is_some_and(|a| a.contains("as=PartialObjectMetadata")),
    };
    Ok(stream_response(watch::start(shared.clone(), spec)))
}

/// The opaque `continue` token: compaction epoch, snapshot resourceVersion, last key served.
struct ContinueToken {
    epoch: u64,
    rv: u64,
    after: Key,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let raw = format!(
            "{}/{}/{}/{}",
            self.epoch, self.rv, self.after.0, self.after.1
        );
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
        let bytes: Vec<u8> = (0..token.len())
            .step_by(2)
            .map(|i| {
                token
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let raw = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = raw.splitn(4, '/');
        let mut next = || parts.next().ok_or_else(bad);
        let epoch = next()?.parse().map_err(|_| bad())?;
        let rv = next()?.parse().map_err(|_| bad())?;
        let after = (next()?.to_string(), next()?.to_string());
        Ok(Self { epoch, rv, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let obj = |path| match parse_path(path) {
            Some(Target::Object(o)) => o,
            other => panic!("{path}: {other:?}"),
        };
        let p = obj("/apis/apps/v1/namespaces/ns/deployments/web/scale");
        assert_eq!(
            (
                p.gvr.plural.as_str(),
                p.namespace.as_deref(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            ("deployments", Some("ns"), Some("web"), Some("scale"))
        );
        let p = obj("/api/v1/namespaces/ns");
        assert_eq!(
            (p.gvr.plural.as_str(), p.name.as_deref()),
            ("namespaces", Some("ns"))
        );
        let p = obj("/api/v1/namespaces/ns/status");
        assert_eq!(
            (p.name.as_deref(), p.subresource.as_deref()),
            (Some("ns"), Some("status"))
        );
        assert_eq!(obj("/api/v1/pods").namespace, None);
        assert_eq!(
            parse_path("/apis/g/v1"),
            Some(Target::Resources {
                group: "g".into(),
                version: "v1".into()
            })
        );
        assert_eq!(parse_path("/healthz/x"), None);
        assert_eq!(parse_path("/api/v1/ns/a/b/c/d"), None);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = ContinueToken {
            epoch: 2,
            rv: 42,
            after: ("ns".into(), "a/b".into()),
        };
        let back = ContinueToken::decode(&token.encode()).unwrap();
        assert_eq!(
            (back.epoch, back.rv, back.after),
            (2, 42, ("ns".into(), "a/b".into()))
        );
        assert!(ContinueToken::decode("zz").is_err());
        assert!(ContinueToken::decode("abc").is_err());
    }
}

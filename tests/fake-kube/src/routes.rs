//! Request routing: discovery documents, collection verbs, and the verbs on one object (get,
//! replace, patch, delete) with its `status` and `scale` subresources.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::collection;
use crate::discovery;
use crate::kinds::{is_builtin, KindInfo};
use crate::patch::{record_manager, PatchBody};
use crate::paths::{parse_path, ObjectPath, Target};
use crate::server::Shared;
use crate::service::{error_response, json_response, parse_json, Body, Request};
use crate::status::ApiError;
use crate::store::{name_of, Store};
use crate::subresources;
use crate::watch::partial_metadata;

/// One request on a named object.
pub(crate) struct Call<'a> {
    pub(crate) req: &'a Request,
    pub(crate) body: &'a Bytes,
    pub(crate) info: &'a KindInfo,
    pub(crate) ns: &'a str,
    pub(crate) name: &'a str,
}

/// Answers one request (request-level faults and logging happen in `service`).
pub(crate) fn dispatch(shared: &Arc<Shared>, req: &Request, body: &Bytes) -> http::Response<Body> {
    let result = match parse_path(req.path()) {
        Some(Target::Object(path)) => object_request(shared, req, body, path),
        Some(target) if req.method() == Method::GET => discovery_doc(shared, req, target)
            .map(|doc| json_response(StatusCode::OK, &doc))
            .ok_or_else(ApiError::no_route),
        Some(_) => Err(ApiError::method_not_allowed()),
        None => Err(ApiError::no_route()),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

fn discovery_doc(shared: &Shared, req: &Request, target: Target) -> Option<Value> {
    let store = shared.store.lock();
    let aggregated = discovery::wants_aggregated(req.header("accept"));
    match target {
        Target::Version => Some(discovery::version(*shared.minor.lock())),
        Target::Api if aggregated => Some(discovery::aggregated(&store.kinds, true)),
        Target::Api => Some(discovery::core_versions(&shared.addr.to_string())),
        Target::Apis if aggregated => Some(discovery::aggregated(&store.kinds, false)),
        Target::Apis => Some(discovery::groups(&store.kinds)),
        Target::Resources { group, version } => {
            discovery::resources(&store.kinds, &group, &version)
        }
        Target::Object(_) => None,
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
        let info = store.kinds.resolve(&path.gvr, path.namespace.is_some());
        (info, store.kinds.get(&path.gvr).is_some())
    };
    let wrong_scope = match (&path.namespace, &path.name) {
        (Some(_), _) => !info.namespaced,
        (None, Some(_)) => info.namespaced,
        (None, None) => false,
    };
    if registered && wrong_scope {
        return Err(ApiError::no_route());
    }
    if req.param("dryRun").is_some() && req.method() != Method::GET {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the fake API server",
        ));
    }
    let ns = path.namespace.as_deref().unwrap_or_default();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    let Some(name) = path.name.as_deref() else {
        return match *req.method() {
            Method::GET if req.flag("watch") => {
                collection::watch(shared, req, &info, path.namespace)
            }
            Method::GET => ok(collection::list(
                shared,
                req,
                &info,
                path.namespace.as_deref(),
            )?),
            Method::POST => {
                let mut store = shared.store.lock();
                let obj = store.prepare(&info, ns, parse_json(body)?)?;
                let created = store.create(&info, ns, with_update_manager(obj, req))?;
                Ok(json_response(StatusCode::CREATED, &created))
            }
            Method::DELETE => ok(collection::delete_collection(
                shared,
                req,
                &info,
                path.namespace.as_deref(),
            )?),
            _ => Err(ApiError::method_not_allowed()),
        };
    };
    let call = Call {
        req,
        body,
        info: &info,
        ns,
        name,
    };
    let obj = match path.subresource.as_deref() {
        None => object_verb(&mut shared.store.lock(), &call)?,
        Some("status") => subresources::status(shared, &call)?,
        Some("scale") if subresources::is_scalable(&info) => subresources::scale(shared, &call)?,
        Some(_) => return Err(ApiError::no_route()),
    };
    ok(if req.metadata_only() {
        partial_metadata(&obj)
    } else {
        obj
    })
}

fn object_verb(store: &mut Store, call: &Call) -> Result<Value, ApiError> {
    let Call {
        req,
        body,
        info,
        ns,
        name,
    } = *call;
    let current = store.get(&info.gvr, ns, name).cloned();
    let not_found = || ApiError::not_found(&info.gvr.plural, name);
    match *req.method() {
        Method::GET => current.ok_or_else(not_found),
        Method::PUT => {
            let obj = store.prepare(info, ns, parse_json(body)?)?;
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            if !is_builtin(&info.gvr) && rv.is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            store.update(info, ns, name, with_update_manager(obj, req))
        }
        Method::PATCH => {
            let patch = PatchBody::parse(req.header("content-type").unwrap_or_default(), body)?;
            let manager = req.param("fieldManager");
            let apply = matches!(patch, PatchBody::Apply(_));
            match current {
                Some(current) => {
                    let patched =
                        store.prepare(info, ns, patch.apply_to(&current, manager.as_deref())?)?;
                    let patched = if apply {
                        patched
                    } else {
                        with_update_manager(patched, req)
                    };
                    store.update(info, ns, name, patched)
                }
                None if apply => {
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
                None => Err(not_found()),
            }
        }
        Method::DELETE => {
            let current = current.ok_or_else(not_found)?;
            check_delete_preconditions(body, &current, &info.gvr.plural, name)?;
            store.delete(info, ns, name)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `DeleteOptions.preconditions` (`resourceVersion`, `uid`): 409 on a mismatch.
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
        let wanted = options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str);
        if wanted.is_some_and(|wanted| current["metadata"][field] != wanted) {
            return Err(ApiError::conflict(plural, name));
        }
    }
    Ok(())
}

/// Records an `Update` entry in `managedFields` when the request names a `fieldManager`.
fn with_update_manager(mut obj: Value, req: &Request) -> Value {
    if let Some(manager) = req.param("fieldManager") {
        let api_version = obj["apiVersion"].clone();
        record_manager(&mut obj, &manager, "Update", &api_version, json!({}));
    }
    obj
}

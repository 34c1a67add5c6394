//! The `status` subresource (only `.status` changes) and the `scale` subresource of apps/v1
//! workloads (an `autoscaling/v1` `Scale` mapped onto `spec.replicas`/`status.replicas`).

use http::Method;
use serde_json::{json, Value};

use crate::kinds::KindInfo;
use crate::patch::PatchBody;
use crate::routes::Call;
use crate::server::Shared;
use crate::service::parse_json;
use crate::status::ApiError;

/// Whether the kind has a `scale` subresource.
pub(crate) fn is_scalable(info: &KindInfo) -> bool {
    info.gvr.group == "apps"
        && matches!(
            info.gvr.plural.as_str(),
            "deployments" | "statefulsets" | "replicasets"
        )
}

/// GET, PUT or PATCH `.../status`.
pub(crate) fn status(shared: &Shared, call: &Call) -> Result<Value, ApiError> {
    let mut store = shared.store.lock();
    let current = store
        .get(&call.info.gvr, call.ns, call.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&call.info.gvr.plural, call.name))?;
    if call.req.method() == Method::GET {
        return Ok(current);
    }
    let source = written(call, &current)?;
    let mut updated = current;
    match source.get("status") {
        Some(status) => updated["status"] = status.clone(),
        None => {
            updated.as_object_mut().map(|m| m.remove("status"));
        }
    }
    updated["metadata"]["resourceVersion"] = source["metadata"]["resourceVersion"].clone();
    let managed = source.pointer("/metadata/managedFields");
    if let (&Method::PATCH, Some(fields)) = (call.req.method(), managed) {
        updated["metadata"]["managedFields"] = fields.clone();
    }
    store.update(call.info, call.ns, call.name, updated)
}

/// GET, PUT or PATCH `.../scale`.
pub(crate) fn scale(shared: &Shared, call: &Call) -> Result<Value, ApiError> {
    let mut store = shared.store.lock();
    let current = store
        .get(&call.info.gvr, call.ns, call.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&call.info.gvr.plural, call.name))?;
    if call.req.method() == Method::GET {
        return Ok(to_scale(&current));
    }
    let scale = written(call, &to_scale(&current))?;
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid("spec.replicas: Invalid value: must be a non-negative integer")
        })?;
    let mut updated = current;
    if !updated["spec"].is_object() {
        updated["spec"] = json!({});
    }
    updated["spec"]["replicas"] = json!(replicas);
    updated["metadata"]["resourceVersion"] = scale["metadata"]["resourceVersion"].clone();
    Ok(to_scale(
        &store.update(call.info, call.ns, call.name, updated)?,
    ))
}

/// What a subresource write asks for: the PUT body, or the PATCH applied to `current`.
fn written(call: &Call, current: &Value) -> Result<Value, ApiError> {
    match *call.req.method() {
        Method::PUT => {
            let mut obj = parse_json(call.body)?;
            if !obj.is_object() {
                return Err(ApiError::bad_request("the object must be a JSON object"));
            }
            if obj.get("metadata").is_none_or(|m| !m.is_object()) {
                obj["metadata"] = json!({});
            }
            Ok(obj)
        }
        Method::PATCH => {
            let patch = PatchBody::parse(
                call.req.header("content-type").unwrap_or_default(),
                call.body,
            )?;
            let patched = patch.apply_to(current, call.req.param("fieldManager").as_deref())?;
            if patched.get("metadata").is_some_and(Value::is_object) {
                Ok(patched)
            } else {
                Err(ApiError::invalid("metadata must be an object"))
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// An `autoscaling/v1` `Scale` view of a workload.
fn to_scale(obj: &Value) -> Value {
    let labels = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object);
    let selector: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let meta = &obj["metadata"];
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector.join(","),
        },
    })
}

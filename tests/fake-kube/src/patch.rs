//! PATCH bodies: JSON merge patch, strategic merge (as merge), JSON patch and server-side apply.

use serde_json::{json, Map, Value};

use crate::status::ApiError;

/// A parsed PATCH body, by `Content-Type`.
#[derive(Debug)]
pub(crate) enum PatchBody {
    /// `application/apply-patch+yaml`: the applied configuration.
    Apply(Value),
    /// `application/merge-patch+json` or `application/strategic-merge-patch+json`.
    Merge(Value),
    /// `application/json-patch+json`.
    Json(json_patch::Patch),
}

impl PatchBody {
    /// Parses `body` according to the request's content type.
    pub(crate) fn parse(content_type: &str, body: &[u8]) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let bad =
            |e: &dyn std::fmt::Display| ApiError::bad_request(format!("malformed patch: {e}"));
        match media {
            "application/apply-patch+yaml" => {
                let value: Value = serde_yaml::from_slice(body).map_err(|e| bad(&e))?;
                if !value.is_object() {
                    return Err(ApiError::bad_request("apply patch must be an object"));
                }
                Ok(Self::Apply(value))
            }
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                Ok(Self::Merge(serde_json::from_slice(body).map_err(|e| bad(&e))?))
            }
            "application/json-patch+json" => {
                Ok(Self::Json(serde_json::from_slice(body).map_err(|e| bad(&e))?))
            }
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {other:?}"),
            )),
        }
    }

    /// Applies the patch to `target` (which is `{}` for an apply that creates).
    pub(crate) fn apply_to(
        &self,
        target: &Value,
        manager: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut out = target.clone();
        match self {
            Self::Apply(applied) => {
                let manager = manager.ok_or_else(|| {
                    ApiError::bad_request(
                        "PATCH, application/apply-patch+yaml requires fieldManager",
                    )
                })?;
                server_side_apply(&mut out, applied, manager);
            }
            Self::Merge(patch) => json_patch::merge(&mut out, patch),
            Self::Json(patch) => json_patch::patch(&mut out, patch)
                .map_err(|e| ApiError::invalid(format!("json patch failed: {e}")))?,
        }
        Ok(out)
    }
}

/// Server-side apply, simplified: fields this manager applied last time but no longer applies are
/// removed, then the applied fields are merged in (maps recursively, everything else replaced).
fn server_side_apply(obj: &mut Value, applied: &Value, manager: &str) {
    let owned = fields_v1(applied, true);
    if let Some(previous) = managed_entry(obj, manager, "Apply").and_then(|e| e.get("fieldsV1")) {
        prune(obj, &previous.clone(), &owned);
    }
    merge_maps(obj, applied);
    let api_version = applied.get("apiVersion").cloned().unwrap_or(Value::Null);
    record_manager(obj, manager, "Apply", &api_version, owned);
}

/// Records (replacing any previous one) the `managedFields` entry for `manager` and `operation`.
pub(crate) fn record_manager(
    obj: &mut Value,
    manager: &str,
    operation: &str,
    api_version: &Value,
    fields: Value,
) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let entries = meta.entry("managedFields").or_insert_with(|| json!([]));
    if !entries.is_array() {
        *entries = json!([]);
    }
    let Some(list) = entries.as_array_mut() else {
        return;
    };
    list.retain(|e| !(e["manager"] == manager && e["operation"] == operation));
    list.push(json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": crate::store::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }));
}

fn managed_entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj.pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

/// A `fieldsV1`-style set (`{"f:spec":{"f:replicas":{}}}`) of the fields an applied object sets.
fn fields_v1(value: &Value, top: bool) -> Value {
    let Some(map) = value.as_object() else {
        return json!({});
    };
    let mut out = Map::new();
    for (key, child) in map {
        let skip = top && matches!(key.as_str(), "apiVersion" | "kind");
        if skip {
            continue;
        }
        let nested = if top && key == "metadata" {
            let kept: Map<String, Value> = child
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "labels" | "annotations" | "finalizers" | "ownerReferences"
                    )
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            fields_v1(&Value::Object(kept), false)
        } else {
            fields_v1(child, false)
        };
        out.insert(format!("f:{key}"), nested);
    }
    Value::Object(out)
}

/// Removes from `obj` the fields in `previous` that are absent from `current`.
fn prune(obj: &mut Value, previous: &Value, current: &Value) {
    let (Some(map), Some(prev)) = (obj.as_object_mut(), previous.as_object()) else {
        return;
    };
    for (field, prev_child) in prev {
        let Some(key) = field.strip_prefix("f:") else {
            continue;
        };
        match current.get(field) {
            None => {
                map.remove(key);
            }
            Some(cur_child) => {
                if let Some(child) = map.get_mut(key) {
                    prune(child, prev_child, cur_child);
                }
            }
        }
    }
}

/// Recursively merges `patch` into `target`: maps merge, anything else replaces.
fn merge_maps(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target_map), Some(patch_map)) => {
            for (key, value) in patch_map {
                match target_map.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_maps(existing, value)
                    }
                    _ => {
                        target_map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_merges_and_prunes_own_fields() {
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v", "old": "o"}});
        let patch = PatchBody::Apply(applied);
        let first = patch.apply_to(&json!({}), Some("me")).unwrap();
        let mut edited = first.clone();
        edited["data"]["other"] = json!("kept");
        let second_body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v2"}});
        let second = PatchBody::Apply(second_body)
            .apply_to(&edited, Some("me"))
            .unwrap();
        assert_eq!(second["data"], json!({"k": "v2", "other": "kept"}));
        assert_eq!(second["metadata"]["labels"], json!({"x": "1"}));
        let entries = second["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["fieldsV1"]["f:data"], json!({"f:k": {}}));
        assert!(PatchBody::Apply(json!({}))
            .apply_to(&json!({}), None)
            .is_err());
    }

    #[test]
    fn parse_rejects_bad_bodies() {
        assert_eq!(
            PatchBody::parse("application/merge-patch+json", b"{")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(PatchBody::parse("text/plain", b"{}").unwrap_err().code, 415);
        let json_patch = PatchBody::parse(
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/a","value":2}]"#,
        )
        .unwrap();
        assert_eq!(
            json_patch.apply_to(&json!({"a": 1}), None).unwrap(),
            json!({"a": 2})
        );
    }
}

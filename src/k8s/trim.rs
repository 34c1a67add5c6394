//! Trimming objects before they are stored: what no consumer reads is dropped, so memory grows
//! with what scoregate uses rather than with what other tools attach (`managedFields`, and
//! `kubectl.kubernetes.io/last-applied-configuration`, which can be larger than the object).

use kube::api::{DynamicObject, ObjectMeta};

/// Drops managed fields, annotations, owner references and finalizers.
pub fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

/// Keeps a custom resource's identity (name, namespace, resourceVersion, generation, creation
/// time), its `spec` and its `status.conditions` (what the router compares its own conditions
/// with); drops labels, the rest of `status` and everything else.
pub fn custom_resource(object: &mut DynamicObject) {
    metadata(&mut object.metadata);
    object.metadata.labels = None;
    if let Some(map) = object.data.as_object_mut() {
        map.retain(|k, _| k == "spec" || k == "status");
        if let Some(status) = map.get_mut("status").and_then(|s| s.as_object_mut()) {
            status.retain(|k, _| k == "conditions");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_custom_resource_keeps_its_spec() {
        let mut endpoint: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
            "metadata": {"name": "e", "namespace": "ns", "annotations": {"x": "y"}},
            "spec": {"keysSecretName": "k"},
            "status": {"big": true, "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        custom_resource(&mut endpoint);
        assert_eq!(endpoint.data["status"].as_object().unwrap().len(), 1);
        assert_eq!(endpoint.data["status"]["conditions"][0]["type"], "Ready");
        assert!(endpoint.data.get("spec").is_some());
        assert!(endpoint.metadata.annotations.is_none());
        assert_eq!(endpoint.metadata.name.as_deref(), Some("e"));
    }
}

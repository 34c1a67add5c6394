//! The extension's record: ConfigMap `scoregate-ext-<name>` in `azureml`, holding what `show`,
//! `list` and `update` read back: the non-protected settings as given, the names (never the
//! values) of the protected ones, the image and the installer version.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use super::meta;

/// The ConfigMap key holding the record.
pub const RECORD_KEY: &str = "extension.yaml";
/// `extensionType` of scoregate's extension.
pub const EXTENSION_TYPE: &str = "scoregate";
/// Set on the record when `create` made namespace `azureml` (so `delete` may remove it).
pub const CREATED_NAMESPACE_ANNOTATION: &str = "scoregate.io/created-namespace";

/// What an extension was installed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionRecord {
    /// The extension's name (`--name`).
    pub name: String,
    /// Always [`EXTENSION_TYPE`].
    pub extension_type: String,
    /// The installer version that last applied it.
    pub version: String,
    /// The router image.
    pub image: String,
    /// `--config` settings as given.
    pub configuration_settings: BTreeMap<String, String>,
    /// The keys of `--config-protected` settings; their values are never stored.
    pub configuration_protected_setting_keys: Vec<String>,
}

/// The record ConfigMap's name for extension `name`.
pub fn config_map_name(name: &str) -> String {
    format!("scoregate-ext-{name}")
}

/// The record ConfigMap.
pub fn config_map(record: &ExtensionRecord) -> ConfigMap {
    let yaml = serde_yaml::to_string(record).expect("the record always serializes");
    ConfigMap {
        metadata: meta::namespaced(
            &config_map_name(&record.name),
            &record.name,
            meta::RECORD_COMPONENT,
        ),
        data: Some(BTreeMap::from([(RECORD_KEY.to_owned(), yaml)])),
        ..ConfigMap::default()
    }
}

/// Reads a record back from its ConfigMap; the message says which object is damaged.
pub fn from_config_map(cm: &ConfigMap) -> Result<ExtensionRecord, String> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(RECORD_KEY))
        .ok_or_else(|| {
            format!("ConfigMap {}/{name} has no `{RECORD_KEY}`: it was not written by scoregate-ext; delete it or restore it", meta::NAMESPACE)
        })?;
    serde_yaml::from_str(text).map_err(|e| {
        format!("ConfigMap {}/{name}: `{RECORD_KEY}` does not parse ({e}): restore it, or delete the extension's objects by label {}", meta::NAMESPACE, meta::EXTENSION_LABEL)
    })
}

//! Changing the cluster: server-side apply of a manifest (field manager `scoregate`), pruning what
//! a new manifest no longer has, and deleting everything an extension made.
//!
//! Objects are found by label ([`meta::selector`]), never by guessing names, so `delete` removes
//! exactly what `create` and `update` made. Two things are kept on purpose, and said so: CRDs
//! while custom resources of them exist (deleting a CRD deletes every endpoint in the cluster),
//! and namespace `azureml` unless `create` made it and nothing else lives in it.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;

use crate::cluster::is_status;
use crate::kinds::{self, ManagedKind};
use crate::problem::Notice;
use crate::render::meta;
use crate::render::record::CREATED_NAMESPACE_ANNOTATION;
use crate::render::{object_ref, Manifest};

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// `Kind/name` of every object applied.
    pub applied: Vec<String>,
    /// Objects not applied, and why.
    pub notices: Vec<Notice>,
}

/// What a prune or a delete removed, and what it kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveOutcome {
    /// `Kind/name` of every object deleted.
    pub deleted: Vec<String>,
    /// Objects kept on purpose, and why.
    pub notices: Vec<Notice>,
}

fn api(client: &Client, kind: &ManagedKind) -> Api<DynamicObject> {
    api_in(client, kind, meta::NAMESPACE)
}

/// The API of `kind` in `namespace` (ignored for cluster-scoped kinds).
fn api_in(client: &Client, kind: &ManagedKind, namespace: &str) -> Api<DynamicObject> {
    if kind.namespaced {
        Api::namespaced_with(client.clone(), namespace, &kind.resource)
    } else {
        Api::all_with(client.clone(), &kind.resource)
    }
}

/// The namespace of a rendered object (`azureml` unless it says otherwise: the Roles of
/// namespace-scoped mode live in the endpoints' namespaces).
fn namespace_of(object: &serde_yaml::Value) -> &str {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(meta::NAMESPACE)
}

/// Whether the API server serves `resource` (optional APIs such as the Prometheus Operator's).
pub async fn served(client: &Client, resource: &ApiResource) -> anyhow::Result<bool> {
    match client.list_api_group_resources(&resource.api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == resource.plural)),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot ask the API server whether it serves {}",
                resource.api_version
            )
        }),
    }
}

/// Whether namespace `azureml` exists.
pub async fn namespace_exists(client: &Client) -> anyhow::Result<bool> {
    Ok(Api::<Namespace>::all(client.clone())
        .get_opt(meta::NAMESPACE)
        .await
        .context("cannot read namespace azureml")?
        .is_some())
}

/// Applies every object of `manifest` in order with server-side apply (forcing ownership, as an
/// installer must). `created_namespace` is recorded on the extension's record so `delete` knows
/// whether namespace `azureml` is its to remove.
pub async fn apply(
    client: &Client,
    manifest: &Manifest,
    created_namespace: bool,
) -> anyhow::Result<ApplyOutcome> {
    let mut outcome = ApplyOutcome::default();
    let params = PatchParams::apply(meta::FIELD_MANAGER).force();
    let cluster_secret_at = manifest
        .objects
        .iter()
        .position(|o| o["kind"].as_str() == Some("Deployment"));
    for (index, object) in manifest.objects.iter().enumerate() {
        // The replicas' credential exists before the router that reads it.
        if Some(index) == cluster_secret_at && needs_cluster_secret(manifest) {
            let extension = object["metadata"]["labels"][meta::EXTENSION_LABEL]
                .as_str()
                .unwrap_or_default();
            let made = ensure_cluster_secret(client, extension).await?;
            outcome.applied.push(format!(
                "Secret/{} ({})",
                meta::CLUSTER_SECRET,
                if made {
                    "created with a new random credential"
                } else {
                    "kept"
                }
            ));
        }
        let reference = object_ref(object);
        let kind = kinds::of(object).with_context(|| {
            format!("{reference}: the installer does not know this kind (a bug)")
        })?;
        if kind.optional && !served(client, &kind.resource).await? {
            outcome.notices.push(Notice::general(format!(
                "{reference} not applied: the cluster does not serve {} (the Prometheus Operator's CRDs are not installed); install the operator and run `scoregate-ext update`, or set installPromOp=False",
                kind.resource.api_version
            )));
            continue;
        }
        let mut object = object.clone();
        let is_record = object["metadata"]["labels"]["app.kubernetes.io/component"].as_str()
            == Some(meta::RECORD_COMPONENT);
        if is_record && created_namespace {
            object["metadata"]["annotations"][CREATED_NAMESPACE_ANNOTATION] = "true".into();
        }
        let name = object["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{reference}: no metadata.name (a bug)"))?
            .to_owned();
        api_in(client, &kind, namespace_of(&object))
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| explain(e, "apply", &reference))?;
        outcome.applied.push(reference);
    }
    Ok(outcome)
}

/// An object the manifest would change that something else manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// `Kind/name` (with its namespace outside `azureml`).
    pub reference: String,
    /// Who manages it, as far as the object says.
    pub manager: String,
}

/// The objects of `manifest` (and the cluster credential it needs) that already exist and are
/// not extension `extension`'s: Azure ML's own `azureml-fe` objects, say. Namespace `azureml`
/// is shared by design and never counted.
pub async fn foreign_objects_of(
    client: &Client,
    manifest: &Manifest,
    extension: &str,
) -> anyhow::Result<Vec<Foreign>> {
    let mut wanted: Vec<(ManagedKind, String, String)> = Vec::new();
    for object in &manifest.objects {
        let Some(kind) = kinds::of(object) else {
            continue;
        };
        if kind.resource.kind == "Namespace" {
            continue;
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        wanted.push((kind, namespace_of(object).to_owned(), name));
    }
    if needs_cluster_secret(manifest) {
        if let Some(kind) = kinds::managed()
            .into_iter()
            .find(|k| k.resource.kind == "Secret")
        {
            wanted.push((
                kind,
                meta::NAMESPACE.to_owned(),
                meta::CLUSTER_SECRET.to_owned(),
            ));
        }
    }
    let mut foreign = Vec::new();
    for (kind, namespace, name) in wanted {
        let reference = reference_in(&kind.resource.kind, &namespace, &name);
        let existing = match api_in(client, &kind, &namespace).get_opt(&name).await {
            Ok(existing) => existing,
            Err(e) if kind.optional && is_status(&e, 404) => None,
            Err(e) => return Err(explain(e, "read", &reference)),
        };
        if let Some(manager) = existing.and_then(|o| other_manager(&o, extension)) {
            foreign.push(Foreign { reference, manager });
        }
    }
    Ok(foreign)
}

/// Who manages `object` when it is not extension `extension`.
fn other_manager(object: &DynamicObject, extension: &str) -> Option<String> {
    let labels = object.metadata.labels.clone().unwrap_or_default();
    let managed_by = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str);
    let owner = labels.get(meta::EXTENSION_LABEL).map(String::as_str);
    if managed_by == Some(meta::MANAGED_BY) && owner == Some(extension) {
        return None;
    }
    let annotations = object.metadata.annotations.clone().unwrap_or_default();
    Some(
        match (
            managed_by,
            owner,
            annotations.get("meta.helm.sh/release-name"),
        ) {
            (Some(meta::MANAGED_BY), Some(other), _) => {
                format!("scoregate-ext extension `{other}`")
            }
            (Some(by), _, Some(release)) => format!("{by} (release {release})"),
            (Some(by), _, None) => by.to_owned(),
            (None, _, _) => {
                let managers: Vec<String> = object
                    .metadata
                    .managed_fields
                    .iter()
                    .flatten()
                    .filter_map(|m| m.manager.clone())
                    .collect();
                if managers.is_empty() {
                    "unknown (no app.kubernetes.io/managed-by label)".to_owned()
                } else {
                    format!("field managers {}", managers.join(", "))
                }
            }
        },
    )
}

/// Whether the rendered router coordinates admission with its replicas.
fn needs_cluster_secret(manifest: &Manifest) -> bool {
    manifest
        .router_config
        .as_ref()
        .is_some_and(|c| c.cluster.is_some())
}

/// Creates Secret `azureml-fe-cluster` with a random credential unless it exists; never changes
/// an existing one (replicas must agree on it, and rotating it mid-rollout would split them).
/// Says whether it was created.
async fn ensure_cluster_secret(client: &Client, extension: &str) -> anyhow::Result<bool> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), meta::NAMESPACE);
    let reference = format!("Secret/{}", meta::CLUSTER_SECRET);
    if cluster_secret_exists(client).await? {
        return Ok(false);
    }
    let credential =
        scoregate::cluster::credential::Credential::generate().map_err(anyhow::Error::msg)?;
    let secret = crate::render::config::cluster_secret(extension, &credential);
    match secrets.create(&Default::default(), &secret).await {
        Ok(_) => Ok(true),
        // Another installer made it meanwhile: keep theirs.
        Err(e) if is_status(&e, 409) => Ok(false),
        Err(e) => Err(explain(e, "create", &reference)),
    }
}

/// Whether Secret `azureml-fe-cluster` (the replicas' credential) exists.
pub async fn cluster_secret_exists(client: &Client) -> anyhow::Result<bool> {
    use k8s_openapi::api::core::v1::Secret;
    let reference = format!("Secret/{}", meta::CLUSTER_SECRET);
    Ok(Api::<Secret>::namespaced(client.clone(), meta::NAMESPACE)
        .get_opt(meta::CLUSTER_SECRET)
        .await
        .map_err(|e| explain(e, "read", &reference))?
        .is_some())
}

/// Turns an API error into a message naming the object and the operation.
fn explain(e: kube::Error, verb: &str, reference: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(status) => anyhow::anyhow!(
            "cannot {verb} {reference}: {} ({}, HTTP {}){}",
            status.message,
            status.reason,
            status.code,
            if status.code == 403 {
                ": your credentials lack the permission; an installer needs cluster-admin or equivalent"
            } else {
                ""
            }
        ),
        _ => anyhow::Error::new(e).context(format!("cannot {verb} {reference}")),
    }
}

/// Every object labelled as part of `extension`, kind by kind in apply order.
async fn labelled(
    client: &Client,
    extension: &str,
) -> anyhow::Result<Vec<(ManagedKind, Vec<DynamicObject>)>> {
    let params = ListParams::default().labels(&meta::selector(extension));
    let mut found = Vec::new();
    for kind in kinds::managed() {
        // Every namespace: namespace-scoped mode puts Roles outside `azureml`.
        match Api::<DynamicObject>::all_with(client.clone(), &kind.resource)
            .list(&params)
            .await
        {
            Ok(list) => found.push((kind, list.items)),
            Err(e) if kind.optional && is_status(&e, 404) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot list the extension's {} objects", kind.resource.kind)
                })
            }
        }
    }
    Ok(found)
}

/// Deletes the objects of `extension` that `manifest` no longer has (after an `update`). The
/// namespace is never pruned.
pub async fn prune(
    client: &Client,
    extension: &str,
    manifest: &Manifest,
) -> anyhow::Result<RemoveOutcome> {
    // Kind, namespace (empty for cluster-scoped objects) and name of what stays.
    let mut keep: Vec<(String, String, String)> = manifest
        .objects
        .iter()
        .map(|o| {
            let text = |v: &serde_yaml::Value| v.as_str().unwrap_or_default().to_owned();
            let namespace = match kinds::of(o) {
                Some(kind) if kind.namespaced => namespace_of(o).to_owned(),
                _ => String::new(),
            };
            (text(&o["kind"]), namespace, text(&o["metadata"]["name"]))
        })
        .collect();
    if needs_cluster_secret(manifest) {
        keep.push((
            "Secret".to_owned(),
            meta::NAMESPACE.to_owned(),
            meta::CLUSTER_SECRET.to_owned(),
        ));
    }
    let mut outcome = RemoveOutcome::default();
    let mut found = labelled(client, extension).await?;
    found.reverse();
    for (kind, objects) in found {
        if kind.resource.kind == "Namespace" {
            continue;
        }
        for object in objects {
            let name = object.metadata.name.clone().unwrap_or_default();
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let key = (kind.resource.kind.clone(), namespace.clone(), name.clone());
            if keep.contains(&key) {
                continue;
            }
            let reference = reference_in(&kind.resource.kind, &namespace, &name);
            remove(client, &kind, &object, &reference, &mut outcome).await?;
        }
    }
    Ok(outcome)
}

/// `Kind/name`, with the namespace when it is not `azureml` (`Role/scoregate-router in team-a`).
fn reference_in(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() || namespace == meta::NAMESPACE {
        format!("{kind}/{name}")
    } else {
        format!("{kind}/{name} in {namespace}")
    }
}

/// Deletes everything `extension` made, in reverse apply order; namespace `azureml` only when
/// `created_namespace` and nothing foreign is left in it.
pub async fn delete_all(
    client: &Client,
    extension: &str,
    created_namespace: bool,
) -> anyhow::Result<RemoveOutcome> {
    let mut outcome = RemoveOutcome::default();
    let mut found = labelled(client, extension).await?;
    found.reverse();
    for (kind, objects) in found {
        for object in objects {
            let name = object.metadata.name.clone().unwrap_or_default();
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let reference = reference_in(&kind.resource.kind, &namespace, &name);
            if kind.resource.kind == "Namespace" {
                remove_namespace(client, &kind, created_namespace, &reference, &mut outcome)
                    .await?;
                continue;
            }
            remove(client, &kind, &object, &reference, &mut outcome).await?;
        }
    }
    Ok(outcome)
}

async fn remove(
    client: &Client,
    kind: &ManagedKind,
    object: &DynamicObject,
    reference: &str,
    outcome: &mut RemoveOutcome,
) -> anyhow::Result<()> {
    if kind.resource.kind == "CustomResourceDefinition" {
        if let Some(count) = custom_resources_in_use(client, object).await? {
            outcome.notices.push(Notice::general(format!(
                "{reference} kept: {count} of its custom resources still exist, and deleting the CRD would delete them all; delete them first (`kubectl get {} -A`), then `kubectl delete crd {}`",
                object.metadata.name.clone().unwrap_or_default(),
                object.metadata.name.clone().unwrap_or_default()
            )));
            return Ok(());
        }
    }
    let name = object.metadata.name.clone().unwrap_or_default();
    let namespace = object
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(meta::NAMESPACE);
    match api_in(client, kind, namespace)
        .delete(&name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(explain(e, "delete", reference)),
    }
    outcome.deleted.push(reference.to_owned());
    Ok(())
}

/// How many custom resources of `crd` exist, if any.
async fn custom_resources_in_use(
    client: &Client,
    crd: &DynamicObject,
) -> anyhow::Result<Option<usize>> {
    let spec = &crd.data["spec"];
    let (Some(group), Some(kind), Some(plural)) = (
        spec["group"].as_str(),
        spec["names"]["kind"].as_str(),
        spec["names"]["plural"].as_str(),
    ) else {
        return Ok(None);
    };
    let mut count = 0;
    for version in spec["versions"].as_array().into_iter().flatten() {
        let Some(version) = version["name"].as_str() else {
            continue;
        };
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        match Api::<DynamicObject>::all_with(client.clone(), &resource)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => count = count.max(list.items.len()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot list {plural}.{group} before deleting its CRD")
                })
            }
        }
    }
    Ok((count > 0).then_some(count))
}

async fn remove_namespace(
    client: &Client,
    kind: &ManagedKind,
    created_namespace: bool,
    reference: &str,
    outcome: &mut RemoveOutcome,
) -> anyhow::Result<()> {
    if !created_namespace {
        // Give back the labels the apply put on it: applying just its name drops every field
        // this field manager owned.
        let bare = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": meta::NAMESPACE}});
        api(client, kind)
            .patch(
                meta::NAMESPACE,
                &PatchParams::apply(meta::FIELD_MANAGER).force(),
                &Patch::Apply(&bare),
            )
            .await
            .map_err(|e| explain(e, "unlabel", reference))?;
        outcome.notices.push(Notice::general(format!(
            "{reference} kept: it existed before the extension was created (its scoregate labels are removed)"
        )));
        return Ok(());
    }
    let foreign = foreign_objects(client).await?;
    if !foreign.is_empty() {
        outcome.notices.push(Notice::general(format!(
            "{reference} kept: it holds objects the extension did not make ({}); delete them, then `kubectl delete namespace {}`",
            foreign.join(", "),
            meta::NAMESPACE
        )));
        return Ok(());
    }
    match api(client, kind)
        .delete(meta::NAMESPACE, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(explain(e, "delete", reference)),
    }
    outcome.deleted.push(reference.to_owned());
    Ok(())
}

/// Objects in `azureml` without the installer's label (ignoring what Kubernetes itself puts
/// there: `kube-root-ca.crt`, service account tokens, the default ServiceAccount).
async fn foreign_objects(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut foreign = Vec::new();
    for kind in kinds::managed() {
        if !kind.namespaced {
            continue;
        }
        let list = match api(client, &kind).list(&ListParams::default()).await {
            Ok(list) => list,
            Err(e) if kind.optional && is_status(&e, 404) => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot list {} in namespace azureml", kind.resource.plural)
                })
            }
        };
        for object in list.items {
            let name = object.metadata.name.clone().unwrap_or_default();
            let labels = object.metadata.labels.clone().unwrap_or_default();
            let ours = labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some(meta::MANAGED_BY);
            let system = (kind.resource.kind == "ConfigMap" && name == "kube-root-ca.crt")
                || (kind.resource.kind == "ServiceAccount" && name == "default")
                || (kind.resource.kind == "Secret"
                    && object.data["type"].as_str() == Some("kubernetes.io/service-account-token"));
            if !ours && !system {
                foreign.push(format!("{}/{name}", kind.resource.kind));
            }
        }
    }
    Ok(foreign)
}

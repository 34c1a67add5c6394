//! The operations behind the commands: render (offline or against a cluster), create, update,
//! show, list and delete. Each returns what happened; printing is the CLI's business.

use std::collections::BTreeMap;
use std::time::SystemTime;

use kube::Client;

use crate::apply::{self, ApplyOutcome, RemoveOutcome};
use crate::cluster;
use crate::impact;
use crate::names::check_dns_name;
use crate::problem::{Notice, Problems};
use crate::render::record::{ExtensionRecord, EXTENSION_TYPE};
use crate::render::{self, Manifest};
use crate::settings::{RawSettings, Settings};
use crate::status::{self, Component, ExtensionStatus, StoredExtension, WaitOptions};
use crate::validate::{
    self, ClusterFacts, KubernetesVersion, MIN_KUBERNETES_MINOR, SLEEP_ACTION_MINOR,
};

/// The router image when `--image` is not given.
pub fn default_image() -> String {
    format!("ghcr.io/scoregate/scoregate:{}", env!("CARGO_PKG_VERSION"))
}

/// The image `request` asks for, and without `--image` a notice saying what the default is.
fn image_for(request: &Request) -> (String, Vec<Notice>) {
    match &request.image {
        Some(image) => (image.clone(), Vec::new()),
        None => (
            default_image(),
            vec![Notice::general(format!(
                "no --image given: the router runs {}, the name release images are published under, \
                 which this repository does not push; if your nodes cannot pull it, build the image \
                 (deploy/image/build.sh), push it to a registry they can reach and pass --image",
                default_image()
            ))],
        ),
    }
}

/// The longest extension name: the record ConfigMap `scoregate-ext-<name>` must stay a valid
/// label value (63 characters).
pub const MAX_NAME: usize = 63 - "scoregate-ext-".len();

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Request {
    /// `--name`.
    pub name: String,
    /// `--config` words.
    pub config: Vec<String>,
    /// `--config-protected` words.
    pub protected: Vec<String>,
    /// `--image`, if given.
    pub image: Option<String>,
    /// The time certificates are checked against.
    pub now: SystemTime,
    /// `--take-over`: replace objects something else manages (Azure ML's own `azureml-fe`).
    pub take_over: bool,
    /// `--kubernetes-version`: the server version to render for when no cluster is contacted.
    pub kubernetes_version: Option<KubernetesVersion>,
}

/// Checks an extension name.
pub fn check_name(name: &str) -> Result<(), Problems> {
    let mut problems = Problems::default();
    let valid = check_dns_name(name).is_ok()
        && !name.contains('.')
        && !name.chars().any(|c| c.is_ascii_uppercase());
    if !valid || name.len() > MAX_NAME {
        problems.push(
            "--name",
            format!("`{name}` is not a usable extension name: use lowercase letters, digits and `-`, at most {MAX_NAME} characters, e.g. `scoregate`"),
        );
    }
    problems.into_result(())
}

fn record_for(name: &str, raw: &RawSettings, image: String) -> ExtensionRecord {
    ExtensionRecord {
        name: name.to_owned(),
        extension_type: EXTENSION_TYPE.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        image,
        configuration_settings: raw.config.clone(),
        configuration_protected_setting_keys: raw.protected.keys().cloned().collect(),
    }
}

/// Parses, validates against `facts` and renders: the whole pure path.
pub fn render_with_facts(
    name: &str,
    raw: &RawSettings,
    image: String,
    facts: &ClusterFacts,
    now: SystemTime,
    mut notices: Vec<Notice>,
) -> Result<Manifest, Problems> {
    check_name(name)?;
    let settings = Settings::from_raw(raw)?;
    let plan = validate::validate(&settings, facts, now)?;
    let mut manifest = render::render(&plan, &record_for(name, raw, image));
    notices.append(&mut manifest.notices);
    manifest.notices = notices;
    Ok(manifest)
}

/// Renders without a cluster (`--dry-run` with no `--kubeconfig`): cluster checks are skipped,
/// and the notices say so.
pub fn render_offline(request: &Request) -> anyhow::Result<Manifest> {
    let raw = RawSettings::parse(&request.config, &request.protected)?;
    let (image, mut notices) = image_for(request);
    if request.kubernetes_version.is_none() {
        notices.push(Notice::general(format!(
            "rendered for Kubernetes 1.{SLEEP_ACTION_MINOR} or later (no cluster contacted): for 1.{MIN_KUBERNETES_MINOR} or 1.{} pass --kubernetes-version, or --kubeconfig to check against the cluster",
            SLEEP_ACTION_MINOR - 1
        )));
    }
    let facts = ClusterFacts {
        kubernetes_version: request.kubernetes_version,
        ..ClusterFacts::default()
    };
    Ok(render_with_facts(
        &request.name,
        &raw,
        image,
        &facts,
        request.now,
        notices,
    )?)
}

async fn render_against(
    client: &Client,
    name: &str,
    raw: &RawSettings,
    image: String,
    now: SystemTime,
    mut notices: Vec<Notice>,
) -> anyhow::Result<Manifest> {
    let settings = Settings::from_raw(raw)?;
    let (facts, mut found) = cluster::gather(client, &settings).await?;
    notices.append(&mut found);
    Ok(render_with_facts(name, raw, image, &facts, now, notices)?)
}

/// What `create` did.
#[derive(Clone, Debug)]
pub struct CreateOutcome {
    /// What was rendered.
    pub manifest: Manifest,
    /// What was applied.
    pub applied: ApplyOutcome,
    /// The router once ready (when waited for).
    pub router: Option<Component>,
    /// The extension's state afterwards.
    pub status: ExtensionStatus,
}

/// Renders against the cluster without changing it (`create --dry-run --kubeconfig`).
pub async fn render_for_create(client: &Client, request: &Request) -> anyhow::Result<Manifest> {
    check_name(&request.name)?;
    let raw = RawSettings::parse(&request.config, &request.protected)?;
    let (image, notices) = image_for(request);
    render_against(client, &request.name, &raw, image, request.now, notices).await
}

/// Installs a new extension and waits for its router (unless `wait` is `None`).
pub async fn create(
    client: &Client,
    request: &Request,
    wait: Option<WaitOptions>,
) -> anyhow::Result<CreateOutcome> {
    check_name(&request.name)?;
    let existing = status::list_records(client).await?;
    if existing.iter().any(|e| e.record.name == request.name) {
        anyhow::bail!(
            "extension `{}` already exists: change it with `scoregate-ext update --name {}`, or remove it with `scoregate-ext delete --name {}`",
            request.name,
            request.name,
            request.name
        );
    }
    if let Some(other) = existing.first() {
        anyhow::bail!(
            "extension `{}` is already installed, and a cluster has one router (Service azureml/azureml-fe): update it with `scoregate-ext update --name {}`, or delete it first",
            other.record.name,
            other.record.name
        );
    }
    let mut manifest = render_for_create(client, request).await?;
    take_over_check(client, &mut manifest, &request.name, request.take_over).await?;
    let created_namespace = !apply::namespace_exists(client).await?;
    let applied = apply::apply(client, &manifest, created_namespace).await?;
    finish(client, &request.name, manifest, applied, wait).await
}

/// Refuses to change objects something else manages unless `take_over`; with it, says what is
/// replaced. Done before anything is written.
async fn take_over_check(
    client: &Client,
    manifest: &mut Manifest,
    extension: &str,
    take_over: bool,
) -> anyhow::Result<()> {
    let foreign = apply::foreign_objects_of(client, manifest, extension).await?;
    if foreign.is_empty() {
        return Ok(());
    }
    let list = foreign
        .iter()
        .map(|f| format!("{} (managed by {})", f.reference, f.manager))
        .collect::<Vec<_>>()
        .join(", ");
    if !take_over {
        anyhow::bail!(
            "these objects exist and are not managed by scoregate-ext extension `{extension}`: {list}. \
             They may be Azure ML's own router (the extension Microsoft.AzureML.Kubernetes uses the same names): \
             remove that extension first (`az k8s-extension delete`), or run again with --take-over to replace \
             them (they then belong to `{extension}`, and `scoregate-ext delete` removes them). Nothing was changed"
        );
    }
    manifest.notices.push(Notice::general(format!(
        "--take-over: replacing {list}; they now belong to extension `{extension}`, and `scoregate-ext delete` removes them"
    )));
    Ok(())
}

/// For a dry run against a cluster: what a real run would refuse, as notices.
pub async fn foreign_notices(
    client: &Client,
    manifest: &mut Manifest,
    extension: &str,
) -> anyhow::Result<()> {
    for f in apply::foreign_objects_of(client, manifest, extension).await? {
        manifest.notices.push(Notice::general(format!(
            "{} exists, managed by {}: create and update refuse to replace it without --take-over",
            f.reference, f.manager
        )));
    }
    Ok(())
}

async fn finish(
    client: &Client,
    name: &str,
    manifest: Manifest,
    applied: ApplyOutcome,
    wait: Option<WaitOptions>,
) -> anyhow::Result<CreateOutcome> {
    let router = match (wait, manifest.router_config.is_some()) {
        (Some(options), true) => Some(status::wait_for_router(client, options).await?),
        _ => None,
    };
    let stored = status::load_record(client, name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the record of extension `{name}` vanished while installing: another installer is at work?"))?;
    let status = status::assess(client, &stored).await?;
    Ok(CreateOutcome {
        manifest,
        applied,
        router,
        status,
    })
}

/// What `update` did.
#[derive(Clone, Debug)]
pub struct UpdateOutcome {
    /// The changes that affect live endpoints (az rule 10).
    pub impacts: Vec<String>,
    /// The apply, the wait and the state afterwards.
    pub result: CreateOutcome,
    /// What was pruned.
    pub pruned: RemoveOutcome,
}

/// The settings an update gives, merged over the stored ones, and what it changes.
#[derive(Clone, Debug)]
pub struct UpdatePlan {
    /// The stored extension.
    pub stored: StoredExtension,
    /// Stored `--config` with the new one over it; `--config-protected` exactly as given now.
    pub raw: RawSettings,
    /// Changes that affect live endpoints.
    pub impacts: Vec<String>,
    /// Notices about the merge (dropped protected settings).
    pub notices: Vec<Notice>,
    /// The image to use.
    pub image: String,
    /// `--take-over`.
    pub take_over: bool,
}

async fn stored_extension(client: &Client, name: &str) -> anyhow::Result<StoredExtension> {
    status::load_record(client, name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "no extension `{name}` in this cluster: `scoregate-ext list` shows the installed ones, `scoregate-ext create --name {name}` installs it"
        )
    })
}

/// Merges an update request over the stored extension (az semantics, az rule 10: `--config`
/// keys change one by one; protected settings are not stored and must be given again in full).
pub async fn plan_update(client: &Client, request: &Request) -> anyhow::Result<UpdatePlan> {
    let stored = stored_extension(client, &request.name).await?;
    let given = RawSettings::parse(&request.config, &request.protected)?;
    let mut config: BTreeMap<String, String> = stored.record.configuration_settings.clone();
    config.extend(given.config);
    let raw = RawSettings {
        config,
        protected: given.protected,
    };
    let mut notices = Vec::new();
    let dropped: Vec<&String> = stored
        .record
        .configuration_protected_setting_keys
        .iter()
        .filter(|k| !raw.protected.contains_key(*k))
        .collect();
    if !dropped.is_empty() {
        notices.push(Notice::general(format!(
            "protected settings are not stored, so an update must give them again: {} dropped (as with az); give --config-protected again to keep them",
            dropped.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let old = Settings::from_raw(&RawSettings {
        config: stored.record.configuration_settings.clone(),
        protected: BTreeMap::new(),
    })?;
    let new = Settings::from_raw(&raw)?;
    let mut impacts = impact::impacts(&old, &new);
    let had_files = ["sslCertPemFile", "sslKeyPemFile"].iter().all(|k| {
        stored
            .record
            .configuration_protected_setting_keys
            .iter()
            .any(|s| s == k)
    });
    let old_https = old.enable_inference.value && (had_files || old.ssl_secret.is_some());
    let new_https = new.enable_inference.value
        && ((new.ssl_cert_pem_file.is_some() && new.ssl_key_pem_file.is_some())
            || new.ssl_secret.is_some());
    impacts.extend(impact::https_removed(old_https, new_https));
    let image = request
        .image
        .clone()
        .unwrap_or_else(|| stored.record.image.clone());
    Ok(UpdatePlan {
        stored,
        raw,
        impacts,
        notices,
        image,
        take_over: request.take_over,
    })
}

/// Renders an update against the cluster without changing it.
pub async fn render_for_update(client: &Client, plan: &UpdatePlan) -> anyhow::Result<Manifest> {
    let name = plan.stored.record.name.clone();
    render_against(
        client,
        &name,
        &plan.raw,
        plan.image.clone(),
        SystemTime::now(),
        plan.notices.clone(),
    )
    .await
    .map_err(|e| match e.downcast::<Problems>() {
        Ok(problems) if !plan.notices.is_empty() => anyhow::anyhow!(
            "{problems}\n  ({})",
            plan.notices
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Ok(problems) => problems.into(),
        Err(e) => e,
    })
}

/// Applies an update: refuses changes that impact live endpoints unless `confirmed`, applies,
/// prunes what the new settings no longer render, and waits for the router.
pub async fn update(
    client: &Client,
    plan: &UpdatePlan,
    confirmed: bool,
    wait: Option<WaitOptions>,
) -> anyhow::Result<UpdateOutcome> {
    // Settings that cannot be installed are reported before asking for confirmation.
    let mut manifest = render_for_update(client, plan).await?;
    if !plan.impacts.is_empty() && !confirmed {
        anyhow::bail!(
            "these changes will IMPACT your active online endpoints and deployments:\n  - {}\nrun again with --yes to proceed",
            plan.impacts.join("\n  - ")
        );
    }
    take_over_check(
        client,
        &mut manifest,
        &plan.stored.record.name,
        plan.take_over,
    )
    .await?;
    let applied = apply::apply(client, &manifest, plan.stored.created_namespace).await?;
    let pruned = apply::prune(client, &plan.stored.record.name, &manifest).await?;
    let result = finish(client, &plan.stored.record.name, manifest, applied, wait).await?;
    Ok(UpdateOutcome {
        impacts: plan.impacts.clone(),
        result,
        pruned,
    })
}

/// The state of extension `name`.
pub async fn show(client: &Client, name: &str) -> anyhow::Result<ExtensionStatus> {
    let stored = stored_extension(client, name).await?;
    status::assess(client, &stored).await
}

/// The state of every installed extension.
pub async fn list(client: &Client) -> anyhow::Result<Vec<ExtensionStatus>> {
    let mut out = Vec::new();
    for stored in status::list_records(client).await? {
        out.push(status::assess(client, &stored).await?);
    }
    Ok(out)
}

/// Removes everything extension `name` made.
pub async fn delete(client: &Client, name: &str) -> anyhow::Result<RemoveOutcome> {
    let stored = stored_extension(client, name).await?;
    apply::delete_all(client, &stored.record.name, stored.created_namespace).await
}

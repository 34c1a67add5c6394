//! The command line, shaped like `az k8s-extension`: `create`, `update`, `show`, `list`,
//! `delete`, with `--config key=value …` and `--config-protected key=value …`.
//!
//! [`run`] writes results to `out` and notices to `err`, so tests drive it like the binary.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;
use serde::Serialize;

use crate::dryrun::{self, ClusterSecret};
use crate::ops::{self, Request};
use crate::problem::Notice;
use crate::render::Manifest;
use crate::status::{ComponentState, ExtensionStatus, WaitOptions};
use crate::validate::KubernetesVersion;
use crate::{apply, cluster};

/// scoregate-ext: install scoregate from Azure ML extension settings
/// (`az k8s-extension create --config …` keys).
#[derive(Debug, Parser)]
#[command(name = "scoregate-ext", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the settings, render the manifests and install them (or print them with --dry-run).
    Create(CreateArgs),
    /// Change settings of an installed extension (protected settings must be given again).
    Update(UpdateArgs),
    /// Show an extension's settings, provisioningState and component readiness.
    Show(ShowArgs),
    /// List installed extensions.
    List(ListArgs),
    /// Remove everything an extension installed.
    Delete(DeleteArgs),
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// JSON (az's default).
    Json,
    /// YAML.
    Yaml,
    /// A table, like `kubectl get deployments -n azureml`.
    Table,
}

/// `--config` and `--config-protected`.
#[derive(Clone, Debug, Default, Args)]
pub struct SettingsArgs {
    /// Settings, e.g. `--config enableInference=True inferenceRouterServiceType=loadBalancer`.
    #[arg(long = "config", visible_alias = "configuration-settings", num_args = 1.., value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Protected settings (read, never stored), e.g. `--config-protected sslCertPemFile=cert.pem sslKeyPemFile=key.pem`.
    #[arg(long = "config-protected", visible_alias = "configuration-protected-settings", num_args = 1.., value_name = "KEY=VALUE")]
    pub protected: Vec<String>,
}

/// Which cluster.
#[derive(Clone, Debug, Default, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// How long and how often to wait for the router.
#[derive(Clone, Debug, Args)]
pub struct WaitArgs {
    /// Return once applied, without waiting for the router to be ready.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the router Deployment to be available, e.g. `10m`, `90s`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often to look while waiting.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, hide = true)]
    pub poll_interval: Duration,
}

impl WaitArgs {
    fn options(&self) -> Option<WaitOptions> {
        (!self.no_wait).then_some(WaitOptions {
            timeout: self.timeout,
            poll: self.poll_interval,
        })
    }
}

/// `create`.
#[derive(Clone, Debug, Args)]
pub struct CreateArgs {
    /// The extension's name.
    #[arg(long, short = 'n')]
    pub name: String,
    /// The settings.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Print the manifests instead of applying them (checks the cluster only with --kubeconfig).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format (default: yaml with --dry-run, else json).
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Output>,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The router image.
    #[arg(long)]
    pub image: Option<String>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Extension scope: only `cluster` (as in az, az rule 1).
    #[arg(long, default_value = "cluster")]
    pub scope: String,
    /// Safety and dry-run output.
    #[command(flatten)]
    pub safety: SafetyArgs,
}

/// Taking over foreign objects, and what a dry run prints.
#[derive(Clone, Debug, Default, Args)]
pub struct SafetyArgs {
    /// Replace objects that exist and are managed by something else (Azure ML's own router);
    /// without it the installer refuses and names them.
    #[arg(long)]
    pub take_over: bool,
    /// With --dry-run: print private keys and credentials instead of redacting them (needed to
    /// apply the output as it stands).
    #[arg(long)]
    pub show_secrets: bool,
    /// With --dry-run and no cluster: the Kubernetes version to render for (e.g. 1.29); with a
    /// cluster, its own version is used.
    #[arg(long, value_parser = parse_kubernetes_version)]
    pub kubernetes_version: Option<KubernetesVersion>,
}

fn parse_kubernetes_version(text: &str) -> Result<KubernetesVersion, String> {
    KubernetesVersion::parse(text)
        .ok_or_else(|| format!("`{text}` is not a Kubernetes version: write e.g. 1.29"))
}

/// `update`.
#[derive(Clone, Debug, Args)]
pub struct UpdateArgs {
    /// The extension's name.
    #[arg(long, short = 'n')]
    pub name: String,
    /// Settings to change; protected settings must all be given again.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Print the manifests instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format (default: yaml with --dry-run, else json).
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Output>,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The router image (default: the one installed).
    #[arg(long)]
    pub image: Option<String>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Proceed with changes that impact live endpoints.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Safety and dry-run output.
    #[command(flatten)]
    pub safety: SafetyArgs,
}

/// `show`.
#[derive(Clone, Debug, Args)]
pub struct ShowArgs {
    /// The extension's name.
    #[arg(long, short = 'n')]
    pub name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "json")]
    pub output: Output,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `list`.
#[derive(Clone, Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "json")]
    pub output: Output,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `delete`.
#[derive(Clone, Debug, Args)]
pub struct DeleteArgs {
    /// The extension's name.
    #[arg(long, short = 'n')]
    pub name: String,
    /// Confirm: deleting removes the router, so endpoints stop answering.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs one command; results go to `out`, notices to `err`.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Create(args) => create(args, out, err).await,
        Command::Update(args) => update(args, out, err).await,
        Command::Show(args) => {
            let client = cluster::connect(args.cluster.kubeconfig.as_deref()).await?;
            let status = ops::show(&client, &args.name).await?;
            print_statuses(out, &[status], args.output, false)
        }
        Command::List(args) => {
            let client = cluster::connect(args.cluster.kubeconfig.as_deref()).await?;
            let statuses = ops::list(&client).await?;
            print_statuses(out, &statuses, args.output, true)
        }
        Command::Delete(args) => delete(args, out, err).await,
    }
}

fn request(
    name: &str,
    settings: &SettingsArgs,
    image: &Option<String>,
    safety: &SafetyArgs,
) -> Request {
    Request {
        name: name.to_owned(),
        config: settings.config.clone(),
        protected: settings.protected.clone(),
        image: image.clone(),
        now: SystemTime::now(),
        take_over: safety.take_over,
        kubernetes_version: safety.kubernetes_version,
    }
}

/// The credential a dry run's manifest needs: there already, or to be made.
async fn cluster_secret_state(client: Option<&Client>) -> anyhow::Result<ClusterSecret> {
    Ok(match client {
        Some(client) if apply::cluster_secret_exists(client).await? => ClusterSecret::Present,
        _ => ClusterSecret::Missing,
    })
}

async fn create(args: CreateArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    if args.scope != "cluster" {
        anyhow::bail!(
            "--scope {}: the extension is cluster-scoped (as in az, which rejects namespace scope): use --scope cluster or leave it out",
            args.scope
        );
    }
    let request = request(&args.name, &args.settings, &args.image, &args.safety);
    if args.dry_run {
        let (mut manifest, client) = match &args.cluster.kubeconfig {
            Some(path) => {
                let client = cluster::connect(Some(path)).await?;
                let mut manifest = ops::render_for_create(&client, &request).await?;
                ops::foreign_notices(&client, &mut manifest, &args.name).await?;
                (manifest, Some(client))
            }
            None => (ops::render_offline(&request)?, None),
        };
        let secret = cluster_secret_state(client.as_ref()).await?;
        dryrun::finish(&mut manifest, &args.name, secret, args.safety.show_secrets)?;
        return print_manifest(out, err, &manifest, args.output);
    }
    let client = connect(&args.cluster).await?;
    let outcome = ops::create(&client, &request, args.wait.options()).await?;
    print_notices(err, &outcome.manifest.notices)?;
    print_notices(err, &outcome.applied.notices)?;
    print_statuses(
        out,
        &[outcome.status],
        args.output.unwrap_or(Output::Json),
        false,
    )
}

async fn update(args: UpdateArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    let request = request(&args.name, &args.settings, &args.image, &args.safety);
    let client = connect(&args.cluster).await?;
    let plan = ops::plan_update(&client, &request).await?;
    if args.dry_run {
        let mut manifest = ops::render_for_update(&client, &plan).await?;
        manifest.notices.extend(plan.impacts.iter().map(|i| {
            Notice::general(format!(
                "{i}: will IMPACT your active online endpoints and deployments"
            ))
        }));
        ops::foreign_notices(&client, &mut manifest, &args.name).await?;
        let secret = cluster_secret_state(Some(&client)).await?;
        dryrun::finish(&mut manifest, &args.name, secret, args.safety.show_secrets)?;
        return print_manifest(out, err, &manifest, args.output);
    }
    let outcome = ops::update(&client, &plan, args.yes, args.wait.options()).await?;
    for impact in &outcome.impacts {
        writeln!(
            err,
            "warning: {impact}: impacts active online endpoints and deployments"
        )?;
    }
    print_notices(err, &outcome.result.manifest.notices)?;
    print_notices(err, &outcome.result.applied.notices)?;
    for deleted in &outcome.pruned.deleted {
        writeln!(err, "removed {deleted} (no longer part of the settings)")?;
    }
    print_notices(err, &outcome.pruned.notices)?;
    print_statuses(
        out,
        &[outcome.result.status],
        args.output.unwrap_or(Output::Json),
        false,
    )
}

async fn delete(args: DeleteArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    if !args.yes {
        anyhow::bail!(
            "deleting extension `{}` removes its router, so every online endpoint stops answering: run again with --yes",
            args.name
        );
    }
    let client = connect(&args.cluster).await?;
    let outcome = ops::delete(&client, &args.name).await?;
    for deleted in &outcome.deleted {
        writeln!(out, "deleted {deleted}")?;
    }
    print_notices(err, &outcome.notices)
}

async fn connect(cluster: &ClusterArgs) -> anyhow::Result<Client> {
    cluster::connect(cluster.kubeconfig.as_deref()).await
}

fn print_notices(err: &mut dyn Write, notices: &[Notice]) -> anyhow::Result<()> {
    for notice in notices {
        writeln!(err, "note: {notice}")?;
    }
    Ok(())
}

fn print_manifest(
    out: &mut dyn Write,
    err: &mut dyn Write,
    manifest: &Manifest,
    output: Option<Output>,
) -> anyhow::Result<()> {
    match output.unwrap_or(Output::Yaml) {
        Output::Yaml => write!(out, "{}", manifest.to_yaml())?,
        Output::Json => {
            print_notices(err, &manifest.notices)?;
            writeln!(out, "{}", manifest.to_json())?;
        }
        Output::Table => anyhow::bail!(
            "-o table shows installed extensions; a dry run prints -o yaml or -o json"
        ),
    }
    Ok(())
}

fn serialize<T: Serialize>(value: &T, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Yaml => serde_yaml::to_string(value).context("cannot print YAML")?,
        _ => serde_json::to_string_pretty(value).context("cannot print JSON")? + "\n",
    })
}

fn print_statuses(
    out: &mut dyn Write,
    statuses: &[ExtensionStatus],
    output: Output,
    as_list: bool,
) -> anyhow::Result<()> {
    match (output, as_list, statuses) {
        (Output::Table, _, _) => {
            for status in statuses {
                write!(out, "{}", table(status))?;
            }
        }
        (_, false, [one]) => write!(out, "{}", serialize(one, output)?)?,
        _ => write!(out, "{}", serialize(&statuses, output)?)?,
    }
    Ok(())
}

/// `kubectl get`-style lines for one extension.
pub fn table(status: &ExtensionStatus) -> String {
    let mut rows = vec![[
        "KIND".to_owned(),
        "NAME".to_owned(),
        "READY".to_owned(),
        "STATE".to_owned(),
    ]];
    for c in &status.components {
        rows.push([
            c.kind.clone(),
            c.name.clone(),
            c.ready.clone(),
            format!("{:?}", c.state),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut text = format!(
        "extension {} ({}): provisioningState {:?}\n",
        status.name, status.extension_type, status.provisioning_state
    );
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(line.join("   ").trim_end());
        text.push('\n');
    }
    for c in status
        .components
        .iter()
        .filter(|c| c.state != ComponentState::Ready)
    {
        if let Some(message) = &c.message {
            text.push_str(&format!("{} {}: {message}\n", c.kind, c.name));
        }
    }
    text
}

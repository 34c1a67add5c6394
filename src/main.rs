//! The `scoregate` command: parse, build, run. No logic lives here.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use scoregate::config::{
    ConfigError, KubeDiscoveryConfig, RouterConfig, SecretRef, TlsConfig, TlsSource,
};
use scoregate::demo::{Demo, DemoOptions};
use scoregate::discovery::file::load_routes;
use scoregate::router::{ListenError, Router, Stopped};
use scoregate::telemetry::{init_logging, AccessLogMode, LogFormat};

/// jemalloc, with its background thread returning freed pages to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// scoregate: an inference router for Azure ML style online endpoints.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve scoring traffic.
    Serve(ServeArgs),
    /// Run a router with sample model servers and print a working curl.
    Demo(DemoArgs),
    /// Check a configuration and routes file without serving.
    Check(ServeArgs),
    /// Print the routing table a routes file makes.
    Routes {
        /// The routes file.
        #[arg(long)]
        routes: PathBuf,
    },
    /// Print the CustomResourceDefinitions of OnlineEndpoint and OnlineDeployment (YAML).
    Crds {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Wait, then exit: a container's `preStop` hook on Kubernetes older than 1.30, which has no
    /// `sleep` action (the image has no shell and no `sleep` binary).
    Sleep {
        /// How long, e.g. `5s`, `500ms`.
        #[arg(value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Mint a token for an endpoint in `aml_token` mode, as `az ml online-endpoint get-credentials` shows it.
    Token {
        /// The routes file that declares the endpoint.
        #[arg(long)]
        routes: PathBuf,
        /// The endpoint.
        #[arg(long)]
        endpoint: String,
        /// Lifetime, e.g. `1h`, `30m`, `24h`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Router configuration file (YAML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Routes file (YAML), reloaded on change.
    #[arg(long)]
    routes: Option<PathBuf>,
    /// Plain-HTTP listen address (needs --allow-insecure-connections).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTPS listen address.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Admin listen address (/healthz, /readyz, /metrics).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, unencrypted).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP too.
    #[arg(long)]
    allow_insecure_connections: bool,
    /// Worker threads (0 = one per CPU; 1 = single-threaded).
    #[arg(long)]
    workers: Option<usize>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Access log: on, off or errors.
    #[arg(long, value_enum)]
    access_log: Option<AccessLogMode>,
    /// Log one in N successful requests.
    #[arg(long)]
    access_log_sample: Option<u32>,
    /// Also route `Host: {endpoint}.{domain}`.
    #[arg(long)]
    host_domain: Option<String>,
    /// Route source: `file` (needs --routes) or `kube` (watches the Kubernetes API).
    #[arg(long, value_enum)]
    discovery: Option<DiscoverySource>,
    /// With --discovery kube: a namespace to watch (repeatable; none means all).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// With --discovery kube: a kubeconfig file (default: KUBECONFIG or ~/.kube/config, else the
    /// in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// TLS certificate from a Kubernetes Secret with keys tls.crt and tls.key (kubernetes.io/tls,
    /// as cert-manager writes) or cert.pem and key.pem (Azure ML's sslSecret; tls.* wins when
    /// both are there): `name` (namespace azureml) or `namespace/name`; needs --discovery kube.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    ssl_secret: Option<String>,
    /// Lowest TLS version offered: 1.2 or 1.3.
    #[arg(long)]
    tls_min_version: Option<String>,
    /// Expected TLS server name (Azure ML's sslCname); other names are logged, not refused.
    #[arg(long)]
    ssl_cname: Option<String>,
    /// TLS session resumption: true or false.
    #[arg(long)]
    tls_session_resumption: Option<bool>,
    /// Export one span per request to this OTLP/HTTP collector URL
    /// (e.g. http://localhost:4318/v1/traces); off by default.
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DiscoverySource {
    File,
    Kube,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<RouterConfig> {
        let c = self.merged()?;
        c.validate()?;
        Ok(c)
    }

    /// Defaults, then the file, then the flags, not yet validated.
    fn merged(&self) -> anyhow::Result<RouterConfig> {
        let mut c = match &self.config {
            Some(path) => RouterConfig::from_file(path)?,
            None => RouterConfig::default(),
        };
        if let Some(routes) = &self.routes {
            c.discovery.routes_file = Some(routes.clone());
        }
        if let Some(a) = self.listen {
            c.listen.http = a;
        }
        if let Some(a) = self.tls_listen {
            c.listen.https = a;
        }
        if let Some(a) = self.admin_listen {
            c.listen.admin = a;
        }
        self.merge_certificate(&mut c)?;
        if self.allow_insecure_connections {
            c.allow_insecure_connections = true;
        }
        if let Some(w) = self.workers {
            c.workers = w;
        }
        if let Some(f) = self.log_format {
            c.log.format = f;
        }
        if let Some(m) = self.access_log {
            c.log.access_log = m;
        }
        if let Some(n) = self.access_log_sample {
            c.log.access_log_sample = n;
        }
        if let Some(d) = &self.host_domain {
            c.routing.host_domain = Some(d.clone());
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            c.tracing.otlp_endpoint = Some(endpoint.clone());
        }
        self.merge_discovery(&mut c);
        self.merge_tls_options(&mut c)?;
        Ok(c)
    }

    /// `--tls-cert` and `--tls-key`, or `--ssl-secret`: the certificate's source, replacing the
    /// file's.
    fn merge_certificate(&self, c: &mut RouterConfig) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let mut tls = c
                .tls
                .take()
                .unwrap_or_else(|| TlsConfig::from_files(cert.clone(), key.clone()));
            tls.cert_file = Some(cert.clone());
            tls.key_file = Some(key.clone());
            tls.secret = None;
            c.tls = Some(tls);
        }
        if let Some(secret) = &self.ssl_secret {
            let secret = SecretRef::parse(secret)?;
            let mut tls = c
                .tls
                .take()
                .unwrap_or_else(|| TlsConfig::from_secret(secret.clone()));
            tls.cert_file = None;
            tls.key_file = None;
            tls.secret = Some(secret);
            c.tls = Some(tls);
        }
        Ok(())
    }

    /// `--discovery`, `--namespace`, `--kubeconfig`.
    fn merge_discovery(&self, c: &mut RouterConfig) {
        if self.discovery == Some(DiscoverySource::Kube)
            || !self.namespaces.is_empty()
            || self.kubeconfig.is_some()
        {
            let kube = c
                .discovery
                .kube
                .get_or_insert_with(KubeDiscoveryConfig::default);
            if !self.namespaces.is_empty() {
                kube.namespaces = self.namespaces.clone();
            }
            if let Some(path) = &self.kubeconfig {
                kube.kubeconfig = Some(path.clone());
            }
            if self.routes.is_none() {
                c.discovery.routes_file = None;
            }
        }
        if self.discovery == Some(DiscoverySource::File) {
            c.discovery.kube = None;
        }
    }

    /// `--tls-min-version`, `--ssl-cname`, `--tls-session-resumption`: only with TLS.
    fn merge_tls_options(&self, c: &mut RouterConfig) -> anyhow::Result<()> {
        let Some(tls) = c.tls.as_mut() else {
            if self.tls_min_version.is_some()
                || self.ssl_cname.is_some()
                || self.tls_session_resumption.is_some()
            {
                anyhow::bail!("--tls-min-version, --ssl-cname and --tls-session-resumption need TLS: add --tls-cert and --tls-key, or --ssl-secret");
            }
            return Ok(());
        };
        if let Some(v) = &self.tls_min_version {
            tls.min_version = v
                .parse()
                .map_err(|e| ConfigError::field("tls.min_version", e))?;
        }
        if let Some(name) = &self.ssl_cname {
            tls.server_name = Some(name.clone());
        }
        if let Some(on) = self.tls_session_resumption {
            tls.session_resumption = on;
        }
        Ok(())
    }
}

#[derive(Args)]
struct DemoArgs {
    /// Scoring port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Admin port on 127.0.0.1.
    #[arg(long, default_value_t = 9091)]
    admin_port: u16,
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoregate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider; kube's client and ours share it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => check(&args),
        Command::Routes { routes } => print_routes(&routes),
        Command::Token {
            routes,
            endpoint,
            ttl,
        } => print_token(&routes, &endpoint, ttl),
        Command::Crds { write } => crds(write),
        Command::Sleep { duration } => {
            std::thread::sleep(duration);
            Ok(())
        }
        Command::Demo(args) => demo(&args),
    }
}

/// `scoregate serve`.
fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let logs = init_logging(config.log.format);
    let runtime = runtime(config.workers)?;
    let stopped = runtime.block_on(async {
        let router = Router::start(config)
            .await
            .map_err(|e| with_serve_flag(e, args))?;
        router.run_until_signal().await
    })?;
    exit_now_if_forced(stopped, logs);
    Ok(())
}

/// A second signal during the shutdown: flush the log and exit at once, without waiting for
/// what is still running (open requests, blocking tasks).
fn exit_now_if_forced(stopped: Stopped, logs: tracing_appender::non_blocking::WorkerGuard) {
    if stopped == Stopped::Forced {
        drop(logs);
        std::process::exit(130);
    }
}

/// Names the `serve` flag that sets a listener that could not be bound.
fn with_serve_flag(error: anyhow::Error, args: &ServeArgs) -> anyhow::Error {
    let Some(listen) = error.downcast_ref::<ListenError>() else {
        return error;
    };
    let flag = match listen.setting {
        "listen.http" => "--listen",
        "listen.https" => "--tls-listen",
        _ => "--admin-listen",
    };
    let source = if args.config.is_some() {
        format!("{flag} or `{}` in the configuration file", listen.setting)
    } else {
        flag.to_string()
    };
    anyhow::anyhow!("{listen} (with {source})")
}

/// `scoregate check`: what `serve` checks before it serves, without serving: the settings, the
/// routes file, the certificate files, and that there is a listener to serve on. It fails where
/// `serve` would refuse to start, and prints what it found good on the way.
fn check(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.merged()?;
    config.validate_settings()?;
    check_routes(&config)?;
    check_certificate(&config)?;
    config.validate_listeners()?;
    println!("configuration: ok");
    Ok(())
}

/// The routes file `serve` would load, or where routes come from.
fn check_routes(config: &RouterConfig) -> anyhow::Result<()> {
    if let Some(kube) = &config.discovery.kube {
        let scope = if kube.namespaces.is_empty() {
            "all namespaces".to_string()
        } else {
            kube.namespaces.join(", ")
        };
        println!("routes: from Kubernetes ({scope}), read when the router starts");
        return Ok(());
    }
    let path = config
        .discovery
        .routes_file
        .as_ref()
        .context("no routes file")?;
    let spec = load_routes(path)?;
    println!(
        "{}: ok ({} endpoints, {} deployments)",
        path.display(),
        spec.endpoints.len(),
        spec.deployments.len()
    );
    Ok(())
}

/// The certificate `serve` would load: files are read and checked (chain, key, that they
/// match); a Secret is read through the Kubernetes API when the router starts.
fn check_certificate(config: &RouterConfig) -> anyhow::Result<()> {
    let Some(tls) = &config.tls else {
        return Ok(());
    };
    match tls.source()? {
        TlsSource::Secret(secret) => println!(
            "certificate: from Secret {}/{}, read when the router starts",
            secret.namespace, secret.name
        ),
        TlsSource::Files {
            cert_file,
            key_file,
        } => {
            let (cert, key) = scoregate::tls::read_pair(&cert_file, &key_file)?;
            let origin = scoregate::tls::files_origin(&cert_file, &key_file);
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            let (_, info) = scoregate::tls::load_pair(&cert, &key, &origin, &provider)?;
            let now = SystemTime::now();
            let expiry = if info.expired(now) {
                format!("EXPIRED {} days ago", -info.days_left(now))
            } else {
                format!("expires in {} days", info.days_left(now))
            };
            println!(
                "certificate: ok ({}, names {}, {expiry})",
                info.subject,
                info.names.join(", ")
            );
        }
    }
    Ok(())
}

/// `scoregate routes`.
fn print_routes(routes: &Path) -> anyhow::Result<()> {
    let spec = load_routes(routes)?;
    for endpoint in spec.endpoints.values() {
        println!(
            "endpoint {} (auth {}) traffic {:?} mirror {:?}",
            endpoint.name,
            endpoint.auth_mode.as_str(),
            endpoint.traffic,
            endpoint.mirror_traffic
        );
        for d in spec.deployments_of(&endpoint.name) {
            let s = d.settings;
            println!(
                "  deployment {}: timeout {} ms, {} per pod, queue wait {} ms",
                d.name,
                s.request_timeout_ms,
                s.max_concurrent_requests_per_instance,
                s.max_queue_wait_ms
            );
            for pod in &d.pods {
                let state = match (pod.ready, pod.terminating) {
                    (_, true) => "terminating",
                    (true, false) => "ready",
                    (false, false) => "not ready",
                };
                println!("    pod {} {state}", pod.address);
            }
        }
    }
    Ok(())
}

/// `scoregate token`.
fn print_token(routes: &Path, endpoint: &str, ttl: Duration) -> anyhow::Result<()> {
    let spec = load_routes(routes)?;
    let e = spec.endpoints.get(endpoint).with_context(|| {
        format!(
            "{}: no endpoint `{endpoint}` (it declares: {:?})",
            routes.display(),
            spec.endpoints.keys().collect::<Vec<_>>()
        )
    })?;
    if e.auth_mode != scoregate::model::AuthMode::AmlToken {
        anyhow::bail!(
            "endpoint `{endpoint}` uses auth_mode `{}`: tokens work only with `auth_mode: aml_token`; clients of a key endpoint send its key",
            e.auth_mode.as_str()
        );
    }
    let token = scoregate::auth::issue_token(endpoint, &e.keys, ttl, SystemTime::now())?;
    println!("{}", serde_json::to_string_pretty(&token)?);
    Ok(())
}

/// `scoregate crds`.
fn crds(write: Option<PathBuf>) -> anyhow::Result<()> {
    match write {
        None => print!("{}", scoregate::crd::crd_yaml()),
        Some(dir) => {
            for (name, yaml) in scoregate::crd::crd_files() {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// `scoregate demo`.
fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let logs = init_logging(LogFormat::Text);
    let runtime = runtime(0)?;
    let stopped = runtime.block_on(async {
        let demo = Demo::start(&DemoOptions {
            port: args.port,
            admin_port: args.admin_port,
        })
        .await?;
        println!("{}", demo.instructions());
        demo.router.run_until_signal().await
    })?;
    exit_now_if_forced(stopped, logs);
    Ok(())
}

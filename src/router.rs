//! One router instance: binds its listeners, loads its first routing table, serves, and shuts
//! down gracefully. `scoregate serve`, `scoregate demo` and the integration tests all start
//! routers through [`Router::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::admission::Admitter;
use crate::autoscale::{Ownership, SingleReplica};
use crate::cluster::{self, Cluster};
use crate::conditions;
use crate::config::{RouterConfig, TlsConfig, TlsSource};
use crate::discovery::{file, kube as kube_discovery, Publisher};
use crate::proxy::{Proxy, ProxySettings};
use crate::server::{self, ConnectionSettings, Lifecycle, Transport};
use crate::table::{Readiness, TableHandle};
use crate::telemetry::{names, AccessLog, Metrics};
use crate::tls::CertStore;
use crate::trace::export::Exporter;
use crate::upstream::Upstream;

/// How often the histograms' raw samples are folded into their buckets (see `keep_up`).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Expired idle pod connections are closed every this many upkeeps (every 5 s).
const SWEEPS_EVERY: u64 = 5;

/// A started router.
pub struct Router {
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    cert_store: Option<Arc<CertStore>>,
    admin_addr: SocketAddr,
    lifecycle: Lifecycle,
    config: RouterConfig,
    table: TableHandle,
    metrics: Metrics,
    readiness: Readiness,
    cluster: Option<Arc<Cluster>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Router {
    /// Validates `config`, binds every listener, loads the routes and starts serving.
    /// Fails, saying what to fix, when a listener cannot be bound or the first table is invalid.
    pub async fn start(config: RouterConfig) -> anyhow::Result<Router> {
        config.validate()?;
        let mut startup = Startup::new(&config).await?;
        startup.load_routes_file()?;
        let cluster = startup.start_cluster()?;
        let upstream = Upstream::new(
            Duration::from_millis(config.upstream.connect_timeout_ms),
            Duration::from_millis(config.upstream.idle_timeout_ms),
            config.upstream.response_buffer_bytes,
        );
        let proxy = startup.proxy(cluster.as_ref(), upstream.clone());
        let admin_listener = bind(config.listen.admin, "listen.admin")?;
        let admin_addr = admin_listener.local_addr()?;
        let http_addr = startup.serve_http(&proxy)?;
        let (https_addr, cert_store) = startup.serve_https(&proxy).await?.unzip();
        startup.watch_kube_routes(cluster.as_ref());
        startup.start_autoscaler(cluster.as_ref());
        startup.serve_admin(admin_listener, cluster.as_ref());
        startup.keep_up(upstream);
        log_serving(&config, http_addr, https_addr, admin_addr);
        let Startup {
            metrics,
            table,
            readiness,
            lifecycle,
            tasks,
            ..
        } = startup;
        Ok(Router {
            http_addr,
            https_addr,
            cert_store,
            admin_addr,
            lifecycle,
            config,
            table,
            metrics,
            readiness,
            cluster,
            background: tasks.disarm(),
        })
    }

    /// This replica's part of the cluster, with coordinated admission.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The plain-HTTP address, when plain HTTP is allowed.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The HTTPS address, when TLS is configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The certificate store, when TLS is configured.
    pub fn cert_store(&self) -> Option<&Arc<CertStore>> {
        self.cert_store.as_ref()
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The published routing table.
    pub fn table(&self) -> &TableHandle {
        &self.table
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the router is ready for traffic: a routing table is loaded, it is not shutting
    /// down, and it is not isolated from its cluster.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_loaded()
            && !self.lifecycle.shutting_down.is_cancelled()
            && self
                .cluster
                .as_ref()
                .is_none_or(|c| c.not_ready_reason().is_none())
    }

    /// Waits for SIGTERM or SIGINT, then shuts down gracefully; a second signal during the
    /// shutdown stops waiting for open requests ([`Stopped::Forced`]: the caller exits at once).
    pub async fn run_until_signal(self) -> anyhow::Result<Stopped> {
        let mut signals = Signals::new()?;
        signals.next().await;
        tracing::info!(
            drain_delay_ms = self.config.shutdown.drain_delay_ms,
            grace_period_ms = self.config.shutdown.grace_period_ms,
            "shutdown signal received; a second signal stops at once"
        );
        tokio::select! {
            () = self.shutdown() => Ok(Stopped::Gracefully),
            () = signals.next() => {
                tracing::warn!("second signal: stopping now, without waiting for open requests");
                Ok(Stopped::Forced)
            }
        }
    }

    /// The graceful sequence: readiness fails at once; listeners keep accepting for the drain
    /// delay; then accepting stops and open connections finish within the grace period.
    pub async fn shutdown(self) {
        let shutdown = &self.config.shutdown;
        self.lifecycle.shutting_down.cancel();
        tokio::time::sleep(Duration::from_millis(shutdown.drain_delay_ms)).await;
        self.lifecycle.stop_accepting.cancel();
        self.lifecycle.drain.cancel();
        self.lifecycle.connections.close();
        let grace = Duration::from_millis(shutdown.grace_period_ms);
        if tokio::time::timeout(grace, self.lifecycle.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.lifecycle.connections.len(),
                "grace period over; closing the remaining connections"
            );
        }
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
        for task in self.background {
            task.abort();
        }
        tracing::info!("scoregate stopped");
    }
}

/// Background tasks of a router being started: aborted if start fails, kept once it succeeds.
#[derive(Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    fn push(&mut self, task: tokio::task::JoinHandle<()>) {
        self.0.push(task);
    }

    fn disarm(mut self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A router being started, step by step (the composition root: every layer meets here).
struct Startup<'c> {
    config: &'c RouterConfig,
    metrics: Metrics,
    table: TableHandle,
    readiness: Readiness,
    lifecycle: Lifecycle,
    kube_client: Option<kube::Client>,
    settings: Arc<ConnectionSettings>,
    tasks: Tasks,
}

impl<'c> Startup<'c> {
    async fn new(config: &'c RouterConfig) -> anyhow::Result<Startup<'c>> {
        let kube_client = match &config.discovery.kube {
            Some(kube) => Some(crate::k8s::client(kube.kubeconfig.as_deref()).await?),
            None => None,
        };
        let metrics = Metrics::new();
        let settings = Arc::new(ConnectionSettings::new(&config.limits, &metrics));
        Ok(Startup {
            config,
            metrics,
            table: TableHandle::default(),
            readiness: Readiness::default(),
            lifecycle: Lifecycle::default(),
            kube_client,
            settings,
            tasks: Tasks::default(),
        })
    }

    fn publisher(&self, source: &'static str) -> Publisher {
        Publisher::new(
            source,
            self.table.clone(),
            &self.metrics,
            self.readiness.clone(),
        )
    }

    /// Without Kubernetes discovery: the first table from the routes file (refusing to start on
    /// a bad one), then the file's watch.
    fn load_routes_file(&mut self) -> anyhow::Result<()> {
        if self.kube_client.is_some() {
            return Ok(());
        }
        let routes_path = self
            .config
            .discovery
            .routes_file
            .clone()
            .context("no route source configured")?;
        let mut publisher = self.publisher("file");
        let spec = file::load_routes(&routes_path)?;
        if let Err(errors) = publisher.apply(&spec) {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::bail!("{}: {}", routes_path.display(), text.join("; "));
        }
        let watch = file::watch(routes_path.clone(), publisher)
            .with_context(|| format!("cannot watch {} for changes", routes_path.display()))?;
        self.tasks.push(watch);
        Ok(())
    }

    /// With a `cluster` section: the internal port, the view, and the peers (a static list, or
    /// the router's Service in Kubernetes).
    fn start_cluster(&mut self) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(settings) = &self.config.cluster else {
            return Ok(None);
        };
        let listener = server::bind(settings.listen).with_context(|| {
            format!(
                "cannot listen on {} (cluster.listen): is another process using it? pick another port",
                settings.listen
            )
        })?;
        let cluster = Cluster::new(
            settings,
            listener.local_addr()?,
            self.table.clone(),
            self.readiness.clone(),
            self.lifecycle.shutting_down.clone(),
            &self.metrics,
        )?;
        self.tasks.push(tokio::spawn(cluster::server::serve(
            listener,
            cluster.clone(),
        )));
        self.tasks.push(cluster.start());
        match &settings.peer_service {
            Some(service) => {
                let client = self.kube_client.as_ref().context(
                    "cluster.peer_service needs Kubernetes discovery: set discovery.kube",
                )?;
                self.tasks.push(cluster::kube_peers::watch(
                    client.clone(),
                    service,
                    cluster.port(),
                    cluster.clone(),
                ));
            }
            None => cluster.set_peers(&settings.peers),
        }
        tracing::info!(me = %cluster.me(), "coordinated admission is on");
        Ok(Some(cluster))
    }

    /// The request handler: admitting through the cluster when there is one.
    fn proxy(&self, cluster: Option<&Arc<Cluster>>, upstream: Upstream) -> Arc<Proxy> {
        let config = self.config;
        let admitter = match cluster {
            Some(cluster) => Admitter::Coordinated(cluster.clone()),
            None => Admitter::Local,
        };
        let settings = ProxySettings {
            max_request_body_bytes: config.limits.max_request_body_bytes,
            request_buffer_bytes: config.limits.request_buffer_bytes,
            body_timeout: Duration::from_millis(config.limits.body_timeout_ms),
            mirror_max_body_bytes: config.mirror.max_body_bytes,
            host_domain: config
                .routing
                .host_domain
                .as_ref()
                .map(|d| d.to_ascii_lowercase()),
        };
        let access_log = AccessLog::new(config.log.access_log, config.log.access_log_sample);
        // Validated with the configuration: an invalid endpoint never gets here.
        let export = config.tracing.export().ok().flatten().map(Exporter::start);
        Arc::new(Proxy::new(
            self.table.clone(),
            admitter,
            upstream,
            settings,
            (access_log, export),
            &self.metrics,
        ))
    }

    fn serve(&mut self, listener: TcpListener, transport: Transport, proxy: &Arc<Proxy>) {
        let name = match transport {
            Transport::Plain => "http",
            Transport::Tls { .. } => "https",
        };
        self.tasks.push(tokio::spawn(server::serve(
            listener,
            transport,
            proxy.clone(),
            self.settings.clone(),
            self.lifecycle.clone(),
            self.metrics
                .gauge(names::OPEN_CONNECTIONS, &[("listener", name)]),
        )));
    }

    /// Plain HTTP, when allowed.
    fn serve_http(&mut self, proxy: &Arc<Proxy>) -> anyhow::Result<Option<SocketAddr>> {
        if !self.config.allow_insecure_connections {
            return Ok(None);
        }
        let listener = bind(self.config.listen.http, "listen.http")?;
        let address = listener.local_addr()?;
        self.serve(listener, Transport::Plain, proxy);
        Ok(Some(address))
    }

    /// HTTPS, when TLS is configured: the first certificate (refusing to start on a bad one)
    /// and its watch, then the listener.
    async fn serve_https(
        &mut self,
        proxy: &Arc<Proxy>,
    ) -> anyhow::Result<Option<(SocketAddr, Arc<CertStore>)>> {
        let Some(tls) = &self.config.tls else {
            return Ok(None);
        };
        let (store, watcher) =
            start_certificates(tls, &self.metrics, self.kube_client.as_ref()).await?;
        self.tasks.push(watcher);
        let server_config =
            crate::tls::server_config(store.clone(), tls.min_version, tls.session_resumption)?;
        let listener = bind(self.config.listen.https, "listen.https")?;
        let address = listener.local_addr()?;
        let transport = Transport::Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config)),
            handshake_timeout: Duration::from_millis(self.config.limits.header_read_timeout_ms),
            errors: self.metrics.counter(names::TLS_HANDSHAKE_ERRORS, &[]),
        };
        self.serve(listener, transport, proxy);
        Ok(Some((address, store)))
    }

    /// With Kubernetes discovery: the watches (readiness comes with the first complete list,
    /// see `discovery::kube::rebuild`), and the writer of the objects' `Ready` conditions.
    fn watch_kube_routes(&mut self, cluster: Option<&Arc<Cluster>>) {
        let (Some(client), Some(kube)) = (&self.kube_client, &self.config.discovery.kube) else {
            return;
        };
        let publisher = self.publisher("kube");
        let board = kube.write_conditions.then(|| {
            let board = conditions::Board::default();
            let writer = conditions::writer::spawn(
                client.clone(),
                board.clone(),
                election(cluster),
                &self.metrics,
            );
            self.tasks.push(writer);
            board
        });
        let watches = kube_discovery::start(client.clone(), kube, publisher, &self.metrics, board);
        self.tasks.push(watches);
    }

    /// The autoscaler, when on. The owner of a deployment admits for every replica: its counts
    /// are the cluster's, and it alone acts.
    fn start_autoscaler(&mut self, cluster: Option<&Arc<Cluster>>) {
        let config = self.config;
        let (Some(client), Some(kube), true) = (
            &self.kube_client,
            &config.discovery.kube,
            config.autoscale.enabled,
        ) else {
            return;
        };
        let ownership: Arc<dyn Ownership> = match cluster {
            Some(cluster) => {
                let cluster = cluster.clone();
                Arc::new(move |endpoint: &str, deployment: &str| cluster.owns(endpoint, deployment))
            }
            None => Arc::new(SingleReplica),
        };
        self.tasks.push(crate::autoscale::spawn(
            client.clone(),
            &kube.namespaces,
            &config.autoscale,
            self.table.clone(),
            ownership,
            &self.metrics,
        ));
    }

    /// The admin port; with a cluster, `/readyz` also fails while the replica is isolated.
    fn serve_admin(&mut self, listener: TcpListener, cluster: Option<&Arc<Cluster>>) {
        let not_ready: Option<admin::NotReady> = cluster.map(|cluster| {
            let cluster = Arc::downgrade(cluster);
            let check: admin::NotReady =
                Arc::new(move || cluster.upgrade().and_then(|c| c.not_ready_reason()));
            check
        });
        let state = AdminState {
            readiness: self.readiness.clone(),
            lifecycle: self.lifecycle.clone(),
            table: self.table.clone(),
            metrics: self.metrics.clone(),
            not_ready,
        };
        self.tasks.push(tokio::spawn(admin::serve(listener, state)));
    }

    /// Every second folds the histograms' raw samples into their buckets, and every fifth second
    /// closes the pods' idle connections that expired. The exporter keeps every sample until it is
    /// folded, so the interval bounds that memory (benches/KERNEL.md: peak RSS under load 35 MiB
    /// with 5 s, 21.5 MiB with 1 s, at 25,000–30,000 requests/s).
    fn keep_up(&mut self, upstream: Upstream) {
        let metrics = self.metrics.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_INTERVAL);
            for tick in 0u64.. {
                every.tick().await;
                metrics.run_upkeep();
                if tick % SWEEPS_EVERY == 0 {
                    upstream.sweep();
                }
            }
        }));
    }
}

/// The line that says the router serves: where, and the settings that shape what it does, each
/// as its value (a setting that is not set is left out, never printed as `None`).
fn log_serving(
    config: &RouterConfig,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    admin: SocketAddr,
) {
    let discovery = match (&config.discovery.kube, &config.discovery.routes_file) {
        (Some(kube), _) if kube.namespaces.is_empty() => "kube (all namespaces)".to_string(),
        (Some(kube), _) => format!("kube ({})", kube.namespaces.join(", ")),
        (None, Some(file)) => format!("file {}", file.display()),
        (None, None) => "none".to_string(),
    };
    let tls = config.tls.as_ref();
    let certificate = tls
        .and_then(|t| t.source().ok())
        .map(|source| match source {
            TlsSource::Files { cert_file, .. } => format!("file {}", cert_file.display()),
            TlsSource::Secret(secret) => format!("secret {}/{}", secret.namespace, secret.name),
        });
    tracing::info!(
        http = http.map(display),
        https = https.map(display),
        admin = %admin,
        discovery = %discovery,
        certificate = certificate.map(display),
        tls_min_version = tls.map(|t| t.min_version.as_str()),
        ssl_cname = tls.and_then(|t| t.server_name.as_deref()),
        host_domain = config.routing.host_domain.as_deref(),
        workers = config.workers,
        cluster = config.cluster.as_ref().map(|c| display(c.listen)),
        autoscale = config.autoscale.enabled,
        otlp_endpoint = config.tracing.otlp_endpoint.as_deref(),
        access_log = config.log.access_log.as_str(),
        "scoregate is serving"
    );
}

/// Who writes `status.conditions`: with a cluster, the owner of each deployment, and the
/// lowest-named live replica for endpoints; alone, this replica.
fn election(cluster: Option<&Arc<Cluster>>) -> Arc<dyn conditions::Election> {
    match cluster {
        Some(cluster) => Arc::new(ClusterElection(cluster.clone())),
        None => Arc::new(conditions::SingleReplica),
    }
}

/// The cluster, read as the status writer's [`conditions::Election`].
struct ClusterElection(Arc<Cluster>);

impl conditions::Election for ClusterElection {
    fn owns_deployment(&self, endpoint: &str, deployment: &str) -> bool {
        self.0.owns(endpoint, deployment)
    }

    fn writes_endpoints(&self) -> bool {
        self.0.leads()
    }
}

/// A listener that could not be bound: which address and which setting. Each command says which
/// of its own flags sets it (`serve`: `--listen`, …; `demo`: `--port`, `--admin-port`).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({setting}): {source}; is another process using it? pick another port")]
pub struct ListenError {
    /// The address asked for.
    pub address: SocketAddr,
    /// The configuration setting that names it (`listen.http`, `listen.https`, `listen.admin`).
    pub setting: &'static str,
    /// What the system said.
    pub source: std::io::Error,
}

/// Binds a client-facing or admin listener.
fn bind(address: SocketAddr, setting: &'static str) -> Result<TcpListener, ListenError> {
    server::bind(address).map_err(|source| ListenError {
        address,
        setting,
        source,
    })
}

/// Loads the first certificate (refusing to start on a bad one) and starts watching its source:
/// the files, or the Secret through the Kubernetes API.
async fn start_certificates(
    tls: &TlsConfig,
    metrics: &Metrics,
    kube_client: Option<&kube::Client>,
) -> anyhow::Result<(Arc<CertStore>, tokio::task::JoinHandle<()>)> {
    match tls.source()? {
        TlsSource::Secret(secret) => {
            let client = kube_client.context(
                "TLS from a Secret (tls.secret) needs Kubernetes discovery: set discovery.kube or pass --discovery kube",
            )?;
            let (store, served) =
                kube_discovery::load_certificate(client, &secret, tls.server_name.clone(), metrics)
                    .await?;
            let watcher = kube_discovery::watch_certificate(
                client.clone(),
                secret,
                store.clone(),
                served,
                metrics,
            );
            Ok((store, watcher))
        }
        TlsSource::Files {
            cert_file,
            key_file,
        } => {
            let (cert, key) = crate::tls::read_pair(&cert_file, &key_file)?;
            let origin = crate::tls::files_origin(&cert_file, &key_file);
            let store = CertStore::new(&cert, &key, &origin, tls.server_name.clone(), metrics)?;
            let watcher = crate::tls::watch_files(store.clone(), cert_file.clone(), key_file)
                .with_context(|| format!("cannot watch {} for changes", cert_file.display()))?;
            Ok((store, watcher))
        }
    }
}

/// How [`Router::run_until_signal`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every open connection finished, or the grace period ended.
    Gracefully,
    /// A second signal arrived during the shutdown: exit now.
    Forced,
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

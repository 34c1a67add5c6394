//! One router instance: binds its listeners, loads its first routing table, serves, and shuts
//! down gracefully. `scoregate serve`, `scoregate demo` and the integration tests all start
//! routers through [`Router::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::admin::{self, AdminState};
use crate::admission::Admitter;
use crate::cluster::{self, Cluster};
use crate::config::RouterConfig;
use crate::config::TlsConfig;
use crate::discovery::{file, kube as kube_discovery, Publisher, Readiness};
use crate::proxy::{Proxy, ProxySettings};
use crate::server::{self, ConnectionSettings, Lifecycle, Transport};
use crate::table::TableHandle;
use crate::telemetry::{names, AccessLog, Metrics};
use crate::tls::CertStore;
use crate::upstream::Upstream;

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
        let metrics = Metrics::new();
        let table = TableHandle::default();
        let readiness = Readiness::default();
        let lifecycle = Lifecycle::default();
        // Tasks started so far are aborted if a later step fails.
        let mut background = Tasks::default();

        let kube_client = match &config.discovery.kube {
            Some(kube) => Some(crate::k8s::client(kube.kubeconfig.as_deref()).await?),
            None => None,
        };
        if kube_client.is_none() {
            let routes_path = config
                .discovery
                .routes_file
                .clone()
                .context("no route source configured")?;
            let mut publisher = Publisher::new("file", table.clone(), &metrics, readiness.clone());
            let spec = file::load_routes(&routes_path)?;
            if let Err(errors) = publisher.apply(&spec) {
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::bail!("{}: {}", routes_path.display(), text.join("; "));
            }
            background.push(
                file::watch(routes_path.clone(), publisher).with_context(|| {
                    format!("cannot watch {} for changes", routes_path.display())
                })?,
            );
        }

        let cluster = match &config.cluster {
            None => None,
            Some(settings) => {
                let listener = server::bind(settings.listen).with_context(|| {
                    format!(
                        "cannot listen on {} (cluster.listen): is another process using it? pick another port",
                        settings.listen
                    )
                })?;
                let bound = listener.local_addr()?;
                let cluster = Cluster::new(
                    settings,
                    bound,
                    table.clone(),
                    readiness.clone(),
                    lifecycle.shutting_down.clone(),
                    &metrics,
                )?;
                background.push(tokio::spawn(cluster::server::serve(
                    listener,
                    cluster.clone(),
                )));
                background.push(cluster.start());
                match &settings.peer_service {
                    Some(service) => {
                        let client = kube_client.as_ref().context(
                            "cluster.peer_service needs Kubernetes discovery: set discovery.kube",
                        )?;
                        background.push(cluster::kube_peers::watch(
                            client.clone(),
                            service,
                            cluster.port(),
                            cluster.clone(),
                        ));
                    }
                    None => cluster.set_peers(&settings.peers),
                }
                tracing::info!(me = %cluster.me(), "coordinated admission is on");
                Some(cluster)
            }
        };
        let admitter = match &cluster {
            Some(cluster) => Admitter::Coordinated(cluster.clone()),
            None => Admitter::Local,
        };
        let upstream = Upstream::new(
            Duration::from_millis(config.upstream.connect_timeout_ms),
            Duration::from_millis(config.upstream.idle_timeout_ms),
        );
        let proxy = Arc::new(Proxy::new(
            table.clone(),
            admitter,
            upstream.clone(),
            ProxySettings {
                max_request_body_bytes: config.limits.max_request_body_bytes,
                mirror_max_body_bytes: config.mirror.max_body_bytes,
                host_domain: config
                    .routing
                    .host_domain
                    .as_ref()
                    .map(|d| d.to_ascii_lowercase()),
            },
            AccessLog::new(config.log.access_log, config.log.access_log_sample),
            &metrics,
        ));
        let settings = Arc::new(ConnectionSettings::new(&config.limits));

        let admin_listener = server::bind(config.listen.admin)
            .with_context(|| format!("cannot listen on {} (listen.admin)", config.listen.admin))?;
        let admin_addr = admin_listener.local_addr()?;
        let mut http_addr = None;
        if config.allow_insecure_connections {
            let listener = server::bind(config.listen.http).with_context(|| {
                format!(
                    "cannot listen on {} (listen.http): is another process using it? pick another with --listen",
                    config.listen.http
                )
            })?;
            http_addr = Some(listener.local_addr()?);
            background.push(tokio::spawn(server::serve(
                listener,
                Transport::Plain,
                proxy.clone(),
                settings.clone(),
                lifecycle.clone(),
                metrics.gauge(names::OPEN_CONNECTIONS, &[("listener", "http")]),
            )));
        }
        let mut https_addr = None;
        let mut cert_store = None;
        if let Some(tls) = &config.tls {
            let (store, watcher) = start_certificates(tls, &metrics, kube_client.as_ref()).await?;
            background.extend(watcher);
            let server_config =
                crate::tls::server_config(store.clone(), &tls.min_version, tls.session_resumption)?;
            let listener = server::bind(config.listen.https).with_context(|| {
                format!(
                    "cannot listen on {} (listen.https): is another process using it? pick another with --tls-listen",
                    config.listen.https
                )
            })?;
            https_addr = Some(listener.local_addr()?);
            cert_store = Some(store);
            background.push(tokio::spawn(server::serve(
                listener,
                Transport::Tls {
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config)),
                    handshake_timeout: Duration::from_millis(config.limits.header_read_timeout_ms),
                    errors: metrics.counter(names::TLS_HANDSHAKE_ERRORS, &[]),
                },
                proxy.clone(),
                settings.clone(),
                lifecycle.clone(),
                metrics.gauge(names::OPEN_CONNECTIONS, &[("listener", "https")]),
            )));
        }
        if let (Some(client), Some(kube)) = (&kube_client, &config.discovery.kube) {
            // Readiness comes with the first complete list (see discovery::kube::rebuild).
            let publisher = Publisher::new("kube", table.clone(), &metrics, readiness.clone());
            background.push(kube_discovery::start(
                client.clone(),
                kube,
                publisher,
                &metrics,
            ));
        }
        if let (Some(client), Some(kube), true) = (
            &kube_client,
            &config.discovery.kube,
            config.autoscale.enabled,
        ) {
            background.push(crate::autoscale::spawn(
                client.clone(),
                &kube.namespaces,
                &config.autoscale,
                table.clone(),
                match &cluster {
                    // The owner of a deployment admits for every replica: its counts are the
                    // cluster's, and it alone acts.
                    Some(cluster) => {
                        let cluster = cluster.clone();
                        Arc::new(move |endpoint: &str, deployment: &str| {
                            cluster.owns(endpoint, deployment)
                        }) as Arc<dyn crate::autoscale::Ownership>
                    }
                    None => Arc::new(crate::autoscale::SingleReplica),
                },
                &metrics,
            ));
        }
        background.push(tokio::spawn(admin::serve(
            admin_listener,
            AdminState {
                readiness: readiness.clone(),
                lifecycle: lifecycle.clone(),
                table: table.clone(),
                metrics: metrics.clone(),
            },
        )));
        let upkeep_metrics = metrics.clone();
        background.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep_metrics.run_upkeep();
                upstream.sweep();
            }
        }));
        tracing::info!(http = ?http_addr, https = ?https_addr, admin = %admin_addr, "scoregate is serving");
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
            background: background.disarm(),
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

    /// Whether a routing table is loaded.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_loaded() && !self.lifecycle.shutting_down.is_cancelled()
    }

    /// Waits for SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        wait_for_signal().await?;
        tracing::info!("shutdown signal received");
        self.shutdown().await;
        Ok(())
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

    fn extend(&mut self, tasks: impl IntoIterator<Item = tokio::task::JoinHandle<()>>) {
        self.0.extend(tasks);
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

/// Loads the first certificate (refusing to start on a bad one) and starts watching its source:
/// the files, or the Secret through the Kubernetes API.
async fn start_certificates(
    tls: &TlsConfig,
    metrics: &Metrics,
    kube_client: Option<&kube::Client>,
) -> anyhow::Result<(Arc<CertStore>, Option<tokio::task::JoinHandle<()>>)> {
    if let (Some(secret), None) = (&tls.secret, &tls.cert_file) {
        let client = kube_client.context(
            "TLS from a Secret (tls.secret) needs Kubernetes discovery: set discovery.kube or pass --discovery kube",
        )?;
        let (store, served) =
            kube_discovery::load_certificate(client, secret, tls.server_name.clone(), metrics)
                .await?;
        let watcher = kube_discovery::watch_certificate(
            client.clone(),
            secret.clone(),
            store.clone(),
            served,
            metrics,
        );
        return Ok((store, Some(watcher)));
    }
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        anyhow::bail!("TLS needs tls.cert_file and tls.key_file, or tls.secret");
    };
    let (cert, key) = crate::tls::read_pair(cert_file, key_file)?;
    let origin = crate::tls::files_origin(cert_file, key_file);
    let store = CertStore::new(&cert, &key, &origin, tls.server_name.clone(), metrics)?;
    let watcher = crate::tls::watch_files(store.clone(), cert_file.clone(), key_file.clone())
        .with_context(|| format!("cannot watch {} for changes", cert_file.display()))?;
    Ok((store, Some(watcher)))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

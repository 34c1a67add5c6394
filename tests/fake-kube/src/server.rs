//! The server handle: listener lifecycle (start, stop, restart on the same port), kubeconfig,
//! fault switches, watch tuning and the request log.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::discovery;
use crate::faults::{Faults, Verbs};
use crate::requests_log::{RecordedRequest, RequestLog};
use crate::service;
use crate::store::Store;
use crate::watch::WatchSettings;

/// State shared by the handle, the HTTP service and open watch streams.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) faults: Faults,
    pub(crate) log: RequestLog,
    pub(crate) settings: Mutex<WatchSettings>,
    pub(crate) addr: SocketAddr,
    /// The minor version `/version` reports (Kubernetes 1.x).
    pub(crate) minor: Mutex<u32>,
}

/// A fake Kubernetes API server on `127.0.0.1`, serving plain HTTP/1.1 from a tokio task.
///
/// Dropping the handle stops the listener and every open connection.
pub struct FakeApiServer {
    pub(crate) shared: Arc<Shared>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl FakeApiServer {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            faults: Faults::new(),
            log: RequestLog::default(),
            settings: Mutex::new(WatchSettings::default()),
            addr: listener.local_addr()?,
            minor: Mutex::new(discovery::DEFAULT_MINOR),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            shared,
            listener: Mutex::new(Some(task)),
        })
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Makes `/version` report Kubernetes `1.minor` (1.33 by default), as an older or newer
    /// server would.
    pub fn set_server_version(&self, minor: u32) {
        *self.shared.minor.lock() = minor;
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig (cluster, user with a dummy bearer token, current context) pointing here.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n",
            url = self.url()
        )
    }

    /// Writes [`FakeApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    /// A `kube::Config` loaded from the kubeconfig, for tests that tweak it (e.g. `default_retry`).
    pub async fn config(&self, namespace: &str) -> anyhow::Result<kube::Config> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml(namespace))?;
        let options = kube::config::KubeConfigOptions::default();
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?)
    }

    /// A `kube::Client` built from the kubeconfig, as a program under test would build it.
    pub async fn client(&self, namespace: &str) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config(namespace).await?)?)
    }

    /// Stops listening and aborts every open connection; new connections are refused.
    /// The store survives, as etcd would.
    pub async fn stop(&self) {
        let task = self.listener.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port after [`FakeApiServer::stop`]. No-op if already running.
    pub async fn restart(&self) -> std::io::Result<()> {
        if self.listener.lock().is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.shared.addr).await?;
        let task = tokio::spawn(accept_loop(listener, self.shared.clone()));
        *self.listener.lock() = Some(task);
        Ok(())
    }

    /// Stops the server for good.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.snapshot()
    }

    /// The requests whose path starts with `prefix`.
    pub fn requests_with_prefix(&self, prefix: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.shared.log.clear();
    }

    /// Aborts every open watch connection mid-stream (no chunked terminator).
    pub fn drop_watches(&self) {
        self.shared.faults.drop_watches();
    }

    /// Sends one in-stream `ERROR 410 Expired` to every open watch, then ends those streams.
    pub fn expire_watches(&self) {
        self.shared.faults.expire_watches();
    }

    /// Makes every watch stream send nothing (not even bookmarks or its clean end) for `duration`.
    pub fn stall_watches(&self, duration: Duration) {
        self.shared.faults.stall_watches(Some(duration));
    }

    /// Ends a stall early; held-back events then flow.
    pub fn resume_watches(&self) {
        self.shared.faults.stall_watches(None);
    }

    /// Forgets the event history: watches from an older resourceVersion get an in-stream 410 and
    /// every outstanding `continue` token expires (HTTP 410).
    pub fn compact(&self) {
        self.shared.store.lock().compact();
    }

    /// Bounds each resource's event history (the watch cache; default 100 events).
    pub fn set_history_limit(&self, events: usize) {
        self.shared.store.lock().set_history_limit(events);
    }

    /// Answers every request with HTTP 503 `ServiceUnavailable` for `duration`.
    pub fn refuse_requests_for(&self, duration: Duration) {
        self.shared.faults.set_unavailable(Some(duration));
    }

    /// Ends [`FakeApiServer::refuse_requests_for`] early.
    pub fn accept_requests(&self) {
        self.shared.faults.set_unavailable(None);
    }

    /// Delays every response (including a watch's headers) by `delay`.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.faults.set_delay(delay);
    }

    /// Fails the next `count` requests whose path starts with `path_prefix` with HTTP `code`.
    pub fn fail_next_requests(&self, path_prefix: &str, code: u16, count: usize) {
        self.shared
            .faults
            .fail(path_prefix, code, Some(count), Verbs::All);
    }

    /// Fails the next `count` writes (any method but GET and HEAD) whose path starts with
    /// `path_prefix` with HTTP `code`: a 409 here is a write that lost a race.
    pub fn fail_next_writes(&self, path_prefix: &str, code: u16, count: usize) {
        self.shared
            .faults
            .fail(path_prefix, code, Some(count), Verbs::Writes);
    }

    /// Fails every LIST (a GET of a collection that is not a watch) whose path starts with
    /// `path_prefix` with HTTP `code` until [`FakeApiServer::clear_list_failures`]; watches and
    /// GETs of one object are served. E.g. 503 for an API server that cannot serve lists, 403 for
    /// missing RBAC.
    pub fn fail_lists(&self, path_prefix: &str, code: u16) {
        self.shared
            .faults
            .fail(path_prefix, code, None, Verbs::Lists);
    }

    /// Ends every [`FakeApiServer::fail_lists`].
    pub fn clear_list_failures(&self) {
        self.shared.faults.clear_standing_failures();
    }

    /// While `on`, every new watch is accepted (HTTP 200), sends the events it would replay, and
    /// ends at once (a clean end: no bookmark, no error), as a misbehaving proxy might do.
    pub fn end_watches_at_once(&self, on: bool) {
        self.shared.settings.lock().end_at_once = on;
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.settings.lock().bookmark_interval = interval;
    }

    /// Caps every watch's `timeoutSeconds`, so a client's 290 s watch ends sooner; `None` lifts it.
    pub fn set_max_watch_timeout(&self, max: Option<Duration>) {
        self.shared.settings.lock().max_timeout = max;
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().take() {
            task.abort();
        }
    }
}

/// Accepts connections; aborting this task drops the `JoinSet` and so every connection.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("fake API server accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| service::serve(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

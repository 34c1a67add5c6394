//! `scoregate demo`: the embedded default. One process runs four sample model pods (deployments
//! `blue` and `green`, two pods each) and a router in front of them with traffic 90/10, then
//! prints the scoring URI, a key and `curl` commands that work, including ones that show the
//! router's error statuses.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::RouterConfig;
use crate::router::{ListenError, Router};
use crate::sample_model::SampleModel;

/// Where the demo listens.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Scoring port on 127.0.0.1.
    pub port: u16,
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
}

/// The demo's endpoint name.
pub const DEMO_ENDPOINT: &str = "demo";

/// A running demo: its pods, its router and the files it wrote.
pub struct Demo {
    /// The router.
    pub router: Router,
    /// The sample pods: blue, blue, green, green.
    pub pods: Vec<SampleModel>,
    /// The primary key of the demo endpoint.
    pub key: String,
    /// The routes file the router watches (edit it to see a live reload).
    pub routes_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts pods and router.
    pub async fn start(options: &DemoOptions) -> anyhow::Result<Demo> {
        let mut pods = Vec::new();
        for model in ["blue", "blue", "green", "green"] {
            pods.push(
                SampleModel::start_local(model)
                    .await
                    .context("starting a sample model pod")?,
            );
        }
        let key = random_key();
        let secondary = random_key();
        let dir = tempfile::Builder::new()
            .prefix("scoregate-demo-")
            .tempdir()
            .context("creating a directory for the demo's routes file")?;
        let routes_file = dir.path().join("routes.yaml");
        let routes = routes_yaml(&key, &secondary, &pods);
        std::fs::write(&routes_file, routes).context("writing the demo's routes file")?;

        let mut config = RouterConfig {
            allow_insecure_connections: true,
            ..RouterConfig::default()
        };
        config.listen.http = SocketAddr::from(([127, 0, 0, 1], options.port));
        config.listen.admin = SocketAddr::from(([127, 0, 0, 1], options.admin_port));
        config.discovery.routes_file = Some(routes_file.clone());
        config.shutdown.drain_delay_ms = 0;
        config.shutdown.grace_period_ms = 5_000;
        let router = Router::start(config).await.map_err(demo_flags)?;
        Ok(Demo {
            router,
            pods,
            key,
            routes_file,
            _dir: dir,
        })
    }

    /// The scoring URI.
    pub fn scoring_uri(&self) -> String {
        let addr = self.router.http_addr().expect("the demo serves plain HTTP");
        format!("http://{addr}/api/v1/endpoint/{DEMO_ENDPOINT}/score")
    }

    /// What the demo prints: the URI, the key and commands to try.
    pub fn instructions(&self) -> String {
        let uri = self.scoring_uri();
        let key = &self.key;
        let admin = self.router.admin_addr();
        let curl = format!(
            "curl -s -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"data\": [[1, 2, 3, 4]]}}'"
        );
        format!(
            "scoregate demo is running: endpoint `{DEMO_ENDPOINT}`, deployments blue (90%) and green (10%), two pods each.\n\
             \n  scoring URI  {uri}\
             \n  primary key  {key}\
             \n  routes file  {routes} (edit it: the router reloads it live)\
             \n  metrics      http://{admin}/metrics\
             \n\nScore (prints the model's JSON; the response header azureml-model-deployment names the deployment):\
             \n  {curl} {uri}\
             \n\nMore to try:\
             \n  {curl} -H 'azureml-model-deployment: green' {uri}      # pick a deployment\
             \n  {curl} -i '{uri}?fail=1'           # the model fails: its 500 passes through\
             \n  {curl} -i '{uri}?sleep_ms=6000'    # slower than request_timeout_ms: 504\
             \n  {curl} -i '{uri}?reset=1'          # the pod resets the connection: 502\
             \n  curl -s -i {uri}                   # no key: 401\
             \n\nPress Ctrl-C to stop.\n",
            routes = self.routes_file.display(),
        )
    }
}

/// Says which of the demo's own flags moves a port that is taken.
fn demo_flags(error: anyhow::Error) -> anyhow::Error {
    match error.downcast_ref::<ListenError>() {
        Some(listen) => {
            let flag = match listen.setting {
                "listen.admin" => "--admin-port",
                _ => "--port",
            };
            anyhow::anyhow!(
                "cannot listen on {} ({}): is another process using it? choose another port with \
                 `scoregate demo {flag} N`",
                listen.address,
                listen.source
            )
        }
        None => error.context("starting the demo router"),
    }
}

fn random_key() -> String {
    let mut bytes = [0u8; 24];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn routes_yaml(key: &str, secondary: &str, pods: &[SampleModel]) -> String {
    let list = |range: std::ops::Range<usize>| {
        pods[range]
            .iter()
            .map(|p| format!("\"{}\"", p.address()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "# Routes of the scoregate demo. Edit and save: the router picks changes up at once.\n\
         endpoints:\n\
         \x20 - name: {DEMO_ENDPOINT}\n\
         \x20   auth_mode: key\n\
         \x20   keys: {{ primary: \"{key}\", secondary: \"{secondary}\" }}\n\
         \x20   traffic: {{ blue: 90, green: 10 }}\n\
         deployments:\n\
         \x20 - name: blue\n\
         \x20   endpoint: {DEMO_ENDPOINT}\n\
         \x20   pods: [{blue}]\n\
         \x20   request_settings: {{ request_timeout_ms: 5000, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 500 }}\n\
         \x20 - name: green\n\
         \x20   endpoint: {DEMO_ENDPOINT}\n\
         \x20   pods: [{green}]\n\
         \x20   request_settings: {{ request_timeout_ms: 5000, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 500 }}\n",
        blue = list(0..2),
        green = list(2..4),
    )
}

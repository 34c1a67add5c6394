//! Router replicas as real processes (the `scoregate` binary), so a test can stop one
//! (SIGSTOP), continue it (SIGCONT) or kill it (SIGKILL), optionally inside a network
//! namespace ([`super::netns`]); and the cluster's figures read from their `/metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use http_body_util::BodyExt as _;

use super::{guard, metric_value, Client};

/// The shared cluster credential of the process tests.
pub const SECRET: &str = "cluster-secret-for-process-tests-01";

/// One router process.
pub struct Replica {
    child: Child,
    /// Its scoring address.
    pub http: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Its cluster address (its identity), or an unused address for a replica on its own.
    pub cluster: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

/// Where a replica listens, and the namespace it runs in.
#[derive(Clone, Debug)]
pub struct Place {
    /// Scoring address.
    pub http: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Cluster address (its identity).
    pub cluster: SocketAddr,
    /// The network namespace, if not the test's own.
    pub netns: Option<String>,
}

impl Place {
    /// Fresh addresses on 127.0.0.1, in the test's namespace.
    pub fn loopback() -> Place {
        Place {
            http: super::dead_address(),
            admin: super::dead_address(),
            cluster: super::dead_address(),
            netns: None,
        }
    }

    /// Fixed ports on a namespace host's address.
    pub fn on(host: &super::netns::Host) -> Place {
        let at = |port| SocketAddr::new(host.ip.into(), port);
        Place {
            http: at(8080),
            admin: at(8081),
            cluster: at(9190),
            netns: Some(host.ns.clone()),
        }
    }
}

/// Starts one replica per place, all listing each other, sharing [`SECRET`]; `extra[i]` is more
/// of replica `i`'s cluster section (or nothing when `extra` is shorter).
pub fn start_cluster(dir: &Path, routes: &Path, places: &[Place], extra: &[&str]) -> Vec<Replica> {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let addresses: Vec<SocketAddr> = places.iter().map(|p| p.cluster).collect();
    places
        .iter()
        .enumerate()
        .map(|(i, place)| {
            Replica::start(Start {
                dir,
                routes,
                http: place.http,
                admin: place.admin,
                cluster: Some((place.cluster, &addresses)),
                secret: Some(&secret),
                cluster_extra: extra.get(i).copied().unwrap_or(""),
                netns: place.netns.as_deref(),
            })
        })
        .collect()
}

/// How to start a replica.
pub struct Start<'a> {
    /// Where the configuration and the log go.
    pub dir: &'a Path,
    /// The routes file.
    pub routes: &'a Path,
    /// Scoring address.
    pub http: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// This replica's cluster address and every replica's (this one included), or `None` for
    /// a replica on its own.
    pub cluster: Option<(SocketAddr, &'a [SocketAddr])>,
    /// The credential file.
    pub secret: Option<&'a Path>,
    /// More of the `cluster` section (`key: value, ...`), e.g. `fallback: reject`.
    pub cluster_extra: &'a str,
    /// The network namespace to run in.
    pub netns: Option<&'a str>,
}

impl Replica {
    /// Starts a router process as `start` says.
    pub fn start(start: Start<'_>) -> Replica {
        let Start {
            dir,
            routes,
            http,
            admin,
            cluster,
            secret,
            cluster_extra,
            netns,
        } = start;
        let mut yaml = format!(
            "allow_insecure_connections: true\nlisten: {{ http: \"{http}\", admin: \"{admin}\" }}\n\
             discovery: {{ routes_file: \"{}\" }}\nlog: {{ access_log: off }}\n\
             shutdown: {{ drain_delay_ms: 0, grace_period_ms: 1000 }}\n",
            routes.display()
        );
        let me = match cluster {
            Some((me, peers)) => {
                let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
                let secret = secret.expect("a clustered replica needs the credential file");
                let extra = if cluster_extra.is_empty() {
                    String::new()
                } else {
                    format!(", {cluster_extra}")
                };
                yaml.push_str(&format!(
                    "cluster: {{ listen: \"{me}\", peers: [{}], secret_file: \"{}\"{extra} }}\n",
                    peers.join(", "),
                    secret.display()
                ));
                me
            }
            None => super::dead_address(),
        };
        let name = format!("router-{}-{}", admin.ip(), admin.port());
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let stdout = std::fs::File::create(&log).unwrap();
        let stderr = stdout.try_clone().unwrap();
        // SCOREGATE_BIN: measure a fully optimised binary built elsewhere.
        let binary = std::env::var("SCOREGATE_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_scoregate").into());
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, &binary]);
                command
            }
            None => Command::new(&binary),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("SCOREGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Replica {
            child,
            http,
            admin,
            cluster: me,
            log,
        }
    }

    /// The scoring URL of endpoint `credit`, with `query`.
    pub fn url(&self, query: &str) -> String {
        format!("http://{}/api/v1/endpoint/credit/score{query}", self.http)
    }

    /// Its `/metrics`, or an empty text when it does not answer within a second (stopped).
    pub async fn metrics(&self, client: &Client) -> String {
        self.admin_get(client, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One metric, 0 when absent.
    pub async fn metric(&self, client: &Client, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(client).await, name, labels).unwrap_or(0.0)
    }

    /// `/readyz`: its status and body, `None` when it does not answer within a second.
    pub async fn readyz(&self, client: &Client) -> Option<(u16, String)> {
        self.admin_get(client, "/readyz").await
    }

    async fn admin_get(&self, client: &Client, path: &str) -> Option<(u16, String)> {
        let uri = format!("http://{}{path}", self.admin).parse().unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(1), async {
            let response = client.get(uri).await.ok()?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await;
        answered.ok().flatten()
    }

    /// Stops the process (SIGSTOP): it keeps its sockets but runs nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a stopped process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {} failed", self.child.id());
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every replica's log so far, one after the other, for a failed assertion's message.
pub fn logs_of(replicas: &[Replica]) -> String {
    replicas
        .iter()
        .map(Replica::log_text)
        .collect::<Vec<_>>()
        .join("\n----\n")
}

impl Drop for Replica {
    fn drop(&mut self) {
        // A stopped process ignores SIGKILL only until it is continued; SIGKILL works on it.
        self.kill();
    }
}

/// Waits until every replica's view has `n` members and they all announce one view.
pub async fn wait_members(client: &Client, replicas: &[&Replica], n: usize) {
    guard("the replicas agreeing on a view", async {
        loop {
            let mut epochs = Vec::new();
            for r in replicas {
                let text = r.metrics(client).await;
                let members = metric_value(&text, "scoregate_cluster_members", &[]);
                let epoch = metric_value(&text, "scoregate_cluster_view_epoch", &[]);
                epochs.push((members, epoch));
            }
            let agreed = epochs.iter().all(|e| *e == epochs[0]);
            if agreed && epochs[0].0 == Some(n as f64) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Per pod address: the most requests any of `replicas` knew to be in flight on it at once
/// (`scoregate_cluster_pod_peak_in_flight`, the highest over the replicas).
pub async fn known_peaks(client: &Client, replicas: &[&Replica], pods: &[SocketAddr]) -> Vec<f64> {
    let mut peaks = vec![0.0f64; pods.len()];
    for replica in replicas {
        let text = replica.metrics(client).await;
        for (i, pod) in pods.iter().enumerate() {
            let pod = pod.to_string();
            let labels = [
                ("endpoint", "credit"),
                ("deployment", "blue"),
                ("pod", pod.as_str()),
            ];
            let known = metric_value(&text, "scoregate_cluster_pod_peak_in_flight", &labels);
            peaks[i] = peaks[i].max(known.unwrap_or(0.0));
        }
    }
    peaks
}

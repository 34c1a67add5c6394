//! Shared by the installer's tests: the seed's four scenarios, fixture certificates, cluster
//! facts, and the typed round-trip check.
#![allow(dead_code)]

pub mod kube;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use scoregate_ext::problem::Problems;
use scoregate_ext::render::Manifest;
use scoregate_ext::settings::{RawSettings, Settings};
use scoregate_ext::validate::{self, ClusterFacts, NodeFact, Plan};

/// Runs `scoregate-ext` with `argv` (its name first) as the binary would: (result, stdout,
/// stderr).
pub async fn run_cli(argv: Vec<String>) -> (anyhow::Result<()>, String, String) {
    use clap::Parser as _;
    let cli = scoregate_ext::cli::Cli::try_parse_from(argv).expect("arguments parse");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = scoregate_ext::cli::run(cli, &mut out, &mut err).await;
    (
        result,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// A fixed "now" (2026-12-01), so certificate checks never depend on the clock.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_083_200)
}

/// The checked-in test certificate: `ml.contoso.com` and `*.ml.contoso.com`, valid until 2126.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// `sslCertPemFile=…` and `sslKeyPemFile=…` for the fixture pair.
pub fn fixture_protected() -> Vec<String> {
    vec![
        format!("sslCertPemFile={}", fixture("cert.pem").display()),
        format!("sslKeyPemFile={}", fixture("key.pem").display()),
    ]
}

/// `count` Ready, schedulable nodes with `labels`.
pub fn nodes(count: usize, labels: &[(&str, &str)]) -> Vec<NodeFact> {
    (0..count)
        .map(|i| NodeFact {
            name: format!("node-{i}"),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            unschedulable: None,
        })
        .collect()
}

/// Facts for a cluster of `count` plain nodes.
pub fn cluster_of(count: usize) -> ClusterFacts {
    ClusterFacts {
        nodes: Some(nodes(count, &[])),
        ..ClusterFacts::default()
    }
}

/// One of the four scenarios of the seed document (the az docs' "typical extension deployment
/// scenarios", D-EXT).
pub struct Scenario {
    /// File stem of its golden file.
    pub name: &'static str,
    /// `--config` words.
    pub config: Vec<String>,
    /// `--config-protected` words.
    pub protected: Vec<String>,
    /// The cluster it runs on.
    pub facts: ClusterFacts,
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The four scenarios.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "aks-proof-of-concept",
            config: words(&[
                "enableTraining=True",
                "enableInference=True",
                "inferenceRouterServiceType=LoadBalancer",
                "allowInsecureConnections=True",
                "inferenceRouterHA=False",
            ]),
            protected: vec![],
            facts: cluster_of(1),
        },
        Scenario {
            name: "arc-training-only",
            config: words(&["enableTraining=True"]),
            protected: vec![],
            facts: cluster_of(2),
        },
        Scenario {
            name: "aks-production-https",
            config: words(&[
                "enableTraining=True",
                "enableInference=True",
                "inferenceRouterServiceType=LoadBalancer",
                "sslCname=ml.contoso.com",
            ]),
            protected: fixture_protected(),
            facts: cluster_of(4),
        },
        Scenario {
            name: "arc-nodeport-https-gpu",
            config: words(&[
                "enableTraining=True",
                "enableInference=True",
                "inferenceRouterServiceType=NodePort",
                "sslCname=ml.contoso.com",
                "installNvidiaDevicePlugin=True",
                "installDcgmExporter=True",
            ]),
            protected: fixture_protected(),
            facts: cluster_of(4),
        },
    ]
}

/// A scenario beyond the seed's four with every optional setting on (the schema checks render
/// it as well): HA with zone spread, TLS from a cert-manager Secret, namespace-scoped access,
/// tolerations, resources, pull secrets, Service annotations, a load balancer IP, `Local`
/// traffic, ServiceMonitor labels, the NetworkPolicy and both GPU DaemonSets.
pub fn everything_on() -> Scenario {
    let mut facts = ClusterFacts {
        nodes: Some(nodes(4, &[("kubernetes.io/os", "linux")])),
        ..ClusterFacts::default()
    };
    facts.ssl_secret = Some(validate::SecretFact::Found {
        data: BTreeMap::from([
            (
                "tls.crt".to_owned(),
                std::fs::read(fixture("cert.pem")).unwrap(),
            ),
            (
                "tls.key".to_owned(),
                std::fs::read(fixture("key.pem")).unwrap(),
            ),
        ]),
    });
    facts.nodes.as_mut().unwrap()[3]
        .labels
        .insert("accelerator".to_owned(), "nvidia".to_owned());
    Scenario {
        name: "every-setting",
        config: words(&[
            "enableInference=True",
            "inferenceRouterServiceType=LoadBalancer",
            "inferenceRouterHA=True",
            "sslSecret=contoso-tls",
            "sslCname=ml.contoso.com",
            "allowInsecureConnections=True",
            "internalLoadBalancerProvider=azure",
            "nodeSelector.kubernetes.io/os=linux",
            "inferenceRouterTolerations=dedicated=inference:NoSchedule,spot",
            "inferenceRouterResources.requests.cpu=1500m",
            "inferenceRouterResources.requests.memory=1Gi",
            "inferenceRouterResources.limits.cpu=4",
            "inferenceRouterResources.limits.memory=2Gi",
            "imagePullSecrets=acr-pull,mirror-pull",
            "inferenceRouterServiceAnnotations.service.beta.kubernetes.io/azure-dns-label-name=contoso-ml",
            "inferenceRouterLoadBalancerIP=10.240.0.77",
            "inferenceRouterExternalTrafficPolicy=Local",
            "serviceMonitorLabels.release=kube-prometheus-stack",
            "inferenceRouterNamespaces=team-a,team-b",
            "networkPolicy=True",
            "installNvidiaDevicePlugin=True",
            "installDcgmExporter=True",
            "gpuTolerations=nvidia.com/gpu:NoSchedule,sku=gpu:NoSchedule,kubernetes.azure.com/scalesetpriority=spot:NoSchedule",
            "gpuPriorityClassName=gpu-node-critical",
        ]),
        protected: vec![],
        facts,
    }
}

/// The seed's four and [`everything_on`].
pub fn all_scenarios() -> Vec<Scenario> {
    let mut all = scenarios();
    all.push(everything_on());
    all
}

/// Parses and validates.
pub fn plan(config: &[&str], protected: &[String], facts: &ClusterFacts) -> Result<Plan, Problems> {
    let raw = RawSettings::parse(&words(config), protected)?;
    let settings = Settings::from_raw(&raw)?;
    validate::validate(&settings, facts, now())
}

/// Renders a scenario as `create` renders it for a cluster of Kubernetes `1.minor`.
pub fn render_for(scenario: &Scenario, minor: u32) -> Manifest {
    let facts = ClusterFacts {
        kubernetes_version: Some(validate::KubernetesVersion { major: 1, minor }),
        ..scenario.facts.clone()
    };
    let raw = RawSettings::parse(&scenario.config, &scenario.protected).expect("scenario parses");
    scoregate_ext::ops::render_with_facts(
        "scoregate",
        &raw,
        scoregate_ext::ops::default_image(),
        &facts,
        now(),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("scenario {} renders for 1.{minor}: {e}", scenario.name))
}

/// Renders a scenario as `create --dry-run` would.
pub fn render(scenario: &Scenario) -> Manifest {
    let raw = RawSettings::parse(&scenario.config, &scenario.protected).expect("scenario parses");
    scoregate_ext::ops::render_with_facts(
        "scoregate",
        &raw,
        scoregate_ext::ops::default_image(),
        &scenario.facts,
        now(),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("scenario {} renders: {e}", scenario.name))
}

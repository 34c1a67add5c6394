//! Shared by the installer's tests: the seed's four scenarios, fixture certificates, cluster
//! facts, and the typed round-trip check.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use scoregate_ext::problem::Problems;
use scoregate_ext::render::Manifest;
use scoregate_ext::settings::{RawSettings, Settings};
use scoregate_ext::validate::{self, ClusterFacts, NodeFact, Plan};

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
        ssl_secret: None,
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

/// Parses and validates.
pub fn plan(config: &[&str], protected: &[String], facts: &ClusterFacts) -> Result<Plan, Problems> {
    let raw = RawSettings::parse(&words(config), protected)?;
    let settings = Settings::from_raw(&raw)?;
    validate::validate(&settings, facts, now())
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

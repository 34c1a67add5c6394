//! The router's configuration: a `scoregate::config::RouterConfig` (the router's own type, never a
//! copy) serialized to YAML in ConfigMap `azureml-fe-config`, which the Deployment mounts at
//! [`CONFIG_PATH`] and passes with `scoregate serve --config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use scoregate::config::{
    ClusterConfig, KubeDiscoveryConfig, PeerServiceConfig, RouterConfig, ShutdownConfig, TlsConfig,
};
use scoregate::telemetry::LogFormat;

use super::meta;
use crate::validate::InferencePlan;

/// Where the configuration volume is mounted.
pub const CONFIG_DIR: &str = "/etc/scoregate";
/// The configuration file the router reads.
pub const CONFIG_PATH: &str = "/etc/scoregate/config.yaml";
/// The key of the configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// The certificate chain, projected from the TLS Secret's `cert.pem`.
pub const TLS_CERT_PATH: &str = "/etc/scoregate/tls/cert.pem";
/// The private key, projected from the TLS Secret's `key.pem`.
pub const TLS_KEY_PATH: &str = "/etc/scoregate/tls/key.pem";
/// The cluster credential, projected from the cluster Secret's [`CLUSTER_SECRET_KEY`].
pub const CLUSTER_SECRET_PATH: &str = "/etc/scoregate/cluster/secret";
/// The key of the credential in the cluster Secret.
pub const CLUSTER_SECRET_KEY: &str = "secret";
/// The replicas' internal port for coordinated admission.
pub const CLUSTER_PORT: u16 = 9190;
/// Worker threads: the CPU limit rounded up (azureml-fe's 2 vCPU by default), so the runtime
/// never oversubscribes it.
pub fn workers(plan: &InferencePlan) -> usize {
    (plan.resources.limits_cpu.value.ceil() as usize).max(1)
}

/// How long a terminating pod keeps serving before it is sent SIGTERM, so kube-proxy and load
/// balancers stop sending to it first (the router's default drain delay). It runs as the pod's
/// `preStop` sleep, which needs no shell in the image; the rendered config therefore sets the
/// router's own drain delay to 0 so the two do not add up.
pub fn drain_seconds() -> i64 {
    millis_to_seconds(ShutdownConfig::default().drain_delay_ms)
}

/// How long in-flight requests get after SIGTERM (the router's default grace period).
pub fn grace_seconds() -> i64 {
    millis_to_seconds(ShutdownConfig::default().grace_period_ms)
}

fn millis_to_seconds(ms: u64) -> i64 {
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

/// The router's configuration for `plan`.
pub fn router_config(plan: &InferencePlan) -> RouterConfig {
    let mut config = RouterConfig {
        workers: workers(plan),
        allow_insecure_connections: plan.allow_insecure,
        ..RouterConfig::default()
    };
    config.tls = plan.tls.as_ref().map(|tls| TlsConfig {
        server_name: Some(tls.cname.clone()),
        ..TlsConfig::from_files(TLS_CERT_PATH.into(), TLS_KEY_PATH.into())
    });
    // Online endpoints live in the users' namespaces: watch them all, or those listed.
    config.discovery.kube = Some(KubeDiscoveryConfig {
        namespaces: plan.namespaces.clone(),
        ..KubeDiscoveryConfig::default()
    });
    config.shutdown = ShutdownConfig {
        drain_delay_ms: 0,
        grace_period_ms: ShutdownConfig::default().grace_period_ms,
    };
    config.log.format = LogFormat::Json;
    // azureml-fe scales model deployments itself; so does the installed router.
    config.autoscale.enabled = true;
    // Three replicas share each pod's cap, as azureml-fe's do: they find each other through
    // their headless Service and reach each other on the pod IP ($POD_IP, downward API).
    if plan.ha {
        config.cluster = Some(ClusterConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], CLUSTER_PORT)),
            peer_service: Some(PeerServiceConfig {
                namespace: meta::NAMESPACE.to_owned(),
                name: meta::PEER_SERVICE.to_owned(),
            }),
            secret_file: Some(CLUSTER_SECRET_PATH.into()),
            ..ClusterConfig::default()
        });
    }
    config
}

/// The configuration as the file the router reads.
pub fn to_yaml(config: &RouterConfig) -> String {
    serde_yaml::to_string(config).expect("RouterConfig always serializes")
}

/// Secret `azureml-fe-cluster` holding the replicas' shared `credential`.
pub fn cluster_secret(extension: &str, credential: &str) -> Secret {
    Secret {
        metadata: meta::namespaced(meta::CLUSTER_SECRET, extension, "router"),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            CLUSTER_SECRET_KEY.to_owned(),
            ByteString(credential.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// ConfigMap `azureml-fe-config` holding `config_yaml`.
pub fn config_map(config_yaml: &str, extension: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta::namespaced(meta::CONFIG_MAP, extension, "router"),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            config_yaml.to_owned(),
        )])),
        ..ConfigMap::default()
    }
}

/// A stable 64-bit FNV-1a digest, hex: the pod template annotation that rolls the router when its
/// configuration changes (stable across Rust versions, unlike `DefaultHasher`).
pub fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_the_published_one() {
        assert_eq!(digest(""), "cbf29ce484222325");
        assert_eq!(digest("a"), "af63dc4c8601ec8c");
    }
}

//! Which `update` changes disturb live endpoints: az prompts that they "will IMPACT your active
//! … online endpoints and deployments" (az rule 10), and so does `scoregate-ext update`
//! (proceeding only with `--yes`).

use std::collections::BTreeMap;

use crate::settings::{Flag, Settings};

fn yes_no(v: bool) -> &'static str {
    if v {
        "True"
    } else {
        "False"
    }
}

fn or_unset<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "(unset)".to_owned(), ToString::to_string)
}

fn selector_text(s: &BTreeMap<String, String>) -> String {
    if s.is_empty() {
        return "(none)".to_owned();
    }
    s.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The changes from `old` to `new` that affect serving endpoints, one line each.
pub fn impacts(old: &Settings, new: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let mut turned_off = |key: &str, old: Flag, new: Flag| {
        if old.value && !new.value {
            out.push(format!("{key}: True → False"));
        }
    };
    turned_off("enableTraining", old.enable_training, new.enable_training);
    turned_off(
        "enableInference",
        old.enable_inference,
        new.enable_inference,
    );
    turned_off(
        "installNvidiaDevicePlugin",
        old.install_nvidia_device_plugin,
        new.install_nvidia_device_plugin,
    );
    if old.allow_insecure_connections.value != new.allow_insecure_connections.value {
        out.push(format!(
            "allowInsecureConnections: {} → {}",
            yes_no(old.allow_insecure_connections.value),
            yes_no(new.allow_insecure_connections.value)
        ));
    }
    if old.inference_router_service_type != new.inference_router_service_type {
        out.push(format!(
            "inferenceRouterServiceType: {} → {}",
            or_unset(&old.inference_router_service_type),
            or_unset(&new.inference_router_service_type)
        ));
    }
    if old.internal_load_balancer != new.internal_load_balancer {
        let provider = |v: bool| if v { "azure" } else { "(unset)" };
        out.push(format!(
            "internalLoadBalancerProvider: {} → {}",
            provider(old.internal_load_balancer),
            provider(new.internal_load_balancer)
        ));
    }
    if old.ssl_cname != new.ssl_cname {
        out.push(format!(
            "sslCname: {} → {}",
            or_unset(&old.ssl_cname),
            or_unset(&new.ssl_cname)
        ));
    }
    if old.node_selector != new.node_selector {
        out.push(format!(
            "nodeSelector: {} → {}",
            selector_text(&old.node_selector),
            selector_text(&new.node_selector)
        ));
    }
    out
}

/// HTTPS on before and off after: Service port 443 and the TLS Secret go, and `https://` clients
/// fail. (Protected settings are not stored, so an update that does not give the PEM files
/// again drops HTTPS too.)
pub fn https_removed(old: bool, new: bool) -> Option<String> {
    (old && !new).then(|| {
        "HTTPS: on → off (Service port 443 and the TLS Secret are removed; give --config-protected sslCertPemFile=… sslKeyPemFile=… again, or sslSecret, to keep it)".to_owned()
    })
}

//! How a deployment spreads requests over its pods: scoregate's `routing` settings of a
//! deployment, the same in the routes file (`routing:`, snake_case keys accepted) and the
//! OnlineDeployment resource (`spec.routing`, camelCase).
//!
//! ```yaml
//! routing:
//!   policy: prefix_affinity        # power_of_two_choices (default) | least_outstanding | pod_load | prefix_affinity
//!   prefix: { header: x-session-id, blockBytes: 256, maxBlocks: 64, memoryBlocks: 65536 }
//!   podMetrics: { preset: vllm, path: /metrics, intervalMs: 1000, maxAgeMs: 5000 }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default bytes per prefix block (about 64 tokens).
pub const DEFAULT_BLOCK_BYTES: u32 = 256;
/// Default blocks hashed per request.
pub const DEFAULT_MAX_BLOCKS: u32 = 64;
/// Default block hashes a deployment's prefix memory holds (about 4 MiB).
pub const DEFAULT_MEMORY_BLOCKS: u32 = 65_536;
/// Default time between two scrapes of a pod's metrics.
pub const DEFAULT_SCRAPE_INTERVAL_MS: u64 = 1_000;

/// A deployment's routing settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingSettings {
    /// Which pod gets a request; default `power_of_two_choices`.
    #[serde(default)]
    pub policy: PolicyKind,
    /// How `prefix_affinity` keys a request; defaults apply when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixSettings>,
    /// Scraping of the pods' own metrics (running and waiting requests, KV-cache use), used by
    /// `pod_load` and by `prefix_affinity`'s load bound; off when unset.
    #[serde(
        default,
        alias = "pod_metrics",
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_metrics: Option<PodMetricsSettings>,
}

/// The picking policies.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The less loaded of two random pods (this router's in-flight counts).
    #[default]
    #[serde(alias = "p2c")]
    PowerOfTwoChoices,
    /// The pod with the fewest of this router's requests in flight.
    LeastOutstanding,
    /// The lowest load combining this router's counts with the pods' scraped metrics (needs
    /// `podMetrics`).
    PodLoad,
    /// The pod that served the longest prefix of the prompt, unless much busier than the
    /// least-loaded pod.
    PrefixAffinity,
}

impl PolicyKind {
    /// The name as written in the settings.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::PowerOfTwoChoices => "power_of_two_choices",
            PolicyKind::LeastOutstanding => "least_outstanding",
            PolicyKind::PodLoad => "pod_load",
            PolicyKind::PrefixAffinity => "prefix_affinity",
        }
    }
}

/// How prefix affinity keys a request.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixSettings {
    /// Key on this header's value (a session or conversation id) instead of the body's prompt;
    /// the body is then not read before admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Bytes per block of the prompt; default 256.
    #[serde(default = "default_block_bytes", alias = "block_bytes")]
    #[schemars(range(min = 16, max = 65536))]
    pub block_bytes: u32,
    /// Leading blocks hashed at most; default 64.
    #[serde(default = "default_max_blocks", alias = "max_blocks")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_blocks: u32,
    /// Block hashes remembered at most (about 64 bytes each); default 65536.
    #[serde(default = "default_memory_blocks", alias = "memory_blocks")]
    #[schemars(range(min = 16, max = 16777216))]
    pub memory_blocks: u32,
}

impl Default for PrefixSettings {
    fn default() -> Self {
        PrefixSettings {
            header: None,
            block_bytes: DEFAULT_BLOCK_BYTES,
            max_blocks: DEFAULT_MAX_BLOCKS,
            memory_blocks: DEFAULT_MEMORY_BLOCKS,
        }
    }
}

/// Model servers whose metric names are known.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MetricsPreset {
    /// vLLM: `vllm:num_requests_running`, `vllm:num_requests_waiting`,
    /// `vllm:kv_cache_usage_perc` (or the older `vllm:gpu_cache_usage_perc`).
    #[default]
    Vllm,
    /// SGLang: `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`.
    Sglang,
    /// Text Generation Inference: `tgi_batch_current_size`, `tgi_queue_size`.
    Tgi,
    /// Triton with the TensorRT-LLM backend: active requests and KV-cache block use from
    /// `nv_trt_llm_*`, waiting from `nv_inference_pending_request_count`.
    Triton,
}

/// Scraping of a deployment's pods' Prometheus metrics.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMetricsSettings {
    /// The model server, for its metric names; default `vllm`.
    #[serde(default)]
    pub preset: MetricsPreset,
    /// The metrics path; default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The metrics port; default the pods' inference port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Time between two scrapes of a pod; default 1000.
    #[serde(
        default,
        alias = "interval_ms",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 100, max = 60000))]
    pub interval_ms: Option<u64>,
    /// Age at which a pod's report stops counting (it counts fully for two intervals, then
    /// less and less); default five intervals.
    #[serde(default, alias = "max_age_ms", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 600000))]
    pub max_age_ms: Option<u64>,
    /// The running-requests metric, instead of the preset's: `name` or `name{label="value"}`
    /// (matching samples are summed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// The waiting-requests metric, instead of the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The KV-cache usage metric (0 to 1), instead of the preset's.
    #[serde(default, alias = "kv_usage", skip_serializing_if = "Option::is_none")]
    pub kv_usage: Option<String>,
}

/// The metric selectors one scrape reads, each with alternatives tried in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricNames {
    /// Running requests.
    pub running: Vec<String>,
    /// Waiting requests.
    pub waiting: Vec<String>,
    /// KV-cache usage, 0 to 1.
    pub kv_usage: Vec<String>,
    /// The histogram of time per output token (its `_sum` and `_count` are read): the preset's
    /// only, none for Triton.
    pub token_latency: Vec<String>,
}

impl PodMetricsSettings {
    /// The scrape interval in milliseconds.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.unwrap_or(DEFAULT_SCRAPE_INTERVAL_MS)
    }

    /// The age in milliseconds at which a report stops counting.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_ms.unwrap_or(self.interval_ms() * 5)
    }

    /// The metrics path.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/metrics")
    }

    /// The metric names: the preset's, each replaced where the settings name one.
    pub fn names(&self) -> MetricNames {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let preset = match self.preset {
            MetricsPreset::Vllm => MetricNames {
                running: list(&["vllm:num_requests_running"]),
                waiting: list(&["vllm:num_requests_waiting"]),
                kv_usage: list(&["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
                token_latency: list(&[
                    "vllm:inter_token_latency_seconds",
                    "vllm:time_per_output_token_seconds",
                ]),
            },
            MetricsPreset::Sglang => MetricNames {
                running: list(&["sglang:num_running_reqs"]),
                waiting: list(&["sglang:num_queue_reqs"]),
                kv_usage: list(&["sglang:token_usage"]),
                token_latency: list(&[
                    "sglang:inter_token_latency_seconds",
                    "sglang:time_per_output_token_seconds",
                ]),
            },
            MetricsPreset::Tgi => MetricNames {
                running: list(&["tgi_batch_current_size"]),
                waiting: list(&["tgi_queue_size"]),
                kv_usage: Vec::new(),
                token_latency: list(&["tgi_request_mean_time_per_token_duration"]),
            },
            MetricsPreset::Triton => MetricNames {
                running: list(&["nv_trt_llm_request_metrics{request_type=\"active\"}"]),
                waiting: list(&["nv_inference_pending_request_count"]),
                kv_usage: list(&[
                    "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"}",
                ]),
                token_latency: Vec::new(),
            },
        };
        let or =
            |own: &Option<String>, preset: Vec<String>| own.clone().map_or(preset, |n| vec![n]);
        MetricNames {
            running: or(&self.running, preset.running),
            waiting: or(&self.waiting, preset.waiting),
            kv_usage: or(&self.kv_usage, preset.kv_usage),
            token_latency: preset.token_latency,
        }
    }
}

impl RoutingSettings {
    /// The prefix settings, with defaults.
    pub fn prefix(&self) -> PrefixSettings {
        self.prefix.clone().unwrap_or_default()
    }

    /// Checks the settings; problems are `(field under routing, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let prefix = self.prefix();
        if !(16..=65_536).contains(&prefix.block_bytes) {
            problems.push((
                ".prefix.blockBytes",
                format!("{} is out of range: use 16..=65536", prefix.block_bytes),
            ));
        }
        if !(1..=1024).contains(&prefix.max_blocks) {
            problems.push((
                ".prefix.maxBlocks",
                format!("{} is out of range: use 1..=1024", prefix.max_blocks),
            ));
        }
        if !(16..=16_777_216).contains(&prefix.memory_blocks) {
            problems.push((
                ".prefix.memoryBlocks",
                format!(
                    "{} is out of range: use 16..=16777216",
                    prefix.memory_blocks
                ),
            ));
        }
        if let Some(header) = &prefix.header {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                problems.push((".prefix.header", format!("`{header}` is not a header name: use letters, digits and dashes (for example `x-session-id`)")));
            }
        }
        match &self.pod_metrics {
            None if self.policy == PolicyKind::PodLoad => problems.push((
                ".podMetrics",
                "policy `pod_load` needs the pods' metrics: set `podMetrics` (for example `{ preset: vllm }`), or use `least_outstanding`".into(),
            )),
            None => {}
            Some(m) => {
                if !(100..=60_000).contains(&m.interval_ms()) {
                    problems.push((".podMetrics.intervalMs", format!("{} is out of range: use 100..=60000", m.interval_ms())));
                }
                if m.max_age_ms() <= m.interval_ms() * 2 {
                    problems.push((".podMetrics.maxAgeMs", format!("{} must be above two intervals ({} ms): reports count fully for two intervals", m.max_age_ms(), m.interval_ms() * 2)));
                }
                if !m.path().starts_with('/') {
                    problems.push((".podMetrics.path", format!("`{}` must start with `/`", m.path())));
                }
            }
        }
        problems
    }
}

fn default_block_bytes() -> u32 {
    DEFAULT_BLOCK_BYTES
}

fn default_max_blocks() -> u32 {
    DEFAULT_MAX_BLOCKS
}

fn default_memory_blocks() -> u32 {
    DEFAULT_MEMORY_BLOCKS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_and_camel_case_both_parse() {
        let camel: RoutingSettings = serde_yaml::from_str(
            "{ policy: prefix_affinity, podMetrics: { preset: sglang, intervalMs: 500 }, prefix: { maxBlocks: 8 } }",
        )
        .unwrap();
        let snake: RoutingSettings = serde_yaml::from_str(
            "{ policy: prefix_affinity, pod_metrics: { preset: sglang, interval_ms: 500 }, prefix: { max_blocks: 8 } }",
        )
        .unwrap();
        assert_eq!(camel, snake);
        assert_eq!(camel.prefix().max_blocks, 8);
        assert_eq!(camel.prefix().block_bytes, DEFAULT_BLOCK_BYTES);
        let names = camel.pod_metrics.as_ref().unwrap().names();
        assert_eq!(names.running, ["sglang:num_running_reqs"]);
        assert!(camel.problems().is_empty());
    }

    #[test]
    fn problems_name_the_field_and_the_fix() {
        let settings: RoutingSettings = serde_yaml::from_str("{ policy: pod_load }").unwrap();
        let problems = settings.problems();
        assert_eq!(problems[0].0, ".podMetrics");
        assert!(problems[0].1.contains("preset: vllm"));
        let bad: RoutingSettings = serde_yaml::from_str(
            "{ podMetrics: { intervalMs: 1000, maxAgeMs: 1500, path: metrics }, prefix: { header: 'a b' } }",
        )
        .unwrap();
        let fields: Vec<_> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            [".prefix.header", ".podMetrics.maxAgeMs", ".podMetrics.path"]
        );
        assert!(serde_yaml::from_str::<RoutingSettings>("{ policy: random }").is_err());
    }

    #[test]
    fn own_names_replace_the_presets() {
        let m = PodMetricsSettings {
            preset: MetricsPreset::Tgi,
            waiting: Some("my_queue".into()),
            ..PodMetricsSettings::default()
        };
        let names = m.names();
        assert_eq!(names.running, ["tgi_batch_current_size"]);
        assert_eq!(names.waiting, ["my_queue"]);
        assert!(names.kv_usage.is_empty());
        assert_eq!(m.max_age_ms(), 5_000);
    }
}

//! Reading the values a picker needs from a Prometheus text page, with the `prometheus-parse`
//! crate.
//!
//! That crate matches metric names with `\w+`, but the exposition format allows colons in names
//! (and vLLM and SGLang use them: `vllm:num_requests_running`), so colons in names are written
//! as [`COLON`] on the way in, in the page's names and in the selectors alike; label values,
//! which may hold colons too, are left alone.

use std::time::Instant;

use prometheus_parse::{Sample, Scrape, Value};

use crate::model::MetricNames;
use crate::picking::load::Report;

/// What a colon in a metric name becomes before parsing.
pub const COLON: &str = "__colon__";

/// The values one scrape read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Values {
    /// Running requests.
    pub running: f64,
    /// Waiting requests.
    pub waiting: f64,
    /// KV-cache usage, when the page has it.
    pub kv_usage: Option<f64>,
}

impl Values {
    /// The report these values make, with this router's count at the scrape.
    pub fn report(self, ours_at_scrape: u32) -> Report {
        Report {
            running: self.running,
            waiting: self.waiting,
            kv_usage: self.kv_usage,
            ours_at_scrape,
            at: Instant::now(),
        }
    }
}

/// The running, waiting and KV values of a page; an error when the page does not parse or has
/// neither a running nor a waiting metric.
pub fn read(page: &str, names: &MetricNames) -> Result<Values, String> {
    let lines = page.lines().map(|line| Ok(escape_name(line)));
    let scrape = Scrape::parse(lines).map_err(|e| format!("the page does not parse: {e}"))?;
    let running = first(&scrape.samples, &names.running);
    let waiting = first(&scrape.samples, &names.waiting);
    if running.is_none() && waiting.is_none() {
        return Err(format!(
            "the page has none of {:?} or {:?}: set `podMetrics.preset` or the metric names",
            names.running, names.waiting
        ));
    }
    Ok(Values {
        running: running.unwrap_or(0.0),
        waiting: waiting.unwrap_or(0.0),
        kv_usage: first(&scrape.samples, &names.kv_usage).map(|v| v.clamp(0.0, 1.0)),
    })
}

/// The sum of the samples the first matching selector of `selectors` picks.
fn first(samples: &[Sample], selectors: &[String]) -> Option<f64> {
    selectors
        .iter()
        .find_map(|s| sum(samples, &Selector::parse(s)))
}

fn sum(samples: &[Sample], selector: &Selector) -> Option<f64> {
    let mut total = None;
    for sample in samples.iter().filter(|s| selector.matches(s)) {
        let value = match sample.value {
            Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
            _ => continue,
        };
        *total.get_or_insert(0.0) += value;
    }
    total
}

/// `name` or `name{label="value",…}`.
struct Selector {
    name: String,
    labels: Vec<(String, String)>,
}

impl Selector {
    fn parse(selector: &str) -> Self {
        let (name, labels) = match selector.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (selector, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((
                    key.trim().to_owned(),
                    value.trim().trim_matches('"').to_owned(),
                ))
            })
            .collect();
        Selector {
            name: name.trim().replace(':', COLON),
            labels,
        }
    }

    fn matches(&self, sample: &Sample) -> bool {
        sample.metric == self.name
            && self
                .labels
                .iter()
                .all(|(k, v)| sample.labels.get(k) == Some(v.as_str()))
    }
}

/// The line with colons in its metric name (a sample's first word, a comment's third) escaped.
fn escape_name(line: &str) -> String {
    let trimmed = line.trim_start();
    let (prefix, rest) = match trimmed.strip_prefix('#') {
        Some(comment) => {
            let mut words = comment
                .splitn(3, char::is_whitespace)
                .filter(|w| !w.is_empty());
            match (words.next(), words.next()) {
                (Some(kind @ ("HELP" | "TYPE")), Some(_)) => {
                    let at = trimmed.find(kind).unwrap_or(0) + kind.len();
                    let after = &trimmed[at..];
                    let start = at + (after.len() - after.trim_start().len());
                    (&trimmed[..start], &trimmed[start..])
                }
                _ => return line.to_owned(),
            }
        }
        None => ("", trimmed),
    };
    let end = rest
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(rest.len());
    format!(
        "{prefix}{}{}",
        rest[..end].replace(':', COLON),
        &rest[end..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MetricsPreset, PodMetricsSettings};

    fn names(preset: MetricsPreset) -> MetricNames {
        PodMetricsSettings {
            preset,
            ..PodMetricsSettings::default()
        }
        .names()
    }

    #[test]
    fn reads_a_vllm_page_with_colons_and_labels() {
        let page = "# HELP vllm:num_requests_running Number of requests running.\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"a:b\"} 3\n\
                    vllm:num_requests_running{model_name=\"c\"} 2\n\
                    # TYPE vllm:num_requests_waiting gauge\n\
                    vllm:num_requests_waiting{model_name=\"a:b\"} 1\n\
                    vllm:gpu_cache_usage_perc{model_name=\"a:b\"} 0.25\n";
        let values = read(page, &names(MetricsPreset::Vllm)).unwrap();
        assert_eq!(
            values,
            Values {
                running: 5.0,
                waiting: 1.0,
                kv_usage: Some(0.25)
            }
        );
    }

    #[test]
    fn label_selectors_and_missing_metrics() {
        let page = "nv_trt_llm_request_metrics{request_type=\"active\"} 4\n\
                    nv_trt_llm_request_metrics{request_type=\"max\"} 64\n\
                    nv_inference_pending_request_count{model=\"m\"} 2\n";
        let values = read(page, &names(MetricsPreset::Triton)).unwrap();
        assert_eq!(
            (values.running, values.waiting, values.kv_usage),
            (4.0, 2.0, None)
        );
        let error = read("other_metric 1\n", &names(MetricsPreset::Tgi)).unwrap_err();
        assert!(error.contains("tgi_batch_current_size"), "{error}");
    }
}

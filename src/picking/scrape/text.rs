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
use crate::picking::load::{Report, TokenLatency};

/// The weight of the latest interval in a pod's time-per-token estimate (the rest is the
/// previous estimate's): smooths what a batch's make-up does to a short interval.
const SMOOTHING: f64 = 0.5;

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
    /// The time-per-output-token histogram's sum and count, when the page has it.
    pub token_latency: Option<TokenLatency>,
}

impl Values {
    /// The report these values make, with this router's count at the scrape and the pod's
    /// `previous` report: the time per token is the mean since then, averaged with the
    /// previous estimate ([`SMOOTHING`]).
    pub fn report(self, ours_at_scrape: u32, previous: Option<&Report>) -> Report {
        let earlier = previous.and_then(|p| p.token_latency.map(|t| (t, p.seconds_per_token)));
        Report {
            running: self.running,
            waiting: self.waiting,
            kv_usage: self.kv_usage,
            token_latency: self.token_latency,
            seconds_per_token: self
                .token_latency
                .and_then(|now| seconds_per_token(now, earlier)),
            ours_at_scrape,
            at: Instant::now(),
        }
    }
}

/// The time per token since the `earlier` histogram (with the estimate made then), averaged
/// with that estimate; the whole mean on a first scrape.
fn seconds_per_token(
    now: TokenLatency,
    earlier: Option<(TokenLatency, Option<f64>)>,
) -> Option<f64> {
    let Some((before, estimate)) = earlier else {
        return now.mean();
    };
    match (now.mean_since(&before), estimate) {
        (Some(since), Some(estimate)) => Some(SMOOTHING * since + (1.0 - SMOOTHING) * estimate),
        (since, estimate) => since.or(estimate),
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
        token_latency: token_latency(&scrape.samples, &names.token_latency),
    })
}

/// The sum and count of the first histogram of `names` on the page.
fn token_latency(samples: &[Sample], names: &[String]) -> Option<TokenLatency> {
    names.iter().find_map(|name| {
        let suffixed = |suffix: &str| match name.split_once('{') {
            Some((base, labels)) => format!("{base}{suffix}{{{labels}"),
            None => format!("{name}{suffix}"),
        };
        Some(TokenLatency {
            sum: sum(samples, &Selector::parse(&suffixed("_sum")))?,
            count: sum(samples, &Selector::parse(&suffixed("_count")))?,
        })
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
                kv_usage: Some(0.25),
                token_latency: None,
            }
        );
    }

    #[test]
    fn reads_the_time_per_token_histogram() {
        let page = "# TYPE vllm:time_per_output_token_seconds histogram\n\
                    vllm:time_per_output_token_seconds_bucket{model_name=\"m\",le=\"0.05\"} 30\n\
                    vllm:time_per_output_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 40\n\
                    vllm:time_per_output_token_seconds_sum{model_name=\"m\"} 1.2\n\
                    vllm:time_per_output_token_seconds_count{model_name=\"m\"} 40\n\
                    vllm:num_requests_running{model_name=\"m\"} 3\n";
        let values = read(page, &names(MetricsPreset::Vllm)).unwrap();
        let latency = values.token_latency.unwrap();
        assert_eq!((latency.sum, latency.count), (1.2, 40.0));
        // The first report's estimate is the page's mean; later ones the mean since the last
        // (here 2 s over 20 tokens), averaged with the estimate before.
        let first = values.report(0, None);
        assert!((first.seconds_per_token.unwrap() - 0.03).abs() < 1e-9);
        let later = Values {
            token_latency: Some(TokenLatency {
                sum: 3.2,
                count: 60.0,
            }),
            ..values
        };
        let second = later.report(0, Some(&first));
        assert!((second.seconds_per_token.unwrap() - 0.065).abs() < 1e-9);
        // No token since: the last estimate stays.
        let idle = later.report(0, Some(&second));
        assert_eq!(idle.seconds_per_token, second.seconds_per_token);
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

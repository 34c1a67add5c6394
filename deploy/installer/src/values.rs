//! The syntax of the values settings beyond az's take: tolerations, resource quantities, name
//! lists, annotation keys, IP addresses. Each parser says what is wrong and how to write it.

use std::cmp::Ordering;
use std::net::IpAddr;

use crate::names::{check_dns_subdomain, check_label_key, check_label_value};

/// One toleration, as `kubectl taint` writes a taint: `key=value:Effect` tolerates that taint
/// (operator `Equal`), `key:Effect` any value of it, `key` every effect (operator `Exists`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TolerationSpec {
    /// The taint's key.
    pub key: String,
    /// Its value (operator `Equal`), or none (operator `Exists`).
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; none tolerates every effect.
    pub effect: Option<String>,
}

const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Parses a comma-separated list of tolerations (see [`TolerationSpec`]).
pub fn parse_tolerations(text: &str) -> Result<Vec<TolerationSpec>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (taint, effect) = match item.rsplit_once(':') {
            Some((taint, effect)) => {
                let Some(effect) = EFFECTS.iter().find(|e| e.eq_ignore_ascii_case(effect)) else {
                    return Err(format!(
                        "`{item}`: `{effect}` is not a taint effect: use NoSchedule, PreferNoSchedule or NoExecute"
                    ));
                };
                (taint, Some((*effect).to_owned()))
            }
            None => (item, None),
        };
        let (key, value) = match taint.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (taint, None),
        };
        check_label_key(key).map_err(|e| {
            format!(
                "`{item}`: the taint key {e}; write key[=value][:Effect], e.g. sku=gpu:NoSchedule"
            )
        })?;
        if let Some(value) = value {
            check_label_value(value)
                .map_err(|e| format!("`{item}`: the taint value `{value}` is not valid ({e})"))?;
        }
        out.push(TolerationSpec {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            effect,
        });
    }
    Ok(out)
}

/// A resource quantity in Kubernetes notation, kept as written and compared by value.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    /// As written (e.g. `900m`, `1200Mi`).
    pub text: String,
    /// Its value in base units (cores, bytes).
    pub value: f64,
}

const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1_048_576.0),
    ("Gi", 1_073_741_824.0),
    ("Ti", 1_099_511_627_776.0),
    ("m", 0.001),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("", 1.0),
];

/// Parses a quantity: a decimal number and an optional suffix (`m`, `k`, `M`, `G`, `T`, `Ki`,
/// `Mi`, `Gi`, `Ti`).
pub fn parse_quantity(text: &str) -> Result<Quantity, String> {
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| {
            text.strip_suffix(suffix)
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .map(|n| (n, *factor))
        })
        .ok_or_else(|| {
            format!("`{text}` is not a quantity: write a number with an optional suffix, e.g. 500m or 2 (CPU), 512Mi or 2Gi (memory)")
        })?;
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a quantity: `{number}` is not a number"))?;
    if value <= 0.0 {
        return Err(format!("`{text}` must be more than 0"));
    }
    Ok(Quantity {
        text: text.to_owned(),
        value: value * factor,
    })
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.value.partial_cmp(&other.value)
    }
}

/// Parses a comma-separated list of object names (DNS subdomains), e.g. Secret names.
pub fn parse_names(text: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err("is empty: give one or more names separated by commas".to_owned());
    }
    for name in &names {
        check_dns_subdomain(name).map_err(|e| format!("`{name}` is not a name ({e})"))?;
    }
    Ok(names)
}

/// Parses a comma-separated list of namespaces (DNS labels: no dots, at most 63 characters).
pub fn parse_namespaces(text: &str) -> Result<Vec<String>, String> {
    let names = parse_names(text)?;
    if let Some(bad) = names.iter().find(|n| n.contains('.') || n.len() > 63) {
        return Err(format!(
            "`{bad}` is not a namespace name: at most 63 lowercase letters, digits and `-`"
        ));
    }
    Ok(names)
}

/// Checks an annotation key: `[prefix/]name`, as a label key.
pub fn check_annotation_key(key: &str) -> Result<(), String> {
    check_label_key(key)
}

/// Parses an IP address.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IP address: write e.g. 20.30.40.50"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_in_taint_syntax() {
        let t =
            parse_tolerations("sku=gpu:NoSchedule, nvidia.com/gpu:noschedule,dedicated").unwrap();
        assert_eq!(
            t[0],
            TolerationSpec {
                key: "sku".into(),
                value: Some("gpu".into()),
                effect: Some("NoSchedule".into())
            }
        );
        assert_eq!(t[1].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(
            (t[2].value.as_deref(), t[2].effect.as_deref()),
            (None, None)
        );
        assert!(parse_tolerations("sku=gpu:Never")
            .unwrap_err()
            .contains("not a taint effect"));
        assert!(parse_tolerations("bad key:NoSchedule").is_err());
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(parse_quantity("900m").unwrap() < parse_quantity("1").unwrap());
        assert!(parse_quantity("1Gi").unwrap() > parse_quantity("1000Mi").unwrap());
        assert!(parse_quantity("1G").unwrap() < parse_quantity("1Gi").unwrap());
        assert!(parse_quantity("lots").is_err());
        assert!(parse_quantity("0").is_err());
        assert!(parse_quantity("Mi").is_err());
    }

    #[test]
    fn names_and_namespaces() {
        assert_eq!(parse_names("a, b").unwrap(), vec!["a", "b"]);
        assert!(parse_names("").is_err());
        assert!(parse_names("Bad").is_err());
        assert!(parse_namespaces("team.a").is_err());
    }
}

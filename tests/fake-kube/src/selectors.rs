//! Label and field selectors, parsed from `labelSelector`/`fieldSelector` query parameters.

use serde_json::Value;

use crate::status::ApiError;

#[derive(Clone, Debug, PartialEq)]
enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// Label requirements and field equalities, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Filter {
    labels: Vec<(String, LabelOp)>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    /// Parses the two selectors; `None` means "no selector".
    pub(crate) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut filter = Self::default();
        for term in split_terms(labels.unwrap_or_default()) {
            filter.labels.push(parse_label_term(&term)?);
        }
        for term in split_terms(fields.unwrap_or_default()) {
            filter.fields.push(parse_field_term(&term)?);
        }
        Ok(filter)
    }

    /// Whether the object satisfies every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|(key, op)| match op {
            LabelOp::In(values) => label(key).is_some_and(|v| values.iter().any(|x| x == v)),
            LabelOp::NotIn(values) => label(key).is_none_or(|v| !values.iter().any(|x| x == v)),
            LabelOp::Exists => label(key).is_some(),
            LabelOp::NotExists => label(key).is_none(),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|(path, equal, value)| (field_value(obj, path) == *value) == *equal)
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(selector: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn valid_key(key: &str) -> Result<String, ApiError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid selector key {key:?}"
        )))
    }
}

fn parse_label_term(term: &str) -> Result<(String, LabelOp), ApiError> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok((valid_key(key.trim())?, LabelOp::NotExists));
    }
    if let Some((key, rest)) = term.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        let (negate, set) = if let Some(set) = rest.strip_prefix("notin") {
            (true, set)
        } else if let Some(set) = rest.strip_prefix("in") {
            (false, set)
        } else {
            return parse_label_term(&term.split_whitespace().collect::<String>());
        };
        let inner = set
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| ApiError::bad_request(format!("invalid set in selector {term:?}")))?;
        let values = inner.split(',').map(|v| v.trim().to_string()).collect();
        let op = if negate {
            LabelOp::NotIn(values)
        } else {
            LabelOp::In(values)
        };
        return Ok((valid_key(key)?, op));
    }
    if term.contains(['<', '>']) {
        return Err(ApiError::bad_request(format!(
            "unsupported selector operator in {term:?}"
        )));
    }
    match parse_equality(term) {
        Some((key, true, value)) => Ok((valid_key(&key)?, LabelOp::In(vec![value]))),
        Some((key, false, value)) => Ok((valid_key(&key)?, LabelOp::NotIn(vec![value]))),
        None => Ok((valid_key(term)?, LabelOp::Exists)),
    }
}

fn parse_field_term(term: &str) -> Result<(String, bool, String), ApiError> {
    let (path, equal, value) = parse_equality(term)
        .ok_or_else(|| ApiError::bad_request(format!("invalid field selector {term:?}")))?;
    Ok((valid_key(&path)?, equal, value))
}

/// `k=v`, `k==v` → (k, true, v); `k!=v` → (k, false, v).
fn parse_equality(term: &str) -> Option<(String, bool, String)> {
    let (key, value, equal) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, v, true)
    } else {
        let (k, v) = term.split_once('=')?;
        (k, v, true)
    };
    Some((key.trim().to_string(), equal, value.trim().to_string()))
}

/// The string value of a dotted field path (`metadata.name`, `status.phase`, ...).
fn field_value(obj: &Value, path: &str) -> String {
    let pointer = format!("/{}", path.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| Filter::parse(Some(s), None).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (db, web)"));
        assert!(!m("app notin (db,web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("missing!=x"));
        assert!(m(""));
        assert!(Filter::parse(Some("a in (x"), None).is_err());
        assert!(Filter::parse(Some("a>1"), None).is_err());
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let m = |s: &str| Filter::parse(None, Some(s)).unwrap().matches(&o);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.namespace==ns,metadata.name!=b"));
        assert!(!m("metadata.name=b"));
        assert!(Filter::parse(None, Some("nonsense")).is_err());
    }
}

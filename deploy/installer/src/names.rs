//! Kubernetes' name rules, as the settings and the values parsers both check them: host names,
//! object names (DNS-1123 subdomains), label keys and label values. Each check says what is
//! wrong, for the caller to put in its own message.

fn check_dns_label(label: &str, max: usize) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty part".into());
    }
    if label.len() > max {
        return Err(format!("`{label}` is longer than {max} characters"));
    }
    if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "`{label}` has characters other than letters, digits and `-`"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("`{label}` starts or ends with `-`"));
    }
    Ok(())
}

/// A host name: dot-separated labels of letters, digits and `-`, at most 253 characters.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    name.split('.').try_for_each(|l| check_dns_label(l, 63))
}

/// A Kubernetes object name (DNS-1123 subdomain): lowercase, at most 253 characters.
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("has upper-case letters".into());
    }
    check_dns_name(name)
}

/// A Kubernetes label (or annotation) key: `[prefix/]name`, the prefix a DNS subdomain, the name
/// at most 63 characters of letters, digits, `-`, `_` and `.`, starting and ending alphanumeric.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix)
            .map_err(|e| format!("the key prefix `{prefix}` is not a DNS subdomain ({e})"))?;
    }
    if name.is_empty() {
        return Err("has no key name after its prefix".into());
    }
    check_label_value(name).map_err(|e| format!("`{name}` is not a label name ({e})"))
}

/// A Kubernetes label value: empty, or at most 63 characters of letters, digits, `-`, `_` and `.`,
/// starting and ending alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err("longer than 63 characters".into());
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("only letters, digits, `-`, `_` and `.` are allowed".into());
    }
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !ends_ok(value.chars().next()) || !ends_ok(value.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_syntax() {
        assert!(check_label_key("kubernetes.io/os").is_ok());
        assert!(check_label_key("agentpool").is_ok());
        assert!(check_label_key("Bad Key").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("-x").is_err());
    }
}

//! "Did you mean": the known key nearest to a misspelt one.

/// Levenshtein distance between `a` and `b`, comparing ASCII case-insensitively.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The candidate nearest to `input`, if it is near enough to be a plausible typo: at most a third
/// of the input's length away (and at least 2 edits are always allowed). Ties go to the first.
pub fn nearest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (input.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (distance(input, c), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_differences_cost_nothing() {
        assert_eq!(distance("InferenceRouterHA", "inferenceRouterHA"), 0);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn nearest_needs_to_be_near() {
        let keys = ["enableTraining", "enableInference", "sslCname"];
        assert_eq!(nearest("enableInferance", keys), Some("enableInference"));
        assert_eq!(nearest("sslCName", keys), Some("sslCname"));
        assert_eq!(nearest("replicas", keys), None);
    }
}

//! What the installer reports: problems that stop it (each naming the setting and the fix) and
//! notices that do not.

use std::fmt;

/// A setting that cannot be used as given. The message says what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The setting (or settings, comma-separated) at fault, as the user spells them.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one pass, so the user fixes them all at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Adds a problem.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }

    /// Adds every problem of `other`.
    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, Problems> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The message of the problem with `key`, if any (for tests and callers that branch on it).
    pub fn message_for(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.message.as_str())
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid setting: {one}"),
            many => {
                write!(f, "{} invalid settings:", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Something the user should know that does not stop the installer: a default it changed, a
/// setting it ignores, a component it does not install.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Notice {
    /// The setting it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What happened and what to do about it.
    pub message: String,
}

impl Notice {
    /// A notice about `key`.
    pub fn about(key: impl Into<String>, message: impl Into<String>) -> Self {
        Notice {
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// A notice about no setting in particular.
    pub fn general(message: impl Into<String>) -> Self {
        Notice {
            key: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

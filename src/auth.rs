//! Client authentication, Azure ML style: `Authorization: Bearer <credential>`.
//!
//! Key mode accepts the endpoint's primary or secondary key. The presented key is compared
//! with both in constant time, and both comparisons always run, so timing reveals neither the
//! keys' bytes nor which key matched (only, as with any constant-time compare of unequal-length
//! inputs, whether the lengths differ).
//!
//! Token mode (`aml_token`) accepts an HS256 JWT whose audience is the endpoint, issued by
//! `scoregate token`, signed with the primary key and verified with either key (so rotating keys
//! does not invalidate tokens signed with the key that stays). Tokens expire; keys don't
//! (`docs/ARCHITECTURE.md`, "Authentication").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};

use crate::model::{AuthMode, EndpointKeys};

/// The issuer claim of scoregate tokens.
pub const TOKEN_ISSUER: &str = "scoregate";
/// Clock skew tolerated when checking `exp` and `nbf`, in seconds.
const TOKEN_LEEWAY_SECS: u64 = 30;

/// Why a request was refused with 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A credential that is not a key of this endpoint.
    InvalidKey,
    /// A token that is malformed, badly signed, or for another endpoint.
    InvalidToken,
    /// A token past its expiry.
    ExpiredToken,
}

impl AuthError {
    /// A message for the client: what is wrong and what to do.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "credentials are missing: send `Authorization: Bearer <key or token>` for this endpoint"
            }
            AuthError::InvalidKey => "the key is not valid for this endpoint: use its primary or secondary key",
            AuthError::InvalidToken => "the token is not valid for this endpoint: get a new token for it",
            AuthError::ExpiredToken => "the token has expired: get a new token",
        }
    }
}

/// Verifies the credentials of one endpoint.
pub struct Authenticator {
    mode: Verifier,
}

enum Verifier {
    Key {
        primary: Box<[u8]>,
        secondary: Option<Box<[u8]>>,
    },
    Token {
        keys: Vec<DecodingKey>,
        validation: Box<Validation>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    aud: String,
    iss: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl Authenticator {
    /// The verifier for an endpoint named `endpoint` with `mode` and `keys`.
    pub fn new(endpoint: &str, mode: AuthMode, keys: &EndpointKeys) -> Self {
        let mode = match mode {
            AuthMode::Key => Verifier::Key {
                primary: keys.primary.as_bytes().into(),
                secondary: keys.secondary.as_deref().map(|k| k.as_bytes().into()),
            },
            AuthMode::AmlToken => {
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_audience(&[endpoint]);
                validation.set_issuer(&[TOKEN_ISSUER]);
                validation.set_required_spec_claims(&["exp", "aud", "iss", "nbf"]);
                validation.validate_nbf = true;
                validation.leeway = TOKEN_LEEWAY_SECS;
                let keys = std::iter::once(&keys.primary)
                    .chain(keys.secondary.as_ref())
                    .map(|k| DecodingKey::from_secret(k.as_bytes()))
                    .collect();
                Verifier::Token {
                    keys,
                    validation: Box::new(validation),
                }
            }
        };
        Authenticator { mode }
    }

    /// Checks the value of the request's `Authorization` field (`None`: it has none).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        let credential = bearer(authorization).ok_or(AuthError::Missing)?;
        match &self.mode {
            Verifier::Key { primary, secondary } => {
                let primary_ok = ct_eq_bytes(credential, primary);
                // Without a secondary key, compare against the primary again and discard the
                // result, so the work done is the same either way.
                let secondary_ok = ct_eq_bytes(credential, secondary.as_deref().unwrap_or(primary))
                    & Choice::from(u8::from(secondary.is_some()));
                if bool::from(primary_ok | secondary_ok) {
                    Ok(())
                } else {
                    Err(AuthError::InvalidKey)
                }
            }
            Verifier::Token { keys, validation } => {
                let token = std::str::from_utf8(credential).map_err(|_| AuthError::InvalidToken)?;
                let mut outcome = Err(AuthError::InvalidToken);
                for key in keys {
                    match jsonwebtoken::decode::<Claims>(token, key, validation) {
                        Ok(_) => return Ok(()),
                        Err(e) if *e.kind() == ErrorKind::ExpiredSignature => {
                            outcome = Err(AuthError::ExpiredToken)
                        }
                        Err(_) => {}
                    }
                }
                outcome
            }
        }
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only (as `subtle`'s
/// comparison of slices, which returns at once when the lengths differ): eight bytes at a time,
/// each word compared through `subtle`'s optimisation barrier as its slices compare each byte,
/// the last bytes one by one.
fn ct_eq_bytes(a: &[u8], b: &[u8]) -> Choice {
    if a.len() != b.len() {
        return Choice::from(0);
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words.remainder().ct_eq(b_words.remainder());
    let word = |bytes: &[u8]| <[u8; 8]>::try_from(bytes).map_or(0, u64::from_ne_bytes);
    a_words
        .zip(b_words)
        .fold(tail, |equal, (x, y)| equal & word(x).ct_eq(&word(y)))
}

/// The credential of an `Authorization: Bearer <credential>` value (scheme case-insensitive).
fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let value = authorization?;
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let credential = rest.trim_ascii();
    (!credential.is_empty()).then_some(credential)
}

/// A token as `az ml online-endpoint get-credentials` reports one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    /// The bearer token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// When the token stops working (RFC 3339, UTC).
    pub expiry_time_utc: String,
    /// When a client should fetch a new one: halfway through its life (RFC 3339, UTC).
    pub refresh_after_time_utc: String,
}

/// Mints a token for `endpoint`, valid for `ttl` from `now`, signed with the endpoint's primary key.
pub fn issue_token(
    endpoint: &str,
    keys: &EndpointKeys,
    ttl: Duration,
    now: SystemTime,
) -> anyhow::Result<IssuedToken> {
    let iat = now.duration_since(UNIX_EPOCH)?.as_secs();
    let exp = iat + ttl.as_secs().max(1);
    let refresh = iat + ttl.as_secs().max(1) / 2;
    let claims = Claims {
        aud: endpoint.to_owned(),
        iss: TOKEN_ISSUER.to_owned(),
        iat,
        nbf: iat,
        exp,
    };
    let access_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(keys.primary.as_bytes()),
    )?;
    Ok(IssuedToken {
        access_token,
        token_type: "Bearer",
        expiry_time_utc: rfc3339(exp)?,
        refresh_after_time_utc: rfc3339(refresh)?,
    })
}

fn rfc3339(unix_secs: u64) -> anyhow::Result<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)?;
    Ok(t.format(&time::format_description::well_known::Rfc3339)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(primary: &str, secondary: Option<&str>) -> EndpointKeys {
        EndpointKeys {
            primary: primary.into(),
            secondary: secondary.map(Into::into),
        }
    }

    fn with_auth(value: &str) -> Option<&[u8]> {
        Some(value.as_bytes())
    }

    /// The word-wise comparison says what `==` says, for every length around the word size and
    /// a difference at every position (the tail's and the words').
    #[test]
    fn constant_time_comparison_agrees_with_equality() {
        for len in 0..=26 {
            let key: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(bool::from(ct_eq_bytes(&key, &key.clone())), "{len}");
            for at in 0..len {
                let mut other = key.clone();
                other[at] ^= 0x20;
                assert!(!bool::from(ct_eq_bytes(&key, &other)), "{len} {at}");
            }
            let longer = [key.as_slice(), b"x"].concat();
            assert!(!bool::from(ct_eq_bytes(&key, &longer)), "{len}");
        }
    }

    #[test]
    fn key_mode_accepts_both_keys() {
        let a = Authenticator::new("ep-one", AuthMode::Key, &keys("key-one", Some("key-two")));
        assert_eq!(a.check(with_auth("Bearer key-one")), Ok(()));
        assert_eq!(a.check(with_auth("bearer key-two")), Ok(()));
        assert_eq!(
            a.check(with_auth("Bearer key-three")),
            Err(AuthError::InvalidKey)
        );
        assert_eq!(a.check(with_auth("key-one")), Err(AuthError::Missing));
        assert_eq!(a.check(with_auth("Bearer ")), Err(AuthError::Missing));
        assert_eq!(a.check(None), Err(AuthError::Missing));
    }

    #[test]
    fn key_mode_without_secondary_rejects_the_fallback_digest() {
        let a = Authenticator::new("ep-one", AuthMode::Key, &keys("key-one", None));
        assert_eq!(
            a.check(with_auth("Bearer key-two")),
            Err(AuthError::InvalidKey)
        );
    }

    #[test]
    fn token_mode_checks_signature_audience_and_expiry() {
        let k = keys("signing-key-1", Some("signing-key-2"));
        let a = Authenticator::new("ep-one", AuthMode::AmlToken, &k);
        let now = SystemTime::now();
        let good = issue_token("ep-one", &k, Duration::from_secs(3600), now).unwrap();
        assert_eq!(
            a.check(with_auth(&format!("Bearer {}", good.access_token))),
            Ok(())
        );

        let other_endpoint = issue_token("ep-two", &k, Duration::from_secs(3600), now).unwrap();
        assert_eq!(
            a.check(with_auth(&format!(
                "Bearer {}",
                other_endpoint.access_token
            ))),
            Err(AuthError::InvalidToken)
        );

        let old = issue_token(
            "ep-one",
            &k,
            Duration::from_secs(60),
            now - Duration::from_secs(7200),
        )
        .unwrap();
        assert_eq!(
            a.check(with_auth(&format!("Bearer {}", old.access_token))),
            Err(AuthError::ExpiredToken)
        );

        let forged = issue_token(
            "ep-one",
            &keys("not-the-key", None),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
        assert_eq!(
            a.check(with_auth(&format!("Bearer {}", forged.access_token))),
            Err(AuthError::InvalidToken)
        );
        assert_eq!(
            a.check(with_auth("Bearer signing-key-1")),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn tokens_survive_rotation_to_the_secondary_key() {
        let before = keys("old-key", Some("new-key"));
        let token = issue_token(
            "ep-one",
            &before,
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
        let after = keys("new-key", Some("old-key"));
        let a = Authenticator::new("ep-one", AuthMode::AmlToken, &after);
        assert_eq!(
            a.check(with_auth(&format!("Bearer {}", token.access_token))),
            Ok(())
        );
    }

    #[test]
    fn issued_token_reports_times_like_az() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = issue_token("ep-one", &keys("k", None), Duration::from_secs(3600), now).unwrap();
        assert_eq!(t.expiry_time_utc, "2027-01-15T09:00:00Z");
        assert_eq!(t.refresh_after_time_utc, "2027-01-15T08:30:00Z");
        assert_eq!(t.token_type, "Bearer");
    }
}

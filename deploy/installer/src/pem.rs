//! Certificate checks before install, with the router's own parser (`scoregate::tls::load_pair`):
//! the pair parses, the key is not passphrase-protected and matches the certificate, the
//! certificate has not expired, and `sslCname` is one of its names. Azure ML finds these only at
//! install time (Azure ML's healthcheck `E40007 INVALID_SSL_SETTING`).

use std::path::Path;
use std::time::SystemTime;

use scoregate::tls::{load_pair, name_matches, CertError, CertInfo, EXPIRY_WARNING_DAYS};

use crate::problem::Notice;

/// A certificate pair that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedPair {
    /// The certificate chain, PEM, as given.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM, as given.
    pub key_pem: Vec<u8>,
    /// What the router will report about it.
    pub info: CertInfo,
}

/// Which input a failed check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// The certificate.
    Cert,
    /// The private key.
    Key,
    /// The two together (they do not belong together).
    Pair,
    /// `sslCname`.
    Cname,
}

/// Reads one PEM file; the message names the file and says what to give instead.
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read `{}`: {e}: give the path to the {what} (PEM) on this machine",
            path.display()
        )
    })
}

/// Checks a pair; `cname` (if given) must be among the certificate's names. On success, also
/// returns a notice when the certificate expires within [`EXPIRY_WARNING_DAYS`].
pub fn check(
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    origin: &str,
    cname: Option<&str>,
    now: SystemTime,
) -> Result<(CheckedPair, Option<Notice>), (Culprit, String)> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let (_, info) = load_pair(&cert_pem, &key_pem, origin, &provider).map_err(|e| {
        let culprit = match e {
            CertError::ReadCert { .. }
            | CertError::NoCertificate { .. }
            | CertError::BadCertificate { .. } => Culprit::Cert,
            CertError::ReadKey { .. }
            | CertError::EncryptedKey { .. }
            | CertError::NoKey { .. }
            | CertError::UnusableKey { .. } => Culprit::Key,
            CertError::KeyMismatch { .. } => Culprit::Pair,
        };
        (culprit, e.to_string())
    })?;
    let days_left = info.days_left(now);
    if days_left < 0 {
        return Err((
            Culprit::Cert,
            format!(
            "{origin}: the certificate ({}) expired {} days ago: renew it and give the new files",
            info.subject, -days_left
        ),
        ));
    }
    if let Some(cname) = cname {
        if !name_matches(&info.names, cname) {
            let names = if info.names.is_empty() {
                "none (it has no subjectAltName)".to_owned()
            } else {
                info.names.join(", ")
            };
            return Err((Culprit::Cname, format!(
                "{origin}: sslCname `{cname}` is not a name of the certificate (its names: {names}): set sslCname to one of them, or use a certificate issued for `{cname}`"
            )));
        }
    }
    let notice = (days_left < EXPIRY_WARNING_DAYS).then(|| {
        Notice::general(format!(
            "{origin}: the certificate expires in {days_left} days: renew it, then run `scoregate-ext update` with the new files"
        ))
    });
    Ok((
        CheckedPair {
            cert_pem,
            key_pem,
            info,
        },
        notice,
    ))
}

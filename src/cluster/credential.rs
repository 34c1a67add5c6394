//! The shared credential and the challenge-response that proves it both ways, once per
//! connection, without sending it.
//!
//! The connecting replica sends a fresh nonce `Nc` in `GET /v1/hello`; the answering replica
//! replies with its own fresh nonce `Ns` and `HMAC(secret, "server" ‖ Nc ‖ Ns)`, which the
//! connecting replica checks. The connecting replica then sends `HMAC(secret, "client" ‖ Ns)` in
//! `POST /v1/auth`; only then does the answering replica serve grants on that connection.

use std::path::Path;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderName;

/// A nonce, base64url.
pub static NONCE: HeaderName = HeaderName::from_static("x-scoregate-nonce");
/// A proof, base64url.
pub static PROOF: HeaderName = HeaderName::from_static("x-scoregate-proof");

/// Environment variable holding the credential when no file is configured.
pub const SECRET_ENV: &str = "SCOREGATE_CLUSTER_SECRET";

/// Shortest credential accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The shared credential, ready to sign and verify.
pub struct Credential {
    key: hmac::Key,
}

impl Credential {
    /// A credential from its bytes; refuses short ones.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the cluster credential is {} bytes: use at least {MIN_SECRET_BYTES} random bytes \
                 (for example `openssl rand -base64 32`)",
                secret.len()
            ));
        }
        Ok(Credential {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// Reads the credential from `file`, or from `$SCOREGATE_CLUSTER_SECRET` without one.
    /// Surrounding whitespace (a trailing newline) is not part of it.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let text = match file {
            Some(path) => std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read the cluster credential {} (cluster.secret_file): {e}",
                    path.display()
                )
            })?,
            None => std::env::var(SECRET_ENV)
                .map_err(|_| {
                    format!(
                        "coordinated admission needs a shared credential: set `cluster.secret_file` \
                         or the environment variable {SECRET_ENV} to the same value on every replica"
                    )
                })?
                .into_bytes(),
        };
        Credential::new(text.trim_ascii())
    }

    /// A new random credential: 32 bytes from the system's generator, base64url.
    pub fn generate() -> Result<String, String> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| "the system's random generator failed".to_string())?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A fresh random nonce.
    pub fn nonce() -> String {
        let mut bytes = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            bytes = fastrand::u128(..).to_le_bytes();
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The answering replica's proof for the two nonces.
    pub fn server_proof(&self, client_nonce: &[u8], server_nonce: &[u8]) -> String {
        self.sign(&[b"server", client_nonce, server_nonce])
    }

    /// The connecting replica's proof for the answering replica's nonce.
    pub fn client_proof(&self, server_nonce: &[u8]) -> String {
        self.sign(&[b"client", server_nonce])
    }

    /// Whether `proof` is the answering replica's proof for the nonces (constant time).
    pub fn verify_server(&self, client_nonce: &[u8], server_nonce: &[u8], proof: &[u8]) -> bool {
        self.verify(&[b"server", client_nonce, server_nonce], proof)
    }

    /// Whether `proof` is the connecting replica's proof for `server_nonce` (constant time).
    pub fn verify_client(&self, server_nonce: &[u8], proof: &[u8]) -> bool {
        self.verify(&[b"client", server_nonce], proof)
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        for part in parts {
            context.update(&(part.len() as u32).to_be_bytes());
            context.update(part);
        }
        URL_SAFE_NO_PAD.encode(context.sign().as_ref())
    }

    fn verify(&self, parts: &[&[u8]], proof: &[u8]) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(proof) else {
            return false;
        };
        let mut message = Vec::new();
        for part in parts {
            message.extend_from_slice(&(part.len() as u32).to_be_bytes());
            message.extend_from_slice(part);
        }
        hmac::verify(&self.key, &message, &tag).is_ok()
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_and_nonces() {
        let a = Credential::new(b"0123456789abcdef-shared").unwrap();
        let b = Credential::new(b"0123456789abcdef-shared").unwrap();
        let other = Credential::new(b"another-secret-of-16+").unwrap();
        let (nc, ns) = (Credential::nonce(), Credential::nonce());
        assert_ne!(nc, ns);
        let proof = a.server_proof(nc.as_bytes(), ns.as_bytes());
        assert!(b.verify_server(nc.as_bytes(), ns.as_bytes(), proof.as_bytes()));
        assert!(!other.verify_server(nc.as_bytes(), ns.as_bytes(), proof.as_bytes()));
        assert!(!b.verify_server(ns.as_bytes(), nc.as_bytes(), proof.as_bytes()));
        let client = a.client_proof(ns.as_bytes());
        assert!(b.verify_client(ns.as_bytes(), client.as_bytes()));
        assert!(!b.verify_client(nc.as_bytes(), client.as_bytes()));
        assert!(!b.verify_server(nc.as_bytes(), ns.as_bytes(), client.as_bytes()));
        assert!(!b.verify_client(ns.as_bytes(), b"not base64 !!"));
    }

    #[test]
    fn short_secrets_are_refused_with_a_fix() {
        let e = Credential::new(b"short").unwrap_err();
        assert!(e.contains("openssl rand"), "{e}");
    }
}

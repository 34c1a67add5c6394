//! Secret `azureml-fe-tls`, made from `sslCertPemFile` and `sslKeyPemFile` with the keys Azure ML's
//! `sslSecret` uses (`cert.pem`, `key.pem`). With `sslSecret` nothing is rendered: the
//! Deployment projects the named Secret instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::meta;
use crate::pem::CheckedPair;

/// Secret `azureml-fe-tls` holding `pair`.
pub fn secret(pair: &CheckedPair, extension: &str) -> Secret {
    Secret {
        metadata: meta::namespaced(meta::TLS_SECRET, extension, "router"),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            ("cert.pem".to_owned(), ByteString(pair.cert_pem.clone())),
            ("key.pem".to_owned(), ByteString(pair.key_pem.clone())),
        ])),
        ..Secret::default()
    }
}

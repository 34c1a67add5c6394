//! TLS termination: rustls with a certificate that can be replaced without a restart.
//!
//! A [`CertStore`] holds the certificate new handshakes get. Sources offer it PEM pairs through
//! [`CertStore::offer`]: the files source ([`watch_files`], which sees atomic renames and the
//! symlink swap of Kubernetes Secret volumes) and the Kubernetes `sslSecret` source. A pair that
//! does not parse, whose key does not match its certificate, or whose key is encrypted, is
//! refused, logged and counted; the current certificate stays. Open connections keep the
//! certificate they were made with.
//!
//! Azure ML's router offers only TLS 1.2 (`docs/ARCHITECTURE.md`, "TLS");
//! scoregate offers 1.2 and 1.3, with the minimum configurable, and ALPN `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsVersion;
use crate::telemetry::{names, Metrics};
use crate::watch::FileWatcher;

/// A certificate is warned about when it expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Why a certificate pair was refused. Each message says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// The certificate file could not be read.
    #[error("{origin}: cannot read the certificate: {reason}")]
    ReadCert {
        /// Where it came from.
        origin: String,
        /// The I/O error.
        reason: String,
    },
    /// The key file could not be read.
    #[error("{origin}: cannot read the private key: {reason}")]
    ReadKey {
        /// Where it came from.
        origin: String,
        /// The I/O error.
        reason: String,
    },
    /// No `CERTIFICATE` block in the certificate PEM.
    #[error(
        "{origin}: no certificate found: expected PEM blocks `-----BEGIN CERTIFICATE-----`, server \
         certificate first, then intermediates"
    )]
    NoCertificate {
        /// Where it came from.
        origin: String,
    },
    /// The key is protected by a passphrase.
    #[error(
        "{origin}: the private key is encrypted with a passphrase, which scoregate (like Azure ML) does \
         not support: decrypt it with `openssl pkey -in key.pem -out key-plain.pem`"
    )]
    EncryptedKey {
        /// Where it came from.
        origin: String,
    },
    /// No private key block.
    #[error(
        "{origin}: no private key found: expected a PEM block `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC \
         PRIVATE KEY`"
    )]
    NoKey {
        /// Where it came from.
        origin: String,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("{origin}: the private key cannot be used: {reason}")]
    UnusableKey {
        /// Where it came from.
        origin: String,
        /// rustls's reason.
        reason: String,
    },
    /// The key belongs to another certificate.
    #[error(
        "{origin}: the private key does not match the certificate: check that the files belong \
         together (the public keys from `openssl x509 -in cert.pem -noout -pubkey` and `openssl pkey -in \
         key.pem -pubout` must be equal)"
    )]
    KeyMismatch {
        /// Where it came from.
        origin: String,
    },
    /// The first certificate could not be parsed.
    #[error("{origin}: the certificate cannot be parsed: {reason}")]
    BadCertificate {
        /// Where it came from.
        origin: String,
        /// The parser's reason.
        reason: String,
    },
}

/// What is known about the served certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Where it came from (file paths or Secret).
    pub origin: String,
    /// The leaf's subject.
    pub subject: String,
    /// DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// Certificates in the chain.
    pub chain_len: usize,
}

impl CertInfo {
    /// Seconds until expiry (negative once expired).
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_after_unix - now
    }

    /// Whole days until expiry, rounded toward zero: 1 for one day and some hours left, 0 within
    /// a day either side of expiry, -1 for a certificate that expired a day (and some hours) ago.
    pub fn days_left(&self, now: SystemTime) -> i64 {
        self.seconds_left(now) / 86_400
    }

    /// Days until expiry with their fraction, the value of `scoregate_tls_certificate_expiry_days`:
    /// below 0 from the second the certificate expires.
    pub fn fractional_days_left(&self, now: SystemTime) -> f64 {
        self.seconds_left(now) as f64 / 86_400.0
    }

    /// Whether the certificate has expired.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.seconds_left(now) < 0
    }
}

/// Parses and checks a PEM pair into what rustls serves.
pub fn load_pair(
    chain_pem: &[u8],
    key_pem: &[u8],
    origin: &str,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, CertInfo), CertError> {
    let origin = origin.to_owned();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate { origin });
    }
    let key_text = String::from_utf8_lossy(key_pem);
    if key_text.contains("ENCRYPTED PRIVATE KEY") || key_text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(CertError::EncryptedKey { origin });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::NoKey {
        origin: origin.clone(),
    })?;
    let info = describe(&chain, &origin)?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::UnusableKey {
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok((certified, info)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertError::KeyMismatch { origin })
        }
        Err(e) => Err(CertError::UnusableKey {
            origin,
            reason: e.to_string(),
        }),
    }
}

fn describe(chain: &[CertificateDer<'static>], origin: &str) -> Result<CertInfo, CertError> {
    use x509_parser::prelude::*;
    let (_, leaf) =
        X509Certificate::from_der(chain[0].as_ref()).map_err(|e| CertError::BadCertificate {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(octets).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        origin: origin.to_owned(),
        subject: leaf.subject().to_string(),
        names,
        not_after_unix: leaf.validity().not_after.timestamp(),
        chain_len: chain.len(),
    })
}

/// Whether `server_name` is one of `names` (exact, or matching a single-label `*.` wildcard).
pub fn name_matches(names: &[String], server_name: &str) -> bool {
    names.iter().any(|n| {
        n.eq_ignore_ascii_case(server_name)
            || n.strip_prefix("*.").is_some_and(|suffix| {
                server_name
                    .split_once('.')
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix))
            })
    })
}

/// The certificate new handshakes get, replaceable at any time.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    info: ArcSwap<CertInfo>,
    provider: Arc<CryptoProvider>,
    expected_name: Option<String>,
    applied: Counter,
    refused: Counter,
    days_left: Gauge,
    sni_mismatches: Counter,
    last_mismatch_log: AtomicU64,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("info", &self.info())
            .finish()
    }
}

impl CertStore {
    /// A store serving the first pair; fails with the pair's problem (startup refuses to run).
    pub fn new(
        chain_pem: &[u8],
        key_pem: &[u8],
        origin: &str,
        expected_name: Option<String>,
        metrics: &Metrics,
    ) -> Result<Arc<CertStore>, CertError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (key, info) = load_pair(chain_pem, key_pem, origin, &provider)?;
        let store = Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
            info: ArcSwap::from_pointee(info.clone()),
            provider,
            expected_name,
            applied: metrics.counter(names::TLS_RELOADS, &[("result", "applied")]),
            refused: metrics.counter(names::TLS_RELOADS, &[("result", "refused")]),
            days_left: metrics.gauge(names::TLS_EXPIRY_DAYS, &[]),
            sni_mismatches: metrics.counter(names::TLS_SNI_MISMATCHES, &[]),
            last_mismatch_log: AtomicU64::new(0),
        });
        store.applied.increment(1);
        store.note_new(&info);
        // Days left change with the clock, not with reloads: computed at every scrape.
        let weak = Arc::downgrade(&store);
        metrics.refresh_at_scrape(move || {
            if let Some(store) = weak.upgrade() {
                store.refresh_expiry_gauge();
            }
        });
        Ok(store)
    }

    /// Offers a new pair: served from the next handshake on if it is good; otherwise refused,
    /// logged and counted, and the current certificate stays.
    pub fn offer(
        &self,
        chain_pem: &[u8],
        key_pem: &[u8],
        origin: &str,
    ) -> Result<CertInfo, CertError> {
        match load_pair(chain_pem, key_pem, origin, &self.provider) {
            Ok((key, info)) => {
                self.current.store(Arc::new(key));
                self.info.store(Arc::new(info.clone()));
                self.applied.increment(1);
                tracing::info!(origin, subject = %info.subject, "TLS certificate replaced");
                self.note_new(&info);
                Ok(info)
            }
            Err(e) => {
                self.refused.increment(1);
                tracing::error!(
                    "{e}; keeping the current certificate ({})",
                    self.info().origin
                );
                Err(e)
            }
        }
    }

    /// What is served now.
    pub fn info(&self) -> CertInfo {
        (**self.info.load()).clone()
    }

    fn note_new(&self, info: &CertInfo) {
        let now = SystemTime::now();
        let days = info.days_left(now);
        self.days_left.set(info.fractional_days_left(now));
        if info.expired(now) {
            tracing::warn!(origin = %info.origin, days, "the TLS certificate has EXPIRED; it is still served: replace it");
        } else if days < EXPIRY_WARNING_DAYS {
            tracing::warn!(origin = %info.origin, days, "the TLS certificate expires soon: replace it");
        }
        if let Some(expected) = &self.expected_name {
            if !name_matches(&info.names, expected) {
                tracing::warn!(
                    expected = %expected,
                    names = ?info.names,
                    "the certificate is not valid for sslCname: clients checking the name will refuse it"
                );
            }
        }
    }

    /// Sets the days-left gauge from the served certificate and the clock.
    fn refresh_expiry_gauge(&self) {
        self.days_left
            .set(self.info().fractional_days_left(SystemTime::now()));
    }

    fn note_server_name(&self, sni: Option<&str>) {
        let Some(expected) = &self.expected_name else {
            return;
        };
        if sni.is_some_and(|s| s.eq_ignore_ascii_case(expected)) {
            return;
        }
        self.sni_mismatches.increment(1);
        // At most one log line a minute: clients connecting by IP would flood it otherwise.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_mismatch_log.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .last_mismatch_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(expected = %expected, sni = ?sni, "TLS client asked for another server name (served anyway)");
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.note_server_name(client_hello.server_name());
        Some(self.current.load_full())
    }
}

/// Builds the rustls server configuration: versions from `min_version` up to 1.3, ALPN `h2` and
/// `http/1.1`, session resumption on or off.
pub fn server_config(
    store: Arc<CertStore>,
    min_version: TlsVersion,
    session_resumption: bool,
) -> anyhow::Result<ServerConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let provider = store.provider.clone();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if session_resumption {
        config.session_storage = ServerSessionMemoryCache::new(4096);
    } else {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// Reads a certificate file and a key file into a pair offer, naming the file that failed.
pub fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let cert = std::fs::read(cert_file).map_err(|e| CertError::ReadCert {
        origin: cert_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let key = std::fs::read(key_file).map_err(|e| CertError::ReadKey {
        origin: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((cert, key))
}

/// The origin text for a files pair.
pub fn files_origin(cert_file: &Path, key_file: &Path) -> String {
    format!("{} + {}", cert_file.display(), key_file.display())
}

/// How long file events are gathered before one reload: writers of two files (or a Secret
/// volume's swap) finish within it.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches the certificate and key files (see [`crate::watch`]) and offers the pair to
/// `store` whenever either changes. Returns the watching task.
pub fn watch_files(
    store: Arc<CertStore>,
    cert_file: PathBuf,
    key_file: PathBuf,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut watcher = FileWatcher::new(&[cert_file.clone(), key_file.clone()])?;
    let mut last = read_pair(&cert_file, &key_file).ok();
    Ok(tokio::spawn(async move {
        while watcher.changed(DEBOUNCE).await {
            let pair = match read_pair(&cert_file, &key_file) {
                Ok(pair) => pair,
                Err(e) => {
                    // A swap in progress can briefly remove a file; the next event retries.
                    tracing::debug!("{e}");
                    continue;
                }
            };
            if last.as_ref() == Some(&pair) {
                continue;
            }
            let _ = store.offer(&pair.0, &pair.1, &files_origin(&cert_file, &key_file));
            last = Some(pair);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::aws_lc_rs::default_provider()
    }

    #[test]
    fn good_pair_loads_with_names() {
        let (cert, key) = pair(&["ml.example.com", "127.0.0.1"]);
        let (_, info) = load_pair(cert.as_bytes(), key.as_bytes(), "test", &provider()).unwrap();
        assert!(
            info.names.contains(&"ml.example.com".to_string()),
            "{info:?}"
        );
        assert!(info.days_left(SystemTime::now()) > 300);
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let (cert, key) = pair(&["a.example.com"]);
        let (_, other_key) = pair(&["b.example.com"]);
        let p = provider();
        assert!(matches!(
            load_pair(b"not a pem", key.as_bytes(), "x", &p),
            Err(CertError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_pair(cert.as_bytes(), b"", "x", &p),
            Err(CertError::NoKey { .. })
        ));
        assert!(matches!(
            load_pair(cert.as_bytes(), other_key.as_bytes(), "x", &p),
            Err(CertError::KeyMismatch { .. })
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = load_pair(cert.as_bytes(), encrypted.as_bytes(), "x", &p).unwrap_err();
        assert!(e.to_string().contains("openssl pkey"), "{e}");
    }

    #[test]
    fn wildcard_names() {
        let names = vec![
            "*.ml.example.com".to_string(),
            "exact.example.com".to_string(),
        ];
        assert!(name_matches(&names, "ep.ml.example.com"));
        assert!(name_matches(&names, "EXACT.example.com"));
        assert!(!name_matches(&names, "a.b.ml.example.com"));
        assert!(!name_matches(&names, "ml.example.com"));
    }

    /// The value of `scoregate_tls_certificate_expiry_days` in a scrape.
    fn expiry_days(metrics: &Metrics) -> f64 {
        let text = metrics.render();
        let line = text
            .lines()
            .find(|l| l.starts_with(names::TLS_EXPIRY_DAYS))
            .unwrap_or_else(|| panic!("no expiry gauge in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// A store serving a self-signed certificate that expires `seconds` from now.
    fn expiring_in(seconds: i64, metrics: &Metrics) -> Arc<CertStore> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now + time::Duration::seconds(seconds);
        let cert = params.self_signed(&key).unwrap();
        CertStore::new(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            "test",
            None,
            metrics,
        )
        .unwrap()
    }

    #[test]
    fn the_expiry_gauge_follows_the_clock_without_a_reload() {
        // One day and a few seconds left: the gauge reads just above 1, then goes down with the
        // clock, the same certificate served all along.
        let metrics = Metrics::new();
        let store = expiring_in(86_400 + 4, &metrics);
        let first = expiry_days(&metrics);
        assert!(first > 1.0 && first < 1.001, "{first}");
        assert_eq!(store.info().days_left(SystemTime::now()), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while expiry_days(&metrics) >= first {
            assert!(
                std::time::Instant::now() < deadline,
                "the expiry gauge went stale: it still reads {first}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn a_certificate_that_expired_a_day_ago_shows_minus_one_day() {
        let metrics = Metrics::new();
        let store = expiring_in(-86_400 - 10, &metrics);
        let info = store.info();
        assert_eq!(info.days_left(SystemTime::now()), -1);
        assert!(info.expired(SystemTime::now()));
        let gauge = expiry_days(&metrics);
        assert!(gauge < -1.0 && gauge > -1.01, "{gauge}");
        let fresh = expiring_in(3_600, &Metrics::new()).info();
        assert_eq!(fresh.days_left(SystemTime::now()), 0);
        assert!(!fresh.expired(SystemTime::now()));
    }

    #[test]
    fn store_refuses_a_bad_offer_and_keeps_serving() {
        let (cert, key) = pair(&["a.example.com"]);
        let store = CertStore::new(
            cert.as_bytes(),
            key.as_bytes(),
            "first",
            None,
            &Metrics::new(),
        )
        .unwrap();
        assert!(store.offer(cert.as_bytes(), b"garbage", "second").is_err());
        assert_eq!(store.info().origin, "first");
        let (cert2, key2) = pair(&["b.example.com"]);
        store
            .offer(cert2.as_bytes(), key2.as_bytes(), "third")
            .unwrap();
        assert_eq!(store.info().origin, "third");
    }
}

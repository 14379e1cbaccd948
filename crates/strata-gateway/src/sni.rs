//! TLS on the gateway's HTTPS listener: a certificate per SNI name, from the PEM files the
//! table's `[[certificates]]` name (re-read when the files change, checked every 2 s) or from
//! PEM text kept in the table itself (so in the config center, replaced by publishing the
//! table): certificates rotate without a restart.

use crate::model::CertificateSpec;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Certificates by SNI name; the first certificate of the table answers clients that send no
/// name or a name no entry covers.
#[derive(Debug, Default)]
pub struct SniCertificates {
    current: RwLock<Arc<SniMap>>,
    loaded_from: Mutex<(Vec<CertificateSpec>, Vec<Option<SystemTime>>)>,
}

#[derive(Debug, Default)]
struct SniMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.com` for `*.example.com`, longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

fn stamps(specs: &[CertificateSpec]) -> Vec<Option<SystemTime>> {
    specs
        .iter()
        .flat_map(|s| [&s.cert_file, &s.key_file])
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Loads every certificate and key; the error names the file and what is wrong.
fn load(specs: &[CertificateSpec]) -> Result<SniMap, String> {
    let mut map = SniMap::default();
    for spec in specs {
        let (certs, key) = read_pair(spec)?;
        let label = spec.label();
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("certificate {label}: not a usable private key: {e}"))?;
        let certified = Arc::new(CertifiedKey::new(certs, signing));
        if certified.keys_match().is_err() {
            return Err(format!(
                "certificate {label}: the private key is not the certificate's"
            ));
        }
        for host in &spec.hosts {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) => map.wildcard.push((suffix.to_string(), certified.clone())),
                None => {
                    map.exact.insert(host, certified.clone());
                }
            }
        }
        map.default.get_or_insert(certified);
    }
    map.wildcard
        .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
    Ok(map)
}

/// The chain and key of `spec`, from its files or its PEM text.
fn read_pair(
    spec: &CertificateSpec,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let label = spec.label();
    let certs = match (&spec.cert_file, &spec.cert_pem) {
        (Some(file), None) => strata_tls::read_certs(file).map_err(|e| e.to_string())?,
        (None, Some(pem)) => {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("certificate {label}: cert_pem: {e}"))?;
            if certs.is_empty() {
                return Err(format!(
                    "certificate {label}: cert_pem holds no certificate"
                ));
            }
            certs
        }
        _ => {
            return Err(format!(
                "certificate {label}: give exactly one of cert_file and cert_pem"
            ))
        }
    };
    let key = match (&spec.key_file, &spec.key_pem) {
        (Some(file), None) => strata_tls::read_key(file).map_err(|e| e.to_string())?,
        (None, Some(pem)) => PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("certificate {label}: key_pem: {e}"))?,
        _ => {
            return Err(format!(
                "certificate {label}: give exactly one of key_file and key_pem"
            ))
        }
    };
    Ok((certs, key))
}

/// Checks that every certificate of a table loads (the admin API refuses a table whose
/// certificates do not, before publishing it).
pub fn check(specs: &[CertificateSpec]) -> Result<(), String> {
    load(specs).map(|_| ())
}

impl SniCertificates {
    /// Serves the certificates of `specs` from now on; on error the previous ones stay.
    pub fn set(&self, specs: &[CertificateSpec]) -> Result<(), String> {
        let map = load(specs)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        *self.loaded_from.lock().unwrap_or_else(|e| e.into_inner()) =
            (specs.to_vec(), stamps(specs));
        Ok(())
    }

    /// Re-reads the files when one changed since they were loaded; `Ok(true)` when it did.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let specs = {
            let loaded = self.loaded_from.lock().unwrap_or_else(|e| e.into_inner());
            if stamps(&loaded.0) == loaded.1 {
                return Ok(false);
            }
            loaded.0.clone()
        };
        self.set(&specs).map(|()| true)
    }

    /// True when there is at least one certificate.
    pub fn any(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .default
            .is_some()
    }

    /// The files in use, for the admin API.
    pub fn files(&self) -> Vec<PathBuf> {
        let loaded = self.loaded_from.lock().unwrap_or_else(|e| e.into_inner());
        loaded
            .0
            .iter()
            .filter_map(|s| s.cert_file.clone())
            .collect()
    }
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return map.default.clone();
        };
        if let Some(exact) = map.exact.get(&name) {
            return Some(exact.clone());
        }
        map.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, key)| key.clone())
            .or_else(|| map.default.clone())
    }
}

/// The rustls config of the HTTPS listener: certificates from `certificates`, ALPN `h2` and
/// `http/1.1`.
pub fn server_config(certificates: Arc<SniCertificates>) -> Arc<rustls::ServerConfig> {
    strata_tls::install_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

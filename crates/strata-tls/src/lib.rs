//! TLS for every Strata listener and client, with rustls (and *ring* as its crypto provider,
//! so nothing needs a C library from the system).
//!
//! - [`ServerTls`]: a listener's server config from PEM files (certificate chain, key, and a CA
//!   for client certificates), reloaded when the files change ([`ServerTls::watch`]), so
//!   certificates rotate without a restart.
//! - [`client_config`]: a client config that trusts a CA file and may present a certificate.
//! - [`peer_name`]: the name a verified client certificate carries (CN, else the first DNS
//!   SAN), which access control maps to a user.
//! - [`cert`]: a small CA for people without a PKI (`strata cert init|issue`).

pub mod cert;

pub use rustls;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Makes *ring* the process's rustls crypto provider; every config here needs one. Calling it
/// again does nothing.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The files do not make a valid config (a key that does not match the certificate, ...).
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Whether a listener asks clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    None,
    /// A client may present one (verified against the CA); others connect without.
    Optional,
    /// Every client must present one signed by the CA (mutual TLS).
    Require,
}

/// The PEM files of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The CA that signs client certificates; needed for [`ClientAuth::Optional`] and
    /// [`ClientAuth::Require`].
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.ca {
            paths.push(ca.as_path());
        }
        paths
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn path_refs(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).collect()
}

/// Modification times of files, to notice a rotation.
fn stamps(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn server_config(
    files: &TlsFiles,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    install_provider();
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder();
    let builder = match (client_auth, &files.ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::Config(
                "client certificates need a CA to check them against (tls.ca_file, --tls-ca)"
                    .into(),
            ))
        }
        (mode, Some(ca)) => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots(ca)?));
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(format!("client certificate check: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not make a certificate and its key: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Something built from files (a TLS config, a client holding one), rebuilt when one of the
/// files changes, so certificates rotate without a restart. A change that does not build keeps
/// the previous value.
pub struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    current: RwLock<(T, Vec<Option<SystemTime>>)>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> Reloading<T> {
    /// Builds the first value; `what` names it in log lines ("client listeners", "peers").
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let stamped = stamps(&path_refs(&paths));
        let value = build()?;
        Ok(Arc::new(Reloading {
            what,
            paths,
            build: Box::new(build),
            current: RwLock::new((value, stamped)),
        }))
    }

    /// The current value.
    pub fn get(&self) -> T {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Rebuilds the value when a file changed since the last build; returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&path_refs(&self.paths));
        if now == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return Ok(false);
        }
        let value = (self.build)()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (value, now);
        Ok(true)
    }

    /// Checks the files every `period` until `stop` resolves, rebuilding when they change.
    pub async fn watch(
        self: Arc<Self>,
        period: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut failing = false;
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(period) => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(tls = self.what, files = ?self.paths, "TLS certificate reloaded");
                }
                Ok(false) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(tls = self.what, error = %e, "TLS files changed but do not load; keeping the previous certificate");
                }
                Err(_) => {}
            }
        }
    }
}

/// A listener's TLS: the current server config, rebuilt when its files change.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    client_auth: ClientAuth,
    config: Arc<Reloading<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Loads the files; `alpn` lists the protocols offered (`h2`, `http/1.1`).
    pub fn load(
        files: TlsFiles,
        client_auth: ClientAuth,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerTls>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let building = files.clone();
        let config = Reloading::new(
            "server",
            files.paths().into_iter().map(Path::to_path_buf).collect(),
            move || {
                let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
                server_config(&building, client_auth, &alpn).map(Arc::new)
            },
        )?;
        Ok(Arc::new(ServerTls {
            files,
            client_auth,
            config,
        }))
    }

    /// The same files and client check, offering other protocols (a gRPC listener offers
    /// `h2` only).
    pub fn with_alpn(&self, alpn: &[&[u8]]) -> Result<Arc<ServerTls>, TlsError> {
        ServerTls::load(self.files.clone(), self.client_auth, alpn)
    }

    /// The certificate, key and CA files (a component's HTTPS client presents the same
    /// certificate and trusts the same CA).
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An HTTPS client builder that presents this listener's certificate and trusts its CA:
    /// how a node calls its own or a peer's client API as itself.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, TlsError> {
        let identity = (self.files.cert.as_path(), self.files.key.as_path());
        https_client_builder(self.files.ca.as_deref(), Some(identity))
    }

    /// Whether clients are asked for certificates.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }

    /// The config new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.get()
    }

    /// An acceptor with the current config.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }

    /// Rebuilds the config when a file changed since the last load; returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.config.reload_if_changed()
    }

    /// Checks the files every `period` until `stop` resolves, reloading them when they change.
    pub async fn watch(
        self: Arc<Self>,
        period: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        self.config.clone().watch(period, stop).await
    }
}

/// A client config: trusts the CA in `ca` (else the system's roots) and presents the
/// certificate and key in `identity`, if given.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    install_provider();
    let roots = match ca {
        Some(path) => roots(path)?,
        None => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The name in a peer's verified certificate: its subject's common name, else its first DNS
/// name. `None` when the peer sent no certificate.
pub fn peer_name(connection: &rustls::CommonState) -> Option<String> {
    let der = connection.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
        _ => None,
    })
}

/// A reqwest client builder, with the crypto provider installed first: reqwest's TLS is built
/// without a provider of its own (so nothing needs aws-lc), and panics when it finds none.
/// Every reqwest client in Strata starts here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
}

/// An HTTPS client builder that trusts `ca` (else the system's roots) and presents the
/// certificate and key in `identity`, if given; HTTP/1.1.
pub fn https_client_builder(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<reqwest::ClientBuilder, TlsError> {
    let config = client_config(ca, identity, &[b"http/1.1".as_slice()])?;
    Ok(http_client_builder().tls_backend_preconfigured(config))
}

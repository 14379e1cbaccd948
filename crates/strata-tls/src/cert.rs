//! A small certificate authority for people without a PKI: `strata cert init` makes a CA,
//! `strata cert issue NAME --host ...` a certificate signed by it, good for serving (a node's
//! listeners, with its hosts as names) and for client authentication (the name is the user
//! access control maps it to). Keys are written readable by their owner only.

use crate::TlsError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// File names in a CA folder.
pub const CA_CERT: &str = "ca.pem";
/// The CA's key.
pub const CA_KEY: &str = "ca-key.pem";

/// How long issued certificates last, by default.
pub const DEFAULT_DAYS: u32 = 825;

fn config(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Writes `text` to `path`, failing if it exists; mode 0600 when `secret`.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "exists; remove it first to make a new one".to_string()
        } else {
            e.to_string()
        };
        TlsError::File {
            path: path.display().to_string(),
            message: why,
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let start = now + since_epoch - std::time::Duration::from_secs(3600);
    params.not_before = start;
    params.not_after = start + std::time::Duration::from_secs(u64::from(days) * 86_400);
}

/// Makes a CA in `dir` (`ca.pem`, `ca-key.pem`) named `name`; returns the two paths.
pub fn init(dir: &Path, name: &str, days: u32) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let key = KeyPair::generate().map_err(config)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days.max(1));
    let cert = params.self_signed(&key).map_err(config)?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

/// Issues a certificate named `name` for `hosts` (DNS names or IP addresses), signed by the
/// CA in `ca_dir`, into `out` as `NAME.pem` and `NAME-key.pem`; returns the two paths.
pub fn issue(
    ca_dir: &Path,
    out: &Path,
    name: &str,
    hosts: &[String],
    days: u32,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if name.is_empty() || name.contains('/') {
        return Err(TlsError::Config(format!(
            "certificate name {name:?} must be non-empty and without '/'"
        )));
    }
    let read = |file: &str| {
        let path = ca_dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: format!("{e} (make a CA with `strata cert init` first)"),
        })
    };
    let ca_key = KeyPair::from_pem(&read(CA_KEY)?).map_err(config)?;
    let issuer = Issuer::from_ca_cert_pem(&read(CA_CERT)?, ca_key).map_err(config)?;
    let key = KeyPair::generate().map_err(config)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    for host in hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(|e| {
                TlsError::Config(format!(
                    "host {host:?} is not a DNS name or IP address: {e}"
                ))
            })?),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days.max(1));
    let cert = params.signed_by(&key, &issuer).map_err(config)?;
    std::fs::create_dir_all(out).map_err(|e| TlsError::File {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    let (cert_path, key_path) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}-key.pem")),
    );
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{client_config, peer_name, ClientAuth, ServerTls, TlsFiles};
    use std::sync::Arc;

    #[test]
    fn issued_certificates_serve_and_authenticate_a_client_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = init(dir.path(), "Test CA", 30).unwrap();
        let (node_cert, node_key) = issue(
            dir.path(),
            dir.path(),
            "node1",
            &["127.0.0.1".into(), "localhost".into()],
            30,
        )
        .unwrap();
        let (alice_cert, alice_key) = issue(dir.path(), dir.path(), "alice", &[], 30).unwrap();
        assert!(
            init(dir.path(), "again", 30).is_err(),
            "a CA is never overwritten"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&node_key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let server = ServerTls::load(
            TlsFiles {
                cert: node_cert,
                key: node_key,
                ca: Some(ca.clone()),
            },
            ClientAuth::Require,
            &[b"h2".as_slice()],
        )
        .unwrap();
        let client = client_config(
            Some(&ca),
            Some((&alice_cert, &alice_key)),
            &[b"h2".as_slice()],
        )
        .unwrap();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client), "127.0.0.1".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(server.config()).unwrap();
        // Run the handshake in memory.
        for _ in 0..10 {
            let mut buffer = Vec::new();
            client.write_tls(&mut buffer).unwrap();
            server.read_tls(&mut buffer.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buffer = Vec::new();
            server.write_tls(&mut buffer).unwrap();
            client.read_tls(&mut buffer.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking());
        assert_eq!(peer_name(&server).as_deref(), Some("alice"));
    }
}

//! `strata cert init|issue`: a CA and certificates for people without a PKI
//! (`strata_tls::cert`). Files are PEM; keys are written readable by their owner only.

use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

/// `strata cert ...`.
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a certificate authority: DIR/ca.pem and DIR/ca-key.pem.
    Init {
        /// Folder for the CA's files.
        #[arg(long, default_value = "./strata-ca")]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "Strata CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by the CA, for a node (its hosts) or a client (its name is
    /// the user access control maps it to): OUT/NAME.pem and OUT/NAME-key.pem.
    Issue {
        /// The certificate's name (common name): a node name, or a user name.
        name: String,
        /// DNS names and IP addresses the certificate is valid for, comma-separated.
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
        /// The CA's folder (from `strata cert init`).
        #[arg(long, default_value = "./strata-ca")]
        dir: PathBuf,
        /// Where to write the certificate and key (default: the CA's folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = strata_tls::cert::DEFAULT_DAYS)]
        days: u32,
    },
}

/// Runs `strata cert ...`.
pub fn cert(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Init { dir, name, days } => {
            let (cert, key) = strata_tls::cert::init(&dir, &name, days).context("make the CA")?;
            println!("CA certificate {}", cert.display());
            println!("CA key         {} (keep it secret)", key.display());
        }
        CertCommand::Issue {
            name,
            host,
            dir,
            out,
            days,
        } => {
            let out = out.unwrap_or_else(|| dir.clone());
            let (cert, key) = strata_tls::cert::issue(&dir, &out, &name, &host, days)
                .with_context(|| format!("issue the certificate {name}"))?;
            println!("certificate {}", cert.display());
            println!("key         {}", key.display());
        }
    }
    Ok(())
}

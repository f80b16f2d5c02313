//! A workload's certificate, key and trusted roots as PEM files, for the
//! test app's roles that play a peer of the mesh (an HBONE client as Istio's
//! ztunnel, a waypoint).

use std::path::PathBuf;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The files, as the test app takes them (`--cert`, `--key`, `--roots`).
#[derive(Clone, Debug, clap::Args)]
pub struct Credentials {
    /// The certificate chain (PEM), leaf first.
    #[arg(long = "cert")]
    pub chain: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The roots trusted for peers (PEM).
    #[arg(long)]
    pub roots: PathBuf,
}

/// What [`Credentials`] hold, read.
pub struct Loaded {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
    /// The trusted roots.
    pub roots: Vec<CertificateDer<'static>>,
}

impl Credentials {
    /// Reads the three files.
    pub fn load(&self) -> Result<Loaded> {
        let certificates = |path: &PathBuf, what: &str| -> Result<Vec<CertificateDer<'static>>> {
            CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {what} {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {what} {}", path.display()))
        };
        Ok(Loaded {
            chain: certificates(&self.chain, "the chain")?,
            key: PrivateKeyDer::from_pem_file(&self.key)
                .with_context(|| format!("reading the key {}", self.key.display()))?,
            roots: certificates(&self.roots, "the roots")?,
        })
    }
}

//! The trust bundle: the root certificates peers' chains must lead to.
//! Loaded from a PEM file, and (through [`crate::reload::Watched`]) reloaded
//! when the file changes, so a root rotation needs no restart.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Why a trust bundle file is unusable.
#[derive(Debug, thiserror::Error)]
#[error("trust bundle {}: {message}", path.display())]
pub struct BundleError {
    path: PathBuf,
    message: String,
}

/// The trusted roots.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    described: Vec<String>,
}

impl TrustBundle {
    /// Reads every certificate of the PEM file at `path` (at least one).
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let error = |message: String| BundleError {
            path: path.to_owned(),
            message,
        };
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|err| error(err.to_string()))?;
        if roots.is_empty() {
            return Err(error("no certificate in the file".to_owned()));
        }
        let described = roots
            .iter()
            .map(|der| {
                use x509_parser::prelude::FromDer;
                let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
                    .map_err(|err| error(format!("unparsable certificate: {err}")))?;
                Ok(format!(
                    "{} (serial {})",
                    cert.subject(),
                    cert.raw_serial_as_string()
                ))
            })
            .collect::<Result<_, BundleError>>()?;
        Ok(Self { roots, described })
    }

    /// Each root's subject and serial, for operators.
    pub fn describe(&self) -> &[String] {
        &self.described
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

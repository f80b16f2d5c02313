//! A workload's certificate and private key, as the daemon holds them.

use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::Identity;

/// Why a certificate chain from the CA is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The CA returned no certificate, or one that does not parse.
    #[error("unusable certificate from the CA: {0}")]
    Malformed(String),
    /// The leaf is not for the identity that was asked for, or not for our key.
    #[error("the CA returned a certificate for {got}, not for {want} with our key")]
    WrongSubject {
        /// What was asked for.
        want: String,
        /// What the leaf says.
        got: String,
    },
}

/// A workload certificate with its chain and in-memory private key.
pub struct WorkloadCertificate {
    identity: Identity,
    /// Leaf first; the root last.
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    serial: String,
    issuer: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCertificate {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Checks the CA's answer for `identity` and our `public_key` (the raw
    /// SubjectPublicKeyInfo bit string) and keeps it with the private key.
    pub fn new(
        identity: Identity,
        chain_pem: &[String],
        key: PrivatePkcs8KeyDer<'static>,
        public_key: &[u8],
    ) -> Result<Self, CertificateError> {
        let chain: Vec<CertificateDer<'static>> = chain_pem
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|err| CertificateError::Malformed(err.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| CertificateError::Malformed("empty chain".to_owned()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|err| CertificateError::Malformed(err.to_string()))?;

        let uris: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some((*uri).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let want = identity.to_string();
        if uris != [want.clone()]
            || cert.public_key().subject_public_key.data.as_ref() != public_key
        {
            return Err(CertificateError::WrongSubject {
                want,
                got: uris.join(","),
            });
        }
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        Ok(Self {
            serial: cert.raw_serial_as_string(),
            issuer: cert.issuer().to_string(),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            identity,
            chain,
            key,
        })
    }

    /// The identity it proves.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key (in memory only; never written anywhere).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Serial number, as colon-separated hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The issuer's distinguished name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether it is valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

//! The CA's signing material and leaf issuance.
//!
//! Two sources of trust:
//! - **self-signed**: a P-256 root valid for 10 years, generated on first start
//!   and kept in the state directory (key mode 0600, directory 0700), reused on
//!   every later start;
//! - **plugged in**: Istio's `cacerts` layout, an intermediate that signs leaves
//!   (`ca-cert.pem`, `ca-key.pem`), the chain above it (`cert-chain.pem`) and the
//!   root (`root-cert.pem`). Issued chains then run leaf, intermediate(s), root.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;

use super::csr::ValidatedCsr;
use crate::identity::{Identity, TrustDomain};

/// Lifetime of a generated root.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the CA's own serving certificate.
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// File names of Istio's `cacerts` layout (and of the generated root).
pub const CA_CERT: &str = "ca-cert.pem";
/// The signing key of `ca-cert.pem`.
pub const CA_KEY: &str = "ca-key.pem";
/// The chain from `ca-cert.pem` up to the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The root of trust.
pub const ROOT_CERT: &str = "root-cert.pem";

/// Why the CA's signing material could not be set up, or a certificate not issued.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate or key file holds no usable PEM object.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The plugged-in CA certificate and key do not belong together.
    #[error("{CA_CERT} and {CA_KEY} in {0} do not match (different public keys)")]
    KeyMismatch(PathBuf),
    /// rcgen failed to build or sign a certificate.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthorityError + '_ {
    move |source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What signs leaves, and the chain that goes with every leaf.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM certificates above the leaf: signing cert first, root last.
    chain: Vec<String>,
    trust_domain: TrustDomain,
}

impl Authority {
    /// Loads the root from `state_dir`, generating it on first start.
    pub fn self_signed(
        state_dir: &Path,
        trust_domain: TrustDomain,
    ) -> Result<Self, AuthorityError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io(state_dir))?;
        // An existing directory keeps its mode through DirBuilder: tighten it.
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(io(state_dir))?;
        let (cert_path, key_path) = (state_dir.join(ROOT_CERT), state_dir.join(CA_KEY));
        if !cert_path.exists() {
            // Said loudly: a mistyped --state-dir (or one on a volume that
            // was not mounted) starts a new root that no daemon trusts.
            tracing::warn!(
                state_dir = %state_dir.display(),
                "no root in the state directory: generated a new self-signed root (daemons trust \
                 only the root they were given; keep this directory to keep the root)"
            );
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = root_params(&trust_domain)?.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        }
        let root = read(&cert_path)?;
        let key = load_key(&key_path)?;
        let issuer = Issuer::from_ca_cert_pem(&root, key)?;
        Ok(Self {
            issuer,
            chain: vec![root],
            trust_domain,
        })
    }

    /// Generates a new self-signed root in Istio's `cacerts` layout in `dir`
    /// (the root signs directly: `ca-cert.pem`, `cert-chain.pem` and
    /// `root-cert.pem` are the same certificate), for a CA whose state must
    /// live in a Kubernetes Secret. Never overwrites an existing key.
    pub fn init_cacerts(dir: &Path, trust_domain: &TrustDomain) -> Result<(), AuthorityError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = root_params(trust_domain)?.self_signed(&key)?;
        write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
        for name in [CA_CERT, CERT_CHAIN, ROOT_CERT] {
            let path = dir.join(name);
            fs::write(&path, cert.pem()).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Loads a plugged-in intermediate in Istio's `cacerts` layout from `dir`.
    pub fn plugged_in(dir: &Path, trust_domain: TrustDomain) -> Result<Self, AuthorityError> {
        let ca_cert = read(&dir.join(CA_CERT))?;
        let key = load_key(&dir.join(CA_KEY))?;
        let ca_der = first_cert(&dir.join(CA_CERT), &ca_cert)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&ca_der).map_err(|err| AuthorityError::Pem {
                path: dir.join(CA_CERT),
                message: err.to_string(),
            })?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(AuthorityError::KeyMismatch(dir.to_owned()));
        }
        let root = read(&dir.join(ROOT_CERT))?;
        let root = pem_certs(&dir.join(ROOT_CERT), &root)?.remove(0);
        // cert-chain.pem holds ca-cert and what is above it; make sure the
        // chain starts at the signing cert and ends at the root.
        let mut chain = match fs::read_to_string(dir.join(CERT_CHAIN)) {
            Ok(text) => pem_certs(&dir.join(CERT_CHAIN), &text)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(io(&dir.join(CERT_CHAIN))(err)),
        };
        let ca_pem = pem_certs(&dir.join(CA_CERT), &ca_cert)?.remove(0);
        if chain.first() != Some(&ca_pem) {
            chain.insert(0, ca_pem);
        }
        if chain.last() != Some(&root) {
            chain.push(root);
        }
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(&ca_cert, key)?,
            chain,
            trust_domain,
        })
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate (PEM) that every issued chain ends at.
    pub fn root_pem(&self) -> &str {
        self.chain.last().expect("a chain always has its root")
    }

    /// Issues a leaf for `csr`'s key and identity, valid for `validity` from
    /// now; returns the chain, leaf first, root last.
    pub fn issue(
        &self,
        csr: &ValidatedCsr,
        validity: Duration,
    ) -> Result<Vec<String>, AuthorityError> {
        let params = leaf_params(csr.identity(), validity)?;
        let leaf = params.signed_by(csr.public_key(), &self.issuer)?;
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.push(leaf.pem());
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }

    /// A serving certificate for the CA's own endpoint, for `dns_names` and
    /// IP addresses; returns the chain and the key.
    pub fn serving_certificate(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "ztunnel CA");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + SERVING_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        for pem in &self.chain[..self.chain.len() - 1] {
            chain.push(first_cert(Path::new("<chain>"), pem)?);
        }
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|message| {
            AuthorityError::Pem {
                path: PathBuf::from("<generated key>"),
                message: message.to_owned(),
            }
        })?;
        Ok((chain, key))
    }
}

fn root_params(trust_domain: &TrustDomain) -> Result<CertificateParams, AuthorityError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain.as_str());
    params
        .distinguished_name
        .push(DnType::CommonName, "ztunnel root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + ROOT_VALIDITY;
    Ok(params)
}

/// A workload leaf: no subject, one URI SAN, both EKUs, not a CA.
fn leaf_params(
    identity: &Identity,
    validity: Duration,
) -> Result<CertificateParams, AuthorityError> {
    let mut params = CertificateParams::default();
    // An empty subject: the identity is the (then critical) URI SAN alone.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    // X.509 times have whole seconds: truncate so the validity is never longer than granted.
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns is valid");
    params.not_before = now;
    params.not_after = now + validity;
    Ok(params)
}

/// A random positive 128-bit serial number (RFC 5280: at most 20 octets, positive).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never zero, never shortened to fewer octets
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, AuthorityError> {
    fs::read_to_string(path).map_err(io(path))
}

fn load_key(path: &Path) -> Result<KeyPair, AuthorityError> {
    let pem = read(path)?;
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|err| AuthorityError::Pem {
        path: path.to_owned(),
        message: format!("no private key: {err}"),
    })?;
    KeyPair::try_from(&der).map_err(|err| AuthorityError::Pem {
        path: path.to_owned(),
        message: format!("unsupported private key ({err}); use PKCS#8 ECDSA P-256/P-384 or RSA"),
    })
}

/// Every certificate of a PEM text, each re-encoded as its own PEM block.
fn pem_certs(path: &Path, text: &str) -> Result<Vec<String>, AuthorityError> {
    let certs: Vec<String> = CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|der| der.map(|der| encode_pem(&der)))
        .collect::<Result<_, _>>()
        .map_err(|err| AuthorityError::Pem {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(AuthorityError::Pem {
            path: path.to_owned(),
            message: "no certificate".to_owned(),
        });
    }
    Ok(certs)
}

/// PEM with LF line endings, like every other certificate the CA hands out.
fn encode_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

fn first_cert(path: &Path, text: &str) -> Result<CertificateDer<'static>, AuthorityError> {
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|err| AuthorityError::Pem {
        path: path.to_owned(),
        message: err.to_string(),
    })
}

/// Writes a secret readable by its owner only, created with that mode (never
/// world-readable, not even briefly).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

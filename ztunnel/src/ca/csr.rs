//! Validation of certificate signing requests: the CA's boundary with
//! untrusted input.
//!
//! Only the CSR's public key and its one URI SAN are used. Nothing else the
//! requester asks for (subject, other extensions, key usages) reaches the
//! issued certificate, so a hostile CSR can at worst be refused.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer,
    public_key::PublicKey,
};

use crate::identity::{Identity, SpiffeError};

/// Largest CSR accepted, in bytes of PEM (real ones are well under 2 KiB).
const MAX_CSR_PEM: usize = 16 * 1024;

/// Why a CSR is refused; each maps to a clear gRPC status.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PEM-encoded PKCS#10 request.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify with its own key.
    #[error("the CSR's signature does not verify")]
    BadSignature,
    /// A key type or size the CA does not sign.
    #[error("unsupported key: {0} (use ECDSA P-256 or P-384, or RSA 2048-4096)")]
    UnsupportedKey(String),
    /// Not exactly one SAN, or a SAN that is not a URI.
    #[error("the CSR must carry exactly one SAN, the SPIFFE URI of the identity; it has {0}")]
    Sans(String),
    /// The URI SAN is not a SPIFFE workload identity.
    #[error("the CSR's URI SAN is not a workload identity: {0}")]
    Identity(#[from] SpiffeError),
}

/// A CSR that passed every check: a supported public key, a valid
/// self-signature, and exactly one SAN, a SPIFFE workload identity.
#[derive(Debug)]
pub struct ValidatedCsr {
    identity: Identity,
    key: CsrPublicKey,
}

impl ValidatedCsr {
    /// The identity the CSR asks for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The public key to certify.
    pub fn public_key(&self) -> &impl PublicKeyData {
        &self.key
    }
}

/// The subject public key of a CSR, in the form rcgen certifies.
#[derive(Debug)]
struct CsrPublicKey {
    /// The BIT STRING contents of the SubjectPublicKeyInfo.
    raw: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Checks `pem` and extracts what may be signed.
pub fn validate(pem: &str) -> Result<ValidatedCsr, CsrError> {
    if pem.len() > MAX_CSR_PEM {
        return Err(CsrError::Malformed(format!(
            "larger than {MAX_CSR_PEM} bytes"
        )));
    }
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|err| CsrError::Malformed(format!("not PEM: {err}")))?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Malformed(format!(
            "PEM block is {:?}, not CERTIFICATE REQUEST",
            block.label
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|err| CsrError::Malformed(format!("not PKCS#10: {err}")))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".to_owned(),
        ));
    }

    let info = &csr.certification_request_info;
    let algorithm = key_algorithm(&info.subject_pki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut sans = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            sans.extend(san.general_names.iter());
        }
    }
    let identity = match sans.as_slice() {
        [GeneralName::URI(uri)] => Identity::parse(uri)?,
        [] => return Err(CsrError::Sans("none".to_owned())),
        [other] => return Err(CsrError::Sans(format!("one that is not a URI ({other})"))),
        many => return Err(CsrError::Sans(format!("{}", many.len()))),
    };
    Ok(ValidatedCsr {
        identity,
        key: CsrPublicKey {
            raw: info.subject_pki.subject_public_key.data.to_vec(),
            algorithm,
        },
    })
}

/// The rcgen algorithm for a supported subject key.
fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<&'static SignatureAlgorithm, CsrError> {
    let parsed = spki
        .parsed()
        .map_err(|err| CsrError::UnsupportedKey(format!("unparsable public key: {err}")))?;
    match parsed {
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .unwrap_or_default();
            match (curve.as_str(), point.key_size()) {
                ("1.2.840.10045.3.1.7", 256) => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
                ("1.3.132.0.34", 384) => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
                (curve, bits) => Err(CsrError::UnsupportedKey(format!(
                    "EC curve {curve} ({bits} bits)"
                ))),
            }
        }
        PublicKey::RSA(rsa) if (2048..=4096).contains(&rsa.key_size()) => {
            Ok(&rcgen::PKCS_RSA_SHA256)
        }
        PublicKey::RSA(rsa) => Err(CsrError::UnsupportedKey(format!(
            "RSA {} bits",
            rsa.key_size()
        ))),
        other => Err(CsrError::UnsupportedKey(
            format!("{other:?}").chars().take(40).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    const ID: &str = "spiffe://cluster.local/ns/demo/sa/web";

    fn csr_with(sans: Vec<SanType>, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn accepts_a_p256_csr_with_one_spiffe_uri() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = validate(&csr_with(vec![uri(ID)], &key)).unwrap();
        assert_eq!(csr.identity().to_string(), ID);
        assert_eq!(csr.public_key().der_bytes(), key.public_key_raw());
    }

    #[test]
    fn accepts_p384() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(validate(&csr_with(vec![uri(ID)], &key)).is_ok());
    }

    #[test]
    fn refuses_wrong_sans() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = "spiffe://cluster.local/ns/demo/sa/other";
        let cases = [
            (vec![], CsrError::Sans("none".into())),
            (vec![uri(ID), uri(other)], CsrError::Sans("2".into())),
            (
                vec![uri(ID), SanType::DnsName("web.demo".try_into().unwrap())],
                CsrError::Sans("2".into()),
            ),
        ];
        for (sans, want) in cases {
            assert_eq!(validate(&csr_with(sans, &key)).unwrap_err(), want);
        }
        let dns_only = validate(&csr_with(
            vec![SanType::DnsName("a.b".try_into().unwrap())],
            &key,
        ));
        assert!(matches!(dns_only, Err(CsrError::Sans(_))));
        let not_spiffe = validate(&csr_with(vec![uri("https://example.com/x")], &key));
        assert_eq!(
            not_spiffe.unwrap_err(),
            CsrError::Identity(SpiffeError::Scheme)
        );
    }

    #[test]
    fn refuses_malformed_and_tampered_requests() {
        assert!(matches!(validate("hello"), Err(CsrError::Malformed(_))));
        assert!(matches!(
            validate(&"A".repeat(20_000)),
            Err(CsrError::Malformed(_))
        ));
        let cert_pem = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(validate(cert_pem), Err(CsrError::Malformed(_))));
        let junk =
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAAAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(validate(junk), Err(CsrError::Malformed(_))));

        // Flip one bit of the signature (the last byte of the DER): the request no longer verifies.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(ID)];
        let mut der = params.serialize_request(&key).unwrap().der().to_vec();
        *der.last_mut().unwrap() ^= 1;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert_eq!(validate(&tampered).unwrap_err(), CsrError::BadSignature);
    }
}

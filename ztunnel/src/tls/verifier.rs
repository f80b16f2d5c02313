//! SPIFFE peer verification: the one deliberate `dangerous()` use.
//!
//! Workload certificates carry their identity as a URI SAN, which web PKI
//! name checks do not cover. So each side verifies the chain to the trust
//! bundle with webpki (signatures, validity, EKU) and then the identity:
//! - a client requires the server to be exactly the destination workload it
//!   expected ([`ServerIdentityVerifier`]);
//! - a server requires a client certificate with a SPIFFE workload identity in
//!   its trust domain ([`ClientIdentityVerifier`]); which identities may connect
//!   is policy's business, decided after the handshake.

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ParsedCertificate, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::identity::{Identity, TrustDomain};

/// Why a peer's identity is refused (carried inside a rustls error).
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    /// The certificate has no URI SAN, or more than one.
    #[error("the peer certificate carries {0} URI SANs, not exactly one SPIFFE ID")]
    UriSans(usize),
    /// The URI SAN is not a SPIFFE workload identity.
    #[error("the peer's URI SAN is not a workload identity: {0}")]
    NotSpiffe(#[from] crate::identity::SpiffeError),
    /// The identity is in another trust domain.
    #[error("peer identity {0} is outside trust domain {1}")]
    ForeignTrustDomain(Identity, TrustDomain),
    /// The server is not the workload the client meant to reach.
    #[error("the server is {got}, not the expected {want}")]
    Unexpected {
        /// Expected identity.
        want: Identity,
        /// Presented identity.
        got: Identity,
    },
}

fn refuse(err: PeerIdentityError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// The SPIFFE workload identity a certificate proves: its one URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, Error> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let uris: Vec<&str> = parsed
        .subject_alternative_name()
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [uri] => Identity::parse(uri).map_err(|err| refuse(err.into())),
        other => Err(refuse(PeerIdentityError::UriSans(other.len()))),
    }
}

/// Client side: the server must chain to the bundle and be exactly `expected`.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerIdentityVerifier {
    /// A verifier trusting `roots` and accepting only `expected`.
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Identity,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots,
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let got = identity_of(end_entity)?;
        if got != self.expected {
            return Err(refuse(PeerIdentityError::Unexpected {
                want: self.expected.clone(),
                got,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: a client certificate is required, must chain to the bundle
/// (webpki's client verification) and carry a workload identity in the trust domain.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
}

impl ClientIdentityVerifier {
    /// A verifier trusting `roots`, for identities of `trust_domain`.
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: TrustDomain,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self {
            chain,
            trust_domain,
        })
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = identity_of(end_entity)?;
        if identity.trust_domain() != &self.trust_domain {
            return Err(refuse(PeerIdentityError::ForeignTrustDomain(
                identity,
                self.trust_domain.clone(),
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

//! Every rustls configuration of the project is built here, so the security
//! defaults live in one place: the ring provider, TLS 1.3 only, AES-GCM
//! suites (AES-NI makes them the fastest here; ChaCha20 only when configured
//! as a fallback), no early data. Peer identities are verified in
//! [`verifier`]; handshake failures are put in words by [`explain`].

mod explain;
pub mod verifier;

pub use explain::{classify_io, explain, explain_io};

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer},
};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificate, key or settings.
    #[error("building TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// No usable root certificate was given.
    #[error("no trusted root certificate: {0}")]
    Roots(String),
    /// The client-certificate verifier could not be built.
    #[error("building the client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// ALPN of the native tunnel protocol.
pub const TUNNEL_ALPN: &[u8] = b"ztunnel-native/2";

/// ALPN of HBONE (HTTP/2 `CONNECT`), Istio's tunnel, on the same port: ALPN
/// tells the two apart.
pub const HBONE_ALPN: &[u8] = b"h2";

/// The cipher suites the tunnel offers, in order of preference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CipherSuites {
    /// AES-128-GCM and AES-256-GCM only: the default, fastest with AES-NI.
    #[default]
    AesGcm,
    /// AES-GCM first, then ChaCha20-Poly1305 for peers without AES hardware.
    AesGcmThenChaCha20,
}

/// How the tunnel's TLS sessions are set up, beyond the identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelTls {
    /// The cipher suites offered.
    pub suites: CipherSuites,
    /// Whether sessions are resumed from tickets (the default). Off, every
    /// connection does a full handshake: for benchmarks and troubleshooting.
    pub resumption: bool,
    /// Speak only HBONE, as Istio's ztunnel does (offer and accept only ALPN
    /// `h2`); by default the native protocol is preferred and HBONE spoken
    /// with peers that speak only that.
    pub hbone_only: bool,
}

impl Default for TunnelTls {
    fn default() -> Self {
        Self {
            suites: CipherSuites::default(),
            resumption: true,
            hbone_only: false,
        }
    }
}

impl TunnelTls {
    /// The tunnel protocols offered (client) or accepted (server), in order
    /// of preference; a server's order decides.
    fn alpn(self) -> Vec<Vec<u8>> {
        if self.hbone_only {
            vec![HBONE_ALPN.to_vec()]
        } else {
            vec![TUNNEL_ALPN.to_vec(), HBONE_ALPN.to_vec()]
        }
    }
}

impl CipherSuites {
    fn provider(self) -> Arc<CryptoProvider> {
        let mut provider = ring::default_provider();
        provider.cipher_suites = vec![
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ];
        if self == Self::AesGcmThenChaCha20 {
            provider
                .cipher_suites
                .push(ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256);
        }
        Arc::new(provider)
    }
}

/// The client side of a tunnel: presents `chain`/`key` (the source workload's
/// certificate) and accepts only a server proving `expected`. Sessions are
/// resumed (TLS 1.3 tickets) through this config's cache, so one config per
/// source and destination identity keys the cache by both.
pub fn tunnel_client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: &[CertificateDer<'static>],
    expected: crate::identity::Identity,
    options: TunnelTls,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = options.suites.provider();
    let verifier = verifier::ServerIdentityVerifier::new(
        root_store(roots)?,
        expected,
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = options.alpn();
    config.enable_early_data = false;
    if !options.resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The server side of a tunnel: presents `chain`/`key` (the destination
/// workload's certificate) and requires a client certificate with a workload
/// identity of `trust_domain` chaining to `roots`. Issues resumption tickets
/// under rotating keys; never accepts early data.
pub fn tunnel_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: &[CertificateDer<'static>],
    trust_domain: crate::identity::TrustDomain,
    options: TunnelTls,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = options.suites.provider();
    let verifier =
        verifier::ClientIdentityVerifier::new(root_store(roots)?, trust_domain, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
    // The server's order decides: the native protocol for peers that offer
    // it (this project's daemons), HBONE for the others (Istio's ztunnel).
    config.alpn_protocols = options.alpn();
    if options.resumption {
        config.ticketer = ring::Ticketer::new()?;
    } else {
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err(TlsError::Roots(format!(
            "{ignored} certificates given, none usable"
        )));
    }
    Ok(Arc::new(store))
}

/// The crypto provider of the control plane (CA API): ring, with only the
/// TLS 1.3 AES-GCM suites.
pub fn provider() -> Arc<CryptoProvider> {
    CipherSuites::AesGcm.provider()
}

/// A TLS 1.3 server presenting `chain` (leaf first) with `key`, speaking
/// HTTP/2 (gRPC) only. Clients are not asked for certificates: the CA
/// authenticates nodes by bearer token.
pub fn grpc_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS 1.3 client that trusts only `roots` and speaks HTTP/2 (gRPC).
pub fn grpc_client_config(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err(TlsError::Roots(format!(
            "{ignored} certificates given, none usable"
        )));
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;

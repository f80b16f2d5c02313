//! Tunnel TLS end to end in memory: real rustls handshakes over a duplex
//! pipe, with certificates from a throwaway CA.

use std::{sync::Arc, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, HandshakeKind, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    CipherSuites, HBONE_ALPN, TUNNEL_ALPN, TunnelTls, explain_io, tunnel_client_config,
    tunnel_server_config, verifier::identity_of,
};
use crate::identity::{Identity, TrustDomain};

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

fn ca() -> TestCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    // A distinct name per CA, as real roots have.
    let name = format!("test root {}", rand::random::<u64>());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let root = params.self_signed(&key).unwrap().der().clone();
    TestCa {
        issuer: Issuer::new(params, key),
        root,
    }
}

/// A workload certificate for `identity`, valid from `from` to `until` seconds from now.
fn leaf(
    ca: &TestCa,
    identity: &str,
    from: i64,
    until: i64,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(until);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

fn valid(ca: &TestCa, identity: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    leaf(ca, identity, -60, 3600)
}

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

/// Runs one handshake and a one-byte exchange (which also delivers the
/// resumption tickets). Returns the client's and the server's outcome.
async fn connect(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (
    Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>, String>,
    Result<Identity, String>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("workload.invalid").unwrap();
    let client_side = async move {
        let mut tls = TlsConnector::from(client)
            .connect(name, a)
            .await
            .map_err(|e| explain_io(&e))?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok(tls)
    };
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server)
            .accept(b)
            .await
            .map_err(|e| explain_io(&e))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no client cert")?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        identity_of(&peer).map_err(|e| e.to_string())
    };
    let both = async { tokio::join!(client_side, server_side) };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the handshake finishes")
}

fn server(ca: &TestCa, identity: &str) -> Arc<ServerConfig> {
    server_with_options(ca, identity, TunnelTls::default())
}

fn server_with_options(ca: &TestCa, identity: &str, options: TunnelTls) -> Arc<ServerConfig> {
    let (chain, key) = valid(ca, identity);
    tunnel_server_config(chain, key, std::slice::from_ref(&ca.root), td(), options).unwrap()
}

fn client(ca: &TestCa, identity: &str, trusted: &TestCa, expected: &str) -> Arc<ClientConfig> {
    client_with_options(ca, identity, trusted, expected, TunnelTls::default())
}

fn client_with_options(
    ca: &TestCa,
    identity: &str,
    trusted: &TestCa,
    expected: &str,
    options: TunnelTls,
) -> Arc<ClientConfig> {
    let (chain, key) = valid(ca, identity);
    let roots = std::slice::from_ref(&trusted.root);
    tunnel_client_config(chain, key, roots, id(expected), options).unwrap()
}

#[tokio::test]
async fn mutual_tls_proves_both_identities_with_tls13_aes_gcm() {
    let ca = ca();
    let (client_result, server_result) =
        connect(client(&ca, CLIENT, &ca, WEB), server(&ca, WEB)).await;
    let tls = client_result.unwrap();
    assert_eq!(
        server_result.unwrap(),
        id(CLIENT),
        "the server learns the client's identity"
    );
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    assert!(
        suite.contains("AES_128_GCM") || suite.contains("AES_256_GCM"),
        "{suite}"
    );
    assert_eq!(conn.alpn_protocol(), Some(TUNNEL_ALPN));
    let server_cert = conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(identity_of(&server_cert).unwrap(), id(WEB));
}

#[tokio::test]
async fn the_server_speaks_the_native_protocol_to_who_offers_it_and_hbone_to_istio() {
    let ca = ca();
    let offering = |protocols: &[&[u8]]| {
        let mut config = (*client(&ca, CLIENT, &ca, WEB)).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    // (who, protocols offered, protocol chosen)
    type Case<'a> = (&'a str, &'a [&'a [u8]], &'a [u8]);
    let cases: [Case; 3] = [
        (
            "this project's daemon",
            &[TUNNEL_ALPN, HBONE_ALPN],
            TUNNEL_ALPN,
        ),
        (
            "the same, HBONE first",
            &[HBONE_ALPN, TUNNEL_ALPN],
            TUNNEL_ALPN,
        ),
        ("Istio's ztunnel", &[HBONE_ALPN], HBONE_ALPN),
    ];
    for (who, offered, chosen) in cases {
        let (client_result, _) = connect(offering(offered), server(&ca, WEB)).await;
        let tls = client_result.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(chosen), "{who}");
    }
}

#[tokio::test]
async fn a_client_refuses_a_server_that_is_not_the_expected_workload() {
    let ca = ca();
    let (client_result, _) = connect(
        client(&ca, CLIENT, &ca, WEB),
        server(&ca, "spiffe://cluster.local/ns/demo/sa/other"),
    )
    .await;
    let err = client_result.unwrap_err();
    assert_eq!(
        err,
        "the server is spiffe://cluster.local/ns/demo/sa/other, not the expected spiffe://cluster.local/ns/demo/sa/web"
    );
}

#[tokio::test]
async fn a_server_refuses_clients_without_a_certificate_or_with_a_foreign_one() {
    let ca = ca();
    let other_root = self::ca();
    // No client certificate at all.
    let anonymous = {
        let verifier = super::verifier::ServerIdentityVerifier::new(
            Arc::new({
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.root.clone()).unwrap();
                roots
            }),
            id(WEB),
            super::provider().signature_verification_algorithms,
        );
        let mut config = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
        Arc::new(config)
    };
    let expired = {
        let (chain, key) = leaf(&ca, CLIENT, -7200, -3600);
        tunnel_client_config(
            chain,
            key,
            std::slice::from_ref(&ca.root),
            id(WEB),
            TunnelTls::default(),
        )
        .unwrap()
    };
    let cases = [
        (
            "no certificate",
            anonymous,
            "the peer presented no certificate",
        ),
        (
            "another root",
            client(&other_root, CLIENT, &ca, WEB),
            "does not chain to a root of the trust bundle",
        ),
        ("expired", expired, "the peer's certificate has expired"),
        (
            "another trust domain",
            client(&ca, "spiffe://other.domain/ns/demo/sa/client", &ca, WEB),
            "is outside trust domain cluster.local",
        ),
    ];
    for (what, client_config, reason) in cases {
        let (client_result, server_result) = connect(client_config, server(&ca, WEB)).await;
        let err = server_result.unwrap_err();
        assert!(err.contains(reason), "{what}: {err}");
        assert!(client_result.is_err(), "{what}: the client got through");
    }
}

#[tokio::test]
async fn repeat_connections_resume_and_a_new_trust_bundle_forces_full_verification() {
    let ca = ca();
    let server_config = server(&ca, WEB);
    let client_config = client(&ca, CLIENT, &ca, WEB);
    let first = connect(client_config.clone(), server_config.clone())
        .await
        .0
        .unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    let second = connect(client_config, server_config.clone()).await;
    assert_eq!(
        second.0.unwrap().get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    assert_eq!(
        second.1.unwrap(),
        id(CLIENT),
        "a resumed session still carries the client identity"
    );

    // A client built for a new bundle has no session to resume: full verification.
    let rebuilt = client(&ca, CLIENT, &ca, WEB);
    let third = connect(rebuilt, server_config).await.0.unwrap();
    assert_eq!(
        third.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
}

#[tokio::test]
async fn without_resumption_every_connection_does_a_full_handshake() {
    let ca = ca();
    let off = TunnelTls {
        resumption: false,
        ..TunnelTls::default()
    };
    let server_config = server_with_options(&ca, WEB, off);
    let client_config = client_with_options(&ca, CLIENT, &ca, WEB, off);
    for _ in 0..2 {
        let (client_result, server_result) =
            connect(client_config.clone(), server_config.clone()).await;
        assert_eq!(server_result.unwrap(), id(CLIENT));
        assert_eq!(
            client_result.unwrap().get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
    }
    // The server alone turning it off is enough: it issues no tickets.
    let resuming_client = client(&ca, CLIENT, &ca, WEB);
    for _ in 0..2 {
        let (client_result, _) = connect(resuming_client.clone(), server_config.clone()).await;
        assert_eq!(
            client_result.unwrap().get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
    }
}

#[tokio::test]
async fn chacha20_is_only_accepted_when_configured_as_the_fallback() {
    let ca = ca();
    // A peer without AES hardware that offers only ChaCha20-Poly1305.
    let chacha_only = {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites =
            vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
        let provider = Arc::new(provider);
        let verifier = super::verifier::ServerIdentityVerifier::new(
            Arc::new({
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.root.clone()).unwrap();
                roots
            }),
            id(WEB),
            provider.signature_verification_algorithms,
        );
        let (chain, key) = valid(&ca, CLIENT);
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
        Arc::new(config)
    };
    let with = |suites| TunnelTls {
        suites,
        ..TunnelTls::default()
    };
    let server_with = |suites| server_with_options(&ca, WEB, with(suites));
    let (refused, _) = connect(chacha_only.clone(), server_with(CipherSuites::AesGcm)).await;
    assert!(refused.is_err(), "AES-GCM only by default");
    let (accepted, _) = connect(chacha_only, server_with(CipherSuites::AesGcmThenChaCha20)).await;
    let suite = accepted
        .unwrap()
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .unwrap()
        .suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    // With the fallback configured, AES-GCM still wins between two daemons.
    let daemon = client_with_options(
        &ca,
        CLIENT,
        &ca,
        WEB,
        with(CipherSuites::AesGcmThenChaCha20),
    );
    let (both, _) = connect(daemon, server_with(CipherSuites::AesGcmThenChaCha20)).await;
    let suite = both
        .unwrap()
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .unwrap()
        .suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
}

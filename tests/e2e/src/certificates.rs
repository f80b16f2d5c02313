//! Certificates for tests that play a peer: workload certificates signed by
//! the cluster's own CA (or by a root of the test's), written as PEM files
//! for the tools that present them.

use std::path::Path;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};

/// Writes a workload certificate for `identity` signed by `issuer`, valid
/// from `not_before` to `not_after`, as `<dir>/<name>.pem` and `.key`.
pub fn write_leaf(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    identity: &str,
    validity: (time::OffsetDateTime, time::OffsetDateTime),
) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    (params.not_before, params.not_after) = validity;
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    )
}

/// The cluster CA's root, able to sign.
pub fn cluster_root(cluster: &ztunnel_cluster::Cluster) -> Issuer<'static, KeyPair> {
    let state = cluster.status().state_dir.join("ca/state");
    let cert = std::fs::read_to_string(state.join("root-cert.pem")).unwrap();
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(state.join("ca-key.pem")).unwrap()).unwrap();
    Issuer::from_ca_cert_pem(&cert, key).unwrap()
}

/// From five minutes ago to an hour from now.
pub fn valid_now() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::minutes(5),
        now + time::Duration::hours(1),
    )
}

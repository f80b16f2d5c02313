//! The CA's signing, measured in-process: the work of one certificate
//! request once authenticated (the CSR checked, the leaf signed), on one
//! CPU. A cold start of N nodes asking for M identities each is N x M of
//! these, spread over the CA's CPUs and replicas.

use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair, SanType};
use serde::{Deserialize, Serialize};
use ztunnel::{
    ca::{authority::Authority, csr},
    identity::TrustDomain,
};

/// Requests signed in the measurement.
const REQUESTS: usize = 2000;

/// The CA's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaRow {
    /// Requests signed.
    pub requests: usize,
    /// CPU time per request (CSR checked and leaf signed), in µs, on one thread.
    pub per_request_us: f64,
    /// Certificates signed per second per CPU.
    pub per_second_per_cpu: f64,
}

/// Signs 2,000 distinct CSRs with a fresh self-signed CA.
pub fn measure() -> anyhow::Result<CaRow> {
    let dir = std::env::temp_dir().join(format!("ztunnel-scale-ca-{}", std::process::id()));
    let authority = Authority::self_signed(&dir, TrustDomain::new("cluster.local")?)?;
    // The requests are made first: the daemons make them, not the CA.
    let requests = (0..REQUESTS)
        .map(|i| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            let id = format!("spiffe://cluster.local/ns/scale-{}/sa/app-{i}", i % 1000);
            params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
            Ok(params.serialize_request(&key)?.pem()?)
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    let started = Instant::now();
    for pem in &requests {
        let checked = csr::validate(pem)?;
        std::hint::black_box(authority.issue(&checked, Duration::from_secs(24 * 3600))?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let row = CaRow {
        requests: REQUESTS,
        per_request_us: elapsed * 1e6 / REQUESTS as f64,
        per_second_per_cpu: REQUESTS as f64 / elapsed,
    };
    eprintln!("ca: {row:?}");
    Ok(row)
}

/// The CA table, with what a cold start of a large cluster takes.
pub fn markdown(row: &CaRow) -> String {
    let cold = |identities: f64| identities / row.per_second_per_cpu;
    format!(
        "### The CA (in-process, one thread)\n\n\
         | requests | per request (µs) | certificates/s per CPU |\n|---|---|---|\n\
         | {} | {:.0} | {:.0} |\n\n\
         - a cold start asking for 100,000 identities (e.g. 5,000 nodes x 20 ServiceAccounts) \
         is {:.0} CPU-seconds of signing: {:.0} s on one CPU, {:.0} s on 4\n\n",
        row.requests,
        row.per_request_us,
        row.per_second_per_cpu,
        cold(100_000.0),
        cold(100_000.0),
        cold(100_000.0) / 4.0,
    )
}

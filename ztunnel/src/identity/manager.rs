//! The certificate manager: one certificate per ServiceAccount with a pod on
//! this node, obtained from the CA and renewed for as long as it is needed.
//!
//! Each identity has a worker task that
//! - makes a fresh P-256 key (kept in memory only) and a CSR, and asks the CA
//!   (at most [`ManagerConfig::concurrency`] requests of a node at a time);
//! - on success publishes the certificate and sleeps until about half its
//!   lifetime (45-55%, so a fleet's renewals spread out);
//! - on failure retries with exponential backoff; the current certificate keeps
//!   serving while it is valid and is withdrawn the moment it expires.
//!
//! Certificates are published as one immutable snapshot in a `watch` channel:
//! readers take the current map without locking, writers replace it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::PrivatePkcs8KeyDer;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{
    Identity,
    backoff::Backoff,
    ca_client::{CaClient, CaClientError},
    certificate::{CertificateError, WorkloadCertificate},
};

/// Every certificate held, by identity.
pub type Certificates = Arc<BTreeMap<Identity, Arc<WorkloadCertificate>>>;

/// How certificates are requested and retried.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Validity asked of the CA (it may grant less).
    pub validity: Duration,
    /// First retry delay after a failure.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Requests in flight at most, for all identities together (Istio's
    /// ztunnel allows 8). A node starting with many ServiceAccounts, or a
    /// whole cluster after a CA outage, queues its requests here rather
    /// than at the CA: measured with 5,000 nodes x 20 identities against one
    /// CA, unbounded requests waited so long at the CA that a third timed
    /// out and were signed twice (`bench/results/scale.md`).
    pub concurrency: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            validity: Duration::from_secs(24 * 3600),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            concurrency: 8,
        }
    }
}

/// Why one request for a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The key or CSR could not be made.
    #[error("making the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// The CA could not be reached or refused.
    #[error(transparent)]
    Ca(#[from] CaClientError),
    /// The CA's answer is unusable.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

/// Told about every certificate request, for metrics.
pub trait RequestObserver: Send + Sync {
    /// A request for `identity` finished after `elapsed`; `ok` says whether a
    /// usable certificate came back.
    fn requested(&self, identity: &Identity, elapsed: Duration, ok: bool);
}

/// Holds and renews the certificates of a set of identities.
pub struct CertManager {
    client: CaClient,
    config: ManagerConfig,
    certificates: Arc<watch::Sender<Certificates>>,
    workers: HashMap<Identity, JoinHandle<()>>,
    /// The identities being managed, for those who watch them.
    managed: watch::Sender<BTreeSet<Identity>>,
    /// The managed identities whose first request has not finished yet.
    pending: Arc<watch::Sender<BTreeSet<Identity>>>,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Permits for requests in flight ([`ManagerConfig::concurrency`]).
    in_flight: Arc<Semaphore>,
}

impl CertManager {
    /// A manager holding nothing yet.
    pub fn new(client: CaClient, config: ManagerConfig) -> Self {
        Self {
            client,
            certificates: Arc::new(watch::Sender::new(Certificates::default())),
            workers: HashMap::new(),
            managed: watch::Sender::new(BTreeSet::new()),
            pending: Arc::new(watch::Sender::new(BTreeSet::new())),
            observer: None,
            in_flight: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
        }
    }

    /// Reports every certificate request to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Makes the held identities exactly `wanted`: starts obtaining
    /// certificates for new ones, drops those no longer wanted.
    pub fn set_identities(&mut self, wanted: &BTreeSet<Identity>) {
        self.workers.retain(|identity, worker| {
            let keep = wanted.contains(identity);
            if !keep {
                worker.abort();
                self.certificates.send_modify(|certs| {
                    Arc::make_mut(certs).remove(identity);
                });
                self.pending.send_if_modified(|pending| pending.remove(identity));
                tracing::info!(%identity, "dropped certificate: no pod of this identity on the node");
            }
            keep
        });
        for identity in wanted {
            if !self.workers.contains_key(identity) {
                self.pending.send_modify(|pending| {
                    pending.insert(identity.clone());
                });
                let worker = Worker {
                    identity: identity.clone(),
                    client: self.client.clone(),
                    config: self.config.clone(),
                    certificates: self.certificates.clone(),
                    pending: self.pending.clone(),
                    observer: self.observer.clone(),
                    in_flight: self.in_flight.clone(),
                };
                self.workers
                    .insert(identity.clone(), tokio::spawn(worker.run()));
            }
        }
        self.managed.send_if_modified(|managed| {
            let changed = managed != wanted;
            managed.clone_from(wanted);
            changed
        });
    }

    /// The identities being managed, with or without a certificate yet.
    pub fn identities(&self) -> BTreeSet<Identity> {
        self.workers.keys().cloned().collect()
    }

    /// The valid certificate of `identity`, if one is held. An expired
    /// certificate is never returned.
    pub fn get(&self, identity: &Identity) -> Option<Arc<WorkloadCertificate>> {
        let certs = self.certificates.borrow();
        certs
            .get(identity)
            .filter(|cert| cert.is_valid_at(SystemTime::now()))
            .cloned()
    }

    /// A receiver of every new snapshot of the held certificates.
    pub fn subscribe(&self) -> watch::Receiver<Certificates> {
        self.certificates.subscribe()
    }

    /// A receiver of the identities being managed (held or not).
    pub fn subscribe_managed(&self) -> watch::Receiver<BTreeSet<Identity>> {
        self.managed.subscribe()
    }

    /// A receiver of the managed identities whose first request to the CA
    /// has not finished yet (with or without success).
    pub fn subscribe_pending(&self) -> watch::Receiver<BTreeSet<Identity>> {
        self.pending.subscribe()
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for worker in self.workers.values() {
            worker.abort();
        }
    }
}

/// Obtains and renews the certificate of one identity.
struct Worker {
    identity: Identity,
    client: CaClient,
    config: ManagerConfig,
    certificates: Arc<watch::Sender<Certificates>>,
    pending: Arc<watch::Sender<BTreeSet<Identity>>>,
    observer: Option<Arc<dyn RequestObserver>>,
    in_flight: Arc<Semaphore>,
}

impl Worker {
    async fn run(self) {
        let identity = &self.identity;
        let mut backoff = Backoff::new(self.config.retry_initial, self.config.retry_max);
        let mut expiry: Option<Instant> = None;
        loop {
            let fetched = {
                // Held until the request is reported, so that the reports
                // of requests never overlap more than the permits allow.
                // (The semaphore is never closed.)
                let _permit = self.in_flight.acquire().await.ok();
                let started = Instant::now();
                let fetched = self.fetch().await;
                if let Some(observer) = &self.observer {
                    observer.requested(identity, started.elapsed(), fetched.is_ok());
                }
                fetched
            };
            match fetched {
                Ok(cert) => {
                    backoff.reset();
                    let renew_in = renewal_delay(&cert, SystemTime::now());
                    expiry = Some(Instant::now() + remaining(&cert, SystemTime::now()));
                    tracing::info!(
                        %identity,
                        serial = cert.serial(),
                        not_after = unix_secs(cert.not_after()),
                        renew_in_ms = renew_in.as_millis() as u64,
                        "certificate issued"
                    );
                    self.publish(Some(Arc::new(cert)));
                    self.answered();
                    tokio::time::sleep(renew_in).await;
                }
                Err(err) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(%identity, retry_in_ms = retry_in.as_millis() as u64, "certificate request failed: {err}");
                    self.answered();
                    let retry_at = Instant::now() + retry_in;
                    // The current certificate serves until it expires, then is withdrawn.
                    if let Some(at) = expiry.filter(|at| *at <= retry_at) {
                        tokio::time::sleep_until(at).await;
                        tracing::warn!(%identity, "certificate expired before it could be renewed; withdrawn");
                        self.publish(None);
                        expiry = None;
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
            }
        }
    }

    async fn fetch(&self) -> Result<WorkloadCertificate, FetchError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(self.identity.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let chain = self
            .client
            .create_certificate(csr, self.config.validity, &self.identity)
            .await?;
        let private = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok(WorkloadCertificate::new(
            self.identity.clone(),
            &chain,
            private,
            key.public_key_raw(),
        )?)
    }

    /// Ends the wait of those waiting for the first answer about this
    /// identity (after the certificate, if any, is published).
    fn answered(&self) {
        self.pending
            .send_if_modified(|pending| pending.remove(&self.identity));
    }

    fn publish(&self, cert: Option<Arc<WorkloadCertificate>>) {
        self.certificates.send_modify(|certs| {
            let certs = Arc::make_mut(certs);
            match cert {
                Some(cert) => certs.insert(self.identity.clone(), cert),
                None => certs.remove(&self.identity),
            };
        });
    }
}

/// When to renew `cert`: at 45-55% of its lifetime, counted from its start.
fn renewal_delay(cert: &WorkloadCertificate, now: SystemTime) -> Duration {
    let lifetime = cert
        .not_after()
        .duration_since(cert.not_before())
        .unwrap_or_default();
    let renew_at = cert.not_before() + lifetime.mul_f64(rand::random_range(0.45..=0.55));
    renew_at.duration_since(now).unwrap_or_default()
}

fn remaining(cert: &WorkloadCertificate, now: SystemTime) -> Duration {
    cert.not_after().duration_since(now).unwrap_or_default()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

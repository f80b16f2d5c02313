//! The TLS configurations of the tunnel, kept in step with the certificates
//! and the trust bundle.
//!
//! Building a configuration parses the roots and the key, so each is built
//! once and reused: a client configuration per (source, destination)
//! identity pair, which also keys its session cache (resumption only ever
//! happens between the same two identities); a server configuration per local
//! identity, holding its rotating ticket keys. An entry remembers the
//! certificate and bundle it was built from and is rebuilt when either
//! changes: a rotated certificate is presented from the next connection on,
//! and a new trust bundle starts from an empty session cache, so the next
//! handshake verifies the peer against the new roots in full.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

use crate::{
    identity::{Identity, TrustBundle, TrustDomain, WorkloadCertificate, manager::Certificates},
    tls::{self, TlsError, TunnelTls},
};

/// Why no TLS configuration is available for a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No valid certificate is held for the identity (yet, or any more).
    #[error("no valid certificate for {0} (is the CA reachable?)")]
    NoCertificate(Identity),
    /// rustls refused to build the configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A configuration and what it was built from.
struct Built<C> {
    certificate: Arc<WorkloadCertificate>,
    bundle: Arc<TrustBundle>,
    config: Arc<C>,
}

impl<C> Built<C> {
    fn is_current(
        &self,
        certificate: &Arc<WorkloadCertificate>,
        bundle: &Arc<TrustBundle>,
    ) -> bool {
        Arc::ptr_eq(&self.certificate, certificate) && Arc::ptr_eq(&self.bundle, bundle)
    }
}

/// The tunnel's TLS configurations, per identity.
pub struct TunnelConfigs {
    certificates: watch::Receiver<Certificates>,
    /// Identities whose first certificate request has not been answered.
    pending: watch::Receiver<BTreeSet<Identity>>,
    bundle: watch::Receiver<Arc<TrustBundle>>,
    trust_domain: TrustDomain,
    options: TunnelTls,
    clients: Mutex<BTreeMap<(Identity, Identity), Built<ClientConfig>>>,
    servers: Mutex<BTreeMap<Identity, Built<ServerConfig>>>,
}

impl TunnelConfigs {
    /// Configurations from the certificates and bundle the receivers
    /// publish; `pending` names the identities whose first certificate is
    /// still being requested (see [`CertManager::subscribe_pending`]).
    ///
    /// [`CertManager::subscribe_pending`]: crate::identity::manager::CertManager::subscribe_pending
    pub fn new(
        certificates: watch::Receiver<Certificates>,
        pending: watch::Receiver<BTreeSet<Identity>>,
        bundle: watch::Receiver<Arc<TrustBundle>>,
        trust_domain: TrustDomain,
        options: TunnelTls,
    ) -> Self {
        Self {
            certificates,
            pending,
            bundle,
            trust_domain,
            options,
            clients: Mutex::default(),
            servers: Mutex::default(),
        }
    }

    /// Waits while the first certificate of `identity` is being requested.
    ///
    /// A newly enrolled pod's first connections can arrive before the CA has
    /// answered for its ServiceAccount: they are held until it has (as
    /// Istio's ztunnel holds them), not refused. Returns at once when the
    /// first answer is in, whatever it was; the CA client's timeouts bound
    /// the wait.
    pub async fn first_certificate(&self, identity: &Identity) {
        if !self.pending.borrow().contains(identity) {
            return;
        }
        let mut pending = self.pending.clone();
        // An error means the manager is gone; there is nothing to wait for.
        let _ = pending
            .wait_for(|pending| !pending.contains(identity))
            .await;
    }

    /// The client configuration for a connection from `source` to `destination`.
    pub fn client(
        &self,
        source: &Identity,
        destination: &Identity,
    ) -> Result<Arc<ClientConfig>, ConfigError> {
        let (certificate, bundle) = self.current(source)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = (source.clone(), destination.clone());
        if let Some(built) = clients
            .get(&key)
            .filter(|b| b.is_current(&certificate, &bundle))
        {
            return Ok(built.config.clone());
        }
        let config = tls::tunnel_client_config(
            certificate.chain().to_vec(),
            certificate.key(),
            bundle.roots(),
            destination.clone(),
            self.options,
        )?;
        // Forget pairs whose source certificate is gone or replaced.
        let held = self.certificates.borrow().clone();
        clients.retain(|(source, _), built| {
            held.get(source)
                .is_some_and(|cert| Arc::ptr_eq(cert, &built.certificate))
        });
        clients.insert(
            key,
            Built {
                certificate,
                bundle,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// The server configuration presenting `identity`'s certificate.
    pub fn server(&self, identity: &Identity) -> Result<Arc<ServerConfig>, ConfigError> {
        let (certificate, bundle) = self.current(identity)?;
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(built) = servers
            .get(identity)
            .filter(|b| b.is_current(&certificate, &bundle))
        {
            return Ok(built.config.clone());
        }
        let config = tls::tunnel_server_config(
            certificate.chain().to_vec(),
            certificate.key(),
            bundle.roots(),
            self.trust_domain.clone(),
            self.options,
        )?;
        let held = self.certificates.borrow().clone();
        servers.retain(|identity, _| held.contains_key(identity));
        servers.insert(
            identity.clone(),
            Built {
                certificate,
                bundle,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// The valid certificate of `identity` and the current trust bundle.
    fn current(
        &self,
        identity: &Identity,
    ) -> Result<(Arc<WorkloadCertificate>, Arc<TrustBundle>), ConfigError> {
        let certificate = self
            .certificates
            .borrow()
            .get(identity)
            .filter(|cert| cert.is_valid_at(SystemTime::now()))
            .cloned()
            .ok_or_else(|| ConfigError::NoCertificate(identity.clone()))?;
        Ok((certificate, self.bundle.borrow().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A bundle of one throwaway self-signed root.
    fn bundle() -> TrustBundle {
        let root = rcgen::generate_simple_self_signed(vec!["root".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roots.pem");
        std::fs::write(&path, root.cert.pem()).unwrap();
        TrustBundle::load(&path).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_the_first_answer_of_the_ca_and_no_longer() {
        let web = Identity::parse("spiffe://cluster.local/ns/demo/sa/web").unwrap();
        let other = Identity::parse("spiffe://cluster.local/ns/demo/sa/other").unwrap();
        let (_certificates, certificates_rx) = watch::channel(Certificates::default());
        let (pending, pending_rx) = watch::channel(BTreeSet::from([web.clone()]));
        let (_bundle, bundle_rx) = watch::channel(Arc::new(bundle()));
        let configs = Arc::new(TunnelConfigs::new(
            certificates_rx,
            pending_rx,
            bundle_rx,
            TrustDomain::new("cluster.local").unwrap(),
            TunnelTls::default(),
        ));

        // An identity not being requested does not wait.
        configs.first_certificate(&other).await;

        let waiting = tokio::spawn({
            let configs = configs.clone();
            let web = web.clone();
            async move { configs.first_certificate(&web).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "returned before the CA answered");

        // The CA answers (here: with a failure; no certificate was published).
        pending.send_modify(|pending| {
            pending.remove(&web);
        });
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the wait ends with the answer")
            .unwrap();
        assert!(matches!(
            configs.client(&web, &other),
            Err(ConfigError::NoCertificate(_))
        ));
    }
}

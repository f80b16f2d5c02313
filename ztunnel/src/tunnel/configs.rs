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
    collections::BTreeMap,
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
    bundle: watch::Receiver<Arc<TrustBundle>>,
    trust_domain: TrustDomain,
    options: TunnelTls,
    clients: Mutex<BTreeMap<(Identity, Identity), Built<ClientConfig>>>,
    servers: Mutex<BTreeMap<Identity, Built<ServerConfig>>>,
}

impl TunnelConfigs {
    /// Configurations from the certificates and bundle the receivers publish.
    pub fn new(
        certificates: watch::Receiver<Certificates>,
        bundle: watch::Receiver<Arc<TrustBundle>>,
        trust_domain: TrustDomain,
        options: TunnelTls,
    ) -> Self {
        Self {
            certificates,
            bundle,
            trust_domain,
            options,
            clients: Mutex::default(),
            servers: Mutex::default(),
        }
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

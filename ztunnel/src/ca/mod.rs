//! `ztunnel ca`: a certificate authority speaking Istio's CA API over TLS.
//!
//! Node daemons (and Istio's own agents) send a CSR for a workload identity;
//! the CA authenticates the node by its bearer token (a token file, or
//! TokenReview in Kubernetes: [`token_review`]), checks that the node runs a
//! pod of that ServiceAccount (from the workload registry, or the Kubernetes
//! API), and signs a
//! short-lived SPIFFE leaf. Its signing material is a generated root or a
//! plugged-in intermediate ([`authority`]).

pub mod api;
pub mod authority;
pub mod csr;
pub mod nodes;
mod service;
pub mod token_review;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    identity::TrustDomain,
    kubernetes::{self, KubeConfig, KubeError},
    registry::Registry,
    reload::Watched,
    tls,
};
use authority::{Authority, AuthorityError};
use nodes::{NodeAuth, NodeTokens, NodeTokensError};
use token_review::TokenReviewer;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `ztunnel ca` needs to run.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// Address to serve gRPC over TLS on.
    pub listen: SocketAddr,
    /// Trust domain of the identities it signs.
    pub trust_domain: TrustDomain,
    /// Directory for the generated root (used when `cacerts` is not set).
    pub state_dir: PathBuf,
    /// Istio `cacerts` directory of a plugged-in intermediate.
    pub cacerts: Option<PathBuf>,
    /// How nodes are authenticated and which pods they run.
    pub nodes: NodeSource,
    /// Longest validity issued.
    pub max_validity: Duration,
    /// DNS names and IP addresses of the CA's serving certificate.
    pub server_names: Vec<String>,
    /// Where to publish the root certificate (the trust bundle for daemons).
    pub publish_root: Option<PathBuf>,
    /// The cluster this CA serves: a request naming another in its
    /// `clusterid` metadata is refused (one without is served).
    pub cluster_id: String,
}

/// How the CA knows the nodes: who is asking, and which pods it runs.
#[derive(Clone, Debug)]
pub enum NodeSource {
    /// Standalone: a token file and the workload registry file.
    Files {
        /// The workload registry: which node runs which pods.
        registry: PathBuf,
        /// The node token file.
        node_tokens: PathBuf,
    },
    /// Kubernetes: TokenReview of projected ServiceAccount tokens, and pods
    /// from the API server.
    Kubernetes {
        /// How to reach the API server.
        api: KubeConfig,
        /// The audiences accepted in node proxies' tokens (any one).
        audiences: Vec<String>,
        /// The node proxies' ServiceAccounts, `namespace/name` (any one).
        node_service_accounts: Vec<String>,
    },
}

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The signing material could not be loaded or generated.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The node token file is unusable.
    #[error(transparent)]
    Tokens(#[from] NodeTokensError),
    /// The workload registry is unusable.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// The Kubernetes API could not be used.
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
    /// The TokenReview settings are unusable.
    #[error("{0}")]
    TokenReview(String),
    /// The serving TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding, publishing or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A CA bound to its address, ready to serve.
pub struct Ca {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: service::CaService,
}

impl Ca {
    /// Loads (or creates) the signing material, binds the listener and
    /// publishes the root. Fails fast on any unusable input.
    pub async fn bind(config: CaConfig) -> Result<Self, CaError> {
        let authority = match &config.cacerts {
            Some(dir) => Authority::plugged_in(dir, config.trust_domain.clone())?,
            None => Authority::self_signed(&config.state_dir, config.trust_domain.clone())?,
        };
        if let Some(path) = &config.publish_root {
            let io = |source| CaError::Io {
                context: format!("publishing the root certificate to {}", path.display()),
                source,
            };
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, authority.root_pem()).map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
        }
        let (chain, key) = authority.serving_certificate(&config.server_names)?;
        let acceptor = TlsAcceptor::from(tls::grpc_server_config(chain, key)?);
        let (nodes, registry) = match &config.nodes {
            NodeSource::Files {
                registry,
                node_tokens,
            } => (
                NodeAuth::Tokens(Watched::start(
                    node_tokens.clone(),
                    "node tokens",
                    NodeTokens::load,
                )?),
                Watched::start(registry.clone(), "registry", Registry::load)?,
            ),
            NodeSource::Kubernetes {
                api,
                audiences,
                node_service_accounts,
            } => {
                // Checked before anything is contacted.
                let usernames = node_service_accounts
                    .iter()
                    .map(|account| token_review::service_account_username(account))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(CaError::TokenReview)?;
                let client = kubernetes::client(api).await?;
                let reviewer = TokenReviewer::new(client, audiences.clone(), usernames);
                // No node is "this" node: the CA captures nothing.
                let source =
                    kubernetes::start(api, None, /* no policies: no root namespace */ "").await?;
                // Serving before the first complete list would refuse nodes
                // their pods' identities.
                source.synced.wait().await?;
                (NodeAuth::TokenReview(Box::new(reviewer)), source.registry)
            }
        };
        let service = service::CaService {
            authority: Arc::new(authority),
            nodes,
            registry,
            max_validity: config.max_validity,
            cluster_id: config.cluster_id,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| CaError::Io {
                context: format!("binding {}", config.listen),
                source,
            })?;
        Ok(Self {
            listener,
            acceptor,
            service,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, CaError> {
        self.listener.local_addr().map_err(|source| CaError::Io {
            context: "reading the bound address".to_owned(),
            source,
        })
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), CaError> {
        let Self {
            listener,
            acceptor,
            service,
        } = self;
        // TLS handshakes run in their own tasks so a slow client cannot stall
        // accepting; finished streams are handed to the gRPC server.
        let (streams, incoming) = tokio::sync::mpsc::channel(64);
        let accept_loop = tokio::spawn(async move {
            let mut incoming = crate::accept::Acceptor::new(listener);
            loop {
                let (tcp, peer) = incoming
                    .accept(|err, backoff| {
                        tracing::warn!("accept failed, retrying in {backoff:?}: {err}")
                    })
                    .await;
                let (acceptor, streams) = (acceptor.clone(), streams.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = streams.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                        Ok(Err(err)) => tracing::info!(%peer, "TLS handshake failed: {err}"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let result = tonic::transport::Server::builder()
            .add_service(
                api::istio_certificate_service_server::IstioCertificateServiceServer::new(service),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                shutdown,
            )
            .await;
        accept_loop.abort();
        Ok(result?)
    }
}

//! Client of Istio's CA API: sends a CSR, returns the signed chain.
//!
//! The channel connects lazily and reconnects by itself, so a CA that was
//! down is used again as soon as it is back. TLS (1.3 only) is ours, through
//! a custom connector, not tonic's defaults.

use std::{path::PathBuf, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use super::Identity;

use crate::{
    ca::api::{
        CLUSTER_ID_HEADER, IstioCertificateRequest,
        istio_certificate_service_client::IstioCertificateServiceClient,
    },
    tls,
};
/// gRPC status codes, as [`CaClientError::Status`] carries them.
pub use tonic::Code;

/// How long connecting to the CA may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the CA is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `host:port` of the CA.
    pub address: String,
    /// Name (DNS or IP) to verify in the CA's serving certificate.
    pub server_name: String,
    /// PEM file of the root(s) the CA's serving certificate chains to.
    pub root_cert: PathBuf,
    /// The node's bearer token.
    pub token: CaToken,
    /// The cluster this node is in, sent as `clusterid` (istiod picks the
    /// API server that reviews the token by it).
    pub cluster_id: String,
}

/// Where the node's bearer token for the CA comes from.
#[derive(Clone, Debug)]
pub enum CaToken {
    /// A fixed token.
    Fixed(String),
    /// A file read again for every request: a projected ServiceAccount
    /// token, which the kubelet replaces before it expires.
    File(PathBuf),
}

impl CaToken {
    /// The `authorization` header carrying the current token.
    async fn header(&self) -> Result<MetadataValue<Ascii>, CaClientError> {
        let token = match self {
            Self::Fixed(token) => token.clone(),
            Self::File(path) => tokio::fs::read_to_string(path).await.map_err(|err| {
                CaClientError::Config(format!("reading the CA token {}: {err}", path.display()))
            })?,
        };
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|err| CaClientError::Config(format!("the CA token: {err}")))
    }
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// The client could not be set up.
    #[error("CA client configuration: {0}")]
    Config(String),
    /// The CA refused or the call failed; carries the gRPC status.
    #[error("CA answered {code:?}: {message}")]
    Status {
        /// gRPC status code.
        code: tonic::Code,
        /// The CA's explanation.
        message: String,
    },
}

impl From<tonic::Status> for CaClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// A connection (made lazily) to the CA.
#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    token: CaToken,
    cluster_id: MetadataValue<Ascii>,
}

impl CaClient {
    /// A client for `config`; nothing is sent until the first request.
    pub fn new(config: &CaClientConfig) -> Result<Self, CaClientError> {
        let bad = |what: &str, err: &dyn std::fmt::Display| {
            CaClientError::Config(format!("{what}: {err}"))
        };
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.root_cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|err| bad(&format!("reading {}", config.root_cert.display()), &err))?;
        let connector =
            TlsConnector::from(tls::grpc_client_config(&roots).map_err(|err| bad("TLS", &err))?);
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|err| bad("server name", &err))?;
        // Checked now, so a bad token or an unreadable file stops the daemon
        // at start rather than at its first certificate.
        let token = config.token.clone();
        if let CaToken::Fixed(fixed) = &token {
            format!("Bearer {fixed}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|err| bad("token", &err))?;
        }
        let cluster_id = config
            .cluster_id
            .parse::<MetadataValue<Ascii>>()
            .map_err(|err| bad("cluster id", &err))?;

        let address = Arc::new(config.address.clone());
        // The URI only routes the request; the connector below makes the real
        // connection, TLS included.
        let endpoint = Endpoint::from_shared(format!("http://{}", config.address))
            .map_err(|err| bad("address", &err))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let (connector, server_name, address) =
                (connector.clone(), server_name.clone(), address.clone());
            async move {
                let tcp = TcpStream::connect(address.as_str()).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }));
        Ok(Self {
            client: IstioCertificateServiceClient::new(channel),
            token,
            cluster_id,
        })
    }

    /// Sends `csr_pem` asking for `validity`, on behalf of `identity`;
    /// returns the chain as the CA sent it (PEM, leaf first).
    pub async fn create_certificate(
        &self,
        csr_pem: String,
        validity: Duration,
        identity: &Identity,
    ) -> Result<Vec<String>, CaClientError> {
        use prost_types::{Struct, Value, value::Kind};
        let metadata = Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                Value {
                    kind: Some(Kind::StringValue(identity.to_string())),
                },
            )]
            .into(),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(metadata),
        });
        let headers = request.metadata_mut();
        headers.insert("authorization", self.token.header().await?);
        headers.insert(CLUSTER_ID_HEADER, self.cluster_id.clone());
        let response = self.client.clone().create_certificate(request).await?;
        Ok(response.into_inner().cert_chain)
    }
}

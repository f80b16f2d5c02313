//! `CreateCertificate`: authenticate the node, validate the CSR, authorise
//! the identity against the node's pods, sign.
//!
//! Every refusal is logged with the peer, the node (when known) and the
//! reason, and answered with a status the caller can act on.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tonic::{Request, Response, Status, metadata::MetadataMap};

use super::{
    api::{
        CLUSTER_ID_HEADER, IstioCertificateRequest, IstioCertificateResponse,
        istio_certificate_service_server::IstioCertificateService,
    },
    authority::Authority,
    csr,
    nodes::NodeAuth,
};
use crate::{identity::Identity, registry::Registry, reload::Watched};

/// Metadata key with which a node agent names the workload it asks for.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The gRPC service.
pub struct CaService {
    pub(super) authority: Arc<Authority>,
    pub(super) nodes: NodeAuth,
    pub(super) registry: Watched<Registry>,
    pub(super) max_validity: Duration,
    pub(super) cluster_id: String,
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.remote_addr();
        let node = match self.authenticate(request.metadata()).await {
            Ok(node) => node,
            Err(reason) => return Err(refuse(peer, None, Status::permission_denied(reason))),
        };
        let request = request.into_inner();
        let result = self.sign(&node, &request);
        match result {
            Ok((identity, chain, validity)) => {
                tracing::info!(%node, %identity, validity_s = validity.as_secs(), ?peer, "issued certificate");
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: chain,
                }))
            }
            Err(status) => Err(refuse(peer, Some(&node), status)),
        }
    }
}

impl CaService {
    /// The node presenting the request's bearer token.
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<String, String> {
        // Before the token: a token of another cluster cannot be reviewed here.
        if let Some(cluster) = metadata.get(CLUSTER_ID_HEADER) {
            let cluster = cluster.to_str().unwrap_or_default();
            if cluster != self.cluster_id {
                return Err(format!(
                    "the request is for cluster {cluster:?}; this CA serves {:?} (--cluster-id)",
                    self.cluster_id
                ));
            }
        }
        let header = metadata
            .get("authorization")
            .ok_or("no `authorization: Bearer <node token>` header")?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or("the authorization header is not `Bearer <node token>`")?;
        self.nodes.node_of(token).await
    }

    fn sign(
        &self,
        node: &str,
        request: &IstioCertificateRequest,
    ) -> Result<(Identity, Vec<String>, Duration), Status> {
        let csr =
            csr::validate(&request.csr).map_err(|err| Status::invalid_argument(err.to_string()))?;
        let identity = csr.identity().clone();
        if identity.trust_domain() != self.authority.trust_domain() {
            return Err(Status::permission_denied(format!(
                "{identity} is outside this CA's trust domain {}",
                self.authority.trust_domain()
            )));
        }
        if let Some(impersonated) = impersonated_identity(request)
            && impersonated != identity.to_string()
        {
            return Err(Status::invalid_argument(format!(
                "{IMPERSONATED_IDENTITY} {impersonated} differs from the CSR's identity {identity}"
            )));
        }
        let registry = self.registry.current();
        let has_pod = registry.pods_on(node).any(|pod| {
            pod.namespace == identity.namespace()
                && pod.service_account == identity.service_account()
        });
        if !has_pod {
            return Err(Status::permission_denied(format!(
                "node {node} runs no pod of ServiceAccount {}/{}",
                identity.namespace(),
                identity.service_account()
            )));
        }
        let validity = self.validity(request.validity_duration);
        let chain = self.authority.issue(&csr, validity).map_err(|err| {
            tracing::error!(%identity, "signing failed: {err}");
            Status::internal("signing failed")
        })?;
        Ok((identity, chain, validity))
    }

    /// The requested validity, capped by the CA's maximum; a missing or
    /// non-positive request gets the maximum.
    fn validity(&self, requested_seconds: i64) -> Duration {
        match u64::try_from(requested_seconds) {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds).min(self.max_validity),
            _ => self.max_validity,
        }
    }
}

fn impersonated_identity(request: &IstioCertificateRequest) -> Option<&str> {
    use prost_types::value::Kind;
    let value = request
        .metadata
        .as_ref()?
        .fields
        .get(IMPERSONATED_IDENTITY)?;
    match &value.kind {
        Some(Kind::StringValue(identity)) => Some(identity),
        _ => None,
    }
}

fn refuse(peer: Option<SocketAddr>, node: Option<&str>, status: Status) -> Status {
    tracing::warn!(?peer, node = node.unwrap_or("-"), code = ?status.code(), reason = status.message(), "refused certificate request");
    status
}

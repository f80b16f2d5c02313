//! Istio's certificate-signing API (`istio.v1.auth.IstioCertificateService`),
//! generated from `proto/ca.proto`. The server lives in [`crate::ca`], the
//! client in [`crate::identity`].

/// gRPC metadata naming the cluster a node proxy runs in: istiod reviews
/// its token with that cluster's API server (Istio's default cluster is
/// `Kubernetes`).
pub const CLUSTER_ID_HEADER: &str = "clusterid";

/// The generated messages and services.
#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("istio.v1.auth");
}
pub use generated::*;

//! The destination side's decision, the same on every inbound path (tunnel,
//! plaintext, same node): PeerAuthentication first (STRICT refuses plaintext),
//! then AuthorizationPolicy. Dry-run and AUDIT outcomes are logged here.

use std::net::{IpAddr, SocketAddr};

use super::{ProxyContext, pod::LocalPod};
use crate::{
    identity::Identity,
    policy::{Connection, Decision, MtlsMode, Workload},
};

/// Why a connection was refused by policy.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// Plaintext to a port whose PeerAuthentication mode is STRICT.
    #[error("plaintext refused: PeerAuthentication mode STRICT for port {0}")]
    Strict(u16),
    /// An AuthorizationPolicy refused it.
    #[error("{0}")]
    Policy(String),
}

/// Decides whether `source` (with its proven identity, `None` for plaintext)
/// may reach `destination` in `pod`.
pub fn check(
    context: &ProxyContext,
    pod: &LocalPod,
    source: IpAddr,
    identity: Option<&Identity>,
    destination: SocketAddr,
) -> Result<(), Denied> {
    let policies = context.policies.borrow().clone();
    let workload = Workload {
        namespace: &pod.namespace,
        labels: &pod.labels,
    };
    if identity.is_none() && policies.mtls_mode(&workload, destination.port()) == MtlsMode::Strict {
        return Err(Denied::Strict(destination.port()));
    }
    let verdict = policies.authorize(
        &workload,
        &Connection {
            source_ip: source,
            source_identity: identity,
            destination_ip: destination.ip(),
            destination_port: destination.port(),
        },
    );
    let principal = identity.map(Identity::to_string).unwrap_or_default();
    for policy in &verdict.audited {
        tracing::info!(policy = %policy, dst.pod = %pod.name, src.addr = %source, src.identity = %principal, %destination, "audit: connection matched an AUDIT policy");
    }
    if let Some(would) = &verdict.dry_run {
        tracing::info!(dst.pod = %pod.name, src.addr = %source, src.identity = %principal, %destination, "dry-run: the dry-run policies would decide {would:?}");
    }
    match verdict.decision {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { reason } => Err(Denied::Policy(reason)),
    }
}

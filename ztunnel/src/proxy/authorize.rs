//! The destination side's decision, the same on every inbound path (tunnel,
//! plaintext, same node): PeerAuthentication first (STRICT refuses plaintext),
//! then AuthorizationPolicy. Dry-run and AUDIT outcomes are logged here. An
//! admitted connection is tracked until it closes, so that a policy change
//! can close it ([`enforce_changes`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{ProxyContext, admitted::Admission, pod::LocalPod};
use crate::{
    identity::Identity,
    metrics::{DryRunLabels, Metrics, PolicyLabels},
    policy::{Connection, Decision, MtlsMode, PolicySet, Workload},
};

/// Why a connection was refused by policy.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// Plaintext to a port whose PeerAuthentication mode is STRICT.
    #[error("plaintext refused: PeerAuthentication mode STRICT for port {0}")]
    Strict(u16),
    /// An AuthorizationPolicy refused it.
    #[error("{reason}")]
    Policy {
        /// The deciding policy (`namespace/name`; several for unmatched ALLOW policies).
        policy: String,
        /// Why, naming the policy and rule.
        reason: String,
    },
}

impl Denied {
    /// What decided, as the `policy` label of the denial metric.
    pub fn policy(&self) -> &str {
        match self {
            Self::Strict(_) => "PeerAuthentication/STRICT",
            Self::Policy { policy, .. } => policy,
        }
    }
}

/// Admits `source` (with its proven identity, `None` for plaintext) to
/// `destination` in `pod` if the policies in force allow it; the connection
/// is tracked for as long as the returned admission lives.
pub fn admit<'a>(
    context: &'a ProxyContext,
    pod: &Arc<LocalPod>,
    source: IpAddr,
    identity: Option<&Identity>,
    destination: SocketAddr,
) -> Result<Admission<'a>, Denied> {
    let policies = context.policies.borrow().clone();
    let metrics = context.metrics.as_ref();
    decide(&policies, pod, source, identity, destination, metrics)?;
    let admission = context
        .connections
        .track(pod.clone(), source, identity.cloned(), destination);
    // A change that landed between the decision and the tracking was not
    // applied to this connection by `enforce_changes`: decide again.
    let current = context.policies.borrow().clone();
    if !Arc::ptr_eq(&current, &policies) {
        decide(&current, pod, source, identity, destination, metrics)?;
    }
    Ok(admission)
}

/// Closes the open connections each new policy set denies, until the
/// policies stop changing (the daemon stops).
pub async fn enforce_changes(context: Arc<ProxyContext>) {
    let mut policies = context.policies.clone();
    while policies.changed().await.is_ok() {
        let set = policies.borrow_and_update().clone();
        let closed = context.connections.revoke_denied(&set, &context.metrics);
        if closed > 0 {
            tracing::info!(closed, "policy change applied to open connections");
        }
    }
}

/// The decision of `policies` for a connection from `source` to
/// `destination` in `pod`, counted in `metrics`.
pub fn decide(
    policies: &PolicySet,
    pod: &LocalPod,
    source: IpAddr,
    identity: Option<&Identity>,
    destination: SocketAddr,
    metrics: &Metrics,
) -> Result<(), Denied> {
    let result = evaluate(policies, pod, source, identity, destination, metrics);
    if let Err(denied) = &result {
        let policy = denied.policy().to_owned();
        metrics
            .policy_denials
            .get_or_create(&PolicyLabels { policy })
            .inc();
    }
    result
}

fn evaluate(
    policies: &PolicySet,
    pod: &LocalPod,
    source: IpAddr,
    identity: Option<&Identity>,
    destination: SocketAddr,
    metrics: &Metrics,
) -> Result<(), Denied> {
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
        metrics
            .policy_audits
            .get_or_create(&PolicyLabels {
                policy: policy.clone(),
            })
            .inc();
    }
    if let Some(would) = &verdict.dry_run {
        let (word, detail) = match would {
            Decision::Allow { .. } => ("allow", String::new()),
            Decision::Deny { reason, .. } => ("deny", format!(": {reason}")),
        };
        tracing::info!(dst.pod = %pod.name, src.addr = %source, src.identity = %principal, %destination, "dry-run: the dry-run policies would {word} this connection{detail}");
        metrics
            .policy_dry_run
            .get_or_create(&DryRunLabels { decision: word })
            .inc();
    }
    match verdict.decision {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { policy, reason } => Err(Denied::Policy { policy, reason }),
    }
}

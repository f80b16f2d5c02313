//! The destination side's decision, the same on every inbound path (tunnel,
//! plaintext, same node): [`PolicySet::decide`], counted and logged here
//! (denials, dry-run and AUDIT outcomes). An
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
    policy::{Connection, Decision, PolicySet, Workload},
};

/// A connection refused by policy.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    /// What decided, as the `policy` label of the denial metric: a policy
    /// (`namespace/name`; several for unmatched ALLOW policies) or
    /// [`crate::policy::STRICT_REFUSAL`].
    pub policy: String,
    /// Why, naming the policy and rule.
    pub reason: String,
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
        let policy = denied.policy.clone();
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
    let verdict = policies.decide(
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
        Decision::Deny { policy, reason } => Err(Denied { policy, reason }),
    }
}

//! `ztunnel ctl check`'s answer: what the destination's daemon would decide
//! for a connection between two pods of the registry, and why.

use serde_json::{Value, json};

use crate::{
    identity::{Identity, TrustDomain},
    policy::{Connection, Decision, MtlsMode, PolicySet, Workload},
    registry::{Enrolment, Pod, Registry},
};

/// Explains the decision for `(source pod, destination pod, port)`.
pub fn explain(
    registry: &Registry,
    policies: &PolicySet,
    enrolment: &Enrolment,
    trust_domain: &TrustDomain,
    (source, destination, port): (&str, &str, u16),
) -> Result<Value, String> {
    let find = |name: &str| -> Result<&Pod, String> {
        let (namespace, pod) = match name.split_once('/') {
            Some((ns, pod)) => (Some(ns), pod),
            None => (None, name),
        };
        registry
            .pods
            .iter()
            .find(|p| p.name == pod && namespace.is_none_or(|ns| p.namespace == ns))
            .ok_or_else(|| format!("no pod {name} in the registry"))
    };
    let (src, dst) = (find(source)?, find(destination)?);
    let identity =
        |pod: &Pod| Identity::new(trust_domain.clone(), &pod.namespace, &pod.service_account).ok();
    let (src_enrolled, dst_enrolled) = (
        enrolment.enrols_in(registry, src),
        enrolment.enrols_in(registry, dst),
    );
    let describe = |pod: &Pod, enrolled: bool| {
        json!({
            "pod": format!("{}/{}", pod.namespace, pod.name),
            "node": pod.node,
            "enrolled": enrolled,
            "identity": identity(pod).map(|id| id.to_string()),
        })
    };
    let mut answer = json!({
        "source": describe(src, src_enrolled),
        "destination": describe(dst, dst_enrolled),
        "port": port,
    });
    if !dst_enrolled {
        answer["path"] = "passthrough".into();
        answer["decision"] = "allow".into();
        answer["reason"] = "the destination is not in the mesh: no policy applies".into();
        return Ok(answer);
    }
    let path = match (src_enrolled, src.node == dst.node) {
        (true, true) => "same node, delivered directly (no TLS), with the source's identity",
        (true, false) => "mutual TLS tunnel between the nodes",
        (false, _) => "plaintext into the destination pod",
    };
    answer["path"] = path.into();
    let workload = Workload {
        namespace: &dst.namespace,
        labels: &dst.labels,
    };
    let mode = policies.mtls_mode(&workload, port);
    answer["mtls_mode"] = format!("{mode:?}").to_uppercase().into();
    let source_identity = if src_enrolled { identity(src) } else { None };
    if source_identity.is_none() && mode == MtlsMode::Strict {
        answer["decision"] = "deny".into();
        answer["reason"] =
            format!("plaintext refused: PeerAuthentication mode STRICT for port {port}").into();
        return Ok(answer);
    }
    let source_ip = src
        .ips
        .first()
        .copied()
        .ok_or("the source pod has no address")?;
    let destination_ip = dst
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == source_ip.is_ipv4())
        .ok_or("the destination pod has no address of the source's family")?;
    let verdict = policies.authorize(
        &workload,
        &Connection {
            source_ip,
            source_identity: source_identity.as_ref(),
            destination_ip,
            destination_port: port,
        },
    );
    let (decision, reason) = match verdict.decision {
        Decision::Allow {
            by: Some((policy, rule)),
        } => (
            "allow",
            format!("allowed by ALLOW policy {policy} rule {rule}"),
        ),
        Decision::Allow { by: None } => (
            "allow",
            "no ALLOW policy applies and no DENY policy matches".to_owned(),
        ),
        Decision::Deny { reason, .. } => ("deny", reason),
    };
    answer["decision"] = decision.into();
    answer["reason"] = reason.into();
    answer["audited_by"] = verdict.audited.into();
    if let Some(dry_run) = verdict.dry_run {
        answer["dry_run"] = format!("{dry_run:?}").into();
    }
    Ok(answer)
}

//! `ztunnel ctl check`'s answer: what the destination's daemon would decide
//! for a connection from a pod to a pod or a Service, and why. The decision
//! is [`PolicySet::decide`], the one the data path makes. A destination that
//! names a waypoint for the traffic is reported with it: the connection goes
//! there first, and the waypoint's own (L7) policy applies before these.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::{
    identity::{Identity, TrustDomain},
    policy::{Connection, PolicySet, Workload},
    registry::{
        Enrolment, Pod, Registry, Service,
        waypoint::{Traffic, waypoint_for},
    },
};

/// What `ctl check` names as the destination.
enum Target<'a> {
    Pod(&'a Pod),
    Service(&'a Service),
}

/// Explains the decision for `(source, destination, port)`. The source is a
/// pod (`name`, `namespace/name` or its address); the destination a pod or a
/// Service (the same forms, or a Service VIP), whose every endpoint is
/// explained.
pub fn explain(
    registry: &Registry,
    policies: &PolicySet,
    enrolment: &Enrolment,
    trust_domain: &TrustDomain,
    (source, destination, port): (&str, &str, u16),
) -> Result<Value, String> {
    let context = Context {
        registry,
        policies,
        enrolment,
        trust_domain,
    };
    let src = match target(registry, source)? {
        Target::Pod(pod) => pod,
        Target::Service(service) => {
            return Err(format!(
                "the source {}/{} is a Service; name a pod",
                service.namespace, service.name
            ));
        }
    };
    let service = match target(registry, destination)? {
        Target::Pod(dst) => {
            let mut answer = context.explain_pod(src, dst, port)?;
            let waypoint = waypoint_for(registry, &dst.namespace, &dst.labels, Traffic::Workload);
            with_waypoint(&mut answer, waypoint);
            return Ok(answer);
        }
        Target::Service(service) => service,
    };
    let target_port = service
        .ports
        .iter()
        .find(|p| p.port == port)
        .ok_or_else(|| {
            let ports: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
            format!(
                "Service {}/{} has no port {port} (its ports: {})",
                service.namespace,
                service.name,
                ports.join(", ")
            )
        })?
        .target_port;
    let family = *src.ips.first().ok_or("the source pod has no address")?;
    let endpoints = registry
        .endpoints(service, family)
        .map(|(pod, _)| context.explain_pod(src, pod, target_port))
        .collect::<Result<Vec<_>, _>>()?;
    let denied = endpoints.iter().filter(|e| e["decision"] == "deny").count();
    let (decision, reason) = match (endpoints.len(), denied) {
        (0, _) => ("deny", "the Service has no endpoint".to_owned()),
        (_, 0) => ("allow", "every endpoint allows it".to_owned()),
        (all, denied) => ("deny", format!("{denied} of its {all} endpoints deny it")),
    };
    let mut answer = json!({
        "service": service.host(),
        "port": port,
        "target_port": target_port,
        "endpoints": endpoints,
        "decision": decision,
        "reason": reason,
    });
    let waypoint = waypoint_for(
        registry,
        &service.namespace,
        &service.labels,
        Traffic::Service,
    );
    with_waypoint(&mut answer, waypoint);
    Ok(answer)
}

/// Adds the waypoint the connection goes through, if any.
fn with_waypoint(answer: &mut Value, waypoint: Option<&Service>) {
    if let Some(waypoint) = waypoint {
        answer["waypoint"] = json!(format!("{}/{}", waypoint.namespace, waypoint.name));
    }
}

/// A pod or Service named `name`, `namespace/name` or by address.
fn target<'a>(registry: &'a Registry, name: &str) -> Result<Target<'a>, String> {
    if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
        return registry
            .pod_at(ip)
            .map(Target::Pod)
            .or_else(|| registry.service_at(ip).map(Target::Service))
            .ok_or_else(|| format!("no pod or Service VIP {ip} in the registry"));
    }
    let (namespace, name) = match name.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, name),
    };
    let in_namespace = |ns: &str| namespace.is_none_or(|wanted| wanted == ns);
    registry
        .pods
        .iter()
        .find(|p| p.name == name && in_namespace(&p.namespace))
        .map(|pod| Target::Pod(pod))
        .or_else(|| {
            registry
                .services
                .iter()
                .find(|s| s.name == name && in_namespace(&s.namespace))
                .map(|service| Target::Service(service))
        })
        .ok_or_else(|| format!("no pod or Service {name} in the registry"))
}

/// What one explanation needs.
struct Context<'a> {
    registry: &'a Registry,
    policies: &'a PolicySet,
    enrolment: &'a Enrolment,
    trust_domain: &'a TrustDomain,
}

impl Context<'_> {
    /// The decision for `src` connecting to `port` of pod `dst`.
    fn explain_pod(&self, src: &Pod, dst: &Pod, port: u16) -> Result<Value, String> {
        let identity = |pod: &Pod| {
            Identity::new(
                self.trust_domain.clone(),
                &pod.namespace,
                &pod.service_account,
            )
            .ok()
        };
        let (src_enrolled, dst_enrolled) = (
            self.enrolment.enrols_in(self.registry, src),
            self.enrolment.enrols_in(self.registry, dst),
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
        answer["path"] = match (src_enrolled, src.node == dst.node) {
            (true, true) => "same node, delivered directly (no TLS), with the source's identity",
            (true, false) => "mutual TLS tunnel between the nodes",
            (false, _) => "plaintext into the destination pod",
        }
        .into();
        let source_ip = *src.ips.first().ok_or("the source pod has no address")?;
        let destination_ip = dst
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == source_ip.is_ipv4())
            .ok_or("the destination pod has no address of the source's family")?;
        let source_identity = if src_enrolled { identity(src) } else { None };
        let workload = Workload {
            namespace: &dst.namespace,
            labels: &dst.labels,
        };
        let verdict = self.policies.decide(
            &workload,
            &Connection {
                source_ip,
                source_identity: source_identity.as_ref(),
                destination_ip,
                destination_port: port,
            },
        );
        let mode = self.policies.mtls_mode(&workload, port);
        answer["mtls_mode"] = format!("{mode:?}").to_uppercase().into();
        answer["decision"] = if verdict.decision.allowed() {
            "allow"
        } else {
            "deny"
        }
        .into();
        answer["reason"] = verdict.decision.explain().into();
        answer["audited_by"] = verdict.audited.into();
        if let Some(dry_run) = verdict.dry_run {
            answer["dry_run"] = dry_run.explain().into();
        }
        let notes = self.policies.allow_rules_without_effect(&workload);
        if !verdict.decision.allowed() && !notes.is_empty() {
            answer["notes"] = notes.into();
        }
        Ok(answer)
    }
}

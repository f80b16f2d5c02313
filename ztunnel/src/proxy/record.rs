//! Record: the labels each connection is counted under in Istio's TCP
//! metrics, from the side that reports it.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::{ProxyContext, copy::Relayed, pod::LocalPod};
use crate::{
    access_log::{Addresses, Entry},
    identity::Identity,
    metrics::{TcpLabels, TunnelFailureLabels},
    registry::{Registry, workload_name},
    tunnel::{Session, TunnelError},
};

/// Counts a tunnel that failed on `side` with `peer`, and records it as an
/// audit event (a refused handshake may be an attack, or a broken rollout).
pub fn tunnel_failure(
    context: &ProxyContext,
    side: &'static str,
    failure: &TunnelError,
    peer: SocketAddr,
) {
    let Some(reason) = failure.kind() else { return };
    context
        .metrics
        .tunnel_failures
        .get_or_create(&TunnelFailureLabels { side, reason })
        .inc();
    tracing::warn!(target: "audit", event = "tunnel_failure", side, reason, %peer, "{failure}");
}

/// Writes the access-log line of a closed connection counted under
/// `labels` (its downstream side is the client).
pub fn access_log(
    context: &ProxyContext,
    labels: &TcpLabels,
    route: &'static str,
    addresses: Addresses,
    relayed: &Relayed,
    duration: Duration,
    session: Option<&Session>,
) {
    let bytes = (relayed.received, relayed.sent);
    let entry = Entry::new(
        labels,
        route,
        addresses,
        bytes,
        duration,
        relayed.ending.to_string(),
    );
    let entry = match session {
        Some(session) => entry.with_tls(session),
        None => entry,
    };
    context.access_log.write(&entry);
}

const UNKNOWN: &str = "unknown";

/// Where a connection goes, as the source side knows it.
pub struct Peer<'a> {
    /// Workload name, namespace and identity of the destination, if in the mesh.
    pub workload: Option<(&'a str, &'a str, &'a Identity)>,
    /// The service whose VIP was dialled, as `<name>.<namespace>.svc.cluster.local`.
    pub service: Option<String>,
    /// Whether the connection travels in mutual TLS.
    pub mutual_tls: bool,
}

/// Labels for the source side's report of a connection from `pod`.
pub fn source_reporter(pod: &LocalPod, peer: Peer<'_>) -> TcpLabels {
    let (workload, namespace, principal) = match peer.workload {
        Some((workload, namespace, identity)) => (
            workload.to_owned(),
            namespace.to_owned(),
            identity.to_string(),
        ),
        None => (UNKNOWN.to_owned(), UNKNOWN.to_owned(), UNKNOWN.to_owned()),
    };
    TcpLabels {
        reporter: "source",
        source_workload: workload_name(&pod.name, &pod.labels).to_owned(),
        source_workload_namespace: pod.namespace.clone(),
        source_principal: pod.identity.to_string(),
        destination_workload: workload,
        destination_workload_namespace: namespace,
        destination_principal: principal,
        destination_service: peer.service.unwrap_or_else(|| UNKNOWN.to_owned()),
        connection_security_policy: if peer.mutual_tls {
            "mutual_tls"
        } else {
            "none"
        },
        response_flags: "-",
    }
}

/// Labels for the destination side's report of a connection to `pod` from
/// `source` (proven as `identity` when over mutual TLS). The source workload
/// is looked up in `registry` by address.
pub fn destination_reporter(
    registry: &Registry,
    pod: &LocalPod,
    source: IpAddr,
    identity: Option<&Identity>,
) -> TcpLabels {
    let source_pod = registry.pod_at(source);
    TcpLabels {
        reporter: "destination",
        source_workload: source_pod.map_or(UNKNOWN, |p| p.workload()).to_owned(),
        source_workload_namespace: source_pod
            .map_or(UNKNOWN, |p| p.namespace.as_str())
            .to_owned(),
        source_principal: identity.map_or_else(|| UNKNOWN.to_owned(), Identity::to_string),
        destination_workload: workload_name(&pod.name, &pod.labels).to_owned(),
        destination_workload_namespace: pod.namespace.clone(),
        destination_principal: pod.identity.to_string(),
        destination_service: UNKNOWN.to_owned(),
        connection_security_policy: if identity.is_some() {
            "mutual_tls"
        } else {
            "none"
        },
        response_flags: "-",
    }
}

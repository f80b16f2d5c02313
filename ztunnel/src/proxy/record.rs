//! Record: each connection's one record, the last step of every path.
//!
//! A [`ConnectionRecord`] is opened as soon as a path knows who talks to
//! whom (the source side once it has routed the connection, the destination
//! side before its policy decision) and is fed the bytes as they move
//! ([`copy::Meters`]). When the connection ends, however it ends (closed,
//! cut, denied, failed, or dropped because the daemon stopped serving it),
//! the record writes all of what the connection leaves behind, in one place:
//! Istio's TCP metrics, the JSON access-log line and one daemon log line.
//! The idea follows Istio's ztunnel's `ConnectionResult`.

use std::{
    fmt::Display,
    net::SocketAddr,
    time::{Instant, SystemTime},
};

use super::{ProxyContext, copy, pod::LocalPod};
use crate::{
    access_log::{self, AccessLog, Entry},
    identity::Identity,
    metrics::{
        Metrics, Reporter, RequestProtocol, ResponseFlags, SecurityPolicy, TcpLabels,
        TunnelFailureLabels,
    },
    registry::{Pod, Service, naming},
    tunnel::{Session, TunnelError},
};

/// The cluster every workload of this daemon runs in, as the `*_cluster`
/// labels name it: Istio's default cluster ID (one cluster per mesh here).
pub const CLUSTER_ID: &str = "Kubernetes";

const UNKNOWN: &str = "unknown";

/// The path a connection took (the access log's `route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Source side: through the tunnel to another node.
    Tunnel,
    /// Source side: to a pod of this node.
    Local,
    /// Source side: as plain TCP to a destination outside the mesh.
    Passthrough,
    /// Source side: through the tunnel to the waypoint the destination names.
    Waypoint,
    /// Destination side: out of a tunnel from another node.
    InboundTunnel,
    /// Destination side: plaintext from outside the mesh.
    InboundPlaintext,
}

impl Via {
    /// The access log's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tunnel => "tunnel",
            Self::Local => "local",
            Self::Passthrough => "passthrough",
            Self::Waypoint => "waypoint",
            Self::InboundTunnel => "inbound_tunnel",
            Self::InboundPlaintext => "inbound_plaintext",
        }
    }
}

/// One end of a connection, named as Istio's telemetry names workloads
/// ([`naming`]); every name is `unknown` for an end outside the registry.
#[derive(Clone, Debug, Default)]
pub struct Party {
    /// The pod, when it is one this node serves (for the daemon's log).
    pub pod: Option<String>,
    workload: Option<String>,
    namespace: Option<String>,
    principal: Option<String>,
    canonical_service: Option<String>,
    canonical_revision: Option<String>,
}

impl Party {
    /// An end nothing is known of.
    pub fn unknown() -> Self {
        Self::default()
    }

    /// A pod of the registry, with `principal` if its identity is proven.
    pub fn pod(pod: &Pod, principal: Option<&Identity>) -> Self {
        Self {
            pod: None,
            workload: Some(pod.workload().to_owned()),
            namespace: Some(pod.namespace.clone()),
            principal: principal.map(Identity::to_string),
            canonical_service: Some(pod.canonical_service().to_owned()),
            canonical_revision: Some(pod.canonical_revision().to_owned()),
        }
    }

    /// A pod this node serves (its identity is the daemon's own knowledge).
    pub fn local(pod: &LocalPod) -> Self {
        Self {
            pod: Some(pod.name.clone()),
            workload: Some(pod.workload.clone()),
            namespace: Some(pod.namespace.clone()),
            principal: Some(pod.identity.to_string()),
            canonical_service: Some(
                naming::canonical_service(&pod.workload, &pod.labels).to_owned(),
            ),
            canonical_revision: Some(naming::canonical_revision(&pod.labels).to_owned()),
        }
    }

    /// A workload known only by its proven identity.
    pub fn identity(identity: &Identity) -> Self {
        Self {
            namespace: Some(identity.namespace().to_owned()),
            principal: Some(identity.to_string()),
            ..Self::default()
        }
    }

    fn known(&self) -> bool {
        self.workload.is_some()
    }
}

fn or_unknown(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| UNKNOWN.to_owned())
}

/// What a path knows of a connection when it opens its record.
pub struct Opening<'a> {
    /// Which side this daemon is on.
    pub reporter: Reporter,
    /// The path it takes.
    pub via: Via,
    /// The client's address.
    pub client: SocketAddr,
    /// What the client asked for.
    pub destination: SocketAddr,
    /// Where it is sent (a service VIP resolves to an endpoint).
    pub endpoint: SocketAddr,
    /// The client's end.
    pub source: Party,
    /// The server's end.
    pub target: Party,
    /// The service the client addressed, if known.
    pub service: Option<&'a Service>,
    /// Whether the source's identity is proven.
    pub security: SecurityPolicy,
}

/// The labels Istio counts a connection under, from what is known at open.
fn labels(opening: &Opening<'_>) -> TcpLabels {
    let (source, target) = (&opening.source, &opening.target);
    let cluster = |party: &Party| if party.known() { CLUSTER_ID } else { UNKNOWN }.to_owned();
    let service =
        |field: fn(&Service) -> String| opening.service.map_or_else(|| UNKNOWN.to_owned(), field);
    TcpLabels {
        reporter: opening.reporter,
        source_workload: or_unknown(&source.workload),
        source_workload_namespace: or_unknown(&source.namespace),
        source_principal: or_unknown(&source.principal),
        source_app: or_unknown(&source.canonical_service),
        source_version: or_unknown(&source.canonical_revision),
        source_cluster: cluster(source),
        source_canonical_service: or_unknown(&source.canonical_service),
        source_canonical_revision: or_unknown(&source.canonical_revision),
        destination_workload: or_unknown(&target.workload),
        destination_workload_namespace: or_unknown(&target.namespace),
        destination_principal: or_unknown(&target.principal),
        destination_app: or_unknown(&target.canonical_service),
        destination_version: or_unknown(&target.canonical_revision),
        destination_service: service(Service::host),
        destination_service_name: service(|s| s.name.clone()),
        destination_service_namespace: service(|s| s.namespace.clone()),
        destination_cluster: cluster(target),
        destination_canonical_service: or_unknown(&target.canonical_service),
        destination_canonical_revision: or_unknown(&target.canonical_revision),
        request_protocol: RequestProtocol::Tcp,
        response_flags: ResponseFlags::None,
        connection_security_policy: opening.security,
    }
}

/// A connection from the moment a path knows its ends until it ends: counted
/// as opened when made, its bytes counted as they move, and recorded once,
/// when ended or dropped.
pub struct ConnectionRecord<'a> {
    metrics: &'a Metrics,
    access_log: &'a AccessLog,
    labels: TcpLabels,
    via: Via,
    client: SocketAddr,
    destination: SocketAddr,
    endpoint: SocketAddr,
    source_pod: Option<String>,
    target_pod: Option<String>,
    session: Option<Session>,
    started: Instant,
    meters: copy::Meters,
    recorded: bool,
}

impl<'a> ConnectionRecord<'a> {
    /// Counts a connection as opened, under the labels `opening` gives.
    pub fn open(context: &'a ProxyContext, opening: Opening<'_>) -> Self {
        Self::open_in(&context.metrics, &context.access_log, opening)
    }

    fn open_in(metrics: &'a Metrics, access_log: &'a AccessLog, opening: Opening<'_>) -> Self {
        let labels = labels(&opening);
        metrics.tcp_opened.get_or_create(&labels).inc();
        // The counters are looked up once: the copy adds to them per chunk.
        let meters = copy::Meters {
            from_client: copy::Meter::sharing(metrics.tcp_received.get_or_create(&labels).clone()),
            to_client: copy::Meter::sharing(metrics.tcp_sent.get_or_create(&labels).clone()),
        };
        Self {
            metrics,
            access_log,
            labels,
            via: opening.via,
            client: opening.client,
            destination: opening.destination,
            endpoint: opening.endpoint,
            source_pod: opening.source.pod,
            target_pod: opening.target.pod,
            session: None,
            started: Instant::now(),
            meters,
            recorded: false,
        }
    }

    /// Where the copy counts this connection's bytes.
    pub fn meters(&self) -> &copy::Meters {
        &self.meters
    }

    /// The connection travels in `session`.
    pub fn carried_by(&mut self, session: Session) {
        self.session = Some(session);
    }

    /// Records a connection that was relayed and ended as `ending`.
    pub fn ended(mut self, ending: &copy::Ending) {
        let flags = match ending {
            copy::Ending::Revoked(_) => ResponseFlags::Deny,
            _ => ResponseFlags::None,
        };
        self.record(flags, &ending.to_string(), false);
    }

    /// Records a connection that failed (or was refused) before it was
    /// relayed, with Istio's `flags` for why.
    pub fn failed(mut self, flags: ResponseFlags, reason: &dyn Display) {
        self.record(flags, &reason.to_string(), true);
    }

    fn record(&mut self, flags: ResponseFlags, end: &str, failed: bool) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.labels.response_flags = flags;
        let labels = &self.labels;
        self.metrics.tcp_closed.get_or_create(labels).inc();
        if flags != ResponseFlags::None {
            self.metrics.tcp_failed.get_or_create(labels).inc();
        }
        let (sent, received) = (
            self.meters.to_client.total(),
            self.meters.from_client.total(),
        );
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let session = self.session.as_ref();
        let decided = labels.reporter == Reporter::Destination || self.via == Via::Local;
        self.access_log.write(&Entry {
            time: access_log::rfc3339(SystemTime::now()),
            reporter: labels.reporter.as_str(),
            route: self.via.as_str(),
            src_addr: self.client,
            src_workload: &labels.source_workload,
            src_namespace: &labels.source_workload_namespace,
            src_identity: &labels.source_principal,
            dst_addr: self.destination,
            dst_endpoint: self.endpoint,
            dst_workload: &labels.destination_workload,
            dst_namespace: &labels.destination_workload_namespace,
            dst_identity: &labels.destination_principal,
            dst_service: &labels.destination_service,
            tunnel_protocol: session.map(|s| s.protocol.as_str()),
            tls_version: session.map(|_| "TLSv1.3"),
            tls_cipher: session.map(|s| s.cipher.as_str()),
            tls_resumed: session.map(|s| s.resumed),
            tunnel_reused: session.map(|s| s.reused),
            bytes_sent: sent,
            bytes_received: received,
            duration_ms,
            decision: match (flags, decided) {
                (ResponseFlags::Deny, _) => "deny",
                (_, true) => "allow",
                (_, false) => "-",
            },
            response_flags: flags.as_str(),
            end: end.to_owned(),
        });
        let direction = match labels.reporter {
            Reporter::Source => "outbound",
            Reporter::Destination => "inbound",
        };
        macro_rules! log {
            ($level:ident, $($message:tt)+) => {
                tracing::$level!(
                    src.pod = self.source_pod.as_deref().map(tracing::field::display),
                    src.addr = %self.client,
                    src.identity = %labels.source_principal,
                    dst.pod = self.target_pod.as_deref().map(tracing::field::display),
                    dst.addr = %self.destination,
                    dst.endpoint = %self.endpoint,
                    dst.identity = %labels.destination_principal,
                    dst.service = %labels.destination_service,
                    route = self.via.as_str(),
                    tls = session.is_some(),
                    tls.cipher = session.map(|s| s.cipher.as_str()),
                    tls.resumed = session.map(|s| s.resumed),
                    tunnel.reused = session.map(|s| s.reused),
                    tunnel.protocol = session.map(|s| s.protocol.as_str()),
                    response_flags = flags.as_str(),
                    sent,
                    received,
                    duration_ms,
                    $($message)+
                )
            };
        }
        if failed {
            let verb = match flags {
                ResponseFlags::Deny => "denied",
                _ => "failed",
            };
            log!(warn, "{direction} connection {verb}: {end}");
        } else {
            log!(info, end = %end, "{direction} connection closed");
        }
    }
}

/// A record dropped unrecorded belongs to a connection the daemon stopped
/// serving midway (its task was cancelled: the daemon is stopping).
impl Drop for ConnectionRecord<'_> {
    fn drop(&mut self) {
        self.record(
            ResponseFlags::None,
            "cut short: the daemon stopped serving it",
            false,
        );
    }
}

/// Counts a tunnel that failed on `side` with `peer`, and records it as an
/// audit event (a refused handshake may be an attack, or a broken rollout).
pub fn tunnel_failure(
    context: &ProxyContext,
    side: &'static str,
    failure: &TunnelError,
    peer: SocketAddr,
) {
    let reason = failure.kind();
    context
        .metrics
        .tunnel_failures
        .get_or_create(&TunnelFailureLabels { side, reason })
        .inc();
    tracing::warn!(target: "audit", event = "tunnel_failure", side, reason, %peer, "{failure}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Labels;

    fn pod(name: &str, workload: Option<&str>, labels: &[(&str, &str)]) -> Pod {
        Pod {
            name: name.to_owned(),
            namespace: "demo".to_owned(),
            service_account: "web".to_owned(),
            node: "node1".to_owned(),
            ips: vec![],
            netns: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Labels>(),
            workload: workload.map(str::to_owned),
        }
    }

    fn opening<'a>(source: Party, target: Party, service: Option<&'a Service>) -> Opening<'a> {
        let address: SocketAddr = "10.0.0.1:80".parse().unwrap();
        Opening {
            reporter: Reporter::Destination,
            via: Via::InboundTunnel,
            client: address,
            destination: address,
            endpoint: address,
            source,
            target,
            service,
            security: SecurityPolicy::MutualTls,
        }
    }

    #[test]
    fn labels_name_workloads_services_and_unknowns_as_istio_does() {
        let web = pod(
            "web-6c9f-x2",
            Some("web"),
            &[("app", "web"), ("version", "v2")],
        );
        let client = pod("client-1", None, &[]);
        let identity: Identity = "spiffe://cluster.local/ns/demo/sa/client".parse().unwrap();
        let service = Service {
            name: "web".to_owned(),
            namespace: "demo".to_owned(),
            vips: vec![],
            ports: vec![],
            selector: Labels::new(),
            labels: Labels::new(),
        };
        let labels = labels(&opening(
            Party::pod(&client, Some(&identity)),
            Party::pod(&web, None),
            Some(&service),
        ));
        let want = TcpLabels {
            reporter: Reporter::Destination,
            source_workload: "client-1".into(),
            source_workload_namespace: "demo".into(),
            source_principal: "spiffe://cluster.local/ns/demo/sa/client".into(),
            source_app: "client-1".into(),
            source_version: "latest".into(),
            source_cluster: CLUSTER_ID.into(),
            source_canonical_service: "client-1".into(),
            source_canonical_revision: "latest".into(),
            destination_workload: "web".into(),
            destination_workload_namespace: "demo".into(),
            destination_principal: UNKNOWN.into(),
            destination_app: "web".into(),
            destination_version: "v2".into(),
            destination_service: "web.demo.svc.cluster.local".into(),
            destination_service_name: "web".into(),
            destination_service_namespace: "demo".into(),
            destination_cluster: CLUSTER_ID.into(),
            destination_canonical_service: "web".into(),
            destination_canonical_revision: "v2".into(),
            request_protocol: RequestProtocol::Tcp,
            response_flags: ResponseFlags::None,
            connection_security_policy: SecurityPolicy::MutualTls,
        };
        assert_eq!(labels, want);

        let unknown = super::labels(&opening(Party::unknown(), Party::identity(&identity), None));
        assert_eq!(unknown.source_workload, UNKNOWN);
        assert_eq!(unknown.source_cluster, UNKNOWN);
        assert_eq!(unknown.destination_workload_namespace, "demo");
        assert_eq!(unknown.destination_principal, identity.to_string());
        assert_eq!(unknown.destination_service_name, UNKNOWN);
    }

    #[test]
    fn a_record_counts_open_bytes_close_and_failure_once() {
        let metrics = Metrics::new();
        let access_log = AccessLog::open("off").unwrap();
        let service = None;
        let series = |text: &str, name: &str, flags: &str| -> Option<String> {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("response_flags=\"{flags}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        {
            let record = ConnectionRecord::open_in(
                &metrics,
                &access_log,
                opening(Party::unknown(), Party::unknown(), service),
            );
            let text = metrics.encode();
            assert_eq!(
                series(&text, "istio_tcp_connections_opened_total", "-").as_deref(),
                Some("1")
            );
            assert_eq!(
                series(&text, "istio_tcp_connections_closed_total", "-"),
                None
            );
            // Bytes show before the connection ends.
            record.meters().to_client.add(10);
            record.meters().from_client.add(3);
            let text = metrics.encode();
            assert_eq!(
                series(&text, "istio_tcp_sent_bytes_total", "-").as_deref(),
                Some("10")
            );
            assert_eq!(
                series(&text, "istio_tcp_received_bytes_total", "-").as_deref(),
                Some("3")
            );
            record.failed(ResponseFlags::Deny, &"denied by DENY policy demo/x rule 0");
        }
        let text = metrics.encode();
        assert_eq!(
            series(&text, "istio_tcp_connections_closed_total", "DENY").as_deref(),
            Some("1")
        );
        assert_eq!(
            series(&text, "istio_tcp_connections_failed_total", "DENY").as_deref(),
            Some("1")
        );
        {
            // Dropped unrecorded: closed, not failed.
            let _record = ConnectionRecord::open_in(
                &metrics,
                &access_log,
                opening(Party::unknown(), Party::unknown(), service),
            );
        }
        let text = metrics.encode();
        assert_eq!(
            series(&text, "istio_tcp_connections_closed_total", "-").as_deref(),
            Some("1")
        );
        assert_eq!(
            series(&text, "istio_tcp_connections_failed_total", "-"),
            None
        );
    }
}

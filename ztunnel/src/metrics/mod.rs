//! Prometheus metrics, with Istio's names and labels where Istio has them so
//! existing dashboards (Grafana's Istio dashboards, Kiali) work unchanged.
//!
//! Label values are workloads, namespaces, identities, services and policy
//! names: bounded by what the registry and the policy directory hold, never by
//! addresses, ports or connection counts.
//!
//! - [`process`]: the process's own metrics (`process_*`).

pub mod process;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode,
    },
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::identity::{Identity, manager::RequestObserver};

/// Labels of Istio's TCP metrics: Istio's standard set, each always present
/// (`unknown` when not known: Kiali drops series that lack a label it
/// groups by). How each value is derived: `docs/observability.md`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Which side's daemon counted the connection.
    pub reporter: Reporter,
    /// The source workload (its controller's name, not the pod's).
    pub source_workload: String,
    /// Its namespace.
    pub source_workload_namespace: String,
    /// Its SPIFFE identity, when proven (mutual TLS or this node's own pod).
    pub source_principal: String,
    /// Its canonical service, as Istio's ztunnel reports `source_app`.
    pub source_app: String,
    /// Its canonical revision, as Istio's ztunnel reports `source_version`.
    pub source_version: String,
    /// The cluster it runs in.
    pub source_cluster: String,
    /// Its canonical service.
    pub source_canonical_service: String,
    /// Its canonical revision.
    pub source_canonical_revision: String,
    /// The destination workload.
    pub destination_workload: String,
    /// Its namespace.
    pub destination_workload_namespace: String,
    /// Its SPIFFE identity.
    pub destination_principal: String,
    /// Its canonical service.
    pub destination_app: String,
    /// Its canonical revision.
    pub destination_version: String,
    /// The service the client addressed (`<name>.<namespace>.svc.cluster.local`).
    pub destination_service: String,
    /// That service's name.
    pub destination_service_name: String,
    /// That service's namespace.
    pub destination_service_namespace: String,
    /// The cluster the destination runs in.
    pub destination_cluster: String,
    /// Its canonical service.
    pub destination_canonical_service: String,
    /// Its canonical revision.
    pub destination_canonical_revision: String,
    /// Always `tcp`: the daemon proxies at L4.
    pub request_protocol: RequestProtocol,
    /// Why the connection failed, `-` when it did not.
    pub response_flags: ResponseFlags,
    /// `mutual_tls` when the source's identity was proven, else `unknown`.
    pub connection_security_policy: SecurityPolicy,
}

/// Which side's daemon reports a connection.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client's node.
    #[default]
    Source,
    /// The server's node.
    Destination,
}

impl Reporter {
    /// The label value: `source` or `destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The protocol of a connection's requests, as Istio labels it.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum RequestProtocol {
    /// Plain TCP: the only protocol a node proxy sees.
    #[default]
    Tcp,
}

/// How a connection was secured, as Istio labels it.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// The source's identity is not proven (plaintext, passthrough).
    #[default]
    Unknown,
    /// The source's identity was proven: mutual TLS between nodes, or the
    /// daemon's own capture on one node (see `docs/observability.md`).
    MutualTls,
}

/// Why a connection failed, with Istio's ztunnel's `response_flags` values.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    /// It did not fail: `-`.
    #[default]
    None,
    /// Policy refused it (or revoked it later): `DENY`.
    Deny,
    /// The destination, or its node's daemon, could not be reached: `CONNECT`.
    Connect,
    /// The TLS handshake with the destination's daemon failed: `TLS_FAILURE`.
    TlsFailure,
    /// A workload identity or certificate was missing or wrong: `IDENTITY_ERROR`.
    IdentityError,
}

impl ResponseFlags {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::Connect => "CONNECT",
            Self::TlsFailure => "TLS_FAILURE",
            Self::IdentityError => "IDENTITY_ERROR",
        }
    }
}

macro_rules! label_value {
    ($($type:ty => |$value:ident| $text:expr),* $(,)?) => {$(
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                let $value = *self;
                encoder.write_str($text)
            }
        }
    )*};
}

label_value! {
    Reporter => |value| value.as_str(),
    RequestProtocol => |value| match value { RequestProtocol::Tcp => "tcp" },
    SecurityPolicy => |value| match value {
        SecurityPolicy::Unknown => "unknown",
        SecurityPolicy::MutualTls => "mutual_tls",
    },
    ResponseFlags => |value| value.as_str(),
}

/// Labels of Istio's socket metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SocketLabels {
    /// `source` (a pod's outbound listener) or `destination` (its inbound
    /// and tunnel listeners).
    pub reporter: Reporter,
}

/// Labels of `istio_build`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// `ztunnel`: the component Istio's dashboards select.
    pub component: &'static str,
    /// This build's version.
    pub tag: &'static str,
}

/// A socket the daemon accepted, counted in `istio_tcp_sockets_open` until
/// dropped.
pub struct OpenSocket(Gauge);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Labels naming a policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `namespace/name`, or the PeerAuthentication rule for STRICT refusals.
    pub policy: String,
}

/// Labels naming a workload identity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The SPIFFE identity.
    pub identity: String,
}

/// Labels of a failed tunnel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelFailureLabels {
    /// `client` (this node opened it) or `server` (a peer opened it here).
    pub side: &'static str,
    /// A bounded category (`no_certificate`, `untrusted`, `expired`, `identity`, ...).
    pub reason: &'static str,
}

/// Labels of a certificate request's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The SPIFFE identity.
    pub identity: String,
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels naming a limit that refused something ([`crate::proxy::limits`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `outbound_per_pod`, `inbound_per_pod`, `pending_handshakes` or
    /// `pending_handshakes_per_source`.
    pub limit: &'static str,
}

/// Labels naming one of a pod's listeners.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `outbound`, `inbound` or `tunnel`.
    pub listener: &'static str,
}

/// Labels of a dry-run outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DryRunLabels {
    /// What the dry-run policies would have decided: `allow` or `deny`.
    pub decision: &'static str,
}

/// Labels of policy objects by state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyObjectLabels {
    /// `AuthorizationPolicy`, `PeerAuthentication` or `other`.
    pub kind: &'static str,
    /// `applied`, `applied_l4_only`, `skipped`, `refused` or `ignored`.
    pub state: &'static str,
}

/// Labels of a policy load's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// `clean`, or `refused` when an object or a file was refused.
    pub result: &'static str,
}

/// Metrics of a part that starts after the registry is made (socket
/// acceleration's counters live in the eBPF programs): empty until
/// [`Metrics::install`] fills it.
#[derive(Clone, Debug, Default)]
struct Later(Arc<OnceLock<Box<dyn Collector>>>);

impl Collector for Later {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.0.get() {
            Some(collector) => collector.encode(encoder),
            None => Ok(()),
        }
    }
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    later: Later,
    /// `istio_tcp_connections_opened_total`.
    pub tcp_opened: Family<TcpLabels, Counter>,
    /// `istio_tcp_connections_closed_total`.
    pub tcp_closed: Family<TcpLabels, Counter>,
    /// `istio_tcp_sent_bytes_total`: bytes sent to the client of the connection.
    pub tcp_sent: Family<TcpLabels, Counter>,
    /// `istio_tcp_received_bytes_total`: bytes received from the client.
    pub tcp_received: Family<TcpLabels, Counter>,
    /// `istio_tcp_connections_failed_total`: connections that ended with a
    /// failure flag (denied, unreachable, TLS or identity failure).
    pub tcp_failed: Family<TcpLabels, Counter>,
    /// `istio_tcp_sockets_open`: sockets accepted on pods' listeners and
    /// still being served (a tunnel is one, whatever it carries).
    pub tcp_sockets_open: Family<SocketLabels, Gauge>,
    /// `ztunnel_policy_denials_total`.
    pub policy_denials: Family<PolicyLabels, Counter>,
    /// `ztunnel_policy_audits_total`: connections an AUDIT policy matched,
    /// by policy.
    pub policy_audits: Family<PolicyLabels, Counter>,
    /// `ztunnel_policy_dry_run_total`: connections where dry-run policies
    /// would have decided differently.
    pub policy_dry_run: Family<DryRunLabels, Counter>,
    /// `ztunnel_policy_objects`: policy objects found, by kind and state.
    pub policy_objects: Family<PolicyObjectLabels, Gauge>,
    /// `ztunnel_policy_loads_total`: loads of the policy source, by result.
    pub policy_loads: Family<LoadLabels, Counter>,
    /// `ztunnel_certificate_expiry_timestamp_seconds`: when each held
    /// certificate expires (Unix time).
    pub certificate_expiry: Family<IdentityLabels, Gauge>,
    /// `ztunnel_certificate_renewals_total`: new certificates taken into use.
    pub certificate_renewals: Family<IdentityLabels, Counter>,
    /// `ztunnel_enrolled_pods`: pods of this node captured now.
    pub enrolled_pods: Gauge,
    /// `ztunnel_tunnel_failures_total`: tunnels that failed to open, by side and reason.
    pub tunnel_failures: Family<TunnelFailureLabels, Counter>,
    /// `ztunnel_tunnel_reuses_total`: connections carried by a tunnel an
    /// earlier connection opened (no handshake).
    pub tunnel_reuses: Counter,
    /// `ztunnel_tunnel_idle`: tunnels kept open for the next connection.
    pub tunnel_idle: Gauge,
    /// `ztunnel_ebpf_programs_attached`: the eBPF programs attached at the cgroup root.
    pub ebpf_programs_attached: Gauge,
    /// `ztunnel_certificate_requests_total`: requests to the CA (first issue
    /// and rotations), by identity and result.
    pub certificate_requests: Family<RequestLabels, Counter>,
    /// `ztunnel_ca_request_duration_seconds`: how long CA requests take.
    pub ca_request_duration: Histogram,
    /// `ztunnel_limit_refusals_total`: connections and handshakes refused by
    /// a limit, by limit.
    pub limit_refusals: Family<LimitLabels, Counter>,
    /// `ztunnel_accept_errors_total`: failed `accept()` calls (the
    /// open-file limit reached, most often), by listener.
    pub accept_errors: Family<ListenerLabels, Counter>,
    /// `ztunnel_open_files_limit`: the file descriptors the daemon may open.
    pub open_files_limit: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tcp_opened = Family::default();
        let tcp_closed = Family::default();
        let tcp_sent = Family::default();
        let tcp_received = Family::default();
        let tcp_failed = Family::default();
        let tcp_sockets_open = Family::default();
        let policy_denials = Family::default();
        let policy_dry_run = Family::default();
        let policy_audits = Family::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client of a TCP connection",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client of a TCP connection",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections that failed: refused by policy, destination unreachable, TLS or identity failure",
            tcp_failed.clone(),
        );
        registry.register(
            "istio_tcp_sockets_open",
            "Sockets accepted on pods' listeners and still being served",
            tcp_sockets_open.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                component: "ztunnel",
                tag: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("istio_build", "The build of this component", build);
        registry.register_collector(Box::new(process::ProcessCollector));
        registry.register(
            "ztunnel_policy_denials",
            "Connections refused by policy, by the policy that decided",
            policy_denials.clone(),
        );
        registry.register(
            "ztunnel_policy_audits",
            "Connections an AUDIT policy matched, by policy",
            policy_audits.clone(),
        );
        let policy_objects = Family::default();
        registry.register(
            "ztunnel_policy_objects",
            "Policy objects found, by kind and state (applied, applied_l4_only, skipped, refused, ignored)",
            policy_objects.clone(),
        );
        let policy_loads = Family::default();
        registry.register(
            "ztunnel_policy_loads",
            "Loads of the policy source, by result (refused: an object or file was refused)",
            policy_loads.clone(),
        );
        registry.register(
            "ztunnel_policy_dry_run",
            "Connections on which dry-run policies would have decided otherwise",
            policy_dry_run.clone(),
        );
        let certificate_expiry = Family::default();
        let certificate_renewals = Family::default();
        let enrolled_pods = Gauge::default();
        registry.register(
            "ztunnel_certificate_expiry_timestamp_seconds",
            "When each held workload certificate expires (Unix time)",
            certificate_expiry.clone(),
        );
        registry.register(
            "ztunnel_certificate_renewals",
            "Workload certificates obtained and taken into use",
            certificate_renewals.clone(),
        );
        registry.register(
            "ztunnel_enrolled_pods",
            "Pods of this node captured by the daemon",
            enrolled_pods.clone(),
        );
        let tunnel_failures = Family::default();
        let ebpf_programs_attached = Gauge::default();
        let tunnel_reuses = Counter::default();
        let tunnel_idle = Gauge::default();
        registry.register(
            "ztunnel_tunnel_reuses",
            "Connections carried by a tunnel an earlier connection opened (no handshake)",
            tunnel_reuses.clone(),
        );
        registry.register(
            "ztunnel_tunnel_idle",
            "Tunnels to other nodes kept open for the next connection",
            tunnel_idle.clone(),
        );
        registry.register(
            "ztunnel_tunnel_failures",
            "Tunnels that failed to open (handshake, identity, preamble), by side and reason",
            tunnel_failures.clone(),
        );
        registry.register(
            "ztunnel_ebpf_programs_attached",
            "eBPF programs attached at the cgroup root (0 until attached)",
            ebpf_programs_attached.clone(),
        );
        let certificate_requests = Family::default();
        // 5 ms to ~10 s.
        let ca_request_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "ztunnel_certificate_requests",
            "Certificate requests to the CA (first issue and rotations), by result",
            certificate_requests.clone(),
        );
        registry.register(
            "ztunnel_ca_request_duration_seconds",
            "How long certificate requests to the CA take",
            ca_request_duration.clone(),
        );
        let limit_refusals = Family::default();
        let accept_errors = Family::default();
        let open_files_limit = Gauge::default();
        registry.register(
            "ztunnel_limit_refusals",
            "Connections and tunnel handshakes refused by a limit, by limit",
            limit_refusals.clone(),
        );
        registry.register(
            "ztunnel_accept_errors",
            "Failed accepts on pods' listeners (the open-file limit, most often), by listener",
            accept_errors.clone(),
        );
        registry.register(
            "ztunnel_open_files_limit",
            "File descriptors the daemon may open (its soft limit, raised to the hard one at start)",
            open_files_limit.clone(),
        );
        registry.register(
            "ztunnel_log_lines_suppressed",
            "Warnings and errors not written because their call site wrote its share this second",
            crate::log_rate::SUPPRESSED.clone(),
        );
        let later = Later::default();
        registry.register_collector(Box::new(later.clone()));
        Self {
            registry,
            later,
            limit_refusals,
            accept_errors,
            open_files_limit,
            certificate_requests,
            ca_request_duration,
            tunnel_failures,
            ebpf_programs_attached,
            certificate_expiry,
            certificate_renewals,
            enrolled_pods,
            tunnel_reuses,
            tunnel_idle,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            tcp_failed,
            tcp_sockets_open,
            policy_denials,
            policy_audits,
            policy_objects,
            policy_loads,
            policy_dry_run,
        }
    }

    /// Counts a socket accepted for `reporter` until the guard is dropped.
    pub fn socket_opened(&self, reporter: Reporter) -> OpenSocket {
        let gauge = self
            .tcp_sockets_open
            .get_or_create(&SocketLabels { reporter })
            .clone();
        gauge.inc();
        OpenSocket(gauge)
    }

    /// Adds the metrics `collector` reads at each scrape; only the first
    /// call counts (there is one set of eBPF programs per daemon).
    pub fn install(&self, collector: impl Collector) {
        let _ = self.later.0.set(Box::new(collector));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl RequestObserver for Metrics {
    fn requested(&self, identity: &Identity, elapsed: Duration, ok: bool) {
        self.ca_request_duration.observe(elapsed.as_secs_f64());
        let labels = RequestLabels {
            identity: identity.to_string(),
            result: if ok { "success" } else { "failure" },
        };
        self.certificate_requests.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_labels_encode_every_istio_label_with_its_values() {
        let metrics = Metrics::new();
        let labels = TcpLabels {
            reporter: Reporter::Destination,
            response_flags: ResponseFlags::Deny,
            connection_security_policy: SecurityPolicy::MutualTls,
            ..TcpLabels::default()
        };
        metrics.tcp_opened.get_or_create(&labels).inc();
        let text = metrics.encode();
        let line = text
            .lines()
            .find(|line| line.starts_with("istio_tcp_connections_opened_total{"))
            .expect("the series");
        for label in [
            "reporter=\"destination\"",
            "source_workload=",
            "source_workload_namespace=",
            "source_principal=",
            "source_app=",
            "source_version=",
            "source_cluster=",
            "source_canonical_service=",
            "source_canonical_revision=",
            "destination_workload=",
            "destination_workload_namespace=",
            "destination_principal=",
            "destination_app=",
            "destination_version=",
            "destination_service=",
            "destination_service_name=",
            "destination_service_namespace=",
            "destination_cluster=",
            "destination_canonical_service=",
            "destination_canonical_revision=",
            "request_protocol=\"tcp\"",
            "response_flags=\"DENY\"",
            "connection_security_policy=\"mutual_tls\"",
        ] {
            assert!(line.contains(label), "{label} in {line}");
        }
    }
}

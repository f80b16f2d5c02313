//! Where an outbound connection goes: a pure decision over the registry,
//! tested as a table without sockets.
//!
//! The original destination is a pod address, a service VIP and port, or
//! something outside the cluster. A VIP resolves to one of the service's
//! endpoints (the pods of its namespace matching its selector, with an address
//! of the same family), spread by the caller's `pick`. Then:
//! an enrolled pod on another node is reached through the tunnel; one on this
//! node directly (it never leaves the node; the same checks apply); anything
//! else is passed through as plain TCP.

use std::net::{IpAddr, SocketAddr};

use crate::registry::{Enrolment, Pod, Registry, Service};

/// The decision for one outbound connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// An enrolled pod on another node: mutual TLS to its daemon.
    Tunnel {
        /// Address and port on the pod.
        destination: SocketAddr,
        /// The destination workload.
        pod: &'a Pod,
        /// The service whose VIP was dialled, if any.
        service: Option<&'a Service>,
    },
    /// An enrolled pod on this node: no TLS needed.
    Local {
        /// Address and port on the pod.
        destination: SocketAddr,
        /// The destination workload.
        pod: &'a Pod,
        /// The service whose VIP was dialled, if any.
        service: Option<&'a Service>,
    },
    /// Not in the mesh: plain TCP to `destination`.
    Passthrough {
        /// Where to connect.
        destination: SocketAddr,
    },
    /// A service VIP and port with no endpoint to send to.
    NoEndpoint {
        /// The service, as `namespace/name`.
        service: String,
    },
}

/// Routes a connection to `original` opened on node `node`. `pick(n)`
/// chooses one of `n` service endpoints (it must return less than `n`).
pub fn route<'a>(
    registry: &'a Registry,
    enrolment: &Enrolment,
    node: &str,
    original: SocketAddr,
    pick: &mut impl FnMut(usize) -> usize,
) -> Route<'a> {
    let via = service_at(registry, original);
    let (destination, pod) = match via {
        Some((service, target_port)) => {
            let endpoints: Vec<(&Pod, IpAddr)> =
                registry.endpoints(service, original.ip()).collect();
            if endpoints.is_empty() {
                return Route::NoEndpoint {
                    service: format!("{}/{}", service.namespace, service.name),
                };
            }
            let (pod, ip) = endpoints[pick(endpoints.len()).min(endpoints.len() - 1)];
            (SocketAddr::new(ip, target_port), Some(pod))
        }
        None => (original, registry.pod_at(original.ip())),
    };
    let service = via.map(|(service, _)| service);
    match pod {
        Some(pod) if enrolment.enrols_in(registry, pod) && pod.node == node => Route::Local {
            destination,
            pod,
            service,
        },
        Some(pod) if enrolment.enrols_in(registry, pod) => Route::Tunnel {
            destination,
            pod,
            service,
        },
        _ => Route::Passthrough { destination },
    }
}

/// The service with VIP `original.ip()` exposing `original.port()`, and that
/// port's target port.
fn service_at(registry: &Registry, original: SocketAddr) -> Option<(&Service, u16)> {
    let service = registry.service_at(original.ip())?;
    let port = service
        .ports
        .iter()
        .find(|port| port.port == original.port())?;
    Some((service, port.target_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/registry.example.yaml");

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The route's kind, destination and pod name, for compact expectations.
    fn summary(route: &Route<'_>) -> String {
        match route {
            Route::Tunnel {
                destination, pod, ..
            } => format!("tunnel {destination} {}", pod.name),
            Route::Local {
                destination, pod, ..
            } => format!("local {destination} {}", pod.name),
            Route::Passthrough { destination } => format!("passthrough {destination}"),
            Route::NoEndpoint { service } => format!("no endpoint {service}"),
        }
    }

    #[test]
    fn routes_by_destination_kind_enrolment_and_node() {
        let registry = Registry::from_yaml(EXAMPLE).unwrap();
        let enrolment = Enrolment::default();
        let cases = [
            ("10.244.2.2:8080", "tunnel 10.244.2.2:8080 web-2"),
            (
                "[fd00:10:244:2::2]:8080",
                "tunnel [fd00:10:244:2::2]:8080 web-2",
            ),
            ("10.244.1.2:8080", "local 10.244.1.2:8080 web-1"),
            // legacy is not enrolled; batch-1 opted out; the rest is outside the cluster.
            ("10.244.2.3:80", "passthrough 10.244.2.3:80"),
            ("10.244.1.4:80", "passthrough 10.244.1.4:80"),
            ("192.0.2.1:443", "passthrough 192.0.2.1:443"),
            // A service VIP on a port it does not expose is just an address.
            ("10.96.0.10:81", "passthrough 10.96.0.10:81"),
            // The service's VIP resolves to an endpoint on its target port.
            ("10.96.0.10:80", "local 10.244.1.2:8080 web-1"),
            ("[fd00:10:96::10]:80", "local [fd00:10:244:1::2]:8080 web-1"),
        ];
        for (original, want) in cases {
            let got = route(&registry, &enrolment, "node1", at(original), &mut |_| 0);
            assert_eq!(summary(&got), want, "{original}");
        }
    }

    #[test]
    fn service_connections_spread_over_endpoints_on_both_nodes() {
        let registry = Registry::from_yaml(EXAMPLE).unwrap();
        let mut next = 0;
        let mut round_robin = |n: usize| {
            next += 1;
            next % n
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let got = route(
                &registry,
                &Enrolment::default(),
                "node1",
                at("10.96.0.10:80"),
                &mut round_robin,
            );
            seen.insert(summary(&got));
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [
                "local 10.244.1.2:8080 web-1",
                "tunnel 10.244.2.2:8080 web-2"
            ]
        );
    }

    #[test]
    fn a_service_without_matching_pods_has_no_endpoint() {
        let mut registry = Registry::from_yaml(EXAMPLE).unwrap();
        registry.services[0]
            .selector
            .insert("app".into(), "nothing".into());
        let got = route(
            &registry,
            &Enrolment::default(),
            "node1",
            at("10.96.0.10:80"),
            &mut |_| 0,
        );
        assert_eq!(summary(&got), "no endpoint demo/web");
    }
}

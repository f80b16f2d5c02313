//! Where an outbound connection goes: a pure decision over the registry,
//! tested as a table without sockets.
//!
//! The original destination is a pod address, a service VIP and port, or
//! something outside the cluster. A Service or pod that names a waypoint for
//! that kind of traffic ([`waypoint`]) is reached through one of the
//! waypoint's pods, as Istio's ztunnel does: service traffic when the VIP was
//! dialled, pod traffic when the pod's own address was. Otherwise a VIP
//! resolves to one of the service's endpoints (the pods of its namespace
//! matching its selector, with an address of the same family), spread by the
//! caller's `pick`. Then: an enrolled pod on another node is reached through
//! the tunnel; one on this node directly (it never leaves the node; the same
//! checks apply); anything else is passed through as plain TCP.

use std::net::{IpAddr, SocketAddr};

use crate::registry::{
    Enrolment, Pod, Registry, Service,
    waypoint::{self, Traffic},
};

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
    /// A destination that names a waypoint: HBONE to one of the
    /// waypoint's pods, asking it for `target` (the address dialled).
    Waypoint {
        /// The waypoint pod's address (its HBONE port is the tunnel's).
        address: IpAddr,
        /// The waypoint pod.
        waypoint: &'a Pod,
        /// What the application dialled: the `CONNECT`'s `:authority`.
        target: SocketAddr,
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
    let service = via.map(|(service, _)| service);
    // Service traffic goes to the Service's waypoint; pod traffic (below) to
    // the pod's, never both.
    if let Some(service) = service
        && let Some(waypoint) = waypoint::waypoint_for(
            registry,
            &service.namespace,
            &service.labels,
            Traffic::Service,
        )
    {
        return through(registry, waypoint, original, Some(service), pick);
    }
    let (destination, pod) = match via {
        Some((service, target_port)) => {
            let Some((pod, ip)) = pick_endpoint(registry, service, original.ip(), pick) else {
                return Route::NoEndpoint {
                    service: format!("{}/{}", service.namespace, service.name),
                };
            };
            (SocketAddr::new(ip, target_port), Some(pod))
        }
        None => (original, registry.pod_at(original.ip())),
    };
    if service.is_none()
        && let Some(pod) = pod
        && let Some(waypoint) =
            waypoint::waypoint_for(registry, &pod.namespace, &pod.labels, Traffic::Workload)
        // A waypoint's own pod is never sent through the waypoint.
        && !waypoint.selects(&pod.labels)
    {
        return through(registry, waypoint, original, None, pick);
    }
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

/// Through one of `waypoint`'s pods (an address of `target`'s family),
/// asking for `target`.
fn through<'a>(
    registry: &'a Registry,
    waypoint: &'a Service,
    target: SocketAddr,
    service: Option<&'a Service>,
    pick: &mut impl FnMut(usize) -> usize,
) -> Route<'a> {
    let Some((pod, address)) = pick_endpoint(registry, waypoint, target.ip(), pick) else {
        return Route::NoEndpoint {
            service: format!("{}/{} (a waypoint)", waypoint.namespace, waypoint.name),
        };
    };
    Route::Waypoint {
        address,
        waypoint: pod,
        target,
        service,
    }
}

/// One of `service`'s endpoints with an address of `family`'s family, chosen
/// by `pick`; none when it has none.
fn pick_endpoint<'a>(
    registry: &'a Registry,
    service: &'a Service,
    family: IpAddr,
    pick: &mut impl FnMut(usize) -> usize,
) -> Option<(&'a Pod, IpAddr)> {
    let endpoints: Vec<(&Pod, IpAddr)> = registry.endpoints(service, family).collect();
    let last = endpoints.len().checked_sub(1)?;
    Some(endpoints[pick(endpoints.len()).min(last)])
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
            Route::Waypoint {
                address,
                waypoint,
                target,
                ..
            } => format!("waypoint {address} {} for {target}", waypoint.name),
            Route::Passthrough { destination } => format!("passthrough {destination}"),
            Route::NoEndpoint { service } => format!("no endpoint {service}"),
        }
    }

    /// The route of a connection to `dialled` from node1, summarised (the
    /// first endpoint picked).
    fn routed(registry: &Registry, dialled: &str) -> String {
        summary(&route(
            registry,
            &Enrolment::default(),
            "node1",
            at(dialled),
            &mut |_| 0,
        ))
    }

    #[test]
    fn routes_by_destination_kind_enrolment_and_node() {
        let registry = Registry::from_yaml(EXAMPLE).unwrap();
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
            assert_eq!(routed(&registry, original), want, "{original}");
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
        std::sync::Arc::make_mut(&mut registry.services[0])
            .selector
            .insert("app".into(), "nothing".into());
        assert_eq!(routed(&registry, "10.96.0.10:80"), "no endpoint demo/web");
    }

    /// The example registry with a waypoint `waypoint` (Service and pod in
    /// `demo`, on node2) taking `traffic`.
    fn with_waypoint(traffic: &str) -> Registry {
        let mut registry = Registry::from_yaml(EXAMPLE).unwrap();
        let mut pod = Pod::clone(&registry.pods[0]);
        pod.name = "waypoint-1".to_owned();
        pod.service_account = "waypoint".to_owned();
        pod.node = "node2".to_owned();
        pod.ips = vec![at("10.244.2.9:0").ip(), at("[fd00:10:244:2::9]:0").ip()];
        pod.labels = [("gateway.networking.k8s.io/gateway-name", "waypoint")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        registry.pods.push(pod.clone().into());
        let mut service = Service::clone(&registry.services[0]);
        service.name = "waypoint".to_owned();
        service.vips = vec![at("10.96.0.99:0").ip()];
        service.selector = pod.labels.clone();
        service
            .labels
            .insert(waypoint::WAYPOINT_FOR.to_owned(), traffic.to_owned());
        registry.services.push(service.into());
        registry
    }

    #[test]
    fn a_destination_naming_a_waypoint_is_reached_through_it() {
        let label = |registry: &mut Registry, what: &str| {
            let labels = match what {
                "service" => &mut std::sync::Arc::make_mut(&mut registry.services[0]).labels,
                "pod web-2" => {
                    let web2 = registry.pods.iter_mut().find(|p| p.name == "web-2");
                    &mut std::sync::Arc::make_mut(web2.unwrap()).labels
                }
                _ => &mut registry.namespaces[0].labels,
            };
            labels.insert(waypoint::USE_WAYPOINT.to_owned(), "waypoint".to_owned());
        };
        // (waypoint-for, what names it, dialled, expected)
        let cases = [
            // Service traffic: the VIP is asked of the waypoint, from any node.
            (
                "service",
                "service",
                "10.96.0.10:80",
                "waypoint 10.244.2.9 waypoint-1 for 10.96.0.10:80",
            ),
            (
                "service",
                "namespace",
                "10.96.0.10:80",
                "waypoint 10.244.2.9 waypoint-1 for 10.96.0.10:80",
            ),
            (
                "service",
                "service",
                "[fd00:10:96::10]:80",
                "waypoint fd00:10:244:2::9 waypoint-1 for [fd00:10:96::10]:80",
            ),
            // A waypoint for services leaves pod traffic alone.
            (
                "service",
                "namespace",
                "10.244.2.2:8080",
                "tunnel 10.244.2.2:8080 web-2",
            ),
            // Pod traffic: the pod's address is asked of the waypoint.
            (
                "workload",
                "pod web-2",
                "10.244.2.2:8080",
                "waypoint 10.244.2.9 waypoint-1 for 10.244.2.2:8080",
            ),
            (
                "all",
                "namespace",
                "10.244.1.2:8080",
                "waypoint 10.244.2.9 waypoint-1 for 10.244.1.2:8080",
            ),
            // A waypoint for pods leaves service traffic to the endpoints.
            (
                "workload",
                "service",
                "10.96.0.10:80",
                "local 10.244.1.2:8080 web-1",
            ),
            // Service traffic is not sent to a workload waypoint as well.
            (
                "all",
                "pod web-2",
                "10.96.0.10:80",
                "local 10.244.1.2:8080 web-1",
            ),
        ];
        for (traffic, named_by, dialled, want) in cases {
            let mut registry = with_waypoint(traffic);
            label(&mut registry, named_by);
            let got = route(
                &registry,
                &Enrolment::default(),
                "node1",
                at(dialled),
                &mut |_| 0,
            );
            assert_eq!(
                summary(&got),
                want,
                "{traffic} waypoint named by {named_by}, {dialled}"
            );
        }

        // A waypoint without a pod is no endpoint, not a way around it.
        let mut registry = with_waypoint("service");
        label(&mut registry, "service");
        registry.pods.retain(|pod| pod.name != "waypoint-1");
        assert_eq!(
            routed(&registry, "10.96.0.10:80"),
            "no endpoint demo/waypoint (a waypoint)"
        );
    }
}

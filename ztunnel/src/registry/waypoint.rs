//! Which waypoint, if any, a destination names: a pure decision over the
//! registry, as istiod makes it for Istio's ztunnel.
//!
//! A Service, a pod or their namespace names a waypoint with the label
//! `istio.io/use-waypoint: <name>` (in the object's namespace, or in the one
//! `istio.io/use-waypoint-namespace` names). The object's own label wins over
//! its namespace's, and `none` on the object opts it out. A waypoint takes
//! the traffic it is for (`istio.io/waypoint-for`: `service`, the default;
//! `workload`; `all`; `none`): a Service's traffic when addressed by its VIP,
//! a pod's when addressed by its own IP.
//!
//! A waypoint is an Istio Gateway; Istio generates a Service of the same name
//! for it, selecting its pods, and copies the Gateway's labels onto it. The
//! daemon does not watch Gateways: it finds the waypoint as that Service
//! and reads `istio.io/waypoint-for` from it.

use super::{Labels, Registry, Service};

/// Label naming the waypoint of a Service, a pod or a namespace.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label naming the waypoint's namespace, when not the object's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Label on a waypoint saying which traffic it takes.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Label Istio puts on the objects it generates for a Gateway; a waypoint's
/// carry [`MESH_CONTROLLER`], and a waypoint has no waypoint of its own.
pub const MANAGED: &str = "gateway.istio.io/managed";
/// [`MANAGED`]'s value on a waypoint's objects.
pub const MESH_CONTROLLER: &str = "istio.io-mesh-controller";

/// The labels of a Service the daemon keeps (the others are not read).
pub const SERVICE_LABELS: [&str; 4] = [USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR, MANAGED];

/// The kind of traffic addressed to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Addressed to a Service's VIP.
    Service,
    /// Addressed to a pod's own IP.
    Workload,
}

/// What an object's labels say about its waypoint.
enum Named<'a> {
    /// `istio.io/use-waypoint: none`.
    OptedOut,
    /// A waypoint: its name and namespace.
    Waypoint(&'a str, &'a str),
    /// No label.
    Unset,
}

fn named<'a>(labels: &'a Labels, own_namespace: &'a str) -> Named<'a> {
    match labels.get(USE_WAYPOINT) {
        Some("none") => Named::OptedOut,
        Some(name) => Named::Waypoint(
            name,
            labels.get(USE_WAYPOINT_NAMESPACE).unwrap_or(own_namespace),
        ),
        None => Named::Unset,
    }
}

/// The waypoint Service that takes `traffic` to an object of namespace
/// `namespace` with `labels`, if one is named and exists. A named
/// waypoint that does not take this kind of traffic, or is not in the
/// registry, means none (as istiod leaves the destination without one).
pub fn waypoint_for<'a>(
    registry: &'a Registry,
    namespace: &str,
    labels: &Labels,
    traffic: Traffic,
) -> Option<&'a Service> {
    if labels
        .get(MANAGED)
        .is_some_and(|value| value == MESH_CONTROLLER)
    {
        return None;
    }
    let (name, waypoint_namespace) = match named(labels, namespace) {
        Named::OptedOut => return None,
        Named::Waypoint(name, ns) => (name, ns),
        Named::Unset => match named(&registry.namespace(namespace)?.labels, namespace) {
            Named::Waypoint(name, ns) => (name, ns),
            Named::OptedOut | Named::Unset => return None,
        },
    };
    let waypoint = registry.service(waypoint_namespace, name)?;
    let takes = match waypoint.labels.get(WAYPOINT_FOR) {
        None | Some("service") => traffic == Traffic::Service,
        Some("workload") => traffic == Traffic::Workload,
        Some("all") => true,
        Some(_) => false,
    };
    takes.then_some(waypoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Namespace, Pod, ServicePort};

    use crate::registry::labels_of as labels;

    fn service(namespace: &str, name: &str, service_labels: &[(&str, &str)]) -> Service {
        Service {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            vips: vec![],
            ports: vec![ServicePort {
                port: 15008,
                target_port: 15008,
            }],
            selector: labels(&[("gateway.networking.k8s.io/gateway-name", name)]),
            labels: labels(service_labels),
        }
    }

    fn registry(namespace_labels: &[(&str, &str)]) -> Registry {
        let namespace = |name: &str, pairs: &[(&str, &str)]| Namespace {
            name: name.to_owned(),
            labels: labels(pairs),
        };
        Registry::new(
            vec![],
            vec![namespace("demo", namespace_labels), namespace("infra", &[])],
            Vec::<Pod>::new(),
            vec![
                service("demo", "waypoint", &[]),
                service("demo", "for-workloads", &[(WAYPOINT_FOR, "workload")]),
                service("demo", "for-all", &[(WAYPOINT_FOR, "all")]),
                service("demo", "for-nothing", &[(WAYPOINT_FOR, "none")]),
                service("infra", "shared", &[]),
            ],
        )
    }

    /// What a case is, the namespace's labels, the object's labels, the
    /// traffic, and the waypoint expected (`namespace/name`, or `-`).
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        Traffic,
        &'a str,
    );

    /// One line per case.
    #[test]
    fn the_objects_label_wins_over_its_namespaces_and_the_waypoint_must_take_the_traffic() {
        use Traffic::{Service as Svc, Workload as Wl};
        let ns_waypoint = [(USE_WAYPOINT, "waypoint")];
        let cases: [Case; 14] = [
            ("nothing named", &[], &[], Svc, "-"),
            (
                "the object names one",
                &[],
                &[(USE_WAYPOINT, "waypoint")],
                Svc,
                "demo/waypoint",
            ),
            (
                "its namespace names one",
                &ns_waypoint,
                &[],
                Svc,
                "demo/waypoint",
            ),
            (
                "a waypoint for services takes no pod traffic",
                &ns_waypoint,
                &[],
                Wl,
                "-",
            ),
            (
                "the object opts out",
                &ns_waypoint,
                &[(USE_WAYPOINT, "none")],
                Svc,
                "-",
            ),
            (
                "the object's own wins",
                &ns_waypoint,
                &[(USE_WAYPOINT, "for-all")],
                Svc,
                "demo/for-all",
            ),
            (
                "for workloads",
                &[],
                &[(USE_WAYPOINT, "for-workloads")],
                Wl,
                "demo/for-workloads",
            ),
            (
                "for workloads, not services",
                &[],
                &[(USE_WAYPOINT, "for-workloads")],
                Svc,
                "-",
            ),
            (
                "for all, pods",
                &[],
                &[(USE_WAYPOINT, "for-all")],
                Wl,
                "demo/for-all",
            ),
            ("for none", &[], &[(USE_WAYPOINT, "for-nothing")], Svc, "-"),
            (
                "named but absent",
                &[],
                &[(USE_WAYPOINT, "missing")],
                Svc,
                "-",
            ),
            (
                "a waypoint has none",
                &ns_waypoint,
                &[(MANAGED, MESH_CONTROLLER)],
                Svc,
                "-",
            ),
            (
                "in another namespace",
                &[],
                &[(USE_WAYPOINT, "shared"), (USE_WAYPOINT_NAMESPACE, "infra")],
                Svc,
                "infra/shared",
            ),
            (
                "the namespace's, in another namespace",
                &[(USE_WAYPOINT, "shared"), (USE_WAYPOINT_NAMESPACE, "infra")],
                &[],
                Svc,
                "infra/shared",
            ),
        ];
        for (what, namespace_labels, object_labels, traffic, want) in cases {
            let registry = registry(namespace_labels);
            let got = waypoint_for(&registry, "demo", &labels(object_labels), traffic)
                .map_or("-".to_owned(), |s| format!("{}/{}", s.namespace, s.name));
            assert_eq!(got, want, "{what}");
        }
    }
}

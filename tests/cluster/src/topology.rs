//! From a [`ClusterSpec`] to network namespaces and links.
//!
//! [`plan`] is pure: it names every namespace and interface and assigns every
//! address. [`wire`] then creates exactly that plan with `ip`.
//!
//! ```text
//!   pod netns            node netns                  fabric netns
//!  [eth0 10.244.1.2] ─ [pod0 gw 10.244.1.1]
//!  [eth0 10.244.1.3] ─ [pod1 gw 10.244.1.1]
//!                      [eth0 10.10.0.1] ───────── [node1]─┐
//!                                                          br0
//!                      [eth0 10.10.0.2] ───────── [node2]─┘
//! ```
//! Each node routes its own pods' /32s to their veths and the other nodes'
//! pod ranges to those nodes, like a flat CNI in host-gateway mode.

use std::path::Path;

use ztunnel::registry::{Enrolment, Labels, Namespace, Node, Pod, Registry, Service, ServicePort};

use crate::{
    ClusterError, ClusterSpec,
    addressing::{self, FABRIC_PREFIX_V4, FABRIC_PREFIX_V6, POD_GATEWAY_V6},
    netns,
    status::{
        ConfigStatus, FabricStatus, NamespaceStatus, NodeStatus, PodStatus, ServiceStatus, Status,
    },
};

/// Port of every app's service.
pub const SERVICE_PORT: u16 = 80;
/// Port the apps listen on: every service's target port.
pub const APP_PORT: u16 = 8080;

/// Name of the bridge in the fabric namespace.
const BRIDGE: &str = "br0";
/// Name of the node's and the pods' interface towards the network.
const UPLINK: &str = "eth0";

/// Names and addresses for every part of the cluster described by `spec`.
pub(crate) fn plan(spec: &ClusterSpec, state_dir: &Path, owner_pid: Option<u32>) -> Status {
    let nodes: Vec<NodeStatus> = (1..=spec.nodes)
        .map(|index| {
            let name = format!("node{index}");
            NodeStatus {
                netns: netns::name(&spec.name, &name),
                ipv4: addressing::node_v4(index),
                ipv6: addressing::node_v6(index),
                daemon: None,
                name,
            }
        })
        .collect();

    let mut pods = Vec::new();
    for (node_index, node) in (1..=spec.nodes).zip(&nodes) {
        let mut slot = 0u8;
        for app in &spec.apps {
            for replica in 1..=app.replicas {
                let name = match replica {
                    1 => format!("{}-{node_index}", app.name),
                    n => format!("{}-{node_index}-{n}", app.name),
                };
                pods.push(PodStatus {
                    netns: netns::name(&spec.name, &name),
                    namespace: app.namespace.clone(),
                    service_account: app.service_account.clone(),
                    node: node.name.clone(),
                    ipv4: addressing::pod_v4(node_index, slot),
                    ipv6: addressing::pod_v6(node_index, slot),
                    enrolled: false,
                    labels: Labels::from([("app".to_owned(), app.name.clone())]),
                    workload: app.name.clone(),
                    node_interface: format!("pod{slot}"),
                    name,
                });
                slot += 1;
            }
        }
    }

    let services = spec
        .apps
        .iter()
        .zip(0u8..)
        .map(|(app, index)| ServiceStatus {
            name: app.name.clone(),
            namespace: app.namespace.clone(),
            ipv4: addressing::service_v4(index),
            ipv6: addressing::service_v6(index),
            port: SERVICE_PORT,
            target_port: APP_PORT,
            selector: Labels::from([("app".to_owned(), app.name.clone())]),
            labels: Labels::new(),
        })
        .collect();

    let mut status = Status {
        name: spec.name.clone(),
        namespaces: spec
            .namespaces
            .iter()
            .map(|ns| NamespaceStatus {
                name: ns.name.clone(),
                labels: ns.labels.clone(),
            })
            .collect(),
        fabric: FabricStatus {
            netns: netns::name(&spec.name, "fabric"),
            bridge: BRIDGE.to_owned(),
            interfaces: nodes.iter().map(|node| node.name.clone()).collect(),
        },
        nodes,
        pods,
        services,
        ca: None,
        config: ConfigStatus {
            registry: Some(state_dir.join("registry.yaml")),
            policies: Some(state_dir.join("policies")),
            daemon_args: spec.daemon_args.clone(),
            node_daemon_args: spec.node_daemon_args.clone(),
        },
        state_dir: state_dir.to_owned(),
        owner_pid,
    };
    refresh_enrolment(&mut status);
    status
}

/// Recomputes every pod's `enrolled` from the labels, with the daemons' rule.
pub(crate) fn refresh_enrolment(status: &mut Status) {
    let registry = registry(status);
    let enrolment = Enrolment::default();
    for (pod, entry) in status.pods.iter_mut().zip(&registry.pods) {
        pod.enrolled = enrolment.enrols_in(&registry, entry);
    }
}

/// The workload registry the node daemons read, derived from the cluster.
pub(crate) fn registry(status: &Status) -> Registry {
    Registry::new(
        status
            .nodes
            .iter()
            .map(|node| Node {
                name: node.name.clone(),
            })
            .collect(),
        status
            .namespaces
            .iter()
            .map(|ns| Namespace {
                name: ns.name.clone(),
                labels: ns.labels.clone(),
            })
            .collect(),
        status.pods.iter().map(|pod| Pod {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            node: pod.node.clone(),
            ips: vec![pod.ipv4.into(), pod.ipv6.into()],
            netns: Some(Path::new(netns::NETNS_DIR).join(&pod.netns)),
            labels: pod.labels.clone(),
            workload: (!pod.workload.is_empty()).then(|| pod.workload.clone()),
        }),
        status.services.iter().map(|service| Service {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
            vips: vec![service.ipv4.into(), service.ipv6.into()],
            ports: vec![ServicePort {
                port: service.port,
                target_port: service.target_port,
            }],
            selector: service.selector.clone(),
            labels: service.labels.clone(),
        }),
    )
}

/// Creates the namespaces, links, addresses and routes of `status`.
pub(crate) fn wire(status: &Status) -> Result<(), ClusterError> {
    let fabric = &status.fabric.netns;
    netns::add(fabric)?;
    netns::ip(
        fabric,
        &[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    netns::ip(fabric, &["link", "set", BRIDGE, "up"])?;

    for ((node, index), port) in status
        .nodes
        .iter()
        .zip(1u8..)
        .zip(&status.fabric.interfaces)
    {
        wire_node(status, node, port)?;
        for pod in status.pods.iter().filter(|pod| pod.node == node.name) {
            wire_pod(pod, node, index)?;
        }
    }
    Ok(())
}

fn wire_node(status: &Status, node: &NodeStatus, fabric_port: &str) -> Result<(), ClusterError> {
    let ns = node.netns.as_str();
    netns::add(ns)?;
    // Set before any interface exists, so every interface inherits it:
    // forwarding (nodes route for their pods), no DAD (addresses usable at
    // once), no reverse-path filter (whatever the host's default is).
    netns::sysctl(
        ns,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    )?;
    let fabric = status.fabric.netns.as_str();
    netns::ip(
        ns,
        &[
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            fabric_port,
            "netns",
            fabric,
        ],
    )?;
    netns::ip(
        fabric,
        &["link", "set", fabric_port, "master", BRIDGE, "up"],
    )?;
    netns::ip(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/{FABRIC_PREFIX_V4}", node.ipv4),
            "dev",
            UPLINK,
        ],
    )?;
    netns::ip(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/{FABRIC_PREFIX_V6}", node.ipv6),
            "dev",
            UPLINK,
            "nodad",
        ],
    )?;
    netns::ip(ns, &["link", "set", UPLINK, "up"])?;
    for (other, index) in status.nodes.iter().zip(1u8..) {
        if other.name == node.name {
            continue;
        }
        let (net4, len4) = addressing::pod_cidr_v4(index);
        let (net6, len6) = addressing::pod_cidr_v6(index);
        netns::ip(
            ns,
            &[
                "route",
                "add",
                &format!("{net4}/{len4}"),
                "via",
                &other.ipv4.to_string(),
            ],
        )?;
        netns::ip(
            ns,
            &[
                "-6",
                "route",
                "add",
                &format!("{net6}/{len6}"),
                "via",
                &other.ipv6.to_string(),
            ],
        )?;
    }
    Ok(())
}

fn wire_pod(pod: &PodStatus, node: &NodeStatus, node_index: u8) -> Result<(), ClusterError> {
    let ns = pod.netns.as_str();
    let node_ns = node.netns.as_str();
    let veth = pod.node_interface.as_str();
    let gateway4 = addressing::pod_gateway_v4(node_index).to_string();
    let gateway6 = POD_GATEWAY_V6.to_string();
    netns::add(ns)?;
    netns::sysctl(
        ns,
        &[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    )?;
    netns::ip(
        node_ns,
        &[
            "link", "add", veth, "type", "veth", "peer", "name", UPLINK, "netns", ns,
        ],
    )?;

    // Node side: the pods' gateway addresses, and a host route to the pod.
    netns::ip(
        node_ns,
        &["addr", "add", &format!("{gateway4}/32"), "dev", veth],
    )?;
    netns::ip(
        node_ns,
        &[
            "addr",
            "add",
            &format!("{gateway6}/64"),
            "dev",
            veth,
            "nodad",
        ],
    )?;
    netns::ip(node_ns, &["link", "set", veth, "up"])?;
    netns::ip(
        node_ns,
        &["route", "add", &format!("{}/32", pod.ipv4), "dev", veth],
    )?;
    netns::ip(
        node_ns,
        &[
            "-6",
            "route",
            "add",
            &format!("{}/128", pod.ipv6),
            "dev",
            veth,
        ],
    )?;

    // Pod side: its addresses and a default route through the node.
    netns::ip(
        ns,
        &["addr", "add", &format!("{}/32", pod.ipv4), "dev", UPLINK],
    )?;
    netns::ip(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/128", pod.ipv6),
            "dev",
            UPLINK,
            "nodad",
        ],
    )?;
    netns::ip(ns, &["link", "set", UPLINK, "up"])?;
    netns::ip(
        ns,
        &["route", "add", &gateway4, "dev", UPLINK, "scope", "link"],
    )?;
    netns::ip(
        ns,
        &["route", "add", "default", "via", &gateway4, "dev", UPLINK],
    )?;
    netns::ip(
        ns,
        &[
            "-6", "route", "add", "default", "via", &gateway6, "dev", UPLINK,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_are_unique_and_enrolment_follows_the_namespace_label() {
        let status = plan(&ClusterSpec::new("dev", 3, 2), Path::new("/tmp/x"), None);
        assert_eq!(status.nodes.len(), 3);
        assert_eq!(status.pods.len(), 3 * 3 * 2);
        let mut names: Vec<_> = status
            .pods
            .iter()
            .map(|p| &p.netns)
            .chain(status.nodes.iter().map(|n| &n.netns))
            .collect();
        names.push(&status.fabric.netns);
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total, "netns names collide");
        for pod in &status.pods {
            assert_eq!(pod.enrolled, pod.namespace == "demo", "{}", pod.name);
        }
        assert_eq!(
            status.pod("web-2-2").map(|p| p.node.as_str()),
            Some("node2")
        );
        assert_eq!(
            status
                .pod("demo/client-3")
                .map(|p| p.ipv4.to_string())
                .as_deref(),
            Some("10.244.3.4")
        );
        assert!(status.pod("legacy/web-1").is_none());
    }

    #[test]
    fn the_derived_registry_is_valid() {
        let status = plan(&ClusterSpec::new("dev", 2, 1), Path::new("/tmp/x"), None);
        let yaml = registry(&status).to_yaml();
        let parsed = Registry::from_yaml(&yaml).expect("the daemon accepts the cluster's registry");
        assert_eq!(parsed.pods.len(), status.pods.len());
    }
}

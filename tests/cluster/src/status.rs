//! The cluster's description, as `cluster status --json` prints it and as it
//! is kept in the cluster's state directory between commands.
//!
//! This is an interface: scripts outside the project read it. Fields are only
//! ever added; a part that does not exist yet is `null`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};
use ztunnel::registry::Labels;

/// Everything about one local cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Cluster name (prefix of its network namespaces: `ztc-<name>-`).
    pub name: String,
    /// Kubernetes namespaces and their labels.
    pub namespaces: Vec<NamespaceStatus>,
    /// The nodes, in order.
    pub nodes: Vec<NodeStatus>,
    /// Every pod of every node.
    pub pods: Vec<PodStatus>,
    /// Services: one per app, its virtual IPs leading to the app's pods.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    /// The network joining the nodes.
    pub fabric: FabricStatus,
    /// The certificate authority, once it runs.
    pub ca: Option<CaStatus>,
    /// Files and directories the daemons read.
    pub config: ConfigStatus,
    /// The directory holding this cluster's state and config.
    pub state_dir: PathBuf,
    /// The process whose life bounds the cluster's (a test), or `null` for a
    /// cluster that lives until `cluster down`.
    pub owner_pid: Option<u32>,
}

/// A Kubernetes namespace of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    /// Namespace name.
    pub name: String,
    /// Its labels (`istio.io/dataplane-mode=ambient` enrols it).
    pub labels: Labels,
}

/// A node: a network namespace, later with its daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name (`node1`, ...).
    pub name: String,
    /// Name of its network namespace (`ip netns exec <netns> ...`).
    pub netns: String,
    /// Address on the fabric.
    pub ipv4: Ipv4Addr,
    /// IPv6 address on the fabric.
    pub ipv6: Ipv6Addr,
    /// The node daemon, once it runs.
    pub daemon: Option<DaemonStatus>,
}

/// A node daemon's process and endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Process id.
    pub pid: u32,
    /// Admin endpoint (`host:port`, inside the node's network namespace).
    pub admin: String,
    /// Prometheus metrics endpoint (`host:port`, inside the node's network
    /// namespace), serving `/metrics`.
    pub metrics: Option<String>,
}

/// A pod: a network namespace behind a veth to its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// Pod name, unique in the cluster.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// ServiceAccount the pod runs as.
    pub service_account: String,
    /// Node the pod runs on.
    pub node: String,
    /// Name of its network namespace.
    pub netns: String,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Whether the registry's enrolment rule puts this pod in the mesh.
    pub enrolled: bool,
    /// Pod labels.
    pub labels: Labels,
    /// The workload it belongs to: its app's, as if a Deployment of that
    /// name ran it (so metrics name the workload, not the pod).
    #[serde(default)]
    pub workload: String,
    /// Node-side end of the pod's veth, in the node's network namespace.
    pub node_interface: String,
}

/// A Kubernetes Service: virtual IPs whose port leads to the pods of one app.
/// Only enrolled pods can reach it (the daemon resolves the VIP; there is no
/// kube-proxy in the local cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name (the app's).
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// IPv4 virtual IP.
    pub ipv4: Ipv4Addr,
    /// IPv6 virtual IP.
    pub ipv6: Ipv6Addr,
    /// Port on the virtual IPs.
    pub port: u16,
    /// Port on the pods.
    pub target_port: u16,
    /// Pods whose labels contain all of these are its endpoints.
    pub selector: Labels,
    /// The Service's own labels (for example `istio.io/use-waypoint`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// The fabric: a bridge in its own network namespace that every node plugs into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricStatus {
    /// Name of its network namespace.
    pub netns: String,
    /// The bridge; capturing on it sees every packet between nodes.
    pub bridge: String,
    /// The bridge's ports, one per node, in node order.
    pub interfaces: Vec<String>,
}

/// The certificate authority's process and endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// Process id.
    pub pid: u32,
    /// gRPC endpoint (`host:port`).
    pub address: String,
    /// Root certificate (PEM file).
    pub root_cert: PathBuf,
}

/// Paths of what the daemons read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The workload registry file.
    pub registry: Option<PathBuf>,
    /// The directory of policy YAML files.
    pub policies: Option<PathBuf>,
    /// Further arguments every node daemon is started with (kept, so a
    /// restarted daemon gets them too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemon_args: Vec<String>,
    /// Further arguments of one node's daemon, after `daemon_args`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_daemon_args: std::collections::BTreeMap<String, Vec<String>>,
}

impl ConfigStatus {
    /// The extra arguments node `node`'s daemon is started with: every
    /// daemon's, then its own.
    pub fn daemon_args_of<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a String> + Clone {
        let own = self.node_daemon_args.get(node).into_iter().flatten();
        self.daemon_args.iter().chain(own)
    }
}

impl Status {
    /// The pod called `name` (or `namespace/name`).
    pub fn pod(&self, name: &str) -> Option<&PodStatus> {
        let (namespace, name) = match name.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, name),
        };
        self.pods
            .iter()
            .find(|pod| pod.name == name && namespace.is_none_or(|ns| ns == pod.namespace))
    }

    /// The Service `name` of `namespace`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceStatus> {
        self.services
            .iter()
            .find(|s| s.name == name && s.namespace == namespace)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.name == name)
    }
}

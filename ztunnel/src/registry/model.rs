//! The registry's data model, which is also its file format (camelCase keys,
//! as in Kubernetes objects; unknown keys are errors so typos are caught).

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use serde::{Deserialize, Serialize};

use super::{Labels, naming};

/// Everything the daemon knows about the cluster.
///
/// The lookups the data path makes per connection ([`Registry::pod_at`],
/// [`Registry::namespace`], [`Registry::service`],
/// [`Registry::service_at`], [`Registry::pods_in`], [`Registry::endpoints`])
/// use an index, built by the sources before they publish a registry
/// ([`Registry::build_index`]; else on the first lookup), so that their
/// cost does not grow with the cluster and no connection waits for it: a
/// registry is not changed once looked up in (the daemon shares each
/// version immutably).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registry {
    /// The cluster's nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Kubernetes namespaces and their labels (enrolment is decided by label).
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Pods on every node, shared with the sources that keep them (a
    /// rebuild of the registry copies pointers, not pods).
    #[serde(default)]
    pub pods: Vec<Arc<Pod>>,
    /// Services: virtual IPs that select pods by label (shared as pods are).
    #[serde(default)]
    pub services: Vec<Arc<Service>>,
    #[serde(skip)]
    pub(super) index: OnceLock<Index>,
}

/// Positions in the registry's lists, by what connections are looked up by.
#[derive(Clone, Debug, Default)]
pub(super) struct Index {
    /// What a pod's change moves.
    pub(super) pods: PodIndex,
    /// What only a namespace's or a Service's change moves: shared by the
    /// registries patched from one another ([`Registry::patched`]).
    pub(super) services: Arc<ServiceIndex>,
    /// Per service (same positions), the pods it selects: found on the
    /// first connection to it, as most services of a cluster are never
    /// dialled from one node.
    pub(super) endpoints: Vec<OnceLock<Vec<usize>>>,
}

/// Pods' positions by address, namespace and node.
#[derive(Clone, Debug, Default)]
pub(super) struct PodIndex {
    pub(super) by_ip: HashMap<IpAddr, usize>,
    pub(super) by_namespace: HashMap<String, Vec<usize>>,
    pub(super) by_node: HashMap<String, Vec<usize>>,
}

/// Namespaces' and Services' positions.
#[derive(Debug, Default)]
pub(super) struct ServiceIndex {
    pub(super) namespaces_by_name: HashMap<String, usize>,
    pub(super) services_by_vip: HashMap<IpAddr, usize>,
    pub(super) services_by_namespace: HashMap<String, Vec<usize>>,
    /// Namespace, then name.
    pub(super) services_by_name: HashMap<String, HashMap<String, usize>>,
}

/// Adds `position` to `key`'s list, copying the key only for its first
/// entry (an index is built for every change of a cluster of any size).
pub(super) fn file(lists: &mut HashMap<String, Vec<usize>>, key: &str, position: usize) {
    match lists.get_mut(key) {
        Some(list) => list.push(position),
        None => {
            lists.insert(key.to_owned(), vec![position]);
        }
    }
}

/// The index is derived: two registries are equal when their contents are.
impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
            && self.namespaces == other.namespaces
            && self.pods == other.pods
            && self.services == other.services
    }
}

impl Eq for Registry {}

/// A node: one daemon runs per node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// Node name, as in `spec.nodeName` of its pods.
    pub name: String,
}

/// A Kubernetes namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// Namespace name.
    pub name: String,
    /// Labels; `istio.io/dataplane-mode=ambient` enrols the namespace by default.
    #[serde(default)]
    pub labels: Labels,
}

/// A pod: one network namespace on one node, running as one ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    /// Pod name, unique within its namespace.
    pub name: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The ServiceAccount the pod runs as: its workload identity.
    pub service_account: String,
    /// The node the pod is scheduled on.
    pub node: String,
    /// The pod's addresses (IPv4 and/or IPv6).
    pub ips: Vec<IpAddr>,
    /// Path of the pod's network namespace on its node (for example
    /// `/run/netns/<name>`). Needed for the pods of the daemon's own node;
    /// the Kubernetes source leaves it unset until it finds the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Pod labels (service selection, `istio.io/dataplane-mode=none` opt-out).
    #[serde(default)]
    pub labels: Labels,
    /// The workload the pod belongs to (its Deployment, StatefulSet, Job,
    /// ...), as Istio derives it from the pod's controller; the pod's name
    /// when unset. See [`Pod::workload`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// A Kubernetes Service: virtual IPs whose ports lead to the selected pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// Virtual IPs (cluster IPs) of the service.
    pub vips: Vec<IpAddr>,
    /// Ports exposed on the virtual IPs.
    pub ports: Vec<ServicePort>,
    /// Pods of the service's namespace whose labels contain all of these.
    #[serde(default)]
    pub selector: Labels,
    /// The Service's own labels (its waypoint: `istio.io/use-waypoint`; a
    /// waypoint's traffic: `istio.io/waypoint-for`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// One port of a [`Service`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port on the virtual IP.
    pub port: u16,
    /// Port on the selected pods.
    pub target_port: u16,
}

impl Pod {
    /// The workload the pod belongs to, as Istio's metrics name it
    /// ([`naming::workload`]).
    pub fn workload(&self) -> &str {
        naming::workload(&self.name, self.workload.as_deref(), &self.labels)
    }

    /// Its canonical service ([`naming::canonical_service`]).
    pub fn canonical_service(&self) -> &str {
        naming::canonical_service(self.workload(), &self.labels)
    }

    /// Its canonical revision ([`naming::canonical_revision`]).
    pub fn canonical_revision(&self) -> &str {
        naming::canonical_revision(&self.labels)
    }
}

impl Service {
    /// The service's DNS name in the cluster, as Istio's metrics label it.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// Whether the service selects pods with `labels`.
    pub fn selects(&self, labels: &Labels) -> bool {
        labels.contain_all(self.selector.iter())
    }
}

impl Registry {
    /// A registry of these objects (not validated: see [`Registry::validated`]);
    /// `pods` owned or shared.
    pub fn new(
        nodes: Vec<Node>,
        namespaces: Vec<Namespace>,
        pods: impl IntoIterator<Item = impl Into<Arc<Pod>>>,
        services: impl IntoIterator<Item = impl Into<Arc<Service>>>,
    ) -> Self {
        Self {
            nodes,
            namespaces,
            pods: pods.into_iter().map(Into::into).collect(),
            services: services.into_iter().map(Into::into).collect(),
            index: OnceLock::new(),
        }
    }

    pub(super) fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut pods = PodIndex::default();
            for (position, pod) in self.pods.iter().enumerate() {
                pods.file(pod, position);
            }
            let mut services = ServiceIndex::default();
            for (position, namespace) in self.namespaces.iter().enumerate() {
                services
                    .namespaces_by_name
                    .entry(namespace.name.clone())
                    .or_insert(position);
            }
            for (position, service) in self.services.iter().enumerate() {
                for vip in &service.vips {
                    services.services_by_vip.entry(*vip).or_insert(position);
                }
                file(
                    &mut services.services_by_namespace,
                    &service.namespace,
                    position,
                );
                match services.services_by_name.get_mut(&service.namespace) {
                    Some(names) => {
                        names.entry(service.name.clone()).or_insert(position);
                    }
                    None => {
                        let names = HashMap::from([(service.name.clone(), position)]);
                        services
                            .services_by_name
                            .insert(service.namespace.clone(), names);
                    }
                }
            }
            Index {
                pods,
                services: Arc::new(services),
                endpoints: std::iter::repeat_with(OnceLock::new)
                    .take(self.services.len())
                    .collect(),
            }
        })
    }

    /// Builds the lookup index now, rather than on the first connection
    /// after the registry is published.
    pub fn build_index(&self) {
        self.index();
    }

    /// The namespace called `name`, if the registry has it.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        let position = *self.index().services.namespaces_by_name.get(name)?;
        self.namespaces.get(position)
    }

    /// The pod with address `ip`, if any.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&Pod> {
        let position = *self.index().pods.by_ip.get(&ip)?;
        self.pods.get(position).map(|pod| &**pod)
    }

    /// The Service `name` of `namespace`, if any.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        let position = *self
            .index()
            .services
            .services_by_name
            .get(namespace)?
            .get(name)?;
        self.services.get(position).map(|service| &**service)
    }

    /// The service with virtual IP `vip`, if any.
    pub fn service_at(&self, vip: IpAddr) -> Option<&Service> {
        let position = *self.index().services.services_by_vip.get(&vip)?;
        self.services.get(position).map(|service| &**service)
    }

    /// The pods of Kubernetes namespace `namespace`.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.positions_in(namespace)
            .map(|position| &*self.pods[position])
    }

    /// The pods `service` selects, each with its address of `family`'s kind
    /// (pods without one are left out).
    pub fn endpoints<'a>(
        &'a self,
        service: &'a Service,
        family: IpAddr,
    ) -> impl Iterator<Item = (&'a Pod, IpAddr)> + 'a {
        let index = self.index();
        // The service's position, if it is this registry's own.
        let selected = index
            .services
            .services_by_name
            .get(&service.namespace)
            .and_then(|names| names.get(&service.name))
            .filter(|&&position| std::ptr::eq(&*self.services[position], service))
            .map(|&position| {
                index.endpoints[position].get_or_init(|| {
                    self.positions_in(&service.namespace)
                        .filter(|&pod| service.selects(&self.pods[pod].labels))
                        .collect()
                })
            });
        let pods: Box<dyn Iterator<Item = &'a Pod> + 'a> = match selected {
            Some(positions) => Box::new(positions.iter().map(|&pod| &*self.pods[pod])),
            None => Box::new(
                self.pods_in(&service.namespace)
                    .filter(move |pod| service.selects(&pod.labels)),
            ),
        };
        pods.filter_map(move |pod| {
            let ip = pod.ips.iter().find(|ip| ip.is_ipv4() == family.is_ipv4())?;
            Some((pod, *ip))
        })
    }

    fn positions_in(&self, namespace: &str) -> impl Iterator<Item = usize> + '_ {
        self.index()
            .pods
            .by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .copied()
    }

    /// The service a connection to `port` of `pod` most likely came through,
    /// as Istio's ztunnel guesses it on the destination side (a tunnel does
    /// not say which service the client dialled): the first service of the
    /// pod's namespace that selects the pod and has `port` as a target port.
    pub fn service_of(&self, pod: &Pod, port: u16) -> Option<&Service> {
        self.index()
            .services
            .services_by_namespace
            .get(&pod.namespace)
            .into_iter()
            .flatten()
            .filter_map(|position| self.services.get(*position).map(|service| &**service))
            .find(|service| {
                service.selects(&pod.labels) && service.ports.iter().any(|p| p.target_port == port)
            })
    }

    /// The pods scheduled on `node`.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.index()
            .pods
            .by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|&position| &*self.pods[position])
    }
}

impl PodIndex {
    /// Files the pod at `position` under its addresses, namespace and node
    /// (an address already filed keeps its first pod).
    pub(super) fn file(&mut self, pod: &Pod, position: usize) {
        for ip in &pod.ips {
            self.by_ip.entry(*ip).or_insert(position);
        }
        file(&mut self.by_namespace, &pod.namespace, position);
        file(&mut self.by_node, &pod.node, position);
    }

    /// Takes the pod at `position` out of the index.
    pub(super) fn unfile(&mut self, pod: &Pod, position: usize) {
        for ip in &pod.ips {
            if self.by_ip.get(ip) == Some(&position) {
                self.by_ip.remove(ip);
            }
        }
        unfile(&mut self.by_namespace, &pod.namespace, position);
        unfile(&mut self.by_node, &pod.node, position);
    }
}

/// Takes `position` out of `key`'s list, and the list once empty.
fn unfile(lists: &mut HashMap<String, Vec<usize>>, key: &str, position: usize) {
    if let Some(list) = lists.get_mut(key) {
        list.retain(|&at| at != position);
        if list.is_empty() {
            lists.remove(key);
        }
    }
}

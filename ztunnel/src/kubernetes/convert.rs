//! Kubernetes objects into the registry's model: the API source produces the
//! same [`Registry`] the file source reads, so everything downstream is one
//! code path.
//!
//! What the model cannot hold is left out: host-network pods (they share
//! the node's address and cannot be captured), finished, unscheduled and
//! unaddressed pods, objects of a namespace not seen yet, ExternalName and
//! headless services, services without a selector (their endpoints are
//! managed by hand), and named target ports no EndpointSlice resolves yet.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::registry::{self, PodChange, Registry, naming, waypoint};

/// The label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The objects a registry is built from.
pub struct Objects<'a> {
    /// Every namespace.
    pub namespaces: Vec<&'a Namespace>,
    /// Every pod the daemon watches, as kept ([`PodRecord`]).
    pub pods: Vec<&'a PodRecord>,
    /// Every service.
    pub services: Vec<&'a Service>,
    /// Every EndpointSlice (they resolve named target ports).
    pub slices: Vec<&'a EndpointSlice>,
}

/// Builds the registry for the daemon of `node` (none: the CA), and says
/// how many pods and Services it left out over an address another holds.
/// `netns_of` finds the network namespace of a pod of this node from its
/// addresses.
pub fn registry(
    objects: &Objects<'_>,
    node: Option<&str>,
    mut netns_of: impl FnMut(&[IpAddr]) -> Option<PathBuf>,
) -> (Registry, usize) {
    let mut left_out = 0;
    let namespaces: Vec<registry::Namespace> = objects
        .namespaces
        .iter()
        .filter_map(|ns| {
            Some(registry::Namespace {
                name: ns.metadata.name.clone()?,
                labels: labels_of(&ns.metadata.labels),
            })
        })
        .collect();
    // Watches run independently: a pod may be seen before its namespace.
    let names: HashSet<&str> = namespaces.iter().map(|ns| ns.name.as_str()).collect();
    let known = |namespace: &str| names.contains(namespace);

    // An address identifies one workload: the first claim wins (objects come
    // sorted by namespace and name, so the choice is stable), later ones are
    // left out until the first is gone — as when an address is reused by a
    // new pod before the old one's deletion is seen.
    let mut claimed: HashSet<IpAddr> = HashSet::new();
    let mut pods = Vec::new();
    for record in &objects.pods {
        let Some(pod) = record.pod.as_ref().filter(|pod| known(&pod.namespace)) else {
            continue;
        };
        if pod.ips.iter().any(|ip| claimed.contains(ip)) {
            tracing::warn!(pod = %pod.name, namespace = %pod.namespace, ips = ?pod.ips, "left out: another pod holds its address");
            left_out += 1;
            continue;
        }
        claimed.extend(pod.ips.iter().copied());
        if node == Some(pod.node.as_str()) {
            // This node's pods (a few of the cluster's) get their netns.
            let mut local = registry::Pod::clone(pod);
            local.netns = netns_of(&pod.ips);
            pods.push(Arc::new(local));
        } else {
            pods.push(pod.clone());
        }
    }

    // Each Service's EndpointSlices, found once for all (by namespace and
    // the Service's name label), not by a scan per Service.
    let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in &objects.slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(service)) = (slice.metadata.namespace.as_deref(), service) {
            slices_of
                .entry((namespace, service.as_str()))
                .or_default()
                .push(slice);
        }
    }
    let services: Vec<registry::Service> = objects
        .services
        .iter()
        .filter_map(|svc| {
            let key = (
                svc.metadata.namespace.as_deref()?,
                svc.metadata.name.as_deref()?,
            );
            service(svc, slices_of.get(&key).map_or(&[][..], Vec::as_slice))
        })
        .filter(|svc| known(&svc.namespace))
        .filter(|svc| {
            let free = svc.vips.iter().all(|vip| claimed.insert(*vip));
            if !free {
                left_out += 1;
                tracing::warn!(service = %svc.name, namespace = %svc.namespace, "left out: its cluster IP is another object's address");
            }
            free
        })
        .collect();

    let nodes: BTreeSet<&str> = pods
        .iter()
        .map(|pod: &Arc<registry::Pod>| pod.node.as_str())
        .chain(node)
        .collect();
    let nodes = nodes
        .into_iter()
        .map(|name| registry::Node {
            name: name.to_owned(),
        })
        .collect();
    (Registry::new(nodes, namespaces, pods, services), left_out)
}

/// A pod as the Kubernetes source keeps it: converted once, when its watch
/// event arrives, to what the registry and the redirection annotation read.
/// Every daemon holds every pod of the cluster, so this is most of its
/// memory: a whole `Pod` object (containers, volumes, conditions, managed
/// fields, ...) is many times larger, and converting every pod again on
/// each rebuild was most of a rebuild's work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// `namespace/name`.
    key: String,
    /// The pod in the registry's terms, shared with every registry built
    /// while it is unchanged; none when it is not a running, addressed,
    /// scheduled, pod-network pod.
    pub pod: Option<Arc<registry::Pod>>,
    /// Its node (`spec.nodeName`), once scheduled.
    pub node: Option<String>,
    /// Whether it carries Istio's redirection annotation, enabled.
    pub annotated: bool,
}

impl PodRecord {
    /// Keeps what is read of `pod`.
    pub fn new(pod: &Pod) -> Self {
        Self {
            key: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            pod: self::pod(pod).map(Arc::new),
            node: pod.spec.as_ref().and_then(|spec| spec.node_name.clone()),
            annotated: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(super::redirection::ANNOTATION))
                .is_some_and(|value| value == super::redirection::ENABLED),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This record as a change of the registry's pods: the pod, or its
    /// removal when it is not one the registry holds.
    pub fn change(&self) -> PodChange {
        match &self.pod {
            Some(pod) => PodChange::Set(pod.clone()),
            None => self.removal(),
        }
    }

    /// Its removal from the registry's pods.
    pub fn removal(&self) -> PodChange {
        let (namespace, name) = self.key.split_once('/').unwrap_or(("", &self.key));
        PodChange::Remove {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// An object's labels, as the model holds them.
fn labels_of(labels: &Option<BTreeMap<String, String>>) -> registry::Labels {
    labels
        .as_ref()
        .map(registry::Labels::from)
        .unwrap_or_default()
}

/// A pod as the model holds it, if it is a running, addressed, scheduled,
/// pod-network pod. Its `netns` is left for the caller.
fn pod(pod: &Pod) -> Option<registry::Pod> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|pod_ip| pod_ip.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    // `podIP` repeats the first of `podIPs`; keep one address per family.
    let mut families = BTreeSet::new();
    ips.retain(|ip| families.insert(ip.is_ipv4()));
    if ips.is_empty() {
        return None;
    }
    Some(registry::Pod {
        name: pod.metadata.name.clone()?,
        namespace: pod.metadata.namespace.clone()?,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        node: spec.node_name.clone()?,
        ips,
        netns: None,
        workload: controller_workload(pod),
        labels: labels_of(&pod.metadata.labels),
    })
}

/// The workload a pod's controller stands for, as Istio derives it: only for
/// pods whose name was generated (by that controller).
fn controller_workload(pod: &Pod) -> Option<String> {
    pod.metadata
        .generate_name
        .as_ref()
        .filter(|g| !g.is_empty())?;
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))?;
    let labels = labels_of(&pod.metadata.labels);
    Some(naming::controller_workload(
        &controller.kind,
        &controller.name,
        &labels,
    ))
}

/// A service as the model holds it: cluster IPs, TCP ports resolved to
/// numbers, and a selector.
/// `svc` in the registry's terms; `slices` are its EndpointSlices.
fn service(svc: &Service, slices: &[&EndpointSlice]) -> Option<registry::Service> {
    let spec = svc.spec.as_ref()?;
    let name = svc.metadata.name.clone()?;
    let namespace = svc.metadata.namespace.clone()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let selector = spec.selector.clone().filter(|s| !s.is_empty())?;
    let vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.as_ref())
        .filter_map(|ip| ip.parse().ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if vips.is_empty() {
        return None; // headless: clients dial pod addresses directly
    }
    // Named target ports resolve per pod; the EndpointSlices of the service
    // carry the number the endpoints' containers use.
    let named: BTreeMap<&str, u16> = slices
        .iter()
        .flat_map(|slice| slice.ports.iter().flatten())
        .filter_map(|port| Some((port.name.as_deref()?, u16::try_from(port.port?).ok()?)))
        .collect();
    let ports: Vec<registry::ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|port| port.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|port| {
            let number = u16::try_from(port.port).ok()?;
            let target_port = match &port.target_port {
                None => number,
                Some(IntOrString::Int(target)) => u16::try_from(*target).ok()?,
                Some(IntOrString::String(target)) => *named.get(target.as_str())?,
            };
            Some(registry::ServicePort {
                port: number,
                target_port,
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    // Only the labels the daemon reads (waypoints): the rest would cost
    // memory per Service for nothing.
    let labels = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| waypoint::SERVICE_LABELS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Some(registry::Service {
        name,
        namespace,
        vips,
        ports,
        selector: selector.into(),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn pod_json(name: &str, node: &str, ip: &str, ip6: &str) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web", "pod-template-hash": "6c9f"},
                         "generateName": "web-6c9f-",
                         "ownerReferences": [
                             {"apiVersion": "v1", "kind": "Node", "name": node, "uid": "n"},
                             {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6c9f", "uid": "rs", "controller": true}
                         ]},
            "spec": {"nodeName": node, "serviceAccountName": "web", "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}, {"ip": ip6}]}
        })
    }

    #[test]
    fn converts_pods_services_and_named_ports() {
        let namespace: Namespace = from_json(serde_json::json!({
            "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}
        }));
        let local: Pod = from_json(pod_json("web-1", "node1", "10.244.1.2", "fd00::1:2"));
        let remote: Pod = from_json(pod_json("web-2", "node2", "10.244.2.2", "fd00::2:2"));
        let mut host: Pod = from_json(pod_json("agent", "node1", "10.0.0.1", "fd00::1"));
        host.spec.as_mut().unwrap().host_network = Some(true);
        let mut done: Pod = from_json(pod_json("job", "node1", "10.244.1.9", "fd00::1:9"));
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let service: Service = from_json(serde_json::json!({
            "metadata": {"name": "web", "namespace": "demo",
                         "labels": {"istio.io/use-waypoint": "waypoint", "app.kubernetes.io/name": "web"}},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                               {"name": "admin", "port": 9000, "targetPort": 9090},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let slice: EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }));
        let pods = [&local, &remote, &host, &done].map(PodRecord::new);
        let objects = Objects {
            namespaces: vec![&namespace],
            pods: pods.iter().collect(),
            services: vec![&service],
            slices: vec![&slice],
        };
        let (registry, left_out) = registry(&objects, Some("node1"), |ips| {
            (ips[0] == "10.244.1.2".parse::<IpAddr>().unwrap()).then(|| "/run/netns/x".into())
        });
        assert_eq!(left_out, 0);
        let names: Vec<_> = registry.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["web-1", "web-2"],
            "host-network and finished pods are left out"
        );
        assert_eq!(registry.pods[0].netns, Some("/run/netns/x".into()));
        assert_eq!(
            registry.pods[1].netns, None,
            "only this node's pods get a netns"
        );
        assert_eq!(registry.pods[0].ips.len(), 2, "one address per family");
        assert_eq!(registry.pods[0].service_account, "web");
        assert_eq!(
            registry.pods[0].workload(),
            "web",
            "a Deployment's pods share its name"
        );
        let ports: Vec<_> = registry.services[0]
            .ports
            .iter()
            .map(|p| (p.port, p.target_port))
            .collect();
        assert_eq!(
            ports,
            [(80, 8080), (9000, 9090)],
            "named port resolved, UDP left out"
        );
        let labels: Vec<_> = registry.services[0].labels.keys().collect();
        assert_eq!(
            labels,
            ["istio.io/use-waypoint"],
            "only the labels read are kept"
        );
        let nodes: Vec<_> = registry.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["node1", "node2"]);
        crate::registry::Registry::from_yaml(&registry.to_yaml()).expect("a valid registry");
    }

    #[test]
    fn a_pod_is_kept_as_what_is_read_of_it() {
        let mut whole = pod_json("web-1", "node1", "10.244.1.2", "fd00::1:2");
        whole["metadata"]["annotations"] = serde_json::json!({
            "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(2000),
            "ambient.istio.io/redirection": "enabled"
        });
        whole["metadata"]["managedFields"] =
            serde_json::json!([{"manager": "kubelet", "operation": "Update"}]);
        whole["spec"]["containers"] = serde_json::json!([{"name": "web", "image": "nginx", "env": [{"name": "A", "value": "b"}]}]);
        whole["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": "True"}]);
        let whole: Pod = from_json(whole);
        let record = PodRecord::new(&whole);
        assert_eq!(record.key(), "demo/web-1");
        assert_eq!(record.node.as_deref(), Some("node1"));
        assert!(record.annotated);
        let pod = record.pod.expect("a running pod");
        assert_eq!((pod.name.as_str(), pod.workload()), ("web-1", "web"));
        let mut pending = whole.clone();
        pending.status = None;
        assert_eq!(PodRecord::new(&pending).pod, None, "no address yet");
    }

    #[test]
    fn an_address_held_twice_goes_to_the_first_pod_only() {
        let namespace: Namespace = from_json(serde_json::json!({"metadata": {"name": "demo"}}));
        let old: Pod = from_json(pod_json("a-old", "node1", "10.244.1.2", "fd00::1:2"));
        let new: Pod = from_json(pod_json("b-new", "node1", "10.244.1.2", "fd00::1:3"));
        let elsewhere: Pod = from_json(serde_json::json!({
            "metadata": {"name": "c", "namespace": "unknown"},
            "spec": {"nodeName": "node1", "containers": []},
            "status": {"podIP": "10.244.1.7"}
        }));
        let pods = [&old, &new, &elsewhere].map(PodRecord::new);
        let objects = Objects {
            namespaces: vec![&namespace],
            pods: pods.iter().collect(),
            services: vec![],
            slices: vec![],
        };
        let (registry, left_out) = registry(&objects, Some("node1"), |_| None);
        let names: Vec<_> = registry.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["a-old"],
            "a pod of a namespace not seen yet is left out"
        );
        assert_eq!(
            left_out, 1,
            "b-new, over its address (c waits for its namespace)"
        );
        crate::registry::Registry::from_yaml(&registry.to_yaml()).expect("a valid registry");
    }
}

//! Synthetic clusters of any size, shaped like real ones: 1 Service per 10
//! pods, each selecting its 10 pods by an `app` label, pods spread over
//! namespaces and nodes (100 pods per node), one ServiceAccount per app.
//!
//! Addresses are taken from ranges the local cluster's own pods and Services
//! never use (pods 10.128.0.0/9, VIPs 172.16.0.0/12), so a synthetic cluster
//! can be served beside a running one.

use std::net::{IpAddr, Ipv4Addr};

use ztunnel::{
    policy::PolicySet,
    registry::{Labels, Namespace, Node, Pod, Registry, Service, ServicePort},
};

/// Pods per Service (and per app).
pub const PODS_PER_SERVICE: usize = 10;
/// Pods per node.
pub const PODS_PER_NODE: usize = 100;
/// The port every synthetic Service exposes, and its pods' target port.
pub const PORT: u16 = 80;
/// Target port on the pods.
pub const TARGET_PORT: u16 = 8080;

/// The shape of a synthetic cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Pods in all.
    pub pods: usize,
    /// Namespaces (each enrolled).
    pub namespaces: usize,
}

impl Shape {
    /// `pods` pods over 1,000 namespaces (a pod keeps its namespace as the
    /// cluster grows).
    pub fn new(pods: usize) -> Self {
        Self {
            pods,
            namespaces: 1000,
        }
    }

    /// Services in all.
    pub fn services(&self) -> usize {
        self.pods.div_ceil(PODS_PER_SERVICE)
    }

    /// Nodes in all.
    pub fn nodes(&self) -> usize {
        self.pods.div_ceil(PODS_PER_NODE).max(1)
    }
}

/// The namespace of app (and Service) `app`.
pub fn namespace_of(shape: &Shape, app: usize) -> String {
    format!("scale-{}", app % shape.namespaces)
}

/// Address of synthetic pod `index`.
pub fn pod_ip(index: usize) -> IpAddr {
    let n = u32::try_from(index).expect("fewer than 2^23 pods");
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n))
}

/// Virtual IP of synthetic Service `index`.
pub fn service_vip(index: usize) -> IpAddr {
    let n = u32::try_from(index).expect("fewer than 2^20 services");
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + n))
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Synthetic pod `index`.
pub fn pod(shape: &Shape, index: usize) -> Pod {
    let app = index / PODS_PER_SERVICE;
    Pod {
        name: format!("app-{app}-{index}"),
        namespace: namespace_of(shape, app),
        service_account: format!("app-{app}"),
        node: format!("synthetic-{}", index / PODS_PER_NODE),
        ips: vec![pod_ip(index)],
        netns: None,
        labels: labels(&[("app", format!("app-{app}")), ("version", "v1".to_owned())]),
        workload: Some(format!("app-{app}")),
    }
}

/// The synthetic cluster of `shape`, with `extra`'s objects added (the
/// local cluster's own, for a daemon to capture).
pub fn registry(shape: &Shape, extra: Option<&Registry>) -> Registry {
    let mut nodes: Vec<Node> = (0..shape.nodes())
        .map(|i| Node {
            name: format!("synthetic-{i}"),
        })
        .collect();
    let mut namespaces: Vec<Namespace> = (0..shape.namespaces)
        .map(|i| Namespace {
            name: format!("scale-{i}"),
            labels: labels(&[("istio.io/dataplane-mode", "ambient".to_owned())]),
        })
        .collect();
    let mut pods: Vec<std::sync::Arc<Pod>> =
        (0..shape.pods).map(|i| pod(shape, i).into()).collect();
    let mut services: Vec<std::sync::Arc<Service>> = (0..shape.services())
        .map(|app| Service {
            name: format!("app-{app}"),
            namespace: namespace_of(shape, app),
            vips: vec![service_vip(app)],
            ports: vec![ServicePort {
                port: PORT,
                target_port: TARGET_PORT,
            }],
            selector: labels(&[("app", format!("app-{app}"))]),
            labels: Labels::new(),
        })
        .map(std::sync::Arc::new)
        .collect();
    if let Some(extra) = extra {
        nodes.extend(extra.nodes.iter().cloned());
        namespaces.extend(extra.namespaces.iter().cloned());
        pods.extend(extra.pods.iter().cloned());
        services.extend(extra.services.iter().cloned());
    }
    Registry::new(nodes, namespaces, pods, services)
}

/// Where a decision benchmark puts its AuthorizationPolicies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Spread over the cluster's namespaces, each selecting one app there.
    Elsewhere,
    /// Half in the destination's namespace, half in the root namespace, each
    /// selecting an app other than the destination's.
    SameNamespace,
    /// In the destination's namespace, every one selecting the destination
    /// (each must be evaluated: the cost the index cannot remove).
    SelectingTheDestination,
}

impl Placement {
    /// Every placement.
    pub const ALL: [Placement; 3] = [
        Self::Elsewhere,
        Self::SameNamespace,
        Self::SelectingTheDestination,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Elsewhere => "elsewhere",
            Self::SameNamespace => "same namespace + root",
            Self::SelectingTheDestination => "selecting the destination",
        }
    }
}

/// `count` ALLOW policies placed by `placement`, around the destination app
/// `destination` (each allows one principal on one port, as written by hand).
pub fn policies(shape: &Shape, count: usize, placement: Placement, destination: usize) -> String {
    let mut yaml = String::new();
    let root = ztunnel::policy::DEFAULT_ROOT_NAMESPACE;
    let destination_ns = namespace_of(shape, destination);
    for i in 0..count {
        // An app other than the destination's, in the namespace asked for.
        let other = |namespace_of_app: &dyn Fn(usize) -> bool| {
            (0..shape.services())
                .map(|k| (i * 7919 + k) % shape.services())
                .find(|&app| app != destination && namespace_of_app(app))
                .unwrap_or(destination + 1)
        };
        let (namespace, app) = match placement {
            Placement::Elsewhere => {
                let app = other(&|app| namespace_of(shape, app) != destination_ns);
                (namespace_of(shape, app), format!("app-{app}"))
            }
            Placement::SameNamespace if i % 2 == 0 => (root.to_owned(), format!("other-{i}")),
            Placement::SameNamespace => (destination_ns.clone(), format!("other-{i}")),
            Placement::SelectingTheDestination => {
                (destination_ns.clone(), format!("app-{destination}"))
            }
        };
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p-{i}, namespace: {namespace}}}\n\
             spec: {{selector: {{matchLabels: {{app: {app}}}}}, action: ALLOW, rules: [{{from: [{{source: \
             {{principals: [cluster.local/ns/x/sa/client-{i}]}}}}], to: [{{operation: {{ports: [\"{TARGET_PORT}\"]}}}}]}}]}}\n"
        ));
    }
    yaml
}

/// The policy set of [`policies`], checked to load whole.
pub fn policy_set(
    shape: &Shape,
    count: usize,
    placement: Placement,
    destination: usize,
) -> anyhow::Result<PolicySet> {
    let set = PolicySet::from_yaml(
        ztunnel::policy::DEFAULT_ROOT_NAMESPACE,
        &policies(shape, count, placement, destination),
    );
    anyhow::ensure!(
        set.authorization.len() == count,
        "synthetic policies refused: {:?}",
        set.problems()
    );
    Ok(set)
}

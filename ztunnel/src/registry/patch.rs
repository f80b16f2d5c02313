//! A registry changed by a few pods, made from the previous one in place of
//! a rebuild.
//!
//! Pods are what churn in a cluster (every rollout, scale-up and eviction);
//! rebuilding and checking the whole registry for each burst cost a daemon
//! in proportion to the cluster: at 100,000 pods, 5 s of CPU per 1,000 pod
//! events (`bench/results/scale.md`). A patch checks the changed pods only,
//! shares every pod, Service and the Services' index with the previous
//! registry, and copies the pods' index (addresses, namespaces, nodes: a
//! flat copy, about 2 ms at 100,000 pods) to amend it.
//!
//! What a patch cannot decide alone it leaves to a rebuild: a pod of a
//! namespace the registry lacks, an address another workload holds (the
//! rebuild decides which one keeps it, and reports the other), a pod that
//! fails its own checks.

use std::{
    collections::HashSet,
    sync::{Arc, OnceLock},
};

use super::{Node, Pod, Registry, model::Index, validate};

/// One pod's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodChange {
    /// The pod, new or changed (its namespace and name say which).
    Set(Arc<Pod>),
    /// The pod `namespace`/`name` is gone.
    Remove {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// What [`Registry::patched`] made of the changes.
#[derive(Debug)]
pub enum Patched {
    /// They change nothing: the registry stands.
    Unchanged,
    /// The registry with the changes.
    Changed(Box<Registry>),
    /// They need a rebuild, for this reason.
    Rebuild(String),
}

impl Registry {
    /// This registry with `changes` applied, in order; checked as a rebuild
    /// would check them.
    pub fn patched(&self, changes: impl IntoIterator<Item = PodChange>) -> Patched {
        let base = self.index();
        let mut pods = self.pods.clone();
        let mut index = base.pods.clone();
        let mut nodes: Option<Vec<Node>> = None;
        let mut changed = false;
        // Namespaces whose pods moved: their Services' endpoints are found
        // again.
        let mut moved: HashSet<String> = HashSet::new();
        for change in changes {
            match change {
                PodChange::Set(pod) => {
                    let mut problems = Vec::new();
                    validate::check_pod(&mut problems, &pod);
                    if !problems.is_empty() {
                        return Patched::Rebuild(problems.join("; "));
                    }
                    if !base
                        .services
                        .namespaces_by_name
                        .contains_key(&pod.namespace)
                    {
                        return Patched::Rebuild(format!(
                            "pod {}/{}: namespace not in the registry",
                            pod.namespace, pod.name
                        ));
                    }
                    let position = position_of(&pods, &index, &pod.namespace, &pod.name);
                    for ip in &pod.ips {
                        let held = index.by_ip.get(ip).is_some_and(|&at| Some(at) != position)
                            || base.services.services_by_vip.contains_key(ip);
                        if held {
                            return Patched::Rebuild(format!(
                                "pod {}/{}: address {ip} is another workload's",
                                pod.namespace, pod.name
                            ));
                        }
                    }
                    let known_node = index.by_node.contains_key(&pod.node)
                        || nodes
                            .as_ref()
                            .unwrap_or(&self.nodes)
                            .iter()
                            .any(|node| node.name == pod.node);
                    if !known_node {
                        let node = Node {
                            name: pod.node.clone(),
                        };
                        validate::check_node(&mut problems, &node);
                        if !problems.is_empty() {
                            return Patched::Rebuild(problems.join("; "));
                        }
                        nodes.get_or_insert_with(|| self.nodes.clone()).push(node);
                    }
                    match position {
                        Some(at) if pods[at] == pod => continue,
                        Some(at) => {
                            index.unfile(&pods[at], at);
                            index.file(&pod, at);
                            moved.insert(pod.namespace.clone());
                            pods[at] = pod;
                        }
                        None => {
                            index.file(&pod, pods.len());
                            moved.insert(pod.namespace.clone());
                            pods.push(pod);
                        }
                    }
                    changed = true;
                }
                PodChange::Remove { namespace, name } => {
                    let Some(at) = position_of(&pods, &index, &namespace, &name) else {
                        continue;
                    };
                    index.unfile(&pods[at], at);
                    let last = pods.len() - 1;
                    if at != last {
                        // The last pod takes the freed place.
                        index.unfile(&pods[last], last);
                        index.file(&pods[last], at);
                        moved.insert(pods[last].namespace.clone());
                    }
                    pods.swap_remove(at);
                    moved.insert(namespace);
                    changed = true;
                }
            }
        }
        if !changed {
            return Patched::Unchanged;
        }
        let mut endpoints = base.endpoints.clone();
        for namespace in &moved {
            let services = base.services.services_by_namespace.get(namespace);
            for &service in services.into_iter().flatten() {
                endpoints[service] = OnceLock::new();
            }
        }
        Patched::Changed(Box::new(Registry {
            nodes: nodes.unwrap_or_else(|| self.nodes.clone()),
            namespaces: self.namespaces.clone(),
            pods,
            services: self.services.clone(),
            index: OnceLock::from(Index {
                pods: index,
                services: base.services.clone(),
                endpoints,
            }),
        }))
    }
}

/// Where pod `namespace`/`name` is among `pods`.
fn position_of(
    pods: &[Arc<Pod>],
    index: &super::model::PodIndex,
    namespace: &str,
    name: &str,
) -> Option<usize> {
    index
        .by_namespace
        .get(namespace)?
        .iter()
        .copied()
        .find(|&at| pods[at].name == name)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::registry::labels_of;

    const EXAMPLE: &str = include_str!("../../../docs/registry.example.yaml");

    /// Pod `n` of the tests: in `demo` or `legacy`, on node1 to node3, in
    /// app `web` or `db`, at 10.99.0.n.
    fn pod(n: u8, version: u32) -> Arc<Pod> {
        let app = if n.is_multiple_of(3) { "db" } else { "web" };
        let version = version.to_string();
        Arc::new(Pod {
            name: format!("p-{n}"),
            namespace: if n.is_multiple_of(2) {
                "demo"
            } else {
                "legacy"
            }
            .to_owned(),
            service_account: app.to_owned(),
            node: format!("node{}", 1 + n % 3),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 99, 0, n))],
            netns: None,
            labels: labels_of(&[("app", app), ("version", &version)]),
            workload: None,
        })
    }

    fn remove(n: u8) -> PodChange {
        let pod = pod(n, 0);
        PodChange::Remove {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        }
    }

    fn changed(patched: Patched) -> Registry {
        match patched {
            Patched::Changed(registry) => *registry,
            other => panic!("expected a changed registry, got {other:?}"),
        }
    }

    /// Every lookup of `patched` answers as a registry rebuilt from its
    /// objects does.
    fn assert_answers_as_rebuilt(patched: &Registry) {
        let rebuilt = Registry::new(
            patched.nodes.clone(),
            patched.namespaces.clone(),
            patched.pods.clone(),
            patched.services.clone(),
        )
        .validated()
        .expect("a patched registry passes a rebuild's checks");
        let names = |pods: &mut dyn Iterator<Item = &Pod>| {
            let mut names: Vec<String> = pods
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            names.sort();
            names
        };
        for pod in &rebuilt.pods {
            for ip in &pod.ips {
                assert_eq!(patched.pod_at(*ip), Some(&**pod), "{ip}");
            }
            assert_eq!(
                names(&mut patched.pods_in(&pod.namespace)),
                names(&mut rebuilt.pods_in(&pod.namespace)),
            );
            assert_eq!(
                names(&mut patched.pods_on(&pod.node)),
                names(&mut rebuilt.pods_on(&pod.node)),
            );
        }
        for service in &patched.services {
            let family = service.vips[0];
            let of = |registry: &Registry| {
                let mut found: Vec<(String, IpAddr)> = registry
                    .endpoints(
                        registry.service(&service.namespace, &service.name).unwrap(),
                        family,
                    )
                    .map(|(pod, ip)| (pod.name.clone(), ip))
                    .collect();
                found.sort();
                found
            };
            assert_eq!(of(patched), of(&rebuilt), "{}", service.name);
        }
        for node in ["node1", "node2", "node3"] {
            assert_eq!(
                names(&mut patched.pods_on(node)),
                names(&mut rebuilt.pods_on(node))
            );
        }
    }

    #[test]
    fn a_patched_registry_answers_as_a_rebuilt_one_through_any_changes() {
        let mut registry = Registry::from_yaml(EXAMPLE).unwrap();
        // Endpoints are found before the changes, so stale ones would show.
        for service in &registry.services {
            let _ = registry.endpoints(service, service.vips[0]).count();
        }
        // A fixed pseudo-random walk: adds, relabels, moves between nodes,
        // removals (of pods present or not), in batches.
        let mut state = 7u64;
        let mut next = |below: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % below
        };
        for round in 0..200 {
            let batch: Vec<PodChange> = (0..1 + next(4))
                .map(|_| {
                    let n = u8::try_from(1 + next(12)).unwrap();
                    if next(3) == 0 {
                        remove(n)
                    } else {
                        PodChange::Set(pod(n, u32::try_from(next(3)).unwrap()))
                    }
                })
                .collect();
            registry = match registry.patched(batch.clone()) {
                Patched::Changed(next) => *next,
                Patched::Unchanged => registry,
                Patched::Rebuild(why) => panic!("round {round}: {batch:?}: {why}"),
            };
            assert_answers_as_rebuilt(&registry);
        }
    }

    #[test]
    fn a_change_that_changes_nothing_leaves_the_registry_standing() {
        let registry = changed(
            Registry::from_yaml(EXAMPLE)
                .unwrap()
                .patched([PodChange::Set(pod(2, 0))]),
        );
        assert!(matches!(
            registry.patched([PodChange::Set(pod(2, 0))]),
            Patched::Unchanged
        ));
        assert!(matches!(registry.patched([remove(4)]), Patched::Unchanged));
        assert!(matches!(registry.patched([]), Patched::Unchanged));
    }

    #[test]
    fn what_a_patch_cannot_decide_is_left_to_a_rebuild() {
        let registry = Registry::from_yaml(EXAMPLE).unwrap();
        let web1 = registry.pods.iter().find(|p| p.name == "web-1").unwrap();
        let vip = registry.services[0].vips[0];
        let with = |edit: &dyn Fn(&mut Pod)| {
            let mut pod = Pod::clone(&pod(2, 0));
            edit(&mut pod);
            registry.patched([PodChange::Set(Arc::new(pod))])
        };
        for (patched, reason) in [
            (
                with(&|p| p.ips = web1.ips.clone()),
                "address 10.244.1.2 is another workload's",
            ),
            (with(&|p| p.ips = vec![vip]), "is another workload's"),
            (
                with(&|p| p.namespace = "elsewhere".into()),
                "namespace not in the registry",
            ),
            (
                with(&|p| p.name = "Not_A_Name".into()),
                "is not a valid Kubernetes name",
            ),
            (with(&|p| p.ips.clear()), "has no ips"),
            (
                with(&|p| p.node = "-".into()),
                "node name \"-\" is not a valid",
            ),
        ] {
            match patched {
                Patched::Rebuild(why) => assert!(why.contains(reason), "{why}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
        // A pod keeps its own address when it changes.
        let mut relabelled = Pod::clone(web1);
        relabelled.labels.insert("version".into(), "v2".into());
        let patched = changed(registry.patched([PodChange::Set(Arc::new(relabelled))]));
        assert_eq!(
            patched.pod_at(web1.ips[0]).unwrap().labels.get("version"),
            Some("v2")
        );
    }

    #[test]
    fn a_pod_on_a_new_node_brings_the_node() {
        let registry = Registry::from_yaml(EXAMPLE).unwrap();
        let patched = changed(registry.patched([PodChange::Set(pod(2, 0))]));
        assert_eq!(pod(2, 0).node, "node3");
        assert!(patched.nodes.iter().any(|node| node.name == "node3"));
        assert_eq!(patched.pods_on("node3").count(), 1);
        assert!(patched.validated().is_ok());
    }
}

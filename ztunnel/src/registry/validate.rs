//! Consistency checks run once when a registry is loaded.
//!
//! Every problem found is reported (not just the first), each naming the
//! object at fault, so a bad file is fixed in one pass.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::{Node, Pod, Registry};

/// Checks `registry`; on failure returns every problem, separated by `; `.
///
/// It runs on every change of a cluster of any size: nothing is allocated
/// per object unless the object has a problem.
pub(super) fn validate<'a>(registry: &'a Registry) -> Result<(), String> {
    let mut problems = Vec::new();

    let mut nodes = HashSet::new();
    for node in &registry.nodes {
        check_node(&mut problems, node);
        if !nodes.insert(node.name.as_str()) {
            problems.push(format!("node {}: listed twice", node.name));
        }
    }

    let mut namespaces = HashSet::new();
    for ns in &registry.namespaces {
        check_name(&mut problems, "namespace", &ns.name, &ns.name, is_dns_label);
        if !namespaces.insert(ns.name.as_str()) {
            problems.push(format!("namespace {}: listed twice", ns.name));
        }
    }

    // Which object owns each address: an address must identify one workload.
    let mut owners: HashMap<IpAddr, Object<'a>> = HashMap::new();
    let mut claim = |problems: &mut Vec<String>, ip: IpAddr, owner: Object<'a>| {
        if let Some(first) = owners.get(&ip) {
            problems.push(format!("{owner}: address {ip} is already used by {first}"));
        } else {
            owners.insert(ip, owner);
        }
    };

    let mut pods = HashSet::new();
    for pod in &registry.pods {
        let id = Object("pod", &pod.namespace, &pod.name);
        check_pod(&mut problems, pod);
        if !namespaces.contains(pod.namespace.as_str()) {
            problems.push(format!(
                "{id}: namespace {:?} is not in the registry",
                pod.namespace
            ));
        }
        if !nodes.contains(pod.node.as_str()) {
            problems.push(format!("{id}: node {:?} is not in the registry", pod.node));
        }
        if !pods.insert((pod.namespace.as_str(), pod.name.as_str())) {
            problems.push(format!("{id}: listed twice"));
        }
        for ip in &pod.ips {
            claim(&mut problems, *ip, id);
        }
    }

    let mut services = HashSet::new();
    for svc in &registry.services {
        let id = Object("service", &svc.namespace, &svc.name);
        check_name(&mut problems, "service", id, &svc.name, is_dns_label);
        if !namespaces.contains(svc.namespace.as_str()) {
            problems.push(format!(
                "{id}: namespace {:?} is not in the registry",
                svc.namespace
            ));
        }
        if !services.insert((svc.namespace.as_str(), svc.name.as_str())) {
            problems.push(format!("{id}: listed twice"));
        }
        if svc.vips.is_empty() {
            problems.push(format!("{id}: has no vips"));
        }
        for vip in &svc.vips {
            claim(&mut problems, *vip, id);
        }
        if svc.ports.is_empty() {
            problems.push(format!("{id}: has no ports"));
        }
        for (i, port) in svc.ports.iter().enumerate() {
            if port.port == 0 || port.target_port == 0 {
                problems.push(format!("{id}: port and targetPort must be 1-65535"));
            }
            if svc.ports[..i]
                .iter()
                .any(|earlier| earlier.port == port.port)
            {
                problems.push(format!("{id}: port {} listed twice", port.port));
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What can be checked of `node` alone: its name.
pub(super) fn check_node(problems: &mut Vec<String>, node: &Node) {
    check_name(problems, "node", &node.name, &node.name, is_dns_subdomain);
}

/// What can be checked of `pod` alone: its names, addresses and netns.
pub(super) fn check_pod(problems: &mut Vec<String>, pod: &Pod) {
    let id = Object("pod", &pod.namespace, &pod.name);
    check_name(problems, "pod", id, &pod.name, is_dns_subdomain);
    check_name(
        problems,
        "serviceAccount",
        id,
        &pod.service_account,
        is_dns_subdomain,
    );
    if let Some(workload) = &pod.workload {
        check_name(problems, "workload", id, workload, is_dns_subdomain);
    }
    if pod.ips.is_empty() {
        problems.push(format!("{id}: has no ips"));
    }
    if pod.ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
        || pod.ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
    {
        problems.push(format!("{id}: at most one IPv4 and one IPv6 address"));
    }
    if let Some(netns) = pod.netns.as_ref().filter(|path| !path.is_absolute()) {
        problems.push(format!(
            "{id}: netns {} must be an absolute path",
            netns.display()
        ));
    }
}

/// A pod or service, named in problems as `<kind> <namespace>/<name>`.
#[derive(Clone, Copy)]
struct Object<'a>(&'static str, &'a str, &'a str);

impl std::fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.0, self.1, self.2)
    }
}

fn check_name(
    problems: &mut Vec<String>,
    what: &str,
    id: impl std::fmt::Display,
    name: &str,
    valid: fn(&str) -> bool,
) {
    if !valid(name) {
        problems.push(format!(
            "{id}: {what} name {name:?} is not a valid Kubernetes name (lowercase letters, digits, '-')"
        ));
    }
}

/// RFC 1123 label, as Kubernetes requires for namespace and service names.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// RFC 1123 subdomain, as Kubernetes requires for pod, node and ServiceAccount names.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

//! What a cluster should contain: nodes, namespaces and the apps whose pods
//! run on every node.

use std::collections::{BTreeMap, BTreeSet};

use ztunnel::registry::Labels;

use crate::ClusterError;

/// Label that enrols a namespace (Istio ambient's).
pub const AMBIENT_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "ambient");

/// The shape of a cluster to create.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Cluster name: 1 to 12 lowercase letters and digits. It prefixes every
    /// network namespace, so two clusters with different names never collide.
    pub name: String,
    /// Number of nodes (1 to 250), named `node1`, `node2`, ...
    pub nodes: u8,
    /// Kubernetes namespaces.
    pub namespaces: Vec<NamespaceSpec>,
    /// Apps: each runs `replicas` pods on every node.
    pub apps: Vec<AppSpec>,
    /// Directory of the `ztunnel` binary: when set, the cluster runs the
    /// mesh (the CA and a daemon per node); when not, only the network.
    pub mesh: Option<std::path::PathBuf>,
    /// Further command-line arguments for every node daemon, after the
    /// cluster's own (for example `--cert-validity-secs 20` in a test of
    /// certificate expiry).
    pub daemon_args: Vec<String>,
    /// Further arguments for one node's daemon only, after `daemon_args`
    /// (for example `--no-native-tunnel` on one node of two, so the nodes
    /// differ as in a cluster migrating from Istio's ztunnel).
    pub node_daemon_args: BTreeMap<String, Vec<String>>,
}

/// A Kubernetes namespace of the cluster.
#[derive(Clone, Debug)]
pub struct NamespaceSpec {
    /// Namespace name.
    pub name: String,
    /// Namespace labels (for example the enrolment label).
    pub labels: Labels,
}

/// A workload that runs on every node, like a DaemonSet.
#[derive(Clone, Debug)]
pub struct AppSpec {
    /// App name; its pods are named `<app>-<node index>` (then `-2`, `-3` ... for further replicas).
    pub name: String,
    /// Kubernetes namespace of its pods.
    pub namespace: String,
    /// ServiceAccount its pods run as.
    pub service_account: String,
    /// Pods of this app on each node.
    pub replicas: u8,
}

impl ClusterSpec {
    /// The default cluster: `nodes` nodes, an enrolled namespace `demo` with two
    /// ServiceAccounts (`web`, `client`) and a namespace `legacy` without the
    /// label, each app with `replicas` pods per node.
    pub fn new(name: &str, nodes: u8, replicas: u8) -> Self {
        let app = |name: &str, namespace: &str, service_account: &str| AppSpec {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            replicas,
        };
        Self {
            name: name.to_owned(),
            nodes,
            namespaces: vec![
                NamespaceSpec {
                    name: "demo".to_owned(),
                    labels: Labels::from([(
                        AMBIENT_LABEL.0.to_owned(),
                        AMBIENT_LABEL.1.to_owned(),
                    )]),
                },
                NamespaceSpec {
                    name: "legacy".to_owned(),
                    labels: Labels::new(),
                },
            ],
            apps: vec![
                app("web", "demo", "web"),
                app("client", "demo", "client"),
                app("legacy", "legacy", "default"),
            ],
            mesh: None,
            daemon_args: Vec::new(),
            node_daemon_args: BTreeMap::new(),
        }
    }

    /// The same cluster running the mesh, with the binaries in `bin_dir`.
    pub fn with_mesh(mut self, bin_dir: impl Into<std::path::PathBuf>) -> Self {
        self.mesh = Some(bin_dir.into());
        self
    }

    /// The same cluster with `args` appended to every node daemon's command line.
    pub fn with_daemon_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.daemon_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The same cluster with `args` appended to node `node`'s daemon's
    /// command line (after the arguments of every daemon).
    pub fn with_node_daemon_args<I, S>(mut self, node: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node_daemon_args
            .entry(node.to_owned())
            .or_default()
            .extend(args.into_iter().map(Into::into));
        self
    }

    /// A default cluster with a fresh random name, as tests use: two runs
    /// never share a name.
    pub fn ephemeral(nodes: u8, replicas: u8) -> Self {
        Self::new(&random_name(), nodes, replicas)
    }

    /// Checks the spec before anything is created.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |why: String| Err(ClusterError::Spec(why));
        validate_cluster_name(&self.name)?;
        if !(1..=250).contains(&self.nodes) {
            return bad(format!("nodes must be 1 to 250, got {}", self.nodes));
        }
        for node in self.node_daemon_args.keys() {
            let index = node.strip_prefix("node").and_then(|i| i.parse::<u8>().ok());
            if !index.is_some_and(|i| (1..=self.nodes).contains(&i)) {
                return bad(format!(
                    "daemon arguments for {node}: the cluster's nodes are node1 to node{}",
                    self.nodes
                ));
            }
        }
        let namespaces: BTreeSet<&str> =
            self.namespaces.iter().map(|ns| ns.name.as_str()).collect();
        let mut apps = BTreeSet::new();
        let mut pods_per_node = 0usize;
        for app in &self.apps {
            if !apps.insert(app.name.as_str()) {
                return bad(format!("app {} is listed twice", app.name));
            }
            if !namespaces.contains(app.namespace.as_str()) {
                return bad(format!(
                    "app {}: namespace {} is not in the spec",
                    app.name, app.namespace
                ));
            }
            pods_per_node += usize::from(app.replicas);
        }
        // Pod addresses are .2 to .254 of the node's /24.
        if pods_per_node > 253 {
            return bad(format!(
                "at most 253 pods per node, the spec asks for {pods_per_node}"
            ));
        }
        Ok(())
    }
}

/// Checks a cluster name: 1 to 12 lowercase letters and digits.
pub fn validate_cluster_name(name: &str) -> Result<(), ClusterError> {
    let ok = (1..=12).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Spec(format!(
            "cluster name {name:?} must be 1 to 12 lowercase letters or digits"
        )))
    }
}

/// `t` and 8 random hex digits.
fn random_name() -> String {
    format!("t{}", random_hex(4))
}

/// `bytes` random bytes from the kernel, as hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // /dev/urandom is always there on Linux; a failure here is a broken machine.
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom can be opened"),
        &mut buf,
    )
    .expect("/dev/urandom can be read");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid_and_has_two_service_accounts_in_the_enrolled_namespace() {
        let spec = ClusterSpec::new("dev", 2, 1);
        spec.validate().unwrap();
        let enrolled_sas: BTreeSet<_> = spec
            .apps
            .iter()
            .filter(|app| app.namespace == "demo")
            .map(|app| app.service_account.as_str())
            .collect();
        assert!(enrolled_sas.len() >= 2);
    }

    #[test]
    fn ephemeral_names_differ_and_are_valid() {
        let a = ClusterSpec::ephemeral(2, 1);
        let b = ClusterSpec::ephemeral(2, 1);
        assert_ne!(a.name, b.name);
        a.validate().unwrap();
    }

    #[test]
    fn rejects_bad_specs() {
        for name in ["", "Dev", "a-b", "waytoolongname1"] {
            assert!(ClusterSpec::new(name, 2, 1).validate().is_err(), "{name:?}");
        }
        assert!(ClusterSpec::new("dev", 0, 1).validate().is_err());
        assert!(ClusterSpec::new("dev", 2, 100).validate().is_err());
        let mut spec = ClusterSpec::new("dev", 2, 1);
        spec.apps[0].namespace = "nowhere".into();
        assert!(spec.validate().is_err());
    }
}

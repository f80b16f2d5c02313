//! A local Kubernetes-like cluster made of network namespaces.
//!
//! Nodes and pods are network namespaces; each pod hangs off its node by a
//! veth pair, and the nodes share a bridge in a "fabric" namespace, so every
//! pod address is routable from every pod, as on a flat CNI. Pods carry a
//! name, a Kubernetes namespace, a ServiceAccount and a node; the cluster
//! writes the workload registry the node daemons read.
//!
//! The end-to-end tests, `cargo xtask demo`, `cargo xtask cluster ...` and the
//! benchmarks all use this crate, so they exercise the same topology.
//!
//! ```no_run
//! # fn main() -> Result<(), ztunnel_cluster::ClusterError> {
//! use ztunnel_cluster::{Cluster, ClusterSpec};
//! let cluster = Cluster::create(&ClusterSpec::ephemeral(2, 1))?;
//! let out = cluster.run("client-1", "ping", &["-c1", &cluster.pod("web-2")?.ipv4.to_string()])?;
//! # Ok(()) }
//! // dropped: every namespace, veth and process of the cluster is gone
//! ```
//!
//! Everything needs root (network namespaces, veths).

pub mod addressing;
pub mod ca_process;
mod cluster;
pub mod credentials;
pub mod fake_waypoint;
pub mod hbone_client;
pub mod kube_api;
pub mod kube_fabric;
pub mod load_tally;
pub mod mesh;
pub mod netns;
pub mod payload;
mod process;
mod spec;
pub mod status;
mod teardown;
mod topology;

use std::path::{Path, PathBuf};

pub use cluster::{Cluster, STATE_ROOT, state_dir};
pub use process::PodProcess;
pub use spec::{AMBIENT_LABEL, AppSpec, ClusterSpec, NamespaceSpec, validate_cluster_name};
pub use status::Status;
pub use teardown::{Selection, down};

/// What can go wrong building, driving or removing a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The requested cluster shape is invalid.
    #[error("invalid cluster spec: {0}")]
    Spec(String),
    /// A cluster of that name already exists (or left namespaces behind).
    #[error("cluster {0} already exists: remove it with `cargo xtask cluster down --name {0}`")]
    Exists(String),
    /// No cluster of that name.
    #[error("no cluster named {0}: create one with `cargo xtask cluster up`")]
    NotFound(String),
    /// No pod of that name in the cluster.
    #[error("no pod {pod} in cluster {cluster} (see `cargo xtask cluster status`)")]
    NoSuchPod {
        /// The pod asked for.
        pod: String,
        /// The cluster.
        cluster: String,
    },
    /// An external command (`ip`, `ss`, a program in a pod) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it could not start.
        message: String,
    },
    /// A file of the cluster's state could not be read or written.
    #[error("accessing {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A state file is corrupt.
    #[error(
        "cluster state {path} is unreadable ({message}): `cargo xtask cluster down` removes it"
    )]
    State {
        /// The state file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Something of a cluster could not be removed.
    #[error("teardown incomplete: {0}")]
    Teardown(String),
    /// A readiness wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClusterError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_owned(),
            source,
        }
    }
}

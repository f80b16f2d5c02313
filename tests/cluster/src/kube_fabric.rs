//! The stand-in API server ([`crate::kube_api`]) served on a cluster's
//! fabric, where every node reaches it, and the arguments that make the
//! node daemons read it (`--kubernetes`) as a DaemonSet's daemons would.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
};

use crate::{Cluster, ClusterError, kube_api::ApiServer, netns};

/// Where the stand-in listens: on the fabric bridge.
pub const API_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 10, 0, 253)), 6443);

/// Serves an empty stand-in API server on `cluster`'s fabric from
/// `runtime`, and returns it with the node daemons' arguments to read it:
/// a kubeconfig, a directory of the cluster's pod network namespaces (as
/// containerd keeps them) and the cgroup v2 root. Seed it, then restart the
/// daemons with the arguments.
pub fn serve(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
) -> Result<(ApiServer, Vec<String>), ClusterError> {
    let status = cluster.status();
    netns::ip(
        &status.fabric.netns,
        &[
            "addr",
            "add",
            &format!("{}/24", API_ADDRESS.ip()),
            "dev",
            &status.fabric.bridge,
        ],
    )?;
    let fabric_netns = Path::new(netns::NETNS_DIR).join(&status.fabric.netns);
    let in_fabric = |message: String| ClusterError::Command {
        command: format!("serving the API server in {}", fabric_netns.display()),
        message,
    };
    let listener = ztunnel::redirect::netns::PodNetns::open(&fabric_netns)
        .map_err(|err| in_fabric(err.to_string()))?
        .run(|| std::net::TcpListener::bind(API_ADDRESS))
        .map_err(|err| in_fabric(err.to_string()))?
        .map_err(|err| in_fabric(err.to_string()))?;
    let server = {
        let _context = runtime.enter();
        ApiServer::serve(listener).map_err(|err| in_fabric(err.to_string()))?
    };
    // One file per pod network namespace, as containerd keeps them on a
    // node (the cluster's pods only: other clusters use the same addresses).
    let netns_dir = status.state_dir.join("pod-netns");
    std::fs::create_dir_all(&netns_dir).map_err(|err| ClusterError::io(&netns_dir, err))?;
    for pod in &status.pods {
        let link = netns_dir.join(&pod.name);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new(netns::NETNS_DIR).join(&pod.netns), &link)
                .map_err(|err| ClusterError::io(&link, err))?;
        }
    }
    let kubeconfig = status.state_dir.join("kubeconfig.yaml");
    server
        .write_kubeconfig(&kubeconfig)
        .map_err(|err| ClusterError::io(&kubeconfig, err))?;
    // As the DaemonSet does: the cgroup v2 root named, not found.
    let mounts = std::fs::read_to_string("/proc/mounts")
        .map_err(|err| ClusterError::io("/proc/mounts", err))?;
    let cgroup_root = mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .map(|fields| fields[1].to_owned())
        .ok_or_else(|| ClusterError::Spec("no cgroup2 filesystem is mounted".to_owned()))?;
    let path = |path: &Path| path.to_string_lossy().into_owned();
    let args = vec![
        "--kubernetes".to_owned(),
        "--kubeconfig".to_owned(),
        path(&kubeconfig),
        "--netns-dir".to_owned(),
        path(&netns_dir),
        "--cgroup-root".to_owned(),
        cgroup_root,
    ];
    Ok((server, args))
}

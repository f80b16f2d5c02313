//! `ztunnel-cluster`: the local cluster as a command, like kubectl for it.
//! `cargo xtask cluster ...` and `cargo xtask demo` run this binary.

mod demo;

use std::{os::unix::process::CommandExt, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ztunnel_cluster::{Cluster, ClusterSpec, Selection, Status, down};

#[derive(Parser)]
#[command(
    name = "cargo xtask cluster",
    about = "A local cluster of network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Name of the cluster the commands act on unless told otherwise.
const DEFAULT_NAME: &str = "dev";

#[derive(Subcommand)]
enum Command {
    /// Create a cluster that lives until `down`.
    Up {
        /// Cluster name (1-12 lowercase letters and digits).
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        /// Pods of each app (web, client, legacy) on each node.
        #[arg(long, default_value_t = 1)]
        replicas: u8,
        /// Only the network: no CA, no node daemons.
        #[arg(long)]
        no_mesh: bool,
        /// An argument for every node daemon (repeat for several), for example
        /// `--daemon-arg=--cert-validity-secs --daemon-arg=60`.
        #[arg(long = "daemon-arg", allow_hyphen_values = true)]
        daemon_args: Vec<String>,
        /// An argument for one node's daemon, `NODE=ARG` (repeat for several),
        /// after those of every daemon: `--node-daemon-arg node2=--no-native-tunnel`.
        #[arg(long = "node-daemon-arg", value_parser = node_arg)]
        node_daemon_args: Vec<(String, String)>,
    },
    /// Set or remove a label, like kubectl: `namespace legacy istio.io/dataplane-mode=ambient`,
    /// `namespace legacy istio.io/dataplane-mode-`, `pod web-1 istio.io/dataplane-mode=none`.
    Label {
        /// Cluster name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// What to label.
        kind: LabelTarget,
        /// Its name.
        object: String,
        /// `key=value` to set, `key-` to remove.
        label: String,
    },
    /// Remove clusters and anything a crashed run left behind (all, unless told which).
    Down {
        /// Only this cluster.
        #[arg(long, conflicts_with = "stale")]
        name: Option<String>,
        /// Only leftovers of runs that are gone; live clusters stay.
        #[arg(long)]
        stale: bool,
    },
    /// Show a cluster's nodes, pods, fabric, CA and config.
    Status {
        /// Cluster name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a pod's network namespace, or a node's (where the
    /// kubelet runs: `exec node1 -- curl http://<pod ip>:8080/` is a probe).
    Exec {
        /// Cluster name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Pod name, `namespace/name`, or a node's name.
        pod: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Replace a node's daemon the way a DaemonSet rolling update does: the
    /// new one starts beside the old one and takes over its listeners, then
    /// the old one is stopped (SIGTERM) and drains.
    Replace {
        /// Cluster name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// The node whose daemon to replace.
        node: String,
        /// The new daemon's binary (default: the `ztunnel` beside this tool).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// Bring up a cluster, show the system at work on it, tear it down.
    Demo,
}

/// Parses `--node-daemon-arg`'s `NODE=ARG`.
fn node_arg(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(node, arg)| (node.to_owned(), arg.to_owned()))
        .ok_or_else(|| format!("{value:?} is not NODE=ARG (for example node2=--no-native-tunnel)"))
}

/// Errors as one line, cause chain included, without a backtrace even when
/// `RUST_BACKTRACE` is set.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Up {
            name,
            nodes,
            replicas,
            no_mesh,
            daemon_args,
            node_daemon_args,
        } => {
            let mut spec = ClusterSpec::new(&name, nodes, replicas).with_daemon_args(daemon_args);
            for (node, arg) in node_daemon_args {
                spec = spec.with_node_daemon_args(&node, [arg]);
            }
            if !no_mesh {
                spec = spec.with_mesh(bin_dir()?);
            }
            let cluster = Cluster::create(&spec)?;
            let status = cluster.persist()?;
            print_status(&status);
            eprintln!(
                "\ncluster {name} is up; `cargo xtask cluster down --name {name}` removes it"
            );
            Ok(())
        }
        Command::Down { name, stale } => {
            let selection = match (name, stale) {
                (Some(name), _) => Selection::Named(name),
                (None, true) => Selection::Stale,
                (None, false) => Selection::All,
            };
            for removed in down(&selection)? {
                eprintln!("removed cluster {removed}");
            }
            Ok(())
        }
        Command::Status { name, json } => {
            let cluster = Cluster::open(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(cluster.status())?);
            } else {
                print_status(cluster.status());
            }
            Ok(())
        }
        Command::Replace { name, node, binary } => {
            let mut cluster = Cluster::open(&name)?;
            let binary = match binary {
                Some(binary) => binary,
                None => bin_dir()?.join("ztunnel"),
            };
            match cluster.replace_daemon(&node, &binary)? {
                Some(old) => println!(
                    "{node}: {} took over; the old daemon (pid {old}) drains and exits",
                    binary.display()
                ),
                None => println!(
                    "{node}: no daemon was running; {} started",
                    binary.display()
                ),
            }
            Ok(())
        }
        Command::Exec { name, pod, command } => {
            let cluster = Cluster::open(&name)?;
            let (program, args) = command.split_first().context("no command given")?;
            let err = cluster.command(&pod, program)?.args(args).exec();
            bail!("running {program} in {pod}: {err}")
        }
        Command::Label {
            name,
            kind,
            object,
            label,
        } => {
            let mut cluster = Cluster::open(&name)?;
            let (key, value) = match label.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (
                    label
                        .strip_suffix('-')
                        .context("a label is key=value, or key- to remove it")?,
                    None,
                ),
            };
            match kind {
                LabelTarget::Namespace => cluster.label_namespace(&object, key, value)?,
                LabelTarget::Pod => cluster.label_pod(&object, key, value)?,
                LabelTarget::Service => cluster.label_service(&object, key, value)?,
            }
            eprintln!("{kind:?} {object} labelled; the registry is updated");
            Ok(())
        }
        Command::Demo => demo::run(Duration::from_secs(3)),
    }
}

/// What `label` applies to.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LabelTarget {
    /// A Kubernetes namespace.
    Namespace,
    /// A pod.
    Pod,
    /// A Service (`name` or `namespace/name`).
    Service,
}

/// The directory of this binary, where the build also puts `ztunnel`.
pub fn bin_dir() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(exe
        .parent()
        .context("a binary lives in a directory")?
        .to_owned())
}

/// A human-readable summary of a cluster.
fn print_status(status: &Status) {
    println!(
        "cluster {}  (state: {})",
        status.name,
        status.state_dir.display()
    );
    println!("\nNODE     NETNS                     IPV4          IPV6               DAEMON");
    for node in &status.nodes {
        let daemon = node
            .daemon
            .as_ref()
            .map_or("-".to_owned(), |d| format!("pid {}", d.pid));
        println!(
            "{:<8} {:<25} {:<13} {:<18} {daemon}",
            node.name, node.netns, node.ipv4, node.ipv6
        );
    }
    println!(
        "\nPOD          NAMESPACE  SERVICEACCOUNT  NODE     IPV4          IPV6                 ENROLLED"
    );
    for pod in &status.pods {
        println!(
            "{:<12} {:<10} {:<15} {:<8} {:<13} {:<20} {}",
            pod.name,
            pod.namespace,
            pod.service_account,
            pod.node,
            pod.ipv4,
            pod.ipv6,
            pod.enrolled
        );
    }
    println!("\nSERVICE      NAMESPACE  VIPS                               PORT      SELECTOR");
    for service in &status.services {
        let selector: Vec<String> = service
            .selector
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        println!(
            "{:<12} {:<10} {:<34} {:<9} {}",
            service.name,
            service.namespace,
            format!("{}, {}", service.ipv4, service.ipv6),
            format!("{}->{}", service.port, service.target_port),
            selector.join(",")
        );
    }
    println!(
        "\nfabric: bridge {} in {} (ports {})",
        status.fabric.bridge,
        status.fabric.netns,
        status.fabric.interfaces.join(", ")
    );
    let show = |path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map_or("-".to_owned(), |p| p.display().to_string())
    };
    println!(
        "registry: {}\npolicies: {}",
        show(&status.config.registry),
        show(&status.config.policies)
    );
    match &status.ca {
        Some(ca) => println!(
            "ca: pid {} at {} (root {})",
            ca.pid,
            ca.address,
            ca.root_cert.display()
        ),
        None => println!("ca: not running"),
    }
}

//! The mesh on a cluster: the CA in the fabric namespace and one node daemon
//! per node namespace, as real processes of the `ztunnel` binary.
//!
//! The CA listens on [`CA_ADDRESS`], an address on the fabric bridge that
//! every node reaches directly. Each node gets its own bearer token (files of
//! mode 0600); the daemons trust the root the CA publishes.

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    ClusterError, netns,
    spec::random_hex,
    status::{CaStatus, DaemonStatus, Status},
};

/// The CA's address on the fabric.
pub const CA_ADDRESS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 10, 0, 254), 15012);
/// Every daemon's admin endpoint, inside its node's namespace.
pub const ADMIN_ADDRESS: &str = "127.0.0.1:15000";
/// Each daemon's Prometheus endpoint, inside its node's network namespace.
pub const METRICS_ADDRESS: &str = "127.0.0.1:15020";
/// How long the mesh may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Every cluster pins its daemons' eBPF links and maps under
/// `<BPF_PIN_ROOT>-<cluster>/<node>`.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/ztunnel";

/// The bpffs directory holding every pin of cluster `cluster`.
pub fn bpf_pin_dir(cluster: &str) -> PathBuf {
    PathBuf::from(format!("{BPF_PIN_ROOT}-{cluster}"))
}

/// Starts the CA and every node daemon of `status` (with the `ztunnel`
/// binary in `bin_dir`), waits until all are ready, and records them.
pub(crate) fn start(status: &mut Status, bin_dir: &Path) -> Result<(), ClusterError> {
    let ztunnel = bin_dir.join("ztunnel");
    if !ztunnel.exists() {
        return Err(ClusterError::Spec(format!(
            "{} is missing: run `cargo xtask build`",
            ztunnel.display()
        )));
    }
    ensure_bpffs()?;
    let ca_dir = status.state_dir.join("ca");
    std::fs::create_dir_all(&ca_dir).map_err(|err| ClusterError::io(&ca_dir, err))?;

    // One token per node: the CA knows them all, each daemon only its own.
    let mut tokens = String::new();
    for node in &status.nodes {
        let token = random_hex(24);
        tokens.push_str(&format!("{}: {token}\n", node.name));
        write_secret(&token_file(status, &node.name), token.as_bytes())?;
    }
    let node_tokens = ca_dir.join("node-tokens.yaml");
    write_secret(&node_tokens, tokens.as_bytes())?;

    let fabric = status.fabric.netns.clone();
    netns::ip(
        &fabric,
        &[
            "addr",
            "add",
            &format!("{}/24", CA_ADDRESS.ip()),
            "dev",
            &status.fabric.bridge,
        ],
    )?;
    let root_cert = ca_dir.join("root-cert.pem");
    let registry = status
        .config
        .registry
        .clone()
        .expect("a planned cluster has a registry");
    let ca_address = CA_ADDRESS.to_string();
    let pid = netns::spawn_detached(
        &fabric,
        &ztunnel,
        &[
            "ca".as_ref(),
            "--listen".as_ref(),
            ca_address.as_ref(),
            "--state-dir".as_ref(),
            ca_dir.join("state").as_os_str(),
            "--registry".as_ref(),
            registry.as_os_str(),
            "--node-tokens".as_ref(),
            node_tokens.as_os_str(),
            "--server-name".as_ref(),
            CA_ADDRESS.ip().to_string().as_ref(),
            "--publish-root".as_ref(),
            root_cert.as_os_str(),
        ],
        &status.state_dir.join("logs/ca.log"),
    )?;
    netns::wait_listening(&fabric, CA_ADDRESS.port(), READY_TIMEOUT)?;
    status.ca = Some(CaStatus {
        pid,
        address: ca_address,
        root_cert,
    });

    let nodes: Vec<String> = status.nodes.iter().map(|node| node.name.clone()).collect();
    for node in &nodes {
        spawn_daemon(status, node, &ztunnel)?;
    }
    for node in &nodes {
        wait_daemon_ready(status, node)?;
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there, as a node does at
/// boot. Done here, once, because daemons starting together would each mount
/// it, stacking mounts that hide each other's pins.
fn ensure_bpffs() -> Result<(), ClusterError> {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mounts = std::fs::read_to_string("/proc/mounts")
        .map_err(|err| ClusterError::io("/proc/mounts", err))?;
    if mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    netns::run(std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Starts (again) the daemon of `node` and records it; does not wait.
pub(crate) fn spawn_daemon(
    status: &mut Status,
    node: &str,
    ztunnel: &Path,
) -> Result<(), ClusterError> {
    let pid = start_daemon(status, node, ztunnel)?;
    let entry = status
        .nodes
        .iter_mut()
        .find(|n| n.name == node)
        .expect("a planned node");
    entry.daemon = Some(DaemonStatus {
        pid,
        admin: ADMIN_ADDRESS.to_owned(),
        metrics: Some(METRICS_ADDRESS.to_owned()),
    });
    Ok(())
}

/// Waits until the daemon of `node` is ready.
pub(crate) fn wait_daemon_ready(status: &Status, node: &str) -> Result<(), ClusterError> {
    let planned = status.node(node).expect("a planned node");
    let pid = planned.daemon.as_ref().map(|daemon| daemon.pid);
    wait_ready(&planned.netns, pid, &daemon_log(status, node))
}

/// The log of node `node`'s daemons (each appends to it).
pub fn daemon_log(status: &Status, node: &str) -> PathBuf {
    status.state_dir.join(format!("logs/{node}-ztunnel.log"))
}

/// Starts the daemon of node `node`; returns its pid.
fn start_daemon(status: &Status, node: &str, ztunnel: &Path) -> Result<u32, ClusterError> {
    let ca = status.ca.as_ref().expect("the CA starts first");
    let registry = status
        .config
        .registry
        .as_ref()
        .expect("a planned cluster has a registry");
    let netns = &status.node(node).expect("a planned node").netns;
    let policies = status
        .config
        .policies
        .as_ref()
        .expect("a planned cluster has a policy directory");
    let pin_dir = bpf_pin_dir(&status.name).join(node);
    let handover = status.state_dir.join(format!("{node}.handover.sock"));
    let token = token_file(status, node);
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "node".as_ref(),
        "--node".as_ref(),
        node.as_ref(),
        "--ca-address".as_ref(),
        ca.address.as_ref(),
        "--ca-token-file".as_ref(),
        token.as_os_str(),
        "--trust-bundle".as_ref(),
        ca.root_cert.as_os_str(),
        "--admin".as_ref(),
        ADMIN_ADDRESS.as_ref(),
        "--metrics".as_ref(),
        METRICS_ADDRESS.as_ref(),
        "--bpf-pin-dir".as_ref(),
        pin_dir.as_os_str(),
        "--handover-socket".as_ref(),
        handover.as_os_str(),
    ];
    let extra = status.config.daemon_args_of(node);
    // A daemon reading the Kubernetes API (`--kubernetes` among the extra
    // arguments) takes neither the registry file nor the policy directory.
    if !extra.clone().any(|arg| arg == "--kubernetes") {
        args.extend([
            "--registry".as_ref(),
            registry.as_os_str(),
            "--policies".as_ref(),
            policies.as_os_str(),
        ]);
    }
    // Short, so a stopped node is quick to go; long enough for a test to
    // see an open connection drain. A test may ask for another.
    if !extra.clone().any(|arg| arg == "--drain-timeout-secs") {
        args.extend(["--drain-timeout-secs", "3"].map(std::ffi::OsStr::new));
    }
    args.extend(extra.map(std::ffi::OsStr::new));
    // Appended to, so a restarted daemon's log follows its predecessor's.
    netns::spawn_detached(netns, ztunnel, &args, &daemon_log(status, node))
}

/// Waits until the daemon in `netns` (process `pid`) reports ready on its
/// admin endpoint; on failure the error carries the end of its `log`. A
/// daemon that exits (a flag it rejects, a file it cannot read) fails the
/// wait at once, with its own error.
fn wait_ready(netns: &str, pid: Option<u32>, log: &Path) -> Result<(), ClusterError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("http://{ADMIN_ADDRESS}/healthz/ready");
    loop {
        let code = netns::output(netns::exec(netns, "curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]))
        .unwrap_or_default();
        if code == "200" {
            return Ok(());
        }
        if let Some(pid) = pid.filter(|pid| !netns::is_alive(*pid)) {
            return Err(ClusterError::Command {
                command: format!("ztunnel node (pid {pid}) in {netns}"),
                message: format!("it exited while starting; its log ends:\n{}", tail(log)),
            });
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(format!(
                "the node daemon in {netns} is not ready (HTTP {code}); its log ends:\n{}",
                tail(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn token_file(status: &Status, node: &str) -> PathBuf {
    status.state_dir.join("ca").join(format!("{node}.token"))
}

/// Writes a secret readable by its owner only, created with that mode.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| ClusterError::io(path, err))?;
    file.write_all(bytes)
        .map_err(|err| ClusterError::io(path, err))
}

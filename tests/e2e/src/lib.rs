//! Helpers for the end-to-end tests in `tests/`: locating the project's
//! binaries and driving the cluster tool as a user would.
//!
//! The tests need root and run under `cargo xtask test`, which builds every
//! binary first and points `ZTUNNEL_BIN_DIR` at them.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// The directory of the project's binaries: `ZTUNNEL_BIN_DIR`, or the
/// profile directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTUNNEL_BIN_DIR") {
        return dir.into();
    }
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps")
        .to_owned()
}

/// The path of project binary `name`; panics with the fix if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// Runs the cluster tool (`cargo xtask cluster ...`) with `args`.
pub fn cluster_cli(args: &[&str]) -> Output {
    Command::new(bin("ztunnel-cluster"))
        .args(args)
        .output()
        .expect("ztunnel-cluster can be spawned")
}

/// Runs the cluster tool with `args`, asserting success; returns stdout.
pub fn cluster_cli_ok(args: &[&str]) -> String {
    let out = cluster_cli(args);
    assert!(
        out.status.success(),
        "`cluster {}` failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the cluster tool prints UTF-8")
}

/// A `t`-prefixed random cluster name, unique per call.
pub fn unique_name() -> String {
    ztunnel_cluster::ClusterSpec::ephemeral(1, 1).name
}

/// A `ztunnel ca` process on loopback, killed when dropped.
pub struct CaProcess {
    child: std::process::Child,
    /// The address it serves on.
    pub address: std::net::SocketAddr,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl CaProcess {
    /// Starts `ztunnel ca` listening on `listen` (a loopback address; port 0
    /// for a free one) with `args`, and waits until it listens.
    pub fn start(listen: &str, args: &[&str], log: PathBuf) -> Self {
        use std::io::BufRead;
        let stderr = std::fs::File::create(&log).expect("the CA log can be created");
        let mut child = Command::new(bin("ztunnel"))
            .args(["ca", "--listen", listen, "--server-name", "127.0.0.1"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("ztunnel ca can be spawned");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the CA's stdout");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "the CA did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Self {
            child,
            address,
            log,
        }
    }

    /// What the CA has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the CA (as a crash would) and waits for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What node `node`'s daemon has logged so far.
pub fn daemon_log(cluster: &ztunnel_cluster::Cluster, node: &str) -> String {
    let path = cluster
        .status()
        .state_dir
        .join(format!("logs/{node}-ztunnel.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// How many connections from pod `src` to `dst` node `node`'s daemon has
/// relayed outbound (its `outbound connection closed` log lines).
pub fn captured(cluster: &ztunnel_cluster::Cluster, node: &str, src: &str, dst: &str) -> usize {
    count_relayed(
        cluster,
        node,
        "outbound connection closed",
        &format!("src.pod={src} "),
        dst,
    )
}

/// How many connections to `dst` in pod `pod` node `node`'s daemon has
/// delivered inbound (its `inbound connection closed` log lines).
pub fn delivered(cluster: &ztunnel_cluster::Cluster, node: &str, pod: &str, dst: &str) -> usize {
    count_relayed(
        cluster,
        node,
        "inbound connection closed",
        &format!("dst.pod={pod} "),
        dst,
    )
}

fn count_relayed(
    cluster: &ztunnel_cluster::Cluster,
    node: &str,
    event: &str,
    pod: &str,
    dst: &str,
) -> usize {
    daemon_log(cluster, node)
        .lines()
        .filter(|line| {
            line.contains(event) && line.contains(pod) && line.contains(&format!("dst.addr={dst} "))
        })
        .count()
}

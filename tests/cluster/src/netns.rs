//! Network namespaces, links and processes, through iproute2 and procfs.
//!
//! Everything is done with the same `ip` commands an operator would type, so
//! a failing step can be replayed by hand from its error message.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::ClusterError;

/// Where `ip netns add` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Every network namespace of this project starts with this.
pub const PREFIX: &str = "ztc-";

/// The name of a cluster member's network namespace: `ztc-<cluster>-<member>`.
/// Cluster names have no `-`, so the cluster part is unambiguous.
pub fn name(cluster: &str, member: &str) -> String {
    format!("{PREFIX}{cluster}-{member}")
}

/// The cluster a project namespace belongs to, if `netns` is one.
pub fn cluster_of(netns: &str) -> Option<&str> {
    netns
        .strip_prefix(PREFIX)?
        .split_once('-')
        .map(|(cluster, _)| cluster)
}

/// Creates a named network namespace with its loopback up.
pub fn add(netns: &str) -> Result<(), ClusterError> {
    run(Command::new("ip").args(["netns", "add", netns]))?;
    ip(netns, &["link", "set", "lo", "up"])
}

/// `ip -n <netns> <args>`.
pub fn ip(netns: &str, args: &[&str]) -> Result<(), ClusterError> {
    run(Command::new("ip").args(["-n", netns]).args(args))
}

/// Sets sysctls inside `netns`.
pub fn sysctl(netns: &str, settings: &[&str]) -> Result<(), ClusterError> {
    run(exec(netns, "sysctl").arg("-qw").args(settings))
}

/// A command that runs `program` inside `netns`.
pub fn exec(netns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]);
    cmd
}

/// Starts `program args...` inside `netns`, detached from the caller: it
/// lives on after the caller exits, its output goes to `log`. Returns its pid.
pub fn spawn_detached(
    netns: &str,
    program: &std::path::Path,
    args: &[&std::ffi::OsStr],
    log: &std::path::Path,
) -> Result<u32, ClusterError> {
    // nsenter changes only the network namespace; `ip netns exec` would also
    // remount /sys privately, hiding the cgroup2 mount the daemon attaches to.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={NETNS_DIR}/{netns}"))
        .arg("--")
        .arg(program)
        .args(args);
    // Not waited for: it belongs to the cluster, and teardown kills it.
    Ok(spawn_logged(&mut cmd, log)?.id())
}

/// Spawns `cmd` with no stdin and its stdout and stderr appended to `log`.
pub fn spawn_logged(
    cmd: &mut Command,
    log: &std::path::Path,
) -> Result<std::process::Child, ClusterError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|err| ClusterError::io(log, err))?;
    let stderr = file.try_clone().map_err(|err| ClusterError::io(log, err))?;
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .spawn()
        .map_err(|err| ClusterError::Command {
            command: format!("{cmd:?}"),
            message: err.to_string(),
        })
}

/// Waits until something listens on TCP `port` inside `netns` (a readiness
/// probe on the socket table, not a guessed delay).
pub fn wait_listening(netns: &str, port: u16, timeout: Duration) -> Result<(), ClusterError> {
    let deadline = Instant::now() + timeout;
    let filter = format!("sport = :{port}");
    loop {
        let sockets = output(exec(netns, "ss").args(["-Hltn", &filter]))?;
        if !sockets.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(format!(
                "nothing listens on port {port} in {netns}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names of every network namespace of this project on the machine.
pub fn list() -> Result<Vec<String>, ClusterError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(ClusterError::io(NETNS_DIR, err)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// Kills every process inside `netns`, waits until they are gone, then
/// deletes it. With no process left holding it, the kernel destroys the
/// namespace and every interface in it (veth peers included).
pub fn remove(netns: &str) -> Result<(), ClusterError> {
    if !Path::new(NETNS_DIR).join(netns).exists() {
        return Ok(());
    }
    let pids = pids(netns)?;
    if !pids.is_empty() {
        // `kill` fails for a pid that exited meanwhile; what counts is the wait below.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        wait_gone(&pids, Duration::from_secs(10)).map_err(|alive| {
            ClusterError::Teardown(format!("processes {alive:?} in {netns} survived SIGKILL"))
        })?;
    }
    run(Command::new("ip").args(["netns", "delete", netns]))
}

/// Processes whose network namespace is `netns`.
pub fn pids(netns: &str) -> Result<Vec<u32>, ClusterError> {
    let out = output(Command::new("ip").args(["netns", "pids", netns]))?;
    Ok(out
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// Whether process `pid` still runs. A zombie holds no namespace any more,
/// but a killed multi-threaded process can show a zombie leader while its
/// other threads are still exiting (and holding the namespace): every thread
/// is checked.
pub fn is_alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            // Field 3, after the parenthesised command name, is the state.
            .is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
            })
    })
}

/// Waits until none of `pids` is alive; on timeout returns those still alive.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Result<(), Vec<u32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|pid| is_alive(*pid)).collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(alive);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion; a failure carries the command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<(), ClusterError> {
    output(cmd).map(drop)
}

/// Runs `cmd` to completion and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String, ClusterError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|err| ClusterError::Command {
            command: format!("{cmd:?}"),
            message: err.to_string(),
        })?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: format!("{cmd:?}"),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_to_their_cluster() {
        let netns = name("dev", "web-1");
        assert_eq!(netns, "ztc-dev-web-1");
        assert_eq!(cluster_of(&netns), Some("dev"));
        assert_eq!(cluster_of("other-ns"), None);
        assert_eq!(cluster_of("ztc-"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX));
    }
}

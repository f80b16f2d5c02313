//! The cluster's lifecycle as users and scripts drive it: `cluster up`,
//! `status --json`, `exec`, `down`, and teardown that leaves nothing behind,
//! whether the owner finishes, panics, or is killed.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
};

use serde_json::Value;
use ztunnel_cluster::{Cluster, ClusterSpec, netns, state_dir};
use ztunnel_e2e::{cluster_cli, cluster_cli_ok, unique_name};

/// Network-namespace inodes of every member of cluster `name` still mounted.
fn netns_inodes(name: &str) -> BTreeSet<u64> {
    netns::list()
        .unwrap()
        .iter()
        .filter(|ns| netns::cluster_of(ns) == Some(name))
        .map(|ns| {
            std::fs::metadata(Path::new(netns::NETNS_DIR).join(ns))
                .unwrap()
                .ino()
        })
        .collect()
}

/// Every network namespace any thread on the machine is in or holds open, with
/// who holds it (`pid/tid comm`).
fn live_netns_inodes() -> BTreeMap<u64, String> {
    let mut inodes = BTreeMap::new();
    let parse = |link: std::path::PathBuf| -> Option<u64> {
        link.to_str()?
            .strip_prefix("net:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    };
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = proc.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let holder = |what: &str| format!("{} {what} ({})", dir.display(), comm.trim());
        for task in std::fs::read_dir(dir.join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(ino) = std::fs::read_link(task.path().join("ns/net"))
                .ok()
                .and_then(parse)
            {
                inodes.insert(
                    ino,
                    holder(&format!("thread {}", task.file_name().to_string_lossy())),
                );
            }
        }
        for fd in std::fs::read_dir(dir.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(ino) = std::fs::read_link(fd.path()).ok().and_then(parse) {
                inodes.insert(ino, holder("open fd"));
            }
        }
    }
    inodes
}

/// Asserts that nothing of cluster `name` exists any more: no named netns, no
/// state, none of `pids` alive, and none of its namespaces alive anywhere (so
/// every veth in them is gone with them).
fn assert_gone(name: &str, inodes: &BTreeSet<u64>, pids: &[u32]) {
    assert!(
        netns_inodes(name).is_empty(),
        "netns of {name} still mounted"
    );
    assert!(!state_dir(name).exists(), "state of {name} still there");
    for pid in pids {
        assert!(
            !netns::is_alive(*pid),
            "process {pid} of {name} still running"
        );
    }
    // A process may still be exiting (an `ip netns exec` between its setns
    // and its exit): references must be gone within a moment, not instantly.
    let referenced = || -> Vec<_> {
        live_netns_inodes()
            .into_iter()
            .filter(|(ino, _)| inodes.contains(ino))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !referenced().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let alive = referenced();
    assert!(
        alive.is_empty(),
        "network namespaces of {name} are still referenced: {alive:?}"
    );
}

/// Starts processes in several pods the way users do: one owned by the
/// caller, one detached in the background (as `cluster exec ... &` would).
fn start_processes(cluster: &Cluster) -> Vec<u32> {
    let owned = cluster.spawn("client-1", "sleep", &["600"]).unwrap();
    let owned_pid = owned.pid();
    std::mem::forget(owned); // as if its owner died without cleaning up
    let detached = cluster
        .run(
            "legacy-2",
            "sh",
            &["-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
        )
        .unwrap();
    vec![owned_pid, detached.trim().parse().unwrap()]
}

#[test]
fn teardown_leaves_no_namespace_veth_or_process() {
    let cluster = Cluster::create(&ClusterSpec::ephemeral(2, 1)).unwrap();
    let name = cluster.status().name.clone();
    let inodes = netns_inodes(&name);
    assert_eq!(inodes.len(), 1 + 2 + 6, "fabric, 2 nodes and 6 pods");
    let pids = start_processes(&cluster);
    assert!(pids.iter().all(|pid| netns::is_alive(*pid)));

    drop(cluster);
    assert_gone(&name, &inodes, &pids);
}

#[test]
fn teardown_happens_when_the_owner_panics() {
    let spec = ClusterSpec::ephemeral(2, 1);
    let name = spec.name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let owner = std::thread::spawn(move || {
        let cluster = Cluster::create(&spec).unwrap();
        tx.send((
            netns_inodes(&cluster.status().name),
            start_processes(&cluster),
        ))
        .unwrap();
        panic!("a test failing half-way");
    });
    let (inodes, pids) = rx.recv().unwrap();
    assert!(owner.join().is_err(), "the owner thread panicked");
    assert!(!inodes.is_empty());
    assert_gone(&name, &inodes, &pids);
}

/// Removes a `cluster up` cluster even if the test fails half-way.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        cluster_cli(&["down", "--name", &self.0]);
    }
}

/// A daemon that cannot start fails `cluster up` at once with its own
/// error, not after the readiness timeout.
#[test]
fn cluster_up_reports_a_daemon_that_exits_at_once() {
    let name = unique_name();
    let _guard = DownOnDrop(name.clone());
    // As a shell with RUST_BACKTRACE set: the error is still one message.
    let out = std::process::Command::new(ztunnel_e2e::bin("ztunnel-cluster"))
        .args(["up", "--name", &name, "--daemon-arg=--no-such-flag"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("lang_start"), "a backtrace:\n{stderr}");
    assert!(!out.status.success(), "{stderr}");
    // Seen exiting, not waited for until the readiness timeout.
    assert!(stderr.contains("exited while starting"), "{stderr}");
    assert!(!stderr.contains("is not ready"), "{stderr}");
    assert!(
        stderr.contains("--no-such-flag"),
        "the daemon's own error:\n{stderr}"
    );
}

#[test]
fn cluster_cli_up_status_exec_down() {
    let name = unique_name();
    let _guard = DownOnDrop(name.clone());
    cluster_cli_ok(&["up", "--name", &name, "--nodes", "3", "--replicas", "2"]);

    // status --json: the documented shape, null for what does not run yet.
    let status: Value =
        serde_json::from_str(&cluster_cli_ok(&["status", "--name", &name, "--json"])).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert!(
            node["name"].is_string() && node["netns"].is_string(),
            "{node}"
        );
        let daemon = &node["daemon"];
        assert!(
            netns::is_alive(daemon["pid"].as_u64().unwrap() as u32),
            "{node}"
        );
        assert_eq!(daemon["admin"], "127.0.0.1:15000");
        assert_eq!(daemon["metrics"], "127.0.0.1:15020", "{node}");
    }
    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), 3, "a service per app");
    assert_eq!(services[0]["name"], "web");
    assert_eq!(services[0]["ipv4"], "10.96.0.10");
    assert_eq!(services[0]["target_port"], 8080);
    let pods = status["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3 * 3 * 2, "3 nodes x 3 apps x 2 replicas");
    let mut service_accounts = BTreeSet::new();
    for pod in pods {
        for key in [
            "name",
            "namespace",
            "service_account",
            "node",
            "netns",
            "ipv4",
            "ipv6",
        ] {
            assert!(pod[key].is_string(), "pod field {key}: {pod}");
        }
        let netns = pod["netns"].as_str().unwrap();
        assert!(
            Path::new(netns::NETNS_DIR).join(netns).exists(),
            "{netns} does not exist"
        );
        let enrolled = pod["enrolled"].as_bool().unwrap();
        assert_eq!(enrolled, pod["namespace"] == "demo", "{pod}");
        if enrolled {
            service_accounts.insert(pod["service_account"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        service_accounts.len() >= 2,
        "enrolled pods use at least two ServiceAccounts"
    );
    assert!(
        pods.iter().any(|p| !p["enrolled"].as_bool().unwrap()),
        "some pods are not enrolled"
    );
    assert_eq!(status["fabric"]["interfaces"].as_array().unwrap().len(), 3);
    assert!(status["fabric"]["netns"].is_string());
    let ca = &status["ca"];
    assert!(netns::is_alive(ca["pid"].as_u64().unwrap() as u32), "{ca}");
    assert_eq!(ca["address"], "10.10.0.254:15012");
    let root = std::fs::read_to_string(ca["root_cert"].as_str().unwrap()).unwrap();
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    assert!(Path::new(status["config"]["registry"].as_str().unwrap()).is_file());
    assert!(Path::new(status["config"]["policies"].as_str().unwrap()).is_dir());

    // exec runs inside the pod's network namespace and passes the exit code on.
    let web = pods.iter().find(|p| p["name"] == "web-2-2").unwrap();
    let addrs = cluster_cli_ok(&[
        "exec", "--name", &name, "web-2-2", "--", "ip", "-o", "addr", "show", "dev", "eth0",
    ]);
    assert!(addrs.contains(web["ipv4"].as_str().unwrap()), "{addrs}");
    assert!(addrs.contains(web["ipv6"].as_str().unwrap()), "{addrs}");
    let code = cluster_cli(&[
        "exec",
        "--name",
        &name,
        "demo/client-1",
        "--",
        "sh",
        "-c",
        "exit 7",
    ])
    .status
    .code();
    assert_eq!(code, Some(7));
    let missing = cluster_cli(&["exec", "--name", &name, "nope-1", "--", "true"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no pod nope-1"));

    // A second `up` with the same name is refused, and the first is untouched.
    let again = cluster_cli(&["up", "--name", &name]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let inodes = netns_inodes(&name);
    let mesh_pids: Vec<u32> = nodes
        .iter()
        .map(|node| &node["daemon"]["pid"])
        .chain([&status["ca"]["pid"]])
        .map(|pid| pid.as_u64().unwrap() as u32)
        .collect();
    cluster_cli_ok(&["down", "--name", &name]);
    assert_gone(&name, &inodes, &mesh_pids);
    let after = cluster_cli(&["status", "--name", &name]);
    assert!(String::from_utf8_lossy(&after.stderr).contains(&format!("no cluster named {name}")));
}

#[test]
fn cluster_down_removes_leftovers_of_killed_runs_and_keeps_live_clusters() {
    // A run killed after creating its cluster: its owner is dead, its processes live on.
    let dead_owner = {
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let killed = Cluster::create(&ClusterSpec::ephemeral(2, 1)).unwrap();
    let killed_name = killed.status().name.clone();
    let killed_pids = start_processes(&killed);
    let state_file = state_dir(&killed_name).join("state.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    state["owner_pid"] = dead_owner.into();
    std::fs::write(&state_file, state.to_string()).unwrap();
    std::mem::forget(killed);

    // A run killed so early, or so messily, that only namespaces remain.
    let orphan = Cluster::create(&ClusterSpec::ephemeral(1, 1)).unwrap();
    let orphan_name = orphan.status().name.clone();
    std::fs::remove_dir_all(state_dir(&orphan_name)).unwrap();
    std::mem::forget(orphan);

    // A live cluster, owned by this test: it must survive.
    let live = Cluster::create(&ClusterSpec::ephemeral(1, 1)).unwrap();
    let live_name = live.status().name.clone();

    let (killed_inodes, orphan_inodes) = (netns_inodes(&killed_name), netns_inodes(&orphan_name));
    cluster_cli_ok(&["down", "--stale"]);
    assert_gone(&killed_name, &killed_inodes, &killed_pids);
    assert_gone(&orphan_name, &orphan_inodes, &[]);
    assert_eq!(
        netns_inodes(&live_name).len(),
        1 + 1 + 3,
        "the live cluster was touched"
    );
    live.run("web-1", "true", &[])
        .expect("the live cluster still works");
}

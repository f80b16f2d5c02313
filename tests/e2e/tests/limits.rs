//! No pod can exhaust its node's daemon: a flood of idle connections, into a
//! pod's tunnel port from outside the mesh and out of an enrolled pod, is
//! refused beyond the limits while other pods' traffic across the nodes keeps
//! working; the log stays readable and memory comes back afterwards.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use ztunnel_cluster::Cluster;
use ztunnel_e2e::{
    READY, daemon_log, daemon_pid, http_server, mesh, metric_sum, scrape, testapp, testapp_path,
    within,
};

/// Connections held idle by each holder process (two per flood: one process
/// may not open 25,000 files on these machines).
const PER_HOLDER: usize = 12_500;

/// `ztunnel-testapp hold`: idle connections kept open until dropped.
struct Holder(Child);

impl Holder {
    /// Opens [`PER_HOLDER`] connections from `pod` to `address`; returns once
    /// every attempt has connected or failed (the flood is then in place).
    fn start(cluster: &Cluster, pod: &str, address: &str) -> Self {
        let mut child = cluster
            .command(pod, &testapp_path())
            .unwrap()
            .args(["hold", address, "--connections", &PER_HOLDER.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("held "), "{pod}: {line:?}");
        eprintln!("{pod} -> {address}: {}", line.trim());
        Self(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing stdin lets it go; it closes every connection on exit.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Resident memory of node `node`'s daemon, in KiB.
fn rss_kib(cluster: &Cluster, node: &str) -> u64 {
    let pid = daemon_pid(cluster, node);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn warnings(cluster: &Cluster, node: &str) -> usize {
    daemon_log(cluster, node)
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .count()
}

#[test]
fn a_flood_of_idle_connections_leaves_other_pods_traffic_untouched() {
    let cluster = mesh(2);
    let _web2 = http_server(&cluster, "web-2");
    let _echo = cluster
        .spawn("legacy-2", &testapp_path(), &["echo"])
        .unwrap();
    cluster.wait_listening("legacy-2", 9000, READY).unwrap();
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    let echo = format!("{}:9000", cluster.pod("legacy-2").unwrap().ipv4);
    let honest = || {
        testapp(
            &cluster,
            "client-1",
            &[
                "burst",
                &format!("{web2}:8080"),
                "--connections",
                "1000",
                "--concurrency",
                "8",
            ],
        )
    };
    assert_eq!(honest().trim(), "ok 1000 failed 0");
    let nodes = ["node1", "node2"];
    let before = nodes.map(|node| rss_kib(&cluster, node));
    let warned = nodes.map(|node| warnings(&cluster, node));
    let started = Instant::now();

    // 25,000 idle connections to web-2's tunnel port from a pod outside the
    // mesh (node2 refuses the handshakes past its caps), and 25,000 out of
    // an enrolled pod on node1 (refused past the pod's limit).
    let tunnel_port = format!("{web2}:15008");
    let floods = [
        Holder::start(&cluster, "legacy-1", &tunnel_port),
        Holder::start(&cluster, "legacy-1", &tunnel_port),
        Holder::start(&cluster, "web-1", &echo),
        Holder::start(&cluster, "web-1", &echo),
    ];
    assert_eq!(
        honest().trim(),
        "ok 1000 failed 0",
        "other pods' traffic during the flood"
    );
    let during = nodes.map(|node| rss_kib(&cluster, node));
    let refused = |node: &str, limit: &str| {
        metric_sum(
            &scrape(&cluster, node),
            "ztunnel_limit_refusals_total",
            &[("limit", limit)],
        )
    };
    assert!(refused("node1", "outbound_per_pod") > 0.0);
    assert!(refused("node2", "pending_handshakes_per_source") > 0.0);
    // Warnings about the flood are rate-limited, and the rest counted.
    let elapsed = started.elapsed().as_secs_f64();
    let written = nodes.map(|node| warnings(&cluster, node));
    for (index, node) in nodes.iter().enumerate() {
        let per_second = (written[index] - warned[index]) as f64 / elapsed;
        eprintln!("{node}: {per_second:.1} warnings/s during the flood");
        assert!(
            per_second < 100.0,
            "{node}: {per_second:.0} warnings per second"
        );
        let suppressed = metric_sum(
            &scrape(&cluster, node),
            "ztunnel_log_lines_suppressed_total",
            &[],
        );
        assert!(suppressed > 1000.0, "{node}: {suppressed} suppressed");
    }
    drop(floods);
    // ... and the log says how many, per place in the code, every 10 s.
    within(
        Duration::from_secs(11),
        "the suppressed warnings reported",
        || {
            daemon_log(&cluster, "node2").lines().any(|line| {
                line.contains("repeated warnings suppressed: ") && line.contains(".rs:")
            })
        },
    );

    // Memory comes back once the surge is over (checked every second).
    within(
        Duration::from_secs(20),
        "the daemons' memory comes back",
        || {
            nodes
                .iter()
                .zip(before)
                .all(|(node, before)| rss_kib(&cluster, node) < before + before / 2)
        },
    );
    let after = nodes.map(|node| rss_kib(&cluster, node));
    for (index, node) in nodes.iter().enumerate() {
        eprintln!(
            "{node}: RSS before {} KiB, during {} KiB, after {} KiB",
            before[index], during[index], after[index]
        );
    }
    assert_eq!(honest().trim(), "ok 1000 failed 0", "and after it");
}

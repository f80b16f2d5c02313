//! Transparent capture with eBPF: unmodified applications in enrolled pods
//! are steered into their node's daemon, which knows their workload and
//! original destination; everything else is left alone.

use std::time::Duration;

use ztunnel_cluster::{Cluster, netns, payload::Payload};
use ztunnel_e2e::{
    READY, access_log, assert_downloads, bin, captured, daemon_log, delivered, eventually,
    http_server, mesh, testapp, testapp_path, within,
};

const MODE: &str = "istio.io/dataplane-mode";

/// `GET /` from pod `pod` to the test app at `addr` (a 2 s connect timeout,
/// so a dropped SYN fails quickly).
fn get(cluster: &Cluster, pod: &str, addr: &str) -> Result<String, ztunnel_cluster::ClusterError> {
    let url = format!("http://{addr}/");
    cluster.run(
        pod,
        "curl",
        &["-sS", "--connect-timeout", "2", "--max-time", "5", &url],
    )
}

#[test]
fn enrolled_pods_are_captured_with_their_workload_and_original_destination() {
    let cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let web = cluster.pod("web-2").unwrap().clone();
    let (v4, v6) = (format!("{}:8080", web.ipv4), format!("[{}]:8080", web.ipv6));

    // Bytes arrive intact through the daemon, over IPv4 and IPv6.
    let len = 1024 * 1024 + 7;
    for addr in [&v4, &v6] {
        assert_downloads(&cluster, "client-1", addr, len);
    }
    // The daemon accepted them in client-1's namespace: source workload and
    // original destination are right.
    eventually("both connections in node1's log", || {
        captured(&cluster, "node1", "client-1", &v4) == 1
            && captured(&cluster, "node1", "client-1", &v6) == 1
    });
    let log = access_log(&cluster, "node1");
    assert!(
        log.iter().any(|entry| entry["reporter"] == "source"
            && entry["src_workload"] == "client"
            && entry["src_namespace"] == "demo"
            && entry["src_identity"] == "spiffe://cluster.local/ns/demo/sa/client"),
        "{log:?}"
    );

    // The application sees its original destination, never the proxy.
    for (target, want) in [
        (v4.clone(), v4.clone()),
        (v6.clone(), v6.clone()),
        (
            format!("[::ffff:{}]:8080", web.ipv4),
            format!("[::ffff:{}]:8080", web.ipv4),
        ),
    ] {
        let out = testapp(&cluster, "client-1", &["probe", &target]);
        assert!(
            out.starts_with(&format!("peer={want} ")),
            "getpeername for {target}: {out}"
        );
    }

    // A pod of a namespace without the label is never touched.
    assert_eq!(
        get(&cluster, "legacy-1", &v4).unwrap(),
        "hello from web-2\n"
    );
    let probe = testapp(&cluster, "legacy-1", &["probe", &v4]);
    assert!(probe.starts_with(&format!("peer={v4} ")), "{probe}");
    std::thread::sleep(Duration::from_millis(300)); // what would be logged, if anything, is logged at close
    let legacy = cluster.pod("legacy-1").unwrap().clone();
    let log = access_log(&cluster, "node1");
    assert!(
        !log.iter().any(|entry| {
            entry["src_addr"]
                .as_str()
                .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
                .is_some_and(|addr| addr.ip() == legacy.ipv4 || addr.ip() == legacy.ipv6)
        }),
        "the daemon saw legacy-1: {log:?}"
    );
}

#[test]
fn labelling_a_namespace_switches_capture_on_and_off_at_run_time() {
    let mut cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let web = format!("{}:8080", cluster.pod("web-2").unwrap().ipv4);
    let connect = |cluster: &Cluster| testapp(cluster, "legacy-1", &["probe", &web]);

    connect(&cluster);
    assert_eq!(captured(&cluster, "node1", "legacy-1", &web), 0);

    cluster
        .label_namespace("legacy", MODE, Some("ambient"))
        .unwrap();
    // Registry changes take effect within a second.
    within(
        Duration::from_secs(1),
        "legacy-1 captured after the label",
        || {
            connect(&cluster);
            captured(&cluster, "node1", "legacy-1", &web) > 0
        },
    );

    cluster.label_namespace("legacy", MODE, None).unwrap();
    within(
        Duration::from_secs(1),
        "legacy-1 released after the label is removed",
        || daemon_log(&cluster, "node1").contains("pod released pod=legacy-1"),
    );
    let count = captured(&cluster, "node1", "legacy-1", &web);
    for _ in 0..3 {
        connect(&cluster);
    }
    // Captured connections log when they close, which a probe does at once.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        captured(&cluster, "node1", "legacy-1", &web),
        count,
        "still captured without the label"
    );
}

#[test]
fn a_thousand_concurrent_captured_connections_all_complete() {
    let cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let web = format!("{}:8080", cluster.pod("web-2").unwrap().ipv4);
    let out = testapp(
        &cluster,
        "client-1",
        &["fetch", &web, "--bytes", "4096", "--connections", "1000"],
    );
    assert_eq!(out.trim(), "ok 1000");
    eventually("1000 relayed connections in node1's log", || {
        captured(&cluster, "node1", "client-1", &web) == 1000
    });
}

#[test]
fn a_pod_setting_the_daemons_marks_on_its_sockets_is_still_captured() {
    // A pod with CAP_NET_ADMIN can set any mark; the programs tell the
    // daemon's sockets by its process, so the mark buys no way around capture.
    let cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let web = format!("{}:8080", cluster.pod("web-2").unwrap().ipv4);
    for mark in ["0x539", "0x53a"] {
        let out = testapp(&cluster, "client-1", &["probe", "--mark", mark, &web]);
        // A captured connect goes to the daemon's listener on the pod's
        // loopback; getpeername() still shows the original destination.
        assert!(
            out.trim()
                .starts_with(&format!("peer={web} local=127.0.0.1:")),
            "mark {mark}: {out}"
        );
    }
    eventually("node1 relayed both marked connections", || {
        captured(&cluster, "node1", "client-1", &web) == 2
    });
}

#[test]
fn a_burst_of_short_connections_works_as_it_does_without_the_mesh() {
    // Every delivery connects from the client's address inside the
    // destination pod, and its socket waits in TIME_WAIT once the client has
    // ended first. Ports must be shared across destinations, as the client's
    // own kernel shares them without the mesh: each four-tuple needs its own
    // port, not each connection. A small port range in the destination pod
    // (2,000 ports) shows the difference with two servers: 3,000 connections,
    // 1,500 to each, fit; with a port per connection they did not.
    let cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let _second = cluster
        .spawn("web-2", &testapp_path(), &["http", "--listen", "[::]:8081"])
        .unwrap();
    cluster.wait_listening("web-2", 8081, READY).unwrap();
    cluster
        .run(
            "web-2",
            "sh",
            &[
                "-c",
                "echo 40000 41999 > /proc/sys/net/ipv4/ip_local_port_range",
            ],
        )
        .unwrap();
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    for port in [8080, 8081] {
        let address = format!("{web2}:{port}");
        let args = [
            "burst",
            &address,
            "--connections",
            "1500",
            "--concurrency",
            "16",
        ];
        assert_eq!(
            testapp(&cluster, "client-1", &args).trim(),
            "ok 1500 failed 0"
        );
    }
    assert!(
        !daemon_log(&cluster, "node2").contains("Address already in use"),
        "node2 ran out of ports"
    );
}

/// The rule sets of iptables and nftables in network namespace `netns`
/// (`None`: the machine's own), without comments and counters.
fn rule_sets(netns: Option<&str>) -> String {
    let run = |program: &str, args: &[&str]| {
        let mut cmd = match netns {
            Some(ns) => netns::exec(ns, program),
            None => std::process::Command::new(program),
        };
        netns::output(cmd.args(args)).unwrap()
    };
    let iptables = run("iptables-save", &[]) + &run("ip6tables-save", &[]);
    let nft = run("nft", &["list", "ruleset"]);
    (iptables + &nft)
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with(':'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn capture_creates_no_iptables_or_nftables_rule() {
    let machine_before = rule_sets(None);
    let cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let web = format!("{}:8080", cluster.pod("web-2").unwrap().ipv4);
    testapp(&cluster, "client-1", &["probe", &web]);
    eventually("the connection relayed", || {
        captured(&cluster, "node1", "client-1", &web) == 1
    });

    assert_eq!(
        rule_sets(None),
        machine_before,
        "the machine's rule set changed"
    );
    for netns in [
        &cluster.status().nodes[0].netns,
        &cluster.pod("client-1").unwrap().netns,
        &cluster.pod("web-2").unwrap().netns,
    ] {
        assert_eq!(rule_sets(Some(netns)), "", "rules in {netns}");
    }
}

/// The program ids behind the links pinned in `dir`, read with bpftool.
fn pinned_programs(dir: &std::path::Path) -> Vec<u64> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("link_") {
            continue;
        }
        let pin = entry.path();
        let out = netns::output(std::process::Command::new("bpftool").args([
            "-j",
            "link",
            "show",
            "pinned",
            pin.to_str().unwrap(),
        ]))
        .unwrap();
        let link: serde_json::Value = serde_json::from_str(&out).unwrap();
        ids.push(link["prog_id"].as_u64().unwrap());
    }
    ids.sort();
    ids.dedup();
    ids
}

fn program_exists(id: u64) -> bool {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn a_killed_daemon_fails_closed_a_restarted_one_takes_over_and_uninstall_leaves_nothing() {
    let mut cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let web = format!("{}:8080", cluster.pod("web-2").unwrap().ipv4);
    let probe = |cluster: &Cluster, pod: &str| {
        let testapp = bin("ztunnel-testapp");
        netns::output(
            cluster
                .command(pod, testapp.to_str().unwrap())
                .unwrap()
                .args(["probe", &web]),
        )
    };
    probe(&cluster, "client-1").unwrap();
    eventually("the first connection relayed", || {
        captured(&cluster, "node1", "client-1", &web) == 1
    });
    let pins = ztunnel_cluster::mesh::bpf_pin_dir(&cluster.status().name).join("node1");
    let first_programs = pinned_programs(&pins);
    // Five cgroup programs, and sk_lookup (one program, a link per enrolled pod).
    assert_eq!(first_programs.len(), 6, "every program's link is pinned");
    let _web1 = http_server(&cluster, "web-1");
    let web1 = format!("{}:8080", cluster.pod("web-1").unwrap().ipv4);
    let plaintext_to_web1 = |cluster: &Cluster| get(cluster, "legacy-2", &web1);
    assert_eq!(plaintext_to_web1(&cluster).unwrap(), "hello from web-1\n");

    // Down: enrolled pods' new connections are refused, never sent around the mesh.
    cluster.kill_daemon("node1").unwrap();
    for _ in 0..3 {
        let err = probe(&cluster, "client-1").unwrap_err().to_string();
        assert!(err.contains("Connection refused"), "{err}");
    }
    assert!(
        first_programs.iter().all(|id| program_exists(*id)),
        "the programs stay attached while the daemon is down"
    );
    // Plaintext for an enrolled pod is dropped, not delivered around the daemon.
    assert!(
        plaintext_to_web1(&cluster).is_err(),
        "plaintext reached web-1 while its daemon was down"
    );
    // Pods outside the mesh are not affected.
    probe(&cluster, "legacy-1").unwrap();

    // Back: the new daemon takes the pinned state over, with no program left behind.
    cluster.start_daemon("node1").unwrap();
    probe(&cluster, "client-1").unwrap();
    eventually("the new daemon relays", || {
        captured(&cluster, "node1", "client-1", &web) == 2
    });
    assert_eq!(plaintext_to_web1(&cluster).unwrap(), "hello from web-1\n");
    let second_programs = pinned_programs(&pins);
    assert_eq!(second_programs.len(), 6);
    assert!(
        first_programs.iter().all(|id| !program_exists(*id)),
        "the old programs were replaced, not stacked"
    );

    // Uninstall (daemon stopped): no program, pin or map left; pods back to plain networking.
    cluster.kill_daemon("node1").unwrap();
    netns::output(std::process::Command::new(bin("ztunnel")).args([
        "uninstall",
        "--bpf-pin-dir",
        pins.to_str().unwrap(),
    ]))
    .unwrap();
    assert!(!pins.exists(), "pins left in {}", pins.display());
    assert!(
        second_programs.iter().all(|id| !program_exists(*id)),
        "programs left attached"
    );
    let out = probe(&cluster, "client-1").unwrap();
    assert!(
        out.starts_with(&format!(
            "peer={web} local={}",
            cluster.pod("client-1").unwrap().ipv4
        )),
        "{out}"
    );
    assert_eq!(
        captured(&cluster, "node1", "client-1", &web),
        2,
        "captured after uninstall"
    );
}

#[test]
fn plaintext_arriving_at_an_enrolled_pod_goes_through_its_daemon() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let _legacy = http_server(&cluster, "legacy-2");
    let web = cluster.pod("web-2").unwrap().clone();
    let legacy1 = cluster.pod("legacy-1").unwrap().clone();

    // From a pod outside the mesh, over IPv4 and IPv6: bytes intact, and
    // node2's daemon delivered each with the real client and the original destination.
    let len = 256 * 1024 + 3;
    for (addr, client) in [
        (format!("{}:8080", web.ipv4), legacy1.ipv4.to_string()),
        (
            format!("[{}]:8080", web.ipv6),
            format!("[{}]", legacy1.ipv6),
        ),
    ] {
        assert_downloads(&cluster, "legacy-1", &addr, len);
        eventually("the connection in node2's log", || {
            delivered(&cluster, "node2", "web-2", &addr) == 1
        });
        let log = access_log(&cluster, "node2");
        assert!(
            log.iter().any(|entry| entry["reporter"] == "destination"
                && entry["dst_addr"] == addr.as_str()
                && entry["src_addr"]
                    .as_str()
                    .is_some_and(|src| src.starts_with(&format!("{client}:")))),
            "client address lost: {log:?}"
        );
    }

    // A pod outside the mesh receives its traffic directly.
    let legacy2 = format!("{}:8080", cluster.pod("legacy-2").unwrap().ipv4);
    assert_eq!(
        get(&cluster, "legacy-1", &legacy2).unwrap(),
        "hello from legacy-2\n"
    );
    assert!(
        !access_log(&cluster, "node2")
            .iter()
            .any(|entry| entry["dst_addr"] == legacy2.as_str()),
        "legacy-2 was captured"
    );

    // The daemon's own listeners in the pod are not reachable from the network.
    for port in [15001, 15006] {
        let target = format!("{}:{port}", web.ipv4);
        let testapp = bin("ztunnel-testapp");
        let result = netns::output(
            cluster
                .command("legacy-1", testapp.to_str().unwrap())
                .unwrap()
                .args(["probe", &target]),
        );
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("Connection refused"),
            "{target} is reachable"
        );
    }
}

#[test]
fn an_opted_out_pod_is_left_alone_and_registry_changes_do_not_disturb_open_connections() {
    let mut cluster = mesh(2);
    let _server = http_server(&cluster, "web-2");
    let web = cluster.pod("web-2").unwrap().clone();
    let addr = format!("{}:8080", web.ipv4);

    // A captured download in flight (about 3 s at 8 MB/s) while the registry changes around it.
    let len: u64 = 24 * 1024 * 1024;
    let file = cluster.status().state_dir.join("download");
    let mut download = cluster
        .spawn(
            "client-1",
            "curl",
            &[
                "-sS",
                "--fail",
                "--limit-rate",
                "8M",
                "-o",
                file.to_str().unwrap(),
                &format!("http://{addr}/bytes/{len}"),
            ],
        )
        .unwrap();

    // web-1 opts out: from now on the daemon never sees its connections.
    cluster.label_pod("web-1", MODE, Some("none")).unwrap();
    within(Duration::from_secs(1), "web-1 released", || {
        daemon_log(&cluster, "node1").contains("pod released pod=web-1")
    });
    let probe = testapp(&cluster, "web-1", &["probe", &addr]);
    assert!(
        probe.contains(&format!("local={}", cluster.pod("web-1").unwrap().ipv4)),
        "web-1 still captured: {probe}"
    );
    // Other namespaces join and leave the mesh meanwhile.
    cluster
        .label_namespace("legacy", MODE, Some("ambient"))
        .unwrap();
    within(Duration::from_secs(1), "legacy-1 captured", || {
        daemon_log(&cluster, "node1").contains("pod captured pod=legacy-1")
    });
    cluster.label_namespace("legacy", MODE, None).unwrap();

    let status = download.wait(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "the download was cut: {}", download.log());
    let body = std::fs::read(&file).unwrap();
    assert_eq!(
        ztunnel_cluster::payload::sha256_hex(&body),
        Payload::sha256_hex(len),
        "the download was damaged"
    );
    eventually("the download relayed by node1", || {
        captured(&cluster, "node1", "client-1", &addr) == 1
    });
    assert_eq!(
        captured(&cluster, "node1", "web-1", &addr),
        0,
        "an opted-out pod was captured"
    );
}

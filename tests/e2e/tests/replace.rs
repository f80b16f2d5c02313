//! Replacing a node's daemon the way a DaemonSet rolling update does (the
//! new one starts beside the old one and takes over its listeners, then the
//! old one is stopped and drains): under a fixed-rate load, nothing fails,
//! with the native protocol and with HBONE. A crash still fails closed.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use ztunnel_cluster::{Cluster, ClusterSpec, PodProcess, load_tally::LoadTally, netns};
use ztunnel_e2e::{READY, bin, bin_dir, http_server, testapp_path};

#[test]
fn replacing_both_daemons_under_load_fails_no_request_and_breaks_no_stream() {
    let (mut cluster, _servers) = replace_both_under_load(&[]);

    // A crash of a daemon that took over still fails closed (nobody is there
    // to hand over), and the next daemon starts as after any crash.
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    let url = format!("http://{web2}:8080/");
    let get =
        |cluster: &Cluster| cluster.run("client-1", "curl", &["-sS", "--max-time", "3", &url]);
    cluster.kill_daemon("node1").unwrap();
    let refused = get(&cluster).unwrap_err().to_string();
    assert!(
        refused.contains("Connection refused") || refused.contains("(7)"),
        "{refused}"
    );
    cluster.start_daemon("node1").unwrap();
    assert_eq!(get(&cluster).unwrap(), "hello from web-2\n");
}

/// The same over HBONE: a draining daemon sends GOAWAY on its HTTP/2
/// connections, their open streams finish, and the peer opens a new
/// connection (to the new daemon) for the next connection, which never
/// fails.
#[test]
fn replacing_both_daemons_under_load_over_hbone_fails_nothing() {
    let (cluster, _servers) = replace_both_under_load(&["--no-native-tunnel"]);
    let entries = ztunnel_e2e::access_log(&cluster, "node1");
    let sources: Vec<_> = entries
        .iter()
        .filter(|entry| entry["reporter"] == "source" && entry["route"] == "tunnel")
        .collect();
    assert!(sources.len() >= 300, "{} connections", sources.len());
    assert!(
        sources
            .iter()
            .all(|entry| entry["tunnel_protocol"] == "hbone" && entry["response_flags"] == "-"),
        "every connection over HBONE, none failed"
    );
    // Each replacement made the source open a new HTTP/2 connection: the
    // first one, and one after each of the four replacements at least.
    let fresh = sources
        .iter()
        .filter(|entry| entry["tunnel_reused"] == false)
        .count();
    eprintln!(
        "{fresh} new HBONE connections for {} streams",
        sources.len()
    );
    assert!(fresh >= 5, "{fresh} new HBONE connections");
}

/// Replaces node2's then node1's daemon twice, half a second apart, under a
/// load of 100 new connections a second and three long-lived streams from
/// client-1 to web-2 (the daemons started with `args` too); checks that no
/// request failed and no stream broke, and that each replaced daemon
/// exited once its connections ended. Returns the cluster and web-2's
/// servers, still running.
fn replace_both_under_load(args: &[&str]) -> (Cluster, [PodProcess; 2]) {
    // A drain deadline longer than the test: streams opened through a
    // replaced daemon live on in it until they end.
    let spec = ClusterSpec::ephemeral(2, 1)
        .with_mesh(bin_dir())
        .with_daemon_args(["--drain-timeout-secs", "120"])
        .with_daemon_args(args.iter().copied());
    let mut cluster = Cluster::create(&spec).expect("the cluster comes up");
    let web = http_server(&cluster, "web-2");
    let mirror = cluster
        .spawn("web-2", &testapp_path(), &["mirror"])
        .unwrap();
    cluster.wait_listening("web-2", 9003, READY).unwrap();
    let web2 = cluster.pod("web-2").unwrap().ipv4;

    // client-1 (node1) to web-2 (node2): both daemons carry every byte.
    let mut load = cluster
        .command("client-1", &testapp_path())
        .unwrap()
        .args([
            "load",
            &format!("{web2}:8080"),
            &format!("{web2}:9003"),
            "--rate",
            "100",
            "--streams",
            "3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let ztunnel = bin("ztunnel");
    let mut replaced = Vec::new();
    for _ in 0..2 {
        for node in ["node2", "node1"] {
            let old = cluster.replace_daemon(node, &ztunnel).unwrap();
            replaced.push(old.expect("a daemon was running"));
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    std::thread::sleep(Duration::from_secs(1));

    drop(load.stdin.take());
    let mut line = String::new();
    BufReader::new(load.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut errors = String::new();
    std::io::Read::read_to_string(&mut load.stderr.take().unwrap(), &mut errors).unwrap();
    assert!(load.wait().unwrap().success(), "{line} {errors}");
    let tally: LoadTally = line.parse().unwrap();
    eprintln!("{tally:?} across {} replacements", replaced.len());
    assert_eq!(
        (tally.requests_failed, tally.streams_broken),
        (0, 0),
        "{line}{errors}"
    );
    assert_eq!(tally.streams_ok, 3);
    assert!(tally.requests_ok >= 300, "{line}");

    // Each replaced daemon exits once its last connection has ended.
    netns::wait_gone(&replaced, Duration::from_secs(45))
        .unwrap_or_else(|alive| panic!("replaced daemons {alive:?} did not exit"));
    (cluster, [web, mirror])
}

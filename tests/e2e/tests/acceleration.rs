//! Socket acceleration (sockmap) on the hops inside pods, on and off: every
//! byte arrives, in order, both ways; half-close and resets cross; a receiver
//! that stops reading slows the sender (nothing dropped, memory bounded);
//! thousands of connections come and go and the kernel's maps forget every
//! closed socket; the metrics say which path the bytes took.
//!
//! The failure modes that made other projects drop sockmap acceleration are
//! the ones tested here: unbounded queues at a receiver that does not read
//! (the kernel does not bound redirected bytes by the receive buffer),
//! bytes overtaking each other when a connection changes path, and map
//! entries of closed sockets left behind.

use ztunnel::redirect::acceleration::PinnedEntries;
use ztunnel_cluster::{Cluster, ClusterSpec};
use ztunnel_e2e::{
    READY, assert_downloads, eventually, http_server, metric_sum, scrape, testapp, testapp_path,
    within,
};

/// A two-node mesh, socket acceleration on or off (the default).
fn mesh(accelerated: bool) -> Cluster {
    let mut spec = ClusterSpec::ephemeral(2, 1).with_mesh(ztunnel_e2e::bin_dir());
    if accelerated {
        spec = spec.with_daemon_args(["--socket-acceleration"]);
    }
    Cluster::create(&spec).expect("the cluster comes up")
}

/// Node `node`'s `ztunnel_socket_acceleration_*` metric `name` (with `labels`).
fn accel(cluster: &Cluster, node: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(
        &scrape(cluster, node),
        &format!("ztunnel_socket_acceleration_{name}"),
        labels,
    )
}

fn redirected(cluster: &Cluster, node: &str) -> f64 {
    accel(cluster, node, "bytes_total", &[("path", "redirected")])
}

/// The pinned maps of node `node`'s daemon.
fn pinned(cluster: &Cluster, node: &str) -> PinnedEntries {
    let dir = std::path::Path::new("/sys/fs/bpf")
        .join(format!("ztunnel-{}", cluster.status().name))
        .join(node);
    PinnedEntries::count(&dir).expect("the pinned maps can be read")
}

/// Downloads and uploads across nodes, over IPv4 and IPv6, on the same
/// node, half-close and a reset: the same results with acceleration on and
/// off; with it on, both nodes' hops moved bytes socket to socket.
fn carries_everything(accelerated: bool) {
    let cluster = mesh(accelerated);
    let _http = http_server(&cluster, "web-2");
    let _local = http_server(&cluster, "web-1");
    let _echo = cluster.spawn("web-2", &testapp_path(), &["echo"]).unwrap();
    let _reset = cluster.spawn("web-2", &testapp_path(), &["reset"]).unwrap();
    cluster.wait_listening("web-2", 9000, READY).unwrap();
    cluster.wait_listening("web-2", 9001, READY).unwrap();
    let web = cluster.pod("web-2").unwrap().clone();
    let local = cluster.pod("web-1").unwrap().ipv4;

    // An odd length: a truncated or padded body cannot match by accident.
    let len = 48 * 1024 * 1024 + 7;
    assert_downloads(&cluster, "client-1", &format!("{}:8080", web.ipv4), len);
    assert_downloads(
        &cluster,
        "client-1",
        &format!("[{}]:8080", web.ipv6),
        1_000_003,
    );
    assert_downloads(&cluster, "client-1", &format!("{local}:8080"), 8_000_009);
    // Upload: every byte to the server and back, the client's end shut first.
    for addr in [format!("{}:9000", web.ipv4), format!("[{}]:9000", web.ipv6)] {
        let out = testapp(
            &cluster,
            "client-1",
            &["half-close", &addr, "--bytes", "20000011"],
        );
        assert_eq!(out.trim(), "ok 20000011", "{addr}");
    }
    let out = testapp(
        &cluster,
        "client-1",
        &["send", &format!("{}:9001", web.ipv4)],
    );
    assert_eq!(
        out.trim(),
        "reset",
        "the application's reset reaches the client"
    );

    for node in ["node1", "node2"] {
        let enabled = accel(&cluster, node, "enabled", &[]);
        if accelerated {
            assert_eq!(enabled, 1.0, "{node}");
            // Both ends of every hop joined; most of the bytes of the
            // download's and upload's hops went socket to socket.
            assert!(accel(&cluster, node, "sockets_total", &[("event", "joined")]) >= 8.0);
            assert!(
                redirected(&cluster, node) > 8e6,
                "{node}: {}",
                redirected(&cluster, node)
            );
        } else {
            assert_eq!(enabled, 0.0, "{node}");
            assert_eq!(redirected(&cluster, node), 0.0, "{node}");
            assert_eq!(pinned(&cluster, node).accelerated, 0, "{node}");
        }
    }
}

#[test]
fn accelerated_hops_carry_every_byte_in_order_half_close_and_resets() {
    carries_everything(true);
}

#[test]
fn unaccelerated_hops_carry_every_byte_in_order_half_close_and_resets() {
    carries_everything(false);
}

/// An application that stops reading slows its sender down to what the
/// buffers on the way hold, and then gets every byte, intact and in order.
fn a_stalled_receiver_slows_the_sender(accelerated: bool) {
    let cluster = mesh(accelerated);
    let _stall = cluster
        .spawn("web-2", &testapp_path(), &["stall", "--seconds", "5"])
        .unwrap();
    cluster.wait_listening("web-2", 9004, READY).unwrap();
    let web = cluster.pod("web-2").unwrap().ipv4;
    let out = testapp(
        &cluster,
        "client-1",
        &["push", &format!("{web}:9004"), "--seconds", "3"],
    );
    // `accepted X ok X`: the server read exactly what the client's socket took.
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{out}");
    assert_eq!((words[0], words[2]), ("accepted", "ok"), "{out}");
    assert_eq!(words[1], words[3], "bytes lost or added: {out}");
    let accepted: u64 = words[1].parse().unwrap();
    // Without backpressure the sender would pass gigabytes in 3 s; the
    // buffers on the way (sockets at both hops and the tunnel) hold tens
    // of MiB at most.
    assert!(accepted > 1 << 20, "{out}");
    assert!(accepted < 64 << 20, "the sender was not slowed: {out}");
}

#[test]
fn a_stalled_receiver_slows_an_accelerated_sender_and_loses_nothing() {
    a_stalled_receiver_slows_the_sender(true);
}

#[test]
fn a_stalled_receiver_slows_an_unaccelerated_sender_and_loses_nothing() {
    a_stalled_receiver_slows_the_sender(false);
}

#[test]
fn thousands_of_connections_come_and_go_and_their_sockets_are_forgotten() {
    let cluster = mesh(true);
    let _http = http_server(&cluster, "web-2");
    let web = cluster.pod("web-2").unwrap().ipv4;
    let out = testapp(
        &cluster,
        "client-1",
        &[
            "burst",
            &format!("{web}:8080"),
            "--connections",
            "3000",
            "--concurrency",
            "64",
        ],
    );
    assert_eq!(out.trim(), "ok 3000 failed 0");
    let joined = accel(&cluster, "node1", "sockets_total", &[("event", "joined")]);
    assert!(
        joined >= 6000.0,
        "both ends of each connection's hop: {joined}"
    );
    // Once every connection has closed, nothing of them is left in the
    // kernel's socket map or in the daemon's own.
    for node in ["node1", "node2"] {
        within(std::time::Duration::from_secs(10), "the maps empty", || {
            pinned(&cluster, node)
                == PinnedEntries {
                    accelerated: 0,
                    sockets: 0,
                }
        });
        eventually("the members gauge falls to 0", || {
            accel(&cluster, node, "members", &[]) == 0.0
        });
    }
    // A long connection is a member while it lives.
    let _mirror = cluster
        .spawn("web-2", &testapp_path(), &["mirror"])
        .unwrap();
    cluster.wait_listening("web-2", 9003, READY).unwrap();
    let hold = cluster
        .command("client-1", &testapp_path())
        .unwrap()
        .args(["hold", &format!("{web}:9003"), "--connections", "10"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("ten connections' hops are members on each node", || {
        pinned(&cluster, "node1").accelerated == 20 && pinned(&cluster, "node2").accelerated == 20
    });
    drop(hold);
}

//! Graceful shutdown: on SIGTERM a daemon stops accepting, lets open
//! connections finish until its drain deadline (3 s in the local cluster),
//! then resets the rest and exits; its pods fail closed meanwhile. Tunnels
//! idle between connections are not open connections.

use std::time::Duration;

use ztunnel_cluster::netns;
use ztunnel_e2e::{
    READY, daemon_log, http_server, mesh, sigterm_daemon, testapp_path, wait_tunnel_idle, within,
};

#[test]
fn sigterm_drains_open_connections_then_closes_the_rest_at_the_deadline() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let _iperf = cluster.spawn("web-2", "iperf3", &["-s"]).unwrap();
    cluster.wait_listening("web-2", 5201, READY).unwrap();
    let web2 = cluster.pod("web-2").unwrap().ipv4.to_string();

    let mut stream = cluster
        .spawn("client-1", "iperf3", &["-c", &web2, "-t", "2", "-J"])
        .unwrap();
    // An idle connection: the server waits for the rest of a request head.
    let mut idle = cluster
        .spawn(
            "client-1",
            &testapp_path(),
            &["send", &format!("{web2}:8080")],
        )
        .unwrap();
    within(
        Duration::from_secs(3),
        "both connections are established",
        || {
            let established = |port: &str| {
                cluster
                    .run(
                        "web-2",
                        "ss",
                        &[
                            "-Htn",
                            "state",
                            "established",
                            &format!("( sport = :{port} )"),
                        ],
                    )
                    .unwrap_or_default()
                    .lines()
                    .count()
            };
            established("5201") >= 2 && established("8080") >= 1
        },
    );

    let daemon = sigterm_daemon(&cluster, "node1");
    within(Duration::from_secs(2), "the daemon starts draining", || {
        daemon_log(&cluster, "node1").contains("draining open connections")
    });

    // New connections are refused at once: the pod fails closed.
    let refused = cluster.run(
        "client-1",
        "curl",
        &["-sS", "--max-time", "2", &format!("http://{web2}:8080/")],
    );
    assert!(
        refused.is_err(),
        "a new connection got through a draining daemon"
    );

    // The iperf3 stream finishes inside the deadline, intact.
    let status = stream.wait(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{}", stream.log());
    let report: serde_json::Value = serde_json::from_str(&stream.log()).unwrap();
    assert!(report["end"]["sum_received"]["bytes"].as_u64().unwrap() > 1_000_000);

    // The idle connection is cut at the deadline (a reset: the client must
    // not take it for an answer), and the daemon exits.
    let status = idle.wait(Duration::from_secs(6)).unwrap();
    assert!(status.success(), "{}", idle.log());
    assert_eq!(idle.log().trim(), "reset");
    netns::wait_gone(&[daemon], Duration::from_secs(5))
        .expect("the daemon exits after the deadline");
    let log = daemon_log(&cluster, "node1");
    assert!(
        log.contains("drain deadline reached: closing the remaining connections"),
        "{log}"
    );
}

#[test]
fn a_tunnel_waiting_between_connections_does_not_hold_up_a_drain_nor_outlive_its_peer() {
    let mut cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let url = format!("http://{}:8080/", cluster.pod("web-2").unwrap().ipv4);
    for _ in 0..2 {
        let body = cluster
            .run("client-1", "curl", &["-sS", "--max-time", "3", &url])
            .unwrap();
        assert_eq!(body, "hello from web-2\n");
        wait_tunnel_idle(&cluster, "node1");
    }
    // The tunnel stays open between connections, on web-2's tunnel port.
    let tunnels = cluster
        .run(
            "web-2",
            "ss",
            &["-Htn", "state", "established", "( sport = :15008 )"],
        )
        .unwrap();
    assert_eq!(tunnels.lines().count(), 1, "{tunnels}");

    let daemon = sigterm_daemon(&cluster, "node2");
    // No connection is open, so nothing is drained: the daemon exits well
    // before its 3 s deadline.
    netns::wait_gone(&[daemon], Duration::from_secs(2))
        .expect("the daemon exits without waiting for the idle tunnel");
    let log = daemon_log(&cluster, "node2");
    assert!(!log.contains("draining open connections"), "{log}");
    assert!(log.contains("node daemon stopped"), "{log}");

    // node1 still holds its end of the closed tunnel: with node2's daemon back,
    // the next connection sees it closed and opens a new one.
    cluster.start_daemon("node2").unwrap();
    let body = cluster
        .run("client-1", "curl", &["-sS", "--max-time", "3", &url])
        .unwrap();
    assert_eq!(body, "hello from web-2\n");
}

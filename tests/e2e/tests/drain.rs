//! Graceful shutdown: on SIGTERM a daemon stops accepting, lets open
//! connections finish until its drain deadline (3 s in the local cluster),
//! then closes the rest and exits; its pods fail closed meanwhile.

use std::{process::Command, time::Duration};

use ztunnel_cluster::netns;
use ztunnel_e2e::{READY, daemon_log, http_server, mesh, testapp_path, within};

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

    let daemon = cluster
        .status()
        .node("node1")
        .unwrap()
        .daemon
        .clone()
        .unwrap()
        .pid;
    Command::new("kill")
        .args(["-TERM", &daemon.to_string()])
        .status()
        .unwrap();
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

    // The idle connection is closed at the deadline, and the daemon exits.
    let status = idle.wait(Duration::from_secs(6)).unwrap();
    assert!(status.success(), "{}", idle.log());
    assert!(
        ["closed", "reset"].contains(&idle.log().trim()),
        "{}",
        idle.log()
    );
    netns::wait_gone(&[daemon], Duration::from_secs(5))
        .expect("the daemon exits after the deadline");
    let log = daemon_log(&cluster, "node1");
    assert!(
        log.contains("drain deadline reached: closing the remaining connections"),
        "{log}"
    );
}

//! Real applications across nodes of the local cluster: the network the mesh
//! will run on delivers every byte, over IPv4 and IPv6.

use std::time::Duration;

use ztunnel_cluster::{Cluster, ClusterSpec, payload::Payload};
use ztunnel_e2e::bin;

const READY: Duration = Duration::from_secs(10);

#[test]
fn curl_across_nodes_over_ipv4_and_ipv6_gets_the_exact_bytes() {
    let cluster = Cluster::create(&ClusterSpec::ephemeral(2, 1)).unwrap();
    let server = cluster.pod("web-2").unwrap().clone();
    let client = cluster.pod("client-1").unwrap();
    assert_ne!(
        server.node, client.node,
        "the pods must be on different nodes"
    );

    let testapp = bin("ztunnel-testapp");
    let _http = cluster
        .spawn(
            &server.name,
            testapp.to_str().unwrap(),
            &["http", "--listen", "[::]:8080"],
        )
        .unwrap();
    cluster.wait_listening(&server.name, 8080, READY).unwrap();

    // An odd length, so a truncated or padded body cannot match by accident.
    let len: u64 = 8 * 1024 * 1024 + 123;
    let want = Payload::sha256_hex(len);
    for (ip, host) in [
        (server.ipv4.to_string(), server.ipv4.to_string()),
        (server.ipv6.to_string(), format!("[{}]", server.ipv6)),
    ] {
        let file = cluster.status().state_dir.join(format!("download-{ip}"));
        let out = cluster
            .run(
                &client.name,
                "curl",
                &[
                    "-sS",
                    "--fail",
                    "--max-time",
                    "30",
                    "-o",
                    file.to_str().unwrap(),
                    "-w",
                    "%{remote_ip} %{size_download}",
                    &format!("http://{host}:8080/bytes/{len}"),
                ],
            )
            .unwrap();
        assert_eq!(
            out,
            format!("{ip} {len}"),
            "curl reached the wrong peer or got a short body"
        );
        let body = std::fs::read(&file).unwrap();
        assert_eq!(
            ztunnel_cluster::payload::sha256_hex(&body),
            want,
            "body over {ip} differs from what was sent"
        );
    }
}

/// Bytes received so far by pod `pod`'s interface, as the kernel counts them.
fn rx_bytes(cluster: &Cluster, pod: &str) -> u64 {
    let text = cluster
        .run(pod, "cat", &["/sys/class/net/eth0/statistics/rx_bytes"])
        .unwrap();
    text.trim().parse().unwrap()
}

#[test]
fn iperf3_across_nodes_over_ipv4_and_ipv6_delivers_what_it_reports() {
    let cluster = Cluster::create(&ClusterSpec::ephemeral(2, 1)).unwrap();
    let server = cluster.pod("web-2").unwrap().clone();
    for (port, ip) in [
        (5201u16, server.ipv4.to_string()),
        (5202, server.ipv6.to_string()),
    ] {
        let mut iperf = cluster
            .spawn(
                &server.name,
                "iperf3",
                &["-s", "-1", "-p", &port.to_string()],
            )
            .unwrap();
        cluster.wait_listening(&server.name, port, READY).unwrap();
        let rx_before = rx_bytes(&cluster, &server.name);
        let report = cluster
            .run(
                "client-1",
                "iperf3",
                &["-J", "-c", &ip, "-p", &port.to_string(), "-t", "1"],
            )
            .unwrap();
        iperf
            .wait(READY)
            .expect("the one-off iperf3 server exits after its test");
        let rx = rx_bytes(&cluster, &server.name) - rx_before;

        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        let peer = &report["start"]["connected"][0]["remote_host"];
        assert_eq!(
            peer.as_str(),
            Some(ip.as_str()),
            "iperf3 connected to {peer}"
        );
        let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
        let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
        // What the server counts must have crossed its interface (the kernel's
        // counter includes headers and the control channel, so it is larger),
        // and only what was in flight when the test stopped may be missing.
        assert!(
            rx >= received,
            "iperf3 server counted {received} bytes but only {rx} reached its interface ({ip})"
        );
        assert!(
            received >= sent / 10 * 9,
            "only {received} of {sent} bytes arrived over {ip}"
        );
        assert!(
            received > 10 << 20,
            "{received} bytes in a second is implausibly slow for veths ({ip})"
        );
    }
}

#[test]
fn pods_reach_pods_on_every_node_and_in_every_namespace() {
    let cluster = Cluster::create(&ClusterSpec::ephemeral(3, 1)).unwrap();
    let client = "legacy-1";
    for pod in &cluster.status().pods {
        for ip in [pod.ipv4.to_string(), pod.ipv6.to_string()] {
            cluster
                .run(client, "ping", &["-c1", "-W2", &ip])
                .unwrap_or_else(|err| panic!("{client} cannot reach {} at {ip}: {err}", pod.name));
        }
    }
}

//! HBONE, Istio's tunnel, into a node daemon: a client playing Istio's
//! ztunnel (mutual TLS with ALPN `h2`, `CONNECT` streams; written against
//! `h2` in the test app, sharing nothing with the daemon's HBONE code) is
//! served on the pod's tunnel port beside the native protocol, with the
//! status codes Istio's ztunnel answers and the same policy, metrics and
//! access log as any tunnelled connection. And two daemons with the native
//! protocol off speak HBONE to each other, streams sharing connections.

use ztunnel_cluster::{Cluster, payload::Payload};
use ztunnel_e2e::{
    READY, access_log, apply_policy, assert_downloads,
    certificates::{cluster_root, valid_now, write_leaf},
    eventually, http_server, mesh, metric_sum, scrape, testapp, testapp_path,
};

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

/// Runs the test app's HBONE client in `legacy-1` (outside the mesh, so
/// nothing captures it) against web-2's tunnel port, as `client` with a
/// certificate from the cluster's CA; returns its lines.
fn hbone(cluster: &Cluster, dir: &std::path::Path, args: &[&str]) -> Vec<String> {
    let (cert, key) = write_leaf(dir, "client", &cluster_root(cluster), CLIENT, valid_now());
    let roots = cluster.status().ca.as_ref().unwrap().root_cert.clone();
    let daemon = format!("{}:15008", cluster.pod("web-2").unwrap().ipv4);
    let mut all = vec![
        "hbone",
        &daemon,
        "--server",
        WEB,
        "--cert",
        &cert,
        "--key",
        &key,
        "--roots",
        roots.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = cluster
        .run("legacy-1", &testapp_path(), &all)
        .unwrap_or_else(|err| panic!("the HBONE client: {err}"));
    out.lines().map(str::to_owned).collect()
}

#[test]
fn an_hbone_client_is_served_as_istios_ztunnel_would_be() {
    let cluster = mesh(2);
    let web2 = cluster.pod("web-2").unwrap().clone();
    let web1 = cluster.pod("web-1").unwrap().clone();
    let apps = [
        ("echo", 9000, vec!["echo"]),
        ("reset", 9001, vec!["reset"]),
        ("deaf", 9002, vec!["deaf", "--listen", "[::]:9002"]),
    ];
    let _apps: Vec<_> = apps
        .iter()
        .map(|(_, port, args)| {
            let app = cluster.spawn("web-2", &testapp_path(), args).unwrap();
            cluster.wait_listening("web-2", *port, READY).unwrap();
            app
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let echo4 = format!("{}:9000", web2.ipv4);
    let echo6 = format!("[{}]:9000", web2.ipv6);
    let bytes = 300_000;

    // Twenty streams on one connection at once, IPv4 and IPv6, each with its
    // payload echoed intact (the payload, then half-close, then the whole
    // reply), beside a stream that floods an application that never reads:
    // flow control holds that one, and only that one.
    let mut args: Vec<String> = vec!["--bytes".into(), bytes.to_string()];
    for n in 0..20 {
        args.push("--echo".into());
        args.push(if n % 2 == 0 { &echo4 } else { &echo6 }.clone());
    }
    // Refused: another pod's address (400), the daemon's own port (400),
    // nothing listening (503); reset by the application.
    let not_this_pod = format!("{}:9000", web1.ipv4);
    let own_port = format!("{}:15008", web2.ipv4);
    let closed = format!("{}:9009", web2.ipv4);
    let reset = format!("{}:9001", web2.ipv4);
    for authority in [&not_this_pod, &own_port, &closed, &reset] {
        args.push("--echo".into());
        args.push(authority.clone());
    }
    args.push("--flood".into());
    args.push(format!("{}:9002", web2.ipv4));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = hbone(&cluster, dir.path(), &args);

    // The 200 names the destination workload as Istio's ztunnel does.
    let baggage = "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.pod.name=web,\
                   service.name=web,service.version=latest";
    let expected_echo = format!("200 {bytes} {} {baggage}", Payload::sha256_hex(bytes));
    let line = |authority: &str| -> Vec<&String> {
        lines
            .iter()
            .filter(|line| line.starts_with(&format!("echo {authority} ")))
            .collect()
    };
    for authority in [&echo4, &echo6] {
        let echoed = line(authority);
        assert_eq!(echoed.len(), 10, "{lines:#?}");
        for got in echoed {
            assert_eq!(got, &format!("echo {authority} {expected_echo}"));
        }
    }
    assert_eq!(
        line(&not_this_pod),
        [&format!("echo {not_this_pod} refused 400")]
    );
    assert_eq!(line(&own_port), [&format!("echo {own_port} refused 400")]);
    assert_eq!(line(&closed), [&format!("echo {closed} refused 503")]);
    assert_eq!(line(&reset), [&format!("echo {reset} reset")]);
    let flood = lines.last().unwrap();
    let held: u64 = flood
        .strip_prefix(&format!("flood {}:9002 stalled ", web2.ipv4))
        .unwrap_or_else(|| panic!("{flood}"))
        .parse()
        .unwrap();
    // At most a stream window (4 MiB) and the sockets' buffers.
    assert!(
        held < 64 * 1024 * 1024,
        "{held} bytes before the sender was held"
    );

    // Recorded like any tunnelled connection, with the protocol.
    eventually("the echoed streams in node2's access log", || {
        access_log(&cluster, "node2")
            .iter()
            .filter(|entry| {
                entry["reporter"] == "destination"
                    && entry["tunnel_protocol"] == "hbone"
                    && entry["src_identity"] == CLIENT
                    && entry["tls_version"] == "TLSv1.3"
                    && entry["response_flags"] == "-"
                    && entry["bytes_received"] == bytes
                    && entry["bytes_sent"] == bytes
            })
            .count()
            == 20
    });
    let mtls = [
        ("reporter", "destination"),
        ("source_principal", CLIENT),
        ("destination_principal", WEB),
        ("connection_security_policy", "mutual_tls"),
    ];
    let node2 = scrape(&cluster, "node2");
    assert!(metric_sum(&node2, "istio_tcp_received_bytes_total", &mtls) >= 20.0 * bytes as f64);

    // A denial is answered 401, and recorded on the side that decided.
    apply_policy(
        &cluster,
        "deny-client",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-client\n  namespace: demo\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/demo/sa/client\"]\n",
    );
    eventually("the denial answered 401", || {
        hbone(&cluster, dir.path(), &["--echo", &echo4]) == [format!("echo {echo4} refused 401")]
    });
    assert!(access_log(&cluster, "node2").iter().any(|entry| {
        entry["tunnel_protocol"] == "hbone"
            && entry["response_flags"] == "DENY"
            && entry["end"]
                .as_str()
                .is_some_and(|end| end.contains("denied by DENY policy demo/deny-client rule 0"))
    }));
}

#[test]
fn daemons_speak_hbone_to_each_other_with_the_native_protocol_off() {
    let spec = ztunnel_cluster::ClusterSpec::ephemeral(2, 1)
        .with_mesh(ztunnel_e2e::bin_dir())
        .with_daemon_args(["--no-native-tunnel"]);
    let cluster = Cluster::create(&spec).expect("the cluster comes up");
    let _web = http_server(&cluster, "web-2");
    let _echo = cluster.spawn("web-2", &testapp_path(), &["echo"]).unwrap();
    cluster.wait_listening("web-2", 9000, READY).unwrap();
    let web2 = cluster.pod("web-2").unwrap().clone();

    // Intact both ways, IPv4 and IPv6; half-close crosses; many at once
    // share connections (streams), each answered on its own.
    assert_downloads(
        &cluster,
        "client-1",
        &format!("{}:8080", web2.ipv4),
        5 << 20,
    );
    assert_downloads(
        &cluster,
        "client-1",
        &format!("[{}]:8080", web2.ipv6),
        1 << 20,
    );
    let echo = format!("{}:9000", web2.ipv4);
    let out = testapp(
        &cluster,
        "client-1",
        &["half-close", &echo, "--bytes", "3000000"],
    );
    assert_eq!(out.trim(), "ok 3000000");
    let web = format!("{}:8080", web2.ipv4);
    let out = testapp(
        &cluster,
        "client-1",
        &["fetch", &web, "--bytes", "100000", "--connections", "200"],
    );
    assert_eq!(out.trim(), "ok 200");

    // Both sides say HBONE, and most streams rode an open connection.
    let hbone_entries = |node: &str, reporter: &str| -> Vec<serde_json::Value> {
        access_log(&cluster, node)
            .into_iter()
            .filter(|entry| entry["reporter"] == reporter && entry["tunnel_protocol"] == "hbone")
            .collect()
    };
    eventually("every connection recorded on both sides", || {
        hbone_entries("node1", "source").len() == 203
            && hbone_entries("node2", "destination").len() == 203
    });
    let source = hbone_entries("node1", "source");
    assert!(
        source
            .iter()
            .all(|entry| entry["response_flags"] == "-" && entry["dst_identity"] == WEB)
    );
    let reused = source
        .iter()
        .filter(|entry| entry["tunnel_reused"] == true)
        .count();
    assert!(
        reused >= 150,
        "{reused} of 203 streams rode an open connection"
    );
    assert!(
        hbone_entries("node2", "destination")
            .iter()
            .all(|entry| entry["src_identity"] == CLIENT)
    );

    // A denial at the destination (401) is a DENY at the source too.
    apply_policy(
        &cluster,
        "deny-client",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-client\n  namespace: demo\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/demo/sa/client\"]\n",
    );
    eventually("the source records the denial", || {
        let _ = cluster.run(
            "client-1",
            "curl",
            &["-sS", "--max-time", "3", &format!("http://{web}/")],
        );
        access_log(&cluster, "node1").iter().any(|entry| {
            entry["reporter"] == "source"
                && entry["response_flags"] == "DENY"
                && entry["end"]
                    .as_str()
                    .is_some_and(|end| end.contains("answered 401"))
        })
    });
}

#[test]
fn a_daemon_negotiates_hbone_with_a_node_that_speaks_only_hbone() {
    // node2 plays a node of Istio's ztunnel (offers and accepts only `h2`);
    // node1 and node3 are default daemons: HBONE is negotiated with node2
    // in both directions, from ALPN alone, while node1 and node3 keep the
    // native protocol between them.
    let spec = ztunnel_cluster::ClusterSpec::ephemeral(3, 1)
        .with_mesh(ztunnel_e2e::bin_dir())
        .with_node_daemon_args("node2", ["--no-native-tunnel"]);
    let cluster = Cluster::create(&spec).expect("the cluster comes up");
    let _web1 = http_server(&cluster, "web-1");
    let _web2 = http_server(&cluster, "web-2");
    let web1 = cluster.pod("web-1").unwrap().clone();
    let _web3 = http_server(&cluster, "web-3");
    let web2 = cluster.pod("web-2").unwrap().clone();
    let web3 = cluster.pod("web-3").unwrap().clone();

    assert_downloads(
        &cluster,
        "client-1",
        &format!("{}:8080", web2.ipv4),
        2 << 20,
    );
    assert_downloads(
        &cluster,
        "client-1",
        &format!("{}:8080", web3.ipv4),
        1 << 20,
    );
    assert_downloads(
        &cluster,
        "client-2",
        &format!("[{}]:8080", web1.ipv6),
        2 << 20,
    );
    // The protocol `node` recorded as `reporter` for the connection to `dst`
    // (each node has one client pod, so the destination names it).
    let protocol_of = |node: &str, reporter: &str, dst: &ztunnel_cluster::status::PodStatus| {
        let addresses = [format!("{}:8080", dst.ipv4), format!("[{}]:8080", dst.ipv6)];
        access_log(&cluster, node)
            .iter()
            .find(|entry| {
                entry["reporter"] == reporter
                    && addresses
                        .iter()
                        .any(|address| entry["dst_addr"] == address.as_str())
            })
            .map(|entry| entry["tunnel_protocol"].as_str().unwrap_or("").to_owned())
    };
    eventually("both directions recorded on both sides", || {
        [
            ("node1", "source", &web2),
            ("node2", "destination", &web2),
            ("node2", "source", &web1),
            ("node1", "destination", &web1),
        ]
        .into_iter()
        .all(|(node, reporter, dst)| protocol_of(node, reporter, dst).as_deref() == Some("hbone"))
    });
    eventually("node1 to node3 recorded", || {
        protocol_of("node3", "destination", &web3).is_some()
    });
    assert_eq!(
        protocol_of("node1", "source", &web3).as_deref(),
        Some("native")
    );
    assert_eq!(
        protocol_of("node3", "destination", &web3).as_deref(),
        Some("native")
    );
}

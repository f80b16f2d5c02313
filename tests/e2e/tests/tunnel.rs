//! The mutual TLS tunnel between node daemons, end to end: real apps across
//! nodes, the wire between the nodes, refusals of bad peers, tunnel reuse and
//! resumption,
//! half-close and resets, and service VIPs.

use std::{process::Command, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use ztunnel_cluster::{Cluster, netns, payload::Payload};
use ztunnel_e2e::{
    READY, access_log_since, assert_downloads,
    certificates::{cluster_root, valid_now, write_leaf},
    daemon_log, eventually, http_server, log_len, mesh, metric_sum, scrape, testapp, testapp_path,
    wait_tunnel_idle, within,
};

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const ALPN: &str = "ztunnel-native/2";

/// Lines node `node`'s daemon logged after its first `skip` lines that
/// contain every one of `parts`.
fn log_lines(cluster: &Cluster, node: &str, skip: usize, parts: &[&str]) -> Vec<String> {
    daemon_log(cluster, node)
        .lines()
        .skip(skip)
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .map(str::to_owned)
        .collect()
}

/// Node `node`'s access-log entries after its first `skip` log lines that
/// `reporter` wrote and whose `field`s have the given values.
fn entries(
    cluster: &Cluster,
    node: &str,
    skip: usize,
    reporter: &str,
    fields: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    access_log_since(cluster, node, skip)
        .into_iter()
        .filter(|entry| {
            entry["reporter"] == reporter
                && fields.iter().all(|(field, value)| entry[*field] == *value)
        })
        .collect()
}

/// Whether access-log `entry` is of a connection that carried TLS (to this
/// node's pod, through a tunnel).
fn tunnelled(entry: &serde_json::Value) -> bool {
    entry["tls_version"] == "TLSv1.3"
}

/// `GET /` from `pod` to `addr`.
fn get(cluster: &Cluster, pod: &str, addr: &str) -> Result<String, ztunnel_cluster::ClusterError> {
    let url = format!("http://{addr}/");
    cluster.run(pod, "curl", &["-sS", "--max-time", "5", &url])
}

/// A packet capture on the bridge between the nodes.
struct WireCapture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl WireCapture {
    fn start(cluster: &Cluster, name: &str) -> Self {
        let status = cluster.status();
        let file = status.state_dir.join(format!("{name}.pcap"));
        let log = status.state_dir.join(format!("logs/{name}-tcpdump.log"));
        let mut cmd = netns::exec(&status.fabric.netns, "tcpdump");
        cmd.args(["-i", &status.fabric.bridge, "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg("tcp");
        let child = netns::spawn_logged(&mut cmd, &log).unwrap();
        within(READY, "tcpdump listens", || {
            std::fs::read_to_string(&log).is_ok_and(|text| text.contains("listening on"))
        });
        Self { child, file }
    }

    /// Stops the capture; returns the captured bytes.
    fn stop(mut self) -> Vec<u8> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn cross_node_traffic_travels_in_tls13_with_no_plaintext_on_the_wire() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let _legacy = http_server(&cluster, "legacy-2");
    let marker = "x-marker: ZTUNNEL-PLAINTEXT-MARKER-6a41c2";
    let len = 2 * 1024 * 1024;
    let mut window = vec![0u8; 200_000];
    Payload::new(len).fill(&mut window);
    let window = &window[100_000..100_064];

    let fetch = |pod: &str, addr: &str| {
        let url = format!("http://{addr}/bytes/{len}");
        let script = format!("curl -sS --fail --max-time 10 -H '{marker}' {url} | sha256sum");
        let out = cluster.run(pod, "sh", &["-c", &script]).unwrap();
        assert!(out.starts_with(&Payload::sha256_hex(len)), "{pod}: {out}");
    };

    // Control: between pods outside the mesh, the capture sees the plaintext.
    let wire = WireCapture::start(&cluster, "plain");
    let legacy = cluster.pod("legacy-2").unwrap().ipv4;
    fetch("legacy-1", &format!("{legacy}:8080"));
    let plain = wire.stop();
    assert!(
        contains(&plain, marker.as_bytes()),
        "the control capture missed the marker"
    );
    assert!(
        contains(&plain, window),
        "the control capture missed the body"
    );

    // Enrolled pods on two nodes: only TLS 1.3 on the wire.
    let wire = WireCapture::start(&cluster, "tunnel");
    let web = cluster.pod("web-2").unwrap().clone();
    fetch("client-1", &format!("{}:8080", web.ipv4));
    fetch("client-1", &format!("[{}]:8080", web.ipv6));
    let tunnel = wire.stop();
    assert!(
        !contains(&tunnel, marker.as_bytes()),
        "the request header crossed in plaintext"
    );
    assert!(
        !contains(&tunnel, window),
        "the response body crossed in plaintext"
    );
    assert!(
        contains(&tunnel, ALPN.as_bytes()),
        "no tunnel ClientHello on the wire"
    );
    // ServerHello's supported_versions extension selecting TLS 1.3 (0x0304).
    assert!(
        contains(&tunnel, &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]),
        "no TLS 1.3 ServerHello on the wire"
    );
}

#[test]
fn curl_and_iperf3_cross_nodes_through_the_tunnel() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let web = cluster.pod("web-2").unwrap().clone();
    let hundred_mib = 100 * 1024 * 1024;
    assert_downloads(
        &cluster,
        "client-1",
        &format!("{}:8080", web.ipv4),
        hundred_mib,
    );
    assert_downloads(
        &cluster,
        "client-1",
        &format!("[{}]:8080", web.ipv6),
        1024 * 1024 + 3,
    );

    // Both daemons saw it: the source side by route, the destination side with
    // the client's proven identity.
    let out = entries(&cluster, "node1", 0, "source", &[("route", "tunnel")]);
    assert!(
        out.iter().any(|entry| entry["dst_identity"] == WEB
            && entry["tls_cipher"]
                .as_str()
                .is_some_and(|cipher| cipher.starts_with("TLS13_AES"))),
        "{out:?}"
    );
    let inbound = entries(&cluster, "node2", 0, "destination", &[]);
    assert!(
        inbound
            .iter()
            .any(|entry| tunnelled(entry) && entry["src_identity"] == CLIENT),
        "{inbound:?}"
    );

    let _iperf = cluster.spawn("web-2", "iperf3", &["-s"]).unwrap();
    cluster.wait_listening("web-2", 5201, READY).unwrap();
    let report = cluster
        .run(
            "client-1",
            "iperf3",
            &["-c", &web.ipv4.to_string(), "-t", "2", "-J"],
        )
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    assert!(
        received > 10 * 1024 * 1024,
        "iperf3 moved only {received} bytes"
    );
    // Each connection is logged once both of its sides are done.
    within(
        Duration::from_secs(5),
        "iperf3's control and data connections logged",
        || {
            entries(&cluster, "node2", 0, "destination", &[])
                .iter()
                .filter(|entry| {
                    tunnelled(entry)
                        && entry["dst_addr"]
                            .as_str()
                            .is_some_and(|addr| addr.ends_with(":5201"))
                })
                .count()
                >= 2
        },
    );
}

/// Of a tunnelled connection: (its TLS session was resumed, it rode an
/// earlier connection's tunnel).
type Tunnelled = (bool, bool);

/// Per tunnelled connection logged since `skip` lines (on node1, node2):
/// whether its TLS session was resumed, and whether it rode the tunnel of an
/// earlier connection.
fn tunnels(cluster: &Cluster, skip: (usize, usize)) -> (Vec<Tunnelled>, Vec<Tunnelled>) {
    let out = entries(cluster, "node1", skip.0, "source", &[("route", "tunnel")]);
    let mut inb = entries(cluster, "node2", skip.1, "destination", &[]);
    inb.retain(tunnelled);
    let facts = |entries: &[serde_json::Value]| -> Vec<Tunnelled> {
        entries
            .iter()
            .map(|entry| (entry["tls_resumed"] == true, entry["tunnel_reused"] == true))
            .collect()
    };
    (facts(&out), facts(&inb))
}

#[test]
fn repeat_connections_reuse_the_tunnel_a_new_trust_bundle_retires_it_and_new_tunnels_resume() {
    let mut cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let web = format!("{}:8080", cluster.pod("web-2").unwrap().ipv4);
    let marks = |cluster: &Cluster| (log_len(cluster, "node1"), log_len(cluster, "node2"));

    // The second connection rides the first one's tunnel: no handshake.
    get(&cluster, "client-1", &web).unwrap();
    wait_tunnel_idle(&cluster, "node1");
    get(&cluster, "client-1", &web).unwrap();
    // On both sides: each daemon writes its own lines.
    eventually("both connections logged", || {
        let (source, destination) = tunnels(&cluster, (0, 0));
        source.len() == 2 && destination.len() == 2
    });
    let (new, reused) = ((false, false), (false, true));
    assert_eq!(
        tunnels(&cluster, (0, 0)),
        (vec![new, reused], vec![new, reused])
    );
    assert_eq!(
        metric_sum(
            &scrape(&cluster, "node1"),
            "ztunnel_tunnel_reuses_total",
            &[]
        ),
        1.0
    );

    // Add a root to the trust bundle: both daemons reload it, the idle tunnel
    // is retired, and the next connection verifies certificates in full again.
    let mark = marks(&cluster);
    let bundle = cluster.status().ca.as_ref().unwrap().root_cert.clone();
    let extra = self_signed_root().0;
    let mut pem = std::fs::read_to_string(&bundle).unwrap();
    pem.push_str(&extra.pem());
    std::fs::write(&bundle, pem).unwrap();
    within(
        Duration::from_secs(5),
        "both daemons reload the bundle",
        || {
            !log_lines(&cluster, "node1", mark.0, &["reloaded trust bundle"]).is_empty()
                && !log_lines(&cluster, "node2", mark.1, &["reloaded trust bundle"]).is_empty()
        },
    );
    get(&cluster, "client-1", &web).unwrap();
    wait_tunnel_idle(&cluster, "node1");
    get(&cluster, "client-1", &web).unwrap();
    eventually("both connections logged", || {
        let (source, destination) = tunnels(&cluster, mark);
        source.len() == 2 && destination.len() == 2
    });
    assert_eq!(
        tunnels(&cluster, mark),
        (vec![new, reused], vec![new, reused])
    );

    // One tunnel per connection: the second resumes the first's session.
    cluster
        .restart_daemons(&["--no-tunnel-reuse".to_owned()])
        .unwrap();
    let mark = marks(&cluster);
    get(&cluster, "client-1", &web).unwrap();
    get(&cluster, "client-1", &web).unwrap();
    eventually("both connections logged", || {
        let (source, destination) = tunnels(&cluster, mark);
        source.len() == 2 && destination.len() == 2
    });
    let resumed = (true, false);
    assert_eq!(
        tunnels(&cluster, mark),
        (vec![new, resumed], vec![new, resumed])
    );
}

/// A self-signed CA certificate with a fresh key.
fn self_signed_root() -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "an unrelated root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

#[test]
fn bad_peers_are_refused_with_the_reason_and_the_daemons_keep_serving() {
    let mut cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let web = cluster.pod("web-2").unwrap().ipv4;
    let dir = tempfile::tempdir().unwrap();
    let root = cluster_root(&cluster);
    let other_root = self_signed_root().1;
    let (good_cert, good_key) = write_leaf(dir.path(), "good", &root, CLIENT, valid_now());
    let (foreign_cert, foreign_key) =
        write_leaf(dir.path(), "foreign", &other_root, CLIENT, valid_now());
    let expired = (
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2020, 1, 2),
    );
    let (expired_cert, expired_key) = write_leaf(dir.path(), "expired", &root, CLIENT, expired);

    // Clients outside the mesh (legacy-1) dialling web-2's tunnel port.
    let target = format!("{web}:15008");
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "no certificate",
            vec![],
            "the peer presented no certificate",
        ),
        (
            "another root",
            vec!["-cert", &foreign_cert, "-key", &foreign_key],
            "the peer's certificate does not chain to a root of the trust bundle",
        ),
        (
            "expired",
            vec!["-cert", &expired_cert, "-key", &expired_key],
            "the peer's certificate has expired",
        ),
    ];
    for (what, credentials, reason) in cases {
        let mark = log_len(&cluster, "node2");
        let mut args = vec!["s_client", "-connect", &target, "-alpn", ALPN, "-tls1_3"];
        args.extend(credentials);
        let script = format!("openssl {} </dev/null", args.join(" "));
        // openssl's own exit status varies with timing; the daemon's log decides.
        let _ = cluster
            .command("legacy-1", "timeout")
            .unwrap()
            .args(["5", "sh", "-c", &script])
            .output();
        within(Duration::from_secs(5), what, || {
            !log_lines(&cluster, "node2", mark, &["inbound tunnel refused", reason]).is_empty()
        });
        assert_eq!(
            get(&cluster, "client-1", &format!("{web}:8080")).unwrap(),
            "hello from web-2\n"
        );
    }
    // The control: a client with a certificate of the cluster's root gets
    // through the handshake and the preamble decides. Preamble bytes: "ZTN",
    // version 1, family 4, port 8080, then the address; then the request as
    // one chunk (its 4-byte length, 18).
    let tunnel_client = |preamble_address: &str| {
        let script = format!(
            "printf 'ZTN\\001\\004\\037\\220{preamble_address}\\000\\000\\000\\022GET / HTTP/1.0\\r\\n\\r\\n' | \
             openssl s_client -quiet -connect {target} -alpn {ALPN} -tls1_3 -cert {good_cert} -key {good_key}"
        );
        let out = cluster
            .command("legacy-1", "timeout")
            .unwrap()
            .args(["5", "sh", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // To web-2 itself (10.244.2.2): delivered.
    let answer = tunnel_client("\\012\\364\\002\\002");
    assert!(answer.contains("hello from web-2"), "{answer}");
    // Naming web-1 (10.244.1.2) on web-2's tunnel: refused.
    let mark = log_len(&cluster, "node2");
    let answer = tunnel_client("\\012\\364\\001\\002");
    assert!(!answer.contains("hello"), "{answer}");
    let reason = "10.244.1.2:8080 is not an address of pod demo/web-2";
    // Recorded as the connection's failure (its record is open by then).
    eventually("the refusal of a preamble naming another pod", || {
        !log_lines(
            &cluster,
            "node2",
            mark,
            &["inbound connection failed", reason],
        )
        .is_empty()
    });

    // Each refusal is counted by reason and recorded as an audit event.
    let node2 = scrape(&cluster, "node2");
    for reason in ["no_certificate", "untrusted", "expired"] {
        let labels = [("side", "server"), ("reason", reason)];
        assert!(
            metric_sum(&node2, "ztunnel_tunnel_failures_total", &labels) >= 1.0,
            "{reason}"
        );
    }
    let audits = log_lines(&cluster, "node2", 0, &["audit", "event=\"tunnel_failure\""]);
    assert!(audits.len() >= 3, "{audits:?}");

    // A server that is not the destination workload: web-2's daemon is down
    // and an impostor holding a genuine certificate of another identity
    // answers on web-2's tunnel port.
    cluster.kill_daemon("node2").unwrap();
    let (impostor_cert, impostor_key) =
        write_leaf(dir.path(), "impostor", &root, CLIENT, valid_now());
    let _impostor = cluster
        .spawn(
            "web-2",
            "openssl",
            &[
                "s_server",
                "-www",
                "-accept",
                "15008",
                "-tls1_3",
                "-alpn",
                ALPN,
                "-cert",
                &impostor_cert,
                "-key",
                &impostor_key,
            ],
        )
        .unwrap();
    cluster.wait_listening("web-2", 15008, READY).unwrap();
    let mark = log_len(&cluster, "node1");
    assert!(get(&cluster, "client-1", &format!("{web}:8080")).is_err());
    let reason = format!("the server is {CLIENT}, not the expected {WEB}");
    eventually("the impostor's refusal", || {
        entries(&cluster, "node1", mark, "source", &[])
            .iter()
            .any(|entry| {
                // As Istio's ztunnel: the peer's certificate is refused
                // inside the TLS handshake.
                entry["response_flags"] == "TLS_FAILURE"
                    && entry["end"]
                        .as_str()
                        .is_some_and(|end| end.contains(&reason))
            })
    });
    let labels = [("side", "client"), ("reason", "identity")];
    assert!(
        metric_sum(
            &scrape(&cluster, "node1"),
            "ztunnel_tunnel_failures_total",
            &labels
        ) >= 1.0
    );
    drop(_impostor);
    cluster.start_daemon("node2").unwrap();
    eventually("web-2 answers again", || {
        get(&cluster, "client-1", &format!("{web}:8080")).is_ok()
    });
}

#[test]
fn half_close_and_resets_cross_the_tunnel() {
    let cluster = mesh(2);
    let _echo = cluster.spawn("web-2", &testapp_path(), &["echo"]).unwrap();
    let _reset = cluster.spawn("web-2", &testapp_path(), &["reset"]).unwrap();
    cluster.wait_listening("web-2", 9000, READY).unwrap();
    cluster.wait_listening("web-2", 9001, READY).unwrap();
    let web = cluster.pod("web-2").unwrap().clone();

    // The client shuts down writing and still reads the whole reply.
    for addr in [format!("{}:9000", web.ipv4), format!("[{}]:9000", web.ipv6)] {
        let out = testapp(
            &cluster,
            "client-1",
            &["half-close", &addr, "--bytes", "3000000"],
        );
        assert_eq!(out.trim(), "ok 3000000", "{addr}");
    }
    // The application's reset reaches the client as a reset, not a clean end.
    let out = testapp(
        &cluster,
        "client-1",
        &["send", &format!("{}:9001", web.ipv4)],
    );
    assert_eq!(out.trim(), "reset");
    // The daemon records each connection once it has closed both sides.
    eventually("three tunnelled connections logged", || {
        entries(&cluster, "node1", 0, "source", &[("route", "tunnel")])
            .iter()
            .filter(|entry| {
                entry["response_flags"] == "-"
                    && entry["dst_addr"]
                        .as_str()
                        .is_some_and(|addr| addr.ends_with(":9000") || addr.ends_with(":9001"))
            })
            .count()
            == 3
    });
}

#[test]
fn a_service_vip_spreads_connections_over_endpoints_on_both_nodes() {
    let cluster = mesh(2);
    let _web1 = http_server(&cluster, "web-1");
    let _web2 = http_server(&cluster, "web-2");
    let service = cluster
        .status()
        .service("demo", "web")
        .cloned()
        .expect("the cluster has a service for web");
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for vip in [service.ipv4.to_string(), format!("[{}]", service.ipv6)] {
        for _ in 0..6 {
            let answer = get(&cluster, "client-1", &format!("{vip}:{}", service.port)).unwrap();
            *answers.entry(answer.trim().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        ["hello from web-1", "hello from web-2"],
        "{answers:?}"
    );
    // Same node: straight into web-1; other node: through the tunnel.
    let vip = format!("{}:{}", service.ipv4, service.port);
    for route in ["local", "tunnel"] {
        let fields = [("route", route), ("dst_addr", vip.as_str())];
        assert!(
            !entries(&cluster, "node1", 0, "source", &fields).is_empty(),
            "no {route} connection to the VIP"
        );
    }
}

#[test]
fn applications_see_the_original_client_address() {
    let cluster = mesh(2);
    let _web1 = http_server(&cluster, "web-1");
    let _web2 = http_server(&cluster, "web-2");
    let peer_seen = |from: &str, to: &str, v6: bool| {
        let pod = cluster.pod(to).unwrap();
        let addr = if v6 {
            format!("[{}]:8080", pod.ipv6)
        } else {
            format!("{}:8080", pod.ipv4)
        };
        let url = format!("http://{addr}/peer");
        let seen = cluster
            .run(from, "curl", &["-sS", "--max-time", "5", &url])
            .unwrap();
        // The test app listens on [::]: IPv4 peers appear IPv4-mapped.
        seen.trim().trim_start_matches("::ffff:").to_owned()
    };
    // Through the tunnel, on the same node, and plaintext from outside the mesh.
    for (from, to) in [
        ("client-1", "web-2"),
        ("client-1", "web-1"),
        ("legacy-1", "web-2"),
    ] {
        let source = cluster.pod(from).unwrap();
        assert_eq!(
            peer_seen(from, to, false),
            source.ipv4.to_string(),
            "{from} -> {to}"
        );
        assert_eq!(
            peer_seen(from, to, true),
            source.ipv6.to_string(),
            "{from} -> {to} (IPv6)"
        );
    }
}

#[test]
fn the_benchmark_relay_carries_tunnels_as_plain_tcp_and_says_so() {
    let spec = ztunnel_cluster::ClusterSpec::ephemeral(2, 1)
        .with_mesh(ztunnel_e2e::bin_dir())
        .with_daemon_args(["--benchmark-plaintext-tunnel"]);
    let cluster = Cluster::create(&spec).expect("the cluster comes up");
    let _server = http_server(&cluster, "web-2");
    let body = get(&cluster, "client-1", "10.244.2.2:8080").unwrap();
    assert!(body.starts_with("hello from web-2"), "{body}");
    for node in ["node1", "node2"] {
        assert_eq!(
            log_lines(
                &cluster,
                node,
                0,
                &["WARN", "INSECURE", "--benchmark-plaintext-tunnel"]
            )
            .len(),
            1,
            "{node} warns that it runs insecurely"
        );
    }
    // The destination took the source's identity from its address, and no
    // TLS was involved. (It logs the connection once its side is over, which
    // may be just after the client has its answer.)
    eventually("node2 logs the connection", || {
        !entries(&cluster, "node2", 0, "destination", &[]).is_empty()
    });
    let inbound = entries(&cluster, "node2", 0, "destination", &[]);
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    assert_eq!(inbound[0]["src_identity"], CLIENT, "{inbound:?}");
    assert!(inbound[0]["tls_version"].is_null(), "{inbound:?}");
}

#[test]
fn a_destination_that_never_reads_the_end_of_a_connection_does_not_hold_up_the_next() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let _deaf = cluster
        .spawn("web-2", &testapp_path(), &["deaf", "--listen", "[::]:9002"])
        .unwrap();
    cluster.wait_listening("web-2", 9002, READY).unwrap();
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    // The connection is over on the source's side (every byte sent, the
    // server's end read) while bytes still wait at the destination, behind an
    // application that never reads them.
    let flood = ["flood", &format!("{web2}:9002"), "--bytes", "6000000"];
    let out = cluster.run("client-1", &testapp_path(), &flood).unwrap();
    assert_eq!(out.trim(), "sent 6000000");
    let deaf = format!("{web2}:9002");
    eventually("the source's side of the connection ends", || {
        entries(&cluster, "node1", 0, "source", &[("dst_addr", &deaf)]).len() == 1
    });
    // The next connection between the same two pods must not queue behind
    // them in the same tunnel.
    assert_eq!(
        get(&cluster, "client-1", &format!("{web2}:8080")).unwrap(),
        "hello from web-2\n"
    );
}

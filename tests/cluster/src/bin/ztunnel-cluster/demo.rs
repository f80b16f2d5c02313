//! `cargo xtask demo`: the system at work on a throw-away cluster.
//!
//! It grows with each capability. Today: the cluster with its mesh control
//! parts (the CA, a node daemon per node holding the SPIFFE identities of its
//! enrolled pods), and real applications (`curl`, `iperf3`, an HTTP server)
//! talking across nodes over IPv4 and IPv6 inside mutual TLS, through a
//! Service VIP, and seeing each other's real addresses.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};
use ztunnel_cluster::{Cluster, ClusterSpec, netns, payload::Payload};

/// How long to wait for a server in a pod to listen.
const READY: Duration = Duration::from_secs(10);
const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;

/// Runs the demo; `iperf_time` is the length of the throughput run.
pub fn run(iperf_time: Duration) -> Result<()> {
    let spec = ClusterSpec::ephemeral(2, 1).with_mesh(crate::bin_dir()?);
    step(&format!(
        "creating cluster {} (2 nodes, 3 pods each, the CA, a node daemon per node)",
        spec.name
    ));
    let mut cluster = Cluster::create(&spec)?;
    crate::print_status(cluster.status());

    step("SPIFFE identities each node daemon holds (its admin endpoint, /certs)");
    show_identities(&cluster)?;
    step("namespace legacy joins the mesh (label istio.io/dataplane-mode=ambient)");
    let (key, value) = ztunnel_cluster::AMBIENT_LABEL;
    cluster.label_namespace("legacy", key, Some(value))?;
    // The daemons take registry changes within a second; show the result after it.
    std::thread::sleep(Duration::from_secs(1));
    show_identities(&cluster)?;

    let server = cluster.pod("web-2")?.clone();
    let testapp = sibling_binary("ztunnel-testapp")?;
    let testapp = testapp.to_str().context("binary path is UTF-8")?;
    let _http = cluster.spawn(&server.name, testapp, &["http", "--name", &server.name])?;
    cluster.wait_listening(&server.name, HTTP_PORT, READY)?;

    for (family, addr) in [
        ("IPv4", server.ipv4.to_string()),
        ("IPv6", format!("[{}]", server.ipv6)),
    ] {
        step(&format!(
            "client-1 (node1) -> web-2 (node2) over {family}: curl http://{addr}:{HTTP_PORT}/"
        ));
        let body = cluster.run(
            "client-1",
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                &format!("http://{addr}:{HTTP_PORT}/"),
            ],
        )?;
        print!("  {body}");
    }
    step(
        "the same connections, as the node daemons carried them (captured by eBPF, no iptables; mutual TLS 1.3 between the nodes)",
    );
    show_relayed(&cluster)?;

    let service = cluster
        .status()
        .services
        .iter()
        .find(|s| s.name == "web")
        .context("the demo cluster has a web service")?
        .clone();
    let _http_local = cluster.spawn("web-1", testapp, &["http", "--name", "web-1"])?;
    cluster.wait_listening("web-1", HTTP_PORT, READY)?;
    step(&format!(
        "client-1 -> Service web ({}:{}): spread over web-1 (same node, no TLS) and web-2 (tunnel)",
        service.ipv4, service.port
    ));
    let url = format!("http://{}:{}/", service.ipv4, service.port);
    for _ in 0..4 {
        let name = cluster.run("client-1", "curl", &["-sS", "--max-time", "10", &url])?;
        print!("  {name}");
    }
    step("the applications see the real client address (client-1 is 10.244.1.3): GET /peer");
    for pod in ["web-1", "web-2"] {
        let url = format!("http://{}:{HTTP_PORT}/peer", cluster.pod(pod)?.ipv4);
        let peer = cluster.run("client-1", "curl", &["-sS", "--max-time", "10", &url])?;
        println!("  {pod} sees {}", peer.trim());
    }

    let len = 32 * 1024 * 1024;
    step(&format!(
        "client-1 downloads {} MiB from web-2 and checks its SHA-256",
        len >> 20
    ));
    let url = format!("http://{}:{HTTP_PORT}/bytes/{len}", server.ipv4);
    let got = cluster.run(
        "client-1",
        "sh",
        &["-c", &format!("curl -sS --max-time 30 {url} | sha256sum")],
    )?;
    let want = Payload::sha256_hex(len);
    ensure!(
        got.starts_with(&want),
        "payload hash mismatch: got {got}, want {want}"
    );
    println!("  sha256 {want}  matches");

    step(&format!(
        "iperf3 from client-1 (node1) to web-2 (node2), {} s",
        iperf_time.as_secs()
    ));
    let _iperf = cluster.spawn(
        &server.name,
        "iperf3",
        &["-s", "-1", "-p", &IPERF_PORT.to_string()],
    )?;
    cluster.wait_listening(&server.name, IPERF_PORT, READY)?;
    let report = cluster.run(
        "client-1",
        "iperf3",
        &[
            "-J",
            "-c",
            &server.ipv4.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &iperf_time.as_secs().to_string(),
        ],
    )?;
    let report: serde_json::Value =
        serde_json::from_str(&report).context("parsing iperf3 -J output")?;
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no throughput")?;
    println!(
        "  {:.2} Gbit/s received, through both node daemons and mutual TLS 1.3 between them",
        bps / 1e9
    );

    step("tearing the cluster down");
    cluster.teardown()?;
    println!(
        "  done: no namespace, veth or process of {} is left",
        spec.name
    );
    Ok(())
}

/// Prints, per node, the identities its daemon holds and until when.
fn show_identities(cluster: &Cluster) -> Result<()> {
    for node in &cluster.status().nodes {
        let admin = &node
            .daemon
            .as_ref()
            .context("the demo cluster runs daemons")?
            .admin;
        let url = format!("http://{admin}/certs");
        let body = netns::output(netns::exec(&node.netns, "curl").args(["-sS", "--fail", &url]))?;
        let body: serde_json::Value = serde_json::from_str(&body)?;
        for cert in body["certificates"].as_array().context("certificates")? {
            println!(
                "  {}  {}  valid until {}",
                node.name,
                cert["identity"].as_str().unwrap_or("?"),
                cert["not_after"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// Prints what each node daemon logged about the connections it relayed.
fn show_relayed(cluster: &Cluster) -> Result<()> {
    for node in &cluster.status().nodes {
        let path = cluster
            .status()
            .state_dir
            .join(format!("logs/{}-ztunnel.log", node.name));
        let log = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in log.lines() {
            for direction in ["outbound", "inbound"] {
                // The fields after the message tell the story; drop timestamp and level.
                if let Some((_, fields)) =
                    line.split_once(&format!("{direction} connection closed"))
                {
                    println!("  {} {direction:<8}{fields}", node.name);
                }
            }
        }
    }
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// A binary built next to this one (`target/<profile>/`).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let path = exe.with_file_name(name);
    ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask build`",
        path.display()
    );
    Ok(path)
}

//! Helpers for the end-to-end tests in `tests/`: locating the project's
//! binaries and driving the cluster tool as a user would.
//!
//! The tests need root and run under `cargo xtask test`, which builds every
//! binary first and points `ZTUNNEL_BIN_DIR` at them.

pub mod certificates;

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// The directory of the project's binaries: `ZTUNNEL_BIN_DIR`, or the
/// profile directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTUNNEL_BIN_DIR") {
        return dir.into();
    }
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps")
        .to_owned()
}

/// The path of project binary `name`; panics with the fix if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// Runs the cluster tool (`cargo xtask cluster ...`) with `args`.
pub fn cluster_cli(args: &[&str]) -> Output {
    Command::new(bin("ztunnel-cluster"))
        .args(args)
        .output()
        .expect("ztunnel-cluster can be spawned")
}

/// Runs the cluster tool with `args`, asserting success; returns stdout.
pub fn cluster_cli_ok(args: &[&str]) -> String {
    let out = cluster_cli(args);
    assert!(
        out.status.success(),
        "`cluster {}` failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the cluster tool prints UTF-8")
}

/// A `t`-prefixed random cluster name, unique per call.
pub fn unique_name() -> String {
    ztunnel_cluster::ClusterSpec::ephemeral(1, 1).name
}

/// What node `node`'s daemon has logged so far.
pub fn daemon_log(cluster: &ztunnel_cluster::Cluster, node: &str) -> String {
    let path = cluster
        .status()
        .state_dir
        .join(format!("logs/{node}-ztunnel.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// How many lines node `node`'s log has: a mark to read what comes after.
pub fn log_len(cluster: &ztunnel_cluster::Cluster, node: &str) -> usize {
    daemon_log(cluster, node).lines().count()
}

/// The JSON access-log entries node `node`'s daemon wrote (its stdout
/// shares the node's log file; log lines in JSON, with `--log-format json`,
/// are left out).
pub fn access_log(cluster: &ztunnel_cluster::Cluster, node: &str) -> Vec<serde_json::Value> {
    access_log_since(cluster, node, 0)
}

/// [`access_log`]'s entries after the first `skip` lines of the node's log
/// (a mark taken with [`log_len`]).
pub fn access_log_since(
    cluster: &ztunnel_cluster::Cluster,
    node: &str,
    skip: usize,
) -> Vec<serde_json::Value> {
    daemon_log(cluster, node)
        .lines()
        .skip(skip)
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("each access-log line is JSON"))
        .filter(|entry: &serde_json::Value| entry["reporter"].is_string())
        .collect()
}

/// How many connections from pod `src` to `dst` node `node`'s daemon has
/// relayed outbound (its access log's source-side entries without a failure).
pub fn captured(cluster: &ztunnel_cluster::Cluster, node: &str, src: &str, dst: &str) -> usize {
    relayed(cluster, node, "source", dst, ("src_addr", src))
}

/// How many connections to `dst` in pod `pod` node `node`'s daemon has
/// delivered inbound (its access log's destination-side entries without a
/// failure).
pub fn delivered(cluster: &ztunnel_cluster::Cluster, node: &str, pod: &str, dst: &str) -> usize {
    relayed(cluster, node, "destination", dst, ("dst_endpoint", pod))
}

/// How many access-log entries of node `node`, reported by `reporter`, are
/// of connections to `dst` that were relayed (no failure flag) and whose
/// address `field` is one of pod `pod`'s.
fn relayed(
    cluster: &ztunnel_cluster::Cluster,
    node: &str,
    reporter: &str,
    dst: &str,
    (field, pod): (&str, &str),
) -> usize {
    let pod = cluster.pod(pod).expect("the pod exists").clone();
    let of_pod = |entry: &serde_json::Value| {
        entry[field]
            .as_str()
            .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|addr| addr.ip() == pod.ipv4 || addr.ip() == pod.ipv6)
    };
    access_log(cluster, node)
        .iter()
        .filter(|entry| {
            entry["reporter"] == reporter
                && entry["response_flags"] == "-"
                && entry["dst_addr"] == dst
                && of_pod(entry)
        })
        .count()
}

/// How long a server in a pod may take to start listening.
pub const READY: std::time::Duration = std::time::Duration::from_secs(10);

/// A fresh cluster of `nodes` nodes (one pod per app per node) running the mesh.
pub fn mesh(nodes: u8) -> ztunnel_cluster::Cluster {
    let spec = ztunnel_cluster::ClusterSpec::ephemeral(nodes, 1).with_mesh(bin_dir());
    ztunnel_cluster::Cluster::create(&spec).expect("the cluster comes up")
}

/// Starts the test app's HTTP server (port 8080, answering `hello from
/// <pod>`) in `pod` and waits until it listens.
pub fn http_server(cluster: &ztunnel_cluster::Cluster, pod: &str) -> ztunnel_cluster::PodProcess {
    let server = cluster
        .spawn(pod, &testapp_path(), &["http", "--name", pod])
        .expect("the test app can be spawned");
    cluster
        .wait_listening(pod, 8080, READY)
        .expect("the test app listens");
    server
}

/// Runs the test app with `args` in `pod`; returns its stdout.
pub fn testapp(cluster: &ztunnel_cluster::Cluster, pod: &str, args: &[&str]) -> String {
    cluster
        .run(pod, &testapp_path(), args)
        .unwrap_or_else(|err| panic!("ztunnel-testapp {} in {pod}: {err}", args.join(" ")))
}

/// The test app's path, as a string for [`ztunnel_cluster::Cluster::spawn`].
pub fn testapp_path() -> String {
    bin("ztunnel-testapp").to_string_lossy().into_owned()
}

/// Checks that pod `pod` downloads `/bytes/<len>` from the test app at
/// `addr` intact (by SHA-256).
pub fn assert_downloads(cluster: &ztunnel_cluster::Cluster, pod: &str, addr: &str, len: u64) {
    let script = format!("curl -sS --fail --max-time 30 http://{addr}/bytes/{len} | sha256sum");
    let out = cluster
        .run(pod, "sh", &["-c", &script])
        .unwrap_or_else(|err| panic!("{pod}: downloading from {addr}: {err}"));
    assert!(
        out.starts_with(&ztunnel_cluster::payload::Payload::sha256_hex(len)),
        "{pod}: body from {addr} differs: {out}"
    );
}

/// Waits (up to 3 s) for `condition`, which is re-checked every 50 ms.
pub fn eventually(what: &str, condition: impl FnMut() -> bool) {
    within(std::time::Duration::from_secs(3), what, condition);
}

/// Waits up to `limit` for `condition`, which is re-checked every 50 ms.
pub fn within(limit: std::time::Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Node `node`'s daemon's metrics (`daemon.metrics` of `status --json`,
/// fetched inside the node's namespace), parsed as Prometheus text.
pub fn scrape(cluster: &ztunnel_cluster::Cluster, node: &str) -> Vec<prometheus_parse::Sample> {
    let status = cluster
        .status()
        .node(node)
        .expect("the node exists")
        .clone();
    let address = status
        .daemon
        .and_then(|daemon| daemon.metrics)
        .expect("the daemon serves metrics");
    let url = format!("http://{address}/metrics");
    let text = ztunnel_cluster::netns::output(
        ztunnel_cluster::netns::exec(&status.netns, "curl").args(["-sS", "--fail", &url]),
    )
    .expect("the metrics endpoint answers");
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("the metrics parse as Prometheus text")
        .samples
}

/// The sum of the values of `metric` over the samples whose labels include
/// every `(name, value)` of `labels`.
pub fn metric_sum(
    samples: &[prometheus_parse::Sample],
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// An AuthorizationPolicy letting only the `client` ServiceAccount reach the
/// `web` pods (YAML, one document).
pub const ALLOW_CLIENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-allow-client
  namespace: demo
spec:
  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client"]
"#;

/// Waits until node `node`'s daemon keeps at least one idle tunnel: the last
/// connection's tunnel is back in its pool (the destination has said the
/// connection is over), so the next connection between the same pods rides it.
pub fn wait_tunnel_idle(cluster: &ztunnel_cluster::Cluster, node: &str) {
    eventually("the tunnel is back in the pool", || {
        metric_sum(&scrape(cluster, node), "ztunnel_tunnel_idle", &[]) >= 1.0
    });
}

/// Writes `yaml` as `<name>.yaml` in the cluster's policy directory and waits
/// until every daemon has reloaded (or refused) it.
pub fn apply_policy(cluster: &ztunnel_cluster::Cluster, name: &str, yaml: &str) {
    let nodes: Vec<String> = cluster
        .status()
        .nodes
        .iter()
        .map(|node| node.name.clone())
        .collect();
    let marks: Vec<usize> = nodes
        .iter()
        .map(|node| daemon_log(cluster, node).lines().count())
        .collect();
    let dir = cluster.status().config.policies.clone().unwrap();
    std::fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
    within(
        std::time::Duration::from_secs(3),
        "every daemon takes the policies",
        || {
            nodes.iter().zip(&marks).all(|(node, mark)| {
                daemon_log(cluster, node).lines().skip(*mark).any(|line| {
                    line.contains("reloaded policies")
                        || line.contains("keeping the previous policies")
                })
            })
        },
    );
}

/// The process id of node `node`'s daemon.
pub fn daemon_pid(cluster: &ztunnel_cluster::Cluster, node: &str) -> u32 {
    let node = cluster.status().node(node).expect("the node exists");
    node.daemon.as_ref().expect("the node runs a daemon").pid
}

/// Sends SIGTERM to node `node`'s daemon (it drains, then exits); returns its
/// process id.
pub fn sigterm_daemon(cluster: &ztunnel_cluster::Cluster, node: &str) -> u32 {
    let daemon = daemon_pid(cluster, node);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &daemon.to_string()])
        .status()
        .expect("kill can be run");
    assert!(status.success(), "kill -TERM {daemon}: {status}");
    daemon
}

/// `ztunnel ctl ARGS` run inside node `node`'s namespace, where its admin
/// endpoint is; its output.
pub fn ctl(cluster: &ztunnel_cluster::Cluster, node: &str, args: &[&str]) -> String {
    let (success, out) = ctl_status(cluster, node, args);
    assert!(success, "ztunnel ctl {} failed: {out}", args.join(" "));
    out
}

/// Runs `ztunnel ctl <args>` like [`ctl`]; returns whether it exited with
/// status 0, and its standard output and error.
pub fn ctl_status(cluster: &ztunnel_cluster::Cluster, node: &str, args: &[&str]) -> (bool, String) {
    let netns = cluster
        .status()
        .node(node)
        .expect("the node exists")
        .netns
        .clone();
    let ztunnel = bin("ztunnel");
    let out = ztunnel_cluster::netns::exec(&netns, &ztunnel.to_string_lossy())
        .arg("ctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("ztunnel ctl {}: {err}", args.join(" ")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

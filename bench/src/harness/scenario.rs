//! The paths compared, and how the cluster is switched between them.
//!
//! The pods never change: only whether their namespace is enrolled and how
//! the node daemons carry tunnels. Switching restarts the daemons only when
//! their flags differ.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use ztunnel_cluster::{Cluster, netns};

use super::HarnessError;

/// One way from the client pod to the server pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// The namespace is not enrolled: the pods talk directly.
    Direct,
    /// Through both daemons with a plain TCP tunnel: the proxy hops' cost
    /// without cryptography.
    Relay,
    /// The real mesh: mutual TLS 1.3 between the daemons, idle tunnels
    /// reused, sessions resumed.
    Mtls,
    /// The mesh with a tunnel per connection: a resumed handshake per
    /// connection (connection rate only).
    MtlsPerConnection,
    /// The mesh with a tunnel per connection and resumption off: a full
    /// handshake per connection (connection rate only).
    MtlsFullHandshake,
    /// The mesh with socket acceleration: the hops inside the pods move
    /// their bytes socket to socket (`--socket-acceleration`).
    MtlsAccelerated,
    /// The mesh speaking HBONE (HTTP/2 `CONNECT` streams inside the mutual
    /// TLS session, as Istio's ztunnel) instead of the native protocol
    /// (`--no-native-tunnel`).
    MtlsHbone,
    /// Client and server on the same node, not enrolled.
    DirectSameNode,
    /// Client and server on the same node, through its daemon.
    MtlsSameNode,
    /// Client and server on the same node, through its daemon, with socket
    /// acceleration.
    MtlsSameNodeAccelerated,
}

impl Scenario {
    /// The three compared on every measurement, in the order each round
    /// runs them.
    pub const MAIN: [Scenario; 3] = [Scenario::Direct, Scenario::Relay, Scenario::Mtls];

    /// The mesh with a tunnel per connection, resumed and not: measured for
    /// the connection rate only, after the main three in each round.
    pub const PER_CONNECTION: [Scenario; 2] =
        [Scenario::MtlsPerConnection, Scenario::MtlsFullHandshake];

    /// HBONE against the native protocol: measured like the main three,
    /// right after them in each round.
    pub const TRANSPORT: [Scenario; 1] = [Scenario::MtlsHbone];

    /// Socket acceleration against none, across nodes and on one node:
    /// measured like the main three, after them in each round (ordered so
    /// the daemons restart only twice per round).
    pub const ACCELERATION: [Scenario; 4] = [
        Scenario::MtlsAccelerated,
        Scenario::MtlsSameNodeAccelerated,
        Scenario::MtlsSameNode,
        Scenario::DirectSameNode,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relay => "relay",
            Self::Mtls => "mtls",
            Self::MtlsPerConnection => "mtls_per_connection",
            Self::MtlsFullHandshake => "mtls_full_handshake",
            Self::MtlsAccelerated => "mtls_accelerated",
            Self::MtlsHbone => "mtls_hbone",
            Self::DirectSameNode => "direct_same_node",
            Self::MtlsSameNode => "mtls_same_node",
            Self::MtlsSameNodeAccelerated => "mtls_same_node_accelerated",
        }
    }

    /// Whether the server is on the client's node.
    pub fn same_node(self) -> bool {
        matches!(
            self,
            Self::DirectSameNode | Self::MtlsSameNode | Self::MtlsSameNodeAccelerated
        )
    }

    /// The extra flags of the node daemons.
    fn daemon_args(self) -> Vec<String> {
        match self {
            Self::Direct | Self::Mtls | Self::DirectSameNode | Self::MtlsSameNode => vec![],
            Self::MtlsAccelerated | Self::MtlsSameNodeAccelerated => {
                vec!["--socket-acceleration".to_owned()]
            }
            Self::Relay => vec!["--benchmark-plaintext-tunnel".to_owned()],
            Self::MtlsHbone => vec!["--no-native-tunnel".to_owned()],
            Self::MtlsPerConnection => vec!["--no-tunnel-reuse".to_owned()],
            Self::MtlsFullHandshake => vec![
                "--no-tunnel-reuse".to_owned(),
                "--no-tls-resumption".to_owned(),
            ],
        }
    }

    fn enrolled(self) -> bool {
        !matches!(self, Self::Direct | Self::DirectSameNode)
    }
}

/// The label that enrols the benchmark's namespace.
const LABEL: (&str, &str) = ("istio.io/dataplane-mode", "ambient");
/// The namespace of the client and server pods.
pub const NAMESPACE: &str = "demo";

/// Puts `cluster` in `scenario`: restarts the daemons if their flags
/// change, sets the namespace's enrolment, and waits until both daemons have
/// applied it.
pub fn apply(cluster: &mut Cluster, scenario: Scenario) -> Result<(), HarnessError> {
    let args = scenario.daemon_args();
    if cluster.status().config.daemon_args != args {
        cluster.restart_daemons(&args)?;
    }
    let value = scenario.enrolled().then_some(LABEL.1);
    cluster.label_namespace(NAMESPACE, LABEL.0, value)?;
    let expected = if scenario.enrolled() {
        cluster
            .status()
            .pods
            .iter()
            .filter(|pod| pod.namespace == NAMESPACE)
            .count()
    } else {
        0
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let enrolled = enrolled_pods(cluster)?;
        if enrolled == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Setup(format!(
                "switching to {}: the daemons capture {enrolled} pods after 10 s, not {expected}",
                scenario.name()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node daemons' process ids, in node order.
pub fn daemon_pids(cluster: &Cluster) -> Vec<u32> {
    cluster
        .status()
        .nodes
        .iter()
        .filter_map(|node| node.daemon.as_ref().map(|daemon| daemon.pid))
        .collect()
}

/// Enrolled pods over all daemons, from their `ztunnel_enrolled_pods` gauges.
fn enrolled_pods(cluster: &Cluster) -> Result<usize, HarnessError> {
    let mut total = 0;
    for node in &cluster.status().nodes {
        let Some(metrics) = node.daemon.as_ref().and_then(|d| d.metrics.clone()) else {
            continue;
        };
        let url = format!("http://{metrics}/metrics");
        let text = netns::output(netns::exec(&node.netns, "curl").args(["-sS", &url]))?;
        total += text
            .lines()
            .find_map(|line| line.strip_prefix("ztunnel_enrolled_pods "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
    }
    Ok(total)
}

//! A cold start of the CA, end to end: every node daemon of a cluster asks
//! at once for the identities of its pods, as after a control-plane outage
//! or a fresh install.
//!
//! A `ztunnel ca` process in Kubernetes mode serves, against the stand-in
//! API server seeded with `nodes x identities` pods: every request is a TLS
//! connection's gRPC call, a TokenReview of the node's token, the check that
//! the node runs a pod of the identity, and a signature. The nodes are the
//! daemons' own certificate managers (`CertManager`: key, CSR, retries with
//! backoff), one per node with its own connection, in this process; the
//! clock stops when every node holds every certificate it asked for.
//!
//! Everything shares this machine's CPUs: the CA's own CPU is reported
//! beside the wall time, and is what sizes its replicas.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use ztunnel::{
    identity::{
        Identity,
        ca_client::{CaClient, CaClientConfig, CaToken},
        manager::{CertManager, ManagerConfig, RequestObserver},
    },
    registry::{Labels, Namespace, Node, Pod, Registry, Service},
};
use ztunnel_cluster::{
    ca_process::CaProcess,
    kube_api::{ApiServer, TokenInfo},
};

use crate::harness::measure;

/// The node proxies' ServiceAccount and token audience (the CA's defaults).
const NODE_ACCOUNT: &str = "system:serviceaccount:ztunnel-system:ztunnel";
const AUDIENCE: &str = "ztunnel-ca";
/// Namespaces the identities are spread over.
const NAMESPACES: usize = 1000;
/// The longest a cold start may take before the run is abandoned.
const LIMIT: Duration = Duration::from_secs(600);

/// One cold start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColdStartRow {
    /// Nodes asking.
    pub nodes: usize,
    /// Identities each asks for.
    pub identities_per_node: usize,
    /// From the first request to every node holding all its certificates, in s.
    pub all_served_s: f64,
    /// By then, half the nodes held all theirs, in s.
    pub half_the_nodes_s: f64,
    /// CPU the CA process spent meanwhile, in s.
    pub ca_cpu_s: f64,
    /// Requests made (first ones and retries).
    pub requests: u64,
    /// Requests that failed (and were retried after a backoff).
    pub failed: u64,
    /// Request latency, median and 99th percentile, in ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
}

impl ColdStartRow {
    /// Certificates in all.
    pub fn certificates(&self) -> usize {
        self.nodes * self.identities_per_node
    }
}

/// Every request's latency and whether it failed.
#[derive(Default)]
struct Tally(Mutex<Vec<(Duration, bool)>>);

impl RequestObserver for Tally {
    fn requested(&self, _identity: &Identity, elapsed: Duration, ok: bool) {
        if let Ok(mut requests) = self.0.lock() {
            requests.push((elapsed, !ok));
        }
    }
}

/// Runs a cold start for each `(nodes, identities per node)` of `sizes`.
pub fn measure(sizes: &[(usize, usize)], bin_dir: &Path) -> anyhow::Result<Vec<ColdStartRow>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    sizes
        .iter()
        .map(|&(nodes, per_node)| runtime.block_on(cold_start(nodes, per_node, bin_dir)))
        .collect()
}

fn node_name(node: usize) -> String {
    format!("node-{node}")
}

/// Identity `j` of node `i` (each node's are its own).
fn identity(per_node: usize, node: usize, j: usize) -> (String, String) {
    let k = node * per_node + j;
    (format!("scale-{}", k % NAMESPACES), format!("app-{k}"))
}

/// One pod per identity: node `i` runs `per_node` ServiceAccounts.
fn cluster(nodes: usize, per_node: usize) -> Registry {
    let namespaces = (0..NAMESPACES)
        .map(|i| Namespace {
            name: format!("scale-{i}"),
            labels: Labels::new(),
        })
        .collect();
    let pods = (0..nodes).flat_map(|node| {
        (0..per_node).map(move |j| {
            let (namespace, service_account) = identity(per_node, node, j);
            let k = u32::try_from(node * per_node + j).unwrap_or(u32::MAX);
            Pod {
                name: format!("{service_account}-0"),
                namespace,
                service_account,
                node: node_name(node),
                ips: vec![IpAddr::V4(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k,
                ))],
                netns: None,
                labels: Labels::new(),
                workload: None,
            }
        })
    });
    let nodes = (0..nodes).map(|i| Node { name: node_name(i) }).collect();
    let services: [Service; 0] = [];
    Registry::new(nodes, namespaces, pods.collect::<Vec<_>>(), services)
}

async fn cold_start(nodes: usize, per_node: usize, bin_dir: &Path) -> anyhow::Result<ColdStartRow> {
    let dir = std::env::temp_dir().join(format!(
        "ztunnel-scale-cold-start-{}-{nodes}x{per_node}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let api = ApiServer::serve(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    api.seed(&cluster(nodes, per_node));
    let expires = std::time::Instant::now() + LIMIT * 2;
    for node in 0..nodes {
        api.add_token(
            &format!("token-{node}"),
            TokenInfo {
                username: NODE_ACCOUNT.to_owned(),
                audiences: vec![AUDIENCE.to_owned()],
                pod: Some((format!("ztunnel-{node}"), format!("uid-ztunnel-{node}"))),
                node: Some(node_name(node)),
                expires,
            },
        );
    }
    let kubeconfig = dir.join("kubeconfig.yaml");
    api.write_kubeconfig(&kubeconfig)?;
    let root = dir.join("root.pem");
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (kubeconfig_arg, state, root_arg) =
        (path(&kubeconfig), path(&dir.join("state")), path(&root));
    let args = [
        "--kubernetes",
        "--kubeconfig",
        &kubeconfig_arg,
        "--state-dir",
        &state,
        "--publish-root",
        &root_arg,
    ];
    let ca = CaProcess::start(
        &bin_dir.join("ztunnel"),
        "127.0.0.1:0",
        &args,
        dir.join("ca.log"),
    )?;

    let tally = Arc::new(Tally::default());
    let managers: Vec<(CertManager, BTreeSet<Identity>)> = (0..nodes)
        .map(|node| {
            let client = CaClient::new(&CaClientConfig {
                address: ca.address.to_string(),
                server_name: "127.0.0.1".to_owned(),
                root_cert: root.clone(),
                token: CaToken::Fixed(format!("token-{node}")),
                cluster_id: "Kubernetes".to_owned(),
            })?;
            let identities = (0..per_node)
                .map(|j| {
                    let (namespace, account) = identity(per_node, node, j);
                    Identity::parse(&format!(
                        "spiffe://cluster.local/ns/{namespace}/sa/{account}"
                    ))
                })
                .collect::<Result<_, _>>()?;
            let manager =
                CertManager::new(client, ManagerConfig::default()).observed_by(tally.clone());
            Ok((manager, identities))
        })
        .collect::<anyhow::Result<_>>()?;

    let cpu_before = measure::cpu_seconds(ca.pid())?;
    let started = Instant::now();
    let mut waiting = Vec::new();
    let mut held = Vec::new();
    for (mut manager, identities) in managers {
        manager.set_identities(&identities);
        let mut certificates = manager.subscribe();
        waiting.push(tokio::spawn(async move {
            let _ = certificates
                .wait_for(|held| held.len() == identities.len())
                .await;
            started.elapsed()
        }));
        held.push(manager);
    }
    let mut done = Vec::with_capacity(waiting.len());
    for node in waiting {
        let remaining = LIMIT.saturating_sub(started.elapsed());
        let elapsed = tokio::time::timeout(remaining, node)
            .await
            .with_context(|| {
                format!(
                    "{nodes} x {per_node}: not every node was served in {LIMIT:?} (CA log: {})",
                    ca.log.display()
                )
            })??;
        done.push(elapsed);
    }
    let all_served = started.elapsed();
    let ca_cpu_s = measure::cpu_seconds(ca.pid())? - cpu_before;
    drop(held);
    drop(ca);
    let _ = std::fs::remove_dir_all(&dir);

    done.sort();
    let requests = tally.0.lock().map(|r| r.clone()).unwrap_or_default();
    let failed = requests.iter().filter(|(_, failed)| *failed).count() as u64;
    let mut latencies: Vec<Duration> = requests.iter().map(|(elapsed, _)| *elapsed).collect();
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let row = ColdStartRow {
        nodes,
        identities_per_node: per_node,
        all_served_s: all_served.as_secs_f64(),
        half_the_nodes_s: done[done.len() / 2].as_secs_f64(),
        ca_cpu_s,
        requests: latencies.len() as u64,
        failed,
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
    };
    eprintln!("ca cold start: {row:?}");
    Ok(row)
}

/// The cold-start table.
pub fn markdown(rows: &[ColdStartRow]) -> String {
    let mut out = String::from(
        "### The CA's cold start (end to end)\n\n\
         Every node's certificate manager asks at once for its identities; a `ztunnel ca` process \
         in Kubernetes mode serves them over TLS, reviewing each request's node token with the \
         stand-in API server. Nodes, API server and CA share this machine's CPUs.\n\n\
         | nodes x identities | certificates | all served (s) | half the nodes served (s) | \
         CA CPU (s) | CA CPU per certificate (µs) | requests | failed | p50 (ms) | p99 (ms) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} x {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {:.0} | {:.0} |\n",
            row.nodes,
            row.identities_per_node,
            row.certificates(),
            row.all_served_s,
            row.half_the_nodes_s,
            row.ca_cpu_s,
            row.ca_cpu_s * 1e6 / row.certificates() as f64,
            row.requests,
            row.failed,
            row.p50_ms,
            row.p99_ms,
        ));
    }
    out.push('\n');
    out
}

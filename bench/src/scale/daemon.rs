//! A node daemon reading a synthetic cluster from the stand-in API server
//! (which speaks the real wire format): on a two-node local cluster whose
//! own pods are served beside the synthetic ones, for each size the daemon
//! of node1 is restarted and measured:
//!
//! - start to ready, and its memory once ready;
//! - the API traffic it caused: watches, bytes listed, bytes per event;
//! - CPU per 1,000 pod events (adds, label changes, deletes at 100 a
//!   second), and how long after the last one the registry reflects it;
//! - how long a new DENY policy takes to refuse connections on the data
//!   path while those events stream;
//!
//! and after the largest size, its memory once the cluster shrank back.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use ztunnel::registry::{Registry, Service};
use ztunnel_cluster::{
    Cluster, ClusterSpec,
    kube_api::{AUTHORIZATION_POLICIES, ApiServer, PODS, SERVICES, Traffic},
    kube_fabric, mesh,
};

use super::synthetic::{self, Shape};
use crate::harness::{Environment, measure};

/// Pod events per measurement, and their rate.
/// (A multiple of 3: the stream ends with the pods it started with.)
const EVENTS: usize = 999;
const EVENTS_PER_SECOND: f64 = 100.0;
/// The daemon measured (node2's serves the destination).
const NODE: &str = "node1";
const CLIENT: &str = "client-1";
const SERVER: &str = "web-2";

/// One size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonRow {
    /// Pods in the cluster (synthetic and the local cluster's own).
    pub pods: usize,
    /// Services.
    pub services: usize,
    /// From the daemon's start to ready, in ms.
    pub start_to_ready_ms: f64,
    /// Resident memory once ready, in MiB.
    pub rss_ready_mib: f64,
    /// Watches the daemon opened while starting.
    pub watches: u64,
    /// Bytes the daemon listed while starting, in MiB.
    pub listed_mib: f64,
    /// Mean bytes of one watch event it was sent.
    pub bytes_per_event: f64,
    /// CPU the daemon spent on 1,000 pod events, in ms.
    pub cpu_per_1000_events_ms: f64,
    /// From the last of them to the daemon's registry reflecting it, in ms.
    pub last_event_to_registry_ms: f64,
    /// From a DENY policy's creation to the first connection it refuses,
    /// with the events streaming, in ms.
    pub policy_to_data_path_ms: f64,
    /// Resident memory after the cluster shrank to the smallest size (the
    /// largest size only), in MiB.
    pub rss_after_shrink_mib: Option<f64>,
}

/// Measures the daemon at each of `sizes` synthetic pods (ascending).
pub fn measure(sizes: &[usize], environment: &Environment) -> anyhow::Result<Vec<DaemonRow>> {
    if sizes.is_empty() {
        return Ok(Vec::new());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let spec = ClusterSpec::new(&environment.cluster, 2, 1).with_mesh(&environment.bin_dir);
    if let Ok(stale) = Cluster::open(&spec.name) {
        stale.teardown()?;
    }
    let mut cluster = Cluster::create(&spec)?;
    let result = measure_on(&mut cluster, &runtime, sizes, environment);
    if result.is_err() && environment.keep_on_failure {
        eprintln!("the cluster {} is left up for inspection", spec.name);
        std::mem::forget(cluster);
    } else {
        cluster.teardown()?;
    }
    result
}

fn measure_on(
    cluster: &mut Cluster,
    runtime: &tokio::runtime::Runtime,
    sizes: &[usize],
    environment: &Environment,
) -> anyhow::Result<Vec<DaemonRow>> {
    let (api, args) = kube_fabric::serve(cluster, runtime)?;
    let own = Registry::load(
        cluster
            .status()
            .config
            .registry
            .as_ref()
            .context("the cluster has a registry")?,
    )?;
    api.seed(&own);
    let testapp = environment.bin_dir.join("ztunnel-testapp");
    let _web = cluster.spawn(
        SERVER,
        &testapp.to_string_lossy(),
        &["http", "--name", SERVER],
    )?;
    cluster.wait_listening(SERVER, 8080, Duration::from_secs(10))?;
    let url = format!("http://{}:8080/", cluster.pod(SERVER)?.ipv4);
    cluster.restart_daemons(&args)?;

    let mut rows = Vec::new();
    let mut seeded = 0;
    for &size in sizes {
        grow(&api, seeded, size);
        seeded = size;
        let total = size + own.pods.len();
        let before = api.traffic();
        cluster.kill_daemon(NODE)?;
        let started = Instant::now();
        cluster.start_daemon(NODE)?;
        let start_to_ready_ms = ms(started.elapsed());
        let started_traffic = api.traffic();
        let log = mesh::daemon_log(cluster.status(), NODE);
        wait_for_registry(&log, 0, total)?;
        std::thread::sleep(Duration::from_secs(2));
        let pid = daemon_pid(cluster)?;
        let rss_ready_mib = rss_mib(pid)?;

        let (cpu_per_1000_events_ms, last_event_to_registry_ms, policy_to_data_path_ms) =
            events(cluster, &api, &log, size, total, &url)?;
        let after = api.traffic();
        let row = DaemonRow {
            pods: total,
            services: synthetic::Shape::new(size).services() + own.services.len(),
            start_to_ready_ms,
            rss_ready_mib,
            watches: started_traffic.watches - before.watches,
            listed_mib: (started_traffic.list_bytes - before.list_bytes) as f64 / MIB,
            bytes_per_event: per_event(&started_traffic, &after),
            cpu_per_1000_events_ms,
            last_event_to_registry_ms,
            policy_to_data_path_ms,
            rss_after_shrink_mib: None,
        };
        eprintln!("daemon: {row:?}");
        rows.push(row);
    }
    // Back to the smallest size: is the memory given back? (With one size
    // there is nothing to shrink.)
    let smallest = sizes[0];
    if smallest == seeded {
        return Ok(rows);
    }
    shrink(&api, smallest, seeded);
    let log = mesh::daemon_log(cluster.status(), NODE);
    let mark = line_count(&log);
    wait_for_registry(&log, mark, smallest + own.pods.len())?;
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_mib(daemon_pid(cluster)?)?;
    if let Some(last) = rows.last_mut() {
        last.rss_after_shrink_mib = Some(rss);
    }
    Ok(rows)
}

const MIB: f64 = 1024.0 * 1024.0;

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

fn per_event(before: &Traffic, after: &Traffic) -> f64 {
    let events = after.watch_events - before.watch_events;
    if events == 0 {
        return 0.0;
    }
    (after.watch_bytes - before.watch_bytes) as f64 / events as f64
}

fn no_services() -> Vec<Service> {
    Vec::new()
}

/// Adds synthetic pods `from..to` and their Services.
fn grow(api: &ApiServer, from: usize, to: usize) {
    let shape = Shape::new(to);
    let (first_service, last_service) =
        (from.div_ceil(synthetic::PODS_PER_SERVICE), shape.services());
    let all = synthetic::registry(&shape, None);
    let namespaces = if from == 0 {
        all.namespaces.clone()
    } else {
        Vec::new()
    };
    let nodes = Vec::new();
    let pods = all.pods[from..to].to_vec();
    let services = all.services[first_service..last_service].to_vec();
    api.seed(&Registry::new(nodes, namespaces, pods, services));
}

/// Deletes synthetic pods `to..from` and their Services.
fn shrink(api: &ApiServer, to: usize, from: usize) {
    let shape = Shape::new(from);
    for index in to..from {
        let pod = synthetic::pod(&shape, index);
        api.delete(PODS, &pod.namespace, &pod.name);
    }
    for app in to.div_ceil(synthetic::PODS_PER_SERVICE)..shape.services() {
        api.delete(
            SERVICES,
            &synthetic::namespace_of(&shape, app),
            &format!("app-{app}"),
        );
    }
}

/// Streams [`EVENTS`] pod events (add, relabel, delete) and, part way,
/// a DENY policy for the server; returns the daemon's CPU for them, the
/// time from the last to the registry showing it, and the policy's time
/// to the data path.
fn events(
    cluster: &Cluster,
    api: &ApiServer,
    log: &Path,
    size: usize,
    total: usize,
    url: &str,
) -> anyhow::Result<(f64, f64, f64)> {
    anyhow::ensure!(served(cluster, url), "the server answers before any policy");
    let pid = daemon_pid(cluster)?;
    let cpu_before = cpu_ms(pid)?;
    let shape = Shape::new(size);
    let (policy_ms, last_event) = std::thread::scope(|scope| -> anyhow::Result<(f64, Instant)> {
        let streaming = scope.spawn(|| {
            let interval = Duration::from_secs_f64(1.0 / EVENTS_PER_SECOND);
            let started = Instant::now();
            for event in 0..EVENTS {
                // Each third: a new pod, a label change on an existing one,
                // the new pod deleted again.
                let added = synthetic::pod(&shape, size + event / 3);
                match event % 3 {
                    0 => api.seed(&Registry::new(vec![], vec![], vec![added], no_services())),
                    1 => {
                        let mut pod = synthetic::pod(&shape, (event / 3) % size.max(1));
                        pod.labels.insert("revision".to_owned(), event.to_string());
                        api.seed(&Registry::new(vec![], vec![], vec![pod], no_services()));
                    }
                    _ => api.delete(PODS, &added.namespace, &added.name),
                }
                let due = started + interval * (event as u32 + 1);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            Instant::now()
        });
        std::thread::sleep(Duration::from_secs(3));
        let deny = json!({
            "metadata": {"name": "scale-deny", "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY", "rules": [{}]}
        });
        let created = Instant::now();
        api.apply(AUTHORIZATION_POLICIES, deny);
        let refused = wait_until(Duration::from_secs(30), || !served(cluster, url));
        let policy_ms = ms(created.elapsed());
        api.delete(AUTHORIZATION_POLICIES, "demo", "scale-deny");
        let last_event = streaming
            .join()
            .map_err(|_| anyhow::anyhow!("the event stream panicked"))?;
        anyhow::ensure!(refused, "the DENY policy never reached the data path");
        Ok((policy_ms, last_event))
    })?;
    // The last event deleted a pod: the registry is back to `total`.
    let reflected = wait_until(Duration::from_secs(60), || {
        registry_updates(log, 0).last() == Some(total)
    });
    let last_event_ms = ms(last_event.elapsed());
    anyhow::ensure!(
        reflected,
        "the daemon's registry never came back to {total} pods"
    );
    anyhow::ensure!(
        wait_until(Duration::from_secs(10), || served(cluster, url)),
        "the server answers again once the policy is deleted"
    );
    let cpu = cpu_ms(pid)? - cpu_before;
    Ok((cpu * 1000.0 / EVENTS as f64, last_event_ms, policy_ms))
}

fn served(cluster: &Cluster, url: &str) -> bool {
    cluster
        .run(CLIENT, "curl", &["-sS", "--max-time", "2", url])
        .is_ok_and(|body| body.starts_with("hello from"))
}

fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the daemon logs a registry of `pods` pods after line `mark`.
fn wait_for_registry(log: &Path, mark: usize, pods: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        wait_until(Duration::from_secs(120), || registry_updates(log, mark)
            .any(|n| n == pods)),
        "the daemon's registry never had {pods} pods (log {})",
        log.display()
    );
    Ok(())
}

fn line_count(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |text| text.lines().count())
}

/// The pod counts of the registry updates logged after line `mark`.
fn registry_updates(log: &Path, mark: usize) -> impl Iterator<Item = usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let counts: Vec<usize> = text
        .lines()
        .skip(mark)
        .filter(|line| line.contains("registry updated from the Kubernetes API"))
        .filter_map(|line| {
            let rest = &line[line.find("pods=")? + 5..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    counts.into_iter()
}

fn daemon_pid(cluster: &Cluster) -> anyhow::Result<u32> {
    Ok(cluster
        .status()
        .node(NODE)
        .and_then(|node| node.daemon.as_ref())
        .context("node1's daemon runs")?
        .pid)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(measure::rss_kib(pid)? / 1024.0)
}

/// User and system CPU of `pid` so far, in ms.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    Ok(measure::cpu_seconds(pid)? * 1000.0)
}

/// The daemon table, with the targets judged.
pub fn markdown(rows: &[DaemonRow]) -> String {
    let mut out = String::from(
        "### The node daemon against the API server\n\n\
         | pods | services | start to ready (ms) | RSS ready (MiB) | watches | listed (MiB) | \
         bytes/event | CPU per 1,000 pod events (ms) | registry current after the last \
         event (ms, at most) | DENY policy to data path (ms) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            row.pods,
            row.services,
            row.start_to_ready_ms,
            row.rss_ready_mib,
            row.watches,
            row.listed_mib,
            row.bytes_per_event,
            row.cpu_per_1000_events_ms,
            row.last_event_to_registry_ms,
            row.policy_to_data_path_ms
        ));
    }
    out.push('\n');
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let per_pod = (last.rss_ready_mib - first.rss_ready_mib) * MIB
            / (last.pods - first.pods).max(1) as f64;
        out.push_str(&format!(
            "- memory per pod (between {} and {} pods): **{per_pod:.0} bytes**; RSS at {} pods \
             {:.0} MiB (target < 200 MiB: {})\n",
            first.pods,
            last.pods,
            last.pods,
            last.rss_ready_mib,
            super::verdict(last.rss_ready_mib < 200.0)
        ));
        if let Some(shrunk) = last.rss_after_shrink_mib {
            // Given back: at least 80% of what the growth took.
            let returned =
                (last.rss_ready_mib - shrunk) / (last.rss_ready_mib - first.rss_ready_mib);
            out.push_str(&format!(
                "- after shrinking back to {} pods: {shrunk:.0} MiB ({:.0} at that size before, \
                 {:.0} at {} pods): {:.0}% of the growth given back ({})\n",
                first.pods,
                first.rss_ready_mib,
                last.rss_ready_mib,
                last.pods,
                returned * 100.0,
                super::verdict(returned >= 0.8)
            ));
        }
        // The events take EVENTS / EVENTS_PER_SECOND seconds: a daemon busy
        // for most of that could not keep up with a faster stream.
        let stream_ms = 1000.0 * 1000.0 / EVENTS_PER_SECOND;
        let busy = last.cpu_per_1000_events_ms / stream_ms;
        out.push_str(&format!(
            "- CPU per 1,000 pod events at {} / at {} pods: **{:.1}x**; at {} pods the daemon \
             was busy {:.0}% of the stream (target: proportional to the change, not to the \
             cluster: {})\n",
            last.pods,
            first.pods,
            last.cpu_per_1000_events_ms / first.cpu_per_1000_events_ms.max(1.0),
            last.pods,
            busy * 100.0,
            super::verdict(
                last.cpu_per_1000_events_ms <= first.cpu_per_1000_events_ms * 2.0 && busy < 0.5
            )
        ));
        out.push_str(&format!(
            "- a DENY policy reaches the data path at {} pods in {:.0} ms (target < 1 s: {})\n\n",
            last.pods,
            last.policy_to_data_path_ms,
            super::verdict(last.policy_to_data_path_ms < 1000.0)
        ));
    }
    out
}

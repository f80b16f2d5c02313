//! The per-connection decision, measured in-process: routing an outbound
//! connection to a Service VIP ([`ztunnel::proxy::route::route`]) and the
//! destination's policy decision ([`ztunnel::policy::PolicySet::decide`]),
//! the two pure functions every connection runs, at growing cluster sizes
//! and policy counts. And what rebuilding a registry costs at each size.

use std::{
    hint::black_box,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use ztunnel::{
    identity::{Identity, TrustDomain},
    policy::{Connection, PolicySet, Workload},
    proxy::route::{Route, route},
    registry::{Enrolment, Patched, Pod, PodChange, Registry},
};

use super::synthetic::{self, Placement, Shape};

/// How long one timing run lasts at least.
const RUN: Duration = Duration::from_millis(60);
/// Timing runs per figure; the median is kept.
const RUNS: usize = 5;

/// One measured combination.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecisionRow {
    /// Pods in the cluster.
    pub pods: usize,
    /// AuthorizationPolicies in the cluster.
    pub policies: usize,
    /// Where they are.
    pub placement: Placement,
    /// Nanoseconds per route of a connection to a Service VIP.
    pub route_ns: f64,
    /// Nanoseconds per policy decision at the destination.
    pub decide_ns: f64,
}

/// Rebuilding the registry at one size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RebuildRow {
    /// Pods in the cluster.
    pub pods: usize,
    /// Validating a registry built in code and indexing it, in ms (the
    /// Kubernetes source's work per published change, after converting).
    pub validate_and_index_ms: f64,
    /// Patching it for one changed pod ([`Registry::patched`]: the
    /// Kubernetes source's work when only pods changed), and freeing the
    /// patched registry, in ms (none in reports from before patches).
    #[serde(default)]
    pub patch_one_pod_ms: Option<f64>,
    /// Parsing, validating and indexing the registry file, in ms (the file
    /// source's work per change).
    pub file_load_ms: f64,
    /// The registry file's size, in bytes.
    pub file_bytes: usize,
}

/// Median nanoseconds per call of `op`.
fn time_per_call(mut op: impl FnMut()) -> f64 {
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < RUN || calls < 10 {
                for _ in 0..16 {
                    op();
                }
                calls += 16;
            }
            started.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

/// The decision at each of `sizes` pods, with each of `policy_counts`
/// policies in each placement.
pub fn measure(sizes: &[usize], policy_counts: &[usize]) -> anyhow::Result<Vec<DecisionRow>> {
    let enrolment = Enrolment::default();
    let client = Identity::new(TrustDomain::new("cluster.local")?, "x", "client-0")?;
    let mut rows = Vec::new();
    for &pods in sizes {
        let shape = Shape::new(pods);
        let registry = synthetic::registry(&shape, None).validated()?;
        registry.build_index();
        // A Service in the middle of the cluster.
        let destination = shape.services() / 2;
        let vip = SocketAddr::new(synthetic::service_vip(destination), synthetic::PORT);
        let mut next = 0usize;
        let mut pick = |n: usize| {
            next = next.wrapping_add(1);
            next % n
        };
        let Route::Tunnel {
            pod: target,
            destination: address,
            ..
        } = route(&registry, &enrolment, "bench-node", vip, &mut pick)
        else {
            anyhow::bail!("the synthetic Service {vip} does not route through the tunnel");
        };
        let route_ns = time_per_call(|| {
            black_box(route(
                &registry,
                &enrolment,
                "bench-node",
                black_box(vip),
                &mut pick,
            ));
        });
        let workload = Workload {
            namespace: &target.namespace,
            labels: &target.labels,
        };
        let connection = Connection {
            source_ip: synthetic::pod_ip(0),
            source_identity: Some(&client),
            destination_ip: address.ip(),
            destination_port: address.port(),
        };
        for &count in policy_counts {
            for placement in Placement::ALL {
                let policies = synthetic::policy_set(&shape, count, placement, destination)?;
                check_decides(&policies, &workload, &connection, placement)?;
                let decide_ns = time_per_call(|| {
                    black_box(policies.decide(black_box(&workload), black_box(&connection)));
                });
                eprintln!(
                    "decision: {pods} pods, {count} policies {}: route {route_ns:.0} ns, decide {decide_ns:.0} ns",
                    placement.name()
                );
                rows.push(DecisionRow {
                    pods,
                    policies: count,
                    placement,
                    route_ns,
                    decide_ns,
                });
            }
        }
    }
    Ok(rows)
}

/// The benchmark measures what it claims: with policies selecting the
/// destination, the client (`client-0`) is allowed by the first one; with
/// policies selecting others, none applies and the connection is allowed
/// without one.
fn check_decides(
    policies: &PolicySet,
    workload: &Workload<'_>,
    connection: &Connection<'_>,
    placement: Placement,
) -> anyhow::Result<()> {
    let verdict = policies.decide(workload, connection);
    let by = match &verdict.decision {
        ztunnel::policy::Decision::Allow { by } => by.as_ref().map(|(id, _)| id.clone()),
        denied => anyhow::bail!("the synthetic connection is denied: {denied:?}"),
    };
    let expected = (placement == Placement::SelectingTheDestination)
        .then(|| format!("{}/p-0", workload.namespace));
    anyhow::ensure!(
        by == expected,
        "{}: allowed by {by:?}, expected {expected:?}",
        placement.name()
    );
    Ok(())
}

/// What a registry rebuild costs at each of `sizes` pods.
pub fn rebuilds(sizes: &[usize]) -> anyhow::Result<Vec<RebuildRow>> {
    let mut rows = Vec::new();
    let dir = std::env::temp_dir().join(format!("ztunnel-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for &pods in sizes {
        let built = synthetic::registry(&Shape::new(pods), None);
        let started = Instant::now();
        let registry = built.clone().validated()?;
        registry.build_index();
        let validate_and_index_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut relabelled = Pod::clone(&registry.pods[pods / 2]);
        relabelled
            .labels
            .insert("revision".to_owned(), "2".to_owned());
        let change = PodChange::Set(relabelled.into());
        anyhow::ensure!(
            matches!(registry.patched([change.clone()]), Patched::Changed(_)),
            "a relabelled pod patches the registry"
        );
        let patch_one_pod_ms = time_per_call(|| {
            std::hint::black_box(registry.patched([change.clone()]));
        }) / 1e6;
        let file = dir.join(format!("registry-{pods}.yaml"));
        std::fs::write(&file, registry.to_yaml())?;
        let started = Instant::now();
        let loaded = Registry::load(&file)?;
        let file_load_ms = started.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(loaded == registry, "the file loads as written");
        let file_bytes = std::fs::metadata(&file)?.len() as usize;
        std::fs::remove_file(&file)?;
        eprintln!(
            "rebuild: {pods} pods: validate+index {validate_and_index_ms:.1} ms, patch {patch_one_pod_ms:.2} ms, file ({file_bytes} bytes) {file_load_ms:.1} ms"
        );
        rows.push(RebuildRow {
            pods,
            validate_and_index_ms,
            patch_one_pod_ms: Some(patch_one_pod_ms),
            file_load_ms,
            file_bytes,
        });
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(rows)
}

//! The benchmark harness: a two-node local cluster, a client pod on one node
//! and a server pod on the other, and the same measurements through each
//! [`Scenario`], interleaved round by round (direct, relay, mtls, direct,
//! relay, mtls, ...) so that drift of the machine falls on all alike.
//!
//! - [`scenario`]: the paths compared and how the cluster switches between them.
//! - [`measure`]: iperf3, the load generator, and the daemons' CPU and memory.
//! - [`report`]: every raw figure as JSON, a Markdown table of ratios and
//!   targets, and SVG plots ([`plot`]).
//! - [`upgrades`]: the daemons replaced under load, hand-over against crash
//!   and restart (`--upgrades N`, a run of its own).

pub mod measure;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod upgrades;

use std::{path::PathBuf, time::Duration};

use ztunnel_cluster::{Cluster, ClusterError, ClusterSpec};

use measure::{LOADGEN_PORT, Target};
use report::{Figure, Report, Settings};
use scenario::Scenario;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The cluster could not be made, changed or used.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Something the benchmark needs is not there.
    #[error("setting up: {0}")]
    Setup(String),
    /// A tool printed something unexpected.
    #[error("unexpected output: {0}")]
    Output(String),
    /// A file (of `/proc`, or a report) could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// The report could not be written.
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The client and server pods: on different nodes, so every scenario
/// crosses the fabric, but for the same-node ones, which use a server on
/// the client's node.
const CLIENT: &str = "client-1";
const SERVER: &str = "web-2";
const SAME_NODE_SERVER: &str = "web-1";

/// Where and how a benchmark runs, beyond its [`Settings`].
pub struct Environment {
    /// Directory of the project's release binaries.
    pub bin_dir: PathBuf,
    /// Name of the cluster to create (an existing one of that name goes first).
    pub cluster: String,
    /// Leave the cluster up for inspection when the run fails
    /// (`cargo xtask cluster status --name <cluster>`, its logs).
    pub keep_on_failure: bool,
}

/// Runs every measurement `settings.rounds` times per scenario on a fresh
/// cluster; returns the raw figures.
pub fn run(settings: &Settings, environment: &Environment) -> Result<Report, HarnessError> {
    let bin_dir = &environment.bin_dir;
    let spec = ClusterSpec::new(&environment.cluster, 2, 1).with_mesh(bin_dir);
    // A cluster left by an earlier run goes first.
    if let Ok(stale) = Cluster::open(&spec.name) {
        stale.teardown()?;
    }
    let mut cluster = Cluster::create(&spec)?;
    match run_on(&mut cluster, settings, bin_dir) {
        Ok(report) => {
            cluster.teardown()?;
            Ok(report)
        }
        Err(err) if environment.keep_on_failure => {
            let status = cluster.persist()?;
            eprintln!("keeping cluster {} for inspection", status.name);
            Err(err)
        }
        Err(err) => Err(err),
    }
}

/// [`run`] on `cluster`.
fn run_on(
    cluster: &mut Cluster,
    settings: &Settings,
    bin_dir: &std::path::Path,
) -> Result<Report, HarnessError> {
    let loadgen = bin_dir.join("ztunnel-loadgen");
    let loadgen = loadgen.to_string_lossy();
    let server = std::net::IpAddr::V4(cluster.pod(SERVER)?.ipv4);
    let same_node_server = std::net::IpAddr::V4(cluster.pod(SAME_NODE_SERVER)?.ipv4);
    for pod in [CLIENT, SERVER, SAME_NODE_SERVER] {
        tune_pod(cluster, pod)?;
    }
    let listen = format!("0.0.0.0:{LOADGEN_PORT}");
    let mut servers = Vec::new();
    for pod in [SERVER, SAME_NODE_SERVER] {
        servers.push(cluster.spawn(pod, "iperf3", &["-s"])?);
        servers.push(cluster.spawn(pod, &loadgen, &["serve", "--listen", &listen])?);
        let ready = Duration::from_secs(10);
        cluster.wait_listening(pod, 5201, ready)?;
        cluster.wait_listening(pod, LOADGEN_PORT, ready)?;
    }
    let server_of = |scenario: Scenario| {
        if scenario.same_node() {
            same_node_server
        } else {
            server
        }
    };

    let mut report = Report::new(settings.clone());
    let rounds = settings.rounds;
    for round in 1..=rounds {
        let measured_fully = Scenario::MAIN
            .into_iter()
            .chain(Scenario::TRANSPORT)
            .chain(Scenario::ACCELERATION);
        for scenario in measured_fully {
            eprintln!("round {round}/{rounds}: {}", scenario.name());
            scenario::apply(cluster, scenario)?;
            let target = Target::new(cluster, CLIENT, server_of(scenario), &loadgen);
            measure_paths(&target, scenario, settings, &mut report)?;
        }
        for scenario in Scenario::PER_CONNECTION {
            eprintln!(
                "round {round}/{rounds}: {} (connection rate)",
                scenario.name()
            );
            scenario::apply(cluster, scenario)?;
            let target = Target::new(cluster, CLIENT, server_of(scenario), &loadgen);
            measure_connection_rate(&target, scenario, settings, &mut report)?;
        }
    }

    scenario::apply(cluster, Scenario::Mtls)?;
    // Fresh daemons, so the idle figure is not what earlier runs left; one
    // pod holds every connection, past the default per-pod limit (a
    // quarter of the open-file limit).
    cluster.restart_daemons(&["--max-connections-per-pod".to_owned(), "1000000".to_owned()])?;
    // Each held connection is two sockets in each daemon: stay within the
    // daemons' open-file limit (raising a hard limit needs CAP_SYS_RESOURCE).
    let daemons = scenario::daemon_pids(cluster);
    let limit = daemons
        .iter()
        .map(|pid| measure::open_files_limit(*pid))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .min()
        .unwrap_or(0);
    let fits = (limit.saturating_sub(512) / 2) as usize;
    let held = &mut report.settings.held_connections;
    if fits < *held {
        eprintln!(
            "memory: the daemons may open {limit} files: holding {fits} connections, not {held}"
        );
        *held = fits;
    }
    let held = *held;
    eprintln!("memory: {held} idle tunnelled connections");
    let target = Target::new(cluster, CLIENT, server, &loadgen);
    measure_memory(&target, held, &mut report)?;
    Ok(report)
}

/// Throughput, latency at a fixed rate, connection rate, and the daemons'
/// CPU per byte and per request, through `scenario`.
fn measure_paths(
    target: &Target,
    scenario: Scenario,
    settings: &Settings,
    report: &mut Report,
) -> Result<(), HarnessError> {
    let daemons = scenario::daemon_pids(target.cluster);
    for streams in [1, 4] {
        let cpu = measure::total_cpu_seconds(&daemons)?;
        let moved = measure::iperf3(target, streams, settings.throughput_seconds)?;
        let cpu = measure::total_cpu_seconds(&daemons)? - cpu;
        report.push(
            Figure::throughput(streams),
            scenario,
            moved.bits_per_second / 1e9,
        );
        if streams == 1 {
            report.push(Figure::CPU_PER_GB, scenario, cpu / (moved.bytes / 1e9));
        }
    }
    for connections in [16, 64] {
        let cpu = measure::total_cpu_seconds(&daemons)?;
        let run = measure::latency(target, settings.rate, connections, settings.latency_seconds)?;
        let cpu = measure::total_cpu_seconds(&daemons)? - cpu;
        report.push_latency(connections, scenario, &run);
        if connections == 16 {
            let requests = run.latencies_us.len() as f64;
            report.push(
                Figure::CPU_PER_1000_REQUESTS,
                scenario,
                cpu / requests * 1000.0,
            );
        }
    }
    measure_connection_rate(target, scenario, settings, report)
}

/// New connections per second (and how many failed) through `scenario`.
fn measure_connection_rate(
    target: &Target,
    scenario: Scenario,
    settings: &Settings,
    report: &mut Report,
) -> Result<(), HarnessError> {
    let run = measure::connrate(
        target,
        settings.connrate_concurrency,
        settings.connrate_seconds,
    )?;
    let rate = run.completed as f64 / run.seconds;
    report.push(Figure::CONNECTIONS_PER_SECOND, scenario, rate);
    report.push(Figure::CONNECTION_ERRORS, scenario, run.errors as f64);
    Ok(())
}

/// Each daemon's resident memory idle, then with `held_connections` idle
/// tunnelled connections open, and the growth per connection.
fn measure_memory(
    target: &Target,
    held_connections: usize,
    report: &mut Report,
) -> Result<(), HarnessError> {
    use std::io::{BufRead, BufReader};

    let daemons = scenario::daemon_pids(target.cluster);
    std::thread::sleep(Duration::from_secs(1));
    let idle: Vec<f64> = daemons
        .iter()
        .map(|pid| measure::rss_kib(*pid))
        .collect::<Result<_, _>>()?;
    let address = std::net::SocketAddr::new(target.server, LOADGEN_PORT).to_string();
    let count = held_connections.to_string();
    let mut holder = target
        .cluster
        .command(target.client, target.loadgen)?
        .args(["hold", &address, "--connections", &count])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| HarnessError::Setup(format!("starting the holder: {err}")))?;
    let mut line = String::new();
    let stdout = holder.stdout.take().expect("piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|err| HarnessError::Output(format!("holder: {err}")))?;
    if !line.contains("held") {
        let _ = holder.kill();
        return Err(HarnessError::Output(format!(
            "the holder could not open {count} connections (see its stderr)"
        )));
    }
    std::thread::sleep(Duration::from_secs(1));
    let held: Vec<f64> = daemons
        .iter()
        .map(|pid| measure::rss_kib(*pid))
        .collect::<Result<_, _>>()?;
    drop(holder.stdin.take());
    let _ = holder.wait();
    for (index, (idle, held)) in idle.iter().zip(&held).enumerate() {
        let node = format!("node{}", index + 1);
        report.push_memory(&node, *idle, *held, held_connections);
    }
    Ok(())
}

/// Lets a pod open and close connections at benchmark rates: a wider range
/// of ephemeral ports (above the mesh's own 15001-15008, which a socket in
/// TIME_WAIT would keep the daemon from binding), reuse of ports in
/// TIME_WAIT, and few TIME_WAIT sockets kept. Without the last, one
/// scenario's connection-rate run leaves tens of thousands of them for 60 s
/// and every connect of the next scenario searches past them for a port.
fn tune_pod(cluster: &Cluster, pod: &str) -> Result<(), HarnessError> {
    cluster.run(
        pod,
        "sysctl",
        &[
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=20000 64999",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.tcp_max_tw_buckets=4096",
        ],
    )?;
    Ok(())
}

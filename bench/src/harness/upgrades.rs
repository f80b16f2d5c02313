//! Replacing the node daemons under load: a fixed-rate load across the two
//! nodes (requests each on a new connection, and long-lived streams whose
//! echoes are checked byte for byte) while every node's daemon is replaced
//! again and again, the way a DaemonSet rolling update does (the hand-over).
//! The baseline, in the same run on the same cluster: the same load across
//! a crash and restart of each daemon, what a replacement cost without it.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use ztunnel_cluster::{Cluster, ClusterSpec, load_tally::LoadTally};

use super::{CLIENT, Environment, HarnessError, SERVER};

/// Requests per second of the load.
const RATE: u32 = 200;
/// Long-lived streams of the load.
const STREAMS: usize = 4;
/// Between two replacements.
const PAUSE: Duration = Duration::from_secs(1);

/// How the daemons were replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The new daemon takes the old one's listeners over, then the old one drains.
    HandOver,
    /// `kill -9`, then a new daemon (the baseline).
    CrashAndRestart,
}

/// One load run across replacements.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpgradeRun {
    /// How the daemons were replaced.
    pub method: Method,
    /// Replacements in all (both nodes).
    pub replacements: u32,
    /// Length of the load.
    pub seconds: f64,
    /// What the load saw.
    pub tally: LoadTally,
}

/// The section of the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upgrades {
    /// Requests per second.
    pub rate: u32,
    /// Streams.
    pub streams: usize,
    /// One run per method.
    pub runs: Vec<UpgradeRun>,
}

/// Replaces each node's daemon `per_node` times under load, by each method,
/// on a fresh cluster.
pub fn run(environment: &Environment, per_node: u32) -> Result<Upgrades, HarnessError> {
    // Streams outlive every drain deadline: they end with the load.
    let spec = ClusterSpec::new(&environment.cluster, 2, 1)
        .with_mesh(&environment.bin_dir)
        .with_daemon_args(["--drain-timeout-secs", "600"]);
    if let Ok(stale) = Cluster::open(&spec.name) {
        stale.teardown()?;
    }
    let mut cluster = Cluster::create(&spec)?;
    let testapp = environment.bin_dir.join("ztunnel-testapp");
    let testapp = testapp.to_string_lossy();
    let _http = cluster.spawn(SERVER, &testapp, &["http", "--name", SERVER])?;
    let _mirror = cluster.spawn(SERVER, &testapp, &["mirror"])?;
    cluster.wait_listening(SERVER, 8080, Duration::from_secs(10))?;
    cluster.wait_listening(SERVER, 9003, Duration::from_secs(10))?;
    let ztunnel = environment.bin_dir.join("ztunnel");
    let mut runs = Vec::new();
    for method in [Method::HandOver, Method::CrashAndRestart] {
        eprintln!("upgrades: {per_node} replacements per node by {method:?} under load");
        runs.push(under_load(
            &mut cluster,
            &testapp,
            method,
            per_node,
            &ztunnel,
        )?);
    }
    cluster.teardown()?;
    Ok(Upgrades {
        rate: RATE,
        streams: STREAMS,
        runs,
    })
}

/// One load run while each node's daemon is replaced `per_node` times.
fn under_load(
    cluster: &mut Cluster,
    testapp: &str,
    method: Method,
    per_node: u32,
    ztunnel: &Path,
) -> Result<UpgradeRun, HarnessError> {
    let server = cluster.pod(SERVER)?.ipv4;
    let mut load = cluster
        .command(CLIENT, testapp)?
        .args([
            "load",
            &format!("{server}:8080"),
            &format!("{server}:9003"),
            "--rate",
            &RATE.to_string(),
            "--streams",
            &STREAMS.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| HarnessError::Setup(format!("starting the load: {err}")))?;
    let started = Instant::now();
    std::thread::sleep(PAUSE * 2);
    for _ in 0..per_node {
        for node in ["node2", "node1"] {
            match method {
                Method::HandOver => {
                    cluster.replace_daemon(node, ztunnel)?;
                }
                Method::CrashAndRestart => {
                    cluster.kill_daemon(node)?;
                    cluster.start_daemon(node)?;
                }
            }
            std::thread::sleep(PAUSE);
        }
    }
    std::thread::sleep(PAUSE * 2);
    drop(load.stdin.take());
    let mut line = String::new();
    if let Some(stdout) = load.stdout.take() {
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|err| HarnessError::Read("the load's output".to_owned(), err))?;
    }
    let mut errors = String::new();
    if let Some(mut stderr) = load.stderr.take() {
        let _ = stderr.read_to_string(&mut errors);
    }
    let _ = load.wait();
    let tally: LoadTally = line
        .parse()
        .map_err(|err| HarnessError::Output(format!("{err}; {errors}")))?;
    Ok(UpgradeRun {
        method,
        replacements: per_node * 2,
        seconds: started.elapsed().as_secs_f64(),
        tally,
    })
}

impl Upgrades {
    /// The section as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## Replacing the daemons under load\n\n{} requests a second (each on a new connection) and {} \
             long-lived streams (every echoed byte checked), client and server on different nodes, while \
             both nodes' daemons are replaced one after the other.\n\n\
             | replaced by | replacements | seconds | requests ok | requests failed | streams ok | streams broken |\n\
             |---|---|---|---|---|---|---|\n",
            self.rate, self.streams
        );
        for run in &self.runs {
            let method = match run.method {
                Method::HandOver => "hand-over (rolling update)",
                Method::CrashAndRestart => "crash and restart (baseline)",
            };
            let t = run.tally;
            out.push_str(&format!(
                "| {method} | {} | {:.0} | {} | {} | {} | {} |\n",
                run.replacements,
                run.seconds,
                t.requests_ok,
                t.requests_failed,
                t.streams_ok,
                t.streams_broken
            ));
        }
        out
    }
}

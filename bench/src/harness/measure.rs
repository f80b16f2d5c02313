//! The measurements: each runs a real tool in the client pod against the
//! server pod, and reads the daemons' CPU time and memory from `/proc`.

use std::net::IpAddr;

use ztunnel_cluster::Cluster;

use super::HarnessError;
use crate::loadgen::{connrate, latency};

/// Where the client runs and what it talks to.
pub struct Target<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The client pod.
    pub client: &'a str,
    /// The server pod's address.
    pub server: IpAddr,
    /// The load generator binary.
    pub loadgen: &'a str,
}

impl<'a> Target<'a> {
    /// `client` in `cluster` against `server`, with the load generator at `loadgen`.
    pub fn new(cluster: &'a Cluster, client: &'a str, server: IpAddr, loadgen: &'a str) -> Self {
        Self {
            cluster,
            client,
            server,
            loadgen,
        }
    }
}

/// The load generator's server port.
pub const LOADGEN_PORT: u16 = 9100;

/// What an iperf3 run moved.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Received bits per second.
    pub bits_per_second: f64,
    /// Bytes received.
    pub bytes: f64,
}

/// An iperf3 run of `seconds` with `streams` parallel streams.
pub fn iperf3(target: &Target, streams: u32, seconds: f64) -> Result<Throughput, HarnessError> {
    let out = target.cluster.run(
        target.client,
        "iperf3",
        &[
            "-c",
            &target.server.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    )?;
    let json: serde_json::Value =
        serde_json::from_str(&out).map_err(|err| HarnessError::Output(format!("iperf3: {err}")))?;
    let received = &json["end"]["sum_received"];
    match (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_f64(),
    ) {
        (Some(bits_per_second), Some(bytes)) => Ok(Throughput {
            bits_per_second,
            bytes,
        }),
        _ => Err(HarnessError::Output(format!(
            "iperf3 reported no sum_received: {}",
            json["error"]
        ))),
    }
}

/// A fixed-rate latency run.
pub fn latency(
    target: &Target,
    rate: f64,
    connections: usize,
    seconds: f64,
) -> Result<latency::Run, HarnessError> {
    let (rate, connections, seconds) = (
        rate.to_string(),
        connections.to_string(),
        seconds.to_string(),
    );
    let args = [
        "--rate",
        &rate,
        "--connections",
        &connections,
        "--seconds",
        &seconds,
    ];
    loadgen(target, "latency", &args)
}

/// A connection-rate run.
pub fn connrate(
    target: &Target,
    concurrency: usize,
    seconds: f64,
) -> Result<connrate::Run, HarnessError> {
    let (concurrency, seconds) = (concurrency.to_string(), seconds.to_string());
    let args = ["--concurrency", &concurrency, "--seconds", &seconds];
    loadgen(target, "connrate", &args)
}

/// Runs the load generator's `command` against the server with `args`;
/// parses the JSON it prints.
fn loadgen<T: serde::de::DeserializeOwned>(
    target: &Target,
    command: &str,
    args: &[&str],
) -> Result<T, HarnessError> {
    let address = std::net::SocketAddr::new(target.server, LOADGEN_PORT).to_string();
    let mut all = vec![command, address.as_str()];
    all.extend_from_slice(args);
    let out = target.cluster.run(target.client, target.loadgen, &all)?;
    serde_json::from_str(&out)
        .map_err(|err| HarnessError::Output(format!("loadgen {command}: {err}")))
}

/// CPU seconds (user and system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, HarnessError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|err| HarnessError::Read(path, err))?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) / clock_ticks()),
        _ => Err(HarnessError::Output(format!("unreadable /proc/{pid}/stat"))),
    }
}

/// CPU seconds all of `pids` have used so far.
pub fn total_cpu_seconds(pids: &[u32]) -> Result<f64, HarnessError> {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<f64, HarnessError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|err| HarnessError::Read(path, err))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| HarnessError::Output(format!("no VmRSS in /proc/{pid}/status")))
}

/// Process `pid`'s soft limit on open files.
pub fn open_files_limit(pid: u32) -> Result<u64, HarnessError> {
    let path = format!("/proc/{pid}/limits");
    let limits = std::fs::read_to_string(&path).map_err(|err| HarnessError::Read(path, err))?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .ok_or_else(|| HarnessError::Output(format!("no open-file limit in /proc/{pid}/limits")))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

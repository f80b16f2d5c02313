//! `ztunnel-bench`: runs the benchmark on a fresh local cluster and writes
//! its report (`cargo xtask bench` builds everything first and runs this).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ztunnel_bench::{
    harness::{
        self, Environment,
        report::{Report, Settings},
    },
    scale::{self, ScaleReport, ScaleSettings},
};

/// The mesh against a direct path and a plain relay, in one run.
#[derive(Parser)]
#[command(name = "ztunnel-bench")]
struct Cli {
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Directory of the project's release binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Rounds (each scenario is measured once per round).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Short runs (a quick look, not for the README).
    #[arg(long)]
    quick: bool,
    /// On failure, leave the cluster up for inspection.
    #[arg(long)]
    keep_on_failure: bool,
    /// Name of the cluster the benchmark creates.
    #[arg(long, default_value = "bench")]
    name: String,
    /// Write the table and plots again from a `report.json`, without running.
    #[arg(long, value_name = "REPORT_JSON")]
    from_json: Option<PathBuf>,
    /// Idle tunnelled connections held for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    held_connections: usize,
    /// Instead of the paths: replace each node's daemon N times under load,
    /// by hand-over and by crash and restart; writes `upgrades.md` and
    /// `upgrades.json`.
    #[arg(long, value_name = "N")]
    upgrades: Option<u32>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Cost as the cluster grows: the per-connection decision, registry
    /// rebuilds, and a node daemon against the stand-in API server at
    /// growing sizes; writes `scale.md`, `scale.json` and plots.
    Scale {
        /// Cluster sizes (pods) the daemon is run against.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 100_000])]
        sizes: Vec<usize>,
        /// Cluster sizes (pods) of the in-process decision benchmark.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 100_000])]
        decision_sizes: Vec<usize>,
        /// AuthorizationPolicy counts of the decision benchmark.
        #[arg(long, value_delimiter = ',', default_values_t = [10, 1_000, 10_000])]
        policies: Vec<usize>,
        /// CA cold starts, as `<nodes>x<identities per node>`.
        #[arg(long, value_delimiter = ',', value_parser = nodes_by_identities,
              default_values = ["100x10", "1000x10", "5000x20"])]
        cold_starts: Vec<(usize, usize)>,
        /// Only the in-process measurements (no cluster, no CA process, no
        /// root needed).
        #[arg(long)]
        in_process: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Scale {
        sizes,
        decision_sizes,
        policies,
        cold_starts,
        in_process,
    }) = &cli.command
    {
        let report = match &cli.from_json {
            Some(json) => ScaleReport::read(json)?,
            None => {
                let settings = ScaleSettings {
                    decision_sizes: decision_sizes.clone(),
                    policy_counts: policies.clone(),
                    daemon_sizes: if *in_process {
                        Vec::new()
                    } else {
                        sizes.clone()
                    },
                    cold_starts: if *in_process {
                        Vec::new()
                    } else {
                        cold_starts.clone()
                    },
                };
                scale::run(&settings, &environment(&cli)?)?
            }
        };
        report.write(&cli.out)?;
        print!("{}", report.markdown());
        return Ok(());
    }
    if let Some(json) = &cli.from_json {
        let report = Report::read(json)?;
        report.write(&cli.out)?;
        print!("{}", report.markdown());
        return Ok(());
    }
    let scale: f64 = if cli.quick { 0.3 } else { 1.0 };
    let settings = Settings {
        rounds: cli.rounds,
        throughput_seconds: (10.0 * scale).round(),
        latency_seconds: (10.0 * scale).round(),
        rate: 1000.0,
        connrate_seconds: (5.0 * scale).round(),
        connrate_concurrency: 8,
        held_connections: cli.held_connections,
    };
    let environment = environment(&cli)?;
    if let Some(per_node) = cli.upgrades {
        let upgrades = harness::upgrades::run(&environment, per_node)?;
        std::fs::create_dir_all(&cli.out)?;
        std::fs::write(
            cli.out.join("upgrades.json"),
            serde_json::to_string_pretty(&upgrades)?,
        )?;
        let markdown = upgrades.markdown();
        std::fs::write(cli.out.join("upgrades.md"), &markdown)?;
        print!("{markdown}");
        return Ok(());
    }
    let report = harness::run(&settings, &environment)?;
    report.write(&cli.out)?;
    print!("{}", report.markdown());
    eprintln!("report written to {}", cli.out.display());
    Ok(())
}

/// `<nodes>x<identities per node>`.
fn nodes_by_identities(text: &str) -> Result<(usize, usize), String> {
    let (nodes, identities) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not <nodes>x<identities per node>, e.g. 1000x10"))?;
    let number = |n: &str| {
        n.parse::<usize>()
            .map_err(|err| format!("{n:?} in {text:?}: {err}"))
    };
    Ok((number(nodes)?, number(identities)?))
}

/// Where the binaries are and which cluster to use.
fn environment(cli: &Cli) -> Result<Environment> {
    let bin_dir = match &cli.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary has a directory")?
            .to_owned(),
    };
    Ok(Environment {
        bin_dir,
        cluster: cli.name.clone(),
        keep_on_failure: cli.keep_on_failure,
    })
}

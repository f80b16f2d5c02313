//! Cost as the cluster grows (`ztunnel-bench scale`, run by `cargo xtask
//! bench scale`): measured curves, written to `bench/results/scale.*`.
//!
//! - [`decision`]: the per-connection route and policy decision, in-process,
//!   at growing cluster sizes and policy counts; and what a registry rebuild
//!   costs.
//! - [`daemon`]: a node daemon against the stand-in API server filled with
//!   a synthetic cluster: start to ready, memory, CPU per 1,000 pod events,
//!   time for a change to reach the data path, watches and bytes per event.
//! - [`ca`]: the CA's signing rate.
//! - [`ca_cold_start`]: a cold start of the CA, end to end.
//! - [`synthetic`]: the synthetic clusters.
//! - [`plot`]: the curves, as SVG.

pub mod ca;
pub mod ca_cold_start;
pub mod daemon;
pub mod decision;
pub mod plot;
pub mod synthetic;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::harness::report::{Machine, commit};
use daemon::DaemonRow;
use decision::{DecisionRow, RebuildRow};
use synthetic::Placement;

/// The scale report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleReport {
    /// Where it ran.
    pub machine: Machine,
    /// What was measured.
    pub commit: Option<String>,
    /// The per-connection decision.
    pub decisions: Vec<DecisionRow>,
    /// Registry rebuilds.
    pub rebuilds: Vec<RebuildRow>,
    /// The daemon against the API server.
    pub daemon: Vec<DaemonRow>,
    /// The CA's signing.
    pub ca: ca::CaRow,
    /// The CA's cold starts (none in reports from before they were measured).
    #[serde(default)]
    pub cold_starts: Vec<ca_cold_start::ColdStartRow>,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct ScaleSettings {
    /// Cluster sizes (pods) of the decision micro-benchmark.
    pub decision_sizes: Vec<usize>,
    /// AuthorizationPolicy counts of the decision micro-benchmark.
    pub policy_counts: Vec<usize>,
    /// Cluster sizes (pods) the daemon is run against.
    pub daemon_sizes: Vec<usize>,
    /// CA cold starts: nodes, and identities each asks for.
    pub cold_starts: Vec<(usize, usize)>,
}

/// Runs every measurement of `settings`.
pub fn run(
    settings: &ScaleSettings,
    environment: &crate::harness::Environment,
) -> anyhow::Result<ScaleReport> {
    let decisions = decision::measure(&settings.decision_sizes, &settings.policy_counts)?;
    let rebuilds = decision::rebuilds(&settings.decision_sizes)?;
    let ca = ca::measure()?;
    let cold_starts = ca_cold_start::measure(&settings.cold_starts, &environment.bin_dir)?;
    let daemon = daemon::measure(&settings.daemon_sizes, environment)?;
    Ok(ScaleReport {
        ca,
        cold_starts,
        machine: Machine::this(),
        commit: commit(),
        decisions,
        rebuilds,
        daemon,
    })
}

impl ScaleReport {
    /// Reads a `scale.json`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// Writes `scale.json`, `scale.md` and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("scale.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("scale.md"), self.markdown())?;
        std::fs::write(dir.join("scale-decision.svg"), plot::decision(self))?;
        if !self.daemon.is_empty() {
            std::fs::write(dir.join("scale-daemon.svg"), plot::daemon(self))?;
        }
        Ok(())
    }

    /// The decision cost at `pods` with `policies` placed by `placement`.
    pub fn decision(
        &self,
        pods: usize,
        policies: usize,
        placement: Placement,
    ) -> Option<&DecisionRow> {
        self.decisions
            .iter()
            .find(|r| r.pods == pods && r.policies == policies && r.placement == placement)
    }

    /// The tables, with the targets judged.
    pub fn markdown(&self) -> String {
        let machine = &self.machine;
        let mut out = format!(
            "Measured on {} CPUs ({}), kernel {}, commit {}.\n\n",
            machine.cpus,
            machine.cpu_model,
            machine.kernel,
            self.commit.as_deref().unwrap_or("unknown"),
        );
        out.push_str(&self.decision_markdown());
        out.push_str(&self.rebuild_markdown());
        if !self.daemon.is_empty() {
            out.push_str(&daemon::markdown(&self.daemon));
        }
        out.push_str(&ca::markdown(&self.ca));
        if !self.cold_starts.is_empty() {
            out.push_str(&ca_cold_start::markdown(&self.cold_starts));
        }
        out
    }

    fn decision_markdown(&self) -> String {
        let mut out = String::from(
            "### Per-connection decision (in-process, median of 5 runs)\n\n\
             | pods | policies | where | route (ns) | decide (ns) |\n|---|---|---|---|---|\n",
        );
        for row in &self.decisions {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.0} |\n",
                row.pods,
                row.policies,
                row.placement.name(),
                row.route_ns,
                row.decide_ns
            ));
        }
        let (Some(&smallest), Some(&largest)) = (
            self.decisions.iter().map(|r| &r.pods).min(),
            self.decisions.iter().map(|r| &r.pods).max(),
        ) else {
            return out;
        };
        let (Some(&fewest), Some(&most)) = (
            self.decisions.iter().map(|r| &r.policies).min(),
            self.decisions.iter().map(|r| &r.policies).max(),
        ) else {
            return out;
        };
        let route_and_decide = |pods, policies, placement| {
            self.decision(pods, policies, placement)
                .map(|r| r.route_ns + r.decide_ns)
        };
        out.push('\n');
        if let (Some(small), Some(large)) = (
            route_and_decide(smallest, fewest, Placement::Elsewhere),
            route_and_decide(largest, fewest, Placement::Elsewhere),
        ) {
            let ratio = large / small;
            out.push_str(&format!(
                "- route + decide at {largest} pods / at {smallest} pods ({fewest} policies): \
                 **{ratio:.2}x** (target <= 1.2x: {})\n",
                verdict(ratio <= 1.2)
            ));
        }
        for placement in [Placement::Elsewhere, Placement::SameNamespace] {
            if let (Some(few), Some(many)) = (
                self.decision(largest, fewest, placement),
                self.decision(largest, most, placement),
            ) {
                let ratio = many.decide_ns / few.decide_ns;
                out.push_str(&format!(
                    "- decide with {most} / with {fewest} policies {} that do not select the \
                     destination: **{ratio:.2}x** (target: grows with the policies that select \
                     it, not with all: {})\n",
                    placement.name(),
                    verdict(ratio <= 1.5)
                ));
            }
        }
        if let (Some(few), Some(many)) = (
            self.decision(largest, fewest, Placement::SelectingTheDestination),
            self.decision(largest, most, Placement::SelectingTheDestination),
        ) {
            out.push_str(&format!(
                "- decide with {most} / with {fewest} policies all selecting the destination: \
                 {:.0}x ({:.0} ns per policy that applies: each must be evaluated)\n",
                many.decide_ns / few.decide_ns,
                (many.decide_ns - few.decide_ns) / (most - fewest) as f64
            ));
        }
        out.push('\n');
        out
    }

    fn rebuild_markdown(&self) -> String {
        let mut out = String::from(
            "### Registry rebuild (in-process)\n\n\
             | pods | validate + index (ms) | patch for one pod (ms) | file: parse + validate + index (ms) | file size (MiB) |\n\
             |---|---|---|---|---|\n",
        );
        for row in &self.rebuilds {
            out.push_str(&format!(
                "| {} | {:.1} | {} | {:.1} | {:.1} |\n",
                row.pods,
                row.validate_and_index_ms,
                row.patch_one_pod_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}")),
                row.file_load_ms,
                row.file_bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        out.push('\n');
        out
    }
}

/// A target's verdict in the table.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

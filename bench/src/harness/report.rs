//! The report: every raw figure (JSON), a Markdown table of medians, ratios
//! and targets, and the plots.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{HarnessError, plot, scenario::Scenario};
use crate::loadgen::latency;

/// How the benchmark ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Rounds: each scenario is measured once per round.
    pub rounds: u32,
    /// Length of each iperf3 run.
    pub throughput_seconds: f64,
    /// Length of each fixed-rate latency run.
    pub latency_seconds: f64,
    /// Requests per second of the latency runs.
    pub rate: f64,
    /// Length of each connection-rate run.
    pub connrate_seconds: f64,
    /// Connections in flight in the connection-rate runs.
    pub connrate_concurrency: usize,
    /// Idle connections held for the memory figure.
    pub held_connections: usize,
}

/// The machine the benchmark ran on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs online.
    pub cpus: usize,
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Machine {
    /// This machine.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map_or_else(String::new, |(_, model)| model.trim().to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            memory_mib: meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map_or(0, |kib| kib / 1024),
        }
    }
}

/// One measured quantity in one scenario: its value in every round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// What was measured (for example `throughput_1_stream`).
    pub metric: String,
    /// Through which path.
    pub scenario: Scenario,
    /// The value of each run, in the metric's unit.
    pub runs: Vec<f64>,
}

impl Figure {
    /// Connections per second (connect, 1 KiB each way, close).
    pub const CONNECTIONS_PER_SECOND: &str = "connections_per_second";
    /// Connections that failed in a connection-rate run.
    pub const CONNECTION_ERRORS: &str = "connection_errors";
    /// Both daemons' CPU seconds per GB received by iperf3 (one stream).
    pub const CPU_PER_GB: &str = "daemon_cpu_seconds_per_gb";
    /// Both daemons' CPU seconds per 1000 requests (16 connections).
    pub const CPU_PER_1000_REQUESTS: &str = "daemon_cpu_seconds_per_1000_requests";
    /// The percentiles recorded of every latency run.
    pub const PERCENTILES: [f64; 9] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0];

    /// iperf3 throughput with `streams` streams, in Gbit/s.
    pub fn throughput(streams: u32) -> String {
        match streams {
            1 => "throughput_1_stream_gbps".to_owned(),
            n => format!("throughput_{n}_streams_gbps"),
        }
    }

    /// Latency percentile `p` at the fixed rate over `connections`, in ms.
    pub fn latency(connections: usize, p: f64) -> String {
        format!("latency_{connections}_connections_p{p}_ms")
    }
}

/// Everything one benchmark measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The commit measured (`-dirty` if the tree had changes), if known.
    pub commit: Option<String>,
    /// How it ran.
    pub settings: Settings,
    /// Every figure.
    pub figures: Vec<Figure>,
}

/// The commit the benchmark binaries were built from (`git describe`).
pub fn commit() -> Option<String> {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|hash| hash.trim().to_owned())
}

impl Report {
    /// An empty report for a run with `settings` on this machine.
    pub fn new(settings: Settings) -> Self {
        Self {
            machine: Machine::this(),
            commit: commit(),
            settings,
            figures: Vec::new(),
        }
    }

    /// Adds one run's `value` of `metric` through `scenario`.
    pub fn push(&mut self, metric: impl Into<String>, scenario: Scenario, value: f64) {
        let metric = metric.into();
        match self
            .figures
            .iter_mut()
            .find(|f| f.metric == metric && f.scenario == scenario)
        {
            Some(figure) => figure.runs.push(value),
            None => self.figures.push(Figure {
                metric,
                scenario,
                runs: vec![value],
            }),
        }
    }

    /// Adds a latency run's percentiles, achieved rate and late requests.
    pub fn push_latency(&mut self, connections: usize, scenario: Scenario, run: &latency::Run) {
        let mut sorted = run.latencies_us.clone();
        sorted.sort_by(f64::total_cmp);
        for p in Figure::PERCENTILES {
            let value = percentile(&sorted, p).unwrap_or(f64::NAN) / 1000.0;
            self.push(Figure::latency(connections, p), scenario, value);
        }
        let prefix = format!("latency_{connections}_connections");
        self.push(
            format!("{prefix}_achieved_rate"),
            scenario,
            sorted.len() as f64 / run.seconds,
        );
        self.push(format!("{prefix}_late"), scenario, run.late as f64);
        self.push(format!("{prefix}_errors"), scenario, run.errors as f64);
    }

    /// Adds node `node`'s daemon's memory: `idle` and with `held` idle
    /// tunnelled connections open (`held_kib`), in KiB.
    pub fn push_memory(&mut self, node: &str, idle: f64, held_kib: f64, held: usize) {
        let mtls = Scenario::Mtls;
        self.push(format!("rss_idle_kib_{node}"), mtls, idle);
        self.push(format!("rss_held_kib_{node}"), mtls, held_kib);
        self.push(
            format!("rss_per_idle_connection_kib_{node}"),
            mtls,
            (held_kib - idle) / held as f64,
        );
    }

    /// The summary of `metric` through `scenario`, if measured.
    pub fn summary(&self, metric: &str, scenario: Scenario) -> Option<Summary> {
        self.figures
            .iter()
            .find(|f| f.metric == metric && f.scenario == scenario)
            .and_then(|f| Summary::of(&f.runs))
    }

    /// Reads a report written by [`Report::write`].
    pub fn read(path: &Path) -> Result<Self, HarnessError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| HarnessError::Read(path.display().to_string(), err))?;
        serde_json::from_str(&text)
            .map_err(|err| HarnessError::Output(format!("{}: {err}", path.display())))
    }

    /// Writes `report.json`, `report.md` and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), HarnessError> {
        let write = |name: &str, contents: String| {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(|err| HarnessError::Write(path, err))
        };
        std::fs::create_dir_all(dir).map_err(|err| HarnessError::Write(dir.to_owned(), err))?;
        let json = serde_json::to_string_pretty(self).expect("a report serializes");
        write("report.json", json + "\n")?;
        write("report.md", self.markdown())?;
        write("throughput.svg", plot::throughput(self))?;
        write("latency.svg", plot::latency(self))?;
        Ok(())
    }

    /// The Markdown table: medians with their range, ratios, and targets.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        out.push_str(&format!(
            "Measured on {} CPUs ({}), kernel {}, commit {}; {} rounds, scenarios interleaved. \
             Each cell: median (min-max) over the rounds.\n\n",
            machine.cpus,
            machine.cpu_model,
            machine.kernel,
            self.commit.as_deref().unwrap_or("unknown"),
            self.settings.rounds,
        ));
        out.push_str(
            "| measure | direct | relay | mtls | mtls / direct | mtls / relay | target |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for row in rows(self.settings.rate) {
            let cell = |scenario| {
                self.summary(&row.metric, scenario)
                    .map_or("-".to_owned(), |s| s.cell())
            };
            let ratio = |over: Scenario| {
                let (mtls, base) = (
                    self.summary(&row.metric, Scenario::Mtls)?,
                    self.summary(&row.metric, over)?,
                );
                Some(mtls.median / base.median)
            };
            let show = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.2}x"));
            let targets: Vec<String> = row
                .targets
                .iter()
                .map(|target| target.judge(ratio(target.over)))
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                row.label,
                cell(Scenario::Direct),
                cell(Scenario::Relay),
                cell(Scenario::Mtls),
                show(ratio(Scenario::Direct)),
                show(ratio(Scenario::Relay)),
                targets.join("; ")
            ));
        }
        out.push('\n');
        out.push_str(&self.other_figures());
        out.push('\n');
        out.push_str(&self.transport_figures());
        out.push('\n');
        out.push_str(&self.acceleration_figures());
        out
    }

    /// HBONE against the native protocol between the same two daemons: what
    /// speaking Istio's tunnel costs (no target: the native protocol is
    /// preferred between this project's daemons because it is cheaper).
    fn transport_figures(&self) -> String {
        let (hbone, native) = (Scenario::MtlsHbone, Scenario::Mtls);
        let mut out = String::from(
            "HBONE against the native protocol (hbone: mtls_hbone, both daemons `--no-native-tunnel`; native: mtls):\n\n\
             | measure | hbone | native | hbone / native | target |\n\
             |---|---|---|---|---|\n",
        );
        for (label, metric) in paired_rows() {
            let ratio = self.ratio(&metric, hbone, native);
            out.push_str(&self.paired_row(label, &metric, hbone, native, ratio, None));
        }
        out
    }

    /// Socket acceleration against none, across nodes and on one node, with
    /// the targets of issue 19.
    fn acceleration_figures(&self) -> String {
        let median = |metric: &str, scenario| self.summary(metric, scenario).map(|s| s.median);
        // Latency the mesh adds over the direct path of the same placement.
        let added = |metric: &str, mesh: Scenario, unaccelerated: Scenario, direct: Scenario| {
            let direct = median(metric, direct)?;
            Some((median(metric, mesh)? - direct) / (median(metric, unaccelerated)? - direct))
        };
        let cell = |metric: &str, scenario| {
            self.summary(metric, scenario)
                .map_or("-".to_owned(), |s| s.cell())
        };
        let p50 = Figure::latency(16, 50.0);
        let p99 = Figure::latency(16, 99.0);
        let mut out = String::from(
            "Socket acceleration across nodes (accelerated: mtls_accelerated; unaccelerated: mtls):\n\n\
             | measure | accelerated | unaccelerated | accelerated / unaccelerated | target |\n\
             |---|---|---|---|---|\n",
        );
        let (on, off) = (Scenario::MtlsAccelerated, Scenario::Mtls);
        for (label, metric) in paired_rows() {
            let (value, bound) = if metric == p50 {
                (
                    added(&p50, on, off, Scenario::Direct),
                    Some(Bound::AtMost(0.7)),
                )
            } else {
                let bound = match metric.as_str() {
                    m if m == Figure::throughput(1) || m == Figure::throughput(4) => {
                        Some(Bound::AtLeast(1.3))
                    }
                    Figure::CPU_PER_GB => Some(Bound::AtMost(0.65)),
                    m if m == p99 => Some(Bound::AtMost(1.0)),
                    _ => None,
                };
                (self.ratio(&metric, on, off), bound)
            };
            let label = if metric == p50 {
                "latency p50, 16 connections (ms; ratio: latency added over direct)"
            } else {
                label
            };
            out.push_str(&self.paired_row(label, &metric, on, off, value, bound));
        }
        out.push_str(
            "\nOn one node (client and server pods on the same node):\n\n\
             | measure | direct | mesh, accelerated | mesh, unaccelerated | accelerated / direct | accelerated / unaccelerated | target |\n\
             |---|---|---|---|---|---|---|\n",
        );
        let (direct, on, off) = (
            Scenario::DirectSameNode,
            Scenario::MtlsSameNodeAccelerated,
            Scenario::MtlsSameNode,
        );
        for (label, metric, target) in [
            (
                "throughput, 1 stream (Gbit/s)",
                Figure::throughput(1),
                Some(0.8),
            ),
            (
                "throughput, 4 streams (Gbit/s)",
                Figure::throughput(4),
                Some(0.8),
            ),
            (
                "daemon CPU seconds per GB (1 stream)",
                Figure::CPU_PER_GB.to_owned(),
                None,
            ),
            ("latency p50, 16 connections (ms)", p50.clone(), None),
            ("latency p99, 16 connections (ms)", p99.clone(), None),
            (
                "new connections/s",
                Figure::CONNECTIONS_PER_SECOND.to_owned(),
                None,
            ),
        ] {
            let over_direct = self.ratio(&metric, on, direct);
            let verdict = target.map_or(String::new(), |b| judge(over_direct, Bound::AtLeast(b)).1);
            out.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {} | {verdict} |\n",
                cell(&metric, direct),
                cell(&metric, on),
                cell(&metric, off),
                show_ratio(over_direct),
                show_ratio(self.ratio(&metric, on, off)),
            ));
        }
        out
    }

    /// The ratio of `metric`'s medians through `over` and through `base`.
    fn ratio(&self, metric: &str, over: Scenario, base: Scenario) -> Option<f64> {
        Some(self.summary(metric, over)?.median / self.summary(metric, base)?.median)
    }

    /// A table row comparing `metric` through `on` and through `off`:
    /// both cells, `value` (their ratio, or another derived figure) and
    /// whether it meets `bound`.
    fn paired_row(
        &self,
        label: &str,
        metric: &str,
        on: Scenario,
        off: Scenario,
        value: Option<f64>,
        bound: Option<Bound>,
    ) -> String {
        let cell = |scenario| {
            self.summary(metric, scenario)
                .map_or("-".to_owned(), |s| s.cell())
        };
        let verdict = bound.map_or(String::new(), |bound| judge(value, bound).1);
        format!(
            "| {label} | {} | {} | {} | {verdict} |\n",
            cell(on),
            cell(off),
            show_ratio(value)
        )
    }

    /// The figures outside the three-way comparison: full handshakes, CPU
    /// and memory of the daemons.
    fn other_figures(&self) -> String {
        let mut out = String::from("| figure | value | target |\n|---|---|---|\n");
        let conn = Figure::CONNECTIONS_PER_SECOND;
        let (mesh, per_connection, full) = (
            self.summary(conn, Scenario::Mtls),
            self.summary(conn, Scenario::MtlsPerConnection),
            self.summary(conn, Scenario::MtlsFullHandshake),
        );
        if let (Some(mesh), Some(per_connection), Some(full)) = (mesh, per_connection, full) {
            let target = Target {
                over: Scenario::MtlsFullHandshake,
                bound: Bound::AtLeast(2.0),
            };
            out.push_str(&format!(
                "| new connections/s, mtls with a tunnel per connection (resumed handshakes) | {} | resumed / full: {:.2}x |\n",
                per_connection.cell(),
                per_connection.median / full.median,
            ));
            out.push_str(&format!(
                "| new connections/s, mtls with a tunnel per connection, resumption off (full handshakes) | {} | mtls / full: {} |\n",
                full.cell(),
                target.judge(Some(mesh.median / full.median)),
            ));
        }
        for (metric, label) in [
            (Figure::CPU_PER_GB, "daemon CPU seconds per GB (1 stream)"),
            (
                Figure::CPU_PER_1000_REQUESTS,
                "daemon CPU seconds per 1000 requests (16 connections)",
            ),
        ] {
            for scenario in [Scenario::Relay, Scenario::Mtls] {
                if let Some(s) = self.summary(metric, scenario) {
                    out.push_str(&format!(
                        "| {label}, {} | {} | |\n",
                        scenario.name(),
                        s.cell()
                    ));
                }
            }
        }
        let held = self.settings.held_connections;
        for node in ["node1", "node2"] {
            let rss = |what: &str| self.summary(&format!("{what}_{node}"), Scenario::Mtls);
            if let (Some(idle), Some(per)) =
                (rss("rss_idle_kib"), rss("rss_per_idle_connection_kib"))
            {
                let verdict = if per.median <= 16.0 { "met" } else { "missed" };
                out.push_str(&format!(
                    "| {node} daemon RSS idle / growth per idle tunnelled connection ({held} held) | {:.0} KiB / {:.1} KiB | <= 16 KiB: {verdict} |\n",
                    idle.median, per.median
                ));
            }
        }
        out
    }
}

/// The figures every paired comparison shows, with their labels.
fn paired_rows() -> [(&'static str, String); 7] {
    [
        ("throughput, 1 stream (Gbit/s)", Figure::throughput(1)),
        ("throughput, 4 streams (Gbit/s)", Figure::throughput(4)),
        (
            "daemon CPU seconds per GB (1 stream)",
            Figure::CPU_PER_GB.to_owned(),
        ),
        (
            "daemon CPU seconds per 1000 requests",
            Figure::CPU_PER_1000_REQUESTS.to_owned(),
        ),
        (
            "latency p50, 16 connections (ms)",
            Figure::latency(16, 50.0),
        ),
        (
            "latency p99, 16 connections (ms)",
            Figure::latency(16, 99.0),
        ),
        (
            "new connections/s",
            Figure::CONNECTIONS_PER_SECOND.to_owned(),
        ),
    ]
}

/// A ratio as shown in tables.
fn show_ratio(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_owned(), |r| format!("{r:.2}x"))
}

/// `value` shown, and whether it meets `bound`.
fn judge(value: Option<f64>, bound: Bound) -> (String, String) {
    let verdict = match (value, bound) {
        (None, _) => "not measured".to_owned(),
        (Some(v), Bound::AtLeast(b)) => format!(">= {b}: {}", met(v >= b)),
        (Some(v), Bound::AtMost(b)) => format!("<= {b}: {}", met(v <= b)),
    };
    (show_ratio(value), verdict)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

/// The median and range of a figure's runs.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Smallest run.
    pub min: f64,
    /// Median run.
    pub median: f64,
    /// Largest run.
    pub max: f64,
}

impl Summary {
    /// The summary of `runs`; `None` if there are none.
    pub fn of(runs: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => return None,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self {
            min: sorted[0],
            median,
            max: sorted[sorted.len() - 1],
        })
    }

    fn cell(&self) -> String {
        format!(
            "{} ({}-{})",
            significant(self.median),
            significant(self.min),
            significant(self.max)
        )
    }
}

/// `value` with three significant digits.
fn significant(value: f64) -> String {
    let magnitude = if value == 0.0 {
        0
    } else {
        value.abs().log10().floor() as i32
    };
    let decimals = (2 - magnitude).max(0) as usize;
    format!("{value:.decimals$}")
}

/// The `p`th percentile (nearest rank) of `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // The small subtraction keeps float error (0.999 * 1000 = 999.0000000000001)
    // from moving the rank up by one.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A row of the comparison table.
struct Row {
    metric: String,
    label: String,
    targets: Vec<Target>,
}

/// A target on the ratio of mtls's median to another scenario's.
struct Target {
    over: Scenario,
    bound: Bound,
}

#[derive(Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn judge(&self, ratio: Option<f64>) -> String {
        let (sign, bound, met) = match (self.bound, ratio) {
            (Bound::AtLeast(b), r) => (">=", b, r.map(|r| r >= b)),
            (Bound::AtMost(b), r) => ("<=", b, r.map(|r| r <= b)),
        };
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        };
        format!("mtls / {} {sign} {bound}: {verdict}", self.over.name())
    }
}

/// The comparison table's rows, with the targets of issue 8.
fn rows(rate: f64) -> Vec<Row> {
    let at_least = |over, b| Target {
        over,
        bound: Bound::AtLeast(b),
    };
    let at_most = |over, b| Target {
        over,
        bound: Bound::AtMost(b),
    };
    let mut rows = vec![
        Row {
            metric: Figure::throughput(1),
            label: "throughput, 1 stream (Gbit/s)".to_owned(),
            targets: vec![
                at_least(Scenario::Direct, 0.25),
                at_least(Scenario::Relay, 0.85),
            ],
        },
        Row {
            metric: Figure::throughput(4),
            label: "throughput, 4 streams (Gbit/s)".to_owned(),
            targets: vec![],
        },
    ];
    for connections in [16, 64] {
        for p in [50.0, 90.0, 99.0, 99.9] {
            let targets = match p {
                50.0 => vec![at_most(Scenario::Direct, 2.5)],
                99.0 => vec![at_most(Scenario::Relay, 1.25)],
                _ => vec![],
            };
            rows.push(Row {
                metric: Figure::latency(connections, p),
                label: format!("latency p{p} at {rate} req/s, {connections} connections (ms)"),
                targets,
            });
        }
    }
    rows.push(Row {
        metric: Figure::CONNECTIONS_PER_SECOND.to_owned(),
        label: "new connections/s (1 KiB each way)".to_owned(),
        targets: vec![at_least(Scenario::Direct, 0.25)],
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            rounds: 3,
            throughput_seconds: 1.0,
            latency_seconds: 1.0,
            rate: 1000.0,
            connrate_seconds: 1.0,
            connrate_concurrency: 1,
            held_connections: 100,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(500.0));
        assert_eq!(percentile(&sorted, 99.9), Some(999.0));
        assert_eq!(percentile(&sorted, 100.0), Some(1000.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_summary_has_the_median_and_range_of_finite_runs() {
        let s = Summary::of(&[3.0, 1.0, f64::NAN, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Summary::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(significant(0.14234), "0.142");
        assert_eq!(significant(12664.4), "12664");
    }

    #[test]
    fn the_table_shows_ratios_of_medians_and_judges_targets() {
        let mut report = Report::new(settings());
        for (scenario, runs) in [
            (Scenario::Direct, [20.0, 24.0, 22.0]),
            (Scenario::Relay, [8.0, 9.0, 10.0]),
            (Scenario::Mtls, [5.0, 6.0, 4.0]),
        ] {
            for value in runs {
                report.push(Figure::throughput(1), scenario, value);
            }
        }
        let table = report.markdown();
        let row = table
            .lines()
            .find(|line| line.starts_with("| throughput, 1 stream"))
            .unwrap();
        // 5 / 22 and 5 / 9.
        assert!(row.contains("| 0.23x | 0.56x |"), "{row}");
        assert!(row.contains("22.0 (20.0-24.0)"), "{row}");
        assert!(row.contains("mtls / direct >= 0.25: missed"), "{row}");
        assert!(row.contains("mtls / relay >= 0.85: missed"), "{row}");
        // Rows with nothing measured say so.
        assert!(table.contains("| - | - | - | - | - |"), "{table}");
    }

    #[test]
    fn latency_runs_are_reduced_to_percentiles_in_milliseconds() {
        let mut report = Report::new(settings());
        let run = latency::Run {
            latencies_us: (1..=1000).rev().map(f64::from).collect(),
            errors: 0,
            late: 2,
            seconds: 1.0,
        };
        report.push_latency(16, Scenario::Mtls, &run);
        let p99 = report
            .summary(&Figure::latency(16, 99.0), Scenario::Mtls)
            .unwrap();
        assert_eq!(p99.median, 0.99);
        let rate = report
            .summary("latency_16_connections_achieved_rate", Scenario::Mtls)
            .unwrap();
        assert_eq!(rate.median, 1000.0);
    }
}

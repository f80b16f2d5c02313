//! The daemon process's own metrics, under the names Prometheus client
//! libraries give them (`process_*`), read from `/proc` at each scrape:
//! Istio's ztunnel dashboard charts `process_open_fds`, and the rest are what
//! an operator looks at next (each tunnelled connection holds two sockets).

use std::fs;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// Reads `/proc/self` when scraped.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What `/proc/self` says, each when it could be read.
#[derive(Debug, Default, PartialEq)]
struct Process {
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    resident_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<u64>,
}

impl Process {
    fn read() -> Self {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        let boot_time = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        let (cpu_seconds, start_time_seconds) = match stat.as_deref().and_then(stat_fields) {
            Some((ticks, start_ticks)) => (
                Some(ticks as f64 / CLOCK_TICKS),
                boot_time.map(|boot| (boot + start_ticks as f64 / CLOCK_TICKS) as u64),
            ),
            None => (None, None),
        };
        Self {
            open_fds: fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft),
            resident_bytes: fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| resident_kib(&status))
                .map(|kib| kib * 1024),
            cpu_seconds,
            start_time_seconds,
        }
    }
}

/// `USER_HZ`: the unit of `/proc/<pid>/stat`'s times, 100 on every Linux
/// architecture this daemon runs on.
const CLOCK_TICKS: f64 = 100.0;

/// User plus system CPU ticks, and the start time in ticks since boot, from
/// `/proc/<pid>/stat` (fields 14, 15 and 22; the command name, field 2, may
/// hold spaces and parentheses, so fields are counted after its last `)`).
fn stat_fields(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(22)?))
}

/// Resident memory in KiB, `VmRSS` of `/proc/<pid>/status`.
fn resident_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// The boot time (Unix seconds), `btime` of `/proc/stat`.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let process = Process::read();
        let gauges = [
            (
                "process_open_fds",
                "Open file descriptors",
                process.open_fds,
            ),
            ("process_max_fds", "The open-file limit", process.max_fds),
            (
                "process_resident_memory_bytes",
                "Resident memory",
                process.resident_bytes,
            ),
            (
                "process_start_time_seconds",
                "When the process started (Unix time)",
                process.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value as i64);
                gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
            }
        }
        if let Some(seconds) = process.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let help = "User and system CPU time";
            let descriptor = "process_cpu_seconds";
            counter.encode(encoder.encode_descriptor(
                descriptor,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed_even_with_odd_command_names() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    150 50 0 0 20 0 3 0 98765 1000000 400 18446744073709551615";
        assert_eq!(stat_fields(stat), Some((200, 98765)));
        assert_eq!(stat_fields("garbage"), None);
        assert_eq!(
            resident_kib("Name:\tztunnel\nVmRSS:\t   17248 kB\nThreads: 4\n"),
            Some(17248)
        );
        assert_eq!(resident_kib("Name:\tztunnel\n"), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1765000000\nprocesses 9\n"),
            Some(1765000000.0)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_read() {
        let process = Process::read();
        assert!(process.open_fds.is_some_and(|n| n >= 3), "{process:?}");
        assert!(
            process.resident_bytes.is_some_and(|b| b > 1 << 20),
            "{process:?}"
        );
        assert!(process.cpu_seconds.is_some() && process.start_time_seconds.is_some());
    }
}

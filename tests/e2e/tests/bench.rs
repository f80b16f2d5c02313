//! The benchmark harness itself, end to end with tiny runs: every scenario
//! and measurement produces figures, and the report is written.

use ztunnel_bench::harness::{
    self, Environment,
    report::{Figure, Settings},
    scenario::Scenario,
};

#[test]
fn a_short_benchmark_measures_every_scenario_and_writes_its_report() {
    let settings = Settings {
        rounds: 1,
        throughput_seconds: 1.0,
        latency_seconds: 1.0,
        rate: 200.0,
        connrate_seconds: 1.0,
        connrate_concurrency: 2,
        held_connections: 200,
    };
    let environment = Environment {
        bin_dir: ztunnel_e2e::bin_dir(),
        cluster: ztunnel_e2e::unique_name(),
        keep_on_failure: false,
    };
    let report = harness::run(&settings, &environment).expect("the benchmark runs");
    let value = |metric: &str, scenario| {
        report
            .summary(metric, scenario)
            .unwrap_or_else(|| panic!("no {metric} for {scenario:?}"))
            .median
    };
    for scenario in Scenario::MAIN.into_iter().chain(Scenario::TRANSPORT) {
        for streams in [1, 4] {
            assert!(value(&Figure::throughput(streams), scenario) > 0.1);
        }
        for connections in [16, 64] {
            let p50 = value(&Figure::latency(connections, 50.0), scenario);
            let p99 = value(&Figure::latency(connections, 99.0), scenario);
            assert!(p50 > 0.0 && p50 <= p99, "{scenario:?}: p50 {p50} p99 {p99}");
            let errors = format!("latency_{connections}_connections_errors");
            assert_eq!(value(&errors, scenario), 0.0);
            // At 200 requests/s for a second, about 200 requests were made.
            let rate = value(
                &format!("latency_{connections}_connections_achieved_rate"),
                scenario,
            );
            assert!(rate > 100.0, "{scenario:?}: {rate} requests/s");
        }
        assert!(value(Figure::CONNECTIONS_PER_SECOND, scenario) > 10.0);
        assert_eq!(value(Figure::CONNECTION_ERRORS, scenario), 0.0);
    }
    assert!(value(Figure::CONNECTIONS_PER_SECOND, Scenario::MtlsFullHandshake) > 10.0);
    // The daemons moved the bytes in the meshed scenarios, not in the direct one.
    assert!(
        value(Figure::CPU_PER_GB, Scenario::Mtls) > value(Figure::CPU_PER_GB, Scenario::Direct)
    );
    for node in ["node1", "node2"] {
        let held = value(&format!("rss_held_kib_{node}"), Scenario::Mtls);
        let idle = value(&format!("rss_idle_kib_{node}"), Scenario::Mtls);
        assert!(held > idle, "{node}: holding 200 connections costs memory");
    }

    let dir = tempfile::tempdir().unwrap();
    report.write(dir.path()).unwrap();
    for file in ["report.json", "report.md", "throughput.svg", "latency.svg"] {
        let written = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(!written.is_empty(), "{file}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert!(json["machine"]["cpus"].as_u64().unwrap() >= 1);
    let markdown = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(markdown.contains("| throughput, 1 stream (Gbit/s) |"));
    // HBONE's table has a ratio for every row.
    let hbone = markdown
        .split("HBONE against the native protocol")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").nth(1))
        .expect("an HBONE table");
    assert_eq!(hbone.lines().count(), 2 + 7, "{hbone}");
    assert!(!hbone.contains("| - |"), "{hbone}");
}

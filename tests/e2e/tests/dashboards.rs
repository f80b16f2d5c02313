//! Istio's dashboards and Kiali over real traffic: the TCP panels of Istio's
//! Workload and Service dashboards and the TCP query Kiali builds its graph
//! from (written here after their published queries), run by `promtool`
//! (installed by `cargo xtask setup`) over two scrapes of both daemons, must
//! return the expected series: every workload, service and edge, with every
//! label they group by.

use std::{collections::BTreeMap, fmt::Write, process::Command, time::Duration};

use ztunnel_cluster::Cluster;
use ztunnel_e2e::{http_server, mesh, metric_sum, scrape, within};

/// One exchange from `from` to `url`.
fn get(cluster: &Cluster, from: &str, url: &str) {
    let body = cluster
        .run(from, "curl", &["-sS", "--max-time", "5", url])
        .unwrap();
    assert!(body.starts_with("hello from"), "{body}");
}

/// The labels Kiali groups TCP edges by (its namespace graph).
const KIALI_GROUP_BY: &str = "source_cluster,source_workload_namespace,source_workload,\
    source_canonical_service,source_canonical_revision,destination_cluster,\
    destination_service_namespace,destination_service,destination_service_name,\
    destination_workload_namespace,destination_workload,destination_canonical_service,\
    destination_canonical_revision,response_flags";

/// A query and the label sets it must return (each with a positive value).
struct Expect {
    what: String,
    query: String,
    series: Vec<Vec<(&'static str, &'static str)>>,
}

/// The series of both nodes that dashboards chart from Istio's names
/// (`istio_*`, `process_*`), as promtool input series (one sample per
/// scrape, a minute apart; `_` where a series was not there yet).
fn input_series(scrapes: &[Vec<(String, Vec<prometheus_parse::Sample>)>]) -> String {
    let mut series: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for (index, scrape) in scrapes.iter().enumerate() {
        for (node, samples) in scrape {
            for sample in samples.iter().filter(|s| charted(&s.metric)) {
                // OpenMetrics counters parse as untyped (their type line
                // names the family without `_total`).
                let (prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value)) = sample.value
                else {
                    continue;
                };
                let mut labels: Vec<String> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                labels.push(format!("instance=\"{node}\""));
                labels.sort();
                let name = format!("{}{{{}}}", sample.metric, labels.join(","));
                series
                    .entry(name)
                    .or_insert_with(|| vec![None; scrapes.len()])[index] = Some(value);
            }
        }
    }
    let mut out = String::new();
    for (name, values) in series {
        let values: Vec<String> = values
            .iter()
            .map(|v| v.map_or_else(|| "_".to_owned(), |v| v.to_string()))
            .collect();
        let _ = writeln!(
            out,
            "      - series: '{name}'\n        values: '{}'",
            values.join(" ")
        );
    }
    out
}

/// Whether `metric` is one of the families [`input_series`] passes on.
fn charted(metric: &str) -> bool {
    metric.starts_with("istio_") || metric.starts_with("process_")
}

/// The queries of the project's own dashboard (`deploy/monitoring`) that
/// read only [`charted`] families, by panel title, with every node selected.
fn own_dashboard_queries() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/monitoring/grafana-dashboard.yaml");
    let config: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(config["data"]["ztunnel.json"].as_str().unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let families: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| charted(word) || word.starts_with("ztunnel_"))
                .collect();
            if !families.is_empty() && families.iter().all(|family| charted(family)) {
                queries.push((
                    panel["title"].as_str().unwrap().to_owned(),
                    expr.replace("$instance", ".*"),
                ));
            }
        }
    }
    queries
}

#[test]
fn istios_dashboards_and_kialis_graph_find_the_traffic() {
    let cluster = mesh(2);
    let _web1 = http_server(&cluster, "web-1");
    let _web2 = http_server(&cluster, "web-2");
    let web2 = format!("http://{}:8080/", cluster.pod("web-2").unwrap().ipv4);
    let closed_port = format!("http://{}:8089/", cluster.pod("web-2").unwrap().ipv4);
    let service = cluster.status().service("demo", "web").cloned().unwrap();
    let vip = format!("http://{}:{}/", service.ipv4, service.port);
    // Through the service (both pods, one on each node), to a pod's address,
    // and plaintext from outside the mesh.
    let traffic = |cluster: &Cluster| {
        for _ in 0..4 {
            get(cluster, "client-1", &vip);
        }
        get(cluster, "client-1", &web2);
        get(cluster, "legacy-1", &web2);
        // And one that fails: nothing listens on the port.
        let refused = cluster.run(
            "client-1",
            "curl",
            &["-sS", "--max-time", "5", &closed_port],
        );
        assert!(refused.is_err(), "{refused:?}");
    };
    let closed = |cluster: &Cluster| {
        ["node1", "node2"].map(|node| {
            metric_sum(
                &scrape(cluster, node),
                "istio_tcp_connections_closed_total",
                &[],
            )
        })
    };
    let scrapes = (0..2)
        .map(|round| {
            traffic(&cluster);
            // Each round: 4 + 1 connections recorded by the source side and by
            // the destination side, the plaintext one by the destination only
            // (same-node ones twice on node1).
            within(Duration::from_secs(3), "every connection recorded", || {
                let [node1, node2] = closed(&cluster);
                node1 + node2 >= 11.0 * (round + 1) as f64
            });
            ["node1", "node2"]
                .map(|node| (node.to_owned(), scrape(&cluster, node)))
                .to_vec()
        })
        .collect::<Vec<_>>();

    let web_service = "web.demo.svc.cluster.local";
    let mut expectations = vec![
        Expect {
            what: "Workload dashboard (web): Bytes Received from Incoming TCP Connection, mTLS".into(),
            query: r#"round(sum(irate(istio_tcp_received_bytes_total{reporter=~"destination", connection_security_policy="mutual_tls", destination_workload_namespace=~"demo", destination_workload=~"web", source_workload=~".*", source_workload_namespace=~".*"}[2m])) by (source_workload, source_workload_namespace), 0.001)"#.to_owned(),
            series: vec![vec![("source_workload", "client"), ("source_workload_namespace", "demo")]],
        },
        Expect {
            what: "Workload dashboard (web): Bytes Received from Incoming TCP Connection, not mTLS".into(),
            query: r#"round(sum(irate(istio_tcp_received_bytes_total{reporter=~"destination", connection_security_policy!="mutual_tls", destination_workload_namespace=~"demo", destination_workload=~"web", source_workload=~".*", source_workload_namespace=~".*"}[2m])) by (source_workload, source_workload_namespace), 0.001)"#.to_owned(),
            series: vec![vec![("source_workload", "legacy"), ("source_workload_namespace", "legacy")]],
        },
        Expect {
            what: "Workload dashboard (client): Bytes Received from Outgoing TCP Connection, mTLS".into(),
            query: r#"round(sum(irate(istio_tcp_sent_bytes_total{reporter="source", connection_security_policy="mutual_tls", source_workload_namespace=~"demo", source_workload=~"client", destination_service=~".*"}[2m])) by (destination_service), 0.001)"#.to_owned(),
            series: vec![
                vec![("destination_service", "unknown")],
                vec![("destination_service", web_service)],
            ],
        },
        Expect {
            what: "Service dashboard: its services variable".into(),
            query: r#"sum(istio_tcp_sent_bytes_total{}) by (destination_service)"#.to_owned(),
            series: vec![
                vec![("destination_service", "unknown")],
                vec![("destination_service", web_service)],
            ],
        },
        Expect {
            what: "Service dashboard (web): Bytes Received from Incoming TCP Connection by destination workload".into(),
            query: format!(r#"round(sum(irate(istio_tcp_received_bytes_total{{reporter="destination", connection_security_policy="mutual_tls", destination_service="{web_service}", destination_workload=~".*", destination_workload_namespace=~".*"}}[2m])) by (destination_workload, destination_workload_namespace), 0.001)"#),
            series: vec![vec![("destination_workload", "web"), ("destination_workload_namespace", "demo")]],
        },
        Expect {
            what: "Kiali's namespace graph: TCP edges reported by the destination".into(),
            query: format!(r#"sum(rate(istio_tcp_sent_bytes_total{{reporter="destination",destination_workload_namespace="demo"}}[2m])) by ({KIALI_GROUP_BY}) > 0"#),
            series: [("client", "demo"), ("legacy", "legacy")]
                .into_iter()
                .map(|(source, namespace)| {
                    vec![
                        ("source_cluster", "Kubernetes"),
                        ("source_workload_namespace", namespace),
                        ("source_workload", source),
                        ("source_canonical_service", source),
                        ("source_canonical_revision", "latest"),
                        ("destination_cluster", "Kubernetes"),
                        ("destination_service_namespace", "demo"),
                        ("destination_service", web_service),
                        ("destination_service_name", "web"),
                        ("destination_workload_namespace", "demo"),
                        ("destination_workload", "web"),
                        ("destination_canonical_service", "web"),
                        ("destination_canonical_revision", "latest"),
                        ("response_flags", "-"),
                    ]
                })
                .collect(),
        },
    ];

    // Every panel of the project's dashboard charting Istio's names returns
    // something (a misspelt metric or label returns nothing, silently).
    let own = own_dashboard_queries();
    assert!(own.len() >= 8, "{own:?}");
    for (title, query) in own {
        expectations.push(Expect {
            what: format!("ztunnel dashboard: {title}"),
            query: format!("count({query})"),
            series: vec![vec![]],
        });
    }

    // Each query wrapped in sgn(): a series with traffic between the scrapes is 1.
    let mut tests = String::new();
    for expect in &expectations {
        let _ = writeln!(
            tests,
            "      - expr: 'sgn({})'\n        eval_time: 1m\n        exp_samples:",
            expect.query.replace('\'', "''")
        );
        for series in &expect.series {
            let labels: Vec<String> = series.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let _ = writeln!(
                tests,
                "          - labels: '{{{}}}'\n            value: 1",
                labels.join(",")
            );
        }
    }
    let file = format!(
        "tests:\n  - interval: 1m\n    input_series:\n{}    promql_expr_test:\n{tests}",
        input_series(&scrapes)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboards.test.yaml");
    std::fs::write(&path, &file).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs (installed by `cargo xtask setup`)");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let whats: Vec<&str> = expectations.iter().map(|e| e.what.as_str()).collect();
    assert!(out.status.success(), "{whats:#?}\n{said}\n{file}");
}

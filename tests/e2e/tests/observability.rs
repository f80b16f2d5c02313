//! Observability after real traffic: Istio's TCP metrics with their
//! labels on both reporters, policy counters, the JSON access log, and the
//! admin endpoint (readiness, config dump, log level) and `ztunnel ctl`.

use std::{process::Command, time::Duration};

use ztunnel_cluster::Cluster;
use ztunnel_e2e::{
    ALLOW_CLIENT, access_log, apply_policy, ctl, ctl_status, daemon_log, http_server, mesh,
    metric_sum, scrape, wait_tunnel_idle, within,
};

fn get(cluster: &Cluster, from: &str, url: &str) -> bool {
    cluster
        .run(from, "curl", &["-sS", "--max-time", "5", url])
        .is_ok_and(|body| body.starts_with("hello from"))
}

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const FAILED: &str = "istio_tcp_connections_failed_total";

#[test]
fn tcp_metrics_carry_istio_labels_on_both_reporters() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let _web1 = http_server(&cluster, "web-1");
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    for _ in 0..3 {
        assert!(get(&cluster, "client-1", &format!("http://{web2}:8080/")));
    }
    assert!(
        get(&cluster, "client-1", "http://10.96.0.10/"),
        "through the web service VIP"
    );
    assert!(get(&cluster, "legacy-1", &format!("http://{web2}:8080/")));
    let bytes = cluster
        .run(
            "client-1",
            "sh",
            &[
                "-c",
                &format!("curl -sS http://{web2}:8080/bytes/1000000 | wc -c"),
            ],
        )
        .unwrap();
    assert_eq!(bytes.trim(), "1000000");

    let mtls_source = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_workload_namespace", "demo"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        ("destination_workload", "web"),
        ("destination_workload_namespace", "demo"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/demo/sa/web",
        ),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ];
    let mtls_destination = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        ("destination_workload", "web"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/demo/sa/web",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    // Closed connections are counted once both sides are done: wait for them.
    within(
        Duration::from_secs(3),
        "the daemons count the connections",
        || {
            metric_sum(&scrape(&cluster, "node1"), CLOSED, &mtls_source) >= 4.0
                && metric_sum(&scrape(&cluster, "node2"), CLOSED, &mtls_destination) >= 4.0
        },
    );
    let node1 = scrape(&cluster, "node1");
    let node2 = scrape(&cluster, "node2");
    // Five connections from client-1 reached web-2: four direct, one by VIP
    // (which may also have picked web-1, on node1).
    let opened = metric_sum(&node1, OPENED, &mtls_source);
    assert!((4.0..=5.0).contains(&opened), "{opened}");
    assert_eq!(
        metric_sum(&node1, OPENED, &mtls_source),
        metric_sum(&node1, CLOSED, &mtls_source)
    );
    assert!(
        metric_sum(&node1, SENT, &mtls_source) >= 1_000_000.0,
        "bytes sent to the client"
    );
    assert!(metric_sum(&node2, SENT, &mtls_destination) >= 1_000_000.0);
    assert!(
        metric_sum(&node2, RECEIVED, &mtls_destination) > 0.0,
        "request bytes"
    );
    let via_vip = [
        ("reporter", "source"),
        ("destination_service", "web.demo.svc.cluster.local"),
    ];
    assert_eq!(metric_sum(&node1, OPENED, &via_vip), 1.0);

    // Plaintext from outside the mesh: no principal, no mutual TLS.
    let plaintext = [
        ("reporter", "destination"),
        ("source_workload", "legacy"),
        ("source_workload_namespace", "legacy"),
        ("source_principal", "unknown"),
        ("destination_workload", "web"),
        ("connection_security_policy", "unknown"),
    ];
    assert_eq!(metric_sum(&node2, OPENED, &plaintext), 1.0);

    // The node's own state: pods captured, certificates held and when they expire.
    assert_eq!(metric_sum(&node1, "ztunnel_enrolled_pods", &[]), 2.0);
    assert_eq!(
        metric_sum(&node1, "ztunnel_ebpf_programs_attached", &[]),
        5.0
    );
    let web = [("identity", "spiffe://cluster.local/ns/demo/sa/web")];
    let expiry = metric_sum(&node1, "ztunnel_certificate_expiry_timestamp_seconds", &web);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(expiry > now + 3600.0, "{expiry} vs now {now}");
    assert!(metric_sum(&node1, "ztunnel_certificate_renewals_total", &web) >= 1.0);
    let issued = [web[0], ("result", "success")];
    assert!(metric_sum(&node1, "ztunnel_certificate_requests_total", &issued) >= 1.0);
    assert!(
        node1
            .iter()
            .any(|s| s.metric.starts_with("ztunnel_ca_request_duration_seconds")),
        "the CA request latency histogram"
    );
}

/// Istio's labels of a workload of the local cluster (`demo/<app>`, run as
/// if by a Deployment called `<app>`), on side `side` (`source` or
/// `destination`).
fn workload_labels(side: &'static str, app: &'static str) -> Vec<(String, &'static str)> {
    [
        ("workload", app),
        ("workload_namespace", "demo"),
        ("app", app),
        ("version", "latest"),
        ("cluster", "Kubernetes"),
        ("canonical_service", app),
        ("canonical_revision", "latest"),
    ]
    .into_iter()
    .map(|(label, value)| (format!("{side}_{label}"), value))
    .collect()
}

/// `pairs` as the borrowed pairs `metric_sum` takes.
fn borrowed<'a>(pairs: &'a [(String, &'a str)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

#[test]
fn every_path_is_recorded_with_istios_full_label_set() {
    let cluster = mesh(2);
    let _web1 = http_server(&cluster, "web-1");
    let _web2 = http_server(&cluster, "web-2");
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    let service = cluster.status().service("demo", "web").cloned().unwrap();
    let vip = format!("http://{}:{}/", service.ipv4, service.port);
    // Through the VIP until it has landed once on each node's pod.
    let mut landed = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = cluster.run("client-1", "curl", &["-sS", "--max-time", "5", &vip]);
        landed.insert(answer.unwrap());
        if landed.len() == 2 {
            break;
        }
    }
    assert_eq!(landed.len(), 2, "{landed:?}");
    // Plaintext from outside the mesh.
    assert!(get(&cluster, "legacy-1", &format!("http://{web2}:8080/")));

    let client = workload_labels("source", "client");
    let web = workload_labels("destination", "web");
    let mut mesh_labels: Vec<(String, &str)> = [client.clone(), web.clone()].concat();
    mesh_labels.extend(
        [
            (
                "source_principal",
                "spiffe://cluster.local/ns/demo/sa/client",
            ),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/demo/sa/web",
            ),
            ("destination_service", "web.demo.svc.cluster.local"),
            ("destination_service_name", "web"),
            ("destination_service_namespace", "demo"),
            ("request_protocol", "tcp"),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let with_reporter = |reporter: &'static str| {
        let mut labels = mesh_labels.clone();
        labels.push(("reporter".to_owned(), reporter));
        labels
    };
    let (source, destination) = (with_reporter("source"), with_reporter("destination"));
    // Across nodes: node1 reports as source, node2 as destination (which
    // guesses the service from the pod and port, as Istio's ztunnel does).
    // On one node: node1 reports both sides, alike.
    within(
        Duration::from_secs(3),
        "every side counts its connections",
        || {
            let (node1, node2) = (scrape(&cluster, "node1"), scrape(&cluster, "node2"));
            metric_sum(&node1, CLOSED, &borrowed(&source)) >= 2.0
                && metric_sum(&node1, CLOSED, &borrowed(&destination)) >= 1.0
                && metric_sum(&node2, CLOSED, &borrowed(&destination)) >= 1.0
        },
    );
    let plaintext = [
        ("reporter", "destination"),
        ("source_workload", "legacy"),
        ("source_canonical_service", "legacy"),
        ("source_principal", "unknown"),
        ("destination_workload", "web"),
        ("destination_service", "web.demo.svc.cluster.local"),
        ("connection_security_policy", "unknown"),
        ("response_flags", "-"),
    ];
    assert_eq!(
        metric_sum(&scrape(&cluster, "node2"), CLOSED, &plaintext),
        1.0
    );

    // A connection's bytes show while it is open.
    let _slow = cluster
        .spawn(
            "client-1",
            "curl",
            &[
                "-sS",
                "--limit-rate",
                "100k",
                &format!("http://{web2}:8080/bytes/3000000"),
            ],
        )
        .unwrap();
    within(
        Duration::from_secs(5),
        "bytes of the open connection",
        || {
            let node2 = scrape(&cluster, "node2");
            metric_sum(&node2, SENT, &[("reporter", "destination")]) > 200_000.0
                && metric_sum(&node2, OPENED, &[("reporter", "destination")])
                    > metric_sum(&node2, CLOSED, &[("reporter", "destination")])
        },
    );
    // Its sockets are open on both nodes: the client's, and the tunnel's.
    let sockets = "istio_tcp_sockets_open";
    assert!(
        metric_sum(
            &scrape(&cluster, "node1"),
            sockets,
            &[("reporter", "source")]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &scrape(&cluster, "node2"),
            sockets,
            &[("reporter", "destination")]
        ) >= 1.0
    );

    // Denied: counted as failed with DENY on the side that decided, and in
    // its access log with the reason.
    // (Plaintext proves no namespace: the rule names its address.)
    let legacy = cluster.pod("legacy-1").unwrap().ipv4;
    apply_policy(
        &cluster,
        "deny",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-legacy\n  namespace: demo\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"{legacy}/32\"]\n"
        ),
    );
    assert!(!get(&cluster, "legacy-1", &format!("http://{web2}:8080/")));
    // Failed: nothing listens on the port; the destination cannot connect.
    assert!(!get(&cluster, "client-1", &format!("http://{web2}:8099/")));
    let denied = [
        ("reporter", "destination"),
        ("source_workload", "legacy"),
        ("destination_workload", "web"),
        ("response_flags", "DENY"),
    ];
    let failed = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("destination_workload", "web"),
        ("response_flags", "CONNECT"),
        ("connection_security_policy", "mutual_tls"),
    ];
    within(
        Duration::from_secs(3),
        "denied and failed are counted",
        || {
            let node2 = scrape(&cluster, "node2");
            metric_sum(&node2, FAILED, &denied) == 1.0
                && metric_sum(&node2, CLOSED, &denied) == 1.0
                && metric_sum(&node2, FAILED, &failed) == 1.0
        },
    );
    let log = access_log(&cluster, "node2");
    let entry = |flags: &str| {
        log.iter()
            .find(|e| e["response_flags"] == flags)
            .unwrap_or_else(|| panic!("an access-log entry with {flags}: {log:?}"))
    };
    let deny = entry("DENY");
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_eq!(deny["route"], "inbound_plaintext", "{deny}");
    assert!(
        deny["end"].as_str().unwrap().contains("demo/deny-legacy"),
        "{deny}"
    );
    let connect = entry("CONNECT");
    assert_eq!(connect["route"], "inbound_tunnel", "{connect}");
    assert!(
        connect["end"].as_str().unwrap().contains("8099"),
        "{connect}"
    );
    // Not a failure: nothing else is counted as one.
    let node2 = scrape(&cluster, "node2");
    assert_eq!(metric_sum(&node2, FAILED, &[]), 2.0);
}

#[test]
fn policy_denials_and_dry_run_decisions_are_counted() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let web2 = format!("http://{}:8080/", cluster.pod("web-2").unwrap().ipv4);
    let dir = cluster.status().config.policies.clone().unwrap();
    let policy = |name: &str, annotations: &str, namespaces: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: demo\n{annotations}spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"{namespaces}\"]\n"
        )
    };
    std::fs::write(
        dir.join("trial.yaml"),
        policy(
            "trial",
            // Read as Go's strconv.ParseBool reads it, as Istio does.
            "  annotations:\n    istio.io/dry-run: \"True\"\n",
            "demo",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("audit.yaml"),
        policy("audit-demo", "", "demo").replace("action: DENY", "action: AUDIT"),
    )
    .unwrap();
    std::fs::write(dir.join("deny.yaml"), policy("deny-legacy", "", "legacy")).unwrap();
    within(Duration::from_secs(3), "node2 takes the policies", || {
        daemon_log(&cluster, "node2").contains("reloaded policies")
    });

    // The dry-run DENY would refuse client-1: logged and counted, not enforced.
    assert!(get(&cluster, "client-1", &web2));
    assert!(get(&cluster, "client-1", &web2));
    let node2 = scrape(&cluster, "node2");
    assert_eq!(
        metric_sum(
            &node2,
            "ztunnel_policy_dry_run_total",
            &[("decision", "deny")]
        ),
        2.0
    );
    assert!(daemon_log(&cluster, "node2").contains("dry-run: the dry-run policies would deny this connection: denied by DENY policy demo/trial rule 0"));
    // The AUDIT policy matched both, counted by policy.
    assert_eq!(
        metric_sum(
            &node2,
            "ztunnel_policy_audits_total",
            &[("policy", "demo/audit-demo")]
        ),
        2.0
    );

    // An enforced denial, counted by policy (legacy joins the mesh to carry a namespace).
    let mut cluster = cluster;
    cluster
        .label_namespace("legacy", "istio.io/dataplane-mode", Some("ambient"))
        .unwrap();
    // (Until legacy-1 is captured its plaintext proves no namespace and gets
    // in; until its certificate arrives its connections fail for want of it:
    // wait for the denial itself.)
    within(
        Duration::from_secs(5),
        "legacy-1 is captured and denied",
        || {
            let _ = get(&cluster, "legacy-1", &web2);
            let denied = metric_sum(
                &scrape(&cluster, "node2"),
                "ztunnel_policy_denials_total",
                &[("policy", "demo/deny-legacy")],
            );
            denied >= 1.0
        },
    );
}

#[test]
fn the_access_log_has_one_json_line_per_connection_on_each_side() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    let bytes = cluster
        .run(
            "client-1",
            "sh",
            &[
                "-c",
                &format!("curl -sS http://{web2}:8080/bytes/4096 | wc -c"),
            ],
        )
        .unwrap();
    assert_eq!(bytes.trim(), "4096");
    wait_tunnel_idle(&cluster, "node1");
    assert!(get(&cluster, "client-1", &format!("http://{web2}:8080/")));

    within(
        Duration::from_secs(3),
        "both sides log both connections",
        || access_log(&cluster, "node1").len() == 2 && access_log(&cluster, "node2").len() == 2,
    );
    let source = &access_log(&cluster, "node1")[0];
    let destination = &access_log(&cluster, "node2")[0];
    for (entry, reporter, route) in [
        (source, "source", "tunnel"),
        (destination, "destination", "inbound_tunnel"),
    ] {
        assert_eq!(entry["reporter"], reporter, "{entry}");
        assert_eq!(entry["route"], route, "{entry}");
        assert_eq!(entry["src_workload"], "client", "{entry}");
        assert_eq!(
            entry["src_identity"], "spiffe://cluster.local/ns/demo/sa/client",
            "{entry}"
        );
        assert_eq!(entry["dst_workload"], "web", "{entry}");
        assert_eq!(
            entry["dst_identity"], "spiffe://cluster.local/ns/demo/sa/web",
            "{entry}"
        );
        assert_eq!(entry["dst_addr"], format!("{web2}:8080"), "{entry}");
        assert_eq!(entry["tls_version"], "TLSv1.3", "{entry}");
        assert!(
            entry["tls_cipher"].as_str().unwrap().contains("AES"),
            "{entry}"
        );
        assert_eq!(entry["tls_resumed"], false, "{entry}");
        assert_eq!(entry["tunnel_reused"], false, "{entry}");
        assert_eq!(entry["end"], "closed", "{entry}");
        assert!(
            entry["bytes_sent"].as_u64().unwrap() > 4096,
            "response with headers: {entry}"
        );
        assert!(entry["bytes_received"].as_u64().unwrap() > 0, "{entry}");
        assert!(
            entry["duration_ms"].is_u64() && entry["time"].is_string(),
            "{entry}"
        );
    }
    assert_eq!(destination["decision"], "allow");
    assert!(
        destination["src_addr"]
            .as_str()
            .unwrap()
            .starts_with("10.244.1.3:")
    );
    // The second connection rode the first one's tunnel.
    let second = &access_log(&cluster, "node2")[1];
    assert_eq!(second["tunnel_reused"], true, "{second}");
    assert_eq!(second["tls_resumed"], false, "{second}");
}

/// `curl` on node `node`'s admin endpoint (inside its namespace) with `args`.
fn admin(cluster: &Cluster, node: &str, path: &str, args: &[&str]) -> String {
    let status = cluster.status().node(node).unwrap().clone();
    let url = format!("http://{}{path}", status.daemon.unwrap().admin);
    ztunnel_cluster::netns::output(
        ztunnel_cluster::netns::exec(&status.netns, "curl")
            .args(["-sS"])
            .args(args)
            .arg(&url),
    )
    .unwrap()
}

#[test]
fn admin_dumps_the_config_in_force_and_changes_the_log_level() {
    let cluster = mesh(2);
    let dir = cluster.status().config.policies.clone().unwrap();
    std::fs::write(
        dir.join("allow.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-all\n  namespace: demo\nspec:\n  rules:\n  - {}\n",
    )
    .unwrap();
    within(Duration::from_secs(3), "node1 takes the policy", || {
        daemon_log(&cluster, "node1").contains("reloaded policies")
    });
    let dump: serde_json::Value =
        serde_json::from_str(&admin(&cluster, "node1", "/config_dump", &[])).unwrap();
    assert_eq!(
        dump["captured_pods"],
        serde_json::json!(["demo/client-1", "demo/web-1"]),
        "{dump:#}"
    );
    assert_eq!(dump["registry"]["pods"].as_array().unwrap().len(), 6);
    assert_eq!(
        dump["policies"]["authorization_policies"][0]["id"],
        "demo/allow-all"
    );
    assert!(
        dump["identities"]
            .as_array()
            .unwrap()
            .contains(&"spiffe://cluster.local/ns/demo/sa/web".into())
    );
    assert!(!dump.to_string().contains("PRIVATE KEY"));

    // An unknown path lists every endpoint, the probes' among them.
    assert_eq!(
        admin(&cluster, "node1", "/nothing-here", &[]).trim(),
        "endpoints: /healthz/live /healthz/ready /certs /config_dump /logging /check /analyze"
    );

    assert_eq!(
        admin(&cluster, "node1", "/logging", &[]).trim(),
        "log level: info"
    );
    let changed = admin(&cluster, "node1", "/logging?level=debug", &["-X", "POST"]);
    assert_eq!(changed.trim(), "log level: debug");
    assert_eq!(
        admin(&cluster, "node1", "/logging", &[]).trim(),
        "log level: debug"
    );
    let refused = admin(
        &cluster,
        "node1",
        "/logging?level=nonsense=what=",
        &["-X", "POST"],
    );
    assert!(refused.contains("invalid log filter"), "{refused}");
    assert_eq!(
        admin(&cluster, "node1", "/logging", &[]).trim(),
        "log level: debug"
    );
}

#[test]
fn ctl_explains_an_allowed_and_a_denied_pair_and_finds_policy_mistakes() {
    let cluster = mesh(2);
    let dir = cluster.status().config.policies.clone().unwrap();
    std::fs::write(
        dir.join("policies.yaml"),
        format!(
            r#"{ALLOW_CLIENT}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-nothing
  namespace: demo
spec:
  action: DENY
  selector:
    matchLabels:
      app: db
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: client-get-only
  namespace: demo
spec:
  selector:
    matchLabels:
      app: client
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#
        ),
    )
    .unwrap();
    within(Duration::from_secs(3), "node1 takes the policies", || {
        daemon_log(&cluster, "node1").contains("reloaded policies")
    });

    let allowed = ctl(&cluster, "node1", &["check", "client-1", "web-2:8080"]);
    assert!(
        allowed.contains("path:        mutual TLS tunnel between the nodes"),
        "{allowed}"
    );
    assert!(
        allowed
            .contains("decision:    ALLOW: allowed by ALLOW policy demo/web-allow-client rule 0"),
        "{allowed}"
    );
    let (success, denied) = ctl_status(
        &cluster,
        "node1",
        &["check", "legacy/legacy-1", "web-2:8080"],
    );
    assert!(!success, "a denial exits non-zero: {denied}");
    assert!(
        denied.contains("plaintext into the destination pod"),
        "{denied}"
    );
    assert!(
        denied.contains(
            "decision:    DENY: no rule of the ALLOW policies demo/web-allow-client matches"
        ),
        "{denied}"
    );
    // A Service by name or VIP: each of its endpoints is checked.
    let service = cluster.status().service("demo", "web").cloned().unwrap();
    for destination in [
        format!("demo/web:{}", service.port),
        format!("{}:{}", service.ipv4, service.port),
        format!("[{}]:{}", service.ipv6, service.port),
    ] {
        let via_service = ctl(&cluster, "node1", &["check", "client-1", &destination]);
        assert!(
            via_service.contains("service:     web.demo.svc.cluster.local")
                && via_service.contains("decision:    ALLOW: every endpoint allows it")
                && via_service.contains("destination: demo/web-2 on node2"),
            "{destination}: {via_service}"
        );
    }
    // An ALLOW rule that names what a node proxy cannot see is explained.
    let (success, l7) = ctl_status(&cluster, "node1", &["check", "web-1", "client-2:8080"]);
    assert!(!success, "{l7}");
    assert!(
        l7.contains("note:        ALLOW policy demo/client-get-only rule 0 can never match at L4: it names attributes a node proxy cannot see (methods)"),
        "{l7}"
    );
    // What ctl says is what the daemons do.
    let _web = http_server(&cluster, "web-2");
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    assert!(get(&cluster, "client-1", &format!("http://{web2}:8080/")));
    assert!(!get(&cluster, "legacy-1", &format!("http://{web2}:8080/")));

    let findings = ctl(&cluster, "node1", &["analyze"]);
    assert!(
        findings.contains(
            "AuthorizationPolicy demo/deny-nothing: a DENY policy without rules matches nothing"
        ),
        "{findings}"
    );
    assert!(
        findings.contains("AuthorizationPolicy demo/deny-nothing: its selector selects no pod"),
        "{findings}"
    );
    assert!(!findings.contains("web-allow-client"), "{findings}");
    // The deliberate differences from Istio's ztunnel are reported too.
    for difference in [
        "differs from Istio's ztunnel: each pod may hold",
        "differs from Istio's ztunnel: tunnel handshakes in progress are limited",
        "differs from Istio's ztunnel: kubelet probes are recognised",
        "differs from Istio's ztunnel: the daemon's own connections are recognised by its process",
    ] {
        assert!(findings.contains(difference), "{findings}");
    }

    let workloads = ctl(&cluster, "node1", &["workloads"]);
    assert!(
        workloads
            .lines()
            .any(|l| l.starts_with("demo/client-1") && l.ends_with("yes")),
        "{workloads}"
    );
    assert!(
        workloads
            .lines()
            .any(|l| l.starts_with("demo/web-2") && l.ends_with("-")),
        "{workloads}"
    );
    assert!(
        ctl(&cluster, "node1", &["certs"]).contains("spiffe://cluster.local/ns/demo/sa/client")
    );
    assert!(ctl(&cluster, "node1", &["policies"]).contains("web-allow-client"));
}

/// Kills the cluster's CA and waits until it is gone.
fn kill_ca(cluster: &Cluster) {
    let ca = cluster.status().ca.as_ref().unwrap().pid;
    Command::new("kill")
        .args(["-KILL", &ca.to_string()])
        .status()
        .unwrap();
    ztunnel_cluster::netns::wait_gone(&[ca], Duration::from_secs(5)).unwrap();
}

#[test]
fn readiness_flips_with_its_conditions() {
    let mut cluster = mesh(2);
    let ready = |cluster: &Cluster| admin(cluster, "node1", "/healthz/ready", &[]);
    assert_eq!(ready(&cluster).trim(), "ready");
    // The same answer where Istio's probes look.
    let istio_probe = |cluster: &Cluster| {
        let netns = cluster.status().node("node1").unwrap().netns.clone();
        let code = ["-s", "-o", "/dev/null", "-w", "%{http_code}"];
        ztunnel_cluster::netns::output(
            ztunnel_cluster::netns::exec(&netns, "curl")
                .args(code)
                .arg("http://127.0.0.1:15021/healthz/ready"),
        )
        .unwrap()
    };
    assert_eq!(istio_probe(&cluster), "200");

    let _web = http_server(&cluster, "web-2");
    // With the CA gone, a newly enrolled ServiceAccount cannot be certified:
    // the daemon says it is not ready, and why.
    kill_ca(&cluster);
    cluster
        .label_namespace("legacy", "istio.io/dataplane-mode", Some("ambient"))
        .unwrap();
    within(Duration::from_secs(3), "node1 turns not ready", || {
        ready(&cluster)
            .contains("no certificate yet for spiffe://cluster.local/ns/legacy/sa/default")
    });
    assert_eq!(istio_probe(&cluster), "503");
    // Not ready is not dead: the liveness probe's endpoint still answers.
    assert_eq!(
        admin(&cluster, "node1", "/healthz/live", &[]).trim(),
        "alive"
    );
    // Its pod's connections to another node fail for want of a certificate
    // (once the CA's answer is in: they are held until then), and are
    // counted as such on the side that failed them.
    let web = format!("http://{}:8080/", cluster.pod("web-2").unwrap().ipv4);
    assert!(!get(&cluster, "legacy-1", &web));
    let node1 = scrape(&cluster, "node1");
    let identity_error = [("reporter", "source"), ("response_flags", "IDENTITY_ERROR")];
    assert!(
        metric_sum(
            &node1,
            "istio_tcp_connections_failed_total",
            &identity_error
        ) >= 1.0,
        "{node1:?}"
    );
    let no_certificate = [("side", "client"), ("reason", "local_certificate")];
    assert!(metric_sum(&node1, "ztunnel_tunnel_failures_total", &no_certificate) >= 1.0);
    assert!(access_log(&cluster, "node1").iter().any(|entry| {
        entry["reporter"] == "source"
            && entry["response_flags"] == "IDENTITY_ERROR"
            && entry["end"].as_str().is_some_and(|end| {
                end.contains("no valid certificate for spiffe://cluster.local/ns/legacy/sa/default")
            })
    }));

    let failed = [
        ("identity", "spiffe://cluster.local/ns/legacy/sa/default"),
        ("result", "failure"),
    ];
    within(
        Duration::from_secs(3),
        "the failed request is counted",
        || {
            metric_sum(
                &scrape(&cluster, "node1"),
                "ztunnel_certificate_requests_total",
                &failed,
            ) >= 1.0
        },
    );
    // The pod leaves the mesh again: nothing is missing, ready again.
    cluster
        .label_namespace("legacy", "istio.io/dataplane-mode", None)
        .unwrap();
    within(Duration::from_secs(3), "node1 is ready again", || {
        ready(&cluster).trim() == "ready"
    });
}

#[test]
fn a_certificate_whose_renewal_fails_is_reported_near_expiry_then_withdrawn() {
    // Ten-second certificates: renewal is due after about five, the last
    // fifth starts at eight.
    let spec = ztunnel_cluster::ClusterSpec::ephemeral(1, 1)
        .with_mesh(ztunnel_e2e::bin_dir())
        .with_daemon_args(["--cert-validity-secs", "10"]);
    let cluster = Cluster::create(&spec).expect("the cluster comes up");
    let certs: serde_json::Value =
        serde_json::from_str(&admin(&cluster, "node1", "/certs", &[])).unwrap();
    let held: Vec<(String, String)> = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cert| {
            let field = |name: &str| cert[name].as_str().unwrap().to_owned();
            (field("identity"), field("serial"))
        })
        .collect();
    assert_eq!(held.len(), 2, "web and client: {certs}");

    // The CA goes away, so no renewal can succeed.
    kill_ca(&cluster);

    // Each certificate is reported once, as an audit event naming it, when
    // it enters its last fifth ...
    let near_expiry = |cluster: &Cluster| -> Vec<String> {
        daemon_log(cluster, "node1")
            .lines()
            .filter(|line| line.contains("audit") && line.contains("certificate_near_expiry"))
            .map(str::to_owned)
            .collect()
    };
    within(
        Duration::from_secs(12),
        "both certificates reported near expiry",
        || near_expiry(&cluster).len() >= 2,
    );
    for (identity, serial) in &held {
        assert!(
            near_expiry(&cluster)
                .iter()
                .any(|line| line.contains(identity.as_str()) && line.contains(serial.as_str())),
            "no near-expiry event for {identity} ({serial}): {:?}",
            near_expiry(&cluster)
        );
    }
    // ... and withdrawn at expiry: the node is no longer ready, and says why.
    within(Duration::from_secs(6), "node1 turns not ready", || {
        admin(&cluster, "node1", "/healthz/ready", &[]).contains("no certificate yet")
    });
    // The expiry stays in the metrics, in the past, so the alerts keep firing.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let node1 = scrape(&cluster, "node1");
    for (identity, _) in &held {
        let labels = [("identity", identity.as_str())];
        let expiry = metric_sum(
            &node1,
            "ztunnel_certificate_expiry_timestamp_seconds",
            &labels,
        );
        assert!(
            expiry > 0.0 && expiry < now,
            "{identity}: {expiry} vs now {now}"
        );
    }
    assert_eq!(
        near_expiry(&cluster).len(),
        2,
        "{:?}",
        near_expiry(&cluster)
    );
}

#[test]
fn istios_scrape_path_node_proxy_metrics_and_json_log_lines() {
    let mut cluster = mesh(2);
    let mark = daemon_log(&cluster, "node1").lines().count();
    cluster
        .restart_daemons(&["--log-format".to_owned(), "json".to_owned()])
        .unwrap();
    let _web = http_server(&cluster, "web-2");
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    assert!(get(&cluster, "client-1", &format!("http://{web2}:8080/")));

    // Existing scrape configurations use Istio's path.
    let status = cluster.status().node("node1").unwrap().clone();
    let url = format!(
        "http://{}/stats/prometheus",
        status.daemon.unwrap().metrics.unwrap()
    );
    let text = ztunnel_cluster::netns::output(
        ztunnel_cluster::netns::exec(&status.netns, "curl").args(["-sS", "--fail", &url]),
    )
    .unwrap();
    let samples = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples;
    assert_eq!(
        metric_sum(&samples, "istio_build", &[("component", "ztunnel")]),
        1.0
    );
    for process in ["process_open_fds", "process_resident_memory_bytes"] {
        assert!(metric_sum(&samples, process, &[]) > 0.0, "{process}");
    }
    assert!(samples.iter().any(|s| s.metric == "istio_tcp_sockets_open"));

    // Every line the restarted daemon writes is JSON, its connection's too.
    within(Duration::from_secs(3), "the connection's log line", || {
        daemon_log(&cluster, "node1")
            .lines()
            .skip(mark)
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .any(|line| {
                line["message"] == "outbound connection closed"
                    && line["src.pod"] == "client-1"
                    && line["route"] == "tunnel"
            })
    });
    let log = daemon_log(&cluster, "node1");
    let lines: Vec<&str> = log.lines().skip(mark).filter(|l| !l.is_empty()).collect();
    assert!(lines.len() > 3, "{lines:?}");
    for line in lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

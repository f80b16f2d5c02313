//! The Kubernetes manifests (`deploy/`, `bench/k8s/`): they render with
//! kustomize, validate against the real Kubernetes schemas
//! (`kubernetes-validate`, pinned, installed by `cargo xtask setup`), apply
//! in a client-side dry run with `kubectl` (against the stand-in API server's
//! discovery), the monitoring refers only to metrics the daemon exports, and
//! the alerting rules pass their unit tests (`promtool test rules`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use ztunnel_cluster::kube_api::ApiServer;

/// Kinds without a schema in `kubernetes-validate` (CRDs): each must be one
/// of these, and nothing else may go unvalidated.
const CUSTOM_KINDS: [&str; 4] = [
    "PeerAuthentication",
    "AuthorizationPolicy",
    "PodMonitor",
    "PrometheusRule",
];

/// The oldest Kubernetes the manifests support (projected tokens name their
/// node from 1.30) and the newest the pinned schemas know.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `kubernetes-validate` and `kubectl`, from the virtualenv setup made.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("ZTUNNEL_KUBERNETES_TOOLS").map_or_else(
        || workspace().join("target/tools/kubernetes"),
        PathBuf::from,
    );
    let path = dir.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`",
        path.display()
    );
    path
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("the tool runs");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Every manifest as applied: the kustomizations rendered, the plain files
/// as they are.
fn manifests(out: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        "deploy",
        "deploy/istio",
        "deploy/crds",
        "deploy/monitoring",
        "deploy/uninstall",
    ] {
        let rendered = run(Command::new(tool("kubectl"))
            .arg("kustomize")
            .arg(workspace().join(dir)));
        let file = out.join(format!("{}.yaml", dir.replace('/', "-")));
        std::fs::write(&file, rendered).unwrap();
        files.push(file);
    }
    for file in [
        "deploy/examples/ambient-namespace.yaml",
        "bench/k8s/namespaces.yaml",
        "bench/k8s/workloads.yaml",
    ] {
        files.push(workspace().join(file));
    }
    files
}

/// The number of objects in a YAML stream (top-level `kind:` lines).
fn objects(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|line| line.starts_with("kind: "))
        .count()
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let files = manifests(dir.path());
    let total: usize = files.iter().map(|f| objects(f)).sum();
    assert!(total >= 20, "only {total} objects rendered");
    for version in KUBERNETES_VERSIONS {
        let report = run(Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", version])
            .args(&files));
        let passed = report
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        let unvalidated: BTreeSet<&str> = report
            .lines()
            .filter_map(|l| l.split("Couldn't find schema for kind ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert!(
            unvalidated.iter().all(|kind| CUSTOM_KINDS.contains(kind)),
            "Kubernetes {version}: kinds left unvalidated: {unvalidated:?}\n{report}"
        );
        let custom = files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| CUSTOM_KINDS.iter().any(|k| l == &format!("kind: {k}")))
            .count();
        assert_eq!(
            passed + custom,
            total,
            "Kubernetes {version}: every other object passes\n{report}"
        );
    }
}

/// Beside Istio (`deploy/istio`): no CA of the project, istiod's CA
/// endpoint, a token for istiod's audience, istiod's roots, and daemons only
/// on the nodes labelled for them, everything else as in `deploy`.
#[test]
fn the_istio_overlay_takes_istiod_as_ca_on_labelled_nodes_only() {
    let render = |dir: &str| -> Vec<serde_json::Value> {
        let text = run(Command::new(tool("kubectl"))
            .arg("kustomize")
            .arg(workspace().join(dir)));
        serde_saphyr::from_multiple(&text).expect("the rendering is YAML")
    };
    let find = |objects: &[serde_json::Value], kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
    };
    let (plain, istio) = (render("deploy"), render("deploy/istio"));
    assert!(find(&plain, "Deployment", "ztunnel-ca").is_some());
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(
            find(&istio, kind, "ztunnel-ca").is_none(),
            "{kind} ztunnel-ca"
        );
    }
    assert_eq!(istio.len(), plain.len() - 5);
    let config = find(&istio, "ConfigMap", "ztunnel-config").unwrap();
    assert_eq!(config["data"]["caAddress"], "istiod.istio-system.svc:15012");
    assert_eq!(config["data"]["caServerName"], "istiod.istio-system.svc");
    let daemons = find(&istio, "DaemonSet", "ztunnel").unwrap();
    let pod = &daemons["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["ztunnel.dev/node-proxy"], "ebpf");
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        volume("ca-token")["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );
    assert_eq!(
        volume("trust-bundle")["configMap"]["name"],
        "istio-ca-root-cert"
    );
    // The rest is the plain deployment's: the same arguments and mounts.
    let plain_pod = &find(&plain, "DaemonSet", "ztunnel").unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["containers"], plain_pod["containers"]);
}

#[test]
fn kubectl_applies_every_manifest_in_a_client_dry_run() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = {
        let _context = runtime.enter();
        ApiServer::serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    for file in manifests(dir.path()) {
        let out = run(Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["apply", "--dry-run=client", "--validate=false", "-f"])
            .arg(&file));
        let created = out
            .lines()
            .filter(|l| l.ends_with(" created (dry run)"))
            .count();
        assert_eq!(created, objects(&file), "{}:\n{out}", file.display());
    }
    assert!(
        api.requests().iter().any(
            |r| r.starts_with("GET /apis/apps/v1/namespaces/ztunnel-system/daemonsets/ztunnel")
        ),
        "kubectl looked the DaemonSet up: {:?}",
        api.requests()
    );
}

#[test]
fn the_monitoring_refers_only_to_metrics_the_daemon_exports() {
    use ztunnel::metrics::{
        DryRunLabels, IdentityLabels, Metrics, PolicyLabels, Reporter, RequestLabels, SocketLabels,
        TcpLabels, TunnelFailureLabels,
    };
    // Families without a sample are not exposed: give each one.
    let metrics = Metrics::new();
    let tcp = TcpLabels::default();
    for family in [
        &metrics.tcp_opened,
        &metrics.tcp_closed,
        &metrics.tcp_sent,
        &metrics.tcp_received,
        &metrics.tcp_failed,
    ] {
        family.get_or_create(&tcp).inc();
    }
    let sockets = SocketLabels {
        reporter: Reporter::Source,
    };
    metrics.tcp_sockets_open.get_or_create(&sockets).inc();
    let policy = PolicyLabels { policy: "p".into() };
    metrics.policy_denials.get_or_create(&policy).inc();
    metrics
        .policy_dry_run
        .get_or_create(&DryRunLabels { decision: "deny" })
        .inc();
    let identity = IdentityLabels {
        identity: "i".into(),
    };
    metrics.certificate_expiry.get_or_create(&identity).set(1);
    metrics.certificate_renewals.get_or_create(&identity).inc();
    let failure = TunnelFailureLabels {
        side: "client",
        reason: "handshake",
    };
    metrics.tunnel_failures.get_or_create(&failure).inc();
    let request = RequestLabels {
        identity: "i".into(),
        result: "failure",
    };
    metrics.certificate_requests.get_or_create(&request).inc();
    let exported = metrics.encode();
    let families: BTreeSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut checked = 0;
    for file in [
        "deploy/monitoring/prometheusrule.yaml",
        "deploy/monitoring/grafana-dashboard.yaml",
    ] {
        let text = std::fs::read_to_string(workspace().join(file)).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("ztunnel_") || word.starts_with("istio_")) {
                continue;
            }
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            assert!(
                families.contains(family),
                "{file} uses {word}, which the daemon does not export (it exports {families:?})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} metric references found");
}

/// The alerting rules of `deploy/monitoring/prometheusrule.yaml` pass the
/// unit tests in `deploy/monitoring/tests/` (`promtool`, from Debian's
/// `prometheus` package, installed by `cargo xtask setup`): an expired
/// certificate and an unreachable CA fire, healthy ones do not.
#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    let monitoring = workspace().join("deploy/monitoring");
    let text = std::fs::read_to_string(monitoring.join("prometheusrule.yaml")).unwrap();
    let rule: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: promtool reads the rule groups as they are in the CRD.
    std::fs::write(dir.path().join("rules.yaml"), rule["spec"].to_string()).unwrap();
    let mut tested = 0;
    for test in std::fs::read_dir(monitoring.join("tests")).unwrap() {
        let test = test.unwrap().path();
        let copy = dir.path().join(test.file_name().unwrap());
        std::fs::copy(&test, &copy).unwrap();
        let out = run(Command::new("promtool").args(["test", "rules"]).arg(&copy));
        assert!(out.contains("SUCCESS"), "{out}");
        tested += 1;
    }
    assert!(tested >= 1, "no rule tests found");
}

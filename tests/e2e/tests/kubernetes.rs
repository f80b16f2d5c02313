//! The node daemons reading the Kubernetes API (`--kubernetes`) from the
//! stand-in API server: enrolment by label within a second and only of the
//! node's own pods, release on unlabel and pod opt-out, recovery from
//! `410 Gone`, broken watches and an API server outage without dropping
//! enrolment, and policy objects created through the API enforced like
//! policy files.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ztunnel::registry::Registry;
use ztunnel_cluster::{
    Cluster,
    kube_api::{AUTHORIZATION_POLICIES, ApiServer, NAMESPACES, PODS},
    kube_fabric,
    mesh::ADMIN_ADDRESS,
    netns,
};
use ztunnel_e2e::{daemon_log, http_server, mesh, within};

/// How fast a change made through the API must take effect (the bound).
const TAKES_EFFECT: Duration = Duration::from_secs(1);

/// The stand-in API server serving `cluster`'s objects, and the daemon
/// arguments that point the node daemons at it.
fn serve_api(cluster: &Cluster, runtime: &tokio::runtime::Runtime) -> (ApiServer, Vec<String>) {
    let (server, args) = kube_fabric::serve(cluster, runtime).unwrap();
    let registry = Registry::load(cluster.status().config.registry.as_ref().unwrap()).unwrap();
    server.seed(&registry);
    (server, args)
}

/// The pods node `node`'s daemon has captured (`namespace/name`), from its
/// admin endpoint.
fn captured(cluster: &Cluster, node: &str) -> Vec<String> {
    let netns = &cluster.status().node(node).unwrap().netns;
    let dump = netns::output(netns::exec(netns, "curl").args([
        "-sS",
        "--fail",
        &format!("http://{ADMIN_ADDRESS}/config_dump"),
    ]))
    .unwrap();
    let dump: Value = serde_json::from_str(&dump).unwrap();
    dump["captured_pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pod| pod.as_str().unwrap().to_owned())
        .collect()
}

fn set_labels(
    api: &ApiServer,
    resource: ztunnel_cluster::kube_api::Resource,
    namespace: &str,
    name: &str,
    labels: Value,
) {
    let mut object = api.get(resource, namespace, name).unwrap();
    object["metadata"]["labels"] = labels;
    api.apply(resource, object);
}

/// Waits up to [`TAKES_EFFECT`] for node `node` to capture exactly `pods`.
fn captures_within_a_second(cluster: &Cluster, node: &str, pods: &[&str], what: &str) {
    let started = Instant::now();
    within(TAKES_EFFECT, what, || captured(cluster, node) == pods);
    eprintln!("{what}: {:?}", started.elapsed());
}

fn get(cluster: &Cluster, from: &str, url: &str) -> bool {
    cluster
        .run(from, "curl", &["-sS", "--max-time", "3", url])
        .is_ok_and(|body| body.starts_with("hello from"))
}

#[test]
fn the_daemons_follow_the_api_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cluster = mesh(2);
    let (api, args) = serve_api(&cluster, &runtime);
    cluster.restart_daemons(&args).unwrap();
    assert!(
        daemon_log(&cluster, "node1").contains("the Kubernetes view is complete"),
        "the daemon read the API"
    );
    let requests = api.requests().join("\n");
    for path in [
        "/api/v1/namespaces?",
        "/api/v1/pods?",
        "/api/v1/services?",
        "/apis/discovery.k8s.io/v1/endpointslices?",
        "/apis/security.istio.io/v1/authorizationpolicies?",
    ] {
        assert!(
            requests.contains(&format!("GET {path}")),
            "listed {path}:\n{requests}"
        );
    }
    assert!(requests.contains("watch=true"), "watches:\n{requests}");

    // The demo namespace is labelled in the API: node1 captures its own
    // demo pods, and no pod of node2.
    assert_eq!(captured(&cluster, "node1"), ["demo/client-1", "demo/web-1"]);
    assert_eq!(captured(&cluster, "node2"), ["demo/client-2", "demo/web-2"]);
    // Each captured pod carries Istio's redirection annotation, as Istio's
    // CNI agent sets it (istiod then tells Istio's ztunnels to reach the pod
    // over HBONE); the others do not.
    let annotated = |namespace: &str, name: &str| {
        api.get(PODS, namespace, name).unwrap()["metadata"]["annotations"]["ambient.istio.io/redirection"]
            == "enabled"
    };
    within(TAKES_EFFECT, "the captured pods annotated", || {
        ["client-1", "web-1", "client-2", "web-2"]
            .iter()
            .all(|pod| annotated("demo", pod))
    });
    assert!(!annotated("legacy", "legacy-1") && !annotated("legacy", "legacy-2"));

    // Labelling a namespace through the API enrols its pods on each node.
    let enrol_legacy = |enrolled: bool| {
        let labels = if enrolled {
            json!({"istio.io/dataplane-mode": "ambient"})
        } else {
            json!({})
        };
        set_labels(&api, NAMESPACES, "", "legacy", labels);
    };
    enrol_legacy(true);
    captures_within_a_second(
        &cluster,
        "node1",
        &["demo/client-1", "demo/web-1", "legacy/legacy-1"],
        "legacy enrolled on node1",
    );
    assert_eq!(
        captured(&cluster, "node2"),
        ["demo/client-2", "demo/web-2", "legacy/legacy-2"]
    );

    // Unlabelling releases them; a pod's opt-out label releases that pod.
    enrol_legacy(false);
    captures_within_a_second(
        &cluster,
        "node1",
        &["demo/client-1", "demo/web-1"],
        "legacy released on node1",
    );
    set_labels(
        &api,
        PODS,
        "demo",
        "client-1",
        json!({"app": "client", "istio.io/dataplane-mode": "none"}),
    );
    captures_within_a_second(&cluster, "node1", &["demo/web-1"], "client-1 opted out");
    within(TAKES_EFFECT, "client-1's annotation removed", || {
        !annotated("demo", "client-1")
    });
    assert!(annotated("demo", "web-1"));
    set_labels(&api, PODS, "demo", "client-1", json!({"app": "client"}));
    captures_within_a_second(
        &cluster,
        "node1",
        &["demo/client-1", "demo/web-1"],
        "client-1 back in",
    );
    within(TAKES_EFFECT, "client-1 annotated again", || {
        annotated("demo", "client-1")
    });

    // History compacted and every watch broken, as when the API server
    // restarts: the watches resume from an expired resourceVersion, get
    // `410 Gone`, and list again. Enrolment holds throughout.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces?") && !r.contains("watch=true"))
        .count();
    api.compact();
    api.close_watches();
    for _ in 0..10 {
        assert_eq!(
            captured(&cluster, "node1"),
            ["demo/client-1", "demo/web-1"],
            "enrolment dropped during the re-list"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    within(
        Duration::from_secs(10),
        "the namespaces listed again after 410 Gone",
        || {
            api.requests()
                .iter()
                .filter(|r| r.starts_with("GET /api/v1/namespaces?") && !r.contains("watch=true"))
                .count()
                > lists_before
        },
    );
    assert!(
        daemon_log(&cluster, "node1").contains("too old resource version"),
        "the daemon saw 410 Gone:\n{}",
        daemon_log(&cluster, "node1")
    );
    enrol_legacy(true);
    captures_within_a_second(
        &cluster,
        "node1",
        &["demo/client-1", "demo/web-1", "legacy/legacy-1"],
        "legacy enrolled after the re-list",
    );

    // The API server goes away for a while (every request refused): the
    // daemons keep what they have and retry; once it is back they list again
    // and follow changes made meanwhile.
    api.set_available(false);
    for _ in 0..20 {
        assert_eq!(
            captured(&cluster, "node1"),
            ["demo/client-1", "demo/web-1", "legacy/legacy-1"],
            "enrolment dropped while the API server was away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    enrol_legacy(false);
    api.set_available(true);
    within(
        Duration::from_secs(15),
        "legacy released once the API server is back",
        || captured(&cluster, "node1") == ["demo/client-1", "demo/web-1"],
    );
    assert!(
        daemon_log(&cluster, "node1").contains("503"),
        "the daemon saw the API server refuse:\n{}",
        daemon_log(&cluster, "node1")
    );

    // A policy object created through the API is enforced like a file.
    let _web = http_server(&cluster, "web-2");
    let web2 = cluster.pod("web-2").unwrap().ipv4;
    let url = format!("http://{web2}:8080/");
    assert!(get(&cluster, "client-1", &url), "allowed before any policy");
    let deny_client = json!({
        "metadata": {"name": "web-deny-client", "namespace": "demo"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "action": "DENY",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}]}]
        }
    });
    api.apply(AUTHORIZATION_POLICIES, deny_client.clone());
    within(
        TAKES_EFFECT * 3,
        "the DENY policy from the API takes effect",
        || !get(&cluster, "client-1", &url),
    );
    api.delete(AUTHORIZATION_POLICIES, "demo", "web-deny-client");
    within(TAKES_EFFECT * 3, "the deleted policy stops denying", || {
        get(&cluster, "client-1", &url)
    });

    // One object at a time, as Istio: a CUSTOM policy is skipped, an invalid
    // one refused, and the DENY beside them is enforced. kubectl users see
    // why in Events on the objects.
    api.apply(
        AUTHORIZATION_POLICIES,
        json!({
            "metadata": {"name": "ext-authz", "namespace": "demo", "uid": "uid-ext"},
            "spec": {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}
        }),
    );
    api.apply(
        AUTHORIZATION_POLICIES,
        json!({
            "metadata": {"name": "typo", "namespace": "demo", "uid": "uid-typo"},
            "spec": {"rules": [{"when": [{"key": "source.nonsense", "values": ["a"]}]}]}
        }),
    );
    api.apply(AUTHORIZATION_POLICIES, deny_client);
    within(
        TAKES_EFFECT * 2,
        "the DENY beside a skipped and a refused object takes effect",
        || !get(&cluster, "client-1", &url),
    );
    let events_from = |node: &str, name: &str, reason: &str| {
        api.events().into_iter().find(|event| {
            event["reportingInstance"] == node
                && event["regarding"]["name"] == name
                && event["regarding"]["kind"] == "AuthorizationPolicy"
                && event["reason"] == reason
                && event["type"] == "Warning"
        })
    };
    let event = |name: &str, reason: &str| events_from("node1", name, reason);
    // Each node reports on its own; wait for both, so the count below is final.
    within(
        Duration::from_secs(3),
        "Events from both nodes explain both objects",
        || {
            ["node1", "node2"].iter().all(|node| {
                events_from(node, "ext-authz", "PolicySkipped").is_some()
                    && events_from(node, "typo", "PolicyRefused").is_some()
            })
        },
    );
    let skipped = event("ext-authz", "PolicySkipped").unwrap();
    assert!(
        skipped["note"].as_str().unwrap().contains("CUSTOM"),
        "{skipped}"
    );
    assert_eq!(skipped["regarding"]["uid"], "uid-ext");
    assert_eq!(skipped["reportingController"], "ztunnel-ebpf");
    let refused = event("typo", "PolicyRefused").unwrap();
    assert!(
        refused["note"]
            .as_str()
            .unwrap()
            .contains("unknown condition key")
            && refused["note"]
                .as_str()
                .unwrap()
                .contains("it is not enforced"),
        "{refused}"
    );
    // One Event per node and change, not one per reload.
    let posted = api.events().len();
    api.apply(
        AUTHORIZATION_POLICIES,
        json!({"metadata": {"name": "unrelated", "namespace": "demo"}, "spec": {"action": "DENY"}}),
    );
    std::thread::sleep(TAKES_EFFECT);
    assert_eq!(api.events().len(), posted, "{:#?}", api.events());
}

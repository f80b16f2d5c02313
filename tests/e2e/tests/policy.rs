//! Istio policies enforced by the destination's daemon, end to end: written
//! to the cluster's policy directory as a user would, taken within a second.

use std::time::Duration;

use ztunnel_cluster::Cluster;
use ztunnel_e2e::{
    ALLOW_CLIENT, READY, access_log, apply_policy as apply, ctl, daemon_log, http_server, mesh,
    metric_sum, scrape, testapp_path, wait_tunnel_idle, within,
};

/// Whether `from` gets an answer from `to` on `port`.
fn reaches(cluster: &Cluster, from: &str, to: &str, port: u16) -> bool {
    let url = format!("http://{}:{port}/", cluster.pod(to).unwrap().ipv4);
    cluster
        .run(from, "curl", &["-sS", "--max-time", "3", &url])
        .is_ok_and(|body| body.starts_with("hello from"))
}

/// How many connections node `node` denied for `reason`, by its access log.
fn denials(cluster: &Cluster, node: &str, reason: &str) -> usize {
    access_log(cluster, node)
        .iter()
        .filter(|entry| {
            entry["response_flags"] == "DENY"
                && entry["decision"] == "deny"
                && entry["end"]
                    .as_str()
                    .is_some_and(|end| end.contains(reason))
        })
        .count()
}

#[test]
fn principal_allow_and_namespace_deny_across_nodes() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let _web1 = http_server(&cluster, "web-1");
    assert!(reaches(&cluster, "legacy-1", "web-2", 8080));

    apply(&cluster, "allow", ALLOW_CLIENT);
    assert!(
        reaches(&cluster, "client-1", "web-2", 8080),
        "the allowed principal"
    );
    assert!(
        !reaches(&cluster, "legacy-1", "web-2", 8080),
        "plaintext has no principal"
    );
    assert!(
        !reaches(&cluster, "web-1", "web-2", 8080),
        "another ServiceAccount"
    );
    assert!(
        denials(
            &cluster,
            "node2",
            "no rule of the ALLOW policies demo/web-allow-client matches"
        ) >= 2
    );

    // A DENY on the namespace wins over the ALLOW.
    apply(
        &cluster,
        "deny",
        r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-demo
  namespace: demo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["demo"]
    to:
    - operation:
        ports: ["8080"]
"#,
    );
    // The allowed connection's tunnel is idle in the pool: the denied one
    // rides it, and is still decided on its own.
    let reuses = || {
        metric_sum(
            &scrape(&cluster, "node1"),
            "ztunnel_tunnel_reuses_total",
            &[],
        )
    };
    let before = reuses();
    wait_tunnel_idle(&cluster, "node1");
    assert!(!reaches(&cluster, "client-1", "web-2", 8080));
    assert_eq!(
        reuses(),
        before + 1.0,
        "the denied connection rode a tunnel"
    );
    assert!(
        !reaches(&cluster, "client-1", "web-1", 8080),
        "same node: the same checks"
    );
    assert!(
        denials(
            &cluster,
            "node2",
            "denied by DENY policy demo/deny-demo rule 0"
        ) >= 1
    );
    assert!(
        denials(
            &cluster,
            "node1",
            "denied by DENY policy demo/deny-demo rule 0"
        ) >= 1
    );
}

#[test]
fn ip_blocks_and_port_level_strict_and_permissive() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let _echo = cluster
        .spawn(
            "web-2",
            &testapp_path(),
            &["http", "--listen", "[::]:9000", "--name", "web-2"],
        )
        .unwrap();
    cluster.wait_listening("web-2", 9000, READY).unwrap();

    apply(
        &cluster,
        "strict",
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: web-strict
  namespace: demo
spec:
  selector:
    matchLabels:
      app: web
  mtls:
    mode: STRICT
  portLevelMtls:
    9000:
      mode: PERMISSIVE
"#,
    );
    assert!(
        !reaches(&cluster, "legacy-1", "web-2", 8080),
        "STRICT refuses plaintext"
    );
    assert!(
        reaches(&cluster, "legacy-1", "web-2", 9000),
        "PERMISSIVE on port 9000"
    );
    assert!(
        reaches(&cluster, "client-1", "web-2", 8080),
        "mutual TLS is accepted"
    );
    assert!(
        denials(
            &cluster,
            "node2",
            "PeerAuthentication mode STRICT for port 8080"
        ) >= 1
    );

    // ipBlocks: only node1's pod range may reach port 9000.
    let legacy2 = cluster.pod("legacy-2").unwrap().ipv4;
    apply(
        &cluster,
        "ipblocks",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: from-node1
  namespace: demo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: ["10.244.1.0/24"]
"#,
    );
    assert!(reaches(&cluster, "legacy-1", "web-2", 9000), "{legacy2}");
    assert!(
        !reaches(&cluster, "legacy-2", "web-2", 9000),
        "outside the block"
    );
}

#[test]
fn an_invalid_edit_keeps_the_objects_last_accepted_version() {
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    apply(&cluster, "allow", ALLOW_CLIENT);
    assert!(!reaches(&cluster, "legacy-1", "web-2", 8080));

    // An edit with a typo: refused with file, document and field named.
    apply(
        &cluster,
        "allow",
        &ALLOW_CLIENT.replace("principals:", "principles:"),
    );
    let log = daemon_log(&cluster, "node2");
    assert!(
        log.contains("policy refused: ")
            && log.contains("its previous version stays in force")
            && log.contains("allow.yaml document 1")
            && log.contains("principles"),
        "{log}"
    );
    // The previous version is still enforced.
    assert!(!reaches(&cluster, "legacy-1", "web-2", 8080));
    assert!(reaches(&cluster, "client-1", "web-2", 8080));
    let samples = scrape(&cluster, "node2");
    assert_eq!(
        metric_sum(&samples, "ztunnel_policy_objects", &[("state", "refused")]),
        1.0
    );
    assert!(
        metric_sum(
            &samples,
            "ztunnel_policy_loads_total",
            &[("result", "refused")]
        ) >= 1.0
    );
}

#[test]
fn a_deny_next_to_objects_a_node_proxy_does_not_enforce_takes_effect() {
    // Istio applies each object on its own: a CUSTOM policy, one attached to
    // a waypoint and another Istio kind are skipped or ignored, and the DENY
    // shipped in the same file is enforced.
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    assert!(reaches(&cluster, "client-1", "web-2", 8080));
    let deny_client = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/demo/sa/client"]}
"#;
    apply(
        &cluster,
        "mixed",
        &format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: demo}}
spec:
  action: CUSTOM
  provider: {{name: opa}}
  rules: [{{}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: waypoint-only, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  rules: [{{}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: demo}}
spec: {{hosts: [web]}}
---{deny_client}"#
        ),
    );
    assert!(
        !reaches(&cluster, "client-1", "web-2", 8080),
        "the DENY is enforced"
    );
    assert!(
        reaches(&cluster, "legacy-1", "web-2", 8080),
        "nothing else is"
    );

    let policies: serde_json::Value =
        serde_json::from_str(&ctl(&cluster, "node2", &["policies"])).unwrap();
    let states: Vec<(String, String)> = policies["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_owned(),
                o["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let state = |id: &str| {
        states
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.as_str())
    };
    assert_eq!(state("demo/deny-client"), Some("applied"), "{states:?}");
    assert_eq!(state("demo/ext-authz"), Some("skipped"), "{states:?}");
    assert_eq!(state("demo/waypoint-only"), Some("skipped"), "{states:?}");
    assert_eq!(state("demo/web"), Some("ignored"), "{states:?}");
    let samples = scrape(&cluster, "node2");
    let objects = |state| metric_sum(&samples, "ztunnel_policy_objects", &[("state", state)]);
    assert_eq!(
        (objects("applied"), objects("skipped"), objects("ignored")),
        (1.0, 2.0, 1.0)
    );
    let findings = ctl(&cluster, "node2", &["analyze"]);
    assert!(
        findings.contains("AuthorizationPolicy demo/ext-authz")
            && findings.contains("skipped: spec.action: CUSTOM"),
        "{findings}"
    );

    // A second file that stops parsing keeps its last good objects; the
    // first moves on.
    apply(&cluster, "mixed", deny_client);
    apply(&cluster, "allow", ALLOW_CLIENT);
    apply(&cluster, "allow", "kind: [");
    assert!(
        !reaches(&cluster, "legacy-1", "web-2", 8080),
        "allow.yaml's ALLOW stays"
    );
    assert!(
        !reaches(&cluster, "client-1", "web-2", 8080),
        "mixed.yaml's DENY stays"
    );
    let findings = ctl(&cluster, "node2", &["analyze"]);
    assert!(
        findings.contains("allow.yaml: document 1 (line 1)")
            && findings.contains("the objects of its last version that parsed stay in force"),
        "{findings}"
    );
}

#[test]
fn a_new_deny_closes_open_connections_it_denies() {
    let cluster = mesh(2);
    let _web2 = http_server(&cluster, "web-2");
    let _web1 = http_server(&cluster, "web-1");
    // Connections that stay open: an unfinished request head keeps the server waiting.
    let hold_open = |from: &str, to: &str| {
        let address = format!("{}:8080", cluster.pod(to).unwrap().ipv4);
        cluster
            .spawn(from, &testapp_path(), &["send", &address])
            .unwrap()
    };
    let mut across = hold_open("client-1", "web-2");
    let mut plain = hold_open("legacy-1", "web-2");
    let mut local = hold_open("client-1", "web-1");
    for pod in ["web-2", "web-1"] {
        within(
            Duration::from_secs(3),
            "the connections are established",
            || {
                let out = cluster
                    .run(
                        pod,
                        "ss",
                        &["-Htn", "state", "established", "( sport = :8080 )"],
                    )
                    .unwrap_or_default();
                out.lines().count() >= if pod == "web-2" { 2 } else { 1 }
            },
        );
    }

    // Deny the demo namespace: the mTLS connections (across nodes and on the
    // same node) are closed, the plaintext one (no namespace) stays.
    apply(
        &cluster,
        "deny",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-demo
  namespace: demo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["demo"]
"#,
    );
    for (what, client) in [("across nodes", &mut across), ("same node", &mut local)] {
        let status = client.wait(Duration::from_secs(5)).unwrap();
        assert!(status.success(), "{what}: {}", client.log());
        assert_eq!(
            client.log().trim(),
            "reset",
            "{what}: the client sees the connection reset"
        );
    }
    assert!(
        plain.wait(Duration::from_millis(500)).is_err(),
        "the plaintext connection stays open"
    );
    let closed = |node: &str| {
        access_log(&cluster, node)
            .iter()
            .filter(|entry| {
                entry["reporter"] == "destination"
                    && entry["end"]
                        == "closed by a policy change: denied by DENY policy demo/deny-demo rule 0"
            })
            .count()
    };
    assert_eq!(closed("node2"), 1);
    assert_eq!(closed("node1"), 1);
}

#[test]
fn attributes_a_node_proxy_cannot_see_never_open_a_door() {
    // As Istio translates policies for its ztunnel: an ALLOW on
    // remoteIpBlocks (HTTP headers) or on connection.sni matches nothing
    // (here it used to match the source address, and a notValues on the SNI
    // everything: both fail open), and a DENY whose `to` names only a path
    // denies nothing at L4.
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    let legacy = cluster.pod("legacy-1").unwrap().ipv4;
    apply(
        &cluster,
        "allow",
        &format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-remote-ip
  namespace: demo
spec:
  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
  - from:
    - source:
        remoteIpBlocks: ["{legacy}/32"]
  - when:
    - key: connection.sni
      notValues: ["blocked.example"]
"#
        ),
    );
    for from in ["legacy-1", "client-1"] {
        assert!(!reaches(&cluster, from, "web-2", 8080), "{from} got in");
    }
    assert!(
        denials(
            &cluster,
            "node2",
            "no rule of the ALLOW policies demo/web-remote-ip matches"
        ) >= 2
    );

    apply(
        &cluster,
        "allow",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-admin
  namespace: demo
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin"]
"#,
    );
    assert!(
        reaches(&cluster, "client-1", "web-2", 8080),
        "a DENY on a path alone denies nothing at L4"
    );
    let findings = ctl(&cluster, "node2", &["analyze"]);
    assert!(
        findings.contains("demo/web-admin: DENY rule 0 denies nothing at L4"),
        "{findings}"
    );
}

#[test]
fn peer_authentication_as_the_ambient_translation_applies_it_from_a_list_export() {
    // A `kubectl get -o yaml` export (kind: List): mesh STRICT, and web's
    // workload policy UNSET with port 8080 DISABLE. In ambient mode a
    // port-level DISABLE alone does not exempt a port from an inherited
    // STRICT (istio/istio ambient/authorization.go): plaintext is refused.
    let cluster = mesh(2);
    let _web = http_server(&cluster, "web-2");
    assert!(reaches(&cluster, "legacy-1", "web-2", 8080));
    let export = |port_mode: &str| {
        format!(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {{name: default, namespace: istio-system}}
  spec: {{mtls: {{mode: STRICT}}}}
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {{name: web, namespace: demo}}
  spec:
    selector: {{matchLabels: {{app: web}}}}
    mtls: {{mode: UNSET}}
    portLevelMtls: {{8080: {{mode: {port_mode}}}}}
"#
        )
    };
    apply(&cluster, "mtls", &export("DISABLE"));
    assert!(
        !reaches(&cluster, "legacy-1", "web-2", 8080),
        "DISABLE alone leaves 8080 STRICT"
    );
    assert!(
        reaches(&cluster, "client-1", "web-2", 8080),
        "mutual TLS still passes"
    );
    let policies = ctl(&cluster, "node2", &["policies"]);
    assert!(
        policies.contains("mtls.yaml document 1 (line 2) item 2"),
        "{policies}"
    );

    apply(&cluster, "mtls", &export("PERMISSIVE"));
    assert!(
        reaches(&cluster, "legacy-1", "web-2", 8080),
        "a PERMISSIVE port is exempt"
    );

    // Of two workload policies, the oldest decides (Istio's rule), whatever
    // their names.
    apply(
        &cluster,
        "mtls",
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-newer, namespace: demo, creationTimestamp: "2026-06-01T00:00:00Z"}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-older, namespace: demo, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}
"#,
    );
    assert!(
        !reaches(&cluster, "legacy-1", "web-2", 8080),
        "the older STRICT decides"
    );
    let findings = ctl(&cluster, "node2", &["analyze"]);
    assert!(
        findings.contains("the oldest, demo/b-older, decides"),
        "{findings}"
    );
}

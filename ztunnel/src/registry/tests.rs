use super::*;

const EXAMPLE: &str = include_str!("../../../docs/registry.example.yaml");

#[test]
fn the_documented_example_loads() {
    let registry = Registry::from_yaml(EXAMPLE).expect("docs/registry.example.yaml is valid");
    assert_eq!(registry.nodes.len(), 2);
    assert_eq!(registry.pods_on("node1").count(), 3);
    let web = &registry.services[0];
    assert_eq!(web.ports[0].target_port, 8080);
}

#[test]
fn round_trips_through_yaml() {
    let registry = Registry::from_yaml(EXAMPLE).unwrap();
    assert_eq!(Registry::from_yaml(&registry.to_yaml()).unwrap(), registry);
}

#[test]
fn enrolment_follows_namespace_label_and_pod_opt_out() {
    let registry = Registry::from_yaml(EXAMPLE).unwrap();
    let enrolment = Enrolment::default();
    let enrolled: Vec<_> = registry
        .pods
        .iter()
        .filter(|pod| enrolment.enrols_in(&registry, pod))
        .map(|pod| pod.name.as_str())
        .collect();
    // demo is labelled ambient; batch-1 opts out; legacy has no label.
    assert_eq!(enrolled, ["web-1", "client-1", "web-2"]);

    let custom = Enrolment {
        namespace_label: "mesh=on".parse().unwrap(),
        ..Enrolment::default()
    };
    assert!(
        registry
            .pods
            .iter()
            .all(|pod| !custom.enrols_in(&registry, pod))
    );
}

#[test]
fn label_selector_parse_rejects_malformed() {
    for bad in ["", "key", "=value", "key="] {
        assert!(
            bad.parse::<LabelSelector>().is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn unknown_fields_are_errors_with_a_location() {
    let err = Registry::from_yaml("nodes:\n  - name: node1\n    zone: a\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("zone"), "{text}");
    assert!(text.contains("line"), "{text}");
}

#[test]
fn inconsistencies_are_all_reported() {
    let yaml = r#"
nodes: [{name: node1}]
namespaces: [{name: demo}]
pods:
  - {name: a, namespace: demo, serviceAccount: sa, node: node9, ips: [10.0.0.1], netns: /run/netns/a}
  - {name: b, namespace: nope, serviceAccount: sa, node: node1, ips: [10.0.0.1], netns: relative}
  - {name: Bad_Name, namespace: demo, serviceAccount: sa, node: node1, ips: [], netns: /x}
services:
  - {name: svc, namespace: demo, vips: [10.0.0.1], ports: [{port: 0, targetPort: 80}]}
"#;
    let text = Registry::from_yaml(yaml).unwrap_err().to_string();
    for expected in [
        "pod demo/a: node \"node9\" is not in the registry",
        "pod nope/b: namespace \"nope\" is not in the registry",
        "pod nope/b: address 10.0.0.1 is already used by pod demo/a",
        "pod nope/b: netns relative must be an absolute path",
        "pod demo/Bad_Name: pod name \"Bad_Name\" is not a valid Kubernetes name",
        "pod demo/Bad_Name: has no ips",
        "service demo/svc: address 10.0.0.1 is already used by pod demo/a",
        "service demo/svc: port and targetPort must be 1-65535",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in: {text}");
    }
}

#[test]
fn hostile_input_is_an_error_not_a_panic() {
    for text in [
        "[",
        "nodes: {",
        "nodes: [[[[[[[[[[",
        "\u{0}",
        "pods: 5",
        "&a [*a]",
    ] {
        assert!(
            Registry::from_yaml(text).is_err(),
            "{text:?} should be rejected"
        );
    }
}

#[test]
fn indexed_lookups_agree_with_a_scan_and_do_not_affect_equality() {
    let registry = Registry::from_yaml(EXAMPLE).unwrap();
    let untouched = registry.clone();
    for pod in &registry.pods {
        for ip in &pod.ips {
            assert_eq!(registry.pod_at(*ip), Some(&**pod));
        }
    }
    for service in &registry.services {
        for vip in &service.vips {
            assert_eq!(registry.service_at(*vip), Some(&**service));
            assert_eq!(registry.pod_at(*vip), None, "a VIP is no pod's");
        }
    }
    assert_eq!(registry.pod_at("10.99.99.99".parse().unwrap()), None);
    assert_eq!(registry.service_at("10.244.1.2".parse().unwrap()), None);
    let demo: Vec<&str> = registry.pods_in("demo").map(|p| p.name.as_str()).collect();
    let scanned: Vec<&str> = registry
        .pods
        .iter()
        .filter(|p| p.namespace == "demo")
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(demo, scanned);
    assert_eq!(registry.pods_in("nope").count(), 0);
    assert_eq!(
        registry, untouched,
        "an index built by lookups is not content"
    );
    let copy = registry.clone();
    assert_eq!(
        copy.pod_at("10.244.2.2".parse().unwrap())
            .map(|p| p.name.as_str()),
        Some("web-2")
    );
}

#[test]
fn a_file_of_a_large_cluster_loads() {
    // Past the YAML parser's default budget (250,000 nodes: about 14,000
    // pods), which would stop a growing cluster's file from loading.
    let pods = 20_000;
    let mut yaml = String::from(
        "nodes: [{name: node1}]\nnamespaces: [{name: big, labels: {istio.io/dataplane-mode: ambient}}]\npods:\n",
    );
    for i in 0..pods {
        yaml.push_str(&format!(
            "  - {{name: pod-{i}, namespace: big, serviceAccount: sa-{}, node: node1, ips: [10.{}.{}.{}], labels: {{app: app-{}, version: v1}}}}\n",
            i / 10,
            i >> 16,
            (i >> 8) & 255,
            i & 255,
            i / 10
        ));
    }
    let registry = Registry::from_yaml(&yaml).expect("a large registry loads");
    assert_eq!(registry.pods.len(), pods);
    assert_eq!(registry.pods_on("node1").count(), pods);
}

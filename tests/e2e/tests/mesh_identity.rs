//! Identities in the running mesh: each node daemon holds a certificate for
//! every ServiceAccount with an enrolled pod on its node, and never one for an
//! account without; registry changes add and drop them without a restart.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use ztunnel_cluster::{Cluster, ClusterSpec, netns};
use ztunnel_e2e::bin_dir;

const MODE: &str = "istio.io/dataplane-mode";

/// The identities node `node`'s daemon holds valid certificates for, read
/// from its admin endpoint as an operator would.
fn held(cluster: &Cluster, node: &str) -> BTreeSet<String> {
    let node = cluster.status().node(node).unwrap();
    let admin = &node.daemon.as_ref().unwrap().admin;
    let body = netns::output(netns::exec(&node.netns, "curl").args([
        "-sS",
        "--fail",
        &format!("http://{admin}/certs"),
    ]))
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|cert| cert["valid"] == true)
        .map(|cert| cert["identity"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(names: &[&str]) -> BTreeSet<String> {
    names
        .iter()
        .map(|sa| format!("spiffe://cluster.local/ns/{sa}"))
        .collect()
}

/// Waits (up to 5 s) until `node` holds exactly `want`.
fn wait_for(cluster: &Cluster, node: &str, want: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = held(cluster, node);
        if &now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} holds {now:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemons_hold_exactly_the_identities_of_their_enrolled_pods_and_follow_registry_changes() {
    let mut cluster = Cluster::create(&ClusterSpec::ephemeral(2, 1).with_mesh(bin_dir())).unwrap();
    let demo = ids(&["demo/sa/web", "demo/sa/client"]);
    // Ready means certified: no waiting needed right after creation.
    assert_eq!(
        held(&cluster, "node1"),
        demo,
        "legacy pods are not enrolled, so no legacy identity"
    );
    assert_eq!(held(&cluster, "node2"), demo);

    // A namespace joins the mesh: its ServiceAccount is certified on every node.
    cluster
        .label_namespace("legacy", MODE, Some("ambient"))
        .unwrap();
    let with_legacy = ids(&["demo/sa/web", "demo/sa/client", "legacy/sa/default"]);
    wait_for(&cluster, "node1", &with_legacy);
    wait_for(&cluster, "node2", &with_legacy);

    // The last web pod of node1 opts out: node1 drops demo/web, node2 keeps it.
    cluster.label_pod("web-1", MODE, Some("none")).unwrap();
    wait_for(
        &cluster,
        "node1",
        &ids(&["demo/sa/client", "legacy/sa/default"]),
    );
    assert_eq!(held(&cluster, "node2"), with_legacy);

    // The namespace leaves again.
    cluster.label_namespace("legacy", MODE, None).unwrap();
    wait_for(&cluster, "node1", &ids(&["demo/sa/client"]));
    wait_for(&cluster, "node2", &demo);
}

#[test]
fn a_changed_trust_bundle_is_taken_without_a_restart() {
    let cluster = Cluster::create(&ClusterSpec::ephemeral(1, 1).with_mesh(bin_dir())).unwrap();
    let node = cluster.status().node("node1").unwrap();
    let roots = || {
        let body = netns::output(netns::exec(&node.netns, "curl").args([
            "-sS",
            "--fail",
            "http://127.0.0.1:15000/certs",
        ]))
        .unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        body["trust_bundle"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let before = roots();
    assert_eq!(before.len(), 1);
    assert!(before[0].contains("ztunnel root CA"), "{before:?}");

    // A root rotation adds the new root next to the old one, atomically as a ConfigMap update would.
    let bundle = cluster.status().ca.as_ref().unwrap().root_cert.clone();
    let dir = cluster.status().state_dir.join("rotation");
    std::fs::create_dir(&dir).unwrap();
    let (key, cert) = (dir.join("new.key"), dir.join("new.pem"));
    let mut req = std::process::Command::new("openssl");
    req.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ])
    .args(["-subj", "/O=cluster.local/CN=next root", "-days", "1"])
    .args([
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    netns::output(&mut req).unwrap();
    let both = std::fs::read_to_string(&bundle).unwrap() + &std::fs::read_to_string(&cert).unwrap();
    std::fs::write(dir.join("bundle.pem"), both).unwrap();
    std::fs::rename(dir.join("bundle.pem"), &bundle).unwrap();

    let deadline = Instant::now() + Duration::from_secs(2);
    while roots().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the new bundle was not taken within 2 s: {:?}",
            roots()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(roots().iter().any(|r| r.contains("next root")));

    // A broken bundle is refused and the last good one stays in force.
    std::fs::write(&bundle, "not a certificate").unwrap();
    // Nothing to wait for when nothing must happen: give the watcher three polls.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(roots().len(), 2);
}

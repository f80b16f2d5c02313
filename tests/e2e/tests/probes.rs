//! Kubelet probes: the kubelet runs in the node's network namespace and probes
//! pods in plaintext, with no identity. As in Istio's ambient mode they reach
//! the application directly, whatever the policies say, while the same
//! plaintext from anywhere else still meets them. The local cluster plays the
//! kubelet by running the probe in the node's namespace (`cluster exec node1`).

use ztunnel_cluster::Cluster;
use ztunnel_e2e::{apply_policy, http_server, mesh};

/// Mesh-wide STRICT mutual TLS (root namespace) and an allow-nothing
/// AuthorizationPolicy for every workload of `demo`.
const STRICT_AND_ALLOW_NOTHING: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: demo
spec: {}
"#;

/// An HTTP GET of `/` at `address` (`ip` or `[ip6]`) port 8080, from pod or
/// node `from`: the body, or the failure.
fn get(cluster: &Cluster, from: &str, address: &str) -> Result<String, String> {
    cluster
        .run(
            from,
            "curl",
            &["-sS", "--max-time", "3", &format!("http://{address}:8080/")],
        )
        .map_err(|err| err.to_string())
}

#[test]
fn kubelet_probes_reach_enrolled_pods_under_strict_and_allow_nothing() {
    let mut cluster = mesh(2);
    let _web1 = http_server(&cluster, "web-1");
    let web1 = cluster.pod("web-1").unwrap().clone();
    let (v4, v6) = (web1.ipv4.to_string(), format!("[{}]", web1.ipv6));
    assert_eq!(get(&cluster, "node1", &v4).unwrap(), "hello from web-1\n");

    apply_policy(&cluster, "strict", STRICT_AND_ALLOW_NOTHING);
    // The policies are in force: plaintext from a pod outside the mesh is
    // refused, and a meshed pod's mutual TLS is denied.
    assert!(
        get(&cluster, "legacy-1", &v4).is_err(),
        "STRICT refuses plaintext"
    );
    assert!(
        get(&cluster, "client-2", &v4).is_err(),
        "allow-nothing denies"
    );
    // The node's own probes (HTTP, over IPv4 and IPv6) reach the application.
    for address in [&v4, &v6] {
        assert_eq!(
            get(&cluster, "node1", address).unwrap(),
            "hello from web-1\n",
            "a probe from the node to {address}"
        );
    }
    // The exemption is the pod's own node's: another node is just plaintext.
    assert!(
        get(&cluster, "node2", &v4).is_err(),
        "a connection from another node is not the kubelet's"
    );

    // While the daemon is down the pod fails closed, yet its probes still
    // pass: a daemon restart does not make the kubelet restart the pods.
    cluster.kill_daemon("node1").unwrap();
    assert!(get(&cluster, "legacy-1", &v4).is_err(), "fails closed");
    assert_eq!(get(&cluster, "node1", &v4).unwrap(), "hello from web-1\n");
    cluster.start_daemon("node1").unwrap();
    assert_eq!(get(&cluster, "node1", &v4).unwrap(), "hello from web-1\n");

    // A TCP probe of a closed port is refused at once, as without the mesh.
    let refused = cluster
        .command("node1", "curl")
        .unwrap()
        .args(["-sS", "--max-time", "5", &format!("http://{v4}:8081/")])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(7),
        "curl: couldn't connect: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

//! Waypoints: a destination whose Service, pod or namespace names one
//! (`istio.io/use-waypoint`) is reached through it over HBONE, as Istio's
//! ztunnel does: service traffic asks the waypoint for the VIP dialled, pod
//! traffic (for a waypoint that takes it) for the pod's address. The
//! waypoint here is a stand-in (the test app's `waypoint`, an HBONE server
//! written against `h2`) in the pods of the `legacy` Service, outside the
//! mesh as Istio's waypoints are; it answers with what it was asked for and
//! by whom.

use ztunnel_cluster::Cluster;
use ztunnel_e2e::{
    READY, access_log,
    certificates::{cluster_root, valid_now, write_leaf},
    eventually, http_server, mesh, testapp_path,
};

const WAYPOINT: &str = "spiffe://cluster.local/ns/legacy/sa/default";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

fn get(cluster: &Cluster, url: &str) -> String {
    cluster
        .run("client-1", "curl", &["-sS", "--max-time", "5", url])
        .unwrap_or_else(|err| format!("failed: {err}"))
}

/// client-1's baggage, as Istio's ztunnel would send it.
const CLIENT_BAGGAGE: &str = "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,\
                              k8s.pod.name=client,service.name=client,service.version=latest";

/// Whether a request to `target` from client-1 was answered by a waypoint
/// asked for `target` by client-1's identity, with its baggage.
fn through(cluster: &Cluster, target: &str) -> bool {
    let answer = get(cluster, &format!("http://{target}/"));
    answer.starts_with("via waypoint legacy-")
        && answer.ends_with(&format!(
            " to {target} from {CLIENT} baggage {CLIENT_BAGGAGE}\n"
        ))
}

#[test]
fn a_destination_naming_a_waypoint_is_reached_through_it() {
    let mut cluster = mesh(2);
    let _web1 = http_server(&cluster, "web-1");
    let _web2 = http_server(&cluster, "web-2");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_leaf(
        dir.path(),
        "waypoint",
        &cluster_root(&cluster),
        WAYPOINT,
        valid_now(),
    );
    let roots = cluster.status().ca.as_ref().unwrap().root_cert.clone();
    let _waypoints: Vec<_> = ["legacy-1", "legacy-2"]
        .iter()
        .map(|pod| {
            let args = [
                "waypoint",
                "--name",
                pod,
                "--cert",
                &cert,
                "--key",
                &key,
                "--roots",
                roots.to_str().unwrap(),
            ];
            let waypoint = cluster.spawn(pod, &testapp_path(), &args).unwrap();
            cluster.wait_listening(pod, 15008, READY).unwrap();
            waypoint
        })
        .collect();
    let web = cluster.status().service("demo", "web").unwrap().clone();
    let vip4 = format!("{}:{}", web.ipv4, web.port);
    let vip6 = format!("[{}]:{}", web.ipv6, web.port);
    let web2 = cluster.pod("web-2").unwrap().clone();
    let pod_address = format!("{}:8080", web2.ipv4);
    assert!(get(&cluster, &format!("http://{vip4}/")).starts_with("hello from web-"));

    // The Service names the waypoint (in another namespace): its VIP, either
    // family, is asked of the waypoint by the client's identity.
    cluster
        .label_service("demo/web", "istio.io/use-waypoint", Some("legacy"))
        .unwrap();
    cluster
        .label_service(
            "demo/web",
            "istio.io/use-waypoint-namespace",
            Some("legacy"),
        )
        .unwrap();
    eventually("service traffic goes through the waypoint", || {
        through(&cluster, &vip4)
    });
    assert!(
        through(&cluster, &vip6),
        "{}",
        get(&cluster, &format!("http://{vip6}/"))
    );
    // A waypoint takes service traffic by default: the pod's own address is
    // still reached directly.
    assert_eq!(
        get(&cluster, &format!("http://{pod_address}/")).trim(),
        "hello from web-2"
    );

    // A waypoint for all traffic, named by the pod: the pod's address too.
    cluster
        .label_service("legacy/legacy", "istio.io/waypoint-for", Some("all"))
        .unwrap();
    cluster
        .label_pod("web-2", "istio.io/use-waypoint", Some("legacy"))
        .unwrap();
    cluster
        .label_pod("web-2", "istio.io/use-waypoint-namespace", Some("legacy"))
        .unwrap();
    eventually("pod traffic goes through the waypoint", || {
        through(&cluster, &pod_address)
    });

    // `ztunnel ctl check` says where the connection goes first.
    let checked = ztunnel_e2e::ctl(&cluster, "node1", &["check", "client-1", &vip4]);
    assert!(
        checked.contains("waypoint:    legacy/legacy: the connection goes there first"),
        "{checked}"
    );

    // Recorded as Istio's ztunnel records it: towards the waypoint's
    // workload and identity, for the service dialled, over HBONE.
    let entries = access_log(&cluster, "node1");
    let to_vip = entries
        .iter()
        .find(|entry| {
            entry["reporter"] == "source"
                && entry["dst_addr"] == vip4.as_str()
                && entry["route"] == "waypoint"
        })
        .unwrap_or_else(|| panic!("no entry through the waypoint: {entries:?}"));
    assert_eq!(to_vip["tunnel_protocol"], "hbone", "{to_vip}");
    assert_eq!(to_vip["dst_workload"], "legacy", "{to_vip}");
    assert_eq!(to_vip["dst_identity"], WAYPOINT, "{to_vip}");
    assert_eq!(
        to_vip["dst_service"], "web.demo.svc.cluster.local",
        "{to_vip}"
    );
    assert!(
        to_vip["dst_endpoint"]
            .as_str()
            .is_some_and(|endpoint| endpoint.ends_with(":15008")),
        "{to_vip}"
    );

    // `none` on the Service opts it out: straight to the endpoints again.
    cluster
        .label_service("demo/web", "istio.io/use-waypoint", Some("none"))
        .unwrap();
    eventually("the Service opted out", || {
        get(&cluster, &format!("http://{vip4}/")).starts_with("hello from web-")
    });
}

//! How Istio names a workload in its telemetry, so that this daemon's
//! metrics group the same way in Istio's dashboards and Kiali.
//!
//! Three names per pod (istio/istio `pkg/kube/util.go` and
//! `pkg/kube/labels/labels.go`):
//! - the **workload**: the pod's controller with the rollout's suffix taken
//!   off (a Deployment's pods share one name, so a rollout makes no new
//!   series), overridden by the `service.istio.io/workload-name` label; the
//!   pod's own name when it has no controller;
//! - the **canonical service**: the `service.istio.io/canonical-name`,
//!   `app.kubernetes.io/name` or `app` label, else the workload;
//! - the **canonical revision**: the `service.istio.io/canonical-revision`,
//!   `app.kubernetes.io/version` or `version` label, else `latest`.

use super::Labels;

/// The label that overrides the derived workload name.
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

const CANONICAL_NAME_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];

const CANONICAL_REVISION_LABELS: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

/// The workload of a pod called `pod` with `labels`, whose controller is
/// named `controller` (from the Kubernetes source; the registry file may name
/// the workload directly, and then passes it here).
pub fn workload<'a>(pod: &'a str, controller: Option<&'a str>, labels: &'a Labels) -> &'a str {
    labels
        .get(WORKLOAD_NAME_LABEL)
        .or(controller)
        .unwrap_or(pod)
}

/// The canonical service of a pod of `workload` with `labels`.
pub fn canonical_service<'a>(workload: &'a str, labels: &'a Labels) -> &'a str {
    first_label(labels, &CANONICAL_NAME_LABELS).unwrap_or(workload)
}

/// The canonical revision of a pod with `labels`.
pub fn canonical_revision(labels: &Labels) -> &str {
    first_label(labels, &CANONICAL_REVISION_LABELS).unwrap_or("latest")
}

fn first_label<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|key| labels.get(key))
}

/// The workload a pod's controller stands for, as Istio guesses it: a
/// ReplicaSet named `<deployment>-<pod-template-hash>` stands for its
/// Deployment (also Argo Rollouts' `rollouts-pod-template-hash`), a
/// ReplicationController of an OpenShift DeploymentConfig for that, a Job
/// named `<cronjob>-<8 to 10 digits>` for its CronJob; any other controller
/// for itself.
pub fn controller_workload(kind: &str, name: &str, labels: &Labels) -> String {
    let without_hash = |label: &str| {
        let hash = labels.get(label).filter(|hash| !hash.is_empty())?;
        name.strip_suffix(hash)?.strip_suffix('-')
    };
    let derived = match kind {
        "ReplicaSet" => {
            without_hash("pod-template-hash").or_else(|| without_hash("rollouts-pod-template-hash"))
        }
        "ReplicationController" => labels.get("deploymentconfig"),
        "Job" => name.rsplit_once('-').and_then(|(cron, stamp)| {
            let digits =
                (8..=10).contains(&stamp.len()) && stamp.bytes().all(|b| b.is_ascii_digit());
            (digits && !cron.is_empty()).then_some(cron)
        }),
        _ => None,
    };
    derived.unwrap_or(name).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::labels_of as labels;

    #[test]
    fn controllers_name_workloads_as_istio_does() {
        let hash = labels(&[("pod-template-hash", "5d8f7c9b4")]);
        let rollout = labels(&[("rollouts-pod-template-hash", "77f9")]);
        let dc = labels(&[("deploymentconfig", "frontend")]);
        let none = Labels::new();
        for (kind, name, labels, want) in [
            ("ReplicaSet", "web-5d8f7c9b4", &hash, "web"),
            ("ReplicaSet", "web-v2-5d8f7c9b4", &hash, "web-v2"),
            ("ReplicaSet", "web-abc", &hash, "web-abc"),
            ("ReplicaSet", "web-5d8f7c9b4", &none, "web-5d8f7c9b4"),
            ("ReplicaSet", "canary-77f9", &rollout, "canary"),
            ("ReplicationController", "frontend-3", &dc, "frontend"),
            ("Job", "backup-28771440", &none, "backup"),
            ("Job", "backup-1234567", &none, "backup-1234567"),
            ("Job", "backup-12345678901", &none, "backup-12345678901"),
            ("Job", "backup-2877144x", &none, "backup-2877144x"),
            ("StatefulSet", "db", &none, "db"),
            ("DaemonSet", "agent", &none, "agent"),
        ] {
            assert_eq!(
                controller_workload(kind, name, labels),
                want,
                "{kind} {name}"
            );
        }
    }

    #[test]
    fn the_workload_label_overrides_the_controller_and_the_pod_name() {
        let plain = Labels::new();
        let named = labels(&[(WORKLOAD_NAME_LABEL, "billing")]);
        assert_eq!(workload("web-7f-x2", Some("web"), &plain), "web");
        assert_eq!(workload("web-7f-x2", None, &plain), "web-7f-x2");
        assert_eq!(workload("web-7f-x2", Some("web"), &named), "billing");
    }

    #[test]
    fn canonical_names_follow_istios_label_order() {
        for (pairs, want_name, want_revision) in [
            (vec![], "wl", "latest"),
            (vec![("app", "a")], "a", "latest"),
            (
                vec![("app", "a"), ("app.kubernetes.io/name", "k")],
                "k",
                "latest",
            ),
            (
                vec![
                    ("app", "a"),
                    ("service.istio.io/canonical-name", "c"),
                    ("version", "v1"),
                ],
                "c",
                "v1",
            ),
            (
                vec![
                    ("version", "v1"),
                    ("app.kubernetes.io/version", "2.0"),
                    ("service.istio.io/canonical-revision", "r3"),
                ],
                "wl",
                "r3",
            ),
        ] {
            let labels = labels(&pairs);
            assert_eq!(canonical_service("wl", &labels), want_name, "{pairs:?}");
            assert_eq!(canonical_revision(&labels), want_revision, "{pairs:?}");
        }
    }
}

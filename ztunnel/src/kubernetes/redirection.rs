//! Telling Istio which pods this daemon captures.
//!
//! Istio's CNI agent annotates a pod `ambient.istio.io/redirection: enabled`
//! once the pod's traffic goes to its node proxy, and istiod reads that
//! annotation to tell every ztunnel the pod is reached over HBONE. In a
//! cluster where Istio's ztunnel runs on some nodes and this daemon on
//! others, the annotation is what makes Istio's ztunnels tunnel to the pods
//! here (without it they send plaintext, which a STRICT destination
//! refuses). So the daemon keeps it true for the pods of its node: set on
//! each pod it captured, removed from each it released.
//!
//! Level-triggered: the wanted set (the captured pods) is compared with
//! what the API server shows (this node's annotated pods, from the same
//! watch the registry comes from) after each change of either, so a lost
//! patch or a restart converges. A patch the API server refuses is retried
//! with backoff and logged with what the daemon needs.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;

use super::convert::PodRecord;

/// The annotation Istio's CNI agent sets on a pod whose traffic its node
/// proxy captures.
pub const ANNOTATION: &str = "ambient.istio.io/redirection";
/// Its value for a captured pod.
pub const ENABLED: &str = "enabled";

/// First delay before a refused patch is tried again; doubled up to
/// [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Keeps the annotation on exactly the pods this daemon captures.
pub struct Annotator {
    captured: watch::Sender<Option<BTreeSet<String>>>,
}

impl Annotator {
    /// Starts annotating; `annotated` is this node's annotated pods as the
    /// API server shows them (`namespace/name`).
    pub(super) fn start(client: Client, annotated: watch::Receiver<BTreeSet<String>>) -> Self {
        // Nothing is wanted until the daemon has applied the registry once:
        // an empty set at start would strip every pod of its annotation.
        let (captured, wanted) = watch::channel(None);
        tokio::spawn(run(client, wanted, annotated));
        Self { captured }
    }

    /// The pods (`namespace/name`) the daemon captures now.
    pub fn set_captured(&self, pods: &[String]) {
        let pods: BTreeSet<String> = pods.iter().cloned().collect();
        self.captured.send_if_modified(|current| {
            let modified = current.as_ref() != Some(&pods);
            *current = Some(pods);
            modified
        });
    }
}

async fn run(
    client: Client,
    mut wanted: watch::Receiver<Option<BTreeSet<String>>>,
    mut annotated: watch::Receiver<BTreeSet<String>>,
) {
    // Patched, and not yet seen so in the watch: not patched again meanwhile.
    let mut patched: BTreeMap<String, bool> = BTreeMap::new();
    let mut retry = RETRY;
    loop {
        let wanted_now = wanted.borrow_and_update().clone();
        let shown = annotated.borrow_and_update().clone();
        let mut failed = false;
        if let Some(wanted_now) = wanted_now {
            patched.retain(|pod, enabled| {
                (wanted_now.contains(pod) || shown.contains(pod)) && *enabled != shown.contains(pod)
            });
            for pod in wanted_now.symmetric_difference(&shown) {
                let enable = wanted_now.contains(pod);
                if patched.get(pod) == Some(&enable) {
                    continue;
                }
                match annotate(&client, pod, enable).await {
                    Ok(()) => {
                        patched.insert(pod.clone(), enable);
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(err) => {
                        failed = true;
                        tracing::warn!(
                            pod = %pod,
                            retry_s = retry.as_secs(),
                            "cannot {} the pod's {ANNOTATION} annotation (Istio's ztunnels on other \
                             nodes reach it over HBONE only with it; the daemon's ClusterRole needs \
                             `patch` on pods): {err}",
                            if enable { "set" } else { "remove" },
                        );
                    }
                }
            }
        }
        let delay = retry;
        retry = if failed {
            (retry * 2).min(RETRY_MAX)
        } else {
            RETRY
        };
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            changed = annotated.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(delay), if failed => {}
        }
    }
}

/// Sets (`enable`) or removes the annotation on `pod` (`namespace/name`).
async fn annotate(client: &Client, pod: &str, enable: bool) -> Result<(), kube::Error> {
    let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
    let value = if enable {
        serde_json::Value::from(ENABLED)
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({ "metadata": { "annotations": { ANNOTATION: value } } });
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(pod = %pod, enabled = enable, "{ANNOTATION} annotation updated");
    Ok(())
}

/// The pods of `node` among `pods` that carry the annotation, enabled.
pub(super) fn annotated_on<'a>(
    pods: impl Iterator<Item = &'a PodRecord>,
    node: &str,
) -> BTreeSet<String> {
    pods.filter(|pod| pod.annotated && pod.node.as_deref() == Some(node))
        .map(|pod| pod.key().to_owned())
        .collect()
}

//! The daemon's policies: the file source watched, and what is in force
//! counted in metrics.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::watch;

use super::NodeError;
use crate::{
    metrics::{LoadLabels, Metrics, PolicyObjectLabels},
    policy::{Loader, ObjectState, PolicySet},
    reload::Watched,
};

/// The policy directory, watched: the watcher (kept alive by its holder) and
/// its receiver. Without a directory, no policy.
pub type PolicyFiles = (Option<Watched<PolicySet>>, watch::Receiver<Arc<PolicySet>>);

/// Loads `dir` (objects one at a time, see [`Loader`]) and reloads it on
/// change. Fails only when the directory cannot be read at start.
pub fn watch_files(dir: Option<&PathBuf>, root: &str) -> Result<PolicyFiles, NodeError> {
    let Some(dir) = dir else {
        return Ok((None, watch::channel(Arc::new(PolicySet::default())).1));
    };
    let mut loader = Loader::new(root);
    let watched = Watched::start(dir.clone(), "policies", move |dir: &std::path::Path| {
        loader.load_dir(dir)
    })?;
    let set = watched.current();
    tracing::info!(
        authorization = set.authorization.len(),
        peer_authentication = set.peer_authentication.len(),
        problems = set.problems().len(),
        "policies loaded"
    );
    let receiver = watched.subscribe();
    Ok((Some(watched), receiver))
}

/// Keeps `ztunnel_policy_objects` and `ztunnel_policy_loads_total` in step
/// with every set of policies published.
pub async fn count(mut policies: watch::Receiver<Arc<PolicySet>>, metrics: Arc<Metrics>) {
    // The loader counts its loads, so loads between two wake-ups are not lost.
    let (mut loads, mut with_problems) = (0, 0);
    loop {
        let set = policies.borrow_and_update().clone();
        for kind in ["AuthorizationPolicy", "PeerAuthentication", "other"] {
            for state in ObjectState::ALL {
                let found = set
                    .objects
                    .iter()
                    .filter(|o| o.state == state && kind_label(&o.kind) == kind)
                    .count();
                let labels = PolicyObjectLabels {
                    kind,
                    state: state.as_str(),
                };
                metrics
                    .policy_objects
                    .get_or_create(&labels)
                    .set(i64::try_from(found).unwrap_or(i64::MAX));
            }
        }
        let new_problems = set.loads_with_problems.saturating_sub(with_problems);
        let new_clean = set.loads.saturating_sub(loads).saturating_sub(new_problems);
        let counter = |result| {
            metrics
                .policy_loads
                .get_or_create(&LoadLabels { result })
                .clone()
        };
        counter("refused").inc_by(new_problems);
        counter("clean").inc_by(new_clean);
        (loads, with_problems) = (set.loads, set.loads_with_problems);
        if policies.changed().await.is_err() {
            return;
        }
    }
}

/// The metric label of a kind: bounded, whatever kinds the directory holds.
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "AuthorizationPolicy" => "AuthorizationPolicy",
        "PeerAuthentication" => "PeerAuthentication",
        _ => "other",
    }
}

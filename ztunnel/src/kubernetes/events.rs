//! Kubernetes Events on policy objects this proxy does not apply as written,
//! so `kubectl describe authorizationpolicy <name>` shows why: refused,
//! skipped, or applied without the HTTP attributes a node proxy cannot see.
//!
//! Istio reports the same through a `ZtunnelAccepted` status condition that
//! istiod (one writer per cluster) keeps. Here every node daemon judges each
//! object itself, so each posts an Event (reporting instance: its node)
//! instead of racing the others on the object's status; an Event is posted
//! when an object's state or reason changes, not on every reload.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    api::DynamicObject,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use super::{policies, store::Store};
use crate::policy::{ObjectState, PolicySet};

/// The reporting controller named in the Events.
const CONTROLLER: &str = "ztunnel-ebpf";
/// The Events API caps a note at 1 kB.
const NOTE_LIMIT: usize = 1000;

/// Posts an Event for each policy object whose state changed to one that
/// needs explaining.
pub struct PolicyEvents {
    recorder: Arc<Recorder>,
    /// What was last posted per `(kind, namespace/name)`.
    posted: HashMap<(String, String), (ObjectState, String)>,
}

impl PolicyEvents {
    /// Events reported by the daemon of `node`.
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: Some(node.to_owned()),
        };
        Self {
            recorder: Arc::new(Recorder::new(client, reporter)),
            posted: HashMap::new(),
        }
    }

    /// Posts the Events `set` calls for; `stores` hold the objects (one per
    /// kind of [`policies::KINDS`]). Posting runs in the background: the API
    /// server being slow never holds back the policies.
    pub fn post(&mut self, set: &PolicySet, stores: &[Store<DynamicObject>; 2]) {
        let mut now = HashMap::new();
        for status in &set.objects {
            let Some(index) = policies::KINDS.iter().position(|k| *k == status.kind) else {
                continue;
            };
            let (Some(reason), Some(object)) =
                (event_reason(status.state), stores[index].get(&status.id))
            else {
                continue;
            };
            let note = status.reason.clone().unwrap_or_default();
            let key = (status.kind.clone(), status.id.clone());
            let posted = (status.state, note.clone());
            if self.posted.get(&key) != Some(&posted) {
                let event = Event {
                    type_: EventType::Warning,
                    reason: reason.to_owned(),
                    note: Some(note.chars().take(NOTE_LIMIT).collect()),
                    action: "Load".to_owned(),
                    secondary: None,
                };
                let reference = reference(&status.kind, object);
                let recorder = self.recorder.clone();
                tokio::spawn(async move {
                    if let Err(err) = recorder.publish(&event, &reference).await {
                        tracing::warn!(
                            policy = reference.name.as_deref().unwrap_or_default(),
                            "cannot post a Kubernetes Event for a policy: {err}"
                        );
                    }
                });
            }
            now.insert(key, posted);
        }
        self.posted = now;
    }
}

/// The Event reason of a state that needs explaining.
fn event_reason(state: ObjectState) -> Option<&'static str> {
    match state {
        ObjectState::Refused => Some("PolicyRefused"),
        ObjectState::Skipped => Some("PolicySkipped"),
        ObjectState::AppliedL4Only => Some("PolicyAppliedL4Only"),
        ObjectState::Applied | ObjectState::Ignored => None,
    }
}

/// A reference to the policy object `object` of `kind`.
fn reference(kind: &str, object: &DynamicObject) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", policies::GROUP, policies::VERSION)),
        kind: Some(kind.to_owned()),
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        uid: object.metadata.uid.clone(),
        resource_version: object.metadata.resource_version.clone(),
        field_path: None,
    }
}

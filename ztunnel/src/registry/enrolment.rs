//! Which pods belong to the mesh: a pure decision over the registry.

use super::{Labels, Namespace, Pod, Registry};

/// A `key=value` label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    /// Label key.
    pub key: String,
    /// Required value.
    pub value: String,
}

impl LabelSelector {
    /// Whether `labels` carries this key with this value.
    pub fn matches(&self, labels: &Labels) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok(Self {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("expected a label as key=value, got {s:?}")),
        }
    }
}

/// The enrolment rule: a namespace label that enrols, a pod label that opts out.
///
/// Defaults follow Istio ambient: namespaces labelled
/// `istio.io/dataplane-mode=ambient` are enrolled, except pods labelled
/// `istio.io/dataplane-mode=none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolment {
    /// Label on a namespace that enrols its pods.
    pub namespace_label: LabelSelector,
    /// Label on a pod that keeps it out of the mesh.
    pub pod_opt_out: LabelSelector,
}

/// Istio's label for the data-plane mode of a namespace or pod.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

impl Default for Enrolment {
    fn default() -> Self {
        Self {
            namespace_label: LabelSelector {
                key: DATAPLANE_MODE_LABEL.to_owned(),
                value: "ambient".to_owned(),
            },
            pod_opt_out: LabelSelector {
                key: DATAPLANE_MODE_LABEL.to_owned(),
                value: "none".to_owned(),
            },
        }
    }
}

impl Enrolment {
    /// Whether `pod`, in `namespace`, is part of the mesh.
    pub fn enrols(&self, namespace: &Namespace, pod: &Pod) -> bool {
        self.namespace_label.matches(&namespace.labels) && !self.pod_opt_out.matches(&pod.labels)
    }

    /// Whether `pod` is part of the mesh, looking its namespace up in `registry`
    /// (a pod of an unknown namespace is not enrolled).
    pub fn enrols_in(&self, registry: &Registry, pod: &Pod) -> bool {
        registry
            .namespace(&pod.namespace)
            .is_some_and(|ns| self.enrols(ns, pod))
    }
}

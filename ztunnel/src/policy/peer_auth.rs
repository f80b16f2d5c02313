//! PeerAuthentication: which connections a workload accepts, with Istio's
//! precedence: a workload policy (selector) over the namespace's over the
//! mesh's (root namespace); a port-level mode over the policy's own; UNSET
//! inherits from the next level; PERMISSIVE when nothing decides.

use std::collections::BTreeMap;

use super::{
    PolicyError,
    authz::Workload,
    model::{Metadata, MtlsMode, PeerAuthenticationSpec},
};
use crate::registry::Labels;

/// A PeerAuthentication ready to apply.
#[derive(Clone, Debug)]
pub struct PeerAuthentication {
    /// `namespace/name`.
    pub id: String,
    namespace: String,
    selector: Option<Labels>,
    mode: MtlsMode,
    ports: BTreeMap<u16, MtlsMode>,
    /// The specification as written, for the config dump.
    pub spec: PeerAuthenticationSpec,
}

impl PeerAuthentication {
    /// Compiles `spec`.
    pub fn compile(
        metadata: &Metadata,
        spec: &PeerAuthenticationSpec,
    ) -> Result<Self, PolicyError> {
        if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
            return Err(PolicyError::Field {
                field: "spec.portLevelMtls".to_owned(),
                message: "port-level modes need a workload selector (as in Istio)".to_owned(),
            });
        }
        Ok(Self {
            spec: spec.clone(),
            id: format!("{}/{}", metadata.namespace, metadata.name),
            namespace: metadata.namespace.clone(),
            selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
            mode: spec.mtls.map(|m| m.mode).unwrap_or_default(),
            ports: spec
                .port_level_mtls
                .iter()
                .map(|(port, mtls)| (*port, mtls.mode))
                .collect(),
        })
    }
}

impl PeerAuthentication {
    /// Its namespace and its selector's labels, if it has a selector.
    pub fn scope(&self) -> (&str, Option<&Labels>) {
        (&self.namespace, self.selector.as_ref())
    }
}

/// The mode for connections to `port` of `workload`; `root` is the mesh-wide
/// namespace. Never [`MtlsMode::Unset`].
pub fn mode(
    policies: &[PeerAuthentication],
    workload: &Workload<'_>,
    port: u16,
    root: &str,
) -> MtlsMode {
    let selects = |p: &PeerAuthentication| {
        p.selector.as_ref().is_some_and(|selector| {
            selector
                .iter()
                .all(|(key, value)| workload.labels.get(key) == Some(value))
        })
    };
    // Istio uses the oldest of several matching workload policies; files have
    // no creation time, so the first by name decides (policies are sorted).
    let workload_policy = policies
        .iter()
        .find(|p| p.namespace == workload.namespace && selects(p));
    let namespace_policy = policies
        .iter()
        .find(|p| p.namespace == workload.namespace && p.selector.is_none());
    let mesh_policy = policies
        .iter()
        .find(|p| p.namespace == root && p.selector.is_none());
    [
        workload_policy.and_then(|p| p.ports.get(&port).copied()),
        workload_policy.map(|p| p.mode),
        namespace_policy.map(|p| p.mode),
        mesh_policy.map(|p| p.mode),
    ]
    .into_iter()
    .flatten()
    .find(|mode| *mode != MtlsMode::Unset)
    .unwrap_or(MtlsMode::Permissive)
}

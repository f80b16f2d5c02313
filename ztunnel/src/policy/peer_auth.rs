//! PeerAuthentication, as Istio's ambient mode enforces it.
//!
//! Istio translates PeerAuthentication for its node proxy differently from
//! its sidecars (istio/istio `pilot/pkg/serviceregistry/ambient`,
//! `convertedSelectorPeerAuthentications` and `convertPeerAuthentication`):
//!
//! - at each level (mesh: the root namespace without selector; namespace;
//!   workload: a selector with labels) the **oldest** policy is the one used;
//!   a selector policy in the root namespace is ignored;
//! - UNSET inherits: workload from namespace from mesh; PERMISSIVE when
//!   nothing is set;
//! - a port-level mode only matters against the workload policy's own or
//!   inherited mode. Under an inherited STRICT (workload mode UNSET), the
//!   port exceptions take effect only when at least one of them is
//!   PERMISSIVE: port-level DISABLE alone leaves the port STRICT.
//!
//! Istio's translation drops STRICT entirely in two corners (see
//! [`Layers::istio_relaxes`]); this proxy keeps it there, a deliberate, safer
//! difference that `ctl analyze` reports.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

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
    /// When it was created (none: written by hand, newer than any dated one).
    created: Option<Timestamp>,
    mode: MtlsMode,
    ports: BTreeMap<u16, MtlsMode>,
    /// The specification as written, for the config dump.
    pub spec: PeerAuthenticationSpec,
}

impl PeerAuthentication {
    /// Compiles `spec`; `root` is the mesh-wide namespace.
    pub fn compile(
        metadata: &Metadata,
        spec: &PeerAuthenticationSpec,
        root: &str,
    ) -> Result<Self, PolicyError> {
        // An empty selector selects the whole namespace, as no selector does.
        let selector = spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .filter(|labels| !labels.is_empty());
        if !spec.port_level_mtls.is_empty() && selector.is_none() {
            return Err(PolicyError::Field {
                field: "spec.portLevelMtls".to_owned(),
                message: "port-level modes need a workload selector (as in Istio)".to_owned(),
            });
        }
        if let Some(port) = spec.port_level_mtls.keys().find(|port| **port == 0) {
            return Err(PolicyError::Field {
                field: format!("spec.portLevelMtls[{port}]"),
                message: "0 is not a port (1-65535)".to_owned(),
            });
        }
        if selector.is_some() && metadata.namespace == root {
            return Err(PolicyError::Unsupported {
                field: "spec.selector".to_owned(),
                message: format!(
                    "a workload selector in the root namespace {root} selects nothing in ambient mode (Istio's ambient translation ignores such a PeerAuthentication); put it in the workload's namespace"
                ),
            });
        }
        let created = metadata
            .creation_timestamp
            .as_deref()
            .map(|text| {
                text.parse::<Timestamp>().map_err(|err| PolicyError::Field {
                    field: "metadata.creationTimestamp".to_owned(),
                    message: format!("{text:?} is not an RFC 3339 time: {err}"),
                })
            })
            .transpose()?;
        Ok(Self {
            spec: spec.clone(),
            id: format!("{}/{}", metadata.namespace, metadata.name),
            namespace: metadata.namespace.clone(),
            selector,
            created,
            mode: spec.mtls.map(|m| m.mode).unwrap_or_default(),
            ports: spec
                .port_level_mtls
                .iter()
                .map(|(port, mtls)| (*port, mtls.mode))
                .collect(),
        })
    }

    /// Istio's order among policies of one level: the oldest first, undated
    /// ones last, then by namespace and name.
    fn age_key(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.id)
    }
}

impl PeerAuthentication {
    /// Whether it is a workload policy selecting `workload` (`root`: the
    /// mesh-wide namespace, whose selector policies select nothing).
    pub fn selects(&self, workload: &Workload<'_>, root: &str) -> bool {
        self.namespace == workload.namespace
            && self.namespace != root
            && self
                .selector
                .as_ref()
                .is_some_and(|selector| workload.labels.contain_all(selector))
    }

    /// Its namespace and its selector's labels, if it has a selector.
    pub fn scope(&self) -> (&str, Option<&Labels>) {
        (&self.namespace, self.selector.as_ref())
    }
}

/// The policies that decide for one workload: the oldest of each level.
#[derive(Clone, Copy, Debug, Default)]
pub struct Layers<'a> {
    /// The mesh-wide policy (root namespace, no selector).
    pub mesh: Option<&'a PeerAuthentication>,
    /// The namespace-wide policy (no selector).
    pub namespace: Option<&'a PeerAuthentication>,
    /// The oldest workload policy whose selector matches.
    pub workload: Option<&'a PeerAuthentication>,
}

/// The policies of each level that apply to `workload` (`root`: the
/// mesh-wide namespace).
pub fn layers<'a>(
    policies: &'a [PeerAuthentication],
    workload: &Workload<'_>,
    root: &str,
) -> Layers<'a> {
    let oldest = |keep: &dyn Fn(&PeerAuthentication) -> bool| {
        policies
            .iter()
            .filter(|p| keep(p))
            .min_by(|a, b| a.age_key().cmp(&b.age_key()))
    };
    let in_namespace = workload.namespace != root;
    Layers {
        mesh: oldest(&|p| p.namespace == root && p.selector.is_none()),
        namespace: oldest(&|p| {
            in_namespace && p.namespace == workload.namespace && p.selector.is_none()
        }),
        workload: oldest(&|p| p.selects(workload, root)),
    }
}

impl Layers<'_> {
    /// Whether the mesh and namespace policies make STRICT the mode a
    /// workload policy inherits.
    fn inherited_strict(&self) -> bool {
        match self.namespace.map(|p| p.mode) {
            Some(mode) if mode != MtlsMode::Unset => mode == MtlsMode::Strict,
            _ => self.mesh.is_some_and(|p| p.mode == MtlsMode::Strict),
        }
    }

    /// The mode for connections to `port`: [`MtlsMode::Strict`] or
    /// [`MtlsMode::Permissive`] (DISABLE accepts what PERMISSIVE does: a
    /// daemon cannot make its peer send plaintext).
    pub fn mode(&self, port: u16) -> MtlsMode {
        let inherited = self.inherited_strict();
        let strict = match self.workload {
            None => inherited,
            Some(workload) => {
                let at_port = workload.ports.get(&port).copied().unwrap_or_default();
                let relaxes = matches!(at_port, MtlsMode::Permissive | MtlsMode::Disable);
                match workload.mode {
                    MtlsMode::Strict => !relaxes,
                    MtlsMode::Permissive | MtlsMode::Disable => at_port == MtlsMode::Strict,
                    // Istio exempts ports from an inherited STRICT only when one
                    // of the exceptions is PERMISSIVE (then DISABLE ones too).
                    MtlsMode::Unset if inherited => {
                        let any_permissive =
                            workload.ports.values().any(|m| *m == MtlsMode::Permissive);
                        !(relaxes && any_permissive)
                    }
                    MtlsMode::Unset => at_port == MtlsMode::Strict,
                }
            }
        };
        if strict {
            MtlsMode::Strict
        } else {
            MtlsMode::Permissive
        }
    }

    /// Where Istio's ztunnel would accept plaintext on ports this proxy
    /// keeps STRICT, in words (empty when the two agree).
    pub fn istio_relaxes(&self) -> Option<String> {
        let workload = self.workload?;
        let mesh_strict = self.mesh.is_some_and(|p| p.mode == MtlsMode::Strict);
        let namespace_unset = self.namespace.is_none_or(|p| p.mode == MtlsMode::Unset);
        let strict_ports: Vec<String> = workload
            .ports
            .iter()
            .filter(|(_, mode)| **mode == MtlsMode::Strict)
            .map(|(port, _)| port.to_string())
            .collect();
        let relaxed_workload = matches!(workload.mode, MtlsMode::Permissive | MtlsMode::Disable);
        if relaxed_workload && !strict_ports.is_empty() && mesh_strict && namespace_unset {
            // `convertPeerAuthentication` skips a STRICT port whenever the
            // namespace sets no mode and the mesh is STRICT, even under a
            // PERMISSIVE workload mode.
            return Some(format!(
                "Istio's ztunnel would accept plaintext on its STRICT port(s) {} (its ambient translation drops them when the mesh is STRICT and the namespace sets no mode); this proxy enforces STRICT there",
                strict_ports.join(", ")
            ));
        }
        let namespace_policy_unset = self.namespace.is_some_and(|p| p.mode == MtlsMode::Unset);
        let any_permissive = workload.ports.values().any(|m| *m == MtlsMode::Permissive);
        if workload.mode == MtlsMode::Unset
            && any_permissive
            && mesh_strict
            && namespace_policy_unset
        {
            // The exemption rules are skipped (the namespace policy is not
            // STRICT) while the static STRICT policy is dropped too.
            return Some(
                "Istio's ztunnel would accept plaintext on every port of the workloads it selects (its ambient translation drops the mesh's STRICT when the namespace policy sets no mode); this proxy keeps STRICT on the ports not listed".to_owned(),
            );
        }
        None
    }
}

/// The mode for connections to `port` of `workload`; `root` is the mesh-wide
/// namespace. [`MtlsMode::Strict`] or [`MtlsMode::Permissive`].
pub fn mode(
    policies: &[PeerAuthentication],
    workload: &Workload<'_>,
    port: u16,
    root: &str,
) -> MtlsMode {
    layers(policies, workload, root).mode(port)
}

//! Policy: Istio's PeerAuthentication and AuthorizationPolicy, enforced at L4
//! on the destination side.
//!
//! Policies are read from a directory of YAML files (several documents per
//! file, `kind: List` exports; `security.istio.io/v1` or `v1beta1`) or from
//! the Kubernetes API. Each object is applied, skipped or refused on its own,
//! as Istio does ([`load`]); every object's state is kept for the admin
//! endpoint, `ctl policies`, `ctl analyze` and metrics.
//!
//! - [`model`]: the YAML schema.
//! - [`load`]: objects one at a time, with their states.
//! - [`matcher`]: Istio's string and IP matching.
//! - [`authz`]: AuthorizationPolicy compiled and evaluated.
//! - [`decide`]: the one decision for a connection, used by the data path,
//!   `ztunnel ctl check` and `/check`.
//! - [`peer_auth`]: PeerAuthentication modes and their precedence.

pub mod authz;
pub mod decide;
pub mod load;
pub mod matcher;
pub mod model;
pub mod peer_auth;
mod scope;

use std::{path::PathBuf, sync::OnceLock};

pub use authz::{AuthorizationPolicy, Connection, Workload};
pub use decide::{Decision, STRICT_REFUSAL, Verdict};
pub use load::{Loader, ObjectState, ObjectStatus};
pub use model::{Action, MtlsMode};
pub use peer_auth::PeerAuthentication;

/// Istio's default root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Why one policy object is not applied as written.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PolicyError {
    /// A field has a value that cannot be enforced as written: the object is
    /// refused.
    #[error("{field}: {message}")]
    Field {
        /// Where, as a path (`spec.rules[0].from[1].source.ipBlocks`).
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The document is not valid YAML for its kind (unknown field, wrong
    /// type): the object is refused.
    #[error("{0}")]
    Parse(String),
    /// A valid object that is not meant for a node proxy: skipped, as Istio's
    /// ztunnel skips it.
    #[error("{field}: {message}")]
    Unsupported {
        /// The field that makes it so.
        field: String,
        /// Why, and what enforces it instead.
        message: String,
    },
    /// Not a kind this proxy enforces: ignored.
    #[error("{0}")]
    OtherKind(String),
}

/// The policy directory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory could not be read.
    #[error("reading the policy directory {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Every policy in force.
///
/// Decisions find the policies that apply to a workload through an index
/// built on the first of them: a set is not changed once decided with (the
/// daemon shares each version immutably).
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// The mesh-wide namespace.
    pub root_namespace: String,
    /// AuthorizationPolicies, sorted by namespace and name.
    pub authorization: Vec<AuthorizationPolicy>,
    /// PeerAuthentications, sorted by namespace and name.
    pub peer_authentication: Vec<PeerAuthentication>,
    /// Every object found, with what became of it.
    pub objects: Vec<ObjectStatus>,
    /// Files that did not parse, and what stays in force of them.
    pub file_errors: Vec<String>,
    /// How many times the source was loaded since the daemon started.
    pub loads: u64,
    /// How many of those loads refused an object or a file.
    pub loads_with_problems: u64,
    scopes: OnceLock<scope::ScopeIndex>,
}

impl PolicySet {
    /// Loads one YAML stream with a loader of its own (tests, one-off
    /// checks): each object's state is in [`PolicySet::objects`].
    pub fn from_yaml(root_namespace: &str, text: &str) -> Self {
        Loader::new(root_namespace).load_text("inline", text)
    }

    /// Puts the policies in the order evaluation and output rely on: by
    /// namespace and name.
    pub fn sort(&mut self) {
        self.scopes = OnceLock::new();
        self.authorization.sort_by(|a, b| a.id.cmp(&b.id));
        self.peer_authentication.sort_by(|a, b| a.id.cmp(&b.id));
        self.objects
            .sort_by(|a, b| (&a.kind, &a.id, &a.origin).cmp(&(&b.kind, &b.id, &b.origin)));
    }

    /// The objects that were refused (invalid) and the files that did not
    /// parse, in words.
    pub fn problems(&self) -> Vec<String> {
        let refused = self
            .objects
            .iter()
            .filter(|o| o.state == ObjectState::Refused)
            .map(|o| {
                format!(
                    "{}: {} {}: {}",
                    o.origin,
                    o.kind,
                    o.id,
                    o.reason.as_deref().unwrap_or_default()
                )
            });
        refused.chain(self.file_errors.iter().cloned()).collect()
    }

    /// The policies in force and every object's state, as the admin config
    /// dump shows them.
    pub fn describe(&self) -> serde_json::Value {
        let authorization: Vec<_> = self
            .authorization
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "dry_run": p.dry_run,
                    "uses_l7": !p.l7_attributes.is_empty(),
                    "spec": p.spec,
                })
            })
            .collect();
        let peer_authentication: Vec<_> = self
            .peer_authentication
            .iter()
            .map(|p| serde_json::json!({"id": p.id, "spec": p.spec}))
            .collect();
        serde_json::json!({
            "root_namespace": self.root_namespace,
            "authorization_policies": authorization,
            "peer_authentications": peer_authentication,
            "objects": self.objects,
            "file_errors": self.file_errors,
        })
    }

    /// Likely mistakes: policies that can never match or select nothing, in
    /// the `registry`'s cluster. Each finding names the policy.
    pub fn analyze(&self, registry: &crate::registry::Registry) -> Vec<String> {
        let selects_a_pod = |namespace: &str, selector: Option<&crate::registry::Labels>| {
            registry.pods.iter().any(|pod| {
                (namespace == self.root_namespace || pod.namespace == namespace)
                    && selector.is_none_or(|s| pod.labels.contain_all(s))
            })
        };
        let mut findings: Vec<String> = self
            .objects
            .iter()
            .filter(|o| o.state != ObjectState::Applied)
            .map(|o| {
                format!(
                    "{} {} ({}): {}: {}",
                    o.kind,
                    o.id,
                    o.origin,
                    o.state.as_str().replace('_', " "),
                    o.reason.as_deref().unwrap_or_default()
                )
            })
            .collect();
        findings.extend(
            self.file_errors
                .iter()
                .map(|error| format!("policy file refused: {error}")),
        );
        for policy in &self.authorization {
            let (namespace, selector) = policy.scope();
            if policy.action == Action::Deny && policy.rule_count() == 0 {
                findings.push(format!(
                    "AuthorizationPolicy {}: a DENY policy without rules matches nothing and denies nothing",
                    policy.id
                ));
            }
            if policy.action == Action::Allow && policy.rule_count() == 0 {
                findings.push(format!(
                    "AuthorizationPolicy {}: an ALLOW policy without rules allows nothing (deny-all for the workloads it selects)",
                    policy.id
                ));
            }
            if policy.action == Action::Deny {
                for rule in policy.rules_without_effect() {
                    findings.push(format!(
                        "AuthorizationPolicy {}: DENY rule {rule} denies nothing at L4: a from, to or when part of it names only attributes a node proxy cannot see (as in Istio's ztunnel, istio#61126); a waypoint enforces it",
                        policy.id
                    ));
                }
            }
            if !selects_a_pod(namespace, selector) {
                findings.push(format!(
                    "AuthorizationPolicy {}: its selector selects no pod",
                    policy.id
                ));
            }
        }
        for policy in &self.peer_authentication {
            let (namespace, selector) = policy.scope();
            if !selects_a_pod(namespace, selector) {
                findings.push(format!(
                    "PeerAuthentication {}: its selector selects no pod",
                    policy.id
                ));
            }
        }
        findings.extend(self.peer_authentication_findings(registry));
        findings
    }

    /// Per pod: several workload PeerAuthentications (the oldest decides,
    /// as in Istio) and the corners where Istio's ztunnel would accept
    /// plaintext this proxy refuses. One finding per policy and kind.
    fn peer_authentication_findings(&self, registry: &crate::registry::Registry) -> Vec<String> {
        let mut findings = std::collections::BTreeSet::new();
        for pod in &registry.pods {
            let workload = Workload {
                namespace: &pod.namespace,
                labels: &pod.labels,
            };
            let layers =
                peer_auth::layers(&self.peer_authentication, &workload, &self.root_namespace);
            let Some(used) = layers.workload else {
                continue;
            };
            let others: Vec<&str> = self
                .peer_authentication
                .iter()
                .filter(|p| p.id != used.id && p.selects(&workload, &self.root_namespace))
                .map(|p| p.id.as_str())
                .collect();
            if !others.is_empty() {
                findings.insert(format!(
                    "PeerAuthentication {}: several workload policies select pod {}/{} ({} too); the oldest, {}, decides (as in Istio)",
                    used.id, pod.namespace, pod.name, others.join(", "), used.id
                ));
            }
            if let Some(difference) = layers.istio_relaxes() {
                findings.insert(format!(
                    "PeerAuthentication {}: differs from Istio's ztunnel: {difference}",
                    used.id
                ));
            }
        }
        findings.into_iter().collect()
    }

    /// The mutual TLS mode for connections to `port` of `workload`.
    pub fn mtls_mode(&self, workload: &Workload<'_>, port: u16) -> MtlsMode {
        peer_auth::mode(
            &self.peer_authentication,
            workload,
            port,
            &self.root_namespace,
        )
    }
}

#[cfg(test)]
mod tests;

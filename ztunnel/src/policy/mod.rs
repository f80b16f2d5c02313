//! Policy: Istio's PeerAuthentication and AuthorizationPolicy, enforced at L4
//! on the destination side.
//!
//! Policies are read from a directory of YAML files (several documents per
//! file; `security.istio.io/v1` or `v1beta1`). Loading is all or nothing: a
//! set with any bad document is refused as a whole, with every problem named
//! by file, document and field, and the last good set stays in force (a typo
//! in an edited DENY policy must never make it vanish).
//!
//! - [`model`]: the YAML schema.
//! - [`matcher`]: Istio's string and IP matching.
//! - [`authz`]: AuthorizationPolicy compiled and evaluated.
//! - [`peer_auth`]: PeerAuthentication modes and their precedence.

pub mod authz;
pub mod matcher;
pub mod model;
pub mod peer_auth;

use std::path::{Path, PathBuf};

pub use authz::{AuthorizationPolicy, Connection, Workload};
pub use model::{Action, MtlsMode};
pub use peer_auth::PeerAuthentication;

use model::{AuthorizationPolicySpec, Header, PeerAuthenticationSpec, Resource};

/// Istio's default root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// A problem with one policy document.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A field has a value that cannot be enforced as written.
    #[error("{field}: {message}")]
    Field {
        /// Where, as a path (`spec.rules[0].from[1].source.ipBlocks`).
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The document is not valid YAML for its kind (unknown field, wrong type).
    #[error("{0}")]
    Parse(String),
}

/// A problem with the policy directory, naming file and document.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// One or more documents were refused; nothing of this version is applied.
    #[error("policies refused, the previous set stays in force:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Every policy in force.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// The mesh-wide namespace.
    pub root_namespace: String,
    /// AuthorizationPolicies, sorted by namespace and name.
    pub authorization: Vec<AuthorizationPolicy>,
    /// PeerAuthentications, sorted by namespace and name.
    pub peer_authentication: Vec<PeerAuthentication>,
}

/// The outcome of authorizing one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: by the named ALLOW policy and rule, or because no ALLOW policy applies.
    Allow {
        /// `namespace/name` and rule index of the ALLOW rule that matched.
        by: Option<(String, usize)>,
    },
    /// Denied.
    Deny {
        /// The deciding policy (`namespace/name`), or the ALLOW policies none
        /// of whose rules matched (comma-separated).
        policy: String,
        /// Why, naming the policy and rule.
        reason: String,
    },
}

/// A decision with what was recorded on the side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What is enforced.
    pub decision: Decision,
    /// AUDIT policies whose rules matched (`namespace/name`).
    pub audited: Vec<String>,
    /// What the dry-run policies would have decided, when it differs.
    pub dry_run: Option<Decision>,
}

impl PolicySet {
    /// Reads every `*.yaml`/`*.yml` file of `dir`. `root_namespace` holds
    /// the mesh-wide policies.
    pub fn load_dir(dir: &Path, root_namespace: &str) -> Result<Self, LoadError> {
        let read_error = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Read { path, source }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error(dir))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        files.sort();
        let mut set = Self {
            root_namespace: root_namespace.to_owned(),
            ..Self::default()
        };
        let mut problems = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(read_error(&file))?;
            for problem in set.add_documents(&text) {
                problems.push(format!("{}: {problem}", file.display()));
            }
        }
        set.sort();
        // One object per kind, namespace and name, as in Kubernetes: a second
        // definition would silently add to the first here.
        let twice = |ids: Vec<&String>| -> Vec<String> {
            ids.windows(2)
                .filter(|pair| pair[0] == pair[1])
                .map(|pair| format!("{} is defined more than once", pair[0]))
                .collect()
        };
        problems.extend(twice(set.authorization.iter().map(|p| &p.id).collect()));
        problems.extend(twice(
            set.peer_authentication.iter().map(|p| &p.id).collect(),
        ));
        if !problems.is_empty() {
            return Err(LoadError::Invalid(problems));
        }
        Ok(set)
    }

    /// Puts the policies in the order evaluation and output rely on: by
    /// namespace and name.
    pub fn sort(&mut self) {
        self.authorization.sort_by(|a, b| a.id.cmp(&b.id));
        self.peer_authentication.sort_by(|a, b| a.id.cmp(&b.id));
    }

    /// Parses the YAML documents of `text` into the set; returns a problem
    /// per refused document.
    pub fn add_documents(&mut self, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (index, (line, document)) in documents(text).into_iter().enumerate() {
            let at = format!("document {} (line {line})", index + 1);
            if let Err(problem) = self.add_document(document) {
                problems.push(format!("{at}: {problem}"));
            }
        }
        problems
    }

    fn add_document(&mut self, text: &str) -> Result<(), String> {
        let header: Header = serde_saphyr::from_str(text)
            .map_err(|err| format!("not a Kubernetes object: {err}"))?;
        let name = format!(
            "{} {}/{}",
            header.kind, header.metadata.namespace, header.metadata.name
        );
        if !matches!(
            header.api_version.as_str(),
            "security.istio.io/v1" | "security.istio.io/v1beta1"
        ) {
            return Err(format!(
                "{name}: apiVersion {:?} is not security.istio.io/v1 or v1beta1",
                header.api_version
            ));
        }
        let describe = |err: PolicyError| format!("{name}: {err}");
        match header.kind.as_str() {
            "AuthorizationPolicy" => {
                let resource: Resource<AuthorizationPolicySpec> = serde_saphyr::from_str(text)
                    .map_err(|err| describe(PolicyError::Parse(err.to_string())))?;
                let policy = AuthorizationPolicy::compile(&resource.metadata, &resource.spec)
                    .map_err(describe)?;
                if policy.uses_l7 {
                    tracing::warn!(
                        policy = %policy.id,
                        action = ?policy.action,
                        "policy uses HTTP attributes this L4 proxy cannot see (as Istio's ztunnel): ALLOW rules naming them match nothing; DENY rules keep their L4 attributes, and one left without any denies nothing"
                    );
                }
                self.authorization.push(policy);
            }
            "PeerAuthentication" => {
                let resource: Resource<PeerAuthenticationSpec> = serde_saphyr::from_str(text)
                    .map_err(|err| describe(PolicyError::Parse(err.to_string())))?;
                self.peer_authentication.push(
                    PeerAuthentication::compile(&resource.metadata, &resource.spec)
                        .map_err(describe)?,
                );
            }
            other => {
                return Err(format!(
                    "{name}: kind {other:?} is not PeerAuthentication or AuthorizationPolicy"
                ));
            }
        }
        Ok(())
    }

    /// The policies in force, as the admin config dump shows them.
    pub fn describe(&self) -> serde_json::Value {
        let authorization: Vec<_> = self
            .authorization
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "dry_run": p.dry_run,
                    "uses_l7": p.uses_l7,
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
        })
    }

    /// Likely mistakes: policies that can never match or select nothing, in
    /// the `registry`'s cluster. Each finding names the policy.
    pub fn analyze(&self, registry: &crate::registry::Registry) -> Vec<String> {
        let selects_a_pod = |namespace: &str, selector: Option<&crate::registry::Labels>| {
            registry.pods.iter().any(|pod| {
                (namespace == self.root_namespace || pod.namespace == namespace)
                    && selector.is_none_or(|s| s.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
            })
        };
        let mut findings = Vec::new();
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
            if policy.uses_l7 {
                findings.push(format!(
                    "AuthorizationPolicy {}: uses HTTP attributes an L4 proxy cannot see (ALLOW rules with them match nothing, DENY rules deny on their L4 parts)",
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
        findings
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

    /// Authorizes `connection` to `workload`.
    pub fn authorize(&self, workload: &Workload<'_>, connection: &Connection<'_>) -> Verdict {
        let applicable: Vec<&AuthorizationPolicy> = self
            .authorization
            .iter()
            .filter(|p| p.applies_to(workload, &self.root_namespace))
            .collect();
        let enforced = decide(
            applicable.iter().copied().filter(|p| !p.dry_run),
            connection,
        );
        let with_dry_run = decide(applicable.iter().copied(), connection);
        let audited = applicable
            .iter()
            .filter(|p| p.action == Action::Audit && p.matching_rule(connection).is_some())
            .map(|p| p.id.clone())
            .collect();
        Verdict {
            dry_run: (with_dry_run != enforced).then_some(with_dry_run),
            decision: enforced,
            audited,
        }
    }
}

/// Istio's order: DENY first, then ALLOW if any applies.
fn decide<'a>(
    policies: impl Iterator<Item = &'a AuthorizationPolicy> + Clone,
    connection: &Connection<'_>,
) -> Decision {
    for policy in policies.clone().filter(|p| p.action == Action::Deny) {
        if let Some(rule) = policy.matching_rule(connection) {
            return Decision::Deny {
                policy: policy.id.clone(),
                reason: format!("denied by DENY policy {} rule {rule}", policy.id),
            };
        }
    }
    let mut allows = policies.filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return Decision::Allow { by: None };
    }
    let mut names = Vec::new();
    for policy in allows {
        if let Some(rule) = policy.matching_rule(connection) {
            return Decision::Allow {
                by: Some((policy.id.clone(), rule)),
            };
        }
        names.push(policy.id.clone());
    }
    Decision::Deny {
        policy: names.join(","),
        reason: format!("no rule of the ALLOW policies {} matches", names.join(", ")),
    }
}

/// Splits a YAML stream at `---` lines; returns each non-empty document with
/// its first line number.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let is_separator = line.starts_with("---")
            && line[3..]
                .trim_start()
                .chars()
                .next()
                .is_none_or(|c| c == '#');
        if is_separator {
            out.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = number + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start..]));
    out.into_iter()
        .filter(|(_, doc)| {
            doc.lines()
                .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        })
        .collect()
}

#[cfg(test)]
mod tests;

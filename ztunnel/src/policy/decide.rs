//! The destination side's decision for one connection, in one pure function
//! ([`PolicySet::decide`]) that the data path, `/check` and `ztunnel ctl
//! check` all use: PeerAuthentication first (STRICT refuses plaintext), then
//! AuthorizationPolicy in Istio's order (istio/ztunnel `assert_rbac`): DENY
//! policies, then ALLOW policies when any applies. Dry-run policies are
//! evaluated on the side; AUDIT matches are listed.

use super::{
    Action, AuthorizationPolicy, Connection, MtlsMode, PolicySet, Workload, scope::ScopeIndex,
};

/// The `policy` of a plaintext connection refused by a STRICT mode.
pub const STRICT_REFUSAL: &str = "PeerAuthentication/STRICT";

/// The outcome of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: by the named ALLOW policy and rule, or because no ALLOW policy applies.
    Allow {
        /// `namespace/name` and rule index of the ALLOW rule that matched.
        by: Option<(String, usize)>,
    },
    /// Denied.
    Deny {
        /// The deciding policy (`namespace/name`), the ALLOW policies none of
        /// whose rules matched (comma-separated), or [`STRICT_REFUSAL`].
        policy: String,
        /// Why, naming the policy and rule.
        reason: String,
    },
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// The decision in words, naming what decided.
    pub fn explain(&self) -> String {
        match self {
            Self::Allow {
                by: Some((policy, rule)),
            } => format!("allowed by ALLOW policy {policy} rule {rule}"),
            Self::Allow { by: None } => {
                "no ALLOW policy applies and no DENY policy matches".to_owned()
            }
            Self::Deny { reason, .. } => reason.clone(),
        }
    }
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
    /// Decides `connection` to `workload`.
    pub fn decide(&self, workload: &Workload<'_>, connection: &Connection<'_>) -> Verdict {
        let port = connection.destination_port;
        // Only plaintext needs the mode: mutual TLS satisfies every mode.
        if connection.source_identity.is_none()
            && self.mtls_mode(workload, port) == MtlsMode::Strict
        {
            return Verdict {
                decision: Decision::Deny {
                    policy: STRICT_REFUSAL.to_owned(),
                    reason: format!(
                        "plaintext refused: PeerAuthentication mode STRICT for port {port}"
                    ),
                },
                audited: Vec::new(),
                dry_run: None,
            };
        }
        let applicable = self.applicable(workload);
        let enforced = evaluate(
            applicable.iter().copied().filter(|p| !p.dry_run),
            connection,
        );
        // Evaluated a second time only when a dry-run policy could change it.
        let with_dry_run = if applicable.iter().any(|p| p.dry_run) {
            evaluate(applicable.iter().copied(), connection)
        } else {
            enforced.clone()
        };
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

    /// The ALLOW rules applying to `workload` that can never match at L4,
    /// in words: why an expected ALLOW did not happen.
    pub fn allow_rules_without_effect(&self, workload: &Workload<'_>) -> Vec<String> {
        self.applicable(workload)
            .into_iter()
            .filter(|p| p.action == Action::Allow && !p.dry_run)
            .flat_map(|policy| {
                policy.rules_without_effect().into_iter().map(move |rule| {
                    format!(
                        "ALLOW policy {} rule {rule} can never match at L4: it names attributes a node proxy cannot see ({})",
                        policy.id,
                        policy.l7_attributes.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect()
    }

    /// The AuthorizationPolicies that apply to `workload`, in the set's
    /// order ([`super::scope`]).
    fn applicable<'a>(&'a self, workload: &Workload<'_>) -> Vec<&'a AuthorizationPolicy> {
        self.scopes
            .get_or_init(|| ScopeIndex::new(&self.authorization))
            .applicable(&self.authorization, workload, &self.root_namespace)
            .into_iter()
            .map(|position| &self.authorization[position])
            .collect()
    }
}

/// Istio's order: DENY first, then ALLOW if any applies.
fn evaluate<'a>(
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

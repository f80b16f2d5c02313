//! Which AuthorizationPolicies may apply to a workload, found by index: a
//! connection's decision looks only at the policies of the root namespace
//! and the destination's namespace that could select the destination, never
//! at every policy of the cluster (10,000 policies elsewhere cost a
//! connection nothing; see docs/scale.md).
//!
//! A policy without selector is a candidate for every workload of its scope;
//! one with a selector is filed under one of its labels (the first, in key
//! order) and is a candidate only for workloads that carry that label. The
//! candidates are then checked in full ([`AuthorizationPolicy::applies_to`])
//! and returned in the set's order, so the index changes which policies are
//! looked at, never the decision.

use std::collections::HashMap;

use super::{AuthorizationPolicy, Workload};

/// Positions in [`super::PolicySet::authorization`], by scope.
#[derive(Clone, Debug, Default)]
pub(super) struct ScopeIndex {
    namespaces: HashMap<String, NamespacePolicies>,
}

/// One namespace's policies.
#[derive(Clone, Debug, Default)]
struct NamespacePolicies {
    /// Without selector (or with an empty one): every workload's.
    everyone: Vec<usize>,
    /// With a selector: by the first label's key, then value.
    by_label: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl ScopeIndex {
    /// Files every policy of `policies` by its namespace and selector.
    pub(super) fn new(policies: &[AuthorizationPolicy]) -> Self {
        let mut index = Self::default();
        for (position, policy) in policies.iter().enumerate() {
            let (namespace, selector) = policy.scope();
            let scope = index.namespaces.entry(namespace.to_owned()).or_default();
            match selector.and_then(|labels| labels.iter().next()) {
                None => scope.everyone.push(position),
                Some((key, value)) => scope
                    .by_label
                    .entry(key.to_owned())
                    .or_default()
                    .entry(value.to_owned())
                    .or_default()
                    .push(position),
            }
        }
        index
    }

    /// The positions of the policies that apply to `workload` (`root`: the
    /// mesh-wide namespace), in ascending order.
    pub(super) fn applicable(
        &self,
        policies: &[AuthorizationPolicy],
        workload: &Workload<'_>,
        root: &str,
    ) -> Vec<usize> {
        let mut found = Vec::new();
        let scopes = [root, workload.namespace];
        // The root namespace's workloads have it once.
        let scopes = if root == workload.namespace {
            &scopes[..1]
        } else {
            &scopes[..]
        };
        for scope in scopes.iter().filter_map(|ns| self.namespaces.get(*ns)) {
            found.extend_from_slice(&scope.everyone);
            for (key, value) in workload.labels {
                if let Some(filed) = scope.by_label.get(key).and_then(|values| values.get(value)) {
                    found.extend(
                        filed
                            .iter()
                            .filter(|&&position| policies[position].applies_to(workload, root)),
                    );
                }
            }
        }
        found.sort_unstable();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{policy::PolicySet, registry::labels_of};

    /// Policies of every shape of scope: root and workload namespaces, other
    /// namespaces, no selector, empty selector, one and two labels.
    const POLICIES: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-all, namespace: istio-system}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-web, namespace: istio-system}
spec: {selector: {matchLabels: {app: web}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all, namespace: demo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: empty-selector, namespace: demo}
spec: {selector: {matchLabels: {}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: demo}
spec: {selector: {matchLabels: {app: web}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-v2, namespace: demo}
spec: {selector: {matchLabels: {app: web, version: v2}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2, namespace: demo}
spec: {selector: {matchLabels: {version: v2}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: demo}
spec: {selector: {matchLabels: {app: db}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: other}
spec: {selector: {matchLabels: {app: web}}}
";

    #[test]
    fn the_index_finds_what_a_full_scan_finds_in_order() {
        let set = PolicySet::from_yaml("istio-system", POLICIES);
        assert_eq!(set.authorization.len(), 9, "{:?}", set.objects);
        let index = ScopeIndex::new(&set.authorization);
        let names = |positions: Vec<usize>| -> Vec<String> {
            positions
                .into_iter()
                .map(|p| set.authorization[p].id.clone())
                .collect()
        };
        for (namespace, labels, expected) in [
            (
                "demo",
                &[("app", "web")][..],
                &[
                    "demo/all",
                    "demo/empty-selector",
                    "demo/web",
                    "istio-system/root-all",
                    "istio-system/root-web",
                ][..],
            ),
            (
                "demo",
                &[("app", "web"), ("version", "v2")],
                &[
                    "demo/all",
                    "demo/empty-selector",
                    "demo/v2",
                    "demo/web",
                    "demo/web-v2",
                    "istio-system/root-all",
                    "istio-system/root-web",
                ],
            ),
            (
                "demo",
                &[("version", "v1")],
                &["demo/all", "demo/empty-selector", "istio-system/root-all"],
            ),
            (
                "other",
                &[("app", "web")],
                &[
                    "istio-system/root-all",
                    "istio-system/root-web",
                    "other/web",
                ],
            ),
            ("none", &[], &["istio-system/root-all"]),
            (
                "istio-system",
                &[("app", "web")],
                &["istio-system/root-all", "istio-system/root-web"],
            ),
        ] {
            let labels = labels_of(labels);
            let workload = Workload {
                namespace,
                labels: &labels,
            };
            let scanned: Vec<usize> = (0..set.authorization.len())
                .filter(|&p| set.authorization[p].applies_to(&workload, "istio-system"))
                .collect();
            let found = index.applicable(&set.authorization, &workload, "istio-system");
            assert_eq!(found, scanned, "{namespace} {labels:?}");
            assert_eq!(names(found), expected, "{namespace} {labels:?}");
        }
    }
}

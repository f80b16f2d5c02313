//! PeerAuthentication and AuthorizationPolicy objects from the API server,
//! compiled by the same code as policy files.
//!
//! The API server has already checked each object against its CRD schema,
//! but not against what this proxy can enforce. An object that does not
//! compile is refused alone, and its last version that did stays in force
//! (a typo in an edited DENY policy must never make it vanish); a new object
//! that never compiled is not enforced. Both are logged with the reason.

use std::collections::{HashMap, HashSet};

use kube::api::DynamicObject;

use super::store::Store;
use crate::policy::PolicySet;

/// The API group, version and kinds watched.
pub const GROUP: &str = "security.istio.io";
/// The version read (v1beta1 objects are served as v1 too).
pub const VERSION: &str = "v1";
/// The kinds, as the policy loader names them.
pub const KINDS: [&str; 2] = ["PeerAuthentication", "AuthorizationPolicy"];

/// Compiles policy objects, remembering each one's last good version.
#[derive(Default)]
pub struct PolicyCompiler {
    last_good: HashMap<String, String>,
}

impl PolicyCompiler {
    /// The policy set of every object of `stores` (one per kind of [`KINDS`]).
    pub fn compile(
        &mut self,
        stores: &[Store<DynamicObject>; 2],
        root_namespace: &str,
    ) -> PolicySet {
        let mut set = PolicySet {
            root_namespace: root_namespace.to_owned(),
            ..PolicySet::default()
        };
        let mut present = HashSet::new();
        for (kind, store) in KINDS.iter().zip(stores) {
            for (key, object) in store.objects() {
                let id = format!("{kind} {key}");
                let text = document(kind, object);
                let mut compiled = PolicySet::default();
                let problems = compiled.add_documents(&text);
                if problems.is_empty() {
                    self.last_good.insert(id.clone(), text);
                } else {
                    compiled = PolicySet::default();
                    let previous = self.last_good.get(&id);
                    if let Some(previous) = previous {
                        // It compiled before: it compiles again.
                        compiled.add_documents(previous);
                    }
                    tracing::warn!(
                        policy = %id,
                        "policy refused ({}): {}",
                        if previous.is_some() { "its previous version stays in force" } else { "it is not enforced" },
                        problems.join("; ")
                    );
                }
                set.authorization.append(&mut compiled.authorization);
                set.peer_authentication
                    .append(&mut compiled.peer_authentication);
                present.insert(id);
            }
        }
        self.last_good.retain(|id, _| present.contains(id));
        set.sort();
        set
    }
}

/// The object as a policy document. List items may omit `apiVersion` and
/// `kind`, so both are set from what was watched.
fn document(kind: &str, object: &DynamicObject) -> String {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    value["apiVersion"] = format!("{GROUP}/{VERSION}").into();
    value["kind"] = kind.into();
    // JSON is YAML: the loader parses it as it is.
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn policy(name: &str, action: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo", "resourceVersion": "7", "uid": "u"},
            "spec": {"action": action, "rules": [{"from": [{"source": {"namespaces": ["demo"]}}]}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_version_and_a_bad_new_object_is_not_enforced() {
        let mut stores: [Store<DynamicObject>; 2] = Default::default();
        let mut compiler = PolicyCompiler::default();
        stores[1].apply(Event::Apply(policy("deny", "DENY")));
        let set = compiler.compile(&stores, "istio-system");
        assert_eq!(set.authorization.len(), 1);
        assert_eq!(set.authorization[0].id, "demo/deny");

        stores[1].apply(Event::Apply(policy("deny", "DENY-TYPO")));
        stores[1].apply(Event::Apply(policy("new", "NOPE")));
        let set = compiler.compile(&stores, "istio-system");
        let ids: Vec<_> = set.authorization.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            ["demo/deny"],
            "the DENY policy stays; the bad new one is out"
        );
        assert_eq!(set.authorization[0].action, crate::policy::Action::Deny);

        stores[1].apply(Event::Delete(policy("deny", "DENY")));
        assert!(
            compiler
                .compile(&stores, "istio-system")
                .authorization
                .is_empty()
        );
    }
}

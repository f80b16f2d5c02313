//! PeerAuthentication and AuthorizationPolicy objects from the API server,
//! compiled by the same code as policy files.
//!
//! The API server has already checked each object against its CRD schema,
//! but not against what this proxy can enforce: the policy loader judges
//! each object on its own, as it does for files (an invalid edit keeps the
//! last accepted version in force).

use kube::api::DynamicObject;

use super::store::Store;

/// The API group, version and kinds watched.
pub const GROUP: &str = "security.istio.io";
/// The version read (v1beta1 objects are served as v1 too).
pub const VERSION: &str = "v1";
/// The kinds, as the policy loader names them.
pub const KINDS: [&str; 2] = ["PeerAuthentication", "AuthorizationPolicy"];

/// The objects of `stores` (one per kind of [`KINDS`]) as policy documents,
/// for [`crate::policy::Loader::load_objects`].
pub fn documents(stores: &[Store<DynamicObject>; 2]) -> impl Iterator<Item = String> + '_ {
    KINDS.iter().zip(stores).flat_map(|(kind, store)| {
        store
            .objects()
            .map(move |(_, object)| document(kind, object))
    })
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
    use crate::policy::{Loader, ObjectState};
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
        let mut loader = Loader::new("istio-system");
        stores[1].apply(Event::Apply(policy("deny", "DENY")));
        let set = loader.load_objects(documents(&stores));
        assert_eq!(set.authorization.len(), 1);
        assert_eq!(set.authorization[0].id, "demo/deny");

        stores[1].apply(Event::Apply(policy("deny", "DENY-TYPO")));
        stores[1].apply(Event::Apply(policy("new", "NOPE")));
        let set = loader.load_objects(documents(&stores));
        let ids: Vec<_> = set.authorization.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            ["demo/deny"],
            "the DENY policy stays; the bad new one is out"
        );
        assert_eq!(set.authorization[0].action, crate::policy::Action::Deny);
        let states: Vec<_> = set
            .objects
            .iter()
            .map(|o| (o.id.as_str(), o.state, o.in_force))
            .collect();
        assert_eq!(
            states,
            [
                ("demo/deny", ObjectState::Refused, true),
                ("demo/new", ObjectState::Refused, false)
            ]
        );

        stores[1].apply(Event::Delete(policy("deny", "DENY")));
        assert!(
            loader
                .load_objects(documents(&stores))
                .authorization
                .is_empty()
        );
    }
}

//! One kind's objects as last listed and watched.
//!
//! A re-list (after `410 Gone`, or when a broken watch restarts) is buffered
//! and replaces the previous objects only once it is complete: until then
//! the old view stays in force, so a watch that breaks never drops a pod's
//! enrolment, not even for a moment.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt, runtime::watcher::Event};

use super::convert::PodRecord;

/// What a store files an object under: `namespace/name`.
pub trait Keyed {
    /// The object's `namespace/name`.
    fn key(&self) -> String;
}

impl<K: Resource> Keyed for K {
    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }
}

impl Keyed for PodRecord {
    fn key(&self) -> String {
        PodRecord::key(self).to_owned()
    }
}

/// Objects of one kind by `namespace/name`, sorted.
pub struct Store<K> {
    current: BTreeMap<String, K>,
    relisting: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Self {
            current: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<K: Keyed> Store<K> {
    /// Applies one watch event; true when the objects in force changed.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                if let Some(relisting) = &mut self.relisting {
                    relisting.insert(object.key(), object);
                }
                false
            }
            Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.current = listed;
                }
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                self.current.insert(object.key(), object);
                true
            }
            Event::Delete(object) => self.current.remove(&object.key()).is_some(),
        }
    }

    /// Marks the kind as listed with no objects (its API does not exist).
    pub fn mark_absent(&mut self) -> bool {
        let changed = !self.synced || !self.current.is_empty();
        self.current.clear();
        self.synced = true;
        changed
    }

    /// Whether a complete list has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The object called `key` (`namespace/name`), if present.
    pub fn get(&self, key: &str) -> Option<&K> {
        self.current.get(key)
    }

    /// The objects in force, sorted by `namespace/name`.
    pub fn objects(&self) -> impl Iterator<Item = (&String, &K)> {
        self.current.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;

    fn namespace(name: &str) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.to_owned());
        ns
    }

    fn names(store: &Store<Namespace>) -> Vec<String> {
        store.objects().map(|(key, _)| key.clone()).collect()
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_complete() {
        let mut store = Store::default();
        for event in [
            Event::Init,
            Event::InitApply(namespace("a")),
            Event::InitApply(namespace("b")),
        ] {
            assert!(!store.apply(event));
        }
        assert!(!store.synced());
        assert!(store.apply(Event::InitDone));
        assert_eq!(names(&store), ["/a", "/b"]);

        // The watch broke (410 Gone): a new list starts; the old view stays
        // in force until it is complete.
        store.apply(Event::Init);
        store.apply(Event::InitApply(namespace("b")));
        assert_eq!(names(&store), ["/a", "/b"]);
        assert!(store.apply(Event::InitDone));
        assert_eq!(names(&store), ["/b"]);

        assert!(store.apply(Event::Apply(namespace("c"))));
        assert!(store.apply(Event::Delete(namespace("b"))));
        assert!(!store.apply(Event::Delete(namespace("b"))));
        assert_eq!(names(&store), ["/c"]);
    }
}

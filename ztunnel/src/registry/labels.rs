//! Kubernetes labels, kept compact.
//!
//! Every daemon holds the labels of every pod of the cluster, and a pod has a
//! handful of them. A `BTreeMap` spends a 544-byte node on the first one,
//! which was a quarter of a pod's memory at 100,000 pods
//! (`bench/results/scale.md`); a vector of string pairs still spends two
//! allocations (64 bytes or more) per label. Here all of a pod's keys and
//! values share one string, and one slice says where each ends: two
//! allocations per pod, about 100 bytes for three labels. Lookups are a
//! binary search over a few entries; changes, which only tests and the
//! file format make, rebuild the whole.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeMap};

/// Labels: key to value, unique keys, sorted by key (so output is stable).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// Every key followed by its value, in key order.
    text: Box<str>,
    /// Per label, where its key and its value end in `text` (a key starts
    /// where the previous label's value ended).
    ends: Box<[(usize, usize)]>,
}

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Labels of `pairs`, which are sorted by key, keys unique.
    fn from_sorted<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        let mut text = String::with_capacity(
            pairs
                .iter()
                .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
                .sum(),
        );
        let ends = pairs
            .iter()
            .map(|(key, value)| {
                text.push_str(key.as_ref());
                let key_end = text.len();
                text.push_str(value.as_ref());
                (key_end, text.len())
            })
            .collect();
        Self {
            text: text.into_boxed_str(),
            ends,
        }
    }

    /// Label `i`: its key and value.
    fn entry(&self, i: usize) -> (&str, &str) {
        let start = i.checked_sub(1).map_or(0, |previous| self.ends[previous].1);
        let (key_end, value_end) = self.ends[i];
        (&self.text[start..key_end], &self.text[key_end..value_end])
    }

    /// Where `key` is, or where it would go.
    fn position(&self, key: &str) -> Result<usize, usize> {
        // `ends` is only a length here: the search reads keys by position.
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.entry(middle).0.cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        let position = self.position(key).ok()?;
        Some(self.entry(position).1)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// The labels as owned pairs, to change them.
    fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Sets `key` to `value`; the previous value, if any.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        let mut pairs = self.to_pairs();
        let previous = match self.position(&key) {
            Ok(position) => Some(std::mem::replace(&mut pairs[position].1, value)),
            Err(position) => {
                pairs.insert(position, (key, value));
                None
            }
        };
        *self = Self::from_sorted(&pairs);
        previous
    }

    /// Unsets `key`; its value, if it was set.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let position = self.position(key).ok()?;
        let mut pairs = self.to_pairs();
        let (_, value) = pairs.remove(position);
        *self = Self::from_sorted(&pairs);
        Some(value)
    }

    /// The labels, sorted by key.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            labels: self,
            next: 0,
        }
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.iter().map(|(key, _)| key)
    }

    /// How many labels are set.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Whether every label of `selector` is set here to the same value (an
    /// empty selector matches everything, as in Kubernetes).
    pub fn contain_all<'a>(&self, selector: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
        selector
            .into_iter()
            .all(|(key, value)| self.get(key) == Some(value))
    }
}

/// Later values win, as when collecting into a map.
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().collect();
        // Stable: among equal keys the last one given stays last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.reverse();
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        pairs.reverse();
        Self::from_sorted(&pairs)
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

/// Kubernetes objects carry their labels as a `BTreeMap`: already sorted.
impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self::from(&map)
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        let pairs: Vec<(&String, &String)> = map.iter().collect();
        Self::from_sorted(&pairs)
    }
}

/// The labels of a [`Labels`], sorted by key.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    labels: &'a Labels,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.labels.len() {
            return None;
        }
        self.next += 1;
        Some(self.labels.entry(self.next - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.labels.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map, as in Kubernetes objects.
impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::labels_of as labels;

    #[test]
    fn keys_are_unique_and_sorted_and_the_last_value_wins() {
        let l = labels(&[("b", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("a", "5")]);
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [("a", "5"), ("b", "3"), ("c", "4")]
        );
        assert_eq!(l.get("b"), Some("3"));
        assert_eq!(l.get("d"), None);
        assert!(l.contains_key("c") && !l.contains_key(""));

        let empty = labels(&[("", ""), ("b", ""), ("a", "x")]);
        assert_eq!(
            empty.iter().collect::<Vec<_>>(),
            [("", ""), ("a", "x"), ("b", "")]
        );
        assert_eq!(
            (empty.get(""), empty.get("b"), empty.len()),
            (Some(""), Some(""), 3)
        );
        assert!(Labels::new().is_empty() && Labels::new().get("").is_none());
    }

    #[test]
    fn insert_and_remove_keep_the_order() {
        let mut l = labels(&[("b", "1")]);
        assert_eq!(l.insert("a".into(), "0".into()), None);
        assert_eq!(l.insert("c".into(), "2".into()), None);
        assert_eq!(l.insert("b".into(), "9".into()).as_deref(), Some("1"));
        assert_eq!(l.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(l.remove("b").as_deref(), Some("9"));
        assert_eq!(l.remove("b"), None);
        assert_eq!(l, labels(&[("c", "2"), ("a", "0")]));
    }

    #[test]
    fn a_selector_matches_when_every_label_of_it_is_set_alike() {
        let pod = labels(&[("app", "web"), ("version", "v1")]);
        for (selector, matches) in [
            (vec![], true),
            (vec![("app", "web")], true),
            (vec![("app", "web"), ("version", "v1")], true),
            (vec![("app", "web"), ("version", "v2")], false),
            (vec![("tier", "web")], false),
        ] {
            assert_eq!(pod.contain_all(selector.clone()), matches, "{selector:?}");
        }
    }

    #[test]
    fn it_reads_and_writes_as_a_map() {
        let l: Labels = serde_saphyr::from_str("{b: '2', a: '1'}").unwrap();
        assert_eq!(l, labels(&[("a", "1"), ("b", "2")]));
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"a":"1","b":"2"}"#);
        assert!(serde_saphyr::from_str::<Labels>("[a, b]").is_err());
        assert_eq!(format!("{l:?}"), r#"{"a": "1", "b": "2"}"#);
    }
}

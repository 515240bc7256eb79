//! The ids a job's rows took, kept as 128-bit fingerprints: submit checks each row's id
//! against every earlier one, over millions of rows, in 16 bytes an id instead of the
//! id itself (two ids sharing a fingerprint by chance is about as likely as one in
//! 10^25 for ten million rows).

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

/// A set of ids by fingerprint; see the module documentation.
#[derive(Debug, Default)]
pub struct IdSet {
    /// Two independently keyed hashers, for the two halves of a fingerprint.
    keys: (RandomState, RandomState),
    seen: HashSet<u128>,
}

impl IdSet {
    /// Adds `id`; false when the set already had it.
    pub fn insert(&mut self, id: &str) -> bool {
        let high = u128::from(self.keys.0.hash_one(id));
        let low = u128::from(self.keys.1.hash_one(id));
        self.seen.insert(high << 64 | low)
    }
}

impl Extend<String> for IdSet {
    fn extend<T: IntoIterator<Item = String>>(&mut self, ids: T) {
        for id in ids {
            self.insert(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_once() {
        let mut ids = IdSet::default();
        assert!(ids.insert("doc-1"));
        assert!(ids.insert("doc-2"));
        assert!(!ids.insert("doc-1"));
        ids.extend(["doc-3".to_string()]);
        assert!(!ids.insert("doc-3"));
    }
}

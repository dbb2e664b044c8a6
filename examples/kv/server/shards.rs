//! The store's map in [`SHARDS`] shards, each a hash map behind an `Arc`, so that a snapshot
//! is captured in microseconds: the capture clones the shards' `Arc`s, and the first write
//! to a shard after a capture copies that shard alone (`Arc::make_mut`) while the snapshot
//! job reads the one it kept. The cost of copying the map is still paid, but a shard at a
//! time by the writes that need it (with 300,000 keys, about 300 entries, tens of
//! microseconds each), not in one pause of every client: copying the whole map at the
//! capture held the application for 40-70 ms with 300,000 keys (`benches/README.md`, "The
//! snapshot's pause").

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::store::{Entry, Key, KeyHasher};

/// Shards per map: a power of two.
pub const SHARDS: usize = 1024;

type Shard = HashMap<Key, Entry, KeyHasher>;

/// A map of keys to entries, in shards (module docs). A clone shares every shard, so it
/// costs [`SHARDS`] reference counts, and keeps what the map held when it was taken: a
/// write to either copies the shard it changes first.
#[derive(Clone)]
pub struct Shards {
    /// Picks a key's shard; seeded apart from the shards' own hasher, so that the keys of a
    /// shard do not share bits of the hash its map places them by.
    pick: KeyHasher,
    shards: Box<[Arc<Shard>]>,
    len: usize,
}

impl Default for Shards {
    fn default() -> Shards {
        let hasher = KeyHasher::default();
        Shards {
            pick: KeyHasher::default(),
            shards: (0..SHARDS)
                .map(|_| Arc::new(Shard::with_hasher(hasher.clone())))
                .collect(),
            len: 0,
        }
    }
}

impl Shards {
    fn index(&self, key: &[u8]) -> usize {
        // The low bits: SHARDS is a power of two.
        self.pick.hash_one(key) as usize & (SHARDS - 1)
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.shards[self.index(key)].get(key)
    }

    /// The shard `key` belongs in, copied first if a capture still holds it.
    fn shard_mut(&mut self, key: &[u8]) -> &mut Shard {
        let index = self.index(key);
        Arc::make_mut(&mut self.shards[index])
    }

    pub fn insert(&mut self, key: Key, entry: Entry) -> Option<Entry> {
        let old = self.shard_mut(key.as_bytes()).insert(key, entry);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let index = self.index(key);
        // Looked up first, so that a capture's shard is not copied for a key it lacks.
        self.shards[index].get(key)?;
        let old = Arc::make_mut(&mut self.shards[index]).remove(key);
        assert!(old.is_some(), "a key found in its shard is removed from it");
        self.len -= 1;
        old
    }

    pub fn clear(&mut self) {
        // New shards: those a capture holds stay as they were.
        *self = Shards {
            pick: self.pick.clone(),
            shards: self
                .shards
                .iter()
                .map(|shard| Arc::new(Shard::with_hasher(shard.hasher().clone())))
                .collect(),
            len: 0,
        };
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

impl PartialEq for Shards {
    fn eq(&self, other: &Shards) -> bool {
        self.len == other.len
            && self
                .iter()
                .all(|(key, entry)| other.get(key.as_bytes()) == Some(entry))
    }
}

impl Eq for Shards {}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(value: &str) -> Entry {
        Entry {
            value: Bytes::copy_from_slice(value.as_bytes()),
            expire_at_ms: None,
        }
    }

    fn key(name: &str) -> Key {
        Key::new(&Bytes::copy_from_slice(name.as_bytes()))
    }

    fn contents(pairs: impl Iterator<Item = (Key, Entry)>) -> Vec<(Vec<u8>, Bytes)> {
        let mut all: Vec<_> = pairs
            .map(|(key, entry)| (key.as_bytes().to_vec(), entry.value))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_frozen_map_keeps_what_it_held_while_the_map_changes() {
        let mut map = Shards::default();
        for i in 0..5_000 {
            map.insert(key(&format!("key{i}")), entry(&format!("v{i}")));
        }
        let before = contents(map.iter().map(|(k, e)| (k.clone(), e.clone())));
        let frozen = map.clone();
        for i in 0..2_500 {
            map.insert(key(&format!("key{i}")), entry("changed"));
            assert!(map.remove(format!("key{}", 2_500 + i).as_bytes()).is_some());
            map.insert(key(&format!("new{i}")), entry("new"));
        }
        assert_eq!(frozen.len(), 5_000);
        assert_eq!(
            contents(frozen.iter().map(|(k, e)| (k.clone(), e.clone()))),
            before
        );
        assert_eq!(map.len(), 5_000);
        assert_eq!(map.get(b"key0"), Some(&entry("changed")));
        assert_eq!(map.get(b"key4999"), None);
        map.clear();
        assert!(map.is_empty() && map.iter().next().is_none());
        assert_eq!(
            frozen.iter().count(),
            5_000,
            "a clear leaves the frozen map"
        );
    }

    #[test]
    fn the_length_counts_keys_not_writes() {
        let mut map = Shards::default();
        assert_eq!(map.insert(key("a"), entry("1")), None);
        assert_eq!(map.insert(key("a"), entry("2")), Some(entry("1")));
        assert_eq!(map.remove(b"b"), None);
        assert_eq!(map.len(), 1);
        assert_eq!(map.remove(b"a"), Some(entry("2")));
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn maps_with_the_same_entries_are_equal_whatever_their_seeds() {
        let (mut a, mut b) = (Shards::default(), Shards::default());
        for i in 0..100 {
            a.insert(key(&format!("k{i}")), entry("v"));
            b.insert(key(&format!("k{}", 99 - i)), entry("v"));
        }
        assert_eq!(a, b);
        b.insert(key("k0"), entry("w"));
        assert_ne!(a, b);
    }
}

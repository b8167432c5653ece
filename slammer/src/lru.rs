//! Bounded LRU maps whose hash table grows with use.
//!
//! `lru::LruCache::new(cap)` allocates its table for `cap` entries up front: with the bounds
//! here (100,000 clients) every lookup in a mostly empty cache then lands on a cold cache line of
//! a table of megabytes, which was most of the daemon's cost per reply at a few hundred replies a
//! second. These start small, grow as entries come, and beyond `cap` evict the least recently
//! used entry, as `LruCache` would.

use std::{hash::Hash, num::NonZeroUsize};

pub struct Lru<K, V> {
    cache: lru::LruCache<K, V>,
    cap: NonZeroUsize,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    /// Holds at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            cache: lru::LruCache::unbounded(),
            cap: NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN),
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.cache.get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.cache.get_mut(key)
    }

    /// Like [`Self::get`], without making the entry the most recently used.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.cache.peek(key)
    }

    /// Inserts or replaces; may evict the least recently used entry.
    pub fn put(&mut self, key: K, value: V) {
        if !self.cache.contains(&key) {
            self.make_room();
        }
        self.cache.put(key, value);
    }

    /// The entry of `key`, inserted from `make` if missing (may evict the least recently used).
    pub fn get_or_insert_mut(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.cache.contains(&key) {
            self.make_room();
        }
        self.cache.get_or_insert_mut(key, make)
    }

    pub fn pop(&mut self, key: &K) -> Option<V> {
        self.cache.pop(key)
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// From the most to the least recently used.
    pub fn iter(&self) -> lru::Iter<'_, K, V> {
        self.cache.iter()
    }

    fn make_room(&mut self) {
        while self.cache.len() >= self.cap.get() {
            self.cache.pop_lru();
        }
    }
}

impl<'a, K: Hash + Eq, V> IntoIterator for &'a Lru<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = lru::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_beyond_its_bound() {
        let mut lru = Lru::new(2);
        lru.put(1, "a");
        lru.put(2, "b");
        assert_eq!(lru.get(&1), Some(&"a"));
        lru.put(3, "c");
        assert_eq!(
            (lru.len(), lru.peek(&2)),
            (2, None),
            "2 was the least recently used"
        );
        *lru.get_or_insert_mut(1, || "x") = "A";
        assert_eq!(lru.len(), 2, "replacing evicts nothing");
        *lru.get_or_insert_mut(4, || "d") = "D";
        assert_eq!(lru.peek(&3), None);
        let order: Vec<_> = lru.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(order, [(4, "D"), (1, "A")]);
        lru.put(4, "e");
        assert_eq!((lru.len(), lru.pop(&4)), (2, Some("e")));
    }

    #[test]
    fn a_zero_bound_keeps_one() {
        let mut lru = Lru::new(0);
        lru.put(1, ());
        lru.put(2, ());
        assert_eq!((lru.len(), lru.peek(&2)), (1, Some(&())));
    }
}

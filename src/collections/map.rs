//! [`HashMap`] and [`HashSet`]: `hashbrown`'s tables with the heap's allocator and
//! [`PersistentState`] hashing. They dereference to the `hashbrown` types, so every method of
//! those (`insert`, `get`, `entry`, `iter`, `retain`, ...) is available.

use super::PersistentState;
use crate::mem::alloc::HeapAlloc;
use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};

/// The `hashbrown` map type behind [`HashMap`].
pub type RawHashMap<K, V> = hashbrown::HashMap<K, V, PersistentState, HeapAlloc>;
/// The `hashbrown` set type behind [`HashSet`].
pub type RawHashSet<T> = hashbrown::HashSet<T, PersistentState, HeapAlloc>;

/// A hash map in the heap.
pub struct HashMap<K, V>(RawHashMap<K, V>);

impl<K, V> HashMap<K, V> {
    /// An empty map (allocates nothing until the first insert).
    pub fn new_in(alloc: HeapAlloc) -> Self {
        HashMap(hashbrown::HashMap::with_hasher_in(PersistentState::default(), alloc))
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity_in(n: usize, alloc: HeapAlloc) -> Self {
        HashMap(hashbrown::HashMap::with_capacity_and_hasher_in(
            n,
            PersistentState::default(),
            alloc,
        ))
    }

    /// The underlying `hashbrown` map.
    pub fn into_inner(self) -> RawHashMap<K, V> {
        self.0
    }
}

impl<K, V> Deref for HashMap<K, V> {
    type Target = RawHashMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K, V> DerefMut for HashMap<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for HashMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<K: Clone, V: Clone> Clone for HashMap<K, V> {
    fn clone(&self) -> Self {
        HashMap(self.0.clone())
    }
}

impl<K: Eq + Hash, V: PartialEq> PartialEq for HashMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Eq + Hash, V: Eq> Eq for HashMap<K, V> {}

impl<K: Eq + Hash, V> Extend<(K, V)> for HashMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl<'a, K, V> IntoIterator for &'a HashMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = hashbrown::hash_map::Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a, K, V> IntoIterator for &'a mut HashMap<K, V> {
    type Item = (&'a K, &'a mut V);
    type IntoIter = hashbrown::hash_map::IterMut<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut()
    }
}

impl<K, V> IntoIterator for HashMap<K, V> {
    type Item = (K, V);
    type IntoIter = hashbrown::hash_map::IntoIter<K, V, HeapAlloc>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Eq + Hash + Borrow<Q>, Q: Eq + Hash + ?Sized, V> std::ops::Index<&Q> for HashMap<K, V> {
    type Output = V;
    fn index(&self, key: &Q) -> &V {
        self.0.get(key).expect("key not in HashMap")
    }
}

/// A hash set in the heap.
pub struct HashSet<T>(RawHashSet<T>);

impl<T> HashSet<T> {
    /// An empty set (allocates nothing until the first insert).
    pub fn new_in(alloc: HeapAlloc) -> Self {
        HashSet(hashbrown::HashSet::with_hasher_in(PersistentState::default(), alloc))
    }

    /// An empty set with room for `n` elements.
    pub fn with_capacity_in(n: usize, alloc: HeapAlloc) -> Self {
        HashSet(hashbrown::HashSet::with_capacity_and_hasher_in(
            n,
            PersistentState::default(),
            alloc,
        ))
    }

    /// The underlying `hashbrown` set.
    pub fn into_inner(self) -> RawHashSet<T> {
        self.0
    }
}

impl<T> Deref for HashSet<T> {
    type Target = RawHashSet<T>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> DerefMut for HashSet<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for HashSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Clone> Clone for HashSet<T> {
    fn clone(&self) -> Self {
        HashSet(self.0.clone())
    }
}

impl<T: Eq + Hash> PartialEq for HashSet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<T: Eq + Hash> Eq for HashSet<T> {}

impl<T: Eq + Hash> Extend<T> for HashSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl<'a, T> IntoIterator for &'a HashSet<T> {
    type Item = &'a T;
    type IntoIter = hashbrown::hash_set::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> IntoIterator for HashSet<T> {
    type Item = T;
    type IntoIter = hashbrown::hash_set::IntoIter<T, HeapAlloc>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

//! A byte-string -> u32 hash map that stores all keys in one arena, so that a
//! 262k-token vocabulary costs two allocations and a lookup by `&[u8]` slice
//! needs no temporary string.

use alloc::vec::Vec;
use core::hash::BuildHasher;
use hashbrown::{DefaultHashBuilder, HashTable};

pub(crate) struct ByteMap {
    arena: Vec<u8>,
    /// Per entry: start and length of its key in `arena`, and its value.
    entries: Vec<(u32, u32, u32)>,
    /// Entry indices, hashed by key.
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl ByteMap {
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        ByteMap {
            arena: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(n),
            table: HashTable::with_capacity(n),
            hasher: DefaultHashBuilder::default(),
        }
    }

    #[inline]
    fn key<'a>(arena: &'a [u8], e: &(u32, u32, u32)) -> &'a [u8] {
        let start = e.0 as usize;
        arena.get(start..start + e.1 as usize).unwrap_or(&[])
    }

    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let h = self.hasher.hash_one(key);
        let arena = &self.arena;
        let entries = &self.entries;
        self.table
            .find(h, |&i| {
                entries
                    .get(i as usize)
                    .is_some_and(|e| Self::key(arena, e) == key)
            })
            .and_then(|&i| entries.get(i as usize).map(|e| e.2))
    }

    /// Sets the value of `key`, replacing an earlier one (the last insert wins,
    /// as in llama.cpp's token-to-id map when a vocabulary repeats a token).
    pub fn insert(&mut self, key: &[u8], value: u32) {
        let h = self.hasher.hash_one(key);
        let arena = &self.arena;
        let entries = &self.entries;
        if let Some(&i) = self.table.find(h, |&i| {
            entries
                .get(i as usize)
                .is_some_and(|e| Self::key(arena, e) == key)
        }) {
            if let Some(e) = self.entries.get_mut(i as usize) {
                e.2 = value;
            }
            return;
        }
        let idx = self.entries.len() as u32;
        self.entries
            .push((self.arena.len() as u32, key.len() as u32, value));
        self.arena.extend_from_slice(key);
        let arena = &self.arena;
        let entries = &self.entries;
        let hasher = &self.hasher;
        self.table.insert_unique(h, idx, |&i| {
            hasher.hash_one(
                entries
                    .get(i as usize)
                    .map_or(&[][..], |e| Self::key(arena, e)),
            )
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_overwrite() {
        let mut m = ByteMap::with_capacity(4, 16);
        m.insert(b"ab", 1);
        m.insert(b"", 2);
        m.insert(b"abc", 3);
        assert_eq!(m.get(b"ab"), Some(1));
        assert_eq!(m.get(b""), Some(2));
        assert_eq!(m.get(b"abc"), Some(3));
        assert_eq!(m.get(b"a"), None);
        m.insert(b"ab", 9);
        assert_eq!(m.get(b"ab"), Some(9));
        assert_eq!(m.len(), 3);
        for i in 0..1000u32 {
            m.insert(&i.to_le_bytes(), i);
        }
        for i in 0..1000u32 {
            assert_eq!(m.get(&i.to_le_bytes()), Some(i));
        }
    }
}

//! [`String`]: UTF-8 text in the heap.
//!
//! # Invariants
//!
//! - `bytes` is always valid UTF-8.
//!
//! # Safety
//!
//! `as_str` skips the UTF-8 check: every constructor and mutator appends only bytes of a
//! `&str` or `char`, so `bytes` stays valid UTF-8.

use super::Vec;
use crate::mem::alloc::HeapAlloc;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// A growable UTF-8 string in the heap. Dereferences to `str`.
pub struct String {
    bytes: Vec<u8>,
}

impl String {
    /// An empty string (allocates nothing).
    pub fn new_in(alloc: HeapAlloc) -> Self {
        String {
            bytes: Vec::new_in(alloc),
        }
    }

    /// An empty string with room for `n` bytes.
    pub fn with_capacity_in(n: usize, alloc: HeapAlloc) -> Self {
        String {
            bytes: Vec::with_capacity_in(n, alloc),
        }
    }

    /// A copy of `s` in the heap.
    pub fn from_str_in(s: &str, alloc: HeapAlloc) -> Self {
        let mut out = Self::with_capacity_in(s.len(), alloc);
        out.push_str(s);
        out
    }

    /// Appends `s`.
    pub fn push_str(&mut self, s: &str) {
        crate::mem::sysmem::extend_bytes(&mut self.bytes, s.as_bytes());
    }

    /// Appends one character.
    pub fn push(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.push_str(c.encode_utf8(&mut buf));
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: bytes only ever receives whole UTF-8 strings (push_str, push) and is
        // truncated only at char boundaries (truncate, clear), so it is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.bytes) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Shortens the string to `len` bytes. Panics if `len` is not a char boundary, like
    /// `std::string::String::truncate`.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            assert!(self.as_str().is_char_boundary(len), "truncate inside a character");
            self.bytes.truncate(len);
        }
    }

    /// Removes all text, keeping the capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// The allocator.
    pub fn allocator(&self) -> &HeapAlloc {
        self.bytes.allocator()
    }
}

impl Deref for String {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for String {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for String {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Clone for String {
    fn clone(&self) -> Self {
        String {
            bytes: self.bytes.clone(),
        }
    }
}

impl PartialEq for String {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for String {}

impl PartialEq<str> for String {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for String {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for String {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for String {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for String {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Same as str's Hash, so lookups by &str find String keys.
        self.as_str().hash(state)
    }
}

impl fmt::Display for String {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for String {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Write for String {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

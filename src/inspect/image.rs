//! The recovered image of an inspected heap: [`Inspector::build_image`] rebuilds it in a
//! private mapping at the heap's address (the allocator's free lists and the root words hold
//! absolute addresses), the newest snapshot mapped copy-on-write (lazily: only pages touched
//! are read) and the journal chain replayed with recovery's own routine
//! (`engine::replay::replay_journal`). `check` runs the allocator's invariant checker over
//! it ([`check_allocator`]); `info` reads the user's root from it ([`root_identity`]).
//!
//! # Safety
//!
//! The mapping is reserved with `MAP_FIXED_NOREPLACE` (an occupied range is
//! `Error::AddressInUse`) and owned by the [`Image`] for its life: replay writes into it, the
//! readers here read it; nothing else refers into it. Every read is bounds-checked against
//! the mapped extent first; each `unsafe` block states its range.

use super::{AllocatorCounts, GlobalRoot, Inspector, Problem, RootIdentity};
use crate::disk::format::meta::{Meta, LEGACY_FORMAT_VERSION};
use crate::disk::format::root::{RootRecord, ROOT_RECORD_KIND, ROOT_RECORD_LEN};
use crate::disk::format::snapshot::DATA_OFFSET;
use crate::disk::journal::JournalScan;
use crate::disk::snapshot::map_snapshot;
use crate::engine::replay::{replay_journal, Replay, Target, Write};
use crate::error::{Error, Result};
use crate::global::{Registry, REGISTRY_MAGIC, REGISTRY_TYPE_NAME, WORD_REGISTRY};
use crate::io::Vfs;
use crate::mem::alloc::{Arena, ArenaHeader, ARENA_HEADER_OFFSET, SEGMENT};
use crate::mem::region::Region;
use crate::migrate::WORD_ROOT_RECORD;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// The newest snapshot an image starts from.
pub(super) struct Base<'a> {
    /// Its file.
    pub path: &'a Path,
    /// Bytes of region data it holds.
    pub extent: u64,
    /// The commit it holds.
    pub seq: u64,
}

/// A recovered image in a private mapping, and where its pages came from.
pub(super) struct Image {
    /// The mapping, at the heap's base.
    pub region: Region,
    /// The snapshot it starts from.
    pub snapshot: Option<PathBuf>,
    /// Every replayed write with the index of its journal in `journals`, in replay order.
    pub writes: Vec<(usize, Write)>,
    /// The journals replayed.
    pub journals: Vec<PathBuf>,
    /// Pages replayed.
    pub pages: u64,
    /// Commit groups replayed.
    pub groups: u64,
    /// The commit the image holds.
    pub last_seq: u64,
}

impl Inspector {
    /// Rebuilds the image from `base` and the journals of an intact `chain`, calling `done`
    /// with the bytes of each replayed write. Returns the image and, when replay met damage,
    /// the problem (the image then holds the groups before it). An `Err` means the image
    /// could not be built at all (the heap's address range is taken in this process, the
    /// snapshot file cannot be opened or mapped).
    pub(super) fn build_image(
        &self,
        base: Option<Base<'_>>,
        chain: &[JournalScan],
        done: &mut dyn FnMut(u64),
    ) -> Result<(Image, Option<Problem>)> {
        let mut region = Region::reserve(self.meta.base as usize, self.meta.max_size as usize)?;
        let mut image_seq = 0;
        let mut snapshot = None;
        if let Some(b) = base {
            if b.extent > 0 {
                let f = self.vfs.open(b.path, false).map_err(|e| Error::io("open", b.path, e))?;
                map_snapshot(&mut region, &*f, b.extent as usize, b.path)?;
            }
            image_seq = b.seq;
            snapshot = Some(b.path.to_path_buf());
        }
        let mut image = Image {
            region,
            snapshot,
            writes: Vec::new(),
            journals: Vec::new(),
            pages: 0,
            groups: 0,
            last_seq: image_seq,
        };
        let mut problem = None;
        {
            let mut rp = Replay::new(self.meta.max_size, Target::Write(&mut image.region));
            for scan in chain {
                let k = image.journals.len();
                image.journals.push(scan.path.clone());
                let writes = &mut image.writes;
                match replay_journal(&self.vfs, &mut rp, scan, &mut |w| {
                    writes.push((k, w));
                    done(w.len);
                }) {
                    Ok(pages) => {
                        image.pages += pages;
                        image.groups += scan.groups.len() as u64;
                        image.last_seq = scan.last_seq();
                    }
                    Err(e) => {
                        problem = Some(Problem::from_error(e, &scan.path));
                        break;
                    }
                }
            }
            // The post-image checks of the whole chain (once per page, after its last entry).
            if problem.is_none() {
                if let Err(e) = rp.finish() {
                    let fallback = image.journals.last().cloned().unwrap_or_default();
                    problem = Some(Problem::from_error(e, &fallback));
                }
            }
        }
        Ok((image, problem))
    }
}

impl Image {
    /// The bytes `[addr, addr + len)` of the image, if they lie inside its mapped extent.
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let base = self.region.base() as u64;
        let end = base + self.region.extent() as u64;
        let last = addr.checked_add(len as u64)?;
        if addr < base || last > end {
            return None;
        }
        // SAFETY: [addr, addr + len) lies inside the mapped extent (checked above), which the
        // image owns and nothing writes while it is borrowed.
        Some(unsafe { std::slice::from_raw_parts(addr as *const u8, len) })
    }

    /// The allocator header, if segment 0 is mapped.
    fn header(&self) -> Option<&ArenaHeader> {
        if self.region.extent() < SEGMENT {
            return None;
        }
        // SAFETY: the header lies inside segment 0, which is mapped (checked above); the image
        // owns the mapping and nothing writes it while it is borrowed.
        Some(unsafe { &*((self.region.base() + ARENA_HEADER_OFFSET) as *const ArenaHeader) })
    }

    /// The file and byte offset that last wrote region offset `off`.
    fn source_of(&self, off: u64, dir: &Path) -> (PathBuf, u64) {
        let hit = self
            .writes
            .iter()
            .rev()
            .find(|(_, w)| off >= w.region_offset && off < w.region_offset + w.len);
        match (hit, &self.snapshot) {
            (Some((k, w)), _) if w.delta => (self.journals[*k].clone(), w.file_offset),
            (Some((k, w)), _) => (self.journals[*k].clone(), w.file_offset + (off - w.region_offset)),
            (None, Some(s)) => (s.clone(), DATA_OFFSET + off),
            (None, None) => (dir.to_path_buf(), 0),
        }
    }
}

/// The user's root as the image's committed state names it (see [`RootIdentity`]): the
/// root record of a `Heap<T>` heap, the registry of a `GlobalHeap` heap, `meta` itself for a
/// format-1 heap.
pub(super) fn root_identity(meta: &Meta, image: &Image) -> RootIdentity {
    if meta.version == LEGACY_FORMAT_VERSION && meta.root_type_name != REGISTRY_TYPE_NAME {
        return RootIdentity::InMeta;
    }
    let Some(header) = image.header() else {
        return RootIdentity::Unreadable("the recovered image has no allocator header".into());
    };
    let word = |i: usize| header.user_words[i].load(Ordering::Relaxed);
    if meta.root_type_name == REGISTRY_TYPE_NAME {
        return registry_roots(image, word(WORD_REGISTRY));
    }
    if meta.root_type_name != ROOT_RECORD_KIND {
        return RootIdentity::Unreadable(format!("meta names an unknown kind of heap `{}`", meta.root_type_name));
    }
    let (root, at) = (word(0), word(WORD_ROOT_RECORD));
    if root == 0 {
        return RootIdentity::NoRoot;
    }
    let Some(bytes) = image.bytes(at, ROOT_RECORD_LEN).filter(|_| at % 8 == 0) else {
        return RootIdentity::Unreadable(format!("root record pointer {at:#x} does not point into the image"));
    };
    match RootRecord::decode(bytes) {
        Err((off, what)) => RootIdentity::Unreadable(format!("root record at {at:#x}, byte {off}: {what}")),
        Ok(r) if r.root != root => RootIdentity::Unreadable(format!(
            "root pointer {root:#x} disagrees with the root record at {at:#x} ({:#x})",
            r.root
        )),
        Ok(r) => RootIdentity::Record {
            type_name: r.type_name,
            size: r.size,
            align: r.align,
            schema: r.schema,
            migrations: r.migrations,
            address: r.root,
            record_address: at,
        },
    }
}

/// The entries of a `GlobalHeap` registry at `at` (0: no root yet).
fn registry_roots(image: &Image, at: u64) -> RootIdentity {
    if at == 0 {
        return RootIdentity::Global(Vec::new());
    }
    let len = std::mem::size_of::<Registry>();
    let Some(bytes) = image.bytes(at, len).filter(|_| at % 8 == 0) else {
        return RootIdentity::Unreadable(format!("root registry pointer {at:#x} does not point into the image"));
    };
    let u64_at = |off: usize| u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
    let (magic, n) = (
        u64_at(std::mem::offset_of!(Registry, magic)),
        u64_at(std::mem::offset_of!(Registry, len)),
    );
    if magic != REGISTRY_MAGIC {
        return RootIdentity::Unreadable(format!("root registry at {at:#x}: bad magic"));
    }
    let entries = std::mem::offset_of!(Registry, entries);
    let entry_len = std::mem::size_of::<crate::global::RootEntry>();
    if n as usize > (len - entries) / entry_len {
        return RootIdentity::Unreadable(format!("root registry at {at:#x}: {n} entries, too many"));
    }
    let roots = (0..n as usize)
        .map(|i| {
            let e = entries + i * entry_len;
            GlobalRoot {
                type_hash: u64_at(e),
                size: u64_at(e + 8),
                align: u64_at(e + 16),
                address: u64_at(e + 24),
            }
        })
        .collect();
    RootIdentity::Global(roots)
}

/// The grow hook of the inspected image: it never grows (the checker only reads).
///
/// # Safety
///
/// None needed: it touches nothing; `unsafe` only to match the allocator's hook type.
unsafe fn no_grow(_ctx: *const (), _new_extent: usize) -> bool {
    false
}

/// Checks the allocator invariants of the recovered image. A violation is reported at the file
/// and offset that last wrote the address the checker names (or the allocator header).
pub(super) fn check_allocator(image: &Image, meta: &Meta, dir: &Path) -> Result<AllocatorCounts, Problem> {
    let region = &image.region;
    let base = region.base();
    let locate = |what: String| -> Problem {
        let addr = first_address_in(&what)
            .filter(|&a| a >= base as u64 && a < (base + region.extent()) as u64)
            .unwrap_or((base + ARENA_HEADER_OFFSET) as u64);
        let off = addr - base as u64;
        let (file, offset) = image.source_of(off, dir);
        Problem {
            file,
            offset,
            what: format!("allocator state (region offset {off:#x}): {what}"),
        }
    };
    let mapped = region.extent();
    if mapped < SEGMENT {
        return Err(locate(format!(
            "the recovered image is {mapped:#x} bytes, less than the allocator's first segment"
        )));
    }
    // SAFETY: the header lies inside segment 0, mapped (checked above); nothing else refers
    // into the private image.
    let header = unsafe { &*((base + ARENA_HEADER_OFFSET) as *const ArenaHeader) };
    let extent = header.extent.load(Ordering::Relaxed);
    if extent > mapped as u64 {
        return Err(locate(format!(
            "allocator extent {extent:#x} exceeds the recovered image of {mapped:#x} bytes"
        )));
    }
    // SAFETY: the region is mapped read-write up to its extent, which covers the allocator's
    // extent (checked above); the image is private to this process and this call.
    let arena = unsafe { Arena::attach(base, meta.max_size as usize, no_grow, std::ptr::null()) }.map_err(locate)?;
    let res = arena.check_invariants();
    arena.close();
    let rep = res.map_err(locate)?;
    Ok(AllocatorCounts {
        segments: rep.segments as u64,
        slabs: rep.slabs as u64,
        spans: rep.spans as u64,
        huge: rep.huge as u64,
        used_bytes: rep.used_bytes as u64,
        free_bytes: rep.free_bytes as u64,
        extent,
    })
}

/// The first `0x...` number in a message.
fn first_address_in(s: &str) -> Option<u64> {
    let i = s.find("0x")?;
    let hex: String = s[i + 2..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16).ok()
}

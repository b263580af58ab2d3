//! The region: the heap's fixed range of virtual address space and what is mapped in it.
//!
//! ```text
//!  base - CTRL_SIZE    base                 base+file_extent     base+extent          base+max_size
//!  |  control area     |  snapshot pages     |  anonymous pages   |  reserved, PROT_NONE |
//!  |  (process-local)  |  (MAP_PRIVATE file) |  (zero on first    |  (never touched)     |
//!  |                   |                     |   touch)           |                      |
//! ```
//!
//! The whole range `[base - CTRL_SIZE, base + max_size)` is reserved once with
//! `MAP_FIXED_NOREPLACE`, so no other mapping can appear inside it; later mappings replace
//! parts of *our own* reservation with `MAP_FIXED`. The control area holds the process-local
//! allocator handle (see `alloc`), is never persisted and never tracked.
//!
//! After a heap is closed, its data part stays mapped (the engine *detaches* the region, see
//! `engine/detach.rs`) and its control area records the closed state, so a stale `HeapAlloc`
//! fails cleanly and values allocated from the heap stay readable. Only an explicit release
//! drops a region, which returns its data part to `PROT_NONE` and retains the reservation and
//! control area, so a later open of a heap with the same base in this process reuses them.
//!
//! # Invariants
//!
//! - `0 <= file_extent <= extent <= max_size`, all multiples of the OS page size.
//! - `[base, base + extent)` is mapped read-write; `[base + extent, base + max_size)` is
//!   `PROT_NONE`.
//!
//! # Safety
//!
//! Every remapping targets only addresses inside the reservation this module made, and
//! happens only when the caller guarantees that no reference into the affected range is live
//! (at open, before the heap is handed out; at growth, for pages never handed out; at close,
//! after the heap handle is gone).

use crate::error::{Error, Result};
use crate::mem::alloc::CTRL_SIZE;
use crate::mem::sysmem::SysVec;
use crate::sys;
use std::alloc::System;
use std::os::fd::RawFd;
use std::sync::Mutex;

/// Reservations of closed heaps, kept so that stale `HeapAlloc` handles stay harmless and the
/// same heap can be reopened in this process: `(start, len)`, one entry per closed heap not
/// reopened since. Unbounded (System memory): a reservation missing from this list would stay
/// mapped for good and make a reopen of its heap fail with `AddressInUse`.
static RETAINED: Mutex<SysVec<(usize, usize)>> = Mutex::new(SysVec::new_in(System));

/// The lowest and highest base addresses a new heap may pick, inside x86-64's 47-bit user
/// space: above non-PIE executables, below the zone where the kernel loads PIE executables
/// (`ELF_ET_DYN_BASE`, 0x5555_5555_4000, plus up to 1 TiB of ASLR offset) and puts their brk
/// heap right after them, and below mmap's top-down area (0x7fxx_xxxx_xxxx). A heap created in
/// the PIE zone reopens only in a process whose executable landed elsewhere: one CI run saw a
/// heap created at 0x562f_4c00_0000 fail to reopen in the next process with `AddressInUse`.
const BASE_MIN: usize = 0x1000_0000_0000;
const BASE_MAX: usize = 0x5000_0000_0000;

/// Alignment of a heap's base address.
pub(crate) const BASE_ALIGN: usize = crate::mem::alloc::SEGMENT;

/// A reserved range with its current mapping state.
#[derive(Debug)]
pub(crate) struct Region {
    base: usize,
    max_size: usize,
    /// Bytes from `base` mapped read-write.
    extent: usize,
    /// Bytes from `base` mapped from the snapshot file.
    file_extent: usize,
    /// Whether dropping the region unmaps its data part. False for a region whose memory
    /// may be referenced by values handed out earlier (an adopted detached region, until the
    /// engine takes it back with [`Region::take`]) and for the inert copies `take` leaves.
    release_on_drop: bool,
}

impl Region {
    /// Reserves `[base - CTRL_SIZE, base + max_size)` and maps the control area.
    pub(crate) fn reserve(base: usize, max_size: usize) -> Result<Region> {
        if base % BASE_ALIGN != 0 || max_size % BASE_ALIGN != 0 || max_size == 0 || base < CTRL_SIZE {
            return Err(Error::invalid(format!(
                "base {base:#x} and max_size {max_size:#x} must be non-zero multiples of {BASE_ALIGN:#x}"
            )));
        }
        let start = base - CTRL_SIZE;
        let len = max_size + CTRL_SIZE;
        if take_retained(start, len) {
            // The control area is still mapped and holds a closed allocator handle; the data
            // part is PROT_NONE since release().
            return Ok(Region {
                base,
                max_size,
                extent: 0,
                file_extent: 0,
                release_on_drop: true,
            });
        }
        match sys::reserve(start, len) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(Error::AddressInUse {
                    start,
                    end: base + max_size,
                });
            }
            Err(e) => return Err(Error::io("mmap (reserve heap range)", "", e)),
        }
        // SAFETY: the control area lies inside the reservation just made and nothing refers
        // to it yet.
        if let Err(e) = unsafe { sys::map_anon_fixed(start, CTRL_SIZE) } {
            // SAFETY: we own the whole reservation and nothing refers to it.
            let _ = unsafe { sys::unmap(start, len) };
            return Err(Error::io("mmap (control area)", "", e));
        }
        Ok(Region {
            base,
            max_size,
            extent: 0,
            file_extent: 0,
            release_on_drop: true,
        })
    }

    /// Picks a free base for a new heap of `max_size` bytes and reserves it.
    pub(crate) fn reserve_anywhere(max_size: usize) -> Result<Region> {
        let slots = (BASE_MAX - BASE_MIN - max_size.min(BASE_MAX - BASE_MIN - BASE_ALIGN)) / BASE_ALIGN;
        let mut seed = crate::sys::random_u64();
        for _ in 0..64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let base = BASE_MIN + (seed as usize % slots.max(1)) * BASE_ALIGN;
            match Region::reserve(base, max_size) {
                Ok(r) => return Ok(r),
                Err(Error::AddressInUse { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::invalid(format!(
            "found no free address range of {max_size:#x} bytes for a new heap; try a smaller max_size"
        )))
    }

    /// First byte of the heap's data.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Bytes from `base` that are mapped read-write.
    pub(crate) fn extent(&self) -> usize {
        self.extent
    }

    /// Bytes from `base` mapped from the snapshot file (copy-on-write).
    pub(crate) fn file_extent(&self) -> usize {
        self.file_extent
    }

    /// Moves the region out, leaving an inert copy behind whose drop does nothing (the
    /// engine detaches its region at close this way). The returned region releases its data
    /// part when dropped.
    pub(crate) fn take(&mut self) -> Region {
        let r = Region {
            release_on_drop: true,
            ..*self
        };
        self.release_on_drop = false;
        r
    }

    /// An inert copy (its drop does nothing), for reading the geometry of a region someone
    /// else owns.
    pub(crate) fn shadow(&self) -> Region {
        Region {
            release_on_drop: false,
            ..*self
        }
    }

    /// Makes dropping this region leave its data part mapped (for an adopted region whose
    /// memory values of the earlier handle may still reference).
    pub(crate) fn keep_mapped_on_drop(&mut self) {
        self.release_on_drop = false;
    }

    /// Maps `[base, base + len)` copy-on-write from `fd` at file offset `offset`. Used once at
    /// open, before anything else is mapped.
    ///
    /// # Safety
    ///
    /// The file stays at least `offset + len` bytes long while mapped, and no reference points
    /// into the range.
    pub(crate) unsafe fn map_file(&mut self, fd: RawFd, offset: u64, len: usize) -> Result<()> {
        debug_assert_eq!(self.extent, 0);
        if len > self.max_size {
            return Err(Error::invalid("snapshot larger than the heap's max_size"));
        }
        if len == 0 {
            return Ok(());
        }
        // SAFETY: inside our reservation (len <= max_size); the caller guarantees the file
        // length and the absence of references.
        unsafe { sys::map_file_private_fixed(self.base, len, fd, offset) }
            .map_err(|e| Error::io("mmap (snapshot)", "", e))?;
        let _ = sys::no_huge_pages(self.base, len);
        self.extent = len;
        self.file_extent = len;
        Ok(())
    }

    /// Replaces `[a, a + len)`, inside the mapped part, with a copy-on-write mapping of `fd` at
    /// `offset` (returning clean pages to the kernel, `engine/footprint.rs`). The range loses
    /// its userfaultfd registration: the caller arms it again.
    ///
    /// # Safety
    ///
    /// The file stays at least `offset + len` bytes long while mapped, every page of the range
    /// holds exactly the file's bytes at its offset, and no thread writes the range during the
    /// call (readers are fine: they see the same bytes before and after).
    pub(crate) unsafe fn remap_file(&self, a: usize, len: usize, fd: RawFd, offset: u64) -> std::io::Result<()> {
        if a < self.base || len > self.extent || a - self.base > self.extent - len {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: inside the mapped part of our reservation (checked above); the content and
        // exclusion are the caller's promise.
        unsafe { sys::map_file_private_fixed(a, len, fd, offset) }?;
        let _ = sys::no_huge_pages(a, len);
        Ok(())
    }

    /// Grows the read-write part to `new_extent` bytes with zeroed anonymous memory.
    /// Returns the newly mapped range, or `None` if it was already mapped.
    pub(crate) fn grow(&mut self, new_extent: usize) -> std::io::Result<Option<(usize, usize)>> {
        if new_extent <= self.extent {
            return Ok(None);
        }
        if new_extent > self.max_size || new_extent % sys::OS_PAGE != 0 {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let (a, b) = (self.base + self.extent, self.base + new_extent);
        // SAFETY: [a, b) lies inside our reservation beyond the mapped part, so it is
        // PROT_NONE memory nobody can hold a reference into.
        unsafe { sys::map_anon_fixed(a, b - a) }?;
        let _ = sys::no_huge_pages(a, b - a);
        self.extent = new_extent;
        Ok(Some((a, b)))
    }

    /// Drops the mapping of `[base + extent, base + old_extent)` again after a failed growth
    /// (back to `PROT_NONE`).
    pub(crate) fn shrink_to(&mut self, extent: usize) {
        if extent >= self.extent || extent < self.file_extent {
            return;
        }
        // SAFETY: the tail was mapped by the growth that is being undone; its memory was never
        // handed out, so nothing refers to it.
        if unsafe { sys::rereserve(self.base + extent, self.extent - extent) }.is_ok() {
            self.extent = extent;
        }
    }
}

impl Drop for Region {
    /// Unmaps the data part (back to `PROT_NONE`) and retains the reservation and control area
    /// for this process. The owner drops a releasing region only when no reference into its
    /// data part remains: at a failed open (nothing was handed out) or at an explicit release
    /// (whose caller guarantees it). Inert and kept-mapped regions drop without effect.
    fn drop(&mut self) {
        if !self.release_on_drop {
            return;
        }
        // SAFETY: see above; the range is our own reservation.
        let ok = unsafe { sys::rereserve(self.base, self.max_size) }.is_ok();
        if ok {
            retain(self.base - CTRL_SIZE, self.max_size + CTRL_SIZE);
        }
    }
}

fn take_retained(start: usize, len: usize) -> bool {
    let mut t = RETAINED.lock().unwrap_or_else(|p| p.into_inner());
    match t.iter().position(|&r| r == (start, len)) {
        Some(i) => {
            t.swap_remove(i);
            true
        }
        None => false,
    }
}

fn retain(start: usize, len: usize) {
    RETAINED.lock().unwrap_or_else(|p| p.into_inner()).push((start, len));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `recovery` fuzz target: the table of retained reservations had 64 slots,
    /// so the reservation of the 65th closed heap stayed mapped but untracked and reopening
    /// that heap in the same process failed with `AddressInUse`.
    #[test]
    fn every_closed_region_can_be_reserved_again_beyond_64() {
        let bases: Vec<usize> = (0..80)
            .map(|_| Region::reserve_anywhere(BASE_ALIGN).unwrap().base())
            .collect();
        for (i, &base) in bases.iter().enumerate() {
            match Region::reserve(base, BASE_ALIGN) {
                Ok(r) => drop(r),
                Err(e) => panic!("region {i} at {base:#x} cannot be reserved again: {e}"),
            }
        }
    }

    /// Found in CI: a heap created at 0x562f_4c00_0000 by one process failed to reopen in the
    /// next, whose PIE executable the kernel had loaded there. The executable's and the brk
    /// heap's mappings of this (PIE) test binary must lie outside the range heaps are placed in.
    #[test]
    fn the_executable_and_brk_heap_lie_outside_the_heap_range() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_string_lossy().into_owned();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut checked = 0;
        for line in maps.lines() {
            let is_exe = line.ends_with(exe.as_str());
            if !(is_exe || line.ends_with("[heap]")) {
                continue;
            }
            let range = line.split_whitespace().next().unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let lo = usize::from_str_radix(lo, 16).unwrap();
            let hi = usize::from_str_radix(hi, 16).unwrap();
            assert!(
                hi <= BASE_MIN || lo >= BASE_MAX,
                "{line} overlaps the heap range {BASE_MIN:#x}..{BASE_MAX:#x}"
            );
            checked += 1;
        }
        assert!(checked > 0, "found no mapping of {exe} in /proc/self/maps");
    }
}

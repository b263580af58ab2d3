//! The soft-dirty rung: pagemap bit 55 (`Documentation/admin-guide/mm/soft-dirty.rst`) on
//! kernels built with `CONFIG_MEM_SOFT_DIRTY` (x86-64 distribution kernels such as Debian 12's
//! 6.1 enable it). Not available on the machines this crate is developed on (Linux 6.18 without
//! it: clearing "succeeds" and the bit stays 0), so the round-trip probe refuses it there and
//! nothing about it is measured.
//!
//! # Mechanism
//!
//! Writing `4` to `/proc/self/clear_refs` clears the soft-dirty bit of every page of the
//! process and write-protects the page-table entries; the next write to a page faults and sets
//! the bit again. A collect reads the armed range's pagemap entries, reports the pages with the
//! bit set, then clears.
//!
//! # Why Auto never picks it: no atomic read-and-clear
//!
//! A write that lands between the pagemap read and the clear, on a page whose bit was clear at
//! the read, is neither reported now nor remembered for later: lost. The commit excludes only
//! some writers: the commit lock and the root lock exclude writes through the root, the
//! allocator pause excludes allocation; but any thread may write into a block it allocated
//! earlier and has not linked to the root yet (and, under `GlobalHeap`, into anything), and
//! link it after the commit. Nothing short of stopping every thread closes that window, so:
//!
//! - `Tracking::Auto` never selects this rung (the hashed rung is exact and needs nothing);
//! - `GlobalHeap` refuses it outright (any thread writes at any time);
//! - a `Heap<T>` may force it (`Tracking::SoftDirty`) when the program guarantees that no
//!   thread writes heap memory while another one commits (e.g. one thread does all heap work).
//!
//! `clear_refs` is process-wide, so at most one soft-dirty tracker exists per process (a
//! second heap asking for one is refused), and a collect must cover every armed page (the
//! engine always collects its whole extent). A new mapping starts with every page soft-dirty
//! (`VM_SOFTDIRTY`), so the collect after a growth reports the new pages (and, where the kernel
//! merged them with the previous mapping, that mapping's pages) once: more than needed, never
//! less.
//!
//! # Invariants
//!
//! - A [`SoftDirty`] exists only while it holds the process-wide claim ([`CLAIMED`]).
//! - `armed` is sorted, page-aligned, non-empty, disjoint, non-adjacent.
//!
//! # Safety
//!
//! No unsafe code: system calls go through `crate::sys::pagemap`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Fallback;
use crate::mem::sysmem::SysVec;
use crate::sys::pagemap::{self, PagemapEntries, PM_SOFT_DIRTY};
use crate::sys::uffd::ScratchMap;

const PAGE: usize = crate::sys::OS_PAGE;
/// Pagemap entries read per `pread`.
const CHUNK: usize = 4096;

/// Whether a soft-dirty tracker exists in this process (`clear_refs` is process-wide).
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// The soft-dirty tracker state. See the module docs.
#[derive(Debug)]
pub(crate) struct SoftDirty {
    pagemap: PagemapEntries,
    armed: SysVec<(usize, usize)>,
    entries: SysVec<u64>,
}

impl SoftDirty {
    /// Claims the process's soft-dirty bits and probes them on a scratch mapping: with two
    /// pages populated and two untouched, clears, expects nothing reported, writes a populated
    /// page and then an untouched one and expects exactly the written ones, clears again and
    /// expects nothing. The claim is released if the probe fails.
    pub(crate) fn new() -> Result<SoftDirty, Fallback> {
        if CLAIMED.swap(true, Ordering::AcqRel) {
            return Err(Fallback::wrong("another heap in this process uses soft-dirty bits"));
        }
        let t = PagemapEntries::open()
            .map_err(|e| Fallback::os("open /proc/self/pagemap", e))
            .map(|pagemap| SoftDirty {
                pagemap,
                armed: SysVec::new_in(std::alloc::System),
                entries: SysVec::new_in(std::alloc::System),
            });
        // On failure the value is dropped, which releases the claim.
        let mut t = t.inspect_err(|_| CLAIMED.store(false, Ordering::Release))?;
        t.probe()?;
        Ok(t)
    }

    fn probe(&mut self) -> Result<(), Fallback> {
        let mut map = ScratchMap::new(4 * PAGE).map_err(|e| Fallback::os("probe mmap", e))?;
        let a = map.addr();
        map.write(0, 1);
        map.write(PAGE, 1);
        self.arm(a, a + 4 * PAGE);
        let r = self.probe_armed(&mut map);
        self.disarm(a, a + 4 * PAGE);
        r
    }

    fn probe_armed(&mut self, map: &mut ScratchMap) -> Result<(), Fallback> {
        let a = map.addr();
        let clear = || pagemap::clear_soft_dirty().map_err(|e| Fallback::os("write /proc/self/clear_refs", e));
        clear()?;
        self.expect(map, &[], "probe: a page nobody wrote was reported after clear_refs")?;
        map.write(PAGE + 8, 2);
        self.expect(
            map,
            &[(a + PAGE, a + 2 * PAGE)],
            "probe: written page not reported (soft-dirty bit 55 stayed 0)",
        )?;
        map.write(3 * PAGE + 8, 2);
        let both = [(a + PAGE, a + 2 * PAGE), (a + 3 * PAGE, a + 4 * PAGE)];
        self.expect(map, &both, "probe: written unpopulated page not reported")?;
        clear()?;
        self.expect(map, &[], "probe: clear_refs did not clear")
    }

    fn expect(&mut self, map: &ScratchMap, want: &[(usize, usize)], what: &'static str) -> Result<(), Fallback> {
        let mut out = SysVec::new_in(std::alloc::System);
        self.read_dirty(map.addr(), map.addr() + map.len(), &mut out)
            .map_err(|e| Fallback::os("probe pagemap read", e))?;
        if out.as_slice() == want {
            Ok(())
        } else {
            Err(Fallback::wrong(what))
        }
    }

    /// Starts tracking `[start, end)`. Nothing is cleared (that would be process-wide): pages
    /// written before the next collect, and a new mapping's pages, are reported then.
    pub(crate) fn arm(&mut self, start: usize, end: usize) {
        if start < end {
            super::ranges_insert(&mut self.armed, start, end);
        }
    }

    /// Stops tracking `[start, end)`.
    pub(crate) fn disarm(&mut self, start: usize, end: usize) {
        if start < end {
            super::ranges_remove(&mut self.armed, start, end);
        }
    }

    /// Appends the soft-dirty armed pages of `[start, end)` to `out` (address order, adjacent
    /// pages coalesced, never into earlier entries); with `update`, then clears every
    /// soft-dirty bit of the process. An updating report must cover every armed range
    /// (`EINVAL` otherwise: clearing would forget the rest). See the module docs for the
    /// window between the read and the clear.
    pub(crate) fn report(
        &mut self,
        start: usize,
        end: usize,
        update: bool,
        out: &mut SysVec<(usize, usize)>,
    ) -> io::Result<()> {
        if update {
            if let (Some(first), Some(last)) = (self.armed.first(), self.armed.last()) {
                if first.0 < start || last.1 > end {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
            }
        }
        self.read_dirty(start, end, out)?;
        if update {
            pagemap::clear_soft_dirty()?;
        }
        Ok(())
    }

    fn read_dirty(&mut self, start: usize, end: usize, out: &mut SysVec<(usize, usize)>) -> io::Result<()> {
        let first = out.len();
        let mut i = self.armed.partition_point(|&(_, e)| e <= start);
        while i < self.armed.len() && self.armed[i].0 < end {
            let (a, b) = (self.armed[i].0.max(start), self.armed[i].1.min(end));
            let mut addr = a;
            while addr < b {
                let n = CHUNK.min((b - addr) / PAGE);
                self.entries.resize(n, 0);
                self.pagemap.read(addr, &mut self.entries[..n])?;
                for (j, &e) in self.entries[..n].iter().enumerate() {
                    if e & PM_SOFT_DIRTY != 0 {
                        let p = addr + j * PAGE;
                        super::push_coalesced(out, first, p, p + PAGE);
                    }
                }
                addr += n * PAGE;
            }
            i += 1;
        }
        Ok(())
    }
}

impl Drop for SoftDirty {
    fn drop(&mut self) {
        CLAIMED.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the running kernel was built with soft-dirty support, from /proc/config.gz (via
    /// `zcat`) when the kernel exposes its config; `None` when it cannot be told.
    fn kernel_has_soft_dirty() -> Option<bool> {
        let out = std::process::Command::new("zcat")
            .arg("/proc/config.gz")
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Some(text.lines().any(|l| l.trim() == "CONFIG_MEM_SOFT_DIRTY=y"))
    }

    /// The probe agrees with the kernel's configuration: on a kernel without soft-dirty (this
    /// machine) it refuses with the round-trip failure, not a failed call; with it, the rung
    /// reports exactly the written pages of a small workload.
    #[test]
    fn probe_matches_the_kernel_config_and_the_claim_is_exclusive() {
        let r = SoftDirty::new();
        match (kernel_has_soft_dirty(), r) {
            (Some(false), Ok(_)) => panic!("soft-dirty accepted on a kernel built without it"),
            (Some(false), Err(f)) => {
                assert!(f.step.contains("written page not reported"), "{f:?}");
                assert!(!CLAIMED.load(Ordering::Acquire), "a refused probe keeps no claim");
            }
            (_, Ok(mut t)) => {
                assert!(
                    SoftDirty::new().is_err(),
                    "a second soft-dirty tracker in one process must be refused"
                );
                let mut map = ScratchMap::new(32 * PAGE).unwrap();
                t.arm(map.addr(), map.addr() + map.len());
                let mut out = SysVec::new_in(std::alloc::System);
                t.report(map.addr(), map.addr() + map.len(), true, &mut out).unwrap();
                out.clear();
                map.write(5 * PAGE, 1);
                map.write(6 * PAGE, 1);
                map.write(20 * PAGE, 1);
                t.report(map.addr(), map.addr() + map.len(), true, &mut out).unwrap();
                let a = map.addr();
                assert_eq!(
                    out.as_slice(),
                    &[(a + 5 * PAGE, a + 7 * PAGE), (a + 20 * PAGE, a + 21 * PAGE)]
                );
                out.clear();
                t.report(map.addr(), map.addr() + map.len(), true, &mut out).unwrap();
                assert!(out.is_empty());
                let err = t.report(map.addr() + PAGE, map.addr() + map.len(), true, &mut out);
                assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::EINVAL));
            }
            (Some(true), Err(f)) => panic!("the kernel has CONFIG_MEM_SOFT_DIRTY but the probe refused: {f:?}"),
            (None, Err(f)) => {
                // Unknown kernel config: a refusal must at least be the round trip's.
                assert!(f.step.starts_with("probe"), "{f:?}");
            }
        }
    }
}

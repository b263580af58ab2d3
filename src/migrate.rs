//! Schema migration: [`OpenOptions::migrate`] offers a conversion from an older root type
//! (and schema id) to a newer one; [`OpenOptions::open`] finds the chain of steps that leads
//! from the root the heap holds to the type it is opened with, runs it in place and commits
//! the new root, its type fingerprint and its schema in one commit.
//!
//! The root's identity is part of the committed state: the root record (a 448-byte block in
//! the heap, `disk/format/root.rs`, pointed to by `user_words[2]`). Rules for migration
//! closures and the crash analysis are in `docs/design.md` ("Schema migration").
//!
//! # Invariants
//!
//! - While a chain runs the engine refuses every commit (`Engine::freeze_commits`), and the
//!   heap handle does not exist yet, so no state between taking the old root and installing
//!   the new one is ever committed. A failed step (a panic, or the heap full) leaves the engine
//!   frozen; the caller drops it without committing.
//! - Each step moves the old root out of its block (`ptr::read`), frees the block without
//!   dropping the value, and owns the value from then on: it is dropped exactly once (by the
//!   closure, or inside the new root).
//!
//! # Safety
//!
//! A step reads the old root as its `Old` type only after the chain search matched the stored
//! fingerprint (type name, or the user's schema id, and size and alignment) with `Old`'s; the
//! root pointer was validated against the heap's extent and alignment by the caller.

use crate::disk::format::meta::fnv1a;
use crate::disk::format::root::RootRecord;
use crate::engine::{Engine, Fingerprint};
use crate::error::{Error, Result};
use crate::mem::alloc::{Arena, HeapAlloc};
use crate::options::OpenOptions;
use crate::persist::Persist;
use std::alloc::Layout;
use std::sync::Arc;

/// `user_words` index of the root record's address (word 0 holds the root pointer).
pub(crate) const WORD_ROOT_RECORD: usize = 2;

/// Runs one step: takes the address of the old root, returns the address of the new one.
type RunFn = dyn Fn(usize, &'static Arena) -> Result<usize> + Send + Sync;

/// One offered migration, type-erased.
pub(crate) struct Step {
    from_name: &'static str,
    from_size: u64,
    from_align: u64,
    from_schema: String,
    to_name: &'static str,
    to_size: u64,
    to_align: u64,
    run: Box<RunFn>,
}

impl Step {
    fn describe(&self) -> String {
        format!(
            "`{}` (schema {:?}) -> `{}`",
            self.from_name, self.from_schema, self.to_name
        )
    }
}

/// The identity a heap records for its root: the committed root record (format 2), or
/// `meta` for a format-1 heap not yet upgraded. What a tool that prints a heap's identity
/// shows (see [`OpenOptions::read_root_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    /// `std::any::type_name` of the root type (truncated to 256 bytes).
    pub type_name: String,
    /// The user's schema id (empty when none).
    pub schema: String,
    /// Size of the root type in bytes.
    pub size: u64,
    /// Alignment of the root type.
    pub align: u64,
    /// FNV-1a of the type name, as compared at open.
    pub type_hash: u64,
    /// Migrations applied over the heap's life.
    pub migrations: u32,
    /// The `meta` format version (2; 1 for a heap this build has not opened yet).
    pub format_version: u32,
}

impl RootInfo {
    pub(crate) fn from_record(r: &RootRecord, format_version: u32) -> RootInfo {
        RootInfo {
            type_name: r.type_name.clone(),
            schema: r.schema.clone(),
            size: r.size,
            align: r.align,
            type_hash: r.type_hash,
            migrations: r.migrations,
            format_version,
        }
    }
}

impl OpenOptions {
    /// Offers a migration from root type `Old`, recorded with schema id `from_schema`, to
    /// `New`. At [`open`](OpenOptions::open), if the heap's root is not already of the type
    /// (and schema) being opened, the chain of offered steps that leads from the recorded root
    /// to it is run, in place, and its result committed once, together with the new type
    /// fingerprint and schema. A heap whose root matches no chain is
    /// [`Error::Incompatible`], naming the recorded type and schema and the steps offered.
    ///
    /// ```no_run
    /// use snapheap::collections::{HashMap, String};
    /// use snapheap::{HeapAlloc, OpenOptions, Persist};
    ///
    /// #[derive(Persist)]
    /// struct StateV1 { names: HashMap<u64, String> }
    /// #[derive(Persist)]
    /// struct StateV2 { names: HashMap<u64, String>, visits: u64 }
    ///
    /// let heap = OpenOptions::new()
    ///     .schema("app-v2")
    ///     .migrate::<StateV1, StateV2>("app-v1", |old, _a: HeapAlloc| StateV2 { names: old.names, visits: 0 })
    ///     .open::<StateV2>("data/app.heap", |a| StateV2 { names: HashMap::new_in(a), visits: 0 })?;
    /// # Ok::<(), snapheap::Error>(())
    /// ```
    ///
    /// The closure receives the old root **by value** (moved out of the heap, its block freed
    /// without dropping it) and the heap's allocator. It may move fields of `old` into the new
    /// root (a moved collection keeps its buffer: O(1) whatever its size), allocate through
    /// `a`, and drop what it does not keep (which frees those blocks in the heap). It cannot
    /// keep references into the old root: it owns `old`, and a borrow of it cannot outlive the
    /// closure (`New: 'static`). It must not open, commit or snapshot this heap (commits are
    /// refused while it runs). If it panics, `open` returns [`Error::MigrationFailed`] and
    /// nothing is committed.
    ///
    /// How the recorded root is matched: by `Old`'s size and alignment, and either its type
    /// name (`std::any::type_name`) or, when both are set, `from_schema` equal to the schema
    /// id the heap recorded. So when a release renames the old type (`State` kept as
    /// `StateV1`), the schema id still identifies it: give every release its own schema id.
    /// After the first step the next one is chosen by type; each step runs at most once.
    pub fn migrate<Old, New>(
        &mut self,
        from_schema: &str,
        f: impl Fn(Old, HeapAlloc) -> New + Send + Sync + 'static,
    ) -> &mut Self
    where
        Old: Persist + Send + Sync + 'static,
        New: Persist + Send + Sync + 'static,
    {
        let run = move |old_ptr: usize, arena: &'static Arena| -> Result<usize> {
            // SAFETY: the chain search matched the recorded root with `Old`'s fingerprint and
            // the caller validated the pointer (module Safety); the value is moved out here and
            // its block freed below without dropping it, so it is owned exactly once.
            let old = unsafe { std::ptr::read(old_ptr as *const Old) };
            let old_layout = Layout::new::<Old>();
            if old_layout.size() != 0 {
                // SAFETY: the old root's block was allocated with `Old`'s layout (the root's
                // own block, or a previous step's `place`), and nothing refers to it anymore.
                unsafe { arena.dealloc(old_ptr as *mut u8, old_layout) };
            }
            let new = f(old, HeapAlloc::new(arena));
            place(arena, new)
        };
        let step = Step {
            from_name: std::any::type_name::<Old>(),
            from_size: std::mem::size_of::<Old>() as u64,
            from_align: std::mem::align_of::<Old>() as u64,
            from_schema: from_schema.to_string(),
            to_name: std::any::type_name::<New>(),
            to_size: std::mem::size_of::<New>() as u64,
            to_align: std::mem::align_of::<New>() as u64,
            run: Box::new(run),
        };
        self.migrations.push(Arc::new(step));
        self
    }
}

/// Moves `value` into a fresh block of the heap (a dangling pointer for a zero-sized type);
/// returns its address. On a full heap `value` is dropped and the error returned.
pub(crate) fn place<T>(arena: &'static Arena, value: T) -> Result<usize> {
    let layout = Layout::new::<T>();
    let p = if layout.size() == 0 {
        std::ptr::NonNull::<T>::dangling().as_ptr()
    } else {
        let p = arena.alloc(layout).cast::<T>();
        if p.is_null() {
            drop(value);
            return Err(Error::OutOfSpace {
                what: format!("the root ({} bytes)", layout.size()),
            });
        }
        p
    };
    // SAFETY: p is a fresh allocation of T's layout (or dangling for a ZST), valid for writes
    // and not aliased.
    unsafe { p.write(value) };
    Ok(p as usize)
}

/// Where the chain search stands: the identity of the value the next step would receive.
struct Cursor {
    type_hash: u64,
    size: u64,
    align: u64,
    /// The recorded schema; `None` after a step (an intermediate value is matched by type).
    schema: Option<(u64, bool)>,
}

fn schemas_agree(recorded: Option<(u64, bool)>, wanted: &str) -> bool {
    match recorded {
        None => true,
        // The schema id is optional: compared only when both sides name one.
        Some((hash, recorded_empty)) => recorded_empty || wanted.is_empty() || hash == fnv1a(wanted.as_bytes()),
    }
}

/// The steps that turn the recorded root `stored` into `target` (empty: it already is one).
/// A recorded root that no chain reaches is [`Error::Incompatible`].
pub(crate) fn plan<'a>(opts: &'a OpenOptions, stored: &RootRecord, target: &Fingerprint) -> Result<Vec<&'a Step>> {
    let steps: Vec<&Step> = opts
        .migrations
        .iter()
        .filter_map(|s| s.downcast_ref::<Step>())
        .collect();
    let target_hash = fnv1a(target.type_name.as_bytes());
    let mut cur = Cursor {
        type_hash: stored.type_hash,
        size: stored.size,
        align: stored.align,
        schema: Some((stored.schema_hash, stored.schema.is_empty())),
    };
    let mut used = vec![false; steps.len()];
    let mut chain = Vec::new();
    loop {
        let same_type = cur.type_hash == target_hash && cur.size == target.size && cur.align == target.align;
        if same_type && schemas_agree(cur.schema, &target.schema) {
            return Ok(chain);
        }
        let next = steps.iter().enumerate().position(|(i, s)| {
            if used[i] || s.from_size != cur.size || s.from_align != cur.align {
                return false;
            }
            let by_type = fnv1a(s.from_name.as_bytes()) == cur.type_hash;
            match cur.schema {
                None => by_type,
                Some((hash, empty)) => {
                    let by_schema = !empty && !s.from_schema.is_empty() && hash == fnv1a(s.from_schema.as_bytes());
                    by_schema || (by_type && schemas_agree(cur.schema, &s.from_schema))
                }
            }
        });
        match next {
            Some(i) => {
                used[i] = true;
                let s = steps[i];
                chain.push(s);
                cur = Cursor {
                    type_hash: fnv1a(s.to_name.as_bytes()),
                    size: s.to_size,
                    align: s.to_align,
                    schema: None,
                };
            }
            None => return Err(no_chain(stored, target, &steps, &chain)),
        }
    }
}

fn no_chain(stored: &RootRecord, target: &Fingerprint, steps: &[&Step], chain: &[&Step]) -> Error {
    let type_differs = stored.type_hash != fnv1a(target.type_name.as_bytes())
        || stored.size != target.size
        || stored.align != target.align;
    if steps.is_empty() {
        // The messages of a heap opened without migrations (as before migrations existed).
        return if type_differs {
            Error::incompatible(format!(
                "root type: the heap holds `{}` (size {}, align {}), this program opened it as `{}` (size {}, align {})",
                stored.type_name, stored.size, stored.align, target.type_name, target.size, target.align
            ))
        } else {
            Error::incompatible(format!(
                "schema: the heap was created with schema {:?}, this program opened it with {:?}",
                stored.schema, target.schema
            ))
        };
    }
    let offered: Vec<String> = steps.iter().map(|s| s.describe()).collect();
    let reached = match chain.last() {
        Some(s) => format!("; the offered steps lead from it only to `{}`", s.to_name),
        None => String::new(),
    };
    Error::incompatible(format!(
        "no migration chain: the heap holds `{}` (size {}, align {}) with schema {:?}, this program opens it as `{}` \
         (size {}, align {}) with schema {:?}{reached}; migrations offered: {}",
        stored.type_name,
        stored.size,
        stored.align,
        stored.schema,
        target.type_name,
        target.size,
        target.align,
        target.schema,
        offered.join(", ")
    ))
}

/// Runs `chain` on the root at `root` and returns the new root's address. Commits are
/// refused from here on; on success the caller installs the new root and record, unfreezes
/// and commits once. On failure (a panic: [`Error::MigrationFailed`]; a full heap) the engine
/// stays frozen and the caller drops it without committing.
pub(crate) fn run(engine: &Engine, root: usize, chain: &[&Step]) -> Result<usize> {
    let arena = engine.arena();
    engine.freeze_commits(true);
    let mut p = root;
    for s in chain {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (s.run)(p, arena)));
        p = match r {
            Ok(r) => r?,
            Err(payload) => {
                let cause = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic with a non-text payload".to_string());
                return Err(Error::MigrationFailed {
                    step: s.describe(),
                    cause,
                });
            }
        };
    }
    Ok(p)
}

//! [`Persist`] and [`GlobalPersist`]: which types may be stored in a root, checked by the
//! compiler.
//!
//! A root is captured byte for byte and mapped back at the same address in the next run, so
//! a value may be stored only if its bytes still mean the same thing in another process: no
//! pointer into memory that is gone or has moved after a restart. The two heaps differ in
//! what that admits:
//!
//! - [`Heap<T>`](crate::Heap) requires `T: Persist`. Only the heap's own region survives, so
//!   nothing may point outside it: std's `String`, `Vec`, `Box`, `Rc`, `Arc` and collections
//!   are refused (their buffers come from the process's global allocator); use
//!   [`collections`](crate::collections), which allocate through [`HeapAlloc`].
//! - [`GlobalHeap::with_root`](crate::GlobalHeap::with_root) requires `T: GlobalPersist`.
//!   There the global allocator *is* the persistent heap, so std's collections and smart
//!   pointers are valid too; references, `&'static str`, `fn` pointers and `dyn` vtables
//!   (pointers into the executable, the stack or memory outside the heap) still are not.
//!
//! `Persist` is a subtrait of `GlobalPersist`: whatever may live in a `Heap` root may live in
//! a `GlobalHeap` root. There is no blanket impl from one to the other (`Box` is a
//! `#[fundamental]` type, so a blanket impl would forbid `GlobalPersist for Box<T>`); every
//! `Persist` impl here has its `GlobalPersist` twin, and `#[derive(Persist)]` emits both.
//!
//! # Invariants
//!
//! - `T: Persist ⇒ T: GlobalPersist` (supertrait).
//! - Every container impl is bounded by the same trait on its element types, so a root type
//!   implements a trait only if every type it contains does.
//! - No impl exists for `&T`, `&mut T`, `fn` pointers, `dyn Trait`, raw pointers to `dyn
//!   Trait`, locks, OS handles or thread handles, in either trait.

use crate::collections::{HashMap, HashSet, PersistentState, String as HeapString};
use crate::mem::alloc::HeapAlloc;

/// Types whose values stay valid in a [`Heap<T>`](crate::Heap) root after a restart: they
/// hold no pointer that is invalid in another run of the program.
///
/// Implemented for integers, floats, `bool`, `char`, `()`, `str`, non-zero integers,
/// `Wrapping`, `Duration`, atomics, arrays, slices, tuples (up to 12), `Option`, `Result`,
/// `PhantomData`, `PhantomPinned`, `Cell`, `UnsafeCell`, `ManuallyDrop`, `MaybeUninit`, raw
/// pointers and `NonNull` to sized types, slices and `str`, [`HeapAlloc`] and the types of
/// [`collections`](crate::collections) (when their elements are `Persist`). Derive it for
/// your own structs and enums:
///
/// ```
/// use snapheap::collections::{HashMap, String, Vec};
/// use snapheap::Persist;
///
/// #[derive(Persist)]
/// struct State {
///     users: HashMap<u64, User>,
///     log: Vec<Event<u32>>,
/// }
///
/// #[derive(Persist)]
/// struct User { name: String, visits: u64 }
///
/// #[derive(Persist)]
/// enum Event<T> { Visit { user: u64, at: T }, Reset }
/// ```
///
/// The derive implements the trait for every choice of type parameters that implement it,
/// after checking that every field's type (of every variant) implements it; a field that
/// does not is a compile error naming its type. It also implements [`GlobalPersist`] (do not
/// derive both). It refuses unions and `#[repr(packed)]` types.
///
/// # What is refused, and why
///
/// - std's `String`, `Vec`, `Box`, `Rc`, `Arc`, `HashMap`, `BTreeMap`, ...: their buffers are
///   allocated by the process's global allocator, which does not survive a restart. Use
///   [`collections`](crate::collections) (or run the whole process on a
///   [`GlobalHeap`](crate::GlobalHeap), where they are [`GlobalPersist`]).
/// - `&T`, `&mut T`, `&'static str`: references point into the stack, the executable (string
///   literals) or other memory that moves between runs (ASLR).
/// - `fn` pointers and `dyn Trait` (also behind `Box` or raw pointers): code addresses and
///   vtables lie in the executable, which loads at another address in the next run.
/// - Locks (`Mutex`, `RwLock`, `Condvar`, `Once`): a lock captured while held stays held
///   forever. Synchronise outside the root (a [`Heap`](crate::Heap) holds its own `RwLock`).
/// - OS handles and process state (`File`, sockets, `Thread`, `JoinHandle`, `Instant`): they
///   name kernel objects or clocks of the process that wrote them.
///
/// # What remains your responsibility
///
/// The trait makes the *type* of a root checkable; it cannot see values:
///
/// - raw pointers are `Persist` because dereferencing them is already `unsafe`: whoever
///   dereferences one after a restart must know that it points into this heap;
/// - a collection built with *another* heap's [`HeapAlloc`] points into that heap, which is
///   valid only while that heap is open;
/// - a layout change (another compiler version, reordered fields, a changed enum) that keeps
///   the root type's name, size and alignment is not detected by the heap's fingerprint: bump
///   [`OpenOptions::schema`](crate::OpenOptions::schema) when the meaning changes.
///
/// # Safety
///
/// `unsafe impl Persist for T {}` promises that for every value of `T`, after the heap is
/// closed (or the process killed) and reopened by another run of the same program:
///
/// 1. every pointer reachable in the value's bytes that safe code may dereference points into
///    the same heap's region (allocated through its [`HeapAlloc`]), or is dangling-by-design
///    (a zero-capacity buffer) and never dereferenced;
/// 2. it holds no code address or vtable pointer, no OS handle, and no lock state;
/// 3. every type it contains implements `Persist` too (an impl for a generic type must bound
///    its parameters by `Persist`);
/// 4. `T` also implements [`GlobalPersist`] (required by the compiler).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a `Heap` root: it may hold a pointer that is invalid after a restart",
    label = "`{Self}` does not implement `snapheap::Persist`",
    note = "std's `String`, `Vec`, `Box`, `Rc`, `Arc` and collections allocate from the global allocator, not the heap: use `snapheap::collections` (`String`, `Vec`, `Box`, `HashMap`, `HashSet`)",
    note = "references (`&T`, `&'static str`), `fn` pointers and `dyn Trait` point into the stack or the executable, which move at every restart",
    note = "for your own types write `#[derive(snapheap::Persist)]`; see the `snapheap::Persist` docs for the rules of an `unsafe impl`"
)]
pub unsafe trait Persist: GlobalPersist {}

/// Types whose values stay valid in a [`GlobalHeap`](crate::GlobalHeap) root after a
/// restart. Everything that is [`Persist`] is `GlobalPersist`; in addition std's `String`,
/// `Vec`, `Box`, `VecDeque`, `LinkedList`, `BinaryHeap`, `BTreeMap`, `BTreeSet`, `HashMap` and
/// `HashSet` (with `RandomState` or `BuildHasherDefault`), `Rc`, `Arc`, `PathBuf`, `OsString`
/// and `CString` are, when their elements are: under a `GlobalHeap` the global allocator is
/// the persistent heap, so their buffers live in it.
///
/// ```
/// use std::collections::{BTreeMap, HashMap};
/// use snapheap::GlobalPersist;
///
/// #[derive(GlobalPersist)]
/// struct Log {
///     lines: Vec<String>,
///     index: HashMap<String, Vec<usize>>,
///     by_time: BTreeMap<u64, Box<Entry>>,
/// }
///
/// #[derive(GlobalPersist)]
/// struct Entry { text: String }
/// ```
///
/// Refused: `&T`, `&'static str`, `fn` pointers, `dyn Trait` (in `Box<dyn Trait>` the
/// vtable pointer lies in the executable, which loads elsewhere after a restart with ASLR or
/// a rebuild), locks (`Mutex`, `RwLock`: captured while held, held forever), OS handles
/// (`File`, sockets, `Thread`, `Instant`), and `std::collections::HashMap` with another
/// hasher (hashbrown's and others' default hashers keep part of their seed outside the map).
///
/// The derive works as for [`Persist`]; derive `Persist` instead when the type is valid in a
/// `Heap` root too (it implements both). `Heap` roots keep their `Persist` requirement.
///
/// # Safety
///
/// `unsafe impl GlobalPersist for T {}` promises the rules of [`Persist`] with one change:
/// pointers may point anywhere into the `GlobalHeap`'s region, which is where the global
/// allocator puts every block. In addition, every such pointer must be stored as a plain,
/// aligned address inside (or at the start of) its block: the reclaim at open traces only
/// those, and frees blocks it does not reach.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a `GlobalHeap` root: it may hold a pointer that is invalid after a restart",
    label = "`{Self}` does not implement `snapheap::GlobalPersist`",
    note = "references (`&T`, `&'static str`), `fn` pointers and `dyn Trait` vtables point into the stack or the executable, which move at every restart",
    note = "locks (`Mutex`, `RwLock`) captured while held stay held, and OS handles (`File`, sockets, threads) do not survive the process",
    note = "for your own types write `#[derive(snapheap::GlobalPersist)]`; see the `snapheap::GlobalPersist` docs for the rules of an `unsafe impl`"
)]
pub unsafe trait GlobalPersist {}

/// `unsafe impl Persist` and `GlobalPersist` for types with no type parameters.
macro_rules! both {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: plain data (or a handle valid in every run, see its item): no pointers.
        // (`do_not_recommend`: keeps these out of the compiler's "other types implement the
        // trait" list, which for `String` would suggest `str`.)
        #[diagnostic::do_not_recommend]
        unsafe impl Persist for $t {}
        // SAFETY: as above.
        #[diagnostic::do_not_recommend]
        unsafe impl GlobalPersist for $t {}
    )*};
}

/// `unsafe impl` of both traits for a generic type whose parameters get the trait as bound.
/// `$t` is the type, `[$($p)*]` its parameters with their other bounds.
macro_rules! both_generic {
    ($(<$($p:ident),*> $t:ty;)*) => {$(
        // SAFETY: holds its parameters' values inline (or nothing), no pointers of its own.
        unsafe impl<$($p: Persist),*> Persist for $t {}
        // SAFETY: as above.
        unsafe impl<$($p: GlobalPersist),*> GlobalPersist for $t {}
    )*};
}

/// `unsafe impl GlobalPersist` only, for std types that allocate from the global allocator.
macro_rules! global_generic {
    ($(<$($p:ident),*> $t:ty;)*) => {$(
        // SAFETY: its buffers come from the global allocator, which under a GlobalHeap is the
        // persistent heap; it stores them as plain aligned addresses; its elements are bounded.
        unsafe impl<$($p: GlobalPersist),*> GlobalPersist for $t {}
    )*};
}

// Integers, floats, bool, char, unit: bytes with no meaning beyond their value.
both!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    (),
    str
);
// Validity invariants only (non-zero); time spans as integers.
both!(
    std::num::NonZeroU8,
    std::num::NonZeroU16,
    std::num::NonZeroU32,
    std::num::NonZeroU64,
    std::num::NonZeroU128,
    std::num::NonZeroUsize,
    std::num::NonZeroI8,
    std::num::NonZeroI16,
    std::num::NonZeroI32,
    std::num::NonZeroI64,
    std::num::NonZeroI128,
    std::num::NonZeroIsize,
    std::time::Duration,
    std::marker::PhantomPinned,
);
// Atomics are their integer (no lock: an atomic cannot be "held").
both!(
    std::sync::atomic::AtomicBool,
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16,
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicIsize,
);
// The heap's own handle and hasher. A `HeapAlloc` is the address of its arena in the
// control area just below the region's base; the region is mapped at its recorded base at
// every open and the arena placed there again (`Arena::attach`), so the handle's bits name
// the same live arena in every run (`mem/alloc/handle.rs`). `PersistentState` is its seed, inline.
both!(HeapAlloc, PersistentState, HeapString);

both_generic! {
    <T> Option<T>;
    <T, E> Result<T, E>;
    <T> std::num::Wrapping<T>;
    <T> std::cell::Cell<T>;
    <T> std::cell::UnsafeCell<T>;
    <T> std::mem::ManuallyDrop<T>;
    <T> std::mem::MaybeUninit<T>;
    <T> [T];
    <A> (A,);
    <A, B> (A, B);
    <A, B, C> (A, B, C);
    <A, B, C, D> (A, B, C, D);
    <A, B, C, D, E> (A, B, C, D, E);
    <A, B, C, D, E, F> (A, B, C, D, E, F);
    <A, B, C, D, E, F, G> (A, B, C, D, E, F, G);
    <A, B, C, D, E, F, G, H> (A, B, C, D, E, F, G, H);
    <A, B, C, D, E, F, G, H, I> (A, B, C, D, E, F, G, H, I);
    <A, B, C, D, E, F, G, H, I, J> (A, B, C, D, E, F, G, H, I, J);
    <A, B, C, D, E, F, G, H, I, J, K> (A, B, C, D, E, F, G, H, I, J, K);
    <A, B, C, D, E, F, G, H, I, J, K, L> (A, B, C, D, E, F, G, H, I, J, K, L);
    // The heap's collections: buffers allocated through `HeapAlloc`, in the region.
    <T> allocator_api2::vec::Vec<T, HeapAlloc>;
    <K, V> HashMap<K, V>;
    <T> HashSet<T>;
    <K, V> hashbrown::HashMap<K, V, PersistentState, HeapAlloc>;
    <T> hashbrown::HashSet<T, PersistentState, HeapAlloc>;
}

// SAFETY: the elements are inline and bounded by the trait.
unsafe impl<T: Persist, const N: usize> Persist for [T; N] {}
// SAFETY: as above.
unsafe impl<T: GlobalPersist, const N: usize> GlobalPersist for [T; N] {}

// SAFETY: `PhantomData` holds no bytes at all, whatever `T` is.
unsafe impl<T: ?Sized> Persist for std::marker::PhantomData<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized> GlobalPersist for std::marker::PhantomData<T> {}

// SAFETY: a heap box is a pointer into the region (allocated through `HeapAlloc`) to a
// bounded `T`; `dyn Trait` is not `Persist`, so no vtable can be admitted.
unsafe impl<T: ?Sized + Persist> Persist for allocator_api2::boxed::Box<T, HeapAlloc> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + GlobalPersist> GlobalPersist for allocator_api2::boxed::Box<T, HeapAlloc> {}

/// Raw pointers: their address may be stored (dereferencing it is `unsafe`, and the caller
/// answers for it after a restart); pointers to `dyn Trait` are excluded because their
/// metadata is a vtable address in the executable. Pointers to slices and `str` carry a length.
macro_rules! raw_pointers {
    ($($t:ty),*) => {$(
        // SAFETY: an address with no metadata beyond a length; see above.
        unsafe impl<T> Persist for $t {}
        // SAFETY: as above.
        unsafe impl<T> GlobalPersist for $t {}
    )*};
}
raw_pointers!(
    *const T,
    *mut T,
    *const [T],
    *mut [T],
    std::ptr::NonNull<T>,
    std::ptr::NonNull<[T]>,
    std::sync::atomic::AtomicPtr<T>
);
both!(*const str, *mut str, std::ptr::NonNull<str>);

// ---- GlobalHeap only ------------------------------------------------------------------------

global_generic! {
    <T> std::vec::Vec<T>;
    <T> std::collections::VecDeque<T>;
    <T> std::collections::LinkedList<T>;
    <T> std::collections::BinaryHeap<T>;
    <K, V> std::collections::BTreeMap<K, V>;
    <T> std::collections::BTreeSet<T>;
    // The hasher is a parameter: `RandomState` keeps its two keys inside the map.
    <K, V, S> std::collections::HashMap<K, V, S>;
    <T, S> std::collections::HashSet<T, S>;
}
// SAFETY: the text buffers come from the global allocator (the persistent heap).
unsafe impl GlobalPersist for std::string::String {}
// SAFETY: as above (`PathBuf` and `OsString` wrap a `Vec<u8>`, `CString` a `Box<[u8]>`).
unsafe impl GlobalPersist for std::path::PathBuf {}
// SAFETY: as above.
unsafe impl GlobalPersist for std::ffi::OsString {}
// SAFETY: as above.
unsafe impl GlobalPersist for std::ffi::CString {}
// SAFETY: `RandomState` is its two 64-bit keys, held inline: a map hashes the same after a
// restart because the keys are stored in it (its algorithm is fixed for one build of std).
unsafe impl GlobalPersist for std::hash::RandomState {}
// SAFETY: `BuildHasherDefault` holds no bytes; the hasher it builds starts from a constant.
unsafe impl<H> GlobalPersist for std::hash::BuildHasherDefault<H> {}
// SAFETY: a pointer to a block of the global allocator holding a bounded `T` (no vtable:
// `dyn Trait` is not `GlobalPersist`).
unsafe impl<T: ?Sized + GlobalPersist> GlobalPersist for std::boxed::Box<T> {}
// SAFETY: a pointer to the start of the counted block (counts and value, both inline).
unsafe impl<T: ?Sized + GlobalPersist> GlobalPersist for std::rc::Rc<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + GlobalPersist> GlobalPersist for std::sync::Arc<T> {}

/// Panics unless the process's global allocator places blocks in `arena`: a persistent
/// [`GlobalHeap`](crate::GlobalHeap) that is not the `#[global_allocator]` would give std's
/// collections buffers from another allocator, and [`GlobalPersist`] would not hold. Checked
/// once per arena (one allocation), then remembered.
pub(crate) fn assert_installed(arena: *const crate::mem::alloc::Arena) {
    use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};
    static CHECKED: AtomicPtr<crate::mem::alloc::Arena> = AtomicPtr::new(std::ptr::null_mut());
    if std::ptr::eq(CHECKED.load(Relaxed), arena) {
        return;
    }
    debug_assert!(!arena.is_null());
    let layout = std::alloc::Layout::new::<u64>();
    // SAFETY: the layout has a nonzero size.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: a persistent GlobalHeap's arena is non-null and leaked for the process's life.
    let inside = unsafe { &*arena }.contains(p);
    // SAFETY: `p` was allocated just above by the global allocator with `layout`.
    unsafe { std::alloc::dealloc(p, layout) };
    assert!(
        inside,
        "snapheap: GlobalHeap::with_root on a persistent heap that is not the #[global_allocator]: \
         std's collections in its roots would be allocated elsewhere and lost at exit; declare it \
         as `#[global_allocator] static HEAP: GlobalHeap = GlobalHeap::new();`"
    );
    CHECKED.store(arena as *mut _, Relaxed);
}

/// Helpers called by the derive's generated code; not part of the public API.
#[doc(hidden)]
pub mod __private {
    /// Compiles only if `T: Persist`; the derive calls it once per field type.
    #[inline(always)]
    pub const fn assert_persist<T: ?Sized + crate::persist::Persist>() {}

    /// Compiles only if `T: GlobalPersist`; the derive calls it once per field type.
    #[inline(always)]
    pub const fn assert_global_persist<T: ?Sized + crate::persist::GlobalPersist>() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persist<T: ?Sized + Persist>() {}
    fn global<T: ?Sized + GlobalPersist>() {}

    #[test]
    fn heap_types_are_persist_and_std_types_only_global_persist() {
        persist::<(u8, [u64; 4], Option<char>, *const u8, std::cell::Cell<f64>)>();
        persist::<crate::collections::Vec<crate::collections::Box<crate::collections::String>>>();
        persist::<crate::collections::HashMap<u64, crate::collections::Vec<u8>>>();
        persist::<crate::collections::Box<str>>();
        global::<crate::collections::Vec<u8>>();
        global::<std::collections::HashMap<std::string::String, Vec<Box<[u8]>>>>();
        global::<std::sync::Arc<str>>();
    }
}

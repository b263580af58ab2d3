//! Memory for the crate's own bookkeeping: [`SysVec`] and [`SysBox`] allocate from
//! [`std::alloc::System`], never from the global allocator, and [`extend_bytes`] appends
//! bytes with one `memcpy`.
//!
//! # Safety
//!
//! [`extend_bytes`] writes into a vector's spare capacity; its `SAFETY` comment states why
//! the copy stays inside the reserved bytes.

/// A vector for the crate's own bookkeeping. It allocates from [`std::alloc::System`], never
/// from the global allocator, because snapheap may *be* the global allocator and its commit
/// path runs while that allocator is paused.
pub(crate) type SysVec<T> = allocator_api2::vec::Vec<T, std::alloc::System>;

/// A box for the crate's own bookkeeping, allocated from [`std::alloc::System`] (see [`SysVec`]).
pub(crate) type SysBox<T> = allocator_api2::boxed::Box<T, std::alloc::System>;

/// Appends `src` to `v` with one `memcpy`. (`allocator_api2`'s `extend_from_slice` goes
/// through a generic clone loop that copies byte by byte: about 2 us per 4 KiB page, a third
/// of a commit's CPU before this helper.)
pub(crate) fn extend_bytes<A: allocator_api2::alloc::Allocator>(v: &mut allocator_api2::vec::Vec<u8, A>, src: &[u8]) {
    v.reserve(src.len());
    let len = v.len();
    // SAFETY: `reserve` guarantees capacity for `src.len()` more bytes after `len`; `src` cannot
    // overlap `v`'s spare capacity (we hold `&mut v`, and `src` is a shared borrow of other
    // memory); every byte up to `len + src.len()` is initialised by the copy before `set_len`.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), v.as_mut_ptr().add(len), src.len());
        v.set_len(len + src.len());
    }
}

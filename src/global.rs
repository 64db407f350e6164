//! `ChunkMalloc`, the `#[global_allocator]` shim: a thin mapping of
//! `GlobalAlloc` onto the entry points in `thread`.

use core::alloc::{GlobalAlloc, Layout};

use crate::thread;

/// chunkmalloc as a Rust global allocator.
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;
/// ```
///
/// Failure (memory or budget exhausted) returns null, so `try_reserve`
/// reports `Err` and infallible collections reach `handle_alloc_error`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkMalloc;

// SAFETY: every method returns null or a block of at least `layout.size()`
// bytes aligned to `layout.align()` that stays valid until deallocated;
// nothing unwinds (no code path panics: failures return null).
unsafe impl GlobalAlloc for ChunkMalloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= 16 {
            thread::malloc(layout.size())
        } else {
            thread::malloc_aligned(layout.size(), layout.align(), false)
        }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from this allocator.
        unsafe { thread::free_nonnull(ptr) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= 16 {
            thread::malloc_zeroed(layout.size())
        } else {
            thread::malloc_aligned(layout.size(), layout.align(), true)
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `ptr` is live and from here.
        unsafe { thread::realloc(ptr, new_size, layout.align()) }
    }
}

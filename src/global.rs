//! `ChunkMalloc`, the `#[global_allocator]` shim: a thin mapping of
//! `GlobalAlloc` onto the entry points in `thread`.

use core::alloc::{GlobalAlloc, Layout};

use crate::thread;

/// Aborts the process if it is dropped while a panic unwinds: wrapped
/// around every `GlobalAlloc` entry, so that a panic in the allocator (a
/// bug; no code path is meant to panic, and internal checks abort instead,
/// see `check!`) can never unwind into the caller, which is undefined
/// behaviour for a global allocator. On the normal path it is forgotten,
/// and with nothing that can unwind it compiles to nothing.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        crate::os::fatal("panic inside the allocator");
    }
}

/// Runs `f` under an [`AbortOnUnwind`] guard.
#[inline(always)]
fn no_unwind<R>(f: impl FnOnce() -> R) -> R {
    let guard = AbortOnUnwind;
    let r = f();
    core::mem::forget(guard);
    r
}

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
// nothing unwinds (failures return null; a panic would abort, `no_unwind`).
unsafe impl GlobalAlloc for ChunkMalloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        no_unwind(|| {
            if layout.align() <= 16 {
                thread::malloc(layout.size())
            } else {
                thread::malloc_aligned(layout.size(), layout.align(), false)
            }
        })
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from this allocator.
        no_unwind(|| unsafe { thread::free_nonnull(ptr) })
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        no_unwind(|| {
            if layout.align() <= 16 {
                thread::malloc_zeroed(layout.size())
            } else {
                thread::malloc_aligned(layout.size(), layout.align(), true)
            }
        })
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `ptr` is live and from here.
        no_unwind(|| unsafe { thread::realloc(ptr, new_size, layout.align()) })
    }
}

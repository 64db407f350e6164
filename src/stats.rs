//! Statistics: the public snapshot type and the process-wide counters that
//! are not per heap.
//!
//! Hot-path counters live in each heap (owner-written with relaxed
//! load/store, never a shared read-modify-write); the rare events below
//! (huge mappings, frees from threads without a heap) are global atomics.
//! [`crate::stats()`] sums both.

use core::sync::atomic::{AtomicUsize, Ordering};

/// A snapshot of the allocator's state. Fields are read one at a time
/// without stopping other threads, so a snapshot may mix adjacent instants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of live blocks handed to the program: slab blocks at their
    /// class size, large objects at their usable size (chunk size minus the
    /// object's offset, which in-place resizes keep), huge objects at their
    /// requested size.
    pub in_use: usize,
    /// Bytes committed from the OS (what the budget counts).
    pub committed: usize,
    /// Peak of `committed`.
    pub peak_committed: usize,
    /// Budget in use by live objects: bytes charged to the chunks and
    /// mappings that hold live blocks (`committed` minus free cached
    /// chunks, the header pages of decommitted ones and `metadata`).
    /// `budget_live - in_use` is what partly used chunks and rounding
    /// cost; `committed - budget_live` is what caches and metadata hold.
    pub budget_live: usize,
    /// Committed bytes of chunkmalloc's own metadata (the chunk map's
    /// writable blocks, heap records).
    pub metadata: usize,
    /// Committed bytes in free chunks held in caches.
    pub cached: usize,
    /// Bytes mapped: committed plus the decommitted pages of cached chunks
    /// and [`Stats::slab_holes`] (the never-charged tails of chunks, mapped
    /// but untouched, are not counted).
    pub mapped: usize,
    /// Bytes of pages inside live slab chunks given back to the OS while
    /// the chunks stay in use (`purge()`, `malloc_trim`, idle slabs): mapped,
    /// not committed.
    pub slab_holes: usize,
    /// Live slab chunks.
    pub slab_chunks: usize,
    /// Live large (oversized) chunks.
    pub large_chunks: usize,
    /// Live huge mappings.
    pub huge_chunks: usize,
    /// Free chunks in caches (committed or not).
    pub cached_chunks: usize,
    /// Chunks mapped from the OS so far.
    pub chunks_mapped_total: usize,
    /// Chunks served from a cache so far.
    pub chunks_reused_total: usize,
    /// Frees of blocks owned by another heap so far.
    pub remote_frees: usize,
    /// Heaps owned by a live thread.
    pub live_heaps: usize,
    /// Heaps waiting for a thread to adopt them.
    pub abandoned_heaps: usize,
    /// The budget cap, if any.
    pub budget_limit: Option<usize>,
    /// Allocation requests refused (budget or OS).
    pub failed_allocs: usize,
}

/// Rare-path global counters.
pub(crate) struct Globals {
    pub huge_bytes: AtomicUsize,
    pub huge_count: AtomicUsize,
    /// Bytes freed by threads that never allocated.
    pub heapless_freed_bytes: AtomicUsize,
    /// Usable bytes large objects gained by in-place growth (their frees
    /// count the grown size).
    pub large_grown_bytes: AtomicUsize,
}

pub(crate) static GLOBALS: Globals = Globals {
    huge_bytes: AtomicUsize::new(0),
    huge_count: AtomicUsize::new(0),
    heapless_freed_bytes: AtomicUsize::new(0),
    large_grown_bytes: AtomicUsize::new(0),
};

/// Adds `v` to an owner-written counter: a relaxed load and store, not a
/// locked read-modify-write. Only the counter's single writer calls this.
#[inline(always)]
pub(crate) fn bump(c: &AtomicUsize, v: usize) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

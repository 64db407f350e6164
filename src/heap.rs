//! The heap: one per thread, owning size-class bins of slab chunks and a
//! [`Provider`].
//!
//! Owns what one heap does: the malloc and free fast paths, the collection
//! of remote frees and of the pending stack, large (oversized-chunk) and
//! huge (own mapping) objects, realloc, and the work a reclaiming thread
//! may do on a heap it has locked. The set of heaps (records, abandonment,
//! adoption, sweeps, reclamation across heaps) is `registry`'s.
//!
//! Concurrency: the owner's fast paths (pop from `current`, push on an
//! attached chunk's `local_free`) take no lock. Everything else that
//! touches a heap's bins, pending stack or provider runs under the heap's
//! `lock`: the owner takes it on its slow paths, and another thread takes
//! it to reclaim from an idle or dead heap. A lock holder that is not the
//! owner may touch only what the owner's lock-free paths never touch:
//! detached (full) chunks, the provider's lists, and, for an abandoned
//! heap, everything.
//!
//! Which heap a thread uses is decided above, in `thread`; every function
//! here takes the heap explicitly. Functions that need a real heap return
//! null when handed the static [`EMPTY_HEAP`], and the caller attaches one
//! and retries.

use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::budget;
use crate::chunk::{
    chunk_base, slab_header_offset, Block, Chunk, ChunkStack, Kind, MarkFull, EMPTY_CHUNK,
    FLAG_ALIGNED, FLAG_FULL, FLAG_MASK, FLAG_NOT_SLAB, HEADER_SIZE,
};
use crate::chunk_map;
use crate::os::{self, OsPages};
use crate::provider::{decommit_tail, mark_cached, Provider, GLOBAL_CACHE, HUGE_SLOTS};
use crate::registry;
use crate::size_class::{
    chunk_class_of, chunk_class_size, class_of, class_size, slab_chunk_size, CHUNK_SIZE,
    MAX_CHUNK_CLASS_SIZE, MAX_SMALL, NUM_CLASSES, OBJ_GRANULE, TABLE_MAX,
};
use crate::stats::{bump, GLOBALS};
use crate::sync::SpinLock;

/// Largest request accepted at all (as `isize::MAX` bounds Rust layouts);
/// anything larger fails with ENOMEM.
pub const MAX_REQUEST: usize = isize::MAX as usize - 2 * CHUNK_SIZE;

/// Heap state: owned by a live thread.
pub const STATE_LIVE: u8 = 1;
/// Heap state: its thread exited; waiting on the abandoned list.
pub const STATE_ABANDONED: u8 = 2;
/// Heap state: its thread vanished in a `fork`; never reused.
pub const STATE_ORPHANED: u8 = 3;
/// Heap state: the static empty heap.
const STATE_EMPTY: u8 = 0;

/// A class whose last slow-path entry is this many of the heap's entries
/// old counts as idle for [`retire_idle_current`]. A class in use enters
/// the slow path about once per page of blocks (when its carved or freed
/// list runs out), so this is a few hundred pages' worth of other classes'
/// allocation since it was last used.
const IDLE_AFTER_SLOW: u32 = 256;

/// [`tidy`] decommits a chunk's charged pages beyond its carve cursor
/// when there are at least this many bytes of them.
const TIDY_TRIM: usize = 16 * 1024;
/// ... and, for a current chunk, when its cursor stood still through this
/// many tidies before (each at least one coarse-clock reading apart).
const TIDY_STILL: u8 = 2;

/// An attached slab that has not been its class's current chunk for this
/// many purge delays (1 s by default), and whose blocks are mostly free,
/// gives back its free pages at the owner's next tidy
/// ([`Chunk::release_free_pages`]): a long-running program's scattered
/// survivors no longer pin whole slabs without a `malloc_trim`. Not
/// sooner: the harness's `fragmentation` comes back to its slabs within
/// about 60 ms, and faulting the pages in again costs what a short purge
/// delay costs (`docs/PERF.md`).
const IDLE_PAGES_AFTER: u64 = 10;

/// Slow-path entries between two housekeeping ticks (`registry::tick`).
const TICK_EVERY: usize = 16;

/// Entries of `Heap::direct`: one per granule count up to [`TABLE_MAX`].
const DIRECT_LEN: usize = TABLE_MAX / OBJ_GRANULE + 1;

const _: () = assert!(NUM_CLASSES <= 128, "bin_mask has a bit per class");

/// The classes whose bins held a chunk when the walk began, lowest first
/// (a snapshot of `Heap::bin_mask`: a walk that empties bins goes on).
struct BinClasses(u128);

impl Iterator for BinClasses {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let cls = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(cls)
    }
}

/// The classes with attached chunks.
///
/// # Safety
/// The owner, or a holder of the heap's lock.
#[inline]
unsafe fn bin_classes(heap: *mut Heap) -> BinClasses {
    // SAFETY: per the contract.
    BinClasses(unsafe { (*heap).bin_mask })
}

#[derive(Clone, Copy)]
struct Bin {
    first: *mut Chunk,
    last: *mut Chunk,
}

/// A thread's heap.
#[repr(C)]
pub struct Heap {
    /// Per class, the chunk the fast path allocates from (the bin's first
    /// chunk, or [`EMPTY_CHUNK`]).
    current: [*mut Chunk; NUM_CLASSES],
    /// The chunk map's base and entry count (`chunk_map::view`, taken when
    /// the record is made; null and 0 in the empty and dead heaps), so the
    /// free fast path reads no global.
    map: *const AtomicUsize,
    map_len: usize,
    /// `current` by size for every size up to 1 KiB, indexed by granule
    /// count (entry 0 serves size 0): the exported `malloc` reads its
    /// chunk off the heap pointer it already has, with no class lookup
    /// (mimalloc's "direct pages"). Kept equal to `current[class_of(size)]`
    /// by [`set_current`], the only writer of both.
    direct: [*mut Chunk; DIRECT_LEN],
    /// Bytes of live blocks in this heap's detached (full) chunks: each
    /// chunk's `used` times its block size, added when it is detached
    /// and taken off when it comes back or is retired (under `lock`).
    /// `stats()` walks the bins for the attached chunks, so the fast paths
    /// count nothing.
    detached_bytes: AtomicUsize,
    /// Per class, the attached slab chunks (first = current).
    bins: [Bin; NUM_CLASSES],
    /// Bit `cls` set while `bins[cls]` holds a chunk (under `lock`, with
    /// the bins): the walks over every bin (collection, abandonment,
    /// adoption, statistics) visit only those, so a thread that used one
    /// class pays for one at attach and exit, not for all 80.
    bin_mask: u128,
    /// Chunks whose notification a remote free claimed (detached full
    /// chunks; in an abandoned heap, any chunk).
    pub(crate) pending: ChunkStack,
    /// The chunk source.
    pub(crate) provider: Provider<OsPages>,
    /// Held by the owner on its slow paths and by a thread reclaiming
    /// from this heap.
    pub(crate) lock: SpinLock,
    /// `STATE_*`.
    pub(crate) state: AtomicU8,
    /// The owning thread's process and thread ids (for the check that a
    /// live heap's thread still exists, `registry`).
    pub(crate) pid: AtomicI32,
    pub(crate) tid: AtomicI32,
    /// Slow-path entries (owner-written): paces housekeeping, and tells a
    /// sweeper whether the heap was active since its last look.
    pub(crate) slow_entries: AtomicUsize,
    /// `slow_entries` as the last sweeper saw it (under `lock`).
    pub(crate) swept_entries: AtomicUsize,
    /// The clock reading of the owner's last [`tidy`] (under `lock`).
    tidied_ms: u64,
    /// The [`TRIM_EPOCH`] this heap last gave back free pages for
    /// (owner-written).
    trim_seen: u64,
    /// Per class, `slow_entries` at the class's last slow-path entry
    /// (owner-written): how recently the class was active, for
    /// [`retire_idle_current`].
    class_slow: [u32; NUM_CLASSES],
    /// Per class, the current chunk's carve cursor at the last [`tidy`],
    /// and for how many tidies in a row it stayed there (under `lock`).
    tidy_bump: [usize; NUM_CLASSES],
    tidy_still: [u8; NUM_CLASSES],
    /// Large-object bytes allocated / freed by this heap's thread.
    large_alloc_bytes: AtomicUsize,
    large_free_bytes: AtomicUsize,
    /// Remote frees into this heap's chunks that it has collected
    /// (`count_remote`, under the lock); `stats()` adds those still on
    /// the chunks' lists.
    remote_frees: AtomicUsize,
    /// Live slab and large chunks owned by this heap.
    slab_chunks: AtomicUsize,
    large_chunks: AtomicUsize,
    /// Next heap in the registry of all heaps (set once, before publishing).
    pub(crate) all_next: *mut Heap,
    /// Next heap on the abandoned list (under the registry lock).
    pub(crate) abandoned_next: *mut Heap,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);

impl Heap {
    /// Records the chunk map's view for the free fast path.
    pub(crate) fn set_map_view(&mut self, (map, len): (*const AtomicUsize, usize)) {
        self.map = map;
        self.map_len = len;
    }

    pub(crate) const fn new(current: *mut Chunk, state: u8) -> Heap {
        Heap {
            current: [current; NUM_CLASSES],
            map: ptr::null(),
            map_len: 0,
            direct: [current; DIRECT_LEN],
            detached_bytes: ZERO,
            bins: [Bin {
                first: ptr::null_mut(),
                last: ptr::null_mut(),
            }; NUM_CLASSES],
            bin_mask: 0,
            pending: ChunkStack::new(),
            provider: Provider::new(OsPages, &budget::GLOBAL, &GLOBAL_CACHE),
            lock: SpinLock::new(),
            state: AtomicU8::new(state),
            pid: AtomicI32::new(0),
            tid: AtomicI32::new(0),
            slow_entries: ZERO,
            swept_entries: ZERO,
            tidied_ms: 0,
            trim_seen: 0,
            class_slow: [0; NUM_CLASSES],
            tidy_bump: [0; NUM_CLASSES],
            tidy_still: [0; NUM_CLASSES],
            large_alloc_bytes: ZERO,
            large_free_bytes: ZERO,
            remote_frees: ZERO,
            slab_chunks: ZERO,
            large_chunks: ZERO,
            all_next: ptr::null_mut(),
            abandoned_next: ptr::null_mut(),
        }
    }
}

/// The heap of a thread that has no heap yet: every class points at the
/// empty chunk, so its first allocation takes the slow path.
pub static EMPTY_HEAP: EmptyHeap = EmptyHeap(Heap::new(
    ptr::addr_of!(EMPTY_CHUNK) as *mut Chunk,
    STATE_EMPTY,
));

/// The heap pointer of a thread whose exit destructor has run. Like the
/// empty heap it owns nothing and is never written; allocations from such
/// a thread (in later TLS or key destructors) borrow a heap for the one
/// call instead of attaching one that no destructor would abandon.
pub static DEAD_HEAP: EmptyHeap = EmptyHeap(Heap::new(
    ptr::addr_of!(EMPTY_CHUNK) as *mut Chunk,
    STATE_EMPTY,
));

/// The heap pointer of a thread while it registers its exit destructor
/// (`thread::on_thread_exit`): the registration's one allocation, glibc's
/// list node, is served from the thread's static TLS instead of a heap, so
/// that glibc's `free` of it, after the destructor abandoned the heap,
/// costs nothing (`thread::exit_node`). Owns nothing, like the empty heap.
pub static REGISTERING_HEAP: EmptyHeap = EmptyHeap(Heap::new(
    ptr::addr_of!(EMPTY_CHUNK) as *mut Chunk,
    STATE_EMPTY,
));

/// Wrapper making the empty heaps `Sync`.
pub struct EmptyHeap(Heap);

// SAFETY: EMPTY_HEAP, DEAD_HEAP and REGISTERING_HEAP are never written: every path that would write a heap
// checks `is_empty` first (slow paths) or cannot reach it (no chunk is
// owned by it, so the owner fast path never matches). They are not in the
// registry, so no reclaiming thread locks them.
unsafe impl Sync for EmptyHeap {}

impl EmptyHeap {
    /// The empty heap's address.
    #[inline(always)]
    pub const fn as_ptr(&'static self) -> *mut Heap {
        ptr::addr_of!(self.0) as *mut Heap
    }
}

/// Whether `heap` is one of the static heaps that own nothing.
#[inline(always)]
pub fn is_empty(heap: *mut Heap) -> bool {
    ptr::eq(heap, EMPTY_HEAP.as_ptr())
        || ptr::eq(heap, DEAD_HEAP.as_ptr())
        || ptr::eq(heap, REGISTERING_HEAP.as_ptr())
}

// ---------------------------------------------------------------------------
// Bins.
// ---------------------------------------------------------------------------

/// # Safety
/// Owner with the heap lock; `c` is on no bin.
#[inline]
unsafe fn bin_push_front(heap: *mut Heap, cls: usize, c: *mut Chunk) {
    // SAFETY: bin links are touched only under the heap lock.
    unsafe {
        let bin = &mut (*heap).bins[cls];
        (*c).cached_at = (*heap).tidied_ms;
        (*c).prev = ptr::null_mut();
        (*c).next = bin.first;
        if bin.first.is_null() {
            bin.last = c;
            (*heap).bin_mask |= 1 << cls;
        } else {
            (*bin.first).prev = c;
        }
        bin.first = c;
        set_current(heap, cls, c);
    }
}

/// Makes `c` the chunk the fast paths allocate class `cls` from, in
/// `current` and, for classes up to 1 KiB, in every `direct` entry of a
/// size of that class.
///
/// # Safety
/// Owner with the heap lock (or a lock holder on an abandoned heap).
#[inline]
unsafe fn set_current(heap: *mut Heap, cls: usize, c: *mut Chunk) {
    // SAFETY: per the contract; the granule range lies inside `direct`
    // (checked by `hi < DIRECT_LEN`).
    unsafe {
        (*heap).current[cls] = c;
        let hi = class_size(cls) / OBJ_GRANULE;
        if hi < DIRECT_LEN {
            // Sizes of class `cls` have granule counts in (the previous
            // class's, this class's]; class 0 also serves size 0.
            let lo = if cls == 0 {
                0
            } else {
                class_size(cls - 1) / OBJ_GRANULE + 1
            };
            for g in lo..=hi {
                (*heap).direct[g] = c;
            }
        }
    }
}

/// # Safety
/// Owner with the heap lock; `c` is on no bin.
unsafe fn bin_push_back(heap: *mut Heap, cls: usize, c: *mut Chunk) {
    // SAFETY: bin links are touched only under the heap lock.
    unsafe {
        let bin = &mut (*heap).bins[cls];
        if bin.first.is_null() {
            bin_push_front(heap, cls, c);
            return;
        }
        (*c).next = ptr::null_mut();
        (*c).prev = bin.last;
        (*bin.last).next = c;
        bin.last = c;
    }
}

/// # Safety
/// Owner with the heap lock (or a lock holder on an abandoned heap); `c`
/// is on bin `cls`.
unsafe fn bin_remove(heap: *mut Heap, cls: usize, c: *mut Chunk) {
    // SAFETY: bin links are touched only under the heap lock.
    unsafe {
        let bin = &mut (*heap).bins[cls];
        if (*c).prev.is_null() {
            bin.first = (*c).next;
        } else {
            (*(*c).prev).next = (*c).next;
        }
        if (*c).next.is_null() {
            bin.last = (*c).prev;
        } else {
            (*(*c).next).prev = (*c).prev;
        }
        (*c).next = ptr::null_mut();
        (*c).prev = ptr::null_mut();
        let first = if bin.first.is_null() {
            (*heap).bin_mask &= !(1 << cls);
            EMPTY_CHUNK.as_ptr()
        } else {
            bin.first
        };
        set_current(heap, cls, first);
    }
}

/// Adds a chunk being detached (full) to the heap's `detached_bytes`.
///
/// # Safety
/// The caller holds the heap's lock; `c` is a slab of `heap`.
unsafe fn count_detached(heap: *mut Heap, c: *mut Chunk) {
    // SAFETY: `detached_bytes` is written only under the heap lock.
    unsafe {
        bump(
            &(*heap).detached_bytes,
            Chunk::used(c) as usize * (*c).block_size as usize,
        )
    }
}

/// Takes a detached chunk that is coming back (reattached or retired)
/// off the heap's `detached_bytes`, before its `used` changes.
///
/// # Safety
/// As [`count_detached`]; `c` is detached (`FLAG_FULL`).
unsafe fn uncount_detached(heap: *mut Heap, c: *mut Chunk) {
    // SAFETY: as in `count_detached`.
    unsafe {
        bump(
            &(*heap).detached_bytes,
            (Chunk::used(c) as usize * (*c).block_size as usize).wrapping_neg(),
        )
    }
}

/// Returns an empty slab chunk to the provider.
///
/// # Safety
/// Owner with the heap lock; `c` has no live blocks and is on no bin or
/// pending list.
unsafe fn retire(heap: *mut Heap, c: *mut Chunk) {
    // SAFETY: heap lock held; the chunk is unreferenced.
    unsafe {
        Chunk::drop_holes(c, (*heap).provider.budget());
        bump(&(*heap).slab_chunks, usize::MAX);
        (*heap).provider.release(c);
        (*heap).provider.maintain(os::now_ms());
    }
}

/// Returns an empty slab chunk of `heap` straight to the global cache: what
/// a thread that is not the owner does (it must not grow the owner's
/// private cache, which only the owner would flush).
///
/// # Safety
/// The caller holds `heap`'s lock; `c` has no live blocks and is on no
/// bin or pending list.
unsafe fn retire_to_global(heap: *mut Heap, c: *mut Chunk) {
    // SAFETY: per the contract.
    unsafe {
        Chunk::drop_holes(c, (*heap).provider.budget());
        bump(&(*heap).slab_chunks, usize::MAX);
        let c = mark_cached(c);
        GLOBAL_CACHE.push_list(c, os::now_ms());
    }
}

/// Counts `n` remote frees that `heap` took off one of its chunks' lists.
/// Remote frees are counted where they arrive, by the heap's lock holder
/// (every collection runs under the lock), not by the freeing thread: the
/// remote free's fast path then writes nothing but the chunk's list
/// (one instruction fewer), and `stats()` adds the frees still on the
/// lists ([`slab_bytes_in_use`]).
///
/// # Safety
/// The caller holds `heap`'s lock.
#[inline(always)]
unsafe fn count_remote(heap: *mut Heap, n: u32) {
    // SAFETY: written only under the heap lock, per the contract.
    unsafe { bump(&(*heap).remote_frees, n as usize) }
}

/// Counts a slow-path entry; every [`TICK_EVERY`]th runs the registry's
/// housekeeping (purge due caches, sweep idle and dead heaps).
///
/// # Safety
/// Owner thread of a real heap, not holding its lock.
#[inline]
unsafe fn tick(heap: *mut Heap) {
    // SAFETY: owner-written counter.
    let n = unsafe { (*heap).slow_entries.load(Ordering::Relaxed) } + 1;
    // SAFETY: as above.
    unsafe { (*heap).slow_entries.store(n, Ordering::Relaxed) };
    if n % TICK_EVERY == 0 {
        registry::tick(heap);
    }
}

// ---------------------------------------------------------------------------
// Allocation.
// ---------------------------------------------------------------------------

/// Allocates a block of class `cls` (fast path inline, slow path cold).
/// Null if the heap is the empty heap or memory is exhausted.
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap).
#[inline(always)]
pub unsafe fn alloc_class(heap: *mut Heap, cls: usize, zero: bool) -> *mut u8 {
    check!(cls < NUM_CLASSES, "class index in range");
    // SAFETY: the owner thread reads its own bins; the empty heap's entries
    // point at the never-written empty chunk whose `free` is null. `cls` is
    // a class index (< NUM_CLASSES) by construction of `class_of`.
    unsafe {
        let b = pop_current(heap, cls);
        if !b.is_null() {
            if zero {
                zero_block(*(*heap).current.get_unchecked(cls), b.cast(), cls);
            }
            return b;
        }
        alloc_slow(heap, cls, zero)
    }
}

/// Zeroes a just-popped block.
///
/// # Safety
/// `b` was just popped from `c`'s free list.
#[inline]
unsafe fn zero_block(c: *mut Chunk, b: *mut Block, cls: usize) {
    // SAFETY: the block is ours and `class_size(cls)` long.
    unsafe {
        if (*c).free_is_zero {
            (*b).next = ptr::null_mut();
        } else {
            b.cast::<u8>().write_bytes(0, class_size(cls));
        }
    }
}

#[cold]
#[inline(never)]
unsafe fn alloc_slow(heap: *mut Heap, cls: usize, zero: bool) -> *mut u8 {
    if is_empty(heap) {
        return ptr::null_mut();
    }
    // SAFETY: owner thread of a real heap.
    unsafe {
        tick(heap);
        (*heap).class_slow[cls] = (*heap).slow_entries.load(Ordering::Relaxed) as u32;
        // Common case: the current chunk's own frees refill it (no lock:
        // only the owner touches an attached chunk's lists).
        let c = (*heap).current[cls];
        if !(*c).local_free.is_null() && (*heap).pending.is_empty() {
            (*c).free = (*c).local_free;
            (*c).local_free = ptr::null_mut();
            (*c).free_is_zero = false;
            return alloc_class(heap, cls, zero);
        }
        (*heap).lock.lock();
        process_pending(heap);
        let p = alloc_generic(heap, cls, zero);
        (*heap).lock.unlock();
        p
    }
}

/// How many chunks after the current one [`alloc_generic`] looks at for
/// freed blocks before carving.
const LOOK_AHEAD: usize = 4;

/// Walks the bin for a chunk with free blocks, detaching full ones, and
/// takes a new chunk when none has any. The current chunk (first) is
/// refilled from its freed blocks, then the next [`LOOK_AHEAD`] chunks'
/// freed blocks are taken if a carve's worth has gathered in one, and only
/// then is the current chunk carved (the walk as it was).
///
/// Carving first (the current chunk's next page while a chunk behind it,
/// say one back from the pending stack, held blocks freed since) touched
/// a page at every refill while those blocks waited, so a class could
/// keep a chunk's worth of freed blocks per heap that nothing used
/// (`larson`: 5.1 MiB of remote frees uncollected at the peak, for 3.1
/// MiB live). Fewer than a carve's worth are left to gather: taking them
/// made a slow-path entry each (`smallobj_churn` +2.8 % instructions), and
/// the bound keeps long bins' walks short (+1.3 % unbounded).
///
/// # Safety
/// Owner thread of a real heap, holding its lock.
#[cold]
#[inline(never)]
unsafe fn alloc_generic(heap: *mut Heap, cls: usize, zero: bool) -> *mut u8 {
    // SAFETY: owner thread of a real heap, lock held.
    unsafe {
        let budget = (*heap).provider.budget();
        let first = (*heap).bins[cls].first;
        if !first.is_null() {
            let mut taken = 0;
            let refilled = Chunk::take_frees(first, budget, &mut taken);
            count_remote(heap, taken);
            if refilled {
                return alloc_class(heap, cls, zero);
            }
            let mut c = (*first).next;
            if !c.is_null() {
                // A page's worth of blocks: what a carve yields.
                let batch = (os::page_size() / class_size(cls)).clamp(1, 256) as u32;
                for _ in 0..LOOK_AHEAD {
                    let mut taken = 0;
                    if Chunk::freed(c) >= batch && Chunk::take_frees(c, budget, &mut taken) {
                        count_remote(heap, taken);
                        return alloc_from(heap, cls, c, zero);
                    }
                    c = (*c).next;
                    if c.is_null() {
                        break;
                    }
                }
            }
            // The usual case: the current chunk carves its next page.
            if (*first).bump < (*first).end && Chunk::extend(first, budget) {
                return alloc_class(heap, cls, zero);
            }
        }
        let mut c = first;
        while !c.is_null() {
            let mut taken = 0;
            let refilled = Chunk::refill(c, budget, &mut taken);
            count_remote(heap, taken);
            if refilled {
                return alloc_from(heap, cls, c, zero);
            }
            let next = (*c).next;
            if (*c).bump < (*c).end {
                // Not full: the budget refused its next page. It stays
                // attached; the caller's purge and retry may make room.
                c = next;
                continue;
            }
            match Chunk::mark_full(c) {
                MarkFull::Detached => {
                    bin_remove(heap, cls, c);
                    count_detached(heap, c);
                    c = next;
                }
                // Remote frees arrived: the next refill collects them.
                MarkFull::Retry => {}
                // Still queued from an earlier notification: it comes back
                // through the pending stack.
                MarkFull::Skip => c = next,
            }
        }
        // Charged for its first block now, the rest page by page as the
        // bump cursor reaches it.
        let c = acquire_chunk(
            heap,
            chunk_class_of(slab_chunk_size(cls)),
            HEADER_SIZE + class_size(cls),
        );
        if c.is_null() {
            return ptr::null_mut();
        }
        // The header moves to the chunk's color (`SLAB_COLORS`); no other
        // thread can reach the chunk yet. The first block must lie in
        // charged pages (the `alloc_class` below must not fail: it would
        // re-enter the slow path, whose lock this thread holds), so where
        // the budget refuses the page the move needs, the header stays.
        let base = c.cast::<u8>();
        let mut off = slab_header_offset(base as usize);
        if off != 0 && !Chunk::charge_to(c, off + HEADER_SIZE + class_size(cls), budget) {
            off = 0;
        }
        let c = Chunk::move_header(c, base.add(off).cast());
        Chunk::init_slab(c, cls, class_size(cls), heap as usize);
        bump(&(*heap).slab_chunks, 1);
        bin_push_front(heap, cls, c);
        // The first block lies in charged pages, so this carve succeeds;
        // were it to fail, the `alloc_class` below would re-enter the
        // slow path and spin on the lock this thread holds.
        if !Chunk::extend(c, budget) {
            check!(false, "a new slab's first block is charged");
            return ptr::null_mut();
        }
        alloc_class(heap, cls, zero)
    }
}

/// Makes `c`, a chunk of bin `cls` whose `free` is not empty, the class's
/// current chunk and allocates from it.
///
/// # Safety
/// Owner thread of a real heap, holding its lock.
unsafe fn alloc_from(heap: *mut Heap, cls: usize, c: *mut Chunk, zero: bool) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe {
        if c != (*heap).bins[cls].first {
            bin_remove(heap, cls, c);
            bin_push_front(heap, cls, c);
        }
        alloc_class(heap, cls, zero)
    }
}

/// Retires one attached chunk of `size` bytes that is some class's
/// `current` with no block out (the chunk an alloc/free loop keeps, see
/// [`free_last`]) to the provider, whose next `acquire` of that chunk
/// class takes it. Returns whether it found one.
///
/// Only a class idle for [`IDLE_AFTER_SLOW`] of the heap's slow-path
/// entries gives its chunk up: a loop cycling through a few sizes keeps
/// each class's current chunk empty between uses, and taking those made
/// every allocation of the loop steal the chunk the previous one had just
/// taken (the probe's `single` pair went from 46.6 to 656 instructions).
///
/// # Safety
/// Owner thread of a real heap, holding its lock.
unsafe fn retire_idle_current(heap: *mut Heap, size: usize) -> bool {
    // SAFETY: owner with the lock: the bins and their chunks' owner-only
    // fields are ours; `used` of a chunk with no block out cannot change
    // under us (no remote free can come for a block that is not out).
    unsafe {
        let now = (*heap).slow_entries.load(Ordering::Relaxed) as u32;
        for k in bin_classes(heap) {
            if slab_chunk_size(k) != size
                || now.wrapping_sub((*heap).class_slow[k]) < IDLE_AFTER_SLOW
            {
                continue;
            }
            let c = (*heap).bins[k].first;
            if Chunk::used(c) == 0 && !Chunk::is_queued(c) {
                bin_remove(heap, k, c);
                retire(heap, c);
                return true;
            }
        }
        false
    }
}

/// A free chunk of chunk class `cls` for `heap`, with at least its first
/// `need` bytes charged to the budget: from its own provider, then the
/// global cache, then what abandoned heaps hold, then the OS; when the
/// budget (or the OS) refuses, after giving back every cache and
/// reclaiming from idle heaps. Null if nothing can be had.
///
/// # Safety
/// Owner thread of a real heap, holding its lock.
unsafe fn acquire_chunk(heap: *mut Heap, cls: usize, need: usize) -> *mut Chunk {
    // SAFETY: lock held, per the contract.
    unsafe {
        let p = &(*heap).provider;
        let c = p.acquire(cls, need);
        if !c.is_null() {
            return c;
        }
        // An empty current chunk of another class of the same size comes
        // before the global cache and new memory: kept for an alloc/free
        // loop that may not come back, it would stay committed while the
        // heap maps more (`fifo_sets`: 15 classes' empty chunks, ~0.9 MiB).
        if retire_idle_current(heap, chunk_class_size(cls)) {
            let c = p.acquire(cls, need);
            if !c.is_null() {
                return c;
            }
        }
        p.maintain(os::now_ms());
        for attempt in 0..2 {
            let c = p.acquire_global(cls, need);
            if !c.is_null() {
                return c;
            }
            // Free chunks in dead threads' heaps come before new memory.
            if attempt == 0 && registry::reclaim_abandoned(heap) {
                let c = p.acquire_global(cls, need);
                if !c.is_null() {
                    return c;
                }
            }
            if cls != 0 {
                GLOBAL_CACHE.trim_slabs(chunk_class_size(cls), p.budget());
            }
            let c = p.map_new(cls, need);
            if !c.is_null() {
                return c;
            }
            if attempt == 0 {
                // Out of budget (or address space): give back our caches
                // and whatever idle heaps hold (without waiting for a heap
                // whose lock is held: we hold ours), decommit the global
                // cache, and try once more.
                registry::reclaim_all(heap, false, true);
                p.relieve();
            }
        }
        ptr::null_mut()
    }
}

/// The inline part of `malloc`: a pop from the current chunk of the
/// size's class, or null when the size is not small or the chunk has no
/// free block (the caller's out-of-line path then calls [`malloc`]).
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap).
#[inline(always)]
pub unsafe fn malloc_fast(heap: *mut Heap, size: usize) -> *mut u8 {
    if size > MAX_SMALL {
        return ptr::null_mut();
    }
    // SAFETY: forwarded contract; `class_of` gives a class index.
    unsafe { pop_current(heap, class_of(size)) }
}

/// Pops a block from the current chunk of class `cls` (null if it has
/// none): the body of the inline allocation paths that know the class.
///
/// # Safety
/// As [`malloc_fast`]; `cls < NUM_CLASSES`.
#[inline(always)]
unsafe fn pop_current(heap: *mut Heap, cls: usize) -> *mut u8 {
    // SAFETY: as in `alloc_class`.
    unsafe { pop_from(*(*heap).current.get_unchecked(cls)) }
}

/// Pops a block from `c` (null if its `free` list is empty).
///
/// # Safety
/// `c` is a chunk the fast paths of the calling thread's heap allocate
/// from: an attached slab of that heap, or the never-written empty chunk
/// (whose `free` is null).
#[inline(always)]
unsafe fn pop_from(c: *mut Chunk) -> *mut u8 {
    // SAFETY: per the contract, `c`'s `free` list is the owner's.
    unsafe {
        let b = (*c).free;
        if !b.is_null() {
            (*c).free = (*b).next;
            Chunk::set_used(c, Chunk::used(c) + 1);
        }
        b.cast()
    }
}

/// [`malloc_fast`] for sizes up to 1 KiB only, with the chunk read from
/// the heap's `direct` array: the exported `malloc`'s inline part
/// (mimalloc's shape: larger sizes take the out-of-line path, so the
/// common case has one size test, one load of the chunk by size and no
/// class lookup).
///
/// # Safety
/// As [`malloc_fast`].
#[inline(always)]
pub unsafe fn malloc_fast_small(heap: *mut Heap, size: usize) -> *mut u8 {
    if size > TABLE_MAX {
        return ptr::null_mut();
    }
    // SAFETY: as in `alloc_class`; `size / 16` rounded up indexes
    // `direct` (65 entries for sizes up to 1 KiB), whose entries are the
    // current chunks of the sizes' classes (`set_current`).
    unsafe { pop_from(*(*heap).direct.get_unchecked(size.div_ceil(OBJ_GRANULE))) }
}

/// Allocates `size` bytes aligned to 16.
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap).
#[inline(always)]
pub unsafe fn malloc(heap: *mut Heap, size: usize) -> *mut u8 {
    if size <= MAX_SMALL {
        // SAFETY: forwarded contract.
        unsafe { alloc_class(heap, class_of(size), false) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { alloc_large(heap, size, 16, false) }
    }
}

/// Allocates `size` zeroed bytes aligned to 16.
///
/// # Safety
/// As [`malloc`].
#[inline]
pub unsafe fn malloc_zeroed(heap: *mut Heap, size: usize) -> *mut u8 {
    if size <= MAX_SMALL {
        let cls = class_of(size);
        // SAFETY: forwarded contract.
        unsafe { alloc_class(heap, cls, true) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { alloc_large(heap, size, 16, true) }
    }
}

/// Allocates `size` bytes aligned to `align` (a power of two).
///
/// # Safety
/// As [`malloc`].
pub unsafe fn malloc_aligned(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    check!(align.is_power_of_two(), "alignments are powers of two");
    if align <= 16 {
        // SAFETY: forwarded contract.
        return unsafe {
            if zero {
                malloc_zeroed(heap, size)
            } else {
                malloc(heap, size)
            }
        };
    }
    if size <= MAX_SMALL && align <= HEADER_SIZE {
        // Blocks of a class whose size is a multiple of `align` are all
        // aligned, since the block area starts at a multiple of 128.
        let s = size.next_multiple_of(align).max(align);
        if s <= MAX_SMALL {
            let cls = class_of(s);
            if class_size(cls) % align == 0 {
                // SAFETY: forwarded contract.
                return unsafe { alloc_class(heap, cls, zero) };
            }
        }
    }
    if align < CHUNK_SIZE / 8 {
        if let Some(s) = size.checked_add(align - 16).filter(|&s| s <= MAX_SMALL) {
            // Over-allocate within one block and hand out an aligned
            // interior pointer; the chunk is flagged so free finds the
            // block start.
            let cls = class_of(s);
            // SAFETY: forwarded contract.
            let p = unsafe { alloc_class(heap, cls, zero) };
            if p.is_null() {
                return p;
            }
            let q = (p as usize).next_multiple_of(align);
            if q != p as usize {
                let c = chunk_map::lookup(p as usize) as *mut Chunk;
                // SAFETY: `p` came from a slab chunk of this heap.
                unsafe { Chunk::set_flags(c, FLAG_ALIGNED) };
            }
            return q as *mut u8;
        }
    }
    // SAFETY: forwarded contract.
    unsafe { alloc_large(heap, size, align, zero) }
}

/// Where a large or huge object starts in its chunk: after the header, at
/// its alignment; for alignments above 64 KiB at 64 KiB (the mapping is then
/// placed so that this offset is aligned).
#[inline]
fn object_offset(align: usize) -> usize {
    if align <= CHUNK_SIZE {
        align.max(HEADER_SIZE)
    } else {
        CHUNK_SIZE
    }
}

/// Allocates one object in an oversized chunk (cached by the provider) or,
/// above 2.25 MiB or for alignments above 64 KiB, in its own mapping.
///
/// # Safety
/// As [`malloc`].
#[cold]
pub unsafe fn alloc_large(heap: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    if size > MAX_REQUEST || align > MAX_REQUEST / 2 {
        return ptr::null_mut();
    }
    let off = object_offset(align);
    let footprint = off + size;
    if align <= CHUNK_SIZE && footprint <= MAX_CHUNK_CLASS_SIZE {
        if is_empty(heap) {
            return ptr::null_mut();
        }
        // SAFETY: owner thread of a real heap; the chunk is ours.
        unsafe {
            tick(heap);
            (*heap).lock.lock();
            // Charged up to the object's last page: the header does not
            // push a power-of-two object's charge into the next class.
            let c = acquire_chunk(heap, chunk_class_of(footprint), footprint);
            (*heap).lock.unlock();
            if c.is_null() {
                return c.cast();
            }
            (*c).kind = Kind::Large;
            Chunk::set_tag(c, heap as usize, FLAG_NOT_SLAB);
            (*c).obj_offset = off;
            (*c).obj_size = size;
            (*heap).large_chunks.fetch_add(1, Ordering::Relaxed);
            // Counted at the usable size: up to the last charged page.
            bump(&(*heap).large_alloc_bytes, Chunk::charged(c) - off);
            let p = c.cast::<u8>().add(off);
            if zero && !(*c).fresh {
                p.write_bytes(0, size);
            }
            return p;
        }
    }
    alloc_huge(size, align, zero)
}

/// A block that `realloc` grows to this many bytes or more and must move
/// moves to a huge mapping of its own (glibc's first mmap threshold),
/// whatever its size class: its later growth is an `mremap` (no copy,
/// the kernel moves the page tables) instead of a copy into the next
/// chunk class, and no outgrown chunk is left in the caches. In
/// `realloc_grow` the outgrown chunks of 8 vectors growing to 2 MiB
/// held 30 MiB of the 57 MiB committed at the peak (`docs/PERF.md`).
pub const GROW_TO_HUGE: usize = 128 * 1024;

/// Maps a huge object: header at a 64 KiB-aligned base, object at
/// `base + off`. Freed huge mappings are reused before anything is mapped
/// (their pages are resident, so they need no new faults; for zeroed
/// requests too, since clearing resident pages costs less than faulting
/// fresh ones):
/// - the smallest cached mapping that fits is split, its tail going back
///   to the cache when it could hold a huge object ([`split_huge`]);
/// - otherwise the cached mappings (one or more) are gathered into one
///   ([`gather_huge`]), and only what they lack is faulted in.
///
/// Measured with 20 live buffers of 5-25 MiB replaced at random 2,000
/// times, each zero-filled (`docs/PERF.md`, "Cycling large buffers"):
/// handing the one freed mapping to the next request, grown or shrunk to
/// its size, faulted in 1,655 MiB of pages; splitting and gathering 790 MiB
/// (glibc 2,529 MiB, tcmalloc 521 MiB: it keeps every page).
///
/// `realloc` also calls it directly for a block that grows past
/// [`GROW_TO_HUGE`] (see `thread::realloc_move`).
pub(crate) fn alloc_huge(size: usize, align: usize, zero: bool) -> *mut u8 {
    // Absurd sizes fail here for every caller (`off + size` below must
    // not wrap: `realloc(p, SIZE_MAX)` comes straight here).
    if size > MAX_REQUEST || align > MAX_REQUEST / 2 {
        return ptr::null_mut();
    }
    let off = object_offset(align);
    let Some(len) = os::align_up_checked(off + size, CHUNK_SIZE) else {
        return ptr::null_mut();
    };
    if align <= CHUNK_SIZE {
        let mut pieces = [ptr::null_mut(); HUGE_SLOTS];
        let n = GLOBAL_CACHE.take_huge(len, &mut pieces);
        if n > 0 {
            // SAFETY: the pieces are cached mappings, exclusively ours now.
            let (c, dirty) = unsafe {
                let have = (*pieces[0]).size;
                if n == 1 && have >= len {
                    split_huge(pieces[0], len);
                    (pieces[0], (*pieces[0]).size)
                } else {
                    gather_huge(&pieces[..n], len)
                }
            };
            if !c.is_null() {
                if zero {
                    // Only the part that came from the cache may hold old
                    // data; the rest is fresh zero pages.
                    let dirty = dirty.min(off + size);
                    // SAFETY: `[off, dirty)` lies inside the mapping.
                    unsafe {
                        c.cast::<u8>()
                            .add(off)
                            .write_bytes(0, dirty.saturating_sub(off))
                    };
                }
                // SAFETY: `c` heads a registered mapping of at least `len`.
                unsafe { return finish_huge(c, off, size) };
            }
        }
    }
    if !budget::GLOBAL.try_reserve(len) {
        return ptr::null_mut();
    }
    GLOBAL_CACHE.trim_slabs(len, &budget::GLOBAL);
    let base = if align <= CHUNK_SIZE {
        map_huge(len)
    } else {
        os::map_aligned(len, align, CHUNK_SIZE)
    };
    if base.is_null() {
        budget::GLOBAL.release(len);
        return base;
    }
    // SAFETY: a fresh, exclusively owned mapping of `len` bytes.
    let c = unsafe { Chunk::init_cached(base, len, true) };
    if !chunk_map::register(base as usize, len, c as usize) {
        os::unmap(base, len);
        budget::GLOBAL.release(len);
        return ptr::null_mut();
    }
    // SAFETY: the header was just written; the mapping is `len` long.
    unsafe { finish_huge(c, off, size) }
}

/// Maps `len` bytes for a huge object, aligned to a huge page so that its
/// interior can be backed by transparent huge pages (asked for when
/// `config::huge_pages()` is on, or given by a kernel whose THP setting is
/// `always`). A 25 MiB buffer then faults 13 times instead of 6,400, but
/// each fault zeroes 2 MiB, and moving cached pieces at offsets that are
/// not 2 MiB-aligned splits huge pages: whether asking pays depends on the
/// machine (`docs/PERF.md`, "Huge pages on request, measured again").
fn map_huge(len: usize) -> *mut u8 {
    let p = os::map_aligned(len, os::HUGE_PAGE, 0);
    if !p.is_null() && crate::config::huge_pages() {
        os::advise_huge_pages(p, len);
    }
    p
}

/// Cuts a cached huge mapping `c` (at least `len` bytes) down to `len`
/// when the rest could hold a huge object (over 2.25 MiB): the rest becomes
/// a cached mapping of its own (its pages stay resident for the next
/// request), or is unmapped when the cache has no room. A smaller rest
/// stays with `c`.
///
/// # Safety
/// `c` is a cached huge mapping owned by the caller, registered in the
/// chunk map and fully counted in the budget.
unsafe fn split_huge(c: *mut Chunk, len: usize) {
    // SAFETY: per the contract.
    unsafe {
        let have = (*c).size;
        if have - len < MAX_CHUNK_CLASS_SIZE {
            return;
        }
        let tail = c.cast::<u8>().add(len);
        // The tail's first bytes are ours (inside `c`, no object in it).
        let t = Chunk::init_cached(tail, have - len, false);
        // Its granules are registered already (to `c`), so their map
        // blocks exist and re-pointing them cannot fail.
        chunk_map::register(tail as usize, have - len, t as usize);
        (*c).size = len;
        cache_huge(t, os::now_ms());
    }
}

/// Offers huge mapping `c` to the global cache and unmaps what the cache
/// does not keep: `c` itself, or smaller mappings it displaced.
///
/// # Safety
/// `c` is a huge mapping with no live object, referenced by nothing else,
/// registered in the chunk map and fully counted in the budget.
unsafe fn cache_huge(c: *mut Chunk, now: u64) {
    let live = GLOBALS.huge_bytes.load(Ordering::Relaxed);
    // SAFETY: per the contract; what put_huge returns is ours to unmap.
    unsafe {
        let mut d = GLOBAL_CACHE.put_huge(c, now, live);
        while !d.is_null() {
            let next = (*d).link.load(Ordering::Relaxed);
            drop_huge(d);
            d = next;
        }
    }
}

/// Gathers cached huge mappings (together short of `len` bytes, or
/// exceeding it only through the last) into one new mapping of at least
/// `len` bytes: each one's pages are moved into place with `mremap`, which
/// copies nothing. The last is split first if the rest could be a huge
/// mapping of its own (it goes back to the cache); a smaller rest comes
/// along whole, so the mapping is up to 2.25 MiB longer than `len` and no
/// resident page is unmapped (unmapping such rests cost `cycling_buffers`
/// a fifth of the pages it faulted, `docs/PERF.md`).
/// Nothing is read from a piece's header after its move is tried (a failed
/// move of several VMAs may have taken the header page along).
/// Returns the new header (null, with every piece unmapped, if no mapping
/// could be made) and how many bytes from its start may hold old data.
///
/// # Safety
/// Each piece is a cached huge mapping owned by the caller, registered in
/// the chunk map and fully counted in the budget.
unsafe fn gather_huge(pieces: &[*mut Chunk], len: usize) -> (*mut Chunk, usize) {
    // SAFETY: per the contract; each piece is handed on (moved, split
    // back into the cache, or dropped) exactly once.
    unsafe {
        let total: usize = pieces.iter().map(|&c| (*c).size).sum();
        let len = if total > len && total - len < MAX_CHUNK_CLASS_SIZE {
            total
        } else {
            len
        };
        let t = if budget::GLOBAL.try_reserve(len) {
            let t = map_huge(len);
            if t.is_null() {
                budget::GLOBAL.release(len);
            }
            t
        } else {
            ptr::null_mut()
        };
        if t.is_null() {
            for &c in pieces {
                drop_huge(c);
            }
            return (ptr::null_mut(), 0);
        }
        let dirty = move_pieces(pieces, t, 0, len);
        let c = Chunk::init_cached(t, len, dirty == 0);
        if !chunk_map::register(t as usize, len, c as usize) {
            os::unmap(t, len);
            budget::GLOBAL.release(len);
            return (ptr::null_mut(), 0);
        }
        (c, dirty)
    }
}

/// Moves the pages of cached huge mappings `pieces` (together short of
/// `len - at` bytes, or exceeding it only through the last) into
/// `[at, len)` of the mapping at `t`, in order, with `mremap`: the last is
/// split first (its rest cached) when the rest could be a huge mapping of
/// its own, and a smaller rest is unmapped (callers that can take it along
/// size `len` to include it: [`gather_huge`]). Returns the end of what was
/// moved in: up to there the target may hold old data.
///
/// # Safety
/// Each piece is a cached huge mapping owned by the caller, registered in
/// the chunk map and fully counted in the budget; `[at, len)` of `t` is
/// the caller's, registered to it and already counted in the budget (each
/// piece's bytes are released once its pages are in place).
unsafe fn move_pieces(pieces: &[*mut Chunk], t: *mut u8, mut at: usize, len: usize) -> usize {
    let mut dirty = at;
    // SAFETY: per the contract; each piece is handed on (moved, split
    // back into the cache, or dropped) exactly once, and nothing is read
    // from its header after its move is tried.
    unsafe {
        for &c in pieces {
            let need = len - at;
            if need == 0 {
                drop_huge(c);
                continue;
            }
            split_huge(c, need.min((*c).size));
            let n = (*c).size.min(need);
            if n < (*c).size {
                // A rest too small for a huge mapping of its own.
                chunk_map::unregister(c as usize + n, (*c).size - n);
                os::unmap(c.cast::<u8>().add(n), (*c).size - n);
                budget::GLOBAL.release((*c).size - n);
            }
            // Unregistered before the move: the old range is given up.
            chunk_map::unregister(c as usize, n);
            if !os::remap_to(c.cast(), n, n, t.add(at)) {
                // The piece is freed. A move of several VMAs may have
                // failed part way, so the target's range may hold some of
                // its pages: it counts as dirty either way.
                os::unmap(c.cast(), n);
            }
            dirty = at + n;
            // The target's reservation covers these bytes now.
            budget::GLOBAL.release(n);
            at += n;
        }
    }
    dirty
}

/// Whether [`grow_chunk`] may move a mapping it cannot resize in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Moves {
    Never,
    /// Only a range the kernel moves all or nothing: one VMA. A range
    /// spanning several (a gathered mapping) can be moved since Linux
    /// 6.17, but a failure part way leaves it partly moved, which a live
    /// object must not risk (cached mappings are moved by `gather_huge`).
    Atomic,
}

/// Grows the mapping of chunk `c` (header at its 64 KiB-aligned base) to
/// `new_len` bytes (more than it has: [`realloc_huge`] handles every size
/// within the mapping itself): in place when the kernel can, else (as
/// `moves` allows) by moving its pages onto a fresh target ([`map_huge`])
/// with `mremap(MREMAP_FIXED)`, which copies nothing, and filling the
/// growth with cached mappings' pages before fresh ones. Keeps the chunk
/// map and the budget exact. Returns the new base, or null with the old
/// mapping intact, registered and counted as before.
///
/// # Safety
/// The caller owns `c` exclusively (it holds an object the caller is
/// resizing); `c` is registered and its `size` bytes are counted in the
/// budget; `new_len > (*c).size`.
unsafe fn grow_chunk(c: *mut Chunk, new_len: usize, moves: Moves) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe {
        let base = c.cast::<u8>();
        let old = (*c).size;
        check!(new_len > old, "grow_chunk only grows");
        if !budget::GLOBAL.try_reserve(new_len - old) {
            return ptr::null_mut();
        }
        GLOBAL_CACHE.trim_slabs(new_len - old, &budget::GLOBAL);
        let undo_growth = || budget::GLOBAL.release(new_len - old);
        // Unregistered before a move gives the old range back: once it is
        // unmapped another thread may map and register it at once. Every
        // failure below registers it again.
        chunk_map::unregister(base as usize, old);
        let resized = os::resize_in_place(base, old, new_len);
        let new_base = if resized == os::Resize::Done {
            base
        } else {
            let may_move = match moves {
                Moves::Never => false,
                Moves::Atomic => resized != os::Resize::SpansMappings,
            };
            let t = if may_move {
                map_huge(new_len)
            } else {
                ptr::null_mut()
            };
            // Register the target before the move so that failure (a chunk
            // map block refused) leaves the old mapping untouched.
            if t.is_null() || !chunk_map::register(t as usize, new_len, t as usize) {
                if !t.is_null() {
                    os::unmap(t, new_len);
                }
                undo_growth();
                // The old range is still ours and its map blocks are writable.
                chunk_map::register(base as usize, old, c as usize);
                return ptr::null_mut();
            }
            // Moved and grown in one step, so the result is one kernel
            // mapping (VMA) that later growth can `mremap` in place (a move
            // at its own length left the target's fresh tail as a second
            // VMA). Only a one-VMA range gets here (`Moves::Atomic`); the
            // cached pieces moved in below split it again.
            if !os::remap_to(base, old, new_len, t) {
                chunk_map::unregister(t as usize, new_len);
                os::unmap(t, new_len);
                undo_growth();
                chunk_map::register(base as usize, old, c as usize);
                return ptr::null_mut();
            }
            t
        };
        if new_base == base && !chunk_map::register(base as usize, new_len, base as usize) {
            // Grown in place into a region whose map block the budget
            // refuses: give the growth back (an unmap always succeeds,
            // however many kernel mappings the range spans) and give up.
            os::unmap(base.add(old), new_len - old);
            undo_growth();
            chunk_map::register(base as usize, old, c as usize);
            return ptr::null_mut();
        }
        // Grown in place or moved, the growth comes from cached mappings
        // as far as they reach, like a gather; only the rest faults in
        // afresh. (Growing in place on fresh pages while resident cached
        // ones waited for the purge delay cost `large_blocks` 80.3 MiB of
        // peak RSS against 73.7; the range then spans several kernel
        // mappings, which later growth handles.)
        let mut pieces = [ptr::null_mut(); HUGE_SLOTS];
        let n = GLOBAL_CACHE.take_huge(new_len - old, &mut pieces);
        move_pieces(&pieces[..n], new_base, old, new_len);
        (*new_base.cast::<Chunk>()).size = new_len;
        new_base
    }
}

/// Unmaps a huge mapping that is not kept.
///
/// # Safety
/// `c` is a huge mapping with no live object, referenced by nothing else,
/// registered in the chunk map and fully counted in the budget.
unsafe fn drop_huge(c: *mut Chunk) {
    // SAFETY: per the contract.
    unsafe {
        let len = (*c).size;
        chunk_map::unregister(c as usize, len);
        os::unmap(c.cast(), len);
        budget::GLOBAL.release(len);
    }
}

/// Writes the huge header fields and counts the object.
///
/// # Safety
/// `c` is the header of a registered huge mapping owned by the caller.
unsafe fn finish_huge(c: *mut Chunk, off: usize, size: usize) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe {
        (*c).kind = Kind::Huge;
        Chunk::set_tag(c, 0, FLAG_NOT_SLAB);
        (*c).obj_offset = off;
        (*c).obj_size = size;
        GLOBALS.huge_bytes.fetch_add(size, Ordering::Relaxed);
        GLOBALS.huge_count.fetch_add(1, Ordering::Relaxed);
        c.cast::<u8>().add(off)
    }
}

// ---------------------------------------------------------------------------
// Free.
// ---------------------------------------------------------------------------

/// What a pointer turned out to be, for the shims' error reporting.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FreeResult {
    /// Freed.
    Done,
    /// Not a pointer chunkmalloc handed out (or already freed, for large
    /// and huge objects); nothing was changed.
    Invalid,
    /// The calling thread has no heap yet and the block belongs to one:
    /// attach a heap and free again (or, if none can be had, use
    /// [`free_heapless`]). Nothing was changed.
    NeedsHeap,
}

/// Frees a slab or large block from a thread that has no heap and cannot
/// get one (out of memory): the block goes to its owner like any remote
/// free, and the statistics are kept in global atomics.
///
/// # Safety
/// `p` is a live pointer from this allocator.
#[cold]
pub unsafe fn free_heapless(p: *mut u8) -> FreeResult {
    let c = chunk_map::lookup(p as usize) as *mut Chunk;
    if c.is_null() {
        return FreeResult::Invalid;
    }
    // SAFETY: live chunk header; the slab step mirrors `free_slow`'s remote
    // branch, with global counters.
    unsafe {
        match (*c).kind {
            Kind::Slab => {
                let mut p = p;
                if Chunk::flags(c) & FLAG_ALIGNED != 0 {
                    p = Chunk::block_start(c, p);
                }
                push_remote(c, p.cast());
                FreeResult::Done
            }
            // Large and huge frees need no heap (`free_slow` counts them
            // globally for the empty heap).
            _ => free_slow(EMPTY_HEAP.as_ptr(), c, p),
        }
    }
}

/// What the inline part of `free` did with a pointer.
#[derive(Clone, Copy)]
pub enum FastFree {
    /// Freed into one of the caller's chunks; nothing more to do.
    Done,
    /// Freed, and the chunk now has no block out (or had none: a double
    /// free); [`free_last`] must finish.
    Last(*mut Chunk),
    /// Not the caller's attached slab: the chunk and its tag, for
    /// [`free_other`]. Nothing was changed.
    Other(*mut Chunk, usize),
    /// No chunk at that address: not a pointer chunkmalloc handed out.
    Miss,
}

/// The inline part of `free`: the chunk-map lookup and the owner's push.
/// Everything else is left to the caller's out-of-line paths, so the
/// shims compile to a leaf that tail-calls them.
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap); `p` is null
/// (no chunk is registered at granule 0: a miss), foreign, or a live
/// pointer from this allocator.
#[inline(always)]
pub unsafe fn free_fast(heap: *mut Heap, p: *mut u8) -> FastFree {
    // SAFETY: `heap` is a heap record or a static heap; `map` and
    // `map_len` are a view `chunk_map::view` returned (or null and 0).
    let c = unsafe { chunk_map::lookup_in((*heap).map, (*heap).map_len, p as usize) };
    if c == 0 {
        return FastFree::Miss;
    }
    // SAFETY: forwarded contract; `c` is a live chunk header.
    unsafe { free_found(heap, c as *mut Chunk, p) }
}

/// Asks for `c`'s shared header line (`tag` and `remote`) in the
/// exclusive state, before `free_found` reads `tag`. A remote free reads
/// `tag` and then CASes `remote` on that line, which other freers keep
/// taking: the load alone fetched it shared and the CAS then had to
/// upgrade it, two coherence transactions where one does (`prodcons`
/// 0.92-0.95x wall time, `larson` 0.94-0.98x; docs/PERF.md). A local free
/// reads the line only (its owner's fields are on the first line), so for
/// it the hint is one more instruction and, where remote freers are
/// active, a line it takes from them early.
///
/// `PREFETCHW` (`0F 0D /1`) is a hint: it never faults, and x86-64 CPUs
/// that do not implement it (Intel before Broadwell) decode it as a NOP.
/// Elsewhere this is nothing.
#[inline(always)]
unsafe fn prefetch_for_remote_free(c: *mut Chunk) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch hint reads and writes nothing architecturally,
    // and cannot fault whatever the address.
    unsafe {
        core::arch::asm!(
            "prefetchw [{c} + {off}]",
            c = in(reg) c,
            off = const core::mem::offset_of!(Chunk, tag),
            options(nostack, readonly, preserves_flags),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

/// [`free_fast`] once the chunk is known.
///
/// # Safety
/// As [`free_fast`]; `c` is the chunk map's entry for `p`, not null.
#[inline(always)]
unsafe fn free_found(heap: *mut Heap, c: *mut Chunk, p: *mut u8) -> FastFree {
    // SAFETY: the chunk map only holds live chunk headers. The owner and
    // tag check (owner and flags in one word) makes the rest owner-only.
    unsafe {
        prefetch_for_remote_free(c);
        let tag = (*c).tag.load(Ordering::Relaxed);
        if tag != heap as usize {
            return FastFree::Other(c, tag);
        }
        let b = p.cast::<Block>();
        (*b).next = (*c).local_free;
        (*c).local_free = b;
        let used = Chunk::used(c).wrapping_sub(1);
        Chunk::set_used(c, used);
        // One sign test catches both the chunk's last block (0) and a
        // free into a chunk with no block out (wrapped to u32::MAX: a
        // double free; `used` is at most 4,088). The current chunk
        // emptied by an alloc/free loop stays inline; its class is read
        // only then (`class` < NUM_CLASSES for every slab, set by
        // `init_slab`).
        if (used as i32) <= 0
            && (used != 0 || *(*heap).current.get_unchecked((*c).class as usize) != c)
        {
            return FastFree::Last(c);
        }
        FastFree::Done
    }
}

/// The free of a pointer whose chunk is not the caller's attached slab
/// (`tag` is the chunk's tag as [`free_fast`] read it): a remote free, or
/// one of the owner's full, aligned, large or huge chunks.
///
/// # Safety
/// As [`free_fast`], which returned `Other(c, tag)` for `p`.
#[inline]
pub unsafe fn free_other(heap: *mut Heap, c: *mut Chunk, p: *mut u8, tag: usize) -> FreeResult {
    // SAFETY: forwarded contract.
    unsafe {
        if !is_empty(heap) && is_plain_remote(heap, tag) {
            free_remote_of(c, p);
            return FreeResult::Done;
        }
        // Our own full, aligned, large or huge chunk; or a thread without
        // a heap.
        free_slow(heap, c, p)
    }
}

/// Whether a chunk whose tag is `tag` takes a plain remote free from
/// `heap`: a slab without aligned blocks (attached or full) owned by
/// another heap. The one rule for both callers: [`free_other`] and the
/// shims' inline remote free (`thread::free_other`).
#[inline(always)]
pub fn is_plain_remote(heap: *mut Heap, tag: usize) -> bool {
    tag & (FLAG_MASK & !FLAG_FULL) == 0 && tag & !FLAG_MASK != heap as usize
}

/// Frees `p` (non-null) through the global chunk map: [`free_fast`]'s
/// steps and their out-of-line ends, for callers off the fast path.
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap); `p` is
/// foreign (reported as `Invalid`) or a live pointer from this allocator.
#[inline(always)]
pub unsafe fn free(heap: *mut Heap, p: *mut u8) -> FreeResult {
    let c = chunk_map::lookup(p as usize) as *mut Chunk;
    if c.is_null() {
        return FreeResult::Invalid;
    }
    // SAFETY: forwarded contract; `c` is the chunk map's entry for `p`.
    unsafe {
        match free_found(heap, c, p) {
            FastFree::Done => FreeResult::Done,
            FastFree::Last(c) => free_last(heap, c),
            FastFree::Other(c, tag) => free_other(heap, c, p, tag),
            FastFree::Miss => FreeResult::Invalid,
        }
    }
}

/// The local free that left a chunk with no block out, or one that found
/// none out (a double free: undone and reported as `Invalid`).
///
/// # Safety
/// Owner thread; a block was just pushed on the attached slab `c`'s
/// `local_free` and `used` decremented.
#[cold]
#[inline(never)]
pub unsafe fn free_last(heap: *mut Heap, c: *mut Chunk) -> FreeResult {
    // SAFETY: owner thread; attached chunk.
    unsafe {
        let cls = (*c).class as usize;
        if Chunk::used(c) != 0 {
            // Nothing was out of this chunk: a double free. The push may
            // have linked the block to itself (it was the list head), but
            // with no block out every block of the chunk is free, so the
            // lists are rebuilt from scratch: the bump cursor starts over
            // (over dirty memory) and nothing is handed out twice. Holes
            // go first: carving over them must charge their pages again.
            Chunk::drop_holes(c, (*heap).provider.budget());
            (*c).free = ptr::null_mut();
            (*c).local_free = ptr::null_mut();
            (*c).bump = c.cast::<u8>().add(HEADER_SIZE);
            (*c).fresh = false;
            (*c).free_is_zero = false;
            Chunk::set_used(c, 0);
            return FreeResult::Invalid;
        }
        if ((*heap).current[cls] != c || budget::GLOBAL.under_pressure()) && !Chunk::is_queued(c) {
            // The current chunk is kept so an alloc/free loop does not
            // thrash the provider (except near the budget cap, where an
            // empty chunk no other thread can reclaim must not stay);
            // any other emptied chunk is retired, unless it is queued
            // (then it is retired when it comes off the pending stack).
            (*heap).lock.lock();
            bin_remove(heap, cls, c);
            retire(heap, c);
            (*heap).lock.unlock();
        }
        FreeResult::Done
    }
}

/// The remote free proper: pushes the block on `c`'s remote list (the
/// owner counts it when it collects the list, [`count_remote`]).
///
/// # Safety
/// `c` is an attached or full slab of another heap than the caller's,
/// with no aligned blocks, and `p` one of its live blocks.
#[inline(always)]
pub unsafe fn free_remote_of(c: *mut Chunk, p: *mut u8) {
    // SAFETY: per the contract.
    unsafe { push_remote(c, p.cast()) }
}

/// Pushes a block on another heap's chunk and, when this free claimed the
/// chunk's notification, queues the chunk on its owner's pending stack.
/// Once the push is done the chunk may be retired, so nothing of it is
/// read afterwards, unless this free claimed the notification: that keeps
/// the chunk (detached, owner unchanged) until it is on the pending stack,
/// so the claimer may still read its owner and write its link.
///
/// The first CAS is inline; a retry (the word changed under it) and the
/// queueing are out-of-line tail calls, so the remote free's common path
/// keeps nothing live across a call and carries no loop (whose alignment
/// padding cost an instruction).
///
/// # Safety
/// As [`RemoteList::push`](crate::remote::RemoteList::push) for `c`'s
/// list; the caller does not own `c`.
#[inline(always)]
unsafe fn push_remote(c: *mut Chunk, b: *mut Block) {
    // SAFETY: per the contract.
    unsafe {
        match (*c).remote.try_push(b, (*c).remote.word()) {
            Ok(claimed) => pushed(c, claimed),
            Err(w) => push_remote_retry(c, b, w),
        }
    }
}

/// [`push_remote`] after its first CAS failed with the word `w`.
///
/// # Safety
/// As [`push_remote`].
#[cold]
#[inline(never)]
unsafe fn push_remote_retry(c: *mut Chunk, b: *mut Block, w: usize) {
    // SAFETY: per the contract.
    unsafe { pushed(c, (*c).remote.push_retry(b, w)) }
}

/// What follows a remote push: the chunk is queued on its owner's pending
/// stack if the push `claimed` its notification; otherwise nothing of it
/// is touched again.
///
/// # Safety
/// A push of a block on `c`'s list just returned `claimed`.
#[inline(always)]
unsafe fn pushed(c: *mut Chunk, claimed: bool) {
    #[cfg(feature = "test-hooks")]
    crate::hooks::reached(crate::hooks::Point::AfterRemotePush, chunk_base(c) as usize);
    if claimed {
        // SAFETY: per the contract.
        unsafe { queue_claimed(c) }
    }
}

/// Queues a chunk whose notification a remote free just claimed on its
/// owner's pending stack.
///
/// # Safety
/// The caller's push claimed `c`'s notification.
#[cold]
#[inline(never)]
unsafe fn queue_claimed(c: *mut Chunk) {
    // SAFETY: the claim keeps the chunk (and its owner) until it is on the
    // pending stack; heap records are never freed.
    unsafe { (*(Chunk::owner(c) as *mut Heap)).pending.push(c) }
}

#[cold]
#[inline(never)]
unsafe fn free_slow(heap: *mut Heap, c: *mut Chunk, p: *mut u8) -> FreeResult {
    // SAFETY: `c` is a live chunk header from the chunk map.
    unsafe {
        match (*c).kind {
            Kind::Slab => {
                let mut p = p;
                if Chunk::flags(c) & FLAG_ALIGNED != 0 {
                    p = Chunk::block_start(c, p);
                }
                let b = p.cast::<Block>();
                let owner = Chunk::owner(c) as *mut Heap;
                let cls = (*c).class as usize;
                if owner == heap {
                    // Local free into a full (detached) or aligned chunk:
                    // under the lock, as a reclaiming thread may be looking
                    // at a detached chunk.
                    (*heap).lock.lock();
                    let r = free_local_slow(heap, c, b, cls);
                    (*heap).lock.unlock();
                    return r;
                } else if is_empty(heap) {
                    return FreeResult::NeedsHeap;
                } else {
                    push_remote(c, b);
                }
                FreeResult::Done
            }
            Kind::Large => {
                if p != c.cast::<u8>().add((*c).obj_offset) {
                    return FreeResult::Invalid;
                }
                let size = Chunk::charged(c) - (*c).obj_offset;
                let owner = Chunk::owner(c) as *mut Heap;
                if is_empty(heap) {
                    GLOBALS
                        .heapless_freed_bytes
                        .fetch_add(size, Ordering::Relaxed);
                } else {
                    bump(&(*heap).large_free_bytes, size);
                }
                // The chunk count belongs to the owner; an atomic RMW is
                // fine on this rare path.
                (*owner).large_chunks.fetch_sub(1, Ordering::Relaxed);
                if owner == heap {
                    (*heap).lock.lock();
                    (*heap).provider.release(c);
                    (*heap).provider.maintain(os::now_ms());
                    (*heap).lock.unlock();
                } else {
                    (*owner).provider.push_shared(c);
                }
                FreeResult::Done
            }
            Kind::Huge => {
                if p != c.cast::<u8>().add((*c).obj_offset) {
                    return FreeResult::Invalid;
                }
                GLOBALS
                    .huge_bytes
                    .fetch_sub((*c).obj_size, Ordering::Relaxed);
                GLOBALS.huge_count.fetch_sub(1, Ordering::Relaxed);
                let now = os::now_ms();
                cache_huge(c, now);
                crate::provider::purge_global(now, false);
                FreeResult::Done
            }
            Kind::Cached => FreeResult::Invalid,
        }
    }
}

/// The owner frees block `b` into its own full (detached) or aligned slab.
///
/// # Safety
/// Owner thread holding the heap lock; `b` is a block of `c`, of class `cls`.
unsafe fn free_local_slow(heap: *mut Heap, c: *mut Chunk, b: *mut Block, cls: usize) -> FreeResult {
    // SAFETY: per the contract.
    unsafe {
        if Chunk::used(c) == 0 {
            // Nothing is out of this chunk: a double free.
            return FreeResult::Invalid;
        }
        (*b).next = (*c).local_free;
        (*c).local_free = b;
        Chunk::set_used(c, Chunk::used(c) - 1);
        if Chunk::flags(c) & FLAG_FULL != 0 {
            bump(
                &(*heap).detached_bytes,
                ((*c).block_size as usize).wrapping_neg(),
            );
            if Chunk::try_unfull(c) {
                uncount_detached(heap, c);
                if Chunk::used(c) == 0 {
                    retire(heap, c);
                } else {
                    bin_push_back(heap, cls, c);
                }
            }
            // else: queued on our pending list; handled there.
        } else if Chunk::used(c) == 0 && (*heap).current[cls] != c && !Chunk::is_queued(c) {
            bin_remove(heap, cls, c);
            retire(heap, c);
        }
        FreeResult::Done
    }
}

/// Takes back the chunks on the pending stack (their notification was
/// claimed by a remote free): collects their remote frees, reattaches
/// or retires detached ones, and for an abandoned heap (whose attached
/// chunks are all armed) retires emptied chunks and arms the rest again.
///
/// # Safety
/// The heap's owner holding its lock, or a thread holding the lock of an
/// abandoned heap.
pub(crate) unsafe fn process_pending(heap: *mut Heap) {
    // SAFETY: per the contract; chunks on the pending stack are this heap's.
    unsafe {
        if (*heap).pending.is_empty() {
            return;
        }
        let abandoned = (*heap).state.load(Ordering::Relaxed) == STATE_ABANDONED;
        let mut c = (*heap).pending.take_all();
        while !c.is_null() {
            let next = (*c).link.load(Ordering::Relaxed);
            let full = Chunk::flags(c) & FLAG_FULL != 0;
            if full {
                uncount_detached(heap, c);
            }
            count_remote(heap, Chunk::collect_pending(c));
            let cls = (*c).class as usize;
            if full {
                Chunk::clear_flags(c, FLAG_FULL);
                if Chunk::used(c) == 0 {
                    retire_any(heap, c, abandoned);
                } else {
                    bin_push_back(heap, cls, c);
                    if abandoned {
                        arm(heap, c);
                    }
                }
            } else if Chunk::used(c) == 0 && (abandoned || (*heap).bins[cls].first != c) {
                bin_remove(heap, cls, c);
                retire_any(heap, c, abandoned);
            } else if abandoned {
                arm(heap, c);
            }
            c = next;
        }
    }
}

/// Retires through the provider (owner) or to the global cache (a thread
/// working on an abandoned heap).
///
/// # Safety
/// As [`retire`] / [`retire_to_global`].
unsafe fn retire_any(heap: *mut Heap, c: *mut Chunk, abandoned: bool) {
    // SAFETY: forwarded contract.
    unsafe {
        if abandoned {
            retire_to_global(heap, c);
        } else {
            retire(heap, c);
        }
    }
}

/// Arms the notification of an attached chunk of an abandoned heap, so
/// the next remote free queues it on the pending stack; a chunk that got
/// remote frees meanwhile is collected (and retired once empty) first.
///
/// # Safety
/// The lock holder of an abandoned heap; `c` is on bin `c.class`.
unsafe fn arm(heap: *mut Heap, c: *mut Chunk) {
    // SAFETY: per the contract.
    unsafe {
        loop {
            if (*c).remote.try_arm() {
                return;
            }
            if !(*c).remote.has_blocks() {
                // Already queued (on the pending stack): it comes back there.
                return;
            }
            count_remote(heap, Chunk::collect_remote(c));
            if Chunk::is_queued(c) {
                // Claimed: it comes back through the pending stack.
                return;
            }
            if Chunk::used(c) == 0 {
                bin_remove(heap, (*c).class as usize, c);
                retire_to_global(heap, c);
                return;
            }
        }
    }
}

/// Collects remote frees everywhere and retires empty chunks; with `all`,
/// also the bins' current chunks (used by purge and thread exit).
///
/// # Safety
/// Owner thread holding the heap lock.
pub(crate) unsafe fn collect(heap: *mut Heap, all: bool) {
    if is_empty(heap) {
        return;
    }
    // SAFETY: owner thread, lock held.
    unsafe {
        process_pending(heap);
        for cls in bin_classes(heap) {
            let mut c = (*heap).bins[cls].first;
            while !c.is_null() {
                let next = (*c).next;
                count_remote(heap, Chunk::collect_remote(c));
                if Chunk::used(c) == 0
                    && (all || c != (*heap).bins[cls].first)
                    && !Chunk::is_queued(c)
                {
                    bin_remove(heap, cls, c);
                    retire(heap, c);
                }
                c = next;
            }
        }
    }
}

/// The owner's housekeeping of its bins, at most once per reading of the
/// coarse clock (a few milliseconds): retires every attached chunk other
/// than a current one whose every block out came back remotely. The
/// owner's allocations look only at their current chunks until those run
/// dry, so without this such a chunk stays attached (and committed) until
/// the bin walk reaches it (`larson`, `prodcons`: 5-7 % of peak RSS);
/// retired, it reaches the provider and, after the purge delay, the OS.
/// Looking costs one load per attached chunk; collecting happens only
/// where every block out has come back.
///
/// Current chunks stay: one whose blocks all came back is still what the
/// next allocation of its class pops, and retiring them too made
/// `prodcons` peak 40 % higher. Empty ones are retired when another class
/// needs a chunk of their size ([`retire_idle_current`]).
///
/// It also decommits an attached chunk's charged pages beyond its carve
/// cursor, at least [`TIDY_TRIM`] of them: no block lies there (blocks are
/// handed out only once carved), but an earlier use of a reused chunk
/// touched them, and they stayed resident while a class that needs a few
/// blocks holds the chunk (`longlived_thread`: 3.3 → 2.9 MiB peak;
/// `thread_churn` 4 of its 14 MiB charged in live chunks lay beyond the
/// cursors). A current chunk's cursor moves as it carves, so its tail
/// waits until the cursor stood still through [`TIDY_STILL`] tidies:
/// trimming at once doubled `thread_churn`'s page faults (carving on
/// refaults what was trimmed). Carving on charges the pages again
/// (`Chunk::extend`).
///
/// # Safety
/// Owner thread of a real heap, holding its lock.
pub(crate) unsafe fn tidy(heap: *mut Heap, now: u64) -> bool {
    // SAFETY: owner with the lock: the bins and the chunks' owner-only
    // fields are ours, and the remote lists are taken atomically.
    unsafe {
        if (*heap).tidied_ms == now {
            return false;
        }
        (*heap).tidied_ms = now;
        let page = os::page_size();
        let budget = (*heap).provider.budget();
        let idle_ms = crate::config::purge_delay_ms().saturating_mul(IDLE_PAGES_AFTER);
        for cls in bin_classes(heap) {
            let first = (*heap).bins[cls].first;
            (*first).cached_at = now;
            // The current chunk's cursor has not moved for as many tidies.
            let still = if (*first).bump as usize == (*heap).tidy_bump[cls] {
                (*heap).tidy_still[cls].saturating_add(1)
            } else {
                0
            };
            (*heap).tidy_bump[cls] = (*first).bump as usize;
            (*heap).tidy_still[cls] = still;
            let mut c = first;
            while !c.is_null() {
                let next = (*c).next;
                // A count equal to `used` means no block is out (a double
                // free can only make it larger).
                if c != first && (*c).remote.peek().count == Chunk::used(c) {
                    count_remote(heap, Chunk::collect_remote(c));
                    if !Chunk::is_queued(c) {
                        bin_remove(heap, cls, c);
                        retire(heap, c);
                        c = next;
                        continue;
                    }
                }
                // A chunk no allocation has come back to for a while,
                // mostly free: its free pages go back to the OS (they
                // return when it is the class's current chunk again).
                if c != first {
                    release_if_idle(heap, c, now, idle_ms);
                }
                // Pages charged beyond the carve cursor hold no block (a
                // block is handed out only once carved): what an earlier
                // use of a reused chunk touched. Only the current chunk's
                // cursor moves, so its tail waits until it stood still.
                let keep = ((*c).bump as usize - chunk_base(c) as usize).next_multiple_of(page);
                if (c != first || still >= TIDY_STILL) && Chunk::charged(c) >= keep + TIDY_TRIM {
                    decommit_tail(c, keep, budget);
                }
                c = next;
            }
        }
        true
    }
}

/// Gives back the free pages of `c`, an attached slab of `heap`, if it
/// has been idle for `idle_ms` (`cached_at`; 0 means attached before the
/// heap's first tidy: its clock starts now) and is mostly free. Returns
/// the bytes given back.
///
/// # Safety
/// As [`release_free_pages`].
unsafe fn release_if_idle(heap: *mut Heap, c: *mut Chunk, now: u64, idle_ms: u64) -> usize {
    // SAFETY: per the contract.
    unsafe {
        if (*c).cached_at == 0 {
            (*c).cached_at = now;
        }
        if now.saturating_sub((*c).cached_at) < idle_ms || !Chunk::mostly_free(c) {
            return 0;
        }
        count_remote(heap, Chunk::collect_remote(c));
        (*c).cached_at = now;
        Chunk::release_free_pages(c, (*heap).provider.budget())
    }
}

/// What a sweep does for an abandoned heap's slabs: every one idle for
/// [`IDLE_PAGES_AFTER`] purge delays and mostly free gives back its free
/// pages, the current chunks too (nobody allocates from them). Returns
/// the bytes given back.
///
/// # Safety
/// The lock holder of an abandoned heap.
pub(crate) unsafe fn release_idle_pages(heap: *mut Heap, now: u64) -> usize {
    let idle_ms = crate::config::purge_delay_ms().saturating_mul(IDLE_PAGES_AFTER);
    let mut n = 0;
    // SAFETY: per the contract.
    unsafe {
        for cls in bin_classes(heap) {
            let mut c = (*heap).bins[cls].first;
            while !c.is_null() {
                n += release_if_idle(heap, c, now, idle_ms);
                c = (*c).next;
            }
        }
    }
    n
}

/// Prepares a heap whose thread is gone (or exiting) to wait for
/// adoption: collects it, retires every empty chunk, gives its caches to
/// the global cache and arms every attached chunk, so that the remote
/// free that makes one collectable puts it on the pending stack, where
/// sweepers look ([`process_pending`]).
///
/// # Safety
/// The caller holds the heap's lock, and no thread runs the heap's fast
/// paths any more.
pub(crate) unsafe fn make_abandoned(heap: *mut Heap) {
    // SAFETY: per the contract.
    unsafe {
        collect(heap, true);
        (*heap).provider.flush();
        (*heap).state.store(STATE_ABANDONED, Ordering::Release);
        for cls in bin_classes(heap) {
            let mut c = (*heap).bins[cls].first;
            while !c.is_null() {
                let next = (*c).next;
                arm(heap, c);
                c = next;
            }
        }
    }
}

/// A thread adopts an abandoned heap: the attached chunks' notifications
/// are taken back (those already queued come back through the pending
/// stack, which the new owner processes on its first slow path).
///
/// # Safety
/// The caller holds the heap's lock and becomes its owner.
pub(crate) unsafe fn adopt(heap: *mut Heap) {
    // SAFETY: per the contract.
    unsafe {
        for cls in bin_classes(heap) {
            let mut c = (*heap).bins[cls].first;
            while !c.is_null() {
                (*c).remote.try_disarm();
                c = (*c).next;
            }
        }
        (*heap).state.store(STATE_LIVE, Ordering::Release);
    }
}

/// What a thread may reclaim from a live heap it does not own while the
/// owner's fast paths keep running: detached chunks on the pending stack
/// whose every block was freed remotely (retired to the global cache; the
/// others are left queued for the owner), the shared stacks, and the local
/// lists once stale (or with `all`). The owner's attached chunks are
/// not touched. Returns whether anything was given back.
///
/// # Safety
/// The caller holds `heap`'s lock and is not its owner; the heap is live.
pub(crate) unsafe fn reclaim_live(heap: *mut Heap, now: u64, all: bool) -> bool {
    // SAFETY: per the contract. Detached chunks are touched by the owner
    // only under the lock we hold; a chunk whose remote count equals its
    // `used` has no live block, so no thread can free into it any more.
    unsafe {
        let had = (*heap).provider.holds_chunks();
        let mut freed = false;
        if !(*heap).pending.is_empty() {
            let mut c = (*heap).pending.take_all();
            let mut keep: *mut Chunk = ptr::null_mut();
            while !c.is_null() {
                let next = (*c).link.load(Ordering::Relaxed);
                let t = (*c).remote.peek();
                if Chunk::flags(c) & FLAG_FULL != 0 && t.count == Chunk::used(c) {
                    uncount_detached(heap, c);
                    count_remote(heap, (*c).remote.take_and_clear().count);
                    Chunk::set_used(c, 0);
                    Chunk::clear_flags(c, FLAG_FULL);
                    retire_to_global(heap, c);
                    freed = true;
                } else {
                    (*c).link.store(keep, Ordering::Relaxed);
                    keep = c;
                }
                c = next;
            }
            while !keep.is_null() {
                let next = (*keep).link.load(Ordering::Relaxed);
                (*heap).pending.push(keep);
                keep = next;
            }
        }
        (*heap).provider.flush_idle(now, all);
        freed || (had && !(*heap).provider.holds_chunks())
    }
}

/// Forces memory back to the OS: reclaims from every other heap, collects
/// this one, flushes its caches and decommits every cached chunk
/// process-wide. Returns the bytes given back by this call.
///
/// # Safety
/// Owner thread (or the empty heap), not holding its lock.
pub unsafe fn purge(heap: *mut Heap) -> usize {
    // Other live heaps give back their free pages at their next tick (only
    // an owner may rebuild its chunks' lists).
    TRIM_EPOCH.fetch_add(1, Ordering::Relaxed);
    registry::reclaim_all(heap, true, true);
    GLOBAL_CACHE.request_flush();
    if is_empty(heap) {
        return crate::provider::purge_global(os::now_ms(), true);
    }
    // SAFETY: owner thread.
    unsafe {
        (*heap).lock.lock();
        collect(heap, true);
        let mut n = release_free_pages(heap);
        n += (*heap).provider.purge_all();
        (*heap).lock.unlock();
        n
    }
}

/// Bumped by every [`purge`] (`malloc_trim`): each live heap compares it
/// at its tick and gives back its free pages when it moved
/// ([`trim_if_asked`]).
static TRIM_EPOCH: AtomicU64 = AtomicU64::new(0);

/// At the owner's tick: gives back the heap's free pages if a [`purge`]
/// asked for it since the heap last did.
///
/// # Safety
/// Owner thread of a real heap, holding its lock.
pub(crate) unsafe fn trim_if_asked(heap: *mut Heap) {
    let epoch = TRIM_EPOCH.load(Ordering::Relaxed);
    // SAFETY: per the contract.
    unsafe {
        if (*heap).trim_seen != epoch {
            release_free_pages(heap);
        }
    }
}

/// Gives back the pages no live block touches in every attached slab of
/// the heap ([`Chunk::release_free_pages`]); returns the bytes. Their
/// remote frees are collected first.
///
/// # Safety
/// Owner thread of a real heap, holding its lock; or the lock holder of
/// an abandoned heap (whose attached chunks nobody else touches: their
/// remote frees go to the pending stack).
pub(crate) unsafe fn release_free_pages(heap: *mut Heap) -> usize {
    // SAFETY: per the contract: attached chunks' lists are the owner's.
    unsafe {
        (*heap).trim_seen = TRIM_EPOCH.load(Ordering::Relaxed);
        let budget = (*heap).provider.budget();
        let mut n = 0;
        for cls in bin_classes(heap) {
            let mut c = (*heap).bins[cls].first;
            while !c.is_null() {
                count_remote(heap, Chunk::collect_remote(c));
                n += Chunk::release_free_pages(c, budget);
                c = (*c).next;
            }
        }
        n
    }
}

// ---------------------------------------------------------------------------
// Size queries and realloc.
// ---------------------------------------------------------------------------

/// Usable bytes at `p`, or `None` if chunkmalloc did not hand `p` out.
///
/// # Safety
/// `p` is foreign or live.
pub unsafe fn usable_size(p: *mut u8) -> Option<usize> {
    let c = chunk_map::lookup(p as usize) as *mut Chunk;
    if c.is_null() {
        return None;
    }
    // SAFETY: live chunk header.
    unsafe {
        match (*c).kind {
            Kind::Slab => {
                let start = Chunk::block_start(c, p);
                Some(start as usize + (*c).block_size as usize - p as usize)
            }
            Kind::Large | Kind::Huge => object_usable(c, p),
            Kind::Cached => None,
        }
    }
}

/// Usable bytes of the large or huge object of chunk `c` if `p` is its
/// start (None otherwise): large objects end at the last charged page (the
/// rest of the chunk is not committed); huge mappings are charged whole.
///
/// # Safety
/// `c` is the live header of a large or huge chunk.
unsafe fn object_usable(c: *mut Chunk, p: *mut u8) -> Option<usize> {
    // SAFETY: per the contract.
    unsafe {
        let off = (*c).obj_offset;
        (p == c.cast::<u8>().add(off)).then(|| Chunk::charged(c) - off)
    }
}

/// What [`resize_in_place`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InPlace {
    /// `p` now holds `new_size` bytes.
    Done,
    /// `p` must move; it holds this many usable bytes.
    Moves(usize),
    /// `p` is not the start of a live block chunkmalloc handed out.
    Invalid,
}

/// Tries to resize `p` in place to `new_size`, with one chunk-map lookup
/// for the answer and, when it must move, for its usable size (a
/// `realloc` that stays in place, the common step of a string grown by
/// appends, costs one lookup instead of three). Slab blocks stay when the
/// new size fits and is at least half the block; large objects when the
/// new footprint fits the chunk and uses more than half of it; huge
/// objects always report `Moves` (`realloc_huge` resizes them, and the
/// pointer may change).
///
/// # Safety
/// `p` is live or foreign (a foreign pointer is reported `Invalid` where
/// the chunk map can tell; an interior pointer into a slab block cannot
/// be told from the block).
#[inline(always)]
pub unsafe fn resize_in_place(p: *mut u8, new_size: usize) -> InPlace {
    let c = chunk_map::lookup(p as usize) as *mut Chunk;
    if c.is_null() {
        return InPlace::Invalid;
    }
    // SAFETY: live chunk header.
    unsafe {
        match (*c).kind {
            Kind::Slab => {
                let avail =
                    Chunk::block_start(c, p) as usize + (*c).block_size as usize - p as usize;
                if new_size <= avail && (new_size >= avail / 2 || avail <= 64) {
                    InPlace::Done
                } else {
                    InPlace::Moves(avail)
                }
            }
            Kind::Large | Kind::Huge => resize_object_in_place(c, p, new_size),
            Kind::Cached => InPlace::Invalid,
        }
    }
}

/// [`resize_in_place`] for a large or huge chunk `c` (out of line: the
/// slab case is the common one).
///
/// # Safety
/// `c` is the live header of a large or huge chunk that `p` points into.
#[inline(never)]
unsafe fn resize_object_in_place(c: *mut Chunk, p: *mut u8, new_size: usize) -> InPlace {
    // SAFETY: per the contract.
    unsafe {
        let Some(usable) = object_usable(c, p) else {
            return InPlace::Invalid;
        };
        let off = (*c).obj_offset;
        if (*c).kind == Kind::Huge {
            return InPlace::Moves(usable);
        }
        let end = off + new_size;
        let fits = end <= (*c).size;
        if !(fits && new_size > MAX_SMALL && end > (*c).size / 2) {
            return InPlace::Moves(usable);
        }
        // Growth past the charged pages is charged first (the usable size,
        // counted in `in_use`, grows with it).
        let before = Chunk::charged(c);
        if !Chunk::charge_to(c, end, &budget::GLOBAL) {
            return InPlace::Moves(usable);
        }
        GLOBALS
            .large_grown_bytes
            .fetch_add(Chunk::charged(c) - before, Ordering::Relaxed);
        (*c).obj_size = new_size;
        InPlace::Done
    }
}

/// Resizes a huge object: within its mapping when it fits (cutting off
/// and caching a rest that could be a huge mapping of its own), else by
/// [`grow_chunk`], whose growth takes cached mappings' pages before fresh
/// ones. Null if `p` is not huge, if a cached mapping should take it whole
/// (the caller copies it there), or if the kernel/budget refuses (the
/// object is then unchanged).
///
/// # Safety
/// `p` is a live pointer from this allocator.
pub unsafe fn realloc_huge(p: *mut u8, new_size: usize) -> *mut u8 {
    let c = chunk_map::lookup(p as usize) as *mut Chunk;
    // SAFETY: live chunk header.
    unsafe {
        if c.is_null() || (*c).kind != Kind::Huge || new_size > MAX_REQUEST {
            return ptr::null_mut();
        }
        let off = (*c).obj_offset;
        let Some(new_len) = os::align_up_checked(off + new_size, CHUNK_SIZE) else {
            return ptr::null_mut();
        };
        let old_size = (*c).obj_size;
        if new_len <= (*c).size {
            // Within the mapping: nothing is unmapped. A rest that could be
            // a huge mapping of its own is cut off and cached (its pages
            // stay resident for the next request: `large_blocks` unmapped
            // 216 MiB of pages by shrinking), a smaller one stays with the
            // object.
            (*c).obj_size = new_size;
            GLOBALS.huge_bytes.fetch_add(new_size, Ordering::Relaxed);
            GLOBALS.huge_bytes.fetch_sub(old_size, Ordering::Relaxed);
            split_huge(c, new_len);
            return p;
        }
        // A mapping of up to 2.25 MiB whose new length a cached mapping
        // holds whole is copied into that mapping by the caller (null
        // here): the object's later growth then stays within it, where
        // growing in place took a piece of it and unmapped the rest
        // (`realloc_grow`: 27.1 k faults against 11.1 k). Larger objects
        // grow in place (or move) with cached pages instead of a copy.
        if off < CHUNK_SIZE
            && (*c).size <= MAX_CHUNK_CLASS_SIZE
            && GLOBAL_CACHE.has_huge_fit(new_len)
        {
            return ptr::null_mut();
        }
        // Objects aligned to 64 KiB or more would lose their alignment if
        // moved to a merely 64 KiB-aligned target: those resize in place or
        // the caller moves them itself.
        // A live object moves only when the kernel moves it whole (one
        // VMA); a gathered one is copied by the caller instead.
        let moves = if off < CHUNK_SIZE {
            Moves::Atomic
        } else {
            Moves::Never
        };
        let new_base = grow_chunk(c, new_len, moves);
        if new_base.is_null() {
            return new_base;
        }
        (*new_base.cast::<Chunk>()).obj_size = new_size;
        GLOBALS.huge_bytes.fetch_add(new_size, Ordering::Relaxed);
        GLOBALS.huge_bytes.fetch_sub(old_size, Ordering::Relaxed);
        new_base.add(off)
    }
}

// ---------------------------------------------------------------------------
// Statistics.
// ---------------------------------------------------------------------------

/// Bytes of live slab blocks in `h`'s chunks: every attached chunk's
/// `used` less its uncollected remote frees, the detached chunks' bytes,
/// less the remote frees into detached chunks (the first such free put
/// the chunk on the pending stack, where the walk finds it). Adds the
/// uncollected remote frees it passes to `pending_remote`, and the bytes
/// of the attached chunks' holes to `holes`.
///
/// # Safety
/// The caller holds `h`'s lock (bins and the pending stack's nodes change
/// only under it; pushers only prepend).
unsafe fn slab_bytes_in_use(h: *mut Heap, pending_remote: &mut usize, holes: &mut usize) -> isize {
    // A chunk's blocks out and, of those, the ones freed remotely and not
    // yet collected, in bytes.
    let mut out_and_remote = |c: *mut Chunk| {
        // SAFETY: `c` is a live slab of `h` (see the caller's contract).
        let (used, count, bs) =
            unsafe { (Chunk::used(c), (*c).remote.peek().count, (*c).block_size) };
        *pending_remote += count as usize;
        let bs = bs as isize;
        (used as isize * bs, count.min(used) as isize * bs)
    };
    // SAFETY: per the contract; `used`, `remote` and the link words are
    // atomics, the bin links are stable under the lock.
    unsafe {
        let mut bytes = (*h).detached_bytes.load(Ordering::Relaxed) as isize;
        for cls in bin_classes(h) {
            let mut c = (*h).bins[cls].first;
            while !c.is_null() {
                let (out, remote) = out_and_remote(c);
                bytes += out - remote;
                *holes += Chunk::holes(c).count_ones() as usize * os::page_size();
                c = (*c).next;
            }
        }
        let mut c = (*h).pending.head();
        while !c.is_null() {
            if Chunk::flags(c) & FLAG_FULL != 0 {
                bytes -= out_and_remote(c).1;
            }
            c = (*c).link.load(Ordering::Acquire);
        }
        bytes
    }
}

/// Adds one heap's counters into `s`; its live bytes into `in_use`.
///
/// Takes the heap's lock for the walk of its chunks ([`slab_bytes_in_use`]),
/// waiting for it: the caller holds no heap lock. Two locks are only
/// tried: an orphaned heap's (a thread that vanished in a `fork` may hold
/// it for ever) and one the calling thread holds itself (`stats()` from a
/// signal handler that interrupted a slow path); such a heap's slab bytes
/// are left out of the snapshot.
///
/// # Safety
/// `h` is a heap record (records are never freed).
pub(crate) unsafe fn add_stats_of(h: *mut Heap, s: &mut crate::Stats, in_use: &mut isize) {
    // SAFETY: per the contract.
    unsafe {
        let lock = &(*h).lock;
        let wait = (*h).state.load(Ordering::Acquire) != STATE_ORPHANED
            && lock.holder() != crate::sync::thread_id();
        let locked = if wait {
            lock.lock();
            true
        } else {
            lock.try_lock()
        };
        if locked {
            let mut pending = 0;
            *in_use += slab_bytes_in_use(h, &mut pending, &mut s.slab_holes);
            s.remote_frees += pending;
            lock.unlock();
        }
        *in_use += (*h).large_alloc_bytes.load(Ordering::Relaxed) as isize;
        *in_use -= (*h).large_free_bytes.load(Ordering::Relaxed) as isize;
        s.remote_frees += (*h).remote_frees.load(Ordering::Relaxed);
        s.slab_chunks += (*h).slab_chunks.load(Ordering::Relaxed);
        s.large_chunks += (*h).large_chunks.load(Ordering::Relaxed);
        match (*h).state.load(Ordering::Relaxed) {
            STATE_LIVE => s.live_heaps += 1,
            STATE_ABANDONED => s.abandoned_heaps += 1,
            _ => {}
        }
        let (b, n, mapped, reused) = (*h).provider.counters();
        s.chunks_mapped_total += mapped;
        s.chunks_reused_total += reused;
        s.cached += b;
        s.cached_chunks += n;
    }
}

/// Adds the process-wide counters that are not per heap.
pub(crate) fn add_global_stats(s: &mut crate::Stats, mut in_use: isize) {
    in_use += GLOBALS.huge_bytes.load(Ordering::Relaxed) as isize;
    in_use -= GLOBALS.heapless_freed_bytes.load(Ordering::Relaxed) as isize;
    in_use += GLOBALS.large_grown_bytes.load(Ordering::Relaxed) as isize;
    s.in_use = in_use.max(0) as usize;
    s.huge_chunks = GLOBALS.huge_count.load(Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `direct` entry is the current chunk of its size's class.
    ///
    /// # Safety
    /// `h` is a heap record the calling thread owns.
    unsafe fn assert_direct_matches(h: *mut Heap) {
        for g in 0..DIRECT_LEN {
            let cls = class_of(g * OBJ_GRANULE);
            // SAFETY: per the contract.
            let (d, c) = unsafe { ((*h).direct[g], (*h).current[cls]) };
            assert_eq!(d, c, "direct entry for {} granules (class {cls})", g);
        }
    }

    #[test]
    fn direct_entries_follow_current_as_chunks_come_and_go() {
        let h = registry::acquire();
        assert!(!h.is_null());
        // SAFETY: the record is this test's own; only this thread uses it.
        unsafe {
            assert_direct_matches(h);
            let mut blocks = Vec::new();
            // Enough blocks per size that chunks fill, are detached and
            // new ones become current.
            for size in 0..=TABLE_MAX {
                for _ in 0..40 {
                    let mut p = malloc_fast_small(h, size);
                    if p.is_null() {
                        p = malloc(h, size);
                    }
                    assert!(!p.is_null());
                    let c = chunk_map::lookup(p as usize) as *mut Chunk;
                    assert_eq!((*c).class as usize, class_of(size), "size {size}");
                    blocks.push(p);
                }
                if size % 64 == 0 {
                    assert_direct_matches(h);
                }
            }
            assert_direct_matches(h);
            // Freeing retires emptied chunks and moves `current`.
            for (i, &p) in blocks.iter().enumerate().rev() {
                assert_eq!(free(h, p), FreeResult::Done);
                if i % 1000 == 0 {
                    assert_direct_matches(h);
                }
            }
            (*h).lock.lock();
            collect(h, true);
            (*h).lock.unlock();
            assert_direct_matches(h);
            registry::abandon(h);
        }
    }

    /// Slab headers sit at their chunk's color, blocks after them and
    /// inside the chunk; a retired chunk's header is back at its start,
    /// where the chunk map points.
    #[test]
    fn slab_headers_take_their_color_and_move_back_when_retired() {
        const BS: usize = 512;
        let h = registry::acquire();
        assert!(!h.is_null());
        // SAFETY: the record is this test's own; only this thread uses it.
        unsafe {
            let mut blocks = Vec::new();
            let mut bases = Vec::new();
            while bases.len() < 24 {
                let p = malloc(h, BS);
                assert!(!p.is_null());
                let c = chunk_map::lookup(p as usize) as *mut Chunk;
                let base = chunk_base(c);
                assert_eq!(
                    c as usize - base as usize,
                    slab_header_offset(base as usize)
                );
                let data = c as usize + HEADER_SIZE;
                assert!(p as usize >= data && (p as usize - data) % BS == 0);
                assert!(p as usize + BS <= base as usize + (*c).size);
                if !bases.contains(&(base as usize)) {
                    bases.push(base as usize);
                }
                blocks.push(p);
            }
            let colors: std::collections::BTreeSet<usize> =
                bases.iter().map(|&b| slab_header_offset(b)).collect();
            assert!(colors.len() >= 2, "24 chunks, one color: {colors:?}");
            for &p in &blocks {
                assert_eq!(free(h, p), FreeResult::Done);
            }
            (*h).lock.lock();
            collect(h, true);
            (*h).lock.unlock();
            // Every chunk but the class's current one went to a cache.
            let mut back = 0;
            for &b in &bases {
                let c = chunk_map::lookup(b) as *mut Chunk;
                if c == (*h).current[class_of(BS)] {
                    continue;
                }
                if c.is_null() || ((*c).kind == Kind::Slab && Chunk::owner(c) != h as usize) {
                    // It went through the cache and on: unmapped by a purge,
                    // or taken by a test running beside this one (with
                    // `CHUNKMALLOC_PURGE_DELAY_MS=0` in the environment
                    // nothing stays cached).
                    back += 1;
                    continue;
                }
                assert_eq!(c as usize, b, "a cached chunk's header is at its start");
                assert_eq!((*c).kind, Kind::Cached);
                back += 1;
            }
            assert!(back >= bases.len() - 1, "{back} of {} retired", bases.len());
            registry::abandon(h);
        }
    }
}

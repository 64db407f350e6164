//! The ChunkProvider (one per heap) and the process-wide chunk cache.
//!
//! Adapted from the seed's `ChunkProvider`: per chunk class a local list
//! (touched only under the owning heap's lock) and a lock-free shared
//! stack ([`ChunkStack`]) that any thread may push to. The seed lets only
//! the owner pop; here the stack is only ever emptied whole (one swap), so
//! a thread reclaiming from an idle heap may take it too, without ABA.
//! Every byte committed is reserved in the [`Budget`] first, by a CAS that
//! never overshoots the cap. Chunks are charged by the page as they are
//! used (`Chunk::charged`): a new mapping only for its first use, slab
//! pages as the bump cursor reaches them, large objects up to their last
//! page; nothing beyond a chunk's charge is committed.
//!
//! Whole free chunks flow: owner's local list (at most
//! [`LOCAL_RESERVE_BYTES`], and only until the purge delay passes) →
//! [`GlobalCache`] (shared by every heap, under a [`SpinLock`]) → decommitted
//! after the purge delay (`MADV_DONTNEED` of all but the header page) →
//! unmapped when the cache holds more than [`GLOBAL_MAX_DECOMMITTED`]
//! decommitted chunks. A heap draws from its own lists, then the global
//! cache, then (after reclaiming from other heaps, `registry`) the OS.

use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use allocator_api2::alloc::{Allocator, Layout};

use crate::budget::Budget;
use crate::chunk::{chunk_base, Chunk, ChunkStack, HEADER_SIZE};
use crate::chunk_map;
use crate::config;
use crate::os;
use crate::size_class::{chunk_class_size, CHUNK_SIZE, NUM_CHUNK_CLASSES};
use crate::stats::bump;
use crate::sync::SpinLock;

/// Committed bytes a provider keeps in its local lists before handing
/// chunks to the global cache.
pub const LOCAL_RESERVE_BYTES: usize = 2 << 20;
/// Decommitted chunks the global cache keeps mapped (for reuse without a
/// new mapping); beyond this they are unmapped.
pub const GLOBAL_MAX_DECOMMITTED: usize = 512;

/// Huge mappings the global cache keeps for reuse (their pages stay
/// resident until the purge delay passes, so a program that frees and
/// re-allocates multi-MiB blocks does not fault every page in again).
/// Splitting leaves pieces of 2.25 MiB and up, and with 16 slots full of
/// them freed mappings were turned away while the cache was below its byte
/// cap: `cycling_buffers` faulted 628 MiB instead of 500 (`docs/PERF.md`).
/// Scans of the slots happen only with a huge allocation or free, each of
/// which makes a system call or faults pages.
pub const HUGE_SLOTS: usize = 32;
/// At most this many bytes of huge mappings are kept.
pub const HUGE_CACHE_MAX_BYTES: usize = 256 << 20;
/// The cache may always hold this much, however little is live in huge
/// objects; above it, at most half of what is live (see `put_huge`).
pub const HUGE_CACHE_MIN_BYTES: usize = 64 << 20;

/// The process-wide cache of free chunks, per chunk class, plus a few
/// recently freed huge mappings.
pub struct GlobalCache {
    lock: SpinLock,
    /// Per chunk class, a LIFO list linked through `link`. Written only
    /// with `lock` held; atomics so that the lock-free emptiness hint and
    /// the statistics may read them.
    lists: [AtomicPtr<Chunk>; NUM_CHUNK_CLASSES],
    /// Freed huge mappings kept for reuse (written under `lock`).
    huge: [AtomicPtr<Chunk>; HUGE_SLOTS],
    huge_bytes: AtomicUsize,
    /// Chunks in the cache with committed data pages, and their bytes.
    committed_count: AtomicUsize,
    committed_bytes: AtomicUsize,
    /// Decommitted chunks in the cache, and their mapped bytes.
    decommitted_count: AtomicUsize,
    decommitted_bytes: AtomicUsize,
    /// Earliest time a committed chunk in the cache becomes purgeable.
    next_purge_ms: AtomicU64,
    /// Bumped to ask every provider to flush its local lists.
    flush_epoch: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const NULL_CHUNK: AtomicPtr<Chunk> = AtomicPtr::new(ptr::null_mut());

/// The cache every real heap uses.
pub static GLOBAL_CACHE: GlobalCache = GlobalCache::new();

/// Snapshot of cache occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Committed chunks cached.
    pub committed_count: usize,
    /// Their bytes.
    pub committed_bytes: usize,
    /// Decommitted chunks cached.
    pub decommitted_count: usize,
    /// Their mapped bytes.
    pub decommitted_bytes: usize,
}

impl GlobalCache {
    /// An empty cache.
    pub const fn new() -> Self {
        GlobalCache {
            lock: SpinLock::new(),
            lists: [NULL_CHUNK; NUM_CHUNK_CLASSES],
            huge: [NULL_CHUNK; HUGE_SLOTS],
            huge_bytes: AtomicUsize::new(0),
            committed_count: AtomicUsize::new(0),
            committed_bytes: AtomicUsize::new(0),
            decommitted_count: AtomicUsize::new(0),
            decommitted_bytes: AtomicUsize::new(0),
            next_purge_ms: AtomicU64::new(u64::MAX),
            flush_epoch: AtomicU64::new(0),
        }
    }

    /// Occupancy now.
    pub fn stats(&self) -> CacheStats {
        let huge_n = self
            .huge
            .iter()
            .filter(|c| !c.load(Ordering::Relaxed).is_null())
            .count();
        CacheStats {
            committed_count: self.committed_count.load(Ordering::Relaxed) + huge_n,
            committed_bytes: self.committed_bytes.load(Ordering::Relaxed)
                + self.huge_bytes.load(Ordering::Relaxed),
            decommitted_count: self.decommitted_count.load(Ordering::Relaxed),
            decommitted_bytes: self.decommitted_bytes.load(Ordering::Relaxed),
        }
    }

    /// In a `fork` child: if a thread that did not survive the fork held
    /// the lock, the lists may be mid-update, so they are dropped (their
    /// chunks stay mapped and counted, unused) and the lock is freed. A
    /// lock held by the calling thread (a `fork` from a signal handler
    /// that interrupted it) is left alone: the interrupted code resumes.
    pub(crate) fn after_fork_child(&self) {
        if !self.lock.held_by_other() {
            return;
        }
        for l in self.lists.iter().chain(self.huge.iter()) {
            l.store(ptr::null_mut(), Ordering::Relaxed);
        }
        for n in [
            &self.huge_bytes,
            &self.committed_count,
            &self.committed_bytes,
            &self.decommitted_count,
            &self.decommitted_bytes,
        ] {
            n.store(0, Ordering::Relaxed);
        }
        self.next_purge_ms.store(u64::MAX, Ordering::Relaxed);
        self.lock.force_unlock();
    }

    /// Asks every provider to flush its local lists on its next slow path.
    pub fn request_flush(&self) {
        self.flush_epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn count(&self, c: *mut Chunk, add: bool) {
        // Committed chunks count what is charged, decommitted ones what
        // is mapped.
        // SAFETY: `c` is a chunk in (or entering/leaving) the cache, and the
        // lock is held, so its header is stable.
        let (dec, size) = unsafe {
            if (*c).decommitted {
                (true, (*c).size)
            } else {
                (false, Chunk::charged(c))
            }
        };
        let (n, b) = if dec {
            (&self.decommitted_count, &self.decommitted_bytes)
        } else {
            (&self.committed_count, &self.committed_bytes)
        };
        if add {
            n.fetch_add(1, Ordering::Relaxed);
            b.fetch_add(size, Ordering::Relaxed);
        } else {
            n.fetch_sub(1, Ordering::Relaxed);
            b.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Adds a list of free chunks (linked through `link`) of any classes.
    pub(crate) fn push_list(&self, mut c: *mut Chunk, now: u64) {
        if c.is_null() {
            return;
        }
        self.lock.lock();
        // SAFETY: lock held; the chunks are exclusively ours until linked.
        unsafe {
            while !c.is_null() {
                let next = (*c).link.load(Ordering::Relaxed);
                let head = &self.lists[crate::size_class::chunk_class_of((*c).size)];
                (*c).cached_at = now;
                (*c).link
                    .store(head.load(Ordering::Relaxed), Ordering::Relaxed);
                head.store(c, Ordering::Relaxed);
                self.count(c, true);
                c = next;
            }
        }
        self.lock.unlock();
        let due = now.saturating_add(config::purge_delay_ms());
        self.next_purge_ms.fetch_min(due, Ordering::Relaxed);
    }

    /// Keeps a freed huge mapping (kind `Cached`, still registered in the
    /// chunk map, still counted in the budget) for reuse. When the cache is
    /// full (in bytes or slots), smaller cached mappings make room for it,
    /// smallest first; if they cannot, or the budget is near its cap, `c`
    /// is not kept. Returns what the caller must unmap, linked through
    /// `link`: `c` itself, or the mappings it displaced, or null.
    ///
    /// # Safety
    /// `c` is a huge mapping with no live object, referenced by nothing else.
    pub unsafe fn put_huge(&self, c: *mut Chunk, now: u64, live_huge: usize) -> *mut Chunk {
        // SAFETY: `c` is ours per the contract.
        let size = unsafe { (*c).size };
        // SAFETY: as above.
        unsafe { (*c).link.store(ptr::null_mut(), Ordering::Relaxed) };
        // What a program is about to reuse is bounded by what it holds.
        // Any mix of cached mappings serves a request (they are split and
        // gathered, `heap::alloc_huge`), so a few requests' worth is
        // enough (measured in `docs/PERF.md`, "Cycling large buffers").
        let cap = (live_huge / 2).clamp(HUGE_CACHE_MIN_BYTES, HUGE_CACHE_MAX_BYTES);
        if size > cap || crate::budget::GLOBAL.under_pressure() {
            // Near the budget cap a mapping held here is budget another
            // thread may be failing for.
            return c;
        }
        // SAFETY: called with the lock held on an occupied slot; cached
        // mappings are stable under the lock.
        let size_at = |i: usize| unsafe { (*self.huge[i].load(Ordering::Relaxed)).size };
        let taken = |i: usize| self.huge[i].load(Ordering::Relaxed).is_null();
        self.lock.lock();
        // Room that displacing every smaller mapping would make.
        let bytes = self.huge_bytes.load(Ordering::Relaxed);
        let (mut smaller, mut smaller_bytes, mut free_slot) = (0, 0, false);
        for i in 0..HUGE_SLOTS {
            if taken(i) {
                free_slot = true;
            } else if size_at(i) < size {
                smaller += 1;
                smaller_bytes += size_at(i);
            }
        }
        let fits = bytes - smaller_bytes + size <= cap && (free_slot || smaller > 0);
        let mut dropped: *mut Chunk = ptr::null_mut();
        if fits {
            while self.huge_bytes.load(Ordering::Relaxed) + size > cap
                || (0..HUGE_SLOTS).all(|i| !taken(i))
            {
                let i = (0..HUGE_SLOTS)
                    .filter(|&i| !taken(i))
                    .min_by_key(|&i| size_at(i))
                    .unwrap_or(0);
                let v = self.huge[i].swap(ptr::null_mut(), Ordering::Relaxed);
                // SAFETY: just unlinked under the lock; ours now.
                self.huge_bytes
                    .fetch_sub(unsafe { (*v).size }, Ordering::Relaxed);
                // SAFETY: as above.
                unsafe { (*v).link.store(dropped, Ordering::Relaxed) };
                dropped = v;
            }
            let slot = (0..HUGE_SLOTS).find(|&i| taken(i)).unwrap_or(0);
            // SAFETY: `c` is exclusively ours until published in the slot.
            // (A huge mapping's header is at its start: it stays `c`.)
            let c = unsafe { mark_cached(c) };
            // SAFETY: as above.
            unsafe { (*c).cached_at = now };
            self.huge[slot].store(c, Ordering::Relaxed);
            self.huge_bytes.fetch_add(size, Ordering::Relaxed);
        }
        self.lock.unlock();
        if !fits {
            return c;
        }
        // Kept for the purge delay, as chunks are (a tenth of it let the
        // mapping go between two replacements of a program that also
        // cycles smaller buffers); the byte cap above bounds what the
        // wait can hold.
        let due = now.saturating_add(config::purge_delay_ms());
        self.next_purge_ms.fetch_min(due, Ordering::Relaxed);
        dropped
    }

    /// Takes cached huge mappings for a request of `len` bytes into `out`
    /// and returns how many: the smallest one that fits alone, else as many
    /// as are needed to add up to `len`, largest first (all of them when
    /// they add up to less; the caller gathers them into one mapping and
    /// faults in the rest). 0 if none is cached.
    pub fn take_huge(&self, len: usize, out: &mut [*mut Chunk; HUGE_SLOTS]) -> usize {
        if self.huge_bytes.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.lock.lock();
        // SAFETY (both closures): cached mappings, stable under the lock.
        let size_at = |i: usize| unsafe { (*self.huge[i].load(Ordering::Relaxed)).size };
        let taken = |i: usize| self.huge[i].load(Ordering::Relaxed).is_null();
        let mut fit: Option<(usize, usize)> = None;
        for i in 0..HUGE_SLOTS {
            if !taken(i) && size_at(i) >= len && fit.is_none_or(|(_, f)| size_at(i) < f) {
                fit = Some((i, size_at(i)));
            }
        }
        let mut n = 0;
        let mut total = 0;
        if let Some((i, size)) = fit {
            out[0] = self.huge[i].swap(ptr::null_mut(), Ordering::Relaxed);
            n = 1;
            total = size;
        } else {
            while total < len {
                let mut largest: Option<(usize, usize)> = None;
                for i in 0..HUGE_SLOTS {
                    if !taken(i) && largest.is_none_or(|(_, l)| size_at(i) > l) {
                        largest = Some((i, size_at(i)));
                    }
                }
                let Some((i, size)) = largest else { break };
                out[n] = self.huge[i].swap(ptr::null_mut(), Ordering::Relaxed);
                n += 1;
                total += size;
            }
        }
        self.huge_bytes.fetch_sub(total, Ordering::Relaxed);
        self.lock.unlock();
        n
    }

    /// Whether a huge mapping of at least `len` bytes is cached. Only a
    /// hint: another thread may take it before the caller asks for it.
    pub fn has_huge_fit(&self, len: usize) -> bool {
        if self.huge_bytes.load(Ordering::Relaxed) < len {
            return false;
        }
        // The lock keeps the cached mappings mapped while their headers are
        // read (without it, one taken and unmapped meanwhile would fault).
        self.lock.lock();
        let fit = self.huge.iter().any(|s| {
            let c = s.load(Ordering::Relaxed);
            // SAFETY: lock held: a cached mapping and its header are stable.
            !c.is_null() && unsafe { (*c).size } >= len
        });
        self.lock.unlock();
        fit
    }

    /// Takes a chunk of class `cls`, preferring committed ones (they sit at
    /// the front: the list is LIFO and purging works from old to new).
    fn pop(&self, cls: usize) -> *mut Chunk {
        // A hint read without the lock; a stale answer only costs a lock.
        if self.lists[cls].load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        self.lock.lock();
        let c = self.lists[cls].load(Ordering::Relaxed);
        if !c.is_null() {
            // SAFETY: lock held; cached chunks on the list are stable.
            unsafe {
                self.lists[cls].store((*c).link.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            self.count(c, false);
        }
        self.lock.unlock();
        c
    }

    /// Decommits the oldest committed 64 KiB chunks (the chunk class of
    /// every small-object slab) in the cache, about `bytes` of them,
    /// whatever their age. Called where a heap commits fresh memory for a
    /// large or huge object, which no such chunk can hold: cached slab
    /// chunks beside it mean the program's small-object working set
    /// shrank, and keeping them until the purge delay stacks the two
    /// peaks (`sqlite`: 170 such chunks, 10.9 MiB, cached while its
    /// largest huge buffers were mapped; peak RSS 57.6 → 48.5 MiB). Chunks
    /// of the larger classes are left to the purge delay: a program
    /// growing buffers through them reuses them soon (`realloc_grow`
    /// faulted 56 % more pages when they were decommitted here too).
    ///
    /// The list is LIFO with committed chunks before decommitted ones, so
    /// the oldest committed chunks are the last committed ones: one walk
    /// sums them, a second decommits past what is kept.
    pub fn trim_slabs(&self, bytes: usize, budget: &Budget) {
        let head = &self.lists[0];
        if head.load(Ordering::Relaxed).is_null() {
            return;
        }
        self.lock.lock();
        // SAFETY: lock held; cached chunks have no users.
        unsafe {
            let mut dirty = 0;
            let mut c = head.load(Ordering::Relaxed);
            while !c.is_null() && !(*c).decommitted {
                dirty += Chunk::charged(c);
                c = (*c).link.load(Ordering::Relaxed);
            }
            let keep = dirty.saturating_sub(bytes);
            let mut seen = 0;
            let mut c = head.load(Ordering::Relaxed);
            while !c.is_null() && !(*c).decommitted {
                let next = (*c).link.load(Ordering::Relaxed);
                seen += Chunk::charged(c);
                if seen > keep {
                    self.count(c, false);
                    decommit_chunk(c, budget);
                    self.count(c, true);
                }
                c = next;
            }
        }
        self.lock.unlock();
    }

    /// Decommits cached chunks that have waited `delay_ms` (all of them
    /// when `force`), and unmaps decommitted chunks beyond the cap. Returns
    /// the bytes decommitted or unmapped.
    fn purge<A: Allocator>(&self, now: u64, force: bool, budget: &Budget, pages: &A) -> usize {
        if !force && now < self.next_purge_ms.load(Ordering::Relaxed) {
            return 0;
        }
        let delay = config::purge_delay_ms();
        let mut released = 0;
        let mut next_due = u64::MAX;
        let mut to_unmap: *mut Chunk = ptr::null_mut();
        self.lock.lock();
        // SAFETY: lock held; cached chunks have no users.
        unsafe {
            for head in self.lists.iter() {
                let mut prev: *mut Chunk = ptr::null_mut();
                let mut c = head.load(Ordering::Relaxed);
                while !c.is_null() {
                    let next = (*c).link.load(Ordering::Relaxed);
                    if !(*c).decommitted {
                        if force || (*c).cached_at.saturating_add(delay) <= now {
                            self.count(c, false);
                            released += decommit_chunk(c, budget);
                            self.count(c, true);
                        } else {
                            next_due = next_due.min((*c).cached_at.saturating_add(delay));
                        }
                    }
                    if (*c).decommitted
                        && self.decommitted_count.load(Ordering::Relaxed) > max_decommitted()
                    {
                        // Unlink and unmap after the lock is dropped.
                        self.count(c, false);
                        if prev.is_null() {
                            head.store(next, Ordering::Relaxed);
                        } else {
                            (*prev).link.store(next, Ordering::Relaxed);
                        }
                        (*c).link.store(to_unmap, Ordering::Relaxed);
                        to_unmap = c;
                    } else {
                        prev = c;
                    }
                    c = next;
                }
            }
        }
        // SAFETY: lock held; cached huge mappings have no users.
        unsafe {
            for slot in self.huge.iter() {
                let c = slot.load(Ordering::Relaxed);
                if c.is_null() {
                    continue;
                }
                if force || (*c).cached_at.saturating_add(delay) <= now {
                    slot.store(ptr::null_mut(), Ordering::Relaxed);
                    self.huge_bytes.fetch_sub((*c).size, Ordering::Relaxed);
                    (*c).link.store(to_unmap, Ordering::Relaxed);
                    to_unmap = c;
                } else {
                    next_due = next_due.min((*c).cached_at.saturating_add(delay));
                }
            }
        }
        self.next_purge_ms.store(next_due, Ordering::Relaxed);
        self.lock.unlock();
        while !to_unmap.is_null() {
            // SAFETY: unlinked above; no one else can reach it.
            let next = unsafe { (*to_unmap).link.load(Ordering::Relaxed) };
            // SAFETY: as above.
            released += unsafe { (*to_unmap).size };
            // SAFETY: as above; the chunk came from `pages`.
            unsafe { unmap_chunk(to_unmap, budget, pages) };
            to_unmap = next;
        }
        released
    }
}

impl Default for GlobalCache {
    fn default() -> Self {
        Self::new()
    }
}

/// A chunk taken from a cache for a smaller need keeps this much charged
/// beyond it even near the cap (giving back less is not worth a syscall).
const TRIM_SLACK: usize = 64 * 1024;

/// Decommitted chunks kept mapped: [`GLOBAL_MAX_DECOMMITTED`] (a test
/// hook may lower it).
#[inline]
fn max_decommitted() -> usize {
    #[cfg(feature = "test-hooks")]
    return crate::hooks::KEEP_DECOMMITTED.load(Ordering::Relaxed);
    #[cfg(not(feature = "test-hooks"))]
    GLOBAL_MAX_DECOMMITTED
}

/// Marks a chunk free (kind `Cached`, no owner, not a slab, unlinked),
/// with its header moved back to the chunk's start if it was a slab's
/// elsewhere (the chunk map follows), and returns that header.
///
/// # Safety
/// The caller holds `c` exclusively and it has no live objects; a header
/// away from the chunk's start is registered in the chunk map.
#[must_use]
pub(crate) unsafe fn mark_cached(c: *mut Chunk) -> *mut Chunk {
    // SAFETY: per the contract.
    unsafe {
        check!(
            Chunk::holes(c) == 0,
            "a slab drops its holes before it is cached"
        );
        let c = Chunk::move_header(c, chunk_base(c).cast());
        (*c).kind = crate::chunk::Kind::Cached;
        Chunk::set_tag(c, 0, crate::chunk::FLAG_NOT_SLAB);
        (*c).link.store(ptr::null_mut(), Ordering::Relaxed);
        c
    }
}

/// Decommits a cached chunk's charged data pages (all but the header
/// page; pages beyond `charged` are not committed). Returns the bytes
/// released from the budget.
///
/// # Safety
/// `c` is a committed cached chunk the caller has exclusive access to.
unsafe fn decommit_chunk(c: *mut Chunk, budget: &Budget) -> usize {
    // SAFETY: exclusive access per the contract.
    unsafe {
        (*c).decommitted = true;
        decommit_tail(c, os::page_size(), budget)
    }
}

/// Decommits the charged pages of `c` from `keep` (a page multiple, at
/// least one page) on and releases their charge. Returns the bytes released.
///
/// # Safety
/// The caller holds `c` exclusively (no live object at or beyond `keep`).
pub(crate) unsafe fn decommit_tail(c: *mut Chunk, keep: usize, budget: &Budget) -> usize {
    // SAFETY: exclusive access per the contract; the range is inside it.
    unsafe {
        let have = Chunk::charged(c);
        if have <= keep {
            return 0;
        }
        os::decommit(chunk_base(c).add(keep), have - keep);
        (*c).charged = keep as u32;
        budget.release(have - keep);
        have - keep
    }
}

/// Unregisters and unmaps a chunk, returning its committed bytes.
///
/// # Safety
/// `c` is a cached chunk no one else can reach, mapped by `pages`.
unsafe fn unmap_chunk<A: Allocator>(c: *mut Chunk, budget: &Budget, pages: &A) {
    // SAFETY: per the contract.
    unsafe {
        let size = (*c).size;
        let committed = Chunk::charged(c);
        chunk_map::unregister(c as usize, size);
        let layout = Layout::from_size_align_unchecked(size, CHUNK_SIZE);
        pages.deallocate(NonNull::new_unchecked(c.cast()), layout);
        budget.release(committed);
    }
}

/// Runs the global cache's purge if it is due (or now, with `force`),
/// using the OS page source. For callers without a provider at hand.
pub fn purge_global(now: u64, force: bool) -> usize {
    GLOBAL_CACHE.purge(now, force, &crate::budget::GLOBAL, &os::OsPages)
}

/// Per-heap chunk source and cache.
///
/// Every method takes `&self`: other threads push to `shared` while the
/// owner works, so no `&mut Provider` may exist. The owner-only state is
/// in `UnsafeCell`s and atomics; the `unsafe` methods that touch it
/// require the caller to hold the owning heap's lock (the owner on its
/// slow paths, or a thread reclaiming from an idle heap), which makes
/// their accesses exclusive.
pub struct Provider<A: Allocator + 'static> {
    pages: A,
    budget: &'static Budget,
    global: &'static GlobalCache,
    /// LIFO lists (linked through `link`) under the heap lock.
    local: UnsafeCell<[*mut Chunk; NUM_CHUNK_CLASSES]>,
    /// Chunks other threads returned to this provider.
    shared: [ChunkStack; NUM_CHUNK_CLASSES],
    /// Chunks pushed on `shared` and not yet taken (a hint for reclaimers).
    shared_count: AtomicUsize,
    /// Their committed bytes (for statistics).
    shared_bytes: AtomicUsize,
    /// Committed bytes in `local` (written under the heap lock; read by `stats`).
    local_bytes: AtomicUsize,
    /// Chunks in `local` (as `local_bytes`).
    local_count: AtomicUsize,
    /// When `local` was last flushed to the global cache.
    last_flush_ms: AtomicU64,
    /// The global flush epoch last honoured.
    seen_epoch: AtomicU64,
    /// Chunks mapped from the OS by this provider (lifetime count).
    mapped_chunks: AtomicUsize,
    /// Chunks served from a cache (lifetime count).
    reused_chunks: AtomicUsize,
}

// SAFETY: `local` is touched only by the holder of the owning heap's lock;
// everything else is atomic or immutable.
unsafe impl<A: Allocator + Send + 'static> Send for Provider<A> {}
// SAFETY: as for `Send`; through `&Provider` a thread without the heap
// lock only pushes on `shared` and reads counters.
unsafe impl<A: Allocator + Sync + 'static> Sync for Provider<A> {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_STACK: ChunkStack = ChunkStack::new();

impl<A: Allocator + 'static> Provider<A> {
    /// A provider drawing pages from `pages`, charging `budget`, and sharing
    /// surplus through `global`.
    pub const fn new(pages: A, budget: &'static Budget, global: &'static GlobalCache) -> Self {
        Provider {
            pages,
            budget,
            global,
            local: UnsafeCell::new([ptr::null_mut(); NUM_CHUNK_CLASSES]),
            shared: [EMPTY_STACK; NUM_CHUNK_CLASSES],
            shared_count: AtomicUsize::new(0),
            shared_bytes: AtomicUsize::new(0),
            local_bytes: AtomicUsize::new(0),
            local_count: AtomicUsize::new(0),
            last_flush_ms: AtomicU64::new(0),
            seen_epoch: AtomicU64::new(0),
            mapped_chunks: AtomicUsize::new(0),
            reused_chunks: AtomicUsize::new(0),
        }
    }

    /// The budget this provider charges.
    #[inline]
    pub fn budget(&self) -> &'static Budget {
        self.budget
    }

    /// Committed bytes and chunks in the local lists and shared stacks,
    /// and the lifetime counts of chunks mapped and reused. Any thread may
    /// call this.
    pub fn counters(&self) -> (usize, usize, usize, usize) {
        (
            self.local_bytes.load(Ordering::Relaxed) + self.shared_bytes.load(Ordering::Relaxed),
            self.local_count.load(Ordering::Relaxed) + self.shared_count.load(Ordering::Relaxed),
            self.mapped_chunks.load(Ordering::Relaxed),
            self.reused_chunks.load(Ordering::Relaxed),
        )
    }

    /// Whether anything is cached here (local lists or shared stacks): a
    /// hint any thread may read.
    pub fn holds_chunks(&self) -> bool {
        self.local_count.load(Ordering::Relaxed) != 0
            || self.shared_count.load(Ordering::Relaxed) != 0
    }

    /// The local lists, one per chunk class.
    ///
    /// # Safety
    /// The caller holds the heap lock.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    unsafe fn local(&self) -> &mut [*mut Chunk; NUM_CHUNK_CLASSES] {
        // SAFETY: exclusive under the heap lock, per the contract; the
        // reference does not outlive the caller's use.
        unsafe { &mut *self.local.get() }
    }

    /// A cached chunk of class `cls` with a fresh header (`Kind::Cached`)
    /// from this provider's local list or shared stack, with at least its
    /// first `need` bytes charged; null if none (or the budget refuses the
    /// charge: the chunk then goes to the global cache, where a purge can
    /// decommit it).
    ///
    /// # Safety
    /// The caller holds the heap lock.
    pub unsafe fn acquire(&self, cls: usize, need: usize) -> *mut Chunk {
        // SAFETY: heap lock held.
        let local = unsafe { self.local() };
        if local[cls].is_null() && !self.shared[cls].is_empty() {
            // Take what other threads gave back, whole (no single-node
            // pop, so any thread may empty the stack without ABA).
            let mut c = self.shared[cls].take_all();
            let (mut n, mut bytes) = (0, 0);
            while !c.is_null() {
                // SAFETY: the taken list is ours.
                unsafe {
                    let next = (*c).link.load(Ordering::Relaxed);
                    (*c).link.store(local[cls], Ordering::Relaxed);
                    local[cls] = c;
                    bytes += Chunk::charged(c);
                    c = next;
                }
                n += 1;
            }
            bump(&self.local_bytes, bytes);
            bump(&self.local_count, n);
            self.shared_count.fetch_sub(n, Ordering::Relaxed);
            self.shared_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        let c = local[cls];
        if c.is_null() {
            return c;
        }
        // SAFETY: a cached chunk on our list.
        unsafe {
            local[cls] = (*c).link.load(Ordering::Relaxed);
            bump(&self.local_bytes, Chunk::charged(c).wrapping_neg());
        }
        bump(&self.local_count, usize::MAX);
        // SAFETY: exclusively ours now.
        unsafe { self.fit(reset_header(c, false), need) }
    }

    /// Charges a chunk just taken from a cache for its first `need` bytes;
    /// near the cap, also gives back charged pages well beyond them (a
    /// chunk cached by a larger object). Returns the chunk, or null when
    /// the budget refuses (the chunk is then put in the global cache).
    ///
    /// # Safety
    /// The caller holds `c` exclusively.
    unsafe fn fit(&self, c: *mut Chunk, need: usize) -> *mut Chunk {
        // SAFETY: per the contract.
        unsafe {
            if Chunk::charge_to(c, need, self.budget) {
                bump(&self.reused_chunks, 1);
                let keep = need.max(1).next_multiple_of(os::page_size());
                if Chunk::charged(c) > keep + TRIM_SLACK && self.budget.under_pressure() {
                    decommit_tail(c, keep, self.budget);
                }
                return c;
            }
            let c = mark_cached(c);
            self.global.push_list(c, os::now_ms());
            ptr::null_mut()
        }
    }

    /// A chunk of class `cls` from the process-wide cache with at least its
    /// first `need` bytes charged (a decommitted one has only its header
    /// page charged, so this is where the budget may refuse); null if none
    /// or refused.
    pub fn acquire_global(&self, cls: usize, need: usize) -> *mut Chunk {
        let c = self.global.pop(cls);
        if c.is_null() {
            return c;
        }
        // SAFETY: popped under the lock; exclusively ours.
        unsafe {
            if !(*c).decommitted {
                return self.fit(reset_header(c, false), need);
            }
            // The data pages are zero; make the rest of the header page
            // zero too so the chunk is fresh.
            let page = os::page_size();
            c.cast::<u8>()
                .add(HEADER_SIZE)
                .write_bytes(0, page - HEADER_SIZE);
            self.fit(reset_header(c, true), need)
        }
    }

    /// A new chunk of class `cls` from the OS with its first `need` bytes
    /// (at least the header page) charged to the budget; null if the budget
    /// or the OS refuses. The rest of the mapping is untouched, so not
    /// committed, and is charged as it is used.
    pub fn map_new(&self, cls: usize, need: usize) -> *mut Chunk {
        let size = chunk_class_size(cls);
        let charge = need.max(1).next_multiple_of(os::page_size());
        check!(charge <= size, "charges stay inside the chunk");
        if !self.budget.try_reserve(charge) {
            return ptr::null_mut();
        }
        let layout = Layout::from_size_align(size, CHUNK_SIZE).ok();
        if let Some(Ok(mem)) = layout.map(|l| self.pages.allocate(l)) {
            let base = mem.cast::<u8>().as_ptr();
            // SAFETY: a fresh, exclusively owned mapping of `size` bytes,
            // 64 KiB aligned.
            let c = unsafe { Chunk::init_cached(base, size, true) };
            // SAFETY: as above; `charge` fits in 32 bits (chunk classes
            // are at most 2.25 MiB).
            unsafe { (*c).charged = charge as u32 };
            if chunk_map::register(base as usize, size, c as usize) {
                bump(&self.mapped_chunks, 1);
                return c;
            }
            // SAFETY: allocated just above with this layout.
            unsafe {
                self.pages.deallocate(mem.cast(), layout.unwrap_unchecked());
            }
        }
        self.budget.release(charge);
        ptr::null_mut()
    }

    /// Out of budget (or address space): gives back what is cached here
    /// and decommits the whole global cache.
    ///
    /// # Safety
    /// The caller holds the heap lock.
    pub unsafe fn relieve(&self) {
        // SAFETY: forwarded contract.
        unsafe { self.flush() };
        self.global
            .purge(os::now_ms(), true, self.budget, &self.pages);
        self.global.request_flush();
    }

    /// Returns a chunk with no live objects to the local list (or, over
    /// the reserve or near the budget cap, to the global cache).
    ///
    /// # Safety
    /// The caller holds the heap lock; `c` is a chunk of this provider's
    /// pages that nothing else references.
    pub unsafe fn release(&self, c: *mut Chunk) {
        // SAFETY: per the contract, `c` is ours and unreferenced.
        let c = unsafe { mark_cached(c) };
        // SAFETY: as above.
        let (cls, size) = unsafe {
            (
                crate::size_class::chunk_class_of((*c).size),
                Chunk::charged(c),
            )
        };
        let pressure = self.budget.under_pressure();
        if pressure || self.local_bytes.load(Ordering::Relaxed) + size > LOCAL_RESERVE_BYTES {
            // Over the reserve, or near the budget cap, where a thread that
            // fails must be able to purge what other (possibly idle)
            // threads freed: keep nothing private.
            // SAFETY: heap lock held.
            unsafe { self.flush_local() };
            if pressure {
                self.global.push_list(c, os::now_ms());
                return;
            }
        }
        // SAFETY: heap lock held; `c` exclusively ours.
        unsafe {
            let local = self.local();
            (*c).link.store(local[cls], Ordering::Relaxed);
            local[cls] = c;
        }
        bump(&self.local_bytes, size);
        bump(&self.local_count, 1);
    }

    /// Gives back a chunk from a thread that does not own this provider.
    /// After the push the caller touches nothing in the chunk.
    ///
    /// # Safety
    /// `c` is a chunk of this provider with no live objects, referenced by
    /// nothing else.
    pub unsafe fn push_shared(&self, c: *mut Chunk) {
        // SAFETY: per the contract, `c` is ours to hand over.
        let c = unsafe { mark_cached(c) };
        // SAFETY: as above.
        let (cls, size) = unsafe {
            (
                crate::size_class::chunk_class_of((*c).size),
                Chunk::charged(c),
            )
        };
        if self.budget.under_pressure() {
            // Near the cap the owner may be idle; put it where a failing
            // thread can purge it at once.
            self.global.push_list(c, os::now_ms());
        } else {
            // Counted before the push, so a reclaimer that sees the chunk
            // also sees the hint.
            self.shared_count.fetch_add(1, Ordering::Relaxed);
            self.shared_bytes.fetch_add(size, Ordering::Relaxed);
            // SAFETY: `c` is on no other list.
            unsafe { self.shared[cls].push(c) };
        }
    }

    /// # Safety
    /// The caller holds the heap lock.
    unsafe fn flush_local(&self) {
        if self.local_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut list: *mut Chunk = ptr::null_mut();
        // SAFETY: heap lock held.
        for head in unsafe { self.local() }.iter_mut() {
            let mut c = *head;
            *head = ptr::null_mut();
            while !c.is_null() {
                // SAFETY: our list.
                unsafe {
                    let next = (*c).link.load(Ordering::Relaxed);
                    (*c).link.store(list, Ordering::Relaxed);
                    list = c;
                    c = next;
                }
            }
        }
        self.local_bytes.store(0, Ordering::Relaxed);
        self.local_count.store(0, Ordering::Relaxed);
        let now = os::now_ms();
        self.last_flush_ms.store(now, Ordering::Relaxed);
        self.global.push_list(list, now);
    }

    /// Moves every cached chunk (local and shared) to the global cache.
    ///
    /// # Safety
    /// The caller holds the heap lock.
    pub unsafe fn flush(&self) {
        // SAFETY: forwarded contract.
        unsafe { self.flush_local() };
        self.flush_shared(os::now_ms());
    }

    /// Moves the shared stacks to the global cache. Any thread may call
    /// this (the stacks have no single-node pop).
    fn flush_shared(&self, now: u64) {
        if self.shared_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        for s in self.shared.iter() {
            let list = s.take_all();
            let mut c = list;
            let (mut n, mut bytes) = (0, 0);
            while !c.is_null() {
                n += 1;
                // SAFETY: the taken list is ours.
                unsafe {
                    bytes += Chunk::charged(c);
                    c = (*c).link.load(Ordering::Relaxed);
                }
            }
            if n != 0 {
                self.shared_count.fetch_sub(n, Ordering::Relaxed);
                self.shared_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.global.push_list(list, now);
            }
        }
    }

    /// What a thread reclaiming from an idle provider does: moves the
    /// shared stacks to the global cache, and the local lists too when they
    /// have waited a purge delay (or with `all`).
    ///
    /// # Safety
    /// The caller holds the heap lock.
    pub unsafe fn flush_idle(&self, now: u64, all: bool) {
        let stale = now.saturating_sub(self.last_flush_ms.load(Ordering::Relaxed))
            >= config::purge_delay_ms();
        if all || stale {
            // SAFETY: forwarded contract.
            unsafe { self.flush_local() };
        }
        self.flush_shared(now);
    }

    /// Slow-path housekeeping: flush local lists older than the purge delay
    /// or when another heap asked, and purge the global cache when due.
    ///
    /// # Safety
    /// The caller holds the heap lock.
    pub unsafe fn maintain(&self, now: u64) {
        let epoch = self.global.flush_epoch.load(Ordering::Acquire);
        // SAFETY: forwarded contract.
        unsafe {
            if epoch != self.seen_epoch.load(Ordering::Relaxed) {
                self.seen_epoch.store(epoch, Ordering::Relaxed);
                self.flush();
            } else if self.local_count.load(Ordering::Relaxed) > 0
                && now.saturating_sub(self.last_flush_ms.load(Ordering::Relaxed))
                    >= config::purge_delay_ms()
            {
                self.flush_local();
            }
        }
        self.global.purge(now, false, self.budget, &self.pages);
    }

    /// Flushes this provider and decommits everything in the global cache.
    /// Returns the bytes given back.
    ///
    /// # Safety
    /// The caller holds the heap lock.
    pub unsafe fn purge_all(&self) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.flush() };
        self.global
            .purge(os::now_ms(), true, self.budget, &self.pages)
    }
}

/// Re-initialises the header of a chunk taken from a cache.
///
/// # Safety
/// The caller owns `c` exclusively.
unsafe fn reset_header(c: *mut Chunk, fresh: bool) -> *mut Chunk {
    // SAFETY: per the contract.
    unsafe {
        let (size, charged) = ((*c).size, (*c).charged);
        let c = Chunk::init_cached(c.cast(), size, fresh);
        (*c).charged = charged;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allocator_api2::alloc::AllocError;
    use core::sync::atomic::AtomicUsize;

    /// A page source that counts live bytes.
    struct Counting(&'static AtomicUsize);

    // SAFETY: forwards to OsPages and only counts.
    unsafe impl Allocator for Counting {
        fn allocate(&self, l: Layout) -> Result<NonNull<[u8]>, AllocError> {
            let r = os::OsPages.allocate(l)?;
            self.0.fetch_add(l.size(), Ordering::Relaxed);
            Ok(r)
        }
        unsafe fn deallocate(&self, p: NonNull<u8>, l: Layout) {
            self.0.fetch_sub(l.size(), Ordering::Relaxed);
            // SAFETY: forwarded contract.
            unsafe { os::OsPages.deallocate(p, l) }
        }
    }

    fn leak<T>(v: T) -> &'static T {
        Box::leak(Box::new(v))
    }

    /// What a heap's chunk acquisition does, minus the other heaps: own
    /// lists, the global cache, the OS; out of budget, relieve and retry.
    fn get<A: Allocator>(p: &Provider<A>, cls: usize) -> *mut Chunk {
        for attempt in 0..2 {
            // SAFETY: the test is the provider's only user (its "lock").
            let c = unsafe { p.acquire(cls, chunk_class_size(cls)) };
            if !c.is_null() {
                return c;
            }
            let c = p.acquire_global(cls, chunk_class_size(cls));
            if !c.is_null() {
                return c;
            }
            let c = p.map_new(cls, chunk_class_size(cls));
            if !c.is_null() {
                return c;
            }
            if attempt == 0 {
                // SAFETY: as above.
                unsafe { p.relieve() };
            }
        }
        ptr::null_mut()
    }

    #[test]
    fn chunks_are_reused_cached_and_accounted_to_zero() {
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        let p = Provider::new(Counting(live), budget, global);
        let a = get(&p, 0);
        let b = get(&p, 7);
        assert!(!a.is_null() && !b.is_null());
        assert_eq!(a as usize % CHUNK_SIZE, 0);
        assert_eq!(budget.committed(), 64 * 1024 + 512 * 1024);
        assert_eq!(chunk_map::lookup(a as usize + 1000), a as usize);
        // SAFETY: chunks from this provider, unused.
        unsafe {
            p.release(a);
            p.release(b);
        }
        assert_eq!(get(&p, 0), a, "local list is reused first");
        // SAFETY: as above.
        unsafe { p.release(a) };
        // SAFETY: the test is the provider's only user.
        unsafe { p.flush() };
        let st = global.stats();
        assert_eq!(st.committed_count, 2);
        assert_eq!(get(&p, 7), b, "then the global cache");
        // SAFETY: as above.
        unsafe {
            p.release(b);
            p.purge_all();
        }
        let st = global.stats();
        assert_eq!(st.committed_count, 0);
        assert_eq!(st.decommitted_count, 2);
        assert_eq!(budget.committed(), 2 * os::page_size());
        // A decommitted chunk comes back fresh and zeroed.
        let b2 = get(&p, 7);
        assert_eq!(b2, b);
        // SAFETY: b2 is a committed chunk of 512 KiB.
        unsafe {
            assert!((*b2).fresh);
            let s = core::slice::from_raw_parts(
                b2.cast::<u8>().add(HEADER_SIZE),
                512 * 1024 - HEADER_SIZE,
            );
            assert!(s.iter().all(|&x| x == 0));
            p.release(b2);
            p.purge_all();
        }
        assert_eq!(live.load(Ordering::Relaxed), 64 * 1024 + 512 * 1024);
        // Unmapping everything returns the byte accounting to its start.
        global.lock.lock();
        for head in global.lists.iter() {
            let mut c = head.swap(ptr::null_mut(), Ordering::Relaxed);
            while !c.is_null() {
                // SAFETY: cached, unreachable chunks.
                unsafe {
                    let next = (*c).link.load(Ordering::Relaxed);
                    unmap_chunk(c, budget, &p.pages);
                    c = next;
                }
            }
        }
        global.lock.unlock();
        assert_eq!(live.load(Ordering::Relaxed), 0);
        assert_eq!(budget.committed(), 0);
    }

    /// Resident pages of `c` at or beyond its charged bytes (must be none:
    /// the charge is an upper bound of what is committed).
    fn resident_beyond_charge(c: *mut Chunk) -> usize {
        let page = os::page_size();
        // SAFETY: a live chunk header.
        let (size, charged) = unsafe { ((*c).size, Chunk::charged(c)) };
        let mut v = vec![0u8; size / page];
        // SAFETY: the chunk's mapping is `size` bytes; `v` has a byte per page.
        let r = unsafe { libc::mincore(c.cast(), size, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        v[charged / page..].iter().filter(|&&b| b & 1 != 0).count()
    }

    /// Takes every block on `c`'s free list (blocks of `bs` bytes),
    /// touching each whole. Returns how many.
    ///
    /// # Safety
    /// The test owns `c`, a slab of `bs`-byte blocks.
    unsafe fn take_free(c: *mut Chunk, bs: usize) -> usize {
        let mut n = 0;
        // SAFETY: per the contract; free blocks are ours to write.
        unsafe {
            while !(*c).free.is_null() {
                let b = (*c).free;
                (*c).free = (*b).next;
                b.cast::<u8>().write_bytes(0xa5, bs);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn slab_pages_are_charged_as_carved_and_released_to_zero() {
        let page = os::page_size();
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        let p = Provider::new(Counting(live), budget, global);
        let cls = crate::size_class::chunk_class_of(64 * 1024);
        // A new chunk is charged only what its first block needs.
        let c = p.map_new(cls, HEADER_SIZE + 48);
        assert!(!c.is_null());
        assert_eq!(budget.committed(), page);
        assert_eq!(live.load(Ordering::Relaxed), 64 * 1024, "mapped whole");
        // SAFETY: the test owns the chunk (its provider's only user).
        unsafe {
            Chunk::init_slab(c, 2, 48, 1 << 6);
            let mut blocks = 0;
            while Chunk::refill(c, budget, &mut 0) {
                blocks += take_free(c, 48);
                let reach = (*c).bump as usize - c as usize;
                assert_eq!(Chunk::charged(c), reach.next_multiple_of(page));
                assert_eq!(budget.committed(), Chunk::charged(c));
                assert_eq!(resident_beyond_charge(c), 0);
            }
            assert_eq!(blocks, (64 * 1024 - HEADER_SIZE) / 48);
            assert_eq!(budget.committed(), 64 * 1024);
            // Retired: cached at what it is charged; purged: the header
            // page stays; unmapped: nothing.
            p.release(c);
            assert_eq!(p.counters().0, 64 * 1024);
            p.purge_all();
            assert_eq!(global.stats().committed_bytes, 0);
            assert_eq!(budget.committed(), page);
            assert_eq!(resident_beyond_charge(c), 0);
            // A decommitted chunk comes back charged only for the need.
            let c2 = p.acquire_global(cls, HEADER_SIZE + 4000);
            assert_eq!(c2, c);
            assert_eq!(Chunk::charged(c2), 2 * page);
            assert_eq!(budget.committed(), 2 * page);
            assert!((*c2).fresh);
            p.release(c2);
            p.purge_all();
            assert_eq!(budget.committed(), page);
            unmap_all(global, budget, &p.pages);
        }
        assert_eq!(live.load(Ordering::Relaxed), 0);
        assert_eq!(budget.committed(), 0);
    }

    #[test]
    fn carving_under_the_cap_uses_charged_pages_then_stops() {
        let page = os::page_size();
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        budget.set_limit(Some(3 * page));
        let p = Provider::new(Counting(live), budget, global);
        let cls = crate::size_class::chunk_class_of(64 * 1024);
        let c = p.map_new(cls, HEADER_SIZE + 1024);
        assert!(!c.is_null());
        // SAFETY: the test owns the chunk.
        unsafe {
            Chunk::init_slab(c, 0, 1024, 1 << 6);
            let mut blocks = 0;
            while Chunk::refill(c, budget, &mut 0) {
                blocks += take_free(c, 1024);
                assert!(budget.committed() <= 3 * page);
            }
            // Every block that fits wholly in the three pages charged was
            // handed out; the refusal left the rest of the bump area.
            assert_eq!(blocks, (3 * page - HEADER_SIZE) / 1024);
            assert_eq!(Chunk::charged(c), 3 * page);
            assert!((*c).bump < (*c).end, "refused, not exhausted");
            assert_eq!(resident_beyond_charge(c), 0);
            // Room again: carving resumes.
            budget.set_limit(Some(4 * page));
            assert!(Chunk::refill(c, budget, &mut 0));
            assert_eq!(budget.committed(), 4 * page);
            budget.set_limit(None);
            p.release(c);
            p.purge_all();
            unmap_all(global, budget, &p.pages);
        }
        assert_eq!(budget.committed(), 0);
    }

    #[test]
    fn reused_chunks_keep_an_upper_bound_and_trim_near_the_cap() {
        let page = os::page_size();
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        let p = Provider::new(Counting(live), budget, global);
        // A large object of 1 MiB: charged up to its last page, not the
        // 1.125 MiB chunk class its header pushes it into.
        let need = HEADER_SIZE + 1024 * 1024;
        let cls = crate::size_class::chunk_class_of(need);
        let c = p.map_new(cls, need);
        assert_eq!(chunk_class_size(cls), 1024 * 1024 + 128 * 1024);
        assert_eq!(budget.committed(), need.next_multiple_of(page));
        // SAFETY: the test owns the chunk.
        unsafe {
            c.cast::<u8>().add(HEADER_SIZE).write_bytes(7, 1024 * 1024);
            assert_eq!(resident_beyond_charge(c), 0);
            // Cached and reused for a smaller object without pressure: the
            // committed tail stays charged (still an upper bound).
            p.release(c);
            let c2 = p.acquire(cls, HEADER_SIZE + 100 * 1024);
            assert_eq!(c2, c);
            assert_eq!(Chunk::charged(c2), need.next_multiple_of(page));
            assert_eq!(resident_beyond_charge(c2), 0);
            // Near the cap, the tail beyond the need is given back.
            p.release(c2);
            budget.set_limit(Some(budget.committed()));
            let c3 = p.acquire(cls, HEADER_SIZE + 100 * 1024);
            assert_eq!(c3, c);
            let keep = (HEADER_SIZE + 100 * 1024).next_multiple_of(page);
            assert_eq!(Chunk::charged(c3), keep);
            assert_eq!(budget.committed(), keep);
            assert_eq!(resident_beyond_charge(c3), 0);
            // Growing back is charged again, within the cap.
            assert!(Chunk::charge_to(c3, need, budget));
            assert!(!Chunk::charge_to(c3, need + 64 * 1024, budget), "cap");
            budget.set_limit(None);
            p.release(c3);
            p.purge_all();
            unmap_all(global, budget, &p.pages);
        }
        assert_eq!(budget.committed(), 0);
        assert_eq!(live.load(Ordering::Relaxed), 0);
    }

    /// Unmaps every chunk in a test's global cache.
    ///
    /// # Safety
    /// The cache's chunks are unreferenced and were mapped by `pages`.
    unsafe fn unmap_all<A: Allocator>(global: &GlobalCache, budget: &Budget, pages: &A) {
        global.lock.lock();
        for head in global.lists.iter() {
            let mut c = head.swap(ptr::null_mut(), Ordering::Relaxed);
            while !c.is_null() {
                // SAFETY: per the contract.
                unsafe {
                    let next = (*c).link.load(Ordering::Relaxed);
                    global.count(c, false);
                    unmap_chunk(c, budget, pages);
                    c = next;
                }
            }
        }
        global.lock.unlock();
    }

    #[test]
    fn budget_failure_returns_null_and_recovers() {
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        budget.set_limit(Some(3 * 64 * 1024));
        let p = Provider::new(Counting(live), budget, global);
        let cs: Vec<_> = (0..3).map(|_| get(&p, 0)).collect();
        assert!(cs.iter().all(|c| !c.is_null()));
        assert!(get(&p, 0).is_null(), "cap reached");
        assert!(budget.committed() <= 3 * 64 * 1024);
        // SAFETY: unused chunks of this provider.
        unsafe { p.release(cs[0]) };
        assert_eq!(get(&p, 0), cs[0]);
        // A cached chunk of another class is decommitted to make room.
        // SAFETY: as above.
        unsafe { p.release(cs[1]) };
        let big = get(&p, 1);
        assert!(
            big.is_null(),
            "128 KiB does not fit even after purging 60 KiB"
        );
        assert!(budget.committed() <= 3 * 64 * 1024);
    }

    #[test]
    fn remote_returns_reach_the_owner() {
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        let p = Provider::new(Counting(live), budget, global);
        let cs: Vec<usize> = (0..16).map(|_| get(&p, 0) as usize).collect();
        let pr = &p;
        std::thread::scope(|s| {
            for part in cs.chunks(4) {
                s.spawn(move || {
                    for &c in part {
                        // SAFETY: each chunk is returned once, unused.
                        unsafe { pr.push_shared(c as *mut Chunk) };
                    }
                });
            }
        });
        let mut back: Vec<usize> = (0..16).map(|_| get(&p, 0) as usize).collect();
        back.sort();
        let mut want = cs.clone();
        want.sort();
        assert_eq!(back, want);
        assert_eq!(p.counters().2, 16);
    }
}

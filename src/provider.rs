//! The ChunkProvider (one per heap) and the process-wide chunk cache.
//!
//! Adapted from the seed's `ChunkProvider`: per chunk class an owner-only
//! local list and a lock-free shared stack ([`ChunkStack`]) that any thread
//! may push to and only the owner pops. Every byte mapped is reserved in
//! the [`Budget`] first, by a CAS that never overshoots the cap.
//!
//! Whole free chunks flow: owner's local list (at most
//! [`LOCAL_RESERVE_BYTES`], and only until the purge delay passes) →
//! [`GlobalCache`] (shared by every heap, under a [`SpinLock`]) → decommitted
//! after the purge delay (`MADV_DONTNEED` of all but the header page) →
//! unmapped when the cache holds more than [`GLOBAL_MAX_DECOMMITTED`]
//! decommitted chunks. A heap draws from its own lists, then the global
//! cache, then the OS, so no chunk is stranded in an idle thread once it
//! has flushed.

use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use allocator_api2::alloc::{Allocator, Layout};

use crate::budget::Budget;
use crate::chunk::{Chunk, ChunkStack, HEADER_SIZE};
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
pub const HUGE_SLOTS: usize = 4;
/// At most this many bytes of huge mappings are kept.
pub const HUGE_CACHE_MAX_BYTES: usize = 256 << 20;

/// The process-wide cache of free chunks, per chunk class, plus a few
/// recently freed huge mappings.
pub struct GlobalCache {
    lock: SpinLock,
    lists: UnsafeCell<[*mut Chunk; NUM_CHUNK_CLASSES]>,
    huge: UnsafeCell<[*mut Chunk; HUGE_SLOTS]>,
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

// SAFETY: `lists` is only accessed with `lock` held; the counters are atomics.
unsafe impl Sync for GlobalCache {}

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
            lists: UnsafeCell::new([ptr::null_mut(); NUM_CHUNK_CLASSES]),
            huge: UnsafeCell::new([ptr::null_mut(); HUGE_SLOTS]),
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
        // SAFETY: a racy read of slot pointers, only to count them.
        let huge_n = unsafe { (*self.huge.get()).iter().filter(|c| !c.is_null()).count() };
        CacheStats {
            committed_count: self.committed_count.load(Ordering::Relaxed) + huge_n,
            committed_bytes: self.committed_bytes.load(Ordering::Relaxed)
                + self.huge_bytes.load(Ordering::Relaxed),
            decommitted_count: self.decommitted_count.load(Ordering::Relaxed),
            decommitted_bytes: self.decommitted_bytes.load(Ordering::Relaxed),
        }
    }

    /// The lock, for the `fork` handlers.
    pub(crate) fn lock(&self) -> &SpinLock {
        &self.lock
    }

    /// Asks every provider to flush its local lists on its next slow path.
    pub fn request_flush(&self) {
        self.flush_epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn count(&self, c: *mut Chunk, add: bool) {
        // SAFETY: `c` is a chunk in (or entering/leaving) the cache, and the
        // lock is held, so its header is stable.
        let (dec, size) = unsafe { ((*c).decommitted, (*c).size) };
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

    /// Adds a list of chunks (linked through `link`) of any classes.
    fn push_list(&self, mut c: *mut Chunk, now: u64) {
        if c.is_null() {
            return;
        }
        self.lock.lock();
        // SAFETY: lock held; the chunks are exclusively ours until linked.
        unsafe {
            let lists = &mut *self.lists.get();
            while !c.is_null() {
                let next = (*c).link.load(Ordering::Relaxed);
                let cls = crate::size_class::chunk_class_of((*c).size);
                (*c).cached_at = now;
                (*c).link.store(lists[cls], Ordering::Relaxed);
                lists[cls] = c;
                self.count(c, true);
                c = next;
            }
        }
        self.lock.unlock();
        let due = now.saturating_add(config::purge_delay_ms());
        self.next_purge_ms.fetch_min(due, Ordering::Relaxed);
    }

    /// Keeps a freed huge mapping (kind `Cached`, still registered in the
    /// chunk map, still counted in the budget) for reuse. False if the
    /// cache is full; the caller then unmaps it.
    ///
    /// # Safety
    /// `c` is a huge mapping with no live object, referenced by nothing else.
    pub unsafe fn put_huge(&self, c: *mut Chunk, now: u64) -> bool {
        // SAFETY: per the contract.
        let size = unsafe { (*c).size };
        if self.huge_bytes.load(Ordering::Relaxed) + size > HUGE_CACHE_MAX_BYTES {
            return false;
        }
        self.lock.lock();
        // SAFETY: lock held.
        let slots = unsafe { &mut *self.huge.get() };
        let put = match slots.iter_mut().find(|s| s.is_null()) {
            Some(slot) => {
                // SAFETY: exclusively ours until published in the slot.
                unsafe {
                    mark_cached(c);
                    (*c).cached_at = now;
                }
                *slot = c;
                self.huge_bytes.fetch_add(size, Ordering::Relaxed);
                true
            }
            None => false,
        };
        self.lock.unlock();
        if put {
            let due = now.saturating_add(huge_delay(config::purge_delay_ms()));
            self.next_purge_ms.fetch_min(due, Ordering::Relaxed);
        }
        put
    }

    /// Takes a cached huge mapping for a request of `len` bytes: the
    /// smallest one that fits, else the largest (which the caller grows).
    /// Null if none is cached.
    pub fn take_huge(&self, len: usize) -> *mut Chunk {
        if self.huge_bytes.load(Ordering::Relaxed) == 0 {
            return ptr::null_mut();
        }
        self.lock.lock();
        // SAFETY: lock held; cached chunks in the slots are stable under it.
        let slots = unsafe { &mut *self.huge.get() };
        let mut fit: Option<(usize, usize)> = None;
        let mut largest: Option<(usize, usize)> = None;
        for (i, s) in slots.iter().enumerate() {
            if s.is_null() {
                continue;
            }
            // SAFETY: a cached mapping, stable under the lock.
            let size = unsafe { (**s).size };
            if size >= len && fit.is_none_or(|(_, f)| size < f) {
                fit = Some((i, size));
            }
            if largest.is_none_or(|(_, l)| size > l) {
                largest = Some((i, size));
            }
        }
        let c = match fit.or(largest) {
            Some((i, _)) => core::mem::replace(&mut slots[i], ptr::null_mut()),
            None => ptr::null_mut(),
        };
        if !c.is_null() {
            // SAFETY: just unlinked; ours.
            self.huge_bytes
                .fetch_sub(unsafe { (*c).size }, Ordering::Relaxed);
        }
        self.lock.unlock();
        c
    }

    /// Takes a chunk of class `cls`, preferring committed ones (they sit at
    /// the front: the list is LIFO and purging works from old to new).
    fn pop(&self, cls: usize) -> *mut Chunk {
        // SAFETY: read of a plain pointer; a stale answer only costs a lock.
        if unsafe { (*self.lists.get())[cls].is_null() } {
            return ptr::null_mut();
        }
        self.lock.lock();
        // SAFETY: lock held.
        let c = unsafe {
            let lists = &mut *self.lists.get();
            let c = lists[cls];
            if !c.is_null() {
                lists[cls] = (*c).link.load(Ordering::Relaxed);
                self.count(c, false);
            }
            c
        };
        self.lock.unlock();
        c
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
            let lists = &mut *self.lists.get();
            for head in lists.iter_mut() {
                let mut prev: *mut Chunk = ptr::null_mut();
                let mut c = *head;
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
                        && self.decommitted_count.load(Ordering::Relaxed) > GLOBAL_MAX_DECOMMITTED
                    {
                        // Unlink and unmap after the lock is dropped.
                        self.count(c, false);
                        if prev.is_null() {
                            *head = next;
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
            for slot in (*self.huge.get()).iter_mut() {
                let c = *slot;
                if c.is_null() {
                    continue;
                }
                if force || (*c).cached_at.saturating_add(huge_delay(delay)) <= now {
                    *slot = ptr::null_mut();
                    self.huge_bytes.fetch_sub((*c).size, Ordering::Relaxed);
                    (*c).link.store(to_unmap, Ordering::Relaxed);
                    to_unmap = c;
                } else {
                    next_due = next_due.min((*c).cached_at.saturating_add(huge_delay(delay)));
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

/// How long a freed huge mapping is kept: a tenth of the purge delay
/// (10 ms by default). Huge mappings are many MiB each, so keeping them as
/// long as chunks would cost more resident memory than the faults it saves.
fn huge_delay(delay: u64) -> u64 {
    delay / 10
}

/// Marks a chunk free (kind `Cached`, no owner, not a slab, unlinked) and
/// returns its size.
///
/// # Safety
/// The caller holds `c` exclusively and it has no live objects.
unsafe fn mark_cached(c: *mut Chunk) -> usize {
    // SAFETY: per the contract.
    unsafe {
        (*c).kind = crate::chunk::Kind::Cached;
        Chunk::set_tag(c, 0, crate::chunk::FLAG_NOT_SLAB);
        (*c).link.store(ptr::null_mut(), Ordering::Relaxed);
        (*c).size
    }
}

/// Decommits a cached chunk's data pages (all but the header page).
/// Returns the bytes released from the budget.
///
/// # Safety
/// `c` is a committed cached chunk the caller has exclusive access to.
unsafe fn decommit_chunk(c: *mut Chunk, budget: &Budget) -> usize {
    let page = os::page_size();
    // SAFETY: exclusive access per the contract; the range is inside it.
    unsafe {
        let size = (*c).size;
        os::decommit(c.cast::<u8>().add(page), size - page);
        (*c).decommitted = true;
        budget.release(size - page);
        size - page
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
        let committed = if (*c).decommitted {
            os::page_size()
        } else {
            size
        };
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

/// Per-heap chunk source and cache. Owner-only except [`Provider::push_shared`].
pub struct Provider<A: Allocator + 'static> {
    pages: A,
    budget: &'static Budget,
    global: &'static GlobalCache,
    /// Owner-only LIFO lists (linked through `link`, used non-atomically).
    local: [*mut Chunk; NUM_CHUNK_CLASSES],
    /// Chunks other threads returned to this provider.
    shared: [ChunkStack; NUM_CHUNK_CLASSES],
    /// Committed bytes in `local` (owner-written; read by `stats`).
    local_bytes: AtomicUsize,
    /// Chunks in `local` (owner-written; read by `stats`).
    local_count: AtomicUsize,
    /// When `local` was last flushed to the global cache.
    last_flush_ms: u64,
    /// The global flush epoch last honoured.
    seen_epoch: u64,
    /// Chunks mapped from the OS by this provider (lifetime count).
    mapped_chunks: AtomicUsize,
    /// Chunks served from a cache (lifetime count).
    reused_chunks: AtomicUsize,
}

// SAFETY: the owner-only fields are touched only by the heap's current owner
// thread (ownership moves with adoption under the abandoned-list lock);
// `shared` is a lock-free stack for which any thread may push.
unsafe impl<A: Allocator + Send + 'static> Send for Provider<A> {}
// SAFETY: see `Send`; through `&Provider` other threads only push.
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
            local: [ptr::null_mut(); NUM_CHUNK_CLASSES],
            shared: [EMPTY_STACK; NUM_CHUNK_CLASSES],
            local_bytes: AtomicUsize::new(0),
            local_count: AtomicUsize::new(0),
            last_flush_ms: 0,
            seen_epoch: 0,
            mapped_chunks: AtomicUsize::new(0),
            reused_chunks: AtomicUsize::new(0),
        }
    }

    /// Committed bytes and chunks in the local lists, and the lifetime
    /// counts of chunks mapped and reused. Any thread may call this.
    pub fn counters(&self) -> (usize, usize, usize, usize) {
        (
            self.local_bytes.load(Ordering::Relaxed),
            self.local_count.load(Ordering::Relaxed),
            self.mapped_chunks.load(Ordering::Relaxed),
            self.reused_chunks.load(Ordering::Relaxed),
        )
    }

    /// A chunk of class `cls` with a fresh cached header (`Kind::Cached`),
    /// committed and charged to the budget; null if the budget or the OS
    /// refuses even after purging caches.
    pub fn acquire(&mut self, cls: usize) -> *mut Chunk {
        // 1. Own local list.
        let c = self.local[cls];
        if !c.is_null() {
            // SAFETY: owner-only list of cached chunks.
            unsafe {
                self.local[cls] = (*c).link.load(Ordering::Relaxed);
                bump(&self.local_bytes, (*c).size.wrapping_neg());
            }
            bump(&self.local_count, usize::MAX);
            bump(&self.reused_chunks, 1);
            // SAFETY: exclusively ours now.
            return unsafe { reset_header(c, false) };
        }
        // 2. Chunks other threads gave back.
        // SAFETY: the provider's owner is the single popper.
        let c = unsafe { self.shared[cls].pop() };
        if !c.is_null() {
            bump(&self.reused_chunks, 1);
            // SAFETY: exclusively ours now.
            return unsafe { reset_header(c, false) };
        }
        self.acquire_slow(cls)
    }

    #[cold]
    fn acquire_slow(&mut self, cls: usize) -> *mut Chunk {
        self.maintain(os::now_ms());
        for attempt in 0..2 {
            // 3. The process-wide cache.
            let c = self.global.pop(cls);
            if !c.is_null() {
                bump(&self.reused_chunks, 1);
                // SAFETY: popped under the lock; exclusively ours.
                unsafe {
                    if (*c).decommitted {
                        let page = os::page_size();
                        if !self.budget.try_reserve((*c).size - page) {
                            // Put it back decommitted; fall through to purging.
                            (*c).link.store(ptr::null_mut(), Ordering::Relaxed);
                            self.global.push_list(c, (*c).cached_at);
                        } else {
                            // The data pages are zero; make the rest of the
                            // header page zero too so the chunk is fresh.
                            c.cast::<u8>()
                                .add(HEADER_SIZE)
                                .write_bytes(0, page - HEADER_SIZE);
                            return reset_header(c, true);
                        }
                    } else {
                        return reset_header(c, false);
                    }
                }
            }
            // 4. The OS.
            let size = chunk_class_size(cls);
            if self.budget.try_reserve(size) {
                let layout = Layout::from_size_align(size, CHUNK_SIZE).ok();
                if let Some(Ok(mem)) = layout.map(|l| self.pages.allocate(l)) {
                    let base = mem.cast::<u8>().as_ptr();
                    // SAFETY: a fresh, exclusively owned mapping of `size`
                    // bytes, 64 KiB aligned.
                    let c = unsafe { Chunk::init_cached(base, size, true) };
                    if chunk_map::register(base as usize, size, c as usize) {
                        bump(&self.mapped_chunks, 1);
                        return c;
                    }
                    // SAFETY: allocated just above with this layout.
                    unsafe {
                        self.pages.deallocate(mem.cast(), layout.unwrap_unchecked());
                    }
                }
                self.budget.release(size);
            }
            if attempt == 0 {
                // Out of budget (or address space): give back what is
                // cached here and globally, ask other heaps to do the same
                // on their next slow path, and try once more.
                self.flush();
                self.global
                    .purge(os::now_ms(), true, self.budget, &self.pages);
                self.global.request_flush();
            }
        }
        ptr::null_mut()
    }

    /// Returns a chunk with no live objects (owner thread).
    ///
    /// # Safety
    /// `c` is a chunk of this provider's pages that nothing else references.
    pub unsafe fn release(&mut self, c: *mut Chunk) {
        // SAFETY: per the contract, `c` is ours and unreferenced.
        let size = unsafe { mark_cached(c) };
        let pressure = self.budget.under_pressure();
        if pressure || self.local_bytes.load(Ordering::Relaxed) + size > LOCAL_RESERVE_BYTES {
            // Over the reserve, or near the budget cap, where a thread that
            // fails must be able to purge what other (possibly idle)
            // threads freed: keep nothing private.
            self.flush_local();
            if pressure {
                self.global.push_list(c, os::now_ms());
                return;
            }
        }
        let cls = crate::size_class::chunk_class_of(size);
        // SAFETY: exclusively ours.
        unsafe { (*c).link.store(self.local[cls], Ordering::Relaxed) };
        self.local[cls] = c;
        bump(&self.local_bytes, size);
        bump(&self.local_count, 1);
    }

    /// Gives back a chunk from a thread that does not own this provider.
    ///
    /// # Safety
    /// `c` is a chunk of this provider with no live objects, referenced by
    /// nothing else.
    pub unsafe fn push_shared(&self, c: *mut Chunk) {
        // SAFETY: per the contract, `c` is ours to hand over.
        let size = unsafe { mark_cached(c) };
        if self.budget.under_pressure() {
            // Near the cap the owner may be idle; put it where a failing
            // thread can purge it.
            self.global.push_list(c, os::now_ms());
        } else {
            // SAFETY: `c` is on no other list.
            unsafe { self.shared[crate::size_class::chunk_class_of(size)].push(c) };
        }
    }

    fn flush_local(&mut self) {
        let mut list: *mut Chunk = ptr::null_mut();
        for head in self.local.iter_mut() {
            let mut c = *head;
            *head = ptr::null_mut();
            while !c.is_null() {
                // SAFETY: owner-only list.
                let next = unsafe { (*c).link.load(Ordering::Relaxed) };
                // SAFETY: as above.
                unsafe { (*c).link.store(list, Ordering::Relaxed) };
                list = c;
                c = next;
            }
        }
        self.local_bytes.store(0, Ordering::Relaxed);
        self.local_count.store(0, Ordering::Relaxed);
        let now = os::now_ms();
        self.last_flush_ms = now;
        self.global.push_list(list, now);
    }

    /// Moves every cached chunk (local and shared) to the global cache.
    pub fn flush(&mut self) {
        self.flush_local();
        let now = os::now_ms();
        for s in self.shared.iter() {
            let list = s.take_all();
            self.global.push_list(list, now);
        }
    }

    /// Slow-path housekeeping: flush local lists older than the purge delay
    /// or when another heap asked, and purge the global cache when due.
    pub fn maintain(&mut self, now: u64) {
        let epoch = self.global.flush_epoch.load(Ordering::Acquire);
        if epoch != self.seen_epoch {
            self.seen_epoch = epoch;
            self.flush();
        } else if self.local_count.load(Ordering::Relaxed) > 0
            && now.saturating_sub(self.last_flush_ms) >= config::purge_delay_ms()
        {
            self.flush_local();
        }
        self.global.purge(now, false, self.budget, &self.pages);
    }

    /// Flushes this provider and decommits everything in the global cache.
    /// Returns the bytes given back.
    pub fn purge_all(&mut self) -> usize {
        self.flush();
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
        let size = (*c).size;
        Chunk::init_cached(c.cast(), size, fresh)
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

    #[test]
    fn chunks_are_reused_cached_and_accounted_to_zero() {
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        let mut p = Provider::new(Counting(live), budget, global);
        let a = p.acquire(0);
        let b = p.acquire(7);
        assert!(!a.is_null() && !b.is_null());
        assert_eq!(a as usize % CHUNK_SIZE, 0);
        assert_eq!(budget.committed(), 64 * 1024 + 512 * 1024);
        assert_eq!(chunk_map::lookup(a as usize + 1000), a as usize);
        // SAFETY: chunks from this provider, unused.
        unsafe {
            p.release(a);
            p.release(b);
        }
        assert_eq!(p.acquire(0), a, "local list is reused first");
        // SAFETY: as above.
        unsafe { p.release(a) };
        p.flush();
        let st = global.stats();
        assert_eq!(st.committed_count, 2);
        assert_eq!(p.acquire(7), b, "then the global cache");
        // SAFETY: as above.
        unsafe { p.release(b) };
        p.purge_all();
        let st = global.stats();
        assert_eq!(st.committed_count, 0);
        assert_eq!(st.decommitted_count, 2);
        assert_eq!(budget.committed(), 2 * os::page_size());
        // A decommitted chunk comes back fresh and zeroed.
        let b2 = p.acquire(7);
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
        }
        p.purge_all();
        assert_eq!(live.load(Ordering::Relaxed), 64 * 1024 + 512 * 1024);
        // Unmapping everything returns the byte accounting to its start.
        global.lock.lock();
        // SAFETY: test-only teardown with the lock held.
        let lists = unsafe { &mut *global.lists.get() };
        for head in lists.iter_mut() {
            let mut c = *head;
            *head = ptr::null_mut();
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

    #[test]
    fn budget_failure_returns_null_and_recovers() {
        let live = leak(AtomicUsize::new(0));
        let budget = leak(Budget::new());
        let global = leak(GlobalCache::new());
        budget.set_limit(Some(3 * 64 * 1024));
        let mut p = Provider::new(Counting(live), budget, global);
        let cs: Vec<_> = (0..3).map(|_| p.acquire(0)).collect();
        assert!(cs.iter().all(|c| !c.is_null()));
        assert!(p.acquire(0).is_null(), "cap reached");
        assert!(budget.committed() <= 3 * 64 * 1024);
        // SAFETY: unused chunks of this provider.
        unsafe { p.release(cs[0]) };
        assert_eq!(p.acquire(0), cs[0]);
        // A cached chunk of another class is decommitted to make room.
        // SAFETY: as above.
        unsafe { p.release(cs[1]) };
        let big = p.acquire(1);
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
        let mut p = Provider::new(Counting(live), budget, global);
        let cs: Vec<usize> = (0..16).map(|_| p.acquire(0) as usize).collect();
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
        let mut back: Vec<usize> = (0..16).map(|_| p.acquire(0) as usize).collect();
        back.sort();
        let mut want = cs.clone();
        want.sort();
        assert_eq!(back, want);
        assert_eq!(p.counters().2, 16);
    }
}

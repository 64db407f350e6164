//! The set of heaps: records, thread attach and exit (abandonment and
//! adoption), and reclamation across heaps, so that no freed memory waits
//! for its owner thread to run.
//!
//! Every heap record lives in memory mapped for it and is never freed
//! (other threads keep pointers to it: chunk tags, the pending stacks). A
//! heap whose thread exits is *abandoned*: collected, its caches given to
//! the global cache, every attached chunk armed so that the remote free
//! that makes it collectable queues it on the heap's pending stack. The
//! next thread that needs a heap adopts one whole, so the number of
//! records is bounded by the peak number of threads alive at once.
//!
//! Reclamation (who may take what from whom, `docs/DESIGN.md`):
//! * any thread, holding a heap's lock, may empty an **abandoned** heap
//!   (its pending stack and caches) into the global cache;
//! * from a **live** heap it may take the shared stacks, stale local lists
//!   (all of them when out of budget or purging) and detached chunks
//!   whose every block was freed remotely; never the owner's attached
//!   chunks, which the owner's lock-free fast paths touch;
//! * a live heap whose thread no longer exists (it attached in its last
//!   key-destructor round, when no destructor would abandon it) is
//!   abandoned by whoever finds it so.
//!
//! When it happens: before a heap maps a new chunk (abandoned heaps with
//! something queued); when the budget refuses (every heap, without
//! waiting on a lock, since the caller holds its own); in `purge()` and
//! `malloc_trim` (every heap, waiting for each lock, holding none); and
//! every two purge delays from some thread's slow path (every heap whose
//! lock is free).
//!
//! Lock order: a thread holding its own heap lock only *tries* other heap
//! locks; a thread that waits for a heap lock holds no heap lock. The
//! registry and global-cache locks are innermost (their holders take no
//! other lock), so no cycle can form.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::budget;
use crate::chunk::EMPTY_CHUNK;
use crate::chunk_map;
use crate::config;
use crate::heap::{self, Heap, STATE_ABANDONED, STATE_LIVE, STATE_ORPHANED};
use crate::os;
use crate::sync::SpinLock;

struct Registry {
    lock: SpinLock,
    /// Every heap ever created (a push-only list, readable without the lock).
    all: AtomicPtr<Heap>,
    /// Abandoned heaps (under `lock`).
    abandoned: core::cell::UnsafeCell<*mut Heap>,
    abandoned_count: AtomicUsize,
    /// Unused space for heap records (under `lock`).
    carve: core::cell::UnsafeCell<(usize, usize)>,
}

// SAFETY: the UnsafeCell fields are only touched with `lock` held.
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry {
    lock: SpinLock::new(),
    all: AtomicPtr::new(ptr::null_mut()),
    abandoned: core::cell::UnsafeCell::new(ptr::null_mut()),
    abandoned_count: AtomicUsize::new(0),
    carve: core::cell::UnsafeCell::new((0, 0)),
};

/// Bytes mapped at a time for heap records.
const RECORD_REGION: usize = 256 * 1024;

/// When the next sweep of every heap is due (ms).
static NEXT_SWEEP_MS: AtomicU64 = AtomicU64::new(0);

/// The calling thread's process and thread ids.
fn ids() -> (i32, i32) {
    (os::getpid(), os::gettid())
}

/// A heap for the calling thread: an abandoned one if any (adopted whole),
/// else a new record. Null if no memory can be had.
pub fn acquire() -> *mut Heap {
    let (pid, tid) = ids();
    REGISTRY.lock.lock();
    // SAFETY: lock held for the abandoned list and the carve region.
    let heap = unsafe {
        let ab = &mut *REGISTRY.abandoned.get();
        if !ab.is_null() {
            let h = *ab;
            *ab = (*h).abandoned_next;
            REGISTRY.abandoned_count.fetch_sub(1, Ordering::Relaxed);
            h
        } else {
            new_record(pid, tid)
        }
    };
    REGISTRY.lock.unlock();
    if heap.is_null() {
        return heap;
    }
    // SAFETY: the heap is off the abandoned list (or new), so it is ours;
    // a sweeper may still hold its lock, which we wait for.
    unsafe {
        (*heap).lock.lock();
        (*heap).pid.store(pid, Ordering::Relaxed);
        (*heap).tid.store(tid, Ordering::Relaxed);
        if (*heap).state.load(Ordering::Relaxed) == STATE_ABANDONED {
            heap::adopt(heap);
        }
        (*heap).lock.unlock();
    }
    heap
}

/// Carves a new heap record. Lock held by the caller.
unsafe fn new_record(pid: i32, tid: i32) -> *mut Heap {
    // Every record keeps a view of the chunk map (its fast free path reads
    // it), so the map is chosen before the first record.
    chunk_map::reserve();
    let size = core::mem::size_of::<Heap>().next_multiple_of(64);
    // SAFETY: lock held by the caller.
    let carve = unsafe { &mut *REGISTRY.carve.get() };
    if carve.1 - carve.0 < size {
        if !budget::GLOBAL.try_reserve(RECORD_REGION) {
            return ptr::null_mut();
        }
        let p = os::map_aligned(RECORD_REGION, os::page_size(), 0);
        if p.is_null() {
            budget::GLOBAL.release(RECORD_REGION);
            return p.cast();
        }
        *carve = (p as usize, p as usize + RECORD_REGION);
    }
    let h = carve.0 as *mut Heap;
    carve.0 += size;
    // SAFETY: `h` is fresh, exclusively owned, aligned memory of `size`.
    unsafe {
        h.write(Heap::new(EMPTY_CHUNK.as_ptr(), STATE_LIVE));
        (*h).set_map_view(chunk_map::view());
        (*h).pid.store(pid, Ordering::Relaxed);
        (*h).tid.store(tid, Ordering::Relaxed);
        // Publish on the all-heaps list (push-only, so readers can walk it
        // without the lock).
        let mut head = REGISTRY.all.load(Ordering::Relaxed);
        loop {
            (*h).all_next = head;
            match REGISTRY
                .all
                .compare_exchange_weak(head, h, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(x) => head = x,
            }
        }
    }
    h
}

/// Abandons a heap whose thread is exiting, for the next thread to adopt.
///
/// # Safety
/// Called by the heap's owner thread, which never uses it again.
pub unsafe fn abandon(heap: *mut Heap) {
    if heap::is_empty(heap) {
        return;
    }
    // SAFETY: owner thread.
    unsafe {
        (*heap).lock.lock();
        heap::make_abandoned(heap);
        (*heap).lock.unlock();
        push_abandoned(heap);
    }
}

/// # Safety
/// `heap` was just made abandoned and is on no list.
unsafe fn push_abandoned(heap: *mut Heap) {
    REGISTRY.lock.lock();
    // SAFETY: lock held.
    unsafe {
        let ab = &mut *REGISTRY.abandoned.get();
        (*heap).abandoned_next = *ab;
        *ab = heap;
    }
    REGISTRY.abandoned_count.fetch_add(1, Ordering::Relaxed);
    REGISTRY.lock.unlock();
}

/// Calls `f` on every heap record except `me` that is not orphaned.
fn for_each_other(me: *mut Heap, mut f: impl FnMut(*mut Heap)) {
    let mut h = REGISTRY.all.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: records are never freed; `state` is atomic.
        let st = unsafe { (*h).state.load(Ordering::Acquire) };
        if h != me && st != STATE_ORPHANED {
            f(h);
        }
        // SAFETY: `all_next` is set before publication and never changed.
        h = unsafe { (*h).all_next };
    }
}

/// Whether a live heap's thread is gone: `tgkill(pid, tid, 0)` answers
/// `ESRCH`. Only an exited thread's id gives that (a reused id answers as
/// alive, which only delays reclamation); a heap recorded by another
/// process (a `fork` parent) is never judged.
fn thread_is_gone(h: *mut Heap) -> bool {
    // SAFETY: records are never freed; the ids are atomics.
    let (pid, tid) = unsafe {
        (
            (*h).pid.load(Ordering::Relaxed),
            (*h).tid.load(Ordering::Relaxed),
        )
    };
    if tid <= 0 || pid != ids().0 {
        return false;
    }
    os::thread_gone(pid, tid)
}

/// Empties an abandoned heap's pending stack and caches into the global
/// cache. Returns whether it held anything.
///
/// # Safety
/// The caller holds `h`'s lock and `h` is abandoned.
unsafe fn empty_abandoned(h: *mut Heap) -> bool {
    // SAFETY: per the contract.
    unsafe {
        let had = !(*h).pending.is_empty() || (*h).provider.holds_chunks();
        heap::process_pending(h);
        (*h).provider.flush();
        had
    }
}

/// Reclaims what may be taken from `h` (see the module docs). `all`: take
/// live heaps' fresh local lists too and check every live heap's thread
/// (not only those idle since the last sweep). Returns whether memory was
/// given back.
///
/// # Safety
/// The caller holds `h`'s lock and is not its owner.
unsafe fn reclaim_locked(h: *mut Heap, now: u64, all: bool) -> bool {
    // SAFETY: per the contract.
    unsafe {
        match (*h).state.load(Ordering::Acquire) {
            STATE_ABANDONED => {
                let had = empty_abandoned(h);
                // No owner tidies this heap's slabs: their free pages go
                // back here, all of them when purging, else those of slabs
                // idle long enough.
                let pages = if all {
                    heap::release_free_pages(h)
                } else {
                    heap::release_idle_pages(h, now)
                };
                had | (pages != 0)
            }
            STATE_LIVE => {
                let entries = (*h).slow_entries.load(Ordering::Relaxed);
                let idle = entries == (*h).swept_entries.load(Ordering::Relaxed);
                (*h).swept_entries.store(entries, Ordering::Relaxed);
                if (all || idle) && thread_is_gone(h) {
                    // Attached in its last destructor round: nobody will
                    // abandon it but us.
                    heap::make_abandoned(h);
                    push_abandoned(h);
                    return true;
                }
                heap::reclaim_live(h, now, all)
            }
            _ => false,
        }
    }
}

/// Reclaims from every other heap. With `wait`, waits for each heap's lock
/// (the caller must hold no heap lock); without, skips heaps whose lock is
/// held. Returns whether memory was given back.
pub(crate) fn reclaim_all(me: *mut Heap, wait: bool, all: bool) -> bool {
    let now = os::now_ms();
    let mut any = false;
    for_each_other(me, |h| {
        // SAFETY: records are never freed; the lock makes the work ours.
        unsafe {
            if wait {
                (*h).lock.lock();
            } else if !(*h).lock.try_lock() {
                return;
            }
            any |= reclaim_locked(h, now, all);
            (*h).lock.unlock();
        }
    });
    any
}

/// Before a heap maps new memory: empties every abandoned heap that has
/// chunks queued or cached (an abandoned heap's chunks are armed, so one
/// that became collectable is on its pending stack). Skips heaps whose
/// lock is held. Returns whether memory reached the global cache.
pub(crate) fn reclaim_abandoned(me: *mut Heap) -> bool {
    if REGISTRY.abandoned_count.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let mut any = false;
    for_each_other(me, |h| {
        // SAFETY: records are never freed; the lock makes the work ours.
        unsafe {
            if (*h).state.load(Ordering::Relaxed) != STATE_ABANDONED
                || ((*h).pending.is_empty() && !(*h).provider.holds_chunks())
                || !(*h).lock.try_lock()
            {
                return;
            }
            if (*h).state.load(Ordering::Acquire) == STATE_ABANDONED {
                any |= empty_abandoned(h);
            }
            (*h).lock.unlock();
        }
    });
    any
}

/// Housekeeping from a slow path of `me` (its owner, not holding its
/// lock): the owner's own cache maintenance, and every two purge delays
/// (at least 10 ms) a sweep of every heap whose lock is free, so memory
/// freed into idle, dead or abandoned heaps goes back to the OS while any
/// thread keeps allocating.
pub(crate) fn tick(me: *mut Heap) {
    let now = os::now_ms();
    // SAFETY: `me` is the caller's heap; maintenance needs its lock.
    unsafe {
        (*me).lock.lock();
        let tidied = if budget::GLOBAL.under_pressure() {
            // Near the cap, empty chunks this heap keeps attached (its
            // current ones) are what no other thread can reclaim.
            heap::collect(me, true);
            true
        } else {
            heap::tidy(me, now)
        };
        (*me).provider.maintain(now);
        heap::trim_if_asked(me);
        (*me).lock.unlock();
        if tidied {
            // Chunks of dead threads' heaps that remote frees emptied
            // (queued on their pending stacks) go to the global cache now,
            // not only when some heap is about to map memory.
            reclaim_abandoned(me);
        }
    }
    let next = NEXT_SWEEP_MS.load(Ordering::Relaxed);
    if now < next {
        return;
    }
    let interval = (config::purge_delay_ms() * 2).max(10);
    if NEXT_SWEEP_MS
        .compare_exchange(next, now + interval, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
        && reclaim_all(me, false, false)
    {
        crate::provider::purge_global(now, false);
    }
}

/// In a `fork` child, where only the calling thread exists. Heaps that
/// were live in other threads are orphaned (their threads may have been
/// mid-operation, so they are never reused or reclaimed; frees into their
/// chunks still work). So is any heap whose lock a vanished thread held,
/// and the registry's lists are dropped if a vanished thread held the
/// registry lock. Returns false if `me` itself was locked by a vanished
/// thread: the caller then starts over with a new heap.
pub(crate) fn after_fork_child(me: *mut Heap) -> bool {
    if REGISTRY.lock.held_by_other() {
        // SAFETY: the holder is gone; we are the only thread. The lists
        // may be mid-update: drop them (their heaps are orphaned below by
        // state, and the carve region's rest is left unused).
        unsafe {
            *REGISTRY.abandoned.get() = ptr::null_mut();
            *REGISTRY.carve.get() = (0, 0);
        }
        REGISTRY.abandoned_count.store(0, Ordering::Relaxed);
        let mut h = REGISTRY.all.load(Ordering::Acquire);
        while !h.is_null() {
            // SAFETY: records are never freed.
            unsafe {
                let _ = (*h).state.compare_exchange(
                    STATE_ABANDONED,
                    STATE_ORPHANED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                h = (*h).all_next;
            }
        }
        REGISTRY.lock.force_unlock();
    }
    let mut h = REGISTRY.all.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: records are never freed; only this thread runs.
        unsafe {
            if h != me
                && ((*h).state.load(Ordering::Relaxed) == STATE_LIVE || (*h).lock.held_by_other())
            {
                (*h).state.store(STATE_ORPHANED, Ordering::Release);
            }
            h = (*h).all_next;
        }
    }
    // Unlink abandoned heaps that were just orphaned (a vanished thread
    // was working on them), so no adopter waits for their locks. If this
    // thread holds the registry lock (a `fork` from a signal handler that
    // interrupted it), the interrupted code owns the list: leave it.
    if REGISTRY.lock.try_lock() {
        unlink_orphaned();
        REGISTRY.lock.unlock();
    }
    if heap::is_empty(me) {
        return true;
    }
    // SAFETY: `me` is this thread's heap record.
    unsafe {
        if (*me).lock.held_by_other() {
            (*me).state.store(STATE_ORPHANED, Ordering::Release);
            return false;
        }
        let (pid, tid) = ids();
        (*me).pid.store(pid, Ordering::Relaxed);
        (*me).tid.store(tid, Ordering::Relaxed);
    }
    true
}

/// Removes orphaned heaps from the abandoned list. Registry lock held.
fn unlink_orphaned() {
    // SAFETY: the caller holds the registry lock.
    unsafe {
        let mut link: *mut *mut Heap = REGISTRY.abandoned.get();
        while !(*link).is_null() {
            let h = *link;
            if (*h).state.load(Ordering::Relaxed) == STATE_ORPHANED {
                *link = (*h).abandoned_next;
                REGISTRY.abandoned_count.fetch_sub(1, Ordering::Relaxed);
            } else {
                link = ptr::addr_of_mut!((*h).abandoned_next);
            }
        }
    }
}

/// Adds every heap's counters into `s`.
pub(crate) fn add_stats(s: &mut crate::Stats) {
    let mut in_use: isize = 0;
    let mut records: usize = 0;
    let mut h = REGISTRY.all.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: records are never freed; counters are atomics.
        unsafe {
            heap::add_stats_of(h, s, &mut in_use);
            h = (*h).all_next;
        }
        records += 1;
    }
    // Records are carved in order from regions mapped whole, a new one
    // only when the current one has no room for another record.
    let per_region = RECORD_REGION / core::mem::size_of::<Heap>().next_multiple_of(64);
    s.metadata += records.div_ceil(per_region) * RECORD_REGION;
    heap::add_global_stats(s, in_use);
}

//! The chunk map: address → chunk header, in O(1), lock-free.
//!
//! A flat array with one word per 64 KiB granule of the 47-bit user
//! address space (2^31 entries, 16 GiB of address space reserved once, at
//! the first heap's creation). The reservation is read-only and charged to
//! no commit limit; it becomes writable a page of entries at a time
//! (4 KiB: 512 entries, 32 MiB of addresses) when a chunk is first
//! registered there, and each such page is charged to the budget: what the
//! map commits is what it is charged, a page per 32 MiB of address space
//! in use. Untouched entries
//! read as zero (the kernel's zero page), so a lookup of any address below
//! 2^47 is one load and never faults; addresses above, or lookups before
//! the reservation, see an entry count of zero and return 0.
//!
//! One load instead of a two-level walk is what the free fast path gains
//! (`docs/PERF.md`): the heap keeps the base and entry count beside its
//! bins ([`lookup_in`]), so `free` reads no global to find a chunk.
//!
//! Where the 16 GiB reservation is refused (an address-space limit,
//! `ulimit -v`, below it), the map falls back to a two-level radix: a
//! static top level of 32,768 leaf pointers, each leaf (512 KiB, 4 GiB of
//! addresses, charged whole) mapped on first use. The choice is made once,
//! before anything is registered. Heaps then get an empty view, so every
//! `free` takes the out-of-line `free_miss`, which reads the radix through
//! [`lookup`]: correct and slower (a call and two dependent loads more).
//!
//! Every granule of a live chunk maps to the chunk's header; a granule
//! chunkmalloc never handed out maps to 0. Blocks are never made read-only
//! again and the reservation is never unmapped, so a racing lookup can
//! always read. Each entry is written only by the thread that owns the
//! chunk being registered or unregistered; lookups use `Acquire` to see the
//! header the registering thread initialised before its `Release` store.

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::budget;
use crate::os;
use crate::size_class::CHUNK_SHIFT;
use crate::sync::SpinLock;

/// Granules (entries) of the 47-bit user address space.
pub const ENTRIES: usize = 1 << (47 - CHUNK_SHIFT);
/// Bytes of entries made writable (and charged) at a time: the smallest
/// page size (a larger kernel page is handled by [`block_bytes`]).
const MIN_BLOCK_BYTES: usize = 4 << 10;
const MIN_BLOCK_ENTRIES: usize = MIN_BLOCK_BYTES / core::mem::size_of::<usize>();
const BLOCKS: usize = ENTRIES / MIN_BLOCK_ENTRIES;

/// Bytes of entries made writable (and charged) at a time: one page.
fn block_bytes() -> usize {
    os::page_size().max(MIN_BLOCK_BYTES)
}

/// The reservation (null until made).
static MAP: AtomicPtr<AtomicUsize> = AtomicPtr::new(core::ptr::null_mut());
/// Entries readable through `MAP`: 0 until the reservation is made, then
/// [`ENTRIES`]. Stored after `MAP` with `Release`.
static LEN: AtomicUsize = AtomicUsize::new(0);
/// One bit per block: writable (and charged).
static WRITABLE: [AtomicU64; BLOCKS / 64] = [const { AtomicU64::new(0) }; BLOCKS / 64];
/// Serialises making blocks writable (rare: once per 32 MiB of address
/// space in use) and the reservation itself.
static LOCK: SpinLock = SpinLock::new();
/// Number of blocks made writable (for statistics).
static BLOCKS_WRITABLE: AtomicUsize = AtomicUsize::new(0);

/// Which map is in use: not chosen yet, the flat array, or the radix.
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);
const MODE_UNSET: u8 = 0;
const MODE_FLAT: u8 = 1;
const MODE_RADIX: u8 = 2;

/// The radix fallback: `TOP_LEN` leaf pointers, `LEAF_LEN` entries a leaf.
const LEAF_BITS: u32 = 16;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const TOP_LEN: usize = ENTRIES >> LEAF_BITS;
/// Bytes of one radix leaf.
const LEAF_BYTES: usize = LEAF_LEN * core::mem::size_of::<usize>();
type Leaf = [AtomicUsize; LEAF_LEN];
static TOP: [AtomicPtr<Leaf>; TOP_LEN] = [const { AtomicPtr::new(core::ptr::null_mut()) }; TOP_LEN];
/// Radix leaves mapped (for statistics).
static LEAVES: AtomicUsize = AtomicUsize::new(0);

/// Chooses the map, once: the flat reservation if the kernel grants it,
/// else the radix. Called before the first heap record and the first
/// registration; afterwards it only reads the choice.
#[cold]
pub fn reserve() {
    if MODE.load(Ordering::Acquire) != MODE_UNSET {
        return;
    }
    LOCK.lock();
    if MODE.load(Ordering::Relaxed) == MODE_UNSET {
        let p = os::reserve_readonly(ENTRIES * core::mem::size_of::<usize>());
        if p.is_null() {
            MODE.store(MODE_RADIX, Ordering::Release);
        } else {
            MAP.store(p.cast(), Ordering::Relaxed);
            LEN.store(ENTRIES, Ordering::Release);
            MODE.store(MODE_FLAT, Ordering::Release);
        }
    }
    LOCK.unlock();
}

/// Whether the flat map is in use (false before [`reserve`]).
fn flat() -> bool {
    MODE.load(Ordering::Acquire) == MODE_FLAT
}

/// The base and entry count for [`lookup_in`] (null and 0 before
/// [`reserve`], and with the radix fallback).
pub fn view() -> (*const AtomicUsize, usize) {
    let len = LEN.load(Ordering::Acquire);
    (MAP.load(Ordering::Relaxed), len)
}

/// The header registered for the granule containing `addr`, or 0, in a
/// map `view()` returned.
///
/// # Safety
/// `(map, len)` is a value [`view`] returned (null and 0 find nothing).
#[inline(always)]
pub unsafe fn lookup_in(map: *const AtomicUsize, len: usize, addr: usize) -> usize {
    let g = addr >> CHUNK_SHIFT;
    if g >= len {
        return 0;
    }
    // SAFETY: `g < len`, so the entry lies in the reservation, which is
    // never unmapped and always readable.
    unsafe { (*map.add(g)).load(Ordering::Acquire) }
}

/// The header registered for the granule containing `addr`, or 0.
#[inline(always)]
pub fn lookup(addr: usize) -> usize {
    let len = LEN.load(Ordering::Acquire);
    if len == 0 {
        // The radix fallback (or nothing registered yet: every leaf null).
        return radix_lookup(addr);
    }
    // SAFETY: `MAP` and `LEN` are what `view` returns.
    unsafe { lookup_in(MAP.load(Ordering::Relaxed), len, addr) }
}

/// [`lookup`] in the radix fallback.
#[cold]
fn radix_lookup(addr: usize) -> usize {
    let g = addr >> CHUNK_SHIFT;
    if g >= ENTRIES {
        return 0;
    }
    let leaf = TOP[g >> LEAF_BITS].load(Ordering::Acquire);
    if leaf.is_null() {
        return 0;
    }
    // SAFETY: leaves are never unmapped once published; the index is
    // below `LEAF_LEN` by the mask.
    unsafe { (*leaf)[g & (LEAF_LEN - 1)].load(Ordering::Acquire) }
}

/// The radix leaf `top`, mapped (and charged) if absent. False if the
/// budget or the kernel refuses.
#[cold]
fn make_leaf(top: usize) -> bool {
    if !TOP[top].load(Ordering::Acquire).is_null() {
        return true;
    }
    if !budget::GLOBAL.try_reserve(LEAF_BYTES) {
        return false;
    }
    let fresh = os::map_aligned(LEAF_BYTES, os::page_size(), 0).cast::<Leaf>();
    if fresh.is_null() {
        budget::GLOBAL.release(LEAF_BYTES);
        return false;
    }
    // Zeroed memory is a valid array of AtomicUsize(0).
    let won = TOP[top]
        .compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok();
    if won {
        LEAVES.fetch_add(1, Ordering::Relaxed);
    } else {
        os::unmap(fresh.cast(), LEAF_BYTES);
        budget::GLOBAL.release(LEAF_BYTES);
    }
    true
}

/// Makes block `b` (entries `b * entries ..`, `entries` per block) writable,
/// charging it. False if the budget or the kernel refuses.
#[cold]
fn make_writable(b: usize, entries: usize) -> bool {
    let bytes = entries * core::mem::size_of::<usize>();
    let (word, bit) = (&WRITABLE[b / 64], 1u64 << (b % 64));
    if word.load(Ordering::Acquire) & bit != 0 {
        return true;
    }
    LOCK.lock();
    let ok = word.load(Ordering::Relaxed) & bit != 0 || {
        let start = MAP.load(Ordering::Relaxed).wrapping_add(b * entries);
        let made = budget::GLOBAL.try_reserve(bytes)
            && (os::protect_rw(start.cast(), bytes) || {
                budget::GLOBAL.release(bytes);
                false
            });
        if made {
            BLOCKS_WRITABLE.fetch_add(1, Ordering::Relaxed);
            word.fetch_or(bit, Ordering::Release);
        }
        made
    };
    LOCK.unlock();
    ok
}

/// Maps every granule overlapping `[start, start+len)` to `header`.
/// Returns false (with nothing registered) if the range is above the
/// map, or a block of entries could not be made writable.
pub fn register(start: usize, len: usize, header: usize) -> bool {
    reserve();
    let first = start >> CHUNK_SHIFT;
    let last = (start + len - 1) >> CHUNK_SHIFT;
    // Granule 0 (addresses below 64 KiB) is never registered, so a lookup
    // of the null pointer finds nothing and `free`'s fast path needs no
    // null test of its own. No mapping starts there (`mmap_min_addr`), so
    // this refuses nothing real.
    if first == 0 || last >= ENTRIES {
        return false;
    }
    // Make every needed block (or leaf) writable first so failure leaves
    // no partial entries.
    let ready = if flat() {
        let entries = block_bytes() / core::mem::size_of::<usize>();
        (first / entries..=last / entries).all(|b| make_writable(b, entries))
    } else {
        (first >> LEAF_BITS..=last >> LEAF_BITS).all(make_leaf)
    };
    if !ready {
        return false;
    }
    set_range(first, last, header);
    true
}

/// Points every granule of `[start, start+len)`, a registered range, at
/// `header` (a slab header moved within its chunk).
pub fn repoint(start: usize, len: usize, header: usize) {
    set_range(
        start >> CHUNK_SHIFT,
        (start + len - 1) >> CHUNK_SHIFT,
        header,
    );
}

/// Clears every granule overlapping `[start, start+len)` (registered
/// before).
pub fn unregister(start: usize, len: usize) {
    set_range(start >> CHUNK_SHIFT, (start + len - 1) >> CHUNK_SHIFT, 0);
}

fn set_range(first: usize, last: usize, value: usize) {
    check!(last < ENTRIES, "a registered range is in the map");
    if flat() {
        let map = MAP.load(Ordering::Relaxed);
        for g in first..=last {
            // SAFETY: `register` made every block of the range writable
            // before any entry was set, and blocks never become read-only
            // again.
            unsafe { (*map.add(g)).store(value, Ordering::Release) };
        }
        return;
    }
    for g in first..=last {
        let leaf = TOP[g >> LEAF_BITS].load(Ordering::Acquire);
        check!(!leaf.is_null(), "a registered range has its leaves");
        // SAFETY: `register` mapped every leaf of the range before any
        // entry was set, and leaves are never unmapped.
        unsafe { (*leaf)[g & (LEAF_LEN - 1)].store(value, Ordering::Release) };
    }
}

/// In a `fork` child: frees the lock if a thread that no longer exists
/// held it. That thread may have been between charging a block and
/// marking it writable; the block is then made writable (and charged)
/// again when next needed, which costs the child a page of budget at most.
pub(crate) fn after_fork_child() {
    if LOCK.held_by_other() {
        LOCK.force_unlock();
    }
}

/// Bytes the map has committed (and charged): the flat map's writable
/// blocks, or the radix's leaves.
pub fn metadata_bytes() -> usize {
    BLOCKS_WRITABLE.load(Ordering::Relaxed) * block_bytes()
        + LEAVES.load(Ordering::Relaxed) * LEAF_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_and_unmapped_addresses_map_to_nothing() {
        reserve();
        let on_stack = 0u64;
        assert_eq!(lookup(&on_stack as *const u64 as usize), 0);
        assert_eq!(lookup(0), 0);
        assert_eq!(lookup(usize::MAX), 0);
        assert_eq!(lookup(1 << 47), 0);
        assert_eq!(lookup(1 << 48), 0);
        static S: u8 = 0;
        assert_eq!(lookup(&S as *const u8 as usize), 0);
        // An address in a block no chunk was ever registered in reads the
        // zero page.
        assert_eq!(lookup((1 << 47) - 1), 0);
        // A view taken before the reservation finds nothing at all.
        // SAFETY: null and 0 is the view before the reservation.
        assert_eq!(unsafe { lookup_in(core::ptr::null(), 0, 0x1234_0000) }, 0);
    }

    #[test]
    fn registered_ranges_resolve_every_granule_and_clear() {
        let len = 5 * (1 << CHUNK_SHIFT);
        // One granule more is mapped (and left unregistered), so that no
        // chunk of a test running beside this one can sit right after the
        // range.
        let p = os::map_aligned(len + (1 << CHUNK_SHIFT), 1 << CHUNK_SHIFT, 0) as usize;
        assert!(register(p, len, 0xabc0));
        let (map, n) = view();
        for off in (0..len).step_by(4096) {
            assert_eq!(lookup(p + off), 0xabc0);
            // SAFETY: a view `view` returned.
            assert_eq!(unsafe { lookup_in(map, n, p + off) }, 0xabc0);
        }
        assert_eq!(lookup(p + len), 0, "the granule after the range");
        unregister(p, len);
        for off in (0..len).step_by(4096) {
            assert_eq!(lookup(p + off), 0);
        }
        os::unmap(p as *mut u8, len + (1 << CHUNK_SHIFT));
    }

    #[test]
    fn ranges_above_the_map_are_refused() {
        assert!(!register(
            (1 << 47) - (1 << CHUNK_SHIFT),
            2 << CHUNK_SHIFT,
            0xabc0
        ));
        assert_eq!(lookup((1 << 47) - 1), 0, "nothing partial was written");
    }
}

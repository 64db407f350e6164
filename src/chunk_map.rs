//! The chunk map: address → chunk header, in O(1), lock-free.
//!
//! A two-level radix over 64 KiB granules of the 48-bit address space. The
//! top level is a static array of 65,536 leaf pointers (512 KiB of BSS, only
//! touched pages become resident); each leaf covers 4 GiB with 65,536
//! entries and is mapped on first use (its pages also fault in lazily).
//! Every granule of a live chunk maps to the chunk's header; a granule
//! chunkmalloc never handed out maps to 0. Lookup never faults: an absent
//! leaf reads as null and addresses above 2^48 are rejected.
//!
//! Leaves are never freed, so a racing lookup can always read them. Each
//! entry is written only by the thread that owns the chunk being
//! registered or unregistered; lookups use `Acquire` to see the header the
//! registering thread initialised before its `Release` store.

use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::budget;
use crate::os;
use crate::size_class::CHUNK_SHIFT;

const LEAF_BITS: u32 = 16;
const TOP_BITS: u32 = 48 - CHUNK_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const TOP_LEN: usize = 1 << TOP_BITS;
/// Bytes of one leaf.
pub const LEAF_BYTES: usize = LEAF_LEN * core::mem::size_of::<usize>();

type Leaf = [AtomicUsize; LEAF_LEN];

#[allow(clippy::declare_interior_mutable_const)]
const NULL_LEAF: AtomicPtr<Leaf> = AtomicPtr::new(core::ptr::null_mut());
static TOP: [AtomicPtr<Leaf>; TOP_LEN] = [NULL_LEAF; TOP_LEN];
/// Number of leaves mapped (for statistics).
static LEAVES: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    let g = addr >> CHUNK_SHIFT;
    let top = g >> LEAF_BITS;
    if top >= TOP_LEN {
        return None;
    }
    Some((top, g & (LEAF_LEN - 1)))
}

/// The header registered for the granule containing `addr`, or 0.
#[inline(always)]
pub fn lookup(addr: usize) -> usize {
    let Some((top, idx)) = split(addr) else {
        return 0;
    };
    let leaf = TOP[top].load(Ordering::Acquire);
    if leaf.is_null() {
        return 0;
    }
    // SAFETY: leaves are never unmapped once published, and `idx` is in
    // bounds by construction of `split`.
    unsafe { (*leaf)[idx].load(Ordering::Acquire) }
}

/// The leaf for `top`, mapping it if absent. Null if the budget or the
/// kernel refuses.
#[cold]
fn leaf_for(top: usize) -> *mut Leaf {
    let cur = TOP[top].load(Ordering::Acquire);
    if !cur.is_null() {
        return cur;
    }
    if !budget::GLOBAL.try_reserve(LEAF_BYTES) {
        return core::ptr::null_mut();
    }
    let fresh = os::map_aligned(LEAF_BYTES, os::page_size(), 0).cast::<Leaf>();
    if fresh.is_null() {
        budget::GLOBAL.release(LEAF_BYTES);
        return fresh;
    }
    // Zeroed memory is a valid array of AtomicUsize(0).
    match TOP[top].compare_exchange(
        core::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            LEAVES.fetch_add(1, Ordering::Relaxed);
            fresh
        }
        Err(winner) => {
            os::unmap(fresh.cast(), LEAF_BYTES);
            budget::GLOBAL.release(LEAF_BYTES);
            winner
        }
    }
}

/// Maps every granule overlapping `[start, start+len)` to `header`.
/// Returns false (with nothing registered) if a leaf could not be mapped.
pub fn register(start: usize, len: usize, header: usize) -> bool {
    // Map all needed leaves first so failure leaves no partial entries.
    let first = start >> CHUNK_SHIFT;
    let last = (start + len - 1) >> CHUNK_SHIFT;
    let mut g = first;
    while g <= last {
        let Some((top, _)) = split(g << CHUNK_SHIFT) else {
            return false;
        };
        if leaf_for(top).is_null() {
            return false;
        }
        g = ((g >> LEAF_BITS) + 1) << LEAF_BITS;
    }
    set_range(first, last, header);
    true
}

/// Clears every granule overlapping `[start, start+len)`.
pub fn unregister(start: usize, len: usize) {
    set_range(start >> CHUNK_SHIFT, (start + len - 1) >> CHUNK_SHIFT, 0);
}

fn set_range(first: usize, last: usize, value: usize) {
    for g in first..=last {
        let top = g >> LEAF_BITS;
        let leaf = TOP[top].load(Ordering::Acquire);
        check!(!leaf.is_null(), "a registered range has its leaves");
        // SAFETY: `register` mapped every leaf in the range before any
        // entry is set, and leaves are never unmapped.
        unsafe { (*leaf)[g & (LEAF_LEN - 1)].store(value, Ordering::Release) };
    }
}

/// Number of leaves mapped so far.
pub fn leaves() -> usize {
    LEAVES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_and_unmapped_addresses_map_to_nothing() {
        let on_stack = 0u64;
        assert_eq!(lookup(&on_stack as *const u64 as usize), 0);
        assert_eq!(lookup(0), 0);
        assert_eq!(lookup(usize::MAX), 0);
        assert_eq!(lookup(1 << 48), 0);
        static S: u8 = 0;
        assert_eq!(lookup(&S as *const u8 as usize), 0);
    }

    #[test]
    fn registered_ranges_resolve_every_granule_and_clear() {
        let len = 5 * (1 << CHUNK_SHIFT);
        let p = os::map_aligned(len, 1 << CHUNK_SHIFT, 0) as usize;
        assert!(register(p, len, 0xabc0));
        for off in (0..len).step_by(4096) {
            assert_eq!(lookup(p + off), 0xabc0);
        }
        unregister(p, len);
        for off in (0..len).step_by(4096) {
            assert_eq!(lookup(p + off), 0);
        }
        os::unmap(p as *mut u8, len);
    }
}

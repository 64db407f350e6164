//! Chunk headers and slab mechanics.
//!
//! A chunk is a 64 KiB-aligned run of OS pages with a 128-byte [`Chunk`]
//! header in its first page: at the chunk's start, except a slab's, which
//! sits at one of [`SLAB_COLORS`] offsets (see [`slab_header_offset`]).
//! The chunk map points at wherever the header is; [`chunk_base`] gives
//! the chunk's start from it. Three kinds share the header:
//!
//! * **slab**: blocks of one size class after the header. Blocks are handed
//!   out from `free` (owner-only). Never-used blocks lie beyond the `bump`
//!   cursor and are carved into `free` a page's worth at a time. Owner frees
//!   go to `local_free`; frees from other threads go to the chunk's
//!   [`RemoteList`] (one CAS; the full-chunk notification shares its word).
//!   Pages below `bump` that no live block touches can be given back to
//!   the OS (*holes*, [`Chunk::release_free_pages`]); their blocks leave
//!   the lists until the chunk needs them.
//! * **large**: one object in an oversized, cacheable chunk.
//! * **huge**: one object in its own mapping (not cached, `mremap`ped).
//!
//! The header's first cache line is the owner's (the fast paths' lists
//! and counters, written on every allocation); the second holds what other
//! threads touch: `remote`, `link`, and `tag`, which every free reads. A
//! remote free then touches one line, the one its CAS needs anyway; with
//! `tag` on the owner's line, which the owner's allocations keep taking
//! back, it missed on both (`prodcons`, where consumers only free, ran
//! 12 % faster with the move; `docs/PERF.md`).
//!
//! [`ChunkStack`] is the intrusive stack of chunks used by the provider's
//! shared cache and the heap's pending list.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::budget::Budget;
use crate::os;
pub use crate::remote::{Block, RemoteList};
use crate::stack::{Linked, Stack};

/// Bytes reserved for the header at the start of every chunk; slab blocks
/// start here. A multiple of 128 so blocks of 32/64/128-byte multiples are
/// naturally aligned.
pub const HEADER_SIZE: usize = crate::size_class::SLAB_HEADER;

/// Pages at the start of a slab chunk that can be holes (see
/// [`Chunk::release_free_pages`]): the bits of the header's `holes` field.
/// A 64 KiB chunk of 4 KiB pages has 16.
pub const HOLE_PAGES: usize = 24;

/// Words of a bitmap with one bit per block of a slab (at most
/// [`crate::size_class::MAX_SLAB_BLOCKS`]).
const BLOCK_WORDS: usize = (crate::size_class::MAX_SLAB_BLOCKS as usize).div_ceil(64);

/// Offsets a slab's header may sit at, in steps of [`HEADER_SIZE`].
///
/// Every chunk starts at a multiple of 64 KiB, so headers at the chunk's
/// start all fall in the same two sets of a cache indexed by the low
/// address bits (64 sets of 64-byte lines in a 32 KiB, 8-way L1; the
/// L2's set index stops below bit 16 too): eight chunks' headers filled
/// them, and a program using more size classes than that evicted a header
/// on nearly every free. Spread over eight offsets they use sixteen sets
/// (callgrind's cache model on `sqlite`: 15.59 M → 14.75 M L1 data misses;
/// on `pareto 0.1 1` the free path's misses fell from 322 k to 102 k,
/// `docs/PERF.md`). Blocks start after the header, so a slab loses up to
/// 896 bytes of its first page.
pub const SLAB_COLORS: usize = 8;

/// Where a slab's header sits in the chunk starting at `base`: its color
/// (64 KiB granule number modulo [`SLAB_COLORS`]) times [`HEADER_SIZE`].
/// A multiple of 128, so the block area stays one.
#[inline]
pub fn slab_header_offset(base: usize) -> usize {
    ((base >> crate::size_class::CHUNK_SHIFT) & (SLAB_COLORS - 1)) * HEADER_SIZE
}

/// The start of the chunk whose header is `c` (every header lies in its
/// chunk's first 64 KiB, and chunks are 64 KiB-aligned).
#[inline(always)]
pub fn chunk_base(c: *mut Chunk) -> *mut u8 {
    (c as usize & !(crate::size_class::CHUNK_SIZE - 1)) as *mut u8
}

/// Flag: some blocks were handed out at an offset inside their block.
pub const FLAG_ALIGNED: usize = 1;
/// Flag: the chunk was detached from its bin because it was full.
pub const FLAG_FULL: usize = 2;
/// Flag: not a slab (large, huge or cached).
pub const FLAG_NOT_SLAB: usize = 4;
/// The flag bits of `Chunk::tag` (owners are 64-byte aligned heap records).
pub const FLAG_MASK: usize = 7;

/// What [`Chunk::mark_full`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MarkFull {
    /// Detached (`FLAG_FULL`, notification armed): the chunk comes back
    /// through the pending stack after the next remote free.
    Detached,
    /// Remote frees arrived: collect them and try the chunk again.
    Retry,
    /// The chunk is still on the pending stack from an earlier
    /// notification: leave it attached; the pending stack brings it back.
    Skip,
}

/// What a chunk currently is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Kind {
    /// In a provider or global cache; no live objects.
    Cached = 0,
    /// Serves one size class.
    Slab = 1,
    /// One object in a cacheable chunk.
    Large = 2,
    /// One object in its own mapping.
    Huge = 3,
}

/// The chunk header. `repr(C)` and 64-byte aligned: the owner's fields sit
/// in the first cache line; remotely written ones, and the `tag` every
/// free reads, in the second.
#[repr(C, align(64))]
pub struct Chunk {
    // ---- line 0: owner ----
    /// Owner-only free list the fast path pops.
    pub free: *mut Block,
    /// Blocks handed out and not yet freed back to the owner (remote frees
    /// not yet collected still count). Written only by the owner (or the
    /// holder of the chunk), with a relaxed load and store that compile to
    /// plain moves; atomic so that `stats()`, holding the owner heap's
    /// lock, may read it while the owner's fast paths run. See
    /// [`Chunk::used`].
    used: AtomicU32,
    _pad_flags: u8,
    /// Size class (slab).
    pub class: u8,
    /// Every block on `free` is zero apart from its link word.
    pub free_is_zero: bool,
    /// The never-used area beyond `bump` is zero (fresh from the OS).
    pub fresh: bool,
    /// Block size (slab).
    pub block_size: u32,
    /// What the chunk is (a [`Kind`]).
    pub kind: Kind,
    /// Slab: a bitmap of the chunk's first [`HOLE_PAGES`] pages that
    /// [`Chunk::release_free_pages`] gave back to the OS (bit `k`: the page
    /// at `k` pages from the chunk's start). Every block overlapping such
    /// a page is free and on no list, and the page is not charged to the
    /// budget although it lies below `charged`. Owner-only; zero in every
    /// chunk that is not an attached or detached slab.
    holes: [u8; 3],
    /// Owner-only list of blocks freed by the owner.
    pub local_free: *mut Block,
    /// Next never-used block.
    pub bump: *mut u8,
    /// End of the block area.
    pub end: *mut u8,
    /// See `next`.
    pub prev: *mut Chunk,
    /// Owner-only doubly linked list (heap bin, provider local cache).
    pub next: *mut Chunk,

    // ---- line 1: shared ----
    /// Blocks freed by other threads, their count and the full-chunk
    /// notification state, in one word (see [`crate::remote`]).
    pub remote: RemoteList,
    /// The owning heap's address (opaque here, 64-byte aligned) with the
    /// `FLAG_*` bits in its low bits, so the free fast path checks "mine, a
    /// plain attached slab" with one compare: `tag == heap`. Written only by
    /// the owner (or by whoever holds the chunk exclusively); read by any
    /// thread on free.
    pub tag: AtomicUsize,
    /// The cached chunk's data pages are decommitted.
    pub decommitted: bool,
    _pad1: [u8; 3],
    /// Bytes from the chunk's start charged to the budget, a multiple of
    /// the page size; 0 means the whole mapping (huge mappings). No page at
    /// or beyond it is committed: it was never touched since the mapping
    /// was made, or it was decommitted. Written by whoever holds the chunk
    /// exclusively, or by its owner (slab carving, under the heap lock).
    /// Chunk-class chunks are at most 2.25 MiB, so 32 bits hold it.
    pub charged: u32,
    /// Link for [`ChunkStack`]s and the global cache.
    pub link: AtomicPtr<Chunk>,
    /// Bytes of the chunk (or of the huge mapping).
    pub size: usize,
    /// Large/huge: offset of the object from the chunk start.
    pub obj_offset: usize,
    /// Large/huge: requested size of the object.
    pub obj_size: usize,
    /// When the chunk entered a cache (ms, `os::now_ms`). For an attached
    /// slab: the owner's last tidy at which it was its class's current
    /// chunk, or at which it gave back its free pages (0 when it was
    /// attached before the heap's first tidy; owner-written, under the
    /// heap lock).
    pub cached_at: u64,
}

const _: () = assert!(core::mem::size_of::<Chunk>() == HEADER_SIZE);
// A remote free reads `tag` and then CASes `remote`: one line. The fast
// path's `free` and `used` share the other one.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Chunk, tag) / 64 == offset_of!(Chunk, remote) / 64);
    assert!(offset_of!(Chunk, free) / 64 == 0 && offset_of!(Chunk, used) / 64 == 0);
    assert!(offset_of!(Chunk, tag) / 64 == 1);
};

/// A statically allocated, never-written empty slab: the fast path of an
/// uninitialised heap finds `free == null` here and takes the slow path.
pub static EMPTY_CHUNK: EmptyChunk = EmptyChunk(Chunk::empty());

/// Wrapper making the sentinel `Sync`; nothing ever writes it.
pub struct EmptyChunk(Chunk);

// SAFETY: EMPTY_CHUNK is never written: the slow path checks for the empty
// heap before touching any chunk, and no live block points into it.
unsafe impl Sync for EmptyChunk {}

impl EmptyChunk {
    /// The sentinel's address.
    pub fn as_ptr(&'static self) -> *mut Chunk {
        ptr::addr_of!(self.0) as *mut Chunk
    }
}

impl Chunk {
    const fn empty() -> Chunk {
        Chunk {
            free: ptr::null_mut(),
            used: AtomicU32::new(0),
            _pad_flags: 0,
            class: 0,
            free_is_zero: false,
            fresh: false,
            block_size: 0,
            kind: Kind::Cached,
            holes: [0; 3],
            local_free: ptr::null_mut(),
            bump: ptr::null_mut(),
            end: ptr::null_mut(),
            tag: AtomicUsize::new(FLAG_NOT_SLAB),
            next: ptr::null_mut(),
            remote: RemoteList::new(),
            decommitted: false,
            _pad1: [0; 3],
            charged: 0,
            link: AtomicPtr::new(ptr::null_mut()),
            size: 0,
            obj_offset: 0,
            obj_size: 0,
            cached_at: 0,
            prev: ptr::null_mut(),
        }
    }

    /// Writes a fresh header for a cached chunk of `size` bytes at `base`.
    ///
    /// # Safety
    /// `base` is a 64 KiB-aligned, writable mapping of `size` bytes that no
    /// one else references.
    pub unsafe fn init_cached(base: *mut u8, size: usize, fresh: bool) -> *mut Chunk {
        let c = base.cast::<Chunk>();
        // SAFETY: per the contract, the header bytes are ours to write.
        unsafe {
            c.write(Chunk::empty());
            (*c).size = size;
            (*c).fresh = fresh;
        }
        c
    }

    /// The chunk's `used` count (blocks out, uncollected remote frees
    /// included).
    ///
    /// # Safety
    /// `c` is a live chunk header.
    #[inline(always)]
    pub unsafe fn used(c: *mut Chunk) -> u32 {
        // SAFETY: per the contract.
        unsafe { (*c).used.load(Ordering::Relaxed) }
    }

    /// Sets `used` (a plain store: only the owner, or the chunk's
    /// exclusive holder, writes it).
    ///
    /// # Safety
    /// `c` is a live chunk header the caller owns or holds exclusively.
    #[inline(always)]
    pub unsafe fn set_used(c: *mut Chunk, n: u32) {
        // SAFETY: per the contract.
        unsafe { (*c).used.store(n, Ordering::Relaxed) }
    }

    /// Bytes of the chunk charged to the budget (see `Chunk::charged`).
    ///
    /// # Safety
    /// `c` is a chunk header the caller may read (owner, or exclusive).
    #[inline]
    pub unsafe fn charged(c: *mut Chunk) -> usize {
        // SAFETY: per the contract.
        unsafe {
            match (*c).charged {
                0 => (*c).size,
                n => n as usize,
            }
        }
    }

    /// Makes at least `need` bytes from the chunk's start (rounded up to
    /// pages) charged to `budget`. False, with nothing changed, if the
    /// budget refuses.
    ///
    /// # Safety
    /// `c` is a chunk-class chunk the caller holds exclusively or owns
    /// (under the heap lock); `need <= (*c).size`.
    #[inline]
    pub unsafe fn charge_to(c: *mut Chunk, need: usize, budget: &Budget) -> bool {
        // SAFETY: per the contract.
        unsafe {
            let have = Chunk::charged(c);
            if need <= have {
                return true;
            }
            let want = need.next_multiple_of(os::page_size());
            check!(want <= (*c).size, "charges stay inside the chunk");
            if !budget.try_reserve(want - have) {
                return false;
            }
            (*c).charged = want as u32;
            true
        }
    }

    /// Moves the header `c` to `to`, another 128-byte slot in the same
    /// chunk's first page, points the chunk map's granules of the chunk at
    /// it, and returns it (`c` itself when `to == c`).
    ///
    /// # Safety
    /// The caller holds the chunk exclusively (no block of it is live, so
    /// no other thread reads its header); the chunk is registered in the
    /// chunk map; `to` is a 128-byte slot in its first page.
    pub unsafe fn move_header(c: *mut Chunk, to: *mut Chunk) -> *mut Chunk {
        check!(
            chunk_base(c) == chunk_base(to),
            "a header moves within its chunk"
        );
        if to != c {
            // SAFETY: per the contract; distinct 128-byte slots do not
            // overlap, and the map's entries for a registered range are
            // writable.
            unsafe {
                ptr::copy_nonoverlapping(c, to, 1);
                crate::chunk_map::repoint(chunk_base(c) as usize, (*to).size, to as usize);
            }
        }
        to
    }

    /// Turns a cached chunk into a slab for `class` (`block_size` bytes) owned
    /// by `owner`. The blocks follow the header wherever it sits.
    ///
    /// # Safety
    /// The caller owns `c` exclusively (it came from a cache) and is `owner`.
    pub unsafe fn init_slab(c: *mut Chunk, class: usize, block_size: usize, owner: usize) {
        // SAFETY: exclusive ownership per the contract.
        unsafe {
            let data = c.cast::<u8>().add(HEADER_SIZE);
            let cap = ((*c).size - (data as usize - chunk_base(c) as usize)) / block_size;
            (*c).free = ptr::null_mut();
            Chunk::set_used(c, 0);
            (*c).class = class as u8;
            (*c).free_is_zero = false;
            (*c).block_size = block_size as u32;
            (*c).kind = Kind::Slab;
            (*c).local_free = ptr::null_mut();
            (*c).bump = data;
            (*c).end = data.add(cap * block_size);
            (*c).tag.store(owner, Ordering::Relaxed);
            (*c).next = ptr::null_mut();
            (*c).prev = ptr::null_mut();
            (*c).remote.reset();
        }
    }

    /// The owner's address (without flag bits).
    ///
    /// # Safety
    /// `c` is a live chunk header.
    #[inline(always)]
    pub unsafe fn owner(c: *mut Chunk) -> usize {
        // SAFETY: per the contract.
        unsafe { (*c).tag.load(Ordering::Relaxed) & !FLAG_MASK }
    }

    /// The `FLAG_*` bits.
    ///
    /// # Safety
    /// `c` is a live chunk header.
    #[inline(always)]
    pub unsafe fn flags(c: *mut Chunk) -> usize {
        // SAFETY: per the contract.
        unsafe { (*c).tag.load(Ordering::Relaxed) & FLAG_MASK }
    }

    /// Sets owner and flags at once.
    ///
    /// # Safety
    /// The caller holds `c` exclusively (no block of it is live).
    #[inline]
    pub unsafe fn set_tag(c: *mut Chunk, owner: usize, flags: usize) {
        check!(owner & FLAG_MASK == 0, "owner heaps are 64-byte aligned");
        // SAFETY: per the contract.
        unsafe { (*c).tag.store(owner | flags, Ordering::Relaxed) }
    }

    /// Sets flag bits (a plain load and store: only the owner writes).
    ///
    /// # Safety
    /// Owner only.
    #[inline]
    pub unsafe fn set_flags(c: *mut Chunk, f: usize) {
        // SAFETY: per the contract.
        unsafe {
            let t = (*c).tag.load(Ordering::Relaxed);
            (*c).tag.store(t | f, Ordering::Relaxed);
        }
    }

    /// Clears flag bits (owner only, as [`Chunk::set_flags`]).
    ///
    /// # Safety
    /// Owner only.
    #[inline]
    pub unsafe fn clear_flags(c: *mut Chunk, f: usize) {
        // SAFETY: per the contract.
        unsafe {
            let t = (*c).tag.load(Ordering::Relaxed);
            (*c).tag.store(t & !f, Ordering::Relaxed);
        }
    }

    /// Start of the block containing `p` (which may point inside a block
    /// handed out at an alignment offset).
    ///
    /// # Safety
    /// `c` is a live slab and `p` lies in its block area.
    #[inline]
    pub unsafe fn block_start(c: *mut Chunk, p: *mut u8) -> *mut u8 {
        // SAFETY: per the contract.
        unsafe {
            let data = c.cast::<u8>().add(HEADER_SIZE);
            let bs = (*c).block_size as usize;
            let off = p as usize - data as usize;
            data.add(off - off % bs)
        }
    }

    /// Carves up to a page's worth of never-used blocks into `free` (the
    /// blocks that end in the page the cursor is in, or in the next page
    /// when the first block crosses into it; at least one), charging
    /// `budget` for the pages they reach that were not charged yet.
    /// Returns false if the bump area is exhausted, or if the
    /// budget refuses and no whole block lies in pages already charged
    /// (then `bump < end` still).
    ///
    /// # Safety
    /// Owner only (under the heap lock); `free` is empty.
    #[inline(never)]
    pub unsafe fn extend(c: *mut Chunk, budget: &Budget) -> bool {
        // SAFETY: owner-only fields; blocks beyond `bump` are unused and
        // inside the chunk.
        unsafe {
            let bs = (*c).block_size as usize;
            let avail = ((*c).end as usize - (*c).bump as usize) / bs;
            if avail == 0 {
                return false;
            }
            let first = (*c).bump;
            // The blocks that end within the page `first` lies in, or, when
            // the first block crosses into the next page, within that next
            // page (at least one block): carving writes a link into each,
            // so a page's worth counted from `first` would reach into a
            // page beyond. A chunk's first carve then stays in the header's
            // page, the only page a lightly used chunk touches (a full
            // page's worth from offset 128 touched two); later carves come
            // about once a page, as before.
            let page = os::page_size();
            let mut limit = (first as usize & !(page - 1)) + page;
            if first as usize + bs > limit {
                limit += page;
            }
            let mut want = ((limit - first as usize) / bs).clamp(1, 256).min(avail);
            let base = chunk_base(c) as usize;
            let reach = first as usize + want * bs - base;
            if !Chunk::charge_to(c, reach, budget) {
                // Near the cap: only what fits in the pages already charged.
                want = (base + Chunk::charged(c)).saturating_sub(first as usize) / bs;
                if want == 0 {
                    return false;
                }
            }
            let mut b = first;
            for _ in 1..want {
                let nb = b.add(bs);
                (*b.cast::<Block>()).next = nb.cast();
                b = nb;
            }
            (*b.cast::<Block>()).next = ptr::null_mut();
            (*c).bump = b.add(bs);
            (*c).free = first.cast();
            (*c).free_is_zero = (*c).fresh;
            true
        }
    }

    /// Takes every remote free into `free`, leaving the notification
    /// state as it is. Returns the number taken; `used` drops by that
    /// much. O(1) when `free` is empty (the list becomes `free`);
    /// otherwise the remote list is walked to its tail.
    ///
    /// # Safety
    /// Owner only (or the holder of the owner heap's lock, on a chunk the
    /// owner's lock-free paths do not touch).
    pub unsafe fn collect_remote(c: *mut Chunk) -> u32 {
        // SAFETY: per the contract.
        unsafe { Chunk::merge_remote(c, (*c).remote.take()) }
    }

    /// Takes every remote free of a chunk that came off its owner's
    /// pending stack, and returns its notification state to `NONE`.
    ///
    /// # Safety
    /// As [`Chunk::collect_remote`]; `c` was just taken off the pending stack.
    pub unsafe fn collect_pending(c: *mut Chunk) -> u32 {
        // SAFETY: per the contract.
        unsafe {
            let t = (*c).remote.take_and_clear();
            check!(
                t.state == crate::remote::QUEUED,
                "a chunk on the pending stack is QUEUED"
            );
            Chunk::merge_remote(c, t)
        }
    }

    /// Puts the blocks of `t` on `free`.
    ///
    /// # Safety
    /// As [`Chunk::collect_remote`]; `t` was taken from `c`'s list.
    unsafe fn merge_remote(c: *mut Chunk, t: crate::remote::Taken) -> u32 {
        // SAFETY: owner-only fields; the taken list is ours alone.
        unsafe {
            if t.count == 0 {
                return 0;
            }
            if !(*c).free.is_null() {
                let mut tail = t.head;
                while !(*tail).next.is_null() {
                    tail = (*tail).next;
                }
                (*tail).next = (*c).free;
            }
            (*c).free = t.head;
            (*c).free_is_zero = false;
            Chunk::set_used(c, Chunk::used(c).wrapping_sub(t.count));
            t.count
        }
    }

    /// Makes `free` non-empty if any block is available: remote frees
    /// (taken in O(1)), then local frees, then the blocks of its holes,
    /// then never-used blocks (pages charged to `budget` as they are
    /// reached). Returns whether it succeeded; false with `bump < end` (or
    /// with holes left) means the budget refused.
    /// `taken` is set to the number of remote frees collected when that
    /// is how it succeeded (the owner counts them: `heap::count_remote`).
    ///
    /// # Safety
    /// Owner only; `c` is a slab.
    pub unsafe fn refill(c: *mut Chunk, budget: &Budget, taken: &mut u32) -> bool {
        // SAFETY: forwarded contract.
        unsafe { Chunk::take_frees(c, budget, taken) || Chunk::extend(c, budget) }
    }

    /// Blocks carved and freed since: on `free`, `local_free` and the
    /// remote list (the remote count may grow as it is read).
    ///
    /// # Safety
    /// Owner only; `c` is a slab.
    pub unsafe fn freed(c: *mut Chunk) -> u32 {
        // SAFETY: owner-only fields; the list word is atomic.
        unsafe {
            let carved = ((*c).bump as usize - c as usize - HEADER_SIZE) / (*c).block_size as usize;
            (carved as u32)
                .wrapping_sub(Chunk::used(c))
                .wrapping_add((*c).remote.peek().count)
        }
    }

    /// [`Chunk::refill`] without carving: makes `free` non-empty from the
    /// chunk's freed blocks (remote, then local, then the blocks of its
    /// holes, whose pages `budget` is charged for again) if it has any.
    /// `taken` is as for `refill`.
    ///
    /// # Safety
    /// Owner only; `c` is a slab.
    #[inline(always)]
    pub unsafe fn take_frees(c: *mut Chunk, budget: &Budget, taken: &mut u32) -> bool {
        // SAFETY: owner-only fields.
        unsafe {
            if !(*c).free.is_null() {
                return true;
            }
            *taken = Chunk::collect_remote(c);
            if *taken != 0 {
                return true;
            }
            if !(*c).local_free.is_null() {
                (*c).free = (*c).local_free;
                (*c).local_free = ptr::null_mut();
                (*c).free_is_zero = false;
                return true;
            }
            Chunk::holes(c) != 0 && Chunk::restore_holes(c, budget)
        }
    }

    /// The pages [`Chunk::release_free_pages`] gave back (bit `k`: the
    /// page `k` pages from the chunk's start).
    ///
    /// # Safety
    /// `c` is a live chunk header.
    #[inline]
    pub unsafe fn holes(c: *mut Chunk) -> u32 {
        // SAFETY: per the contract.
        let h = unsafe { (*c).holes };
        u32::from_le_bytes([h[0], h[1], h[2], 0])
    }

    /// # Safety
    /// `c` is a slab the caller owns or holds exclusively.
    unsafe fn set_holes(c: *mut Chunk, h: u32) {
        check!(h >> (8 * 3) == 0, "holes fit in HOLE_PAGES bits");
        let b = h.to_le_bytes();
        // SAFETY: per the contract.
        unsafe { (*c).holes = [b[0], b[1], b[2]] };
    }

    /// Whether at most half of the carved blocks are out and the carved
    /// area spans at least three pages: worth a look for free pages.
    ///
    /// # Safety
    /// Owner only; `c` is a slab.
    pub unsafe fn mostly_free(c: *mut Chunk) -> bool {
        // SAFETY: owner-only fields.
        unsafe {
            let carved = (*c).bump as usize - (c as usize + HEADER_SIZE);
            carved >= 3 * os::page_size()
                && Chunk::used(c) as usize * (*c).block_size as usize * 2 <= carved
        }
    }

    /// The indices of the blocks (of `bs` bytes from `start`) that overlap
    /// the page at `pg`, which lies at or after `start`: the blocks a hole
    /// there takes off the lists and gives back.
    fn blocks_on_page(start: usize, bs: usize, pg: usize) -> core::ops::RangeInclusive<usize> {
        (pg - start) / bs..=(pg + os::page_size() - 1 - start) / bs
    }

    /// Gives back to the OS every whole page of the carved area that no
    /// live block touches, and releases it from `budget`; returns the
    /// bytes given back. A slab whose blocks are mostly free keeps its
    /// free blocks resident otherwise (the survivors of a phase of the
    /// program scattered over its chunks: `fragmentation` at its peak had
    /// 47 MiB of such pages in 78 MiB carved). glibc's `malloc_trim` does
    /// the same for the free chunks inside its heap.
    ///
    /// The free blocks overlapping a given-back page leave the lists (their
    /// links would read as zero) and the page becomes a hole; the lists are
    /// rebuilt in address order from the rest. [`Chunk::take_frees`] puts
    /// the holes' blocks back, charging their pages again, when the chunk
    /// has no other free block; a chunk leaving slab use drops its holes
    /// first ([`Chunk::drop_holes`]). Only the first [`HOLE_PAGES`] pages,
    /// and not the header's page, can be holes. Work: one pass over the
    /// free lists and one over the carved blocks, and a `madvise` per run
    /// of pages. A list longer than the carved area (looped by a double
    /// free) leaves the chunk alone.
    ///
    /// # Safety
    /// Owner with the heap lock (or exclusive holder); `c` is a slab whose
    /// remote frees were collected (remote frees that arrive meanwhile are
    /// of blocks that are out, which no hole holds).
    pub unsafe fn release_free_pages(c: *mut Chunk, budget: &Budget) -> usize {
        // SAFETY: owner-only fields and lists; the block area up to `bump`
        // is carved, and given-back pages hold no live block.
        unsafe {
            let page = os::page_size();
            let bs = (*c).block_size as usize;
            let start = c as usize + HEADER_SIZE;
            let bump = (*c).bump as usize;
            let base = chunk_base(c) as usize;
            let first_page = start.next_multiple_of(page);
            if bs == 0 || first_page + page > bump {
                return 0;
            }
            let n = (bump - start) / bs;
            let mut bits = [0u64; BLOCK_WORDS];
            let mut listed = 0;
            for head in [(*c).free, (*c).local_free] {
                let mut b = head;
                while !b.is_null() {
                    let i = (b as usize).wrapping_sub(start) / bs;
                    if i >= n || listed >= n {
                        return 0;
                    }
                    bits[i / 64] |= 1 << (i % 64);
                    listed += 1;
                    b = (*b).next;
                }
            }
            let is_free = |i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
            let old = Chunk::holes(c);
            let mut new = 0u32;
            let mut pg = first_page;
            while pg + page <= bump && (pg - base) / page < HOLE_PAGES {
                let k = (pg - base) / page;
                if old & (1 << k) == 0 && Chunk::blocks_on_page(start, bs, pg).all(is_free) {
                    new |= 1 << k;
                }
                pg += page;
            }
            if new == 0 {
                return 0;
            }
            let all = old | new;
            let in_hole = |i: usize| {
                let (b0, b1) = (start + i * bs, start + i * bs + bs - 1);
                ((b0 - base) / page..=(b1 - base) / page)
                    .any(|k| k < HOLE_PAGES && all & (1 << k) != 0)
            };
            let mut list: *mut Block = ptr::null_mut();
            for i in (0..n).rev() {
                if is_free(i) && !in_hole(i) {
                    let b = (start + i * bs) as *mut Block;
                    (*b).next = list;
                    list = b;
                }
            }
            (*c).free = list;
            (*c).local_free = ptr::null_mut();
            (*c).free_is_zero = false;
            let mut k = 0;
            while k < HOLE_PAGES {
                if new & (1 << k) == 0 {
                    k += 1;
                    continue;
                }
                let run = k;
                while k < HOLE_PAGES && new & (1 << k) != 0 {
                    k += 1;
                }
                os::decommit((base + run * page) as *mut u8, (k - run) * page);
            }
            Chunk::set_holes(c, all);
            let bytes = new.count_ones() as usize * page;
            budget.release(bytes);
            bytes
        }
    }

    /// Puts the blocks of the chunk's holes on `free`, charging their
    /// pages to `budget` again (the first write to each faults it in).
    /// False, leaving the holes, if the budget refuses.
    ///
    /// # Safety
    /// Owner only; `c` is a slab with holes and with `free`, `local_free`
    /// and the remote list empty.
    #[cold]
    #[inline(never)]
    unsafe fn restore_holes(c: *mut Chunk, budget: &Budget) -> bool {
        // SAFETY: owner-only fields; every block overlapping a hole is
        // free and on no list.
        unsafe {
            let h = Chunk::holes(c);
            let page = os::page_size();
            if !budget.try_reserve(h.count_ones() as usize * page) {
                return false;
            }
            let bs = (*c).block_size as usize;
            let start = c as usize + HEADER_SIZE;
            let n = ((*c).bump as usize - start) / bs;
            let base = chunk_base(c) as usize;
            let (mut head, mut tail): (*mut Block, *mut Block) = (ptr::null_mut(), ptr::null_mut());
            let mut next = 0;
            for k in 0..HOLE_PAGES {
                if h & (1 << k) == 0 {
                    continue;
                }
                let on_page = Chunk::blocks_on_page(start, bs, base + k * page);
                let i1 = (*on_page.end()).min(n - 1);
                for i in (*on_page.start()).max(next)..=i1 {
                    let b = (start + i * bs) as *mut Block;
                    (*b).next = ptr::null_mut();
                    if tail.is_null() {
                        head = b;
                    } else {
                        (*tail).next = b;
                    }
                    tail = b;
                }
                next = i1 + 1;
            }
            (*c).free = head;
            (*c).free_is_zero = false;
            Chunk::set_holes(c, 0);
            true
        }
    }

    /// Before a slab with no block out leaves slab use (to a cache, or to
    /// be carved again from its start): decommits everything from its
    /// first hole to its charged end, so that the charged prefix again
    /// says what is committed, and releases the pages that were still
    /// charged there.
    ///
    /// # Safety
    /// The caller owns `c` (or holds it exclusively); no block of it is
    /// out.
    pub unsafe fn drop_holes(c: *mut Chunk, budget: &Budget) {
        // SAFETY: per the contract; no live data lies beyond the first
        // hole.
        unsafe {
            let h = Chunk::holes(c);
            if h == 0 {
                return;
            }
            let page = os::page_size();
            let first = h.trailing_zeros() as usize * page;
            let charged = Chunk::charged(c);
            check!(first < charged, "holes lie below the charged end");
            os::decommit(chunk_base(c).add(first), charged - first);
            budget.release(charged - first - h.count_ones() as usize * page);
            (*c).charged = first as u32;
            Chunk::set_holes(c, 0);
        }
    }

    /// Pushes a block freed by a thread that does not own the chunk.
    /// Returns true when the caller must put the chunk on its owner's
    /// pending stack (this free claimed the notification); exactly one
    /// freer gets true per arming. When it returns false the caller must
    /// not touch the chunk again (see [`crate::remote`]).
    ///
    /// The heap's remote free does the same in two steps (an inline first
    /// attempt, an out-of-line retry: `heap::push_remote`); this whole push
    /// is what the chunk's own tests drive.
    ///
    /// # Safety
    /// `b` is a block of the live slab `c`, no longer used by the caller.
    #[cfg(test)]
    #[inline(always)]
    pub unsafe fn push_remote(c: *mut Chunk, b: *mut Block) -> bool {
        // SAFETY: per the contract.
        unsafe { (*c).remote.push(b) }
    }

    /// The owner detaches a chunk in which it found no free block: arms the
    /// notification and sets `FLAG_FULL`, unless remote frees arrived
    /// meanwhile or the chunk is still queued from an earlier notification.
    ///
    /// # Safety
    /// Owner only; the chunk is attached and not already full.
    pub unsafe fn mark_full(c: *mut Chunk) -> MarkFull {
        // SAFETY: owner-only flag bits; the list word is atomic.
        unsafe {
            if (*c).remote.try_arm() {
                Chunk::set_flags(c, FLAG_FULL);
                MarkFull::Detached
            } else if (*c).remote.has_blocks() {
                MarkFull::Retry
            } else {
                MarkFull::Skip
            }
        }
    }

    /// Whether a remote freer claimed this chunk's notification and the
    /// chunk is (or is about to be) on its owner's pending stack. Such a
    /// chunk must not be retired until it comes off that stack, even when
    /// it is attached with no block out: an attached chunk is queued when
    /// its heap was abandoned, armed, claimed, and adopted before the owner
    /// took it off the stack (adoption cannot take a claim back), and the
    /// claimer may still be about to push it. The state is stable: only
    /// taking the chunk off the pending stack clears it.
    ///
    /// # Safety
    /// `c` is a live chunk header.
    #[inline]
    pub unsafe fn is_queued(c: *mut Chunk) -> bool {
        // SAFETY: per the contract.
        unsafe { (*c).remote.peek().state == crate::remote::QUEUED }
    }

    /// The owner wants a detached chunk back without waiting for the
    /// pending stack (a local free into it). Succeeds, clearing
    /// `FLAG_FULL`, unless a remote freer already claimed the
    /// notification; then the chunk is or will be on the pending stack and
    /// must stay detached until the owner takes it from there.
    ///
    /// # Safety
    /// Owner only; `FLAG_FULL` is set.
    pub unsafe fn try_unfull(c: *mut Chunk) -> bool {
        // SAFETY: owner-only flag bits; the list word is atomic.
        unsafe {
            let ok = (*c).remote.try_disarm();
            if ok {
                Chunk::clear_flags(c, FLAG_FULL);
            }
            ok
        }
    }
}

impl Linked for Chunk {
    #[inline(always)]
    fn link(&self) -> &AtomicPtr<Chunk> {
        &self.link
    }
}

/// The intrusive stack of chunks (linked through `Chunk::link`) that the
/// provider's shared cache and the heap's pending list use.
pub type ChunkStack = Stack<Chunk>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::CHUNK_SIZE;

    /// A budget of the tests' own (the chunks here are mapped directly).
    static B: Budget = Budget::new();

    fn new_chunk() -> *mut Chunk {
        let p = os::map_aligned(CHUNK_SIZE, CHUNK_SIZE, 0);
        assert!(!p.is_null());
        // SAFETY: fresh mapping of CHUNK_SIZE bytes.
        unsafe { Chunk::init_cached(p, CHUNK_SIZE, true) }
    }

    #[test]
    fn slab_hands_out_every_block_once_and_collects_frees() {
        let c = new_chunk();
        // SAFETY: the test owns the chunk.
        unsafe {
            Chunk::init_slab(c, 3, 64, 1 << 6);
            let mut seen = std::collections::HashSet::new();
            let mut blocks = Vec::new();
            while Chunk::refill(c, &B, &mut 0) {
                let b = (*c).free;
                (*c).free = (*b).next;
                Chunk::set_used(c, Chunk::used(c) + 1);
                assert_eq!((b as usize - c as usize - HEADER_SIZE) % 64, 0);
                assert!(seen.insert(b as usize));
                blocks.push(b);
            }
            assert_eq!(blocks.len(), (CHUNK_SIZE - HEADER_SIZE) / 64);
            assert_eq!(Chunk::used(c) as usize, blocks.len());
            // Half freed remotely, half locally.
            for (i, &b) in blocks.iter().enumerate() {
                if i % 2 == 0 {
                    assert!(!Chunk::push_remote(c, b));
                } else {
                    (*b).next = (*c).local_free;
                    (*c).local_free = b;
                    Chunk::set_used(c, Chunk::used(c) - 1);
                }
            }
            assert!(Chunk::refill(c, &B, &mut 0));
            assert_eq!(Chunk::used(c), 0, "remote frees are counted at collection");
            let len = |mut b: *mut Block| {
                let mut n = 0;
                while !b.is_null() {
                    n += 1;
                    b = (*b).next;
                }
                n
            };
            // Refill takes the remote list whole (O(1)) and leaves the
            // local list for the next refill.
            assert_eq!(len((*c).free), blocks.len().div_ceil(2));
            assert_eq!(len((*c).local_free), blocks.len() / 2);
            // Collecting into a non-empty free list appends.
            let extra = (*c).free;
            (*c).free = (*extra).next;
            Chunk::set_used(c, Chunk::used(c) + 1);
            assert!(!Chunk::push_remote(c, extra));
            assert_eq!(Chunk::collect_remote(c), 1);
            assert_eq!(Chunk::used(c), 0);
            assert_eq!(len((*c).free), blocks.len().div_ceil(2));
            os::unmap(c.cast(), CHUNK_SIZE);
        }
    }

    /// Pages of `c` (64 KiB) that are resident, one bool per page.
    fn resident_pages(c: *mut Chunk) -> Vec<bool> {
        let page = os::page_size();
        let mut v = vec![0u8; CHUNK_SIZE / page];
        // SAFETY: the chunk's mapping is CHUNK_SIZE bytes; a byte per page.
        let r = unsafe { libc::mincore(chunk_base(c).cast(), CHUNK_SIZE, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        v.iter().map(|&b| b & 1 != 0).collect()
    }

    /// The blocks on a list, in order (panics past `limit`: a loop).
    ///
    /// # Safety
    /// `b` heads a list of the test's chunk.
    unsafe fn list(mut b: *mut Block, limit: usize) -> Vec<usize> {
        let mut v = Vec::new();
        while !b.is_null() {
            assert!(v.len() < limit, "list loops");
            v.push(b as usize);
            // SAFETY: per the contract.
            b = unsafe { (*b).next };
        }
        v
    }

    /// For block sizes that divide a page, straddle page boundaries or
    /// span several pages: the whole chunk is carved and handed out, every
    /// block is freed (locally or remotely, collected) except a pattern of
    /// survivors that leaves some pages free, and `release_free_pages`
    /// must give back exactly the pages no survivor touches (not the
    /// header's, not beyond `HOLE_PAGES`), drop them from residency and
    /// from the budget, leave the other free blocks on `free` in address
    /// order, and keep the survivors' contents. Then every free block
    /// comes back exactly once: first the listed ones, then, once the
    /// lists are empty, the holes' blocks (charging their pages again).
    /// Finally, with every block free, `drop_holes` leaves the budget
    /// charged for exactly the prefix before the first hole.
    #[test]
    fn free_pages_are_given_back_and_their_blocks_come_back_once() {
        let page = os::page_size();
        for bs in [48usize, 64, 1552, 4096, 5008] {
            let b = Budget::new();
            let c = new_chunk();
            // SAFETY: the test owns the chunk; blocks are carved from it.
            unsafe {
                assert!(b.try_reserve(CHUNK_SIZE));
                (*c).charged = CHUNK_SIZE as u32;
                Chunk::init_slab(c, 3, bs, 1 << 6);
                let mut blocks = Vec::new();
                while Chunk::refill(c, &b, &mut 0) {
                    let x = (*c).free;
                    (*c).free = (*x).next;
                    Chunk::set_used(c, Chunk::used(c) + 1);
                    x.cast::<u8>().write_bytes(0xee, bs);
                    blocks.push(x as usize);
                }
                let start = c as usize + HEADER_SIZE;
                let base = chunk_base(c) as usize;
                // Survivors: the blocks touching pages 2, 7 and 8, and the
                // last block (so the top of the carved area stays).
                let survives = |x: usize| {
                    let (p0, p1) = ((x - base) / page, (x + bs - 1 - base) / page);
                    (p0..=p1).any(|k| k == 2 || k == 7 || k == 8) || x == *blocks.last().unwrap()
                };
                let kept: Vec<usize> = blocks.iter().copied().filter(|&x| survives(x)).collect();
                for (i, &x) in blocks.iter().enumerate() {
                    if survives(x) {
                        (x as *mut u64).write(x as u64);
                    } else if i % 3 == 0 {
                        assert!(!Chunk::push_remote(c, x as *mut Block));
                    } else {
                        (*(x as *mut Block)).next = (*c).local_free;
                        (*c).local_free = x as *mut Block;
                        Chunk::set_used(c, Chunk::used(c) - 1);
                    }
                }
                Chunk::collect_remote(c);
                assert_eq!(Chunk::used(c) as usize, kept.len());
                // The pages no survivor touches, as the test sees them.
                let bump = (*c).bump as usize;
                let expect: Vec<usize> = (start.next_multiple_of(page) - base..bump - base)
                    .step_by(page)
                    .map(|o| o / page)
                    .filter(|&k| {
                        let (p0, p1) = (base + k * page, base + (k + 1) * page);
                        k < HOLE_PAGES && p1 <= bump && !kept.iter().any(|&x| x < p1 && x + bs > p0)
                    })
                    .collect();
                assert!(
                    expect.len() >= 4,
                    "block size {bs}: the pattern frees pages"
                );
                let released = Chunk::release_free_pages(c, &b);
                assert_eq!(released, expect.len() * page, "block size {bs}");
                assert_eq!(b.committed(), CHUNK_SIZE - released);
                let mask: u32 = expect.iter().map(|&k| 1u32 << k).sum();
                assert_eq!(Chunk::holes(c), mask);
                let res = resident_pages(c);
                for &k in &expect {
                    assert!(!res[k], "block size {bs}: page {k} still resident");
                }
                for &x in &kept {
                    assert_eq!((x as *const u64).read(), x as u64, "survivor changed");
                }
                assert!((*c).local_free.is_null());
                let in_hole = |x: usize| {
                    ((x - base) / page..=(x + bs - 1 - base) / page).any(|k| expect.contains(&k))
                };
                let listed = list((*c).free, blocks.len());
                assert!(
                    listed.windows(2).all(|w| w[0] < w[1]),
                    "list not in address order"
                );
                let want: Vec<usize> = blocks
                    .iter()
                    .copied()
                    .filter(|&x| !survives(x) && !in_hole(x))
                    .collect();
                assert_eq!(listed, want, "block size {bs}: listed blocks");
                // A second call finds nothing new.
                assert_eq!(Chunk::release_free_pages(c, &b), 0);
                // Take the listed blocks, then the holes' blocks.
                // (Taken: every block is out again.)
                (*c).free = ptr::null_mut();
                Chunk::set_used(c, blocks.len() as u32);
                assert!(Chunk::take_frees(c, &b, &mut 0));
                let restored = list((*c).free, blocks.len());
                let want: Vec<usize> = blocks.iter().copied().filter(|&x| in_hole(x)).collect();
                assert_eq!(restored, want, "block size {bs}: restored blocks");
                assert_eq!(Chunk::holes(c), 0);
                assert_eq!(b.committed(), CHUNK_SIZE);
                for &x in &restored {
                    (x as *mut u8).write_bytes(0x11, bs);
                }
                // Holes again, then every block free: `drop_holes`.
                let mut free = ptr::null_mut::<Block>();
                for &x in blocks.iter().rev() {
                    if !survives(x) {
                        (*(x as *mut Block)).next = free;
                        free = x as *mut Block;
                    }
                }
                (*c).free = free;
                let released = Chunk::release_free_pages(c, &b);
                assert_eq!(released, expect.len() * page);
                Chunk::set_used(c, 0);
                Chunk::drop_holes(c, &b);
                assert_eq!(Chunk::holes(c), 0);
                let k = expect[0];
                assert_eq!(Chunk::charged(c), k * page);
                assert_eq!(b.committed(), k * page);
                assert!(resident_pages(c)[k..].iter().all(|&r| !r));
                os::unmap(c.cast(), CHUNK_SIZE);
            }
        }
    }

    /// A free list that loops (a double free linked a block to itself) is
    /// left alone: nothing is given back and the lists are unchanged.
    #[test]
    fn a_looped_free_list_gives_nothing_back() {
        let b = Budget::new();
        let c = new_chunk();
        // SAFETY: the test owns the chunk; blocks are carved from it.
        unsafe {
            assert!(b.try_reserve(CHUNK_SIZE));
            (*c).charged = CHUNK_SIZE as u32;
            Chunk::init_slab(c, 3, 64, 1 << 6);
            while Chunk::extend(c, &b) {}
            let head = (*c).free;
            let first_page_block = head;
            (*first_page_block).next = first_page_block;
            assert_eq!(Chunk::release_free_pages(c, &b), 0);
            assert_eq!((*c).free, head);
            assert_eq!(Chunk::holes(c), 0);
            assert_eq!(b.committed(), CHUNK_SIZE);
            os::unmap(c.cast(), CHUNK_SIZE);
        }
    }

    #[test]
    fn full_chunk_notification_is_delivered_exactly_once() {
        let c = new_chunk();
        // SAFETY: the test owns the chunk; blocks are carved from it.
        unsafe {
            Chunk::init_slab(c, 0, 16, 1 << 6);
            Chunk::extend(c, &B);
            let b1 = (*c).free;
            let b2 = (*b1).next;
            (*c).free = ptr::null_mut();
            (*c).bump = (*c).end;
            Chunk::set_used(c, 2);
            assert_eq!(Chunk::mark_full(c), MarkFull::Detached);
            assert!(Chunk::push_remote(c, b1), "first remote free notifies");
            assert!(!Chunk::push_remote(c, b2), "second does not");
            assert!(!Chunk::try_unfull(c), "a queued chunk stays detached");
            // While queued, an attached refill takes blocks but keeps the
            // state, so the chunk cannot be armed (and queued) twice.
            let t = (*c).remote.peek();
            assert_eq!((t.count, t.state), (2, crate::remote::QUEUED));
            assert_eq!(t.head, b2);
            assert_eq!(Chunk::collect_pending(c), 2);
            assert_eq!(Chunk::used(c), 0);
            assert_eq!((*c).remote.peek().state, crate::remote::NONE);
            Chunk::clear_flags(c, FLAG_FULL);
            // Remote free before mark_full: the owner keeps the chunk.
            (*c).free = ptr::null_mut();
            Chunk::set_used(c, 2);
            assert!(!Chunk::push_remote(c, b1));
            assert_eq!(Chunk::mark_full(c), MarkFull::Retry);
            assert_eq!(Chunk::flags(c) & FLAG_FULL, 0);
            // Detached, then a local free takes it back before any remote.
            assert_eq!(Chunk::collect_remote(c), 1);
            (*c).free = ptr::null_mut();
            assert_eq!(Chunk::mark_full(c), MarkFull::Detached);
            assert!(Chunk::try_unfull(c));
            assert!(!Chunk::push_remote(c, b1), "no one is waiting any more");
            // Queued and refilled while attached: mark_full skips it.
            assert_eq!(Chunk::collect_remote(c), 1);
            (*c).free = ptr::null_mut();
            assert_eq!(Chunk::mark_full(c), MarkFull::Detached);
            assert!(Chunk::push_remote(c, b2));
            assert!(!Chunk::try_unfull(c));
            Chunk::clear_flags(c, FLAG_FULL);
            assert_eq!(Chunk::collect_remote(c), 1);
            (*c).free = ptr::null_mut();
            assert_eq!(Chunk::mark_full(c), MarkFull::Skip);
            os::unmap(c.cast(), CHUNK_SIZE);
        }
    }

    #[test]
    fn stack_push_from_many_threads_take_by_any() {
        static S: ChunkStack = ChunkStack::new();
        let chunks: Vec<usize> = (0..64).map(|_| new_chunk() as usize).collect();
        let per = chunks.len() / 4;
        let hs: Vec<_> = chunks
            .chunks(per)
            .map(|part| {
                let part = part.to_vec();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for c in part {
                        // SAFETY: each chunk is pushed once, by one thread.
                        unsafe { S.push(c as *mut Chunk) };
                        // Pushers also take the whole stack now and then.
                        if c % 3 == 0 {
                            got.extend(drain(S.take_all()));
                        }
                    }
                    got
                })
            })
            .collect();
        let mut popped = std::collections::HashSet::new();
        while popped.len() < chunks.len() {
            for c in drain(S.take_all()) {
                assert!(popped.insert(c));
            }
            if hs.iter().all(|h| h.is_finished()) {
                break;
            }
        }
        for h in hs {
            for c in h.join().unwrap() {
                assert!(popped.insert(c), "no chunk is taken twice");
            }
        }
        for c in drain(S.take_all()) {
            assert!(popped.insert(c));
        }
        assert_eq!(popped.len(), chunks.len(), "no chunk is lost");
        for c in chunks {
            os::unmap(c as *mut u8, CHUNK_SIZE);
        }
    }

    fn drain(mut c: *mut Chunk) -> Vec<usize> {
        let mut v = Vec::new();
        while !c.is_null() {
            v.push(c as usize);
            // SAFETY: a taken list is ours; links were set by push.
            c = unsafe { (*c).link.load(Ordering::Relaxed) };
        }
        v
    }
}

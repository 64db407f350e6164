//! Chunk headers and slab mechanics.
//!
//! A chunk is a 64 KiB-aligned run of OS pages whose first 128 bytes are a
//! [`Chunk`] header. Three kinds share the header:
//!
//! * **slab**: blocks of one size class after the header. Blocks are handed
//!   out from `free` (owner-only). Never-used blocks lie beyond the `bump`
//!   cursor and are carved into `free` a page's worth at a time. Owner frees
//!   go to `local_free`; frees from other threads go to the atomic
//!   `remote_free` list, which the owner takes with one `swap(null)`.
//! * **large**: one object in an oversized, cacheable chunk.
//! * **huge**: one object in its own mapping (not cached, `mremap`ped).
//!
//! The header's first cache line is the owner's; the second holds what
//! other threads write (`remote_free`, `notify`, `link`).
//!
//! [`ChunkStack`] is the intrusive Treiber stack of chunks used by the
//! provider's shared cache and the heap's pending list.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

use crate::os;

/// Bytes reserved for the header at the start of every chunk; slab blocks
/// start here. A multiple of 128 so blocks of 32/64/128-byte multiples are
/// naturally aligned.
pub const HEADER_SIZE: usize = crate::size_class::SLAB_HEADER;

/// A free block: its first word links to the next.
#[repr(C)]
pub struct Block {
    /// Next free block, or null.
    pub next: *mut Block,
}

/// Flag: some blocks were handed out at an offset inside their block.
pub const FLAG_ALIGNED: usize = 1;
/// Flag: the chunk was detached from its bin because it was full.
pub const FLAG_FULL: usize = 2;
/// Flag: not a slab (large, huge or cached).
pub const FLAG_NOT_SLAB: usize = 4;
/// The flag bits of `Chunk::tag` (owners are 64-byte aligned heap records).
pub const FLAG_MASK: usize = 7;

/// Bit position of the length in `remote_free`. User-space addresses on
/// x86-64 and AArch64 Linux are below 2^48 (the chunk map refuses chunks
/// above), and a slab holds at most 4,088 blocks, so both fit.
pub const REMOTE_COUNT_SHIFT: u32 = 48;
const REMOTE_PTR_MASK: usize = (1 << REMOTE_COUNT_SHIFT) - 1;

/// `notify`: nobody is waiting.
pub const NOTIFY_NONE: u8 = 0;
/// `notify`: the owner detached the chunk as full; the next remote free
/// must queue it.
pub const NOTIFY_WANT: u8 = 1;
/// `notify`: a remote freer claimed the notification and queues (or has
/// queued) the chunk on the owner's pending list.
pub const NOTIFY_QUEUED: u8 = 2;

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
/// in the first cache line, remotely written ones in the second.
#[repr(C, align(64))]
pub struct Chunk {
    // ---- line 0: owner ----
    /// Owner-only free list the fast path pops.
    pub free: *mut Block,
    /// Blocks handed out and not yet freed back to the owner (remote frees
    /// not yet collected still count).
    pub used: u32,
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
    _pad0: [u8; 3],
    /// Owner-only list of blocks freed by the owner.
    pub local_free: *mut Block,
    /// Next never-used block.
    pub bump: *mut u8,
    /// End of the block area.
    pub end: *mut u8,
    /// The owning heap's address (opaque here, 64-byte aligned) with the
    /// `FLAG_*` bits in its low bits, so the free fast path checks "mine, a
    /// plain attached slab" with one compare: `tag == heap`. Written only by
    /// the owner (or by whoever holds the chunk exclusively); read by any
    /// thread on free.
    pub tag: AtomicUsize,
    /// Owner-only doubly linked list (heap bin, provider local cache).
    pub next: *mut Chunk,

    // ---- line 1: shared ----
    /// Blocks freed by other threads: a Treiber stack whose head word packs
    /// the list length in its top 16 bits ([`REMOTE_COUNT_SHIFT`]) with the
    /// head pointer below, so the owner takes the list *and* its length
    /// with one `swap(0)` and never walks it. The length in the same word
    /// as the pointer also means a CAS cannot succeed against a stale
    /// length (no ABA on the count).
    pub remote_free: AtomicUsize,
    /// Notification state (`NOTIFY_*`): whether the owner detached the chunk
    /// as full and wants the next remote free to queue it on its pending
    /// list.
    pub notify: AtomicU8,
    /// The cached chunk's data pages are decommitted.
    pub decommitted: bool,
    _pad1: [u8; 6],
    /// Link for [`ChunkStack`]s and the global cache.
    pub link: AtomicPtr<Chunk>,
    /// Bytes of the chunk (or of the huge mapping).
    pub size: usize,
    /// Large/huge: offset of the object from the chunk start.
    pub obj_offset: usize,
    /// Large/huge: requested size of the object.
    pub obj_size: usize,
    /// When the chunk entered a cache (ms, `os::now_ms`).
    pub cached_at: u64,
    /// See `next` (kept on this line so line 0 fits the fast path).
    pub prev: *mut Chunk,
}

const _: () = assert!(core::mem::size_of::<Chunk>() == HEADER_SIZE);

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
            used: 0,
            _pad_flags: 0,
            class: 0,
            free_is_zero: false,
            fresh: false,
            block_size: 0,
            kind: Kind::Cached,
            _pad0: [0; 3],
            local_free: ptr::null_mut(),
            bump: ptr::null_mut(),
            end: ptr::null_mut(),
            tag: AtomicUsize::new(FLAG_NOT_SLAB),
            next: ptr::null_mut(),
            remote_free: AtomicUsize::new(0),
            notify: AtomicU8::new(NOTIFY_NONE),
            decommitted: false,
            _pad1: [0; 6],
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

    /// Turns a cached chunk into a slab for `class` (`block_size` bytes) owned
    /// by `owner`.
    ///
    /// # Safety
    /// The caller owns `c` exclusively (it came from a cache) and is `owner`.
    pub unsafe fn init_slab(c: *mut Chunk, class: usize, block_size: usize, owner: usize) {
        // SAFETY: exclusive ownership per the contract.
        unsafe {
            let base = c.cast::<u8>();
            let cap = ((*c).size - HEADER_SIZE) / block_size;
            (*c).free = ptr::null_mut();
            (*c).used = 0;
            (*c).class = class as u8;
            (*c).free_is_zero = false;
            (*c).block_size = block_size as u32;
            (*c).kind = Kind::Slab;
            (*c).local_free = ptr::null_mut();
            (*c).bump = base.add(HEADER_SIZE);
            (*c).end = base.add(HEADER_SIZE + cap * block_size);
            (*c).tag.store(owner, Ordering::Relaxed);
            (*c).next = ptr::null_mut();
            (*c).prev = ptr::null_mut();
            (*c).remote_free.store(0, Ordering::Relaxed);
            (*c).notify.store(NOTIFY_NONE, Ordering::Relaxed);
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
        debug_assert_eq!(owner & FLAG_MASK, 0);
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

    /// Carves up to a page's worth (at least one block) of never-used blocks
    /// into `free`. Returns false if the bump area is exhausted.
    ///
    /// # Safety
    /// Owner only; `free` is empty.
    #[inline(never)]
    pub unsafe fn extend(c: *mut Chunk) -> bool {
        // SAFETY: owner-only fields; blocks beyond `bump` are unused and
        // inside the chunk.
        unsafe {
            let bs = (*c).block_size as usize;
            let avail = ((*c).end as usize - (*c).bump as usize) / bs;
            if avail == 0 {
                return false;
            }
            let want = (os::page_size() / bs).clamp(1, 256).min(avail);
            let first = (*c).bump;
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

    /// Takes every remote free into `free`. Returns the number taken;
    /// `used` drops by that much. O(1) when `free` is empty (the list
    /// becomes `free`); otherwise the shorter work of walking the remote
    /// list to its tail.
    ///
    /// # Safety
    /// Owner only.
    pub unsafe fn collect_remote(c: *mut Chunk) -> u32 {
        // SAFETY: owner-only fields; the swapped-out list is ours alone.
        unsafe {
            if (*c).remote_free.load(Ordering::Relaxed) == 0 {
                return 0;
            }
            let word = (*c).remote_free.swap(0, Ordering::Acquire);
            let head = (word & REMOTE_PTR_MASK) as *mut Block;
            let n = (word >> REMOTE_COUNT_SHIFT) as u32;
            if !(*c).free.is_null() {
                let mut tail = head;
                while !(*tail).next.is_null() {
                    tail = (*tail).next;
                }
                (*tail).next = (*c).free;
            }
            (*c).free = head;
            (*c).free_is_zero = false;
            (*c).used -= n;
            n
        }
    }

    /// Makes `free` non-empty if any block is available: remote frees
    /// (taken in O(1)), then local frees, then never-used blocks. Returns
    /// whether it succeeded.
    ///
    /// # Safety
    /// Owner only; `c` is a slab.
    pub unsafe fn refill(c: *mut Chunk) -> bool {
        // SAFETY: owner-only fields.
        unsafe {
            if !(*c).free.is_null() {
                return true;
            }
            if Chunk::collect_remote(c) != 0 {
                return true;
            }
            if !(*c).local_free.is_null() {
                (*c).free = (*c).local_free;
                (*c).local_free = ptr::null_mut();
                (*c).free_is_zero = false;
                return true;
            }
            Chunk::extend(c)
        }
    }

    /// Pushes a block freed by a thread that does not own the chunk. Returns
    /// true when the caller must put the chunk on its owner's pending list
    /// (the owner detached it as full and asked to be told); exactly one
    /// freer gets true per detachment.
    ///
    /// # Safety
    /// `b` is a block of the live slab `c`, no longer used by the caller.
    #[inline]
    pub unsafe fn push_remote(c: *mut Chunk, b: *mut Block) -> bool {
        // SAFETY: `c` is live; `b` is ours to link until the CAS publishes it.
        unsafe {
            let list = &(*c).remote_free;
            let mut word = list.load(Ordering::Relaxed);
            loop {
                (*b).next = (word & REMOTE_PTR_MASK) as *mut Block;
                let new = (word & !REMOTE_PTR_MASK) + (1 << REMOTE_COUNT_SHIFT) + b as usize;
                match list.compare_exchange_weak(word, new, Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(w) => word = w,
                }
            }
            // Dekker pairing with `mark_full`: both sides store then load with
            // SeqCst, so at least one of them sees the other.
            (*c).notify.load(Ordering::SeqCst) == NOTIFY_WANT
                && (*c)
                    .notify
                    .compare_exchange(
                        NOTIFY_WANT,
                        NOTIFY_QUEUED,
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    )
                    .is_ok()
        }
    }

    /// The owner detaches a full chunk. Returns true if the chunk is now
    /// detached (`FLAG_FULL`) and will come back through the pending list
    /// after the next remote free; false if remote frees arrived meanwhile
    /// and the chunk should stay attached.
    ///
    /// # Safety
    /// Owner only; the chunk is attached and not already full.
    pub unsafe fn mark_full(c: *mut Chunk) -> bool {
        // SAFETY: owner-only flag bits; `notify` is atomic.
        unsafe {
            (*c).notify.store(NOTIFY_WANT, Ordering::SeqCst);
            if (*c).remote_free.load(Ordering::SeqCst) != 0
                && (*c)
                    .notify
                    .compare_exchange(
                        NOTIFY_WANT,
                        NOTIFY_NONE,
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                // We took the request back: nobody will queue the chunk, so
                // keep it attached and collect now.
                return false;
            }
            Chunk::set_flags(c, FLAG_FULL);
            true
        }
    }

    /// The owner wants a detached chunk back without waiting for the pending
    /// list (a local free into it). Succeeds, clearing `FLAG_FULL`, unless a
    /// remote freer already claimed the notification; then the chunk is or
    /// will be on the pending list and must stay detached until the owner
    /// sees it there.
    ///
    /// # Safety
    /// Owner only; `FLAG_FULL` is set.
    pub unsafe fn try_unfull(c: *mut Chunk) -> bool {
        // SAFETY: owner-only flag bits; `notify` is atomic.
        unsafe {
            let ok = (*c)
                .notify
                .compare_exchange(
                    NOTIFY_WANT,
                    NOTIFY_NONE,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok();
            if ok {
                Chunk::clear_flags(c, FLAG_FULL);
            }
            ok
        }
    }

    /// The owner found the chunk on its pending list: it is attached again.
    ///
    /// # Safety
    /// Owner only; the chunk came off the pending list.
    pub unsafe fn unfull_from_pending(c: *mut Chunk) {
        // SAFETY: owner-only flag bits; the freer that queued the chunk is done
        // with `notify`.
        unsafe {
            debug_assert_eq!((*c).notify.load(Ordering::Relaxed), NOTIFY_QUEUED);
            (*c).notify.store(NOTIFY_NONE, Ordering::Relaxed);
            Chunk::clear_flags(c, FLAG_FULL);
        }
    }
}

/// An intrusive Treiber stack of chunks linked through `Chunk::link`.
///
/// Any thread may [`push`](ChunkStack::push). Only the stack's owner may
/// [`pop`](ChunkStack::pop) (the seed's single-popper rule): with one popper
/// no node can be removed and re-pushed between the popper's load of
/// `head` and its CAS, so there is no ABA, and pushers only write their own
/// unpublished node. [`take_all`](ChunkStack::take_all) swaps the whole list
/// out and is safe for any number of consumers.
pub struct ChunkStack {
    head: AtomicPtr<Chunk>,
}

impl ChunkStack {
    /// An empty stack.
    pub const fn new() -> Self {
        ChunkStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Whether the stack looked empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }

    /// Pushes `c`.
    ///
    /// # Safety
    /// `c` is a live chunk on no other stack, and stays live until popped.
    pub unsafe fn push(&self, c: *mut Chunk) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `c` is exclusively ours until the CAS publishes it.
            unsafe { (*c).link.store(head, Ordering::Relaxed) };
            match self
                .head
                .compare_exchange_weak(head, c, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Pops one chunk.
    ///
    /// # Safety
    /// Only the stack's single owner calls this (see the type docs).
    pub unsafe fn pop(&self) -> *mut Chunk {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            if head.is_null() {
                return head;
            }
            // SAFETY: single popper: `head` cannot be removed by anyone else
            // while we hold it, so it is still live and its link is stable.
            let next = unsafe { (*head).link.load(Ordering::Relaxed) };
            match self
                .head
                .compare_exchange_weak(head, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return head,
                Err(h) => head = h,
            }
        }
    }

    /// Takes the whole stack (a list linked through `link`, null-terminated).
    pub fn take_all(&self) -> *mut Chunk {
        if self.is_empty() {
            return ptr::null_mut();
        }
        self.head.swap(ptr::null_mut(), Ordering::Acquire)
    }
}

impl Default for ChunkStack {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::CHUNK_SIZE;

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
            Chunk::init_slab(c, 3, 64, 1);
            let mut seen = std::collections::HashSet::new();
            let mut blocks = Vec::new();
            while Chunk::refill(c) {
                let b = (*c).free;
                (*c).free = (*b).next;
                (*c).used += 1;
                assert_eq!((b as usize - c as usize - HEADER_SIZE) % 64, 0);
                assert!(seen.insert(b as usize));
                blocks.push(b);
            }
            assert_eq!(blocks.len(), (CHUNK_SIZE - HEADER_SIZE) / 64);
            assert_eq!((*c).used as usize, blocks.len());
            // Half freed remotely, half locally.
            for (i, &b) in blocks.iter().enumerate() {
                if i % 2 == 0 {
                    assert!(!Chunk::push_remote(c, b));
                } else {
                    (*b).next = (*c).local_free;
                    (*c).local_free = b;
                    (*c).used -= 1;
                }
            }
            assert!(Chunk::refill(c));
            assert_eq!((*c).used, 0, "remote frees are counted at collection");
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
            (*c).used += 1;
            assert!(!Chunk::push_remote(c, extra));
            assert_eq!(Chunk::collect_remote(c), 1);
            assert_eq!((*c).used, 0);
            assert_eq!(len((*c).free), blocks.len().div_ceil(2));
            os::unmap(c.cast(), CHUNK_SIZE);
        }
    }

    #[test]
    fn full_chunk_notification_is_delivered_exactly_once() {
        let c = new_chunk();
        // SAFETY: the test owns the chunk; blocks are carved from it.
        unsafe {
            Chunk::init_slab(c, 0, 16, 1);
            Chunk::extend(c);
            let b1 = (*c).free;
            let b2 = (*b1).next;
            (*c).free = ptr::null_mut();
            (*c).bump = (*c).end;
            (*c).used = 2;
            assert!(Chunk::mark_full(c));
            assert!(Chunk::push_remote(c, b1), "first remote free notifies");
            assert!(!Chunk::push_remote(c, b2), "second does not");
            assert!(!Chunk::try_unfull(c), "a queued chunk stays detached");
            Chunk::unfull_from_pending(c);
            assert_eq!(Chunk::flags(c) & FLAG_FULL, 0);
            assert_eq!(
                (*c).remote_free.load(Ordering::Relaxed),
                (2 << REMOTE_COUNT_SHIFT) + b2 as usize
            );
            // Remote free before mark_full: the owner keeps the chunk.
            assert!(!Chunk::mark_full(c));
            assert_eq!(Chunk::flags(c) & FLAG_FULL, 0);
            // Detached, then a local free takes it back before any remote.
            Chunk::collect_remote(c);
            assert!(Chunk::mark_full(c));
            assert!(Chunk::try_unfull(c));
            assert!(!Chunk::push_remote(c, b1), "no one is waiting any more");
            os::unmap(c.cast(), CHUNK_SIZE);
        }
    }

    #[test]
    fn stack_push_from_many_threads_pop_by_one() {
        static S: ChunkStack = ChunkStack::new();
        let chunks: Vec<usize> = (0..64).map(|_| new_chunk() as usize).collect();
        let per = chunks.len() / 4;
        let hs: Vec<_> = chunks
            .chunks(per)
            .map(|part| {
                let part = part.to_vec();
                std::thread::spawn(move || {
                    for c in part {
                        // SAFETY: each chunk is pushed once, by one thread.
                        unsafe { S.push(c as *mut Chunk) };
                    }
                })
            })
            .collect();
        let mut popped = std::collections::HashSet::new();
        // Pop concurrently with the pushers (this thread is the only popper).
        while popped.len() < chunks.len() {
            // SAFETY: this thread is the single popper.
            let c = unsafe { S.pop() };
            if !c.is_null() {
                assert!(popped.insert(c as usize));
            }
        }
        for h in hs {
            h.join().unwrap();
        }
        assert!(S.take_all().is_null());
        for c in chunks {
            os::unmap(c as *mut u8, CHUNK_SIZE);
        }
    }
}

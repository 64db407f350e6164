//! The remote-free list of a slab chunk, with the full-chunk notification
//! folded into the same word.
//!
//! A block freed by a thread that does not own the chunk is pushed here
//! with one CAS. The word packs three things:
//!
//! | bits | meaning |
//! |---|---|
//! | 48..64 | number of blocks on the list (a slab has at most 4,088) |
//! | 4..48 | head block (blocks are 16-byte aligned; user addresses are below 2^48) |
//! | 0..2 | notification state: [`NONE`], [`WANT`], [`QUEUED`] |
//!
//! The owner takes the list and its length with one atomic operation and
//! never walks it. Because the state shares the word with the list, the
//! CAS that publishes a block is also the one that claims the notification
//! of a chunk its owner detached as full (`WANT` → `QUEUED`): the freer
//! that claimed it is then the only one that may still touch the chunk
//! (to put it on the owner's pending stack), and the owner cannot retire
//! a `QUEUED` chunk before it has come off that stack. A freer that did
//! not claim a notification touches nothing in the chunk after its CAS,
//! because from that instant the owner may collect the block, retire the
//! chunk and unmap it. A CAS cannot succeed against a stale length or
//! state, so there is no ABA on either.

use crate::sync::atomic::{AtomicUsize, Ordering};

/// A free block: its first word links to the next.
#[repr(C)]
pub struct Block {
    /// Next free block, or null.
    pub next: *mut Block,
}

/// Bit position of the length.
pub const COUNT_SHIFT: u32 = 48;
/// The notification-state bits.
pub const STATE_MASK: usize = 3;
const PTR_MASK: usize = ((1 << COUNT_SHIFT) - 1) & !15;

/// State: nobody waits for a remote free.
pub const NONE: usize = 0;
/// State: the owner asked to be told: the next remote free claims the
/// notification and queues the chunk on the owner's pending stack.
pub const WANT: usize = 1;
/// State: a freer claimed the notification; the chunk is (or is about to
/// be) on the owner's pending stack, and only the owner's processing of
/// that stack returns the state to `NONE`. (`WANT + 1`: the push adds the
/// `WANT` bit to claim, see [`RemoteList::push`].)
pub const QUEUED: usize = 2;
const _: () = assert!(QUEUED == WANT + 1 && NONE & WANT == 0 && QUEUED & WANT == 0);

/// The list head of a chunk's remote frees.
pub struct RemoteList {
    word: AtomicUsize,
}

/// What [`RemoteList::take`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// First block (null when none).
    pub head: *mut Block,
    /// Number of blocks on the list.
    pub count: u32,
    /// The state before the take.
    pub state: usize,
}

#[inline(always)]
fn unpack(w: usize) -> Taken {
    Taken {
        head: (w & PTR_MASK) as *mut Block,
        count: (w >> COUNT_SHIFT) as u32,
        state: w & STATE_MASK,
    }
}

impl RemoteList {
    /// An empty list in state `NONE`.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RemoteList {
            word: AtomicUsize::new(0),
        }
    }

    /// An empty list in state `NONE`.
    #[cfg(loom)]
    pub fn new() -> Self {
        RemoteList {
            word: AtomicUsize::new(0),
        }
    }

    /// Resets to empty and `NONE` (the caller holds the chunk exclusively).
    #[inline]
    pub fn reset(&self) {
        self.word.store(0, Ordering::Relaxed);
    }

    /// The word now (Acquire), unpacked.
    #[inline]
    pub fn peek(&self) -> Taken {
        unpack(self.word.load(Ordering::Acquire))
    }

    /// Whether any block is on the list (a hint; Relaxed).
    #[inline(always)]
    pub fn has_blocks(&self) -> bool {
        self.word.load(Ordering::Relaxed) & !STATE_MASK != 0
    }

    /// Pushes `b`. Returns true when this push claimed the notification
    /// (`WANT` → `QUEUED`): the caller must then put the chunk on its
    /// owner's pending stack. Exactly one push per arming returns true.
    ///
    /// After this returns false the caller must not touch the chunk
    /// again: the owner may already have collected `b` and retired it.
    ///
    /// # Safety
    /// `b` is a block of this list's chunk, 16-byte aligned, below 2^48,
    /// no longer used by the caller; the chunk is live (the caller holds
    /// one of its blocks, `b`, so its owner cannot retire it).
    #[inline(always)]
    pub unsafe fn push(&self, b: *mut Block) -> bool {
        // SAFETY: forwarded contract.
        match unsafe { self.try_push(b, self.word.load(Ordering::Relaxed)) } {
            Ok(claimed) => claimed,
            // SAFETY: forwarded contract.
            Err(x) => unsafe { self.push_retry(b, x) },
        }
    }

    /// The list word as it is now (the `w` of a first [`RemoteList::try_push`]).
    #[inline(always)]
    pub fn word(&self) -> usize {
        self.word.load(Ordering::Relaxed)
    }

    /// One attempt of [`RemoteList::push`] against the word `w`: `Ok` as
    /// `push` returns, or `Err` with the word found when another freer or
    /// the owner changed it (then [`RemoteList::push_retry`] with that
    /// word). The remote free inlines the first attempt and keeps the
    /// retry loop out of line, so its common path carries no loop (and no
    /// loop-alignment padding).
    ///
    /// # Safety
    /// As [`RemoteList::push`].
    #[inline(always)]
    pub unsafe fn try_push(&self, b: *mut Block, w: usize) -> Result<bool, usize> {
        // SAFETY: `b` is ours until the CAS publishes it.
        unsafe { (*b).next = (w & PTR_MASK) as *mut Block };
        // The new word keeps the count and state bits of the old one, adds
        // one to the count (it stays below 2^16: a slab has at most 4,088
        // blocks), puts `b` in the pointer bits, and adds `w & WANT`, which
        // turns `WANT` (1) into `QUEUED` (2) and leaves `NONE` and `QUEUED`
        // alone: no branch.
        let new = (w & !PTR_MASK) + (1 << COUNT_SHIFT) + b as usize + (w & WANT);
        // Release publishes the block's link (and the program's writes to
        // it) to the owner's Acquire take; Acquire orders the owner's
        // arming before a claimer's writes to the chunk.
        match self
            .word
            .compare_exchange(w, new, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Ok(w & WANT != 0),
            Err(x) => Err(x),
        }
    }

    /// [`RemoteList::push`]'s retries, from the word a failed
    /// [`RemoteList::try_push`] returned.
    ///
    /// # Safety
    /// As [`RemoteList::push`].
    #[cold]
    #[inline(never)]
    pub unsafe fn push_retry(&self, b: *mut Block, mut w: usize) -> bool {
        loop {
            // SAFETY: forwarded contract.
            match unsafe { self.try_push(b, w) } {
                Ok(claimed) => return claimed,
                Err(x) => w = x,
            }
        }
    }

    /// Takes every block, leaving the state as it is (a chunk that is on
    /// a pending stack stays `QUEUED`, so it cannot be queued twice).
    #[inline]
    pub fn take(&self) -> Taken {
        if !self.has_blocks() {
            return unpack(0);
        }
        unpack(self.word.fetch_and(STATE_MASK, Ordering::Acquire))
    }

    /// Takes every block and returns the state to `NONE`: only for a
    /// chunk that just came off its owner's pending stack.
    #[inline]
    pub fn take_and_clear(&self) -> Taken {
        unpack(self.word.swap(0, Ordering::Acquire))
    }

    /// Arms the notification: `NONE` with no blocks → `WANT`. False if
    /// blocks are on the list or the state is not `NONE`.
    #[inline]
    pub fn try_arm(&self) -> bool {
        self.word
            .compare_exchange(NONE, WANT, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the request back: `WANT` → `NONE`. False if a freer already
    /// claimed it (`QUEUED`) or it was not armed.
    #[inline]
    pub fn try_disarm(&self) -> bool {
        self.word
            .compare_exchange(WANT, NONE, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

impl Default for RemoteList {
    fn default() -> Self {
        Self::new()
    }
}

//! Loom models of the protocols by which threads hand memory to each
//! other, run on the crate's own code (`remote`, `stack`, `budget`, built
//! on loom's atomics under `--cfg loom`):
//!
//! * the remote free against the owner's arming (mark_full), collection
//!   and retirement: the notification is claimed exactly once, no block is
//!   lost, and no freer touches the chunk after the owner may retire it
//!   (a chunk header is a loom `UnsafeCell`: an access that is not ordered
//!   before the owner's retirement is reported as a race);
//! * an abandoned heap's armed chunk claimed by a remote free while
//!   another thread adopts the heap and empties the chunk;
//! * the chunk stack's push against two consumers that each take the
//!   whole stack (the owner and a reclaiming thread);
//! * the budget reservation against racing reservers.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release --test loom`
//! (scripts/test.sh does, with its own target directory).
#![cfg(loom)]

use chunkmalloc::budget::Budget;
use chunkmalloc::remote::{Block, RemoteList};
use chunkmalloc::stack::{Linked, Stack};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// A chunk as the protocols see it: the remote list, the stack link, and
/// the owner's plain header fields (written when it retires the chunk).
struct Chunk {
    remote: RemoteList,
    link: AtomicPtr<Chunk>,
    header: UnsafeCell<u32>,
}

impl Linked for Chunk {
    fn link(&self) -> &AtomicPtr<Chunk> {
        &self.link
    }
}

// SAFETY: the model's accesses to `header` are what loom checks.
unsafe impl Sync for Chunk {}
// SAFETY: as above.
unsafe impl Send for Chunk {}

struct World {
    chunk: Chunk,
    pending: Stack<Chunk>,
    claims: AtomicUsize,
}

impl World {
    /// A chunk with an empty remote list (state `NONE`), an empty pending
    /// stack, no claims yet.
    fn new() -> World {
        World {
            chunk: Chunk {
                remote: RemoteList::new(),
                link: AtomicPtr::new(core::ptr::null_mut()),
                header: UnsafeCell::new(0),
            },
            pending: Stack::new(),
            claims: AtomicUsize::new(0),
        }
    }
}

fn block() -> usize {
    // 16-byte aligned, below 2^48: like a slab block. Leaked on purpose.
    Box::into_raw(Box::new([0u128; 1])) as usize
}

/// What a remote free does (`heap::push_remote`): publish, then only the
/// claimer queues the chunk, writing its link (the header).
fn remote_free(w: &World, b: usize) {
    let c = &w.chunk as *const Chunk as *mut Chunk;
    // SAFETY: `b` is a block of the chunk that this thread holds.
    if unsafe { w.chunk.remote.push(b as *mut Block) } {
        w.claims.fetch_add(1, Ordering::Relaxed);
        // The claimer may still write the chunk (its stack link).
        w.chunk.header.with_mut(|h| unsafe { *h += 1 });
        // SAFETY: the chunk is on no stack (QUEUED was ours to claim).
        unsafe { w.pending.push(c) };
    }
    // A freer that did not claim touches nothing more.
}

/// Two blocks out of a full chunk, freed by two threads while the owner
/// detaches the chunk and waits for it on its pending stack. The owner
/// retires the chunk (writes its header) once both blocks are back.
#[test]
fn remote_free_against_detach_collect_retire() {
    loom::model(|| {
        let w = Arc::new(World::new());
        let (b1, b2) = (block(), block());
        let freers: Vec<_> = [b1, b2]
            .into_iter()
            .map(|b| {
                let w = w.clone();
                thread::spawn(move || remote_free(&w, b))
            })
            .collect();
        // The owner: its refill found nothing; it tries to detach.
        let mut used = 2u32;
        let mut detached = false;
        let mut arms = 0;
        loop {
            if !detached {
                if w.chunk.remote.try_arm() {
                    arms += 1;
                    detached = true;
                } else {
                    // Blocks arrived before the arming: collect them.
                    let t = w.chunk.remote.take();
                    used -= t.count;
                }
            } else if !w.pending.take_all().is_null() {
                // Back through the pending stack: take everything, state
                // back to NONE, and collect the rest as an attached chunk.
                let t = w.chunk.remote.take_and_clear();
                used -= t.count;
                detached = false;
            }
            if used == 0 && !detached {
                // Retire: the owner rewrites the header.
                w.chunk.header.with_mut(|h| unsafe { *h = 0 });
                break;
            }
            thread::yield_now();
        }
        for f in freers {
            f.join().unwrap();
        }
        let claims = w.claims.load(Ordering::Relaxed);
        assert!(claims <= arms, "each arming is claimed at most once");
        assert_eq!(claims, arms, "the owner only waits for armed chunks");
    });
}

/// The owner's local free takes a detached chunk back (`try_unfull`)
/// while a remote free claims it: exactly one of them wins, and a claimed
/// chunk is only reattached from the pending stack.
#[test]
fn local_unfull_against_remote_claim() {
    loom::model(|| {
        let w = Arc::new(World::new());
        assert!(w.chunk.remote.try_arm());
        let b = block();
        let f = {
            let w = w.clone();
            thread::spawn(move || remote_free(&w, b))
        };
        let unfull = w.chunk.remote.try_disarm();
        if !unfull {
            // Claimed: wait for the pending stack, then it is ours again.
            while w.pending.take_all().is_null() {
                thread::yield_now();
            }
            let t = w.chunk.remote.take_and_clear();
            assert_eq!(t.count, 1);
        }
        f.join().unwrap();
        let claims = w.claims.load(Ordering::Relaxed);
        assert_eq!(claims, usize::from(!unfull), "exactly one side wins");
        if unfull {
            // Not armed any more: the block is plain on the list.
            let t = w.chunk.remote.take();
            assert_eq!((t.count, t.state), (1, 0));
        }
        // Either way the owner may now retire: nobody else touches it.
        w.chunk.header.with_mut(|h| unsafe { *h = 0 });
    });
}

/// An attached chunk of an abandoned heap is armed (`make_abandoned`); a
/// remote free claims it while a thread adopts the heap (`adopt`:
/// `try_disarm`), collects the chunk and finds it empty. The adopter
/// retires it at once only if it is not queued (`Chunk::is_queued`);
/// a queued one it retires when it comes off the pending stack
/// (`process_pending`). Either way the claimer's write of the chunk (its
/// stack link) is ordered before the retirement: without the `is_queued`
/// check loom reports the race (the defect `tests/remote_free_race.rs`
/// parks a thread for).
#[test]
fn adoption_against_remote_claim_of_an_armed_chunk() {
    loom::model(|| {
        let w = Arc::new(World::new());
        assert!(w.chunk.remote.try_arm(), "abandonment arms the chunk");
        let b = block();
        let f = {
            let w = w.clone();
            thread::spawn(move || remote_free(&w, b))
        };
        // The adopter takes the notification back unless it was claimed.
        let disarmed = w.chunk.remote.try_disarm();
        let mut used = 1u32;
        loop {
            // Collection of an attached chunk keeps the state.
            used -= w.chunk.remote.take().count;
            if used == 0 {
                if w.chunk.remote.peek().state != chunkmalloc::remote::QUEUED {
                    break;
                }
                // Queued: it comes back through the pending stack.
                if !w.pending.take_all().is_null() {
                    let t = w.chunk.remote.take_and_clear();
                    assert_eq!(t.count, 0, "the block was collected before");
                    break;
                }
            }
            thread::yield_now();
        }
        // Retire: the adopter rewrites the header.
        w.chunk.header.with_mut(|h| unsafe { *h = 0 });
        f.join().unwrap();
        let claims = w.claims.load(Ordering::Relaxed);
        assert_eq!(
            claims,
            usize::from(!disarmed),
            "claimed exactly when not disarmed"
        );
    });
}

struct Node {
    link: AtomicPtr<Node>,
    id: usize,
}

impl Linked for Node {
    fn link(&self) -> &AtomicPtr<Node> {
        &self.link
    }
}

fn drain(mut n: *mut Node, seen: &mut Vec<usize>) {
    while !n.is_null() {
        // SAFETY: a taken list is the taker's; nodes are leaked boxes.
        unsafe {
            seen.push((*n).id);
            n = (*n).link.load(Ordering::Relaxed);
        }
    }
}

/// Two pushers, and two consumers (the owner and a reclaiming thread)
/// that each take the whole stack: every node is taken exactly once.
#[test]
fn stack_push_against_two_consumers() {
    loom::model(|| {
        let s: Arc<Stack<Node>> = Arc::new(Stack::new());
        let pushers: Vec<_> = (0..2)
            .map(|id| {
                let s = s.clone();
                thread::spawn(move || {
                    let n = Box::into_raw(Box::new(Node {
                        link: AtomicPtr::new(core::ptr::null_mut()),
                        id,
                    }));
                    // SAFETY: a fresh node on no stack.
                    unsafe { s.push(n) };
                })
            })
            .collect();
        let thief = {
            let s = s.clone();
            thread::spawn(move || {
                let mut seen = Vec::new();
                drain(s.take_all(), &mut seen);
                seen
            })
        };
        let mut seen = Vec::new();
        drain(s.take_all(), &mut seen);
        for p in pushers {
            p.join().unwrap();
        }
        seen.extend(thief.join().unwrap());
        drain(s.take_all(), &mut seen);
        seen.sort();
        assert_eq!(seen, vec![0, 1], "each node exactly once");
    });
}

/// Three threads reserve 40 bytes each under a cap of 100: exactly two
/// succeed, the cap is never exceeded, and releases return it to zero.
#[test]
fn budget_never_overshoots() {
    loom::model(|| {
        let b = Arc::new(Budget::new());
        b.set_limit(Some(100));
        let ts: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || {
                    let ok = b.try_reserve(40);
                    assert!(b.committed() <= 100);
                    ok
                })
            })
            .collect();
        let won = ts.into_iter().map(|t| t.join().unwrap());
        let won = won.filter(|&ok| ok).count();
        assert_eq!(won, 2);
        assert_eq!(b.committed(), 80);
        assert!(b.peak() <= 100);
        b.release(80);
        assert_eq!(b.committed(), 0);
    });
}

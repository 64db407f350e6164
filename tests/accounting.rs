//! Statistics accounting (its own test binary; every scenario runs in a
//! child process so no other test's allocations move the numbers).
//!
//! `stats().in_use` counts live blocks at their block size: slab requests
//! rounded up to their size class (at most 12.5% above 128 B, under one
//! 16 B granule below); large and huge objects at (about) their size. So
//! for any set of blocks it lies between the bytes requested and 1.13x that
//! plus a granule per block; slab blocks count exactly their class size.
//! It must track what the test allocates and frees, including remote frees
//! and in-place reallocs, and return exactly to its start. `committed`
//! must come back (within the metadata that legitimately stays) after
//! everything is freed and purged. `remote_frees` counts every free by a
//! thread other than the block's owner once, whether the owner has
//! collected it yet or not.

mod common;

use std::alloc::{alloc, dealloc, realloc, Layout};

use common::{in_child, size_classes, Rng, KIB, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

fn in_use() -> usize {
    chunkmalloc::stats().in_use
}

/// The size class of a slab request (`size <= 64 KiB`, alignment <= 16):
/// what `in_use` counts for it.
fn class_size(size: usize) -> usize {
    assert!(size <= 64 * KIB);
    *size_classes().iter().find(|&&c| c >= size.max(1)).unwrap()
}

/// Request sizes covering every regime: tiny, each side of the 128 B exact
/// classes, medium slabs, the 64 KiB slab limit, large, the 2.25 MiB limit,
/// huge.
fn fixed_sizes() -> Vec<usize> {
    vec![
        1,
        15,
        16,
        17,
        100,
        128,
        129,
        1000,
        4097,
        30_000,
        64 * KIB,
        64 * KIB + 1,
        100 * KIB,
        MIB,
        2 * MIB,
        2304 * KIB - 128,
        2304 * KIB - 127,
        5 * MIB,
        10 * MIB,
        20 * MIB,
    ]
}

struct Blocks(Vec<(*mut u8, Layout)>);

impl Blocks {
    fn alloc(&mut self, size: usize) {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size; checked.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: a fresh block of `size` bytes (touch both ends).
        unsafe {
            *p = 1;
            *p.add(size - 1) = 1;
        }
        self.0.push((p, layout));
    }

    /// Frees every block, keeping the (already allocated) list itself so
    /// the measurement sees only the blocks.
    fn free_all(&mut self) {
        for (p, l) in self.0.drain(..) {
            // SAFETY: live blocks allocated with `l`.
            unsafe { dealloc(p, l) };
        }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        self.free_all();
    }
}

// SAFETY: the pointers are plain heap blocks, freed exactly once.
unsafe impl Send for Blocks {}

/// `in_use` rose by `delta` for `count` blocks totalling `requested`
/// bytes: at least what was requested, at most the worst size-class
/// rounding (12.5%, with margin) plus a 16 B granule per block.
#[track_caller]
fn check_delta(delta: usize, requested: usize, count: usize) {
    assert!(
        delta >= requested,
        "in_use rose by {delta}, less than the {requested} bytes requested"
    );
    assert!(
        delta as f64 <= requested as f64 * 1.13 + 16.0 * count as f64,
        "in_use rose by {delta} for {requested} bytes requested in {count} blocks"
    );
}

#[test]
fn in_use_tracks_allocations_and_frees() {
    in_child("in_use_tracks_allocations_and_frees", &[], || {
        let mut blocks = Blocks(Vec::with_capacity(20_000));
        let mut requested = 0;
        let start = in_use();
        for _ in 0..3 {
            for s in fixed_sizes() {
                blocks.alloc(s);
                requested += s;
            }
        }
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let s = rng.log_size(1, 64 * KIB);
            blocks.alloc(s);
            requested += s;
        }
        let count = blocks.0.len();
        check_delta(in_use() - start, requested, count);
        // Free half (without allocating while doing so), then the rest.
        let mut req_half = 0;
        for (p, l) in blocks.0.drain(..count / 2) {
            req_half += l.size();
            // SAFETY: live block allocated with `l`.
            unsafe { dealloc(p, l) };
        }
        check_delta(in_use() - start, requested - req_half, count - count / 2);
        blocks.free_all();
        assert_eq!(in_use(), start, "in_use did not return to its start");
    });
}

/// Slab blocks are counted at exactly their class size.
#[test]
fn in_use_counts_slab_blocks_at_their_class_size() {
    in_child("in_use_counts_slab_blocks_at_their_class_size", &[], || {
        let classes = size_classes();
        let mut blocks = Blocks(Vec::with_capacity(4 * classes.len()));
        let start = in_use();
        let mut expected = 0;
        for &c in &classes {
            // The class size itself, the smallest request of the class,
            // and one in between.
            let prev = classes.iter().rev().find(|&&p| p < c).copied().unwrap_or(0);
            for s in [c, prev + 1, (prev + 1 + c) / 2] {
                assert_eq!(class_size(s), c);
                let before = in_use();
                blocks.alloc(s);
                assert_eq!(in_use() - before, c, "in_use for a {s}-byte block");
                expected += c;
            }
        }
        assert_eq!(in_use() - start, expected);
        blocks.free_all();
        assert_eq!(in_use(), start);
    });
}

#[test]
fn in_use_with_remote_frees() {
    in_child("in_use_with_remote_frees", &[], || {
        let sizes: Vec<usize> = {
            let mut rng = Rng::new(9);
            let mut v: Vec<usize> = (0..5000).map(|_| rng.log_size(1, 64 * KIB)).collect();
            v.extend(fixed_sizes());
            v
        };
        let requested: usize = sizes.iter().sum();
        // The block list is allocated before the baseline; scoped threads
        // borrow it, so only the blocks (and the threads' own transient
        // allocations, freed by join) move `in_use`.
        let mut blocks = Blocks(Vec::with_capacity(sizes.len()));
        // Warm up scoped threads once: std keeps some state from the first
        // spawn (thread handles, scope data) that must not count as a leak.
        std::thread::scope(|sc| sc.spawn(|| ()).join().unwrap());
        common::settle();
        let start = in_use();
        // Allocated by another thread, freed here.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for &s in &sizes {
                    blocks.alloc(s);
                }
            })
            .join()
            .unwrap()
        });
        check_delta(in_use() - start, requested, sizes.len());
        blocks.free_all();
        assert_eq!(in_use(), start, "after freeing another thread's blocks");
        // Allocated here, freed by another thread.
        for &s in &sizes {
            blocks.alloc(s);
        }
        check_delta(in_use() - start, requested, sizes.len());
        std::thread::scope(|sc| sc.spawn(|| blocks.free_all()).join().unwrap());
        assert_eq!(in_use(), start, "after another thread freed our blocks");
    });
}

/// in_use follows reallocs that move the block or resize it in place (a
/// slab block within its class, a huge one resized by mremap), and returns
/// to its start after the free. Large objects resized inside their chunk:
/// see the next test.
#[test]
fn in_use_follows_realloc() {
    in_child("in_use_follows_realloc", &[], || {
        let start = in_use();
        let steps = [
            100usize,
            112, // same class as 100: in place
            3000,
            MIB,
            6 * MIB,
            9 * MIB,
            9 * MIB + 100, // huge, same mapping length
            12 * MIB,      // huge, mremap
            9 * MIB,
            500 * KIB,
            40,
        ];
        let mut layout = Layout::from_size_align(steps[0], 8).unwrap();
        // SAFETY: non-zero size; checked.
        let mut p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        check_delta(in_use() - start, steps[0], 1);
        for &s in &steps[1..] {
            let old = layout.size();
            // SAFETY: live block with `layout`; non-zero new size.
            p = unsafe { realloc(p, layout, s) };
            assert!(!p.is_null());
            layout = Layout::from_size_align(s, 8).unwrap();
            let delta = in_use().checked_sub(start).unwrap_or_else(|| {
                panic!("in_use fell below its start after realloc {old} -> {s}")
            });
            assert!(
                delta >= s && delta as f64 <= s as f64 * 1.13 + 16.0,
                "in_use rose by {delta} for one {s}-byte block (after realloc {old} -> {s})"
            );
        }
        // SAFETY: live block with `layout`.
        unsafe { dealloc(p, layout) };
        assert_eq!(in_use(), start, "after freeing the realloc'd block");
    });
}

/// A large object resized inside its oversized chunk (grown into the
/// chunk's slack, then shrunk while still over half the chunk): in_use
/// must cover the live size at each step and return to its start after
/// the free.
#[test]
fn in_use_follows_in_place_large_realloc() {
    in_child("in_use_follows_in_place_large_realloc", &[], || {
        let start = in_use() as isize;
        let delta = || in_use() as isize - start;
        let l1 = Layout::from_size_align(MIB, 8).unwrap();
        let l2 = Layout::from_size_align(MIB + 32 * KIB, 8).unwrap();
        let l3 = Layout::from_size_align(700 * KIB, 8).unwrap();
        // SAFETY: non-zero sizes; each pointer checked; freed once with
        // its current layout.
        let (d1, d2, d3, end) = unsafe {
            let p = alloc(l1);
            assert!(!p.is_null());
            let d1 = delta();
            // 1 MiB + 128 B header lives in a 1.125 MiB chunk: 32 KiB more
            // fits in place.
            let q = realloc(p, l1, l2.size());
            assert_eq!(q, p, "expected an in-place grow");
            let d2 = delta();
            let r = realloc(q, l2, l3.size());
            assert_eq!(r, p, "expected an in-place shrink");
            let d3 = delta();
            dealloc(r, l3);
            (d1, d2, d3, delta())
        };
        let ok =
            |d: isize, size: usize| d >= size as isize && d as f64 <= size as f64 * 1.13 + 16.0;
        assert!(
            ok(d1, l1.size()) && ok(d2, l2.size()) && d3 >= l3.size() as isize && end == 0,
            "in_use deltas: after alloc {d1}, grow in place to {} {d2}, shrink in place to {} {d3}, free {end}",
            l2.size(),
            l3.size()
        );
    });
}

/// After everything is freed and purged, `committed` returns to its start.
///
/// Not exactly: what legitimately stays committed is metadata that is
/// never returned, or returned only partly: chunk-map leaves (512 KiB per
/// 4 GiB of address space, mapped on first use and never unmapped), heap
/// records (256 KiB regions, never freed), and the header page of each
/// decommitted chunk the global cache keeps mapped for reuse. The test
/// allocates few enough chunks that those header pages stay well under
/// 1 MiB, and starts after a warm-up that maps the first leaf and the
/// heap record; so it asserts within 1 MiB.
#[test]
fn committed_returns_after_free_and_purge() {
    in_child("committed_returns_after_free_and_purge", &[], || {
        // Warm-up: map the metadata the measured part would otherwise map
        // (leaf, heap record), then return everything.
        drop(vec![0u8; 100]);
        let mut blocks = Blocks(Vec::with_capacity(10_000));
        chunkmalloc::purge();
        let s0 = chunkmalloc::stats();
        let mut rng = Rng::new(5);
        for _ in 0..5000 {
            blocks.alloc(rng.log_size(1, 8 * KIB));
        }
        for s in [100 * KIB, MIB, 3 * MIB, 10 * MIB] {
            blocks.alloc(s);
        }
        let s1 = chunkmalloc::stats();
        assert!(s1.committed > s0.committed + 14 * MIB);
        blocks.free_all();
        chunkmalloc::purge();
        let s2 = chunkmalloc::stats();
        eprintln!("start {s0:?}\nallocated {s1:?}\npurged {s2:?}");
        let diff = s2.committed as isize - s0.committed as isize;
        assert!(
            diff.unsigned_abs() <= MIB,
            "committed {} after free+purge vs {} at start ({diff:+} bytes)",
            s2.committed,
            s0.committed
        );
        assert_eq!(s2.in_use, s0.in_use);
        assert_eq!(s2.cached, 0, "purge left committed chunks in caches");
        assert_eq!(s2.large_chunks, s0.large_chunks);
        assert_eq!(s2.huge_chunks, s0.huge_chunks);
    });
}

/// Full (detached) chunks are counted exactly: blocks of one class filling
/// several chunks; some freed by another thread (the chunks are detached,
/// so they are queued on the pending stack, not yet collected), some freed
/// here into those queued chunks, then the rest collected by further
/// allocations. `in_use` is exact at every step.
#[test]
fn in_use_counts_full_chunks_exactly() {
    in_child("in_use_counts_full_chunks_exactly", &[], || {
        let size = 48;
        let cs = class_size(size);
        let n = 5000; // about four 64 KiB chunks of 48-byte blocks
        let layout = Layout::from_size_align(size, 8).unwrap();
        // Every list is allocated before the baseline.
        let mut ptrs: Vec<usize> = Vec::with_capacity(n);
        let mut kept = Vec::with_capacity(n);
        let mut gone = Vec::with_capacity(n);
        let mut stay = Vec::with_capacity(n);
        let mut more = Vec::with_capacity(n);
        std::thread::scope(|sc| sc.spawn(|| ()).join().unwrap());
        common::settle();
        let start = in_use();
        for _ in 0..n {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            ptrs.push(p as usize);
        }
        assert_eq!(in_use() - start, n * cs, "after filling the chunks");
        for (i, &p) in ptrs.iter().enumerate() {
            if i % 3 == 0 {
                gone.push(p);
            } else {
                kept.push(p);
            }
        }
        // Remote frees of every third block: most land in detached chunks.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for &p in &gone {
                    // SAFETY: allocated above with `layout`, freed once.
                    unsafe { dealloc(p as *mut u8, layout) };
                }
            })
            .join()
            .unwrap()
        });
        assert_eq!(in_use() - start, kept.len() * cs, "after remote frees");
        // Local frees of every other kept block, into the queued chunks.
        for (i, &p) in kept.iter().enumerate() {
            if i % 2 == 0 {
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { dealloc(p as *mut u8, layout) };
            } else {
                stay.push(p);
            }
        }
        assert_eq!(in_use() - start, stay.len() * cs, "after local frees");
        // More allocations collect the remote frees (the pending stack).
        for _ in 0..n {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            more.push(p as usize);
        }
        assert_eq!(in_use() - start, (stay.len() + n) * cs, "after reuse");
        for &p in stay.iter().chain(&more) {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { dealloc(p as *mut u8, layout) };
        }
        assert_eq!(in_use(), start, "after freeing everything");
    });
}

/// `stats()` walks every heap's chunks under that heap's lock while the
/// owners allocate and free, locally and across threads (blocks handed to
/// the next worker through a mailbox): it must neither crash nor hang, its
/// `in_use` stays within what can be live at once, and once the workers
/// are done it is exact again.
#[test]
fn in_use_sampled_while_threads_churn() {
    in_child("in_use_sampled_while_threads_churn", &[], || {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Mutex;
        const WORKERS: usize = 4;
        const HELD: usize = 256;
        const BATCH: usize = 32;
        const MAX: usize = 4 * KIB;
        // Everything the workers use is allocated before the baseline.
        let mailboxes: Vec<Mutex<Vec<(usize, usize)>>> = (0..WORKERS)
            .map(|_| Mutex::new(Vec::with_capacity(64 * BATCH)))
            .collect();
        let mut helds: Vec<Vec<(usize, usize)>> =
            (0..WORKERS).map(|_| Vec::with_capacity(HELD + 1)).collect();
        let mut outs: Vec<Vec<(usize, usize)>> =
            (0..WORKERS).map(|_| Vec::with_capacity(BATCH)).collect();
        let stop = AtomicBool::new(false);
        let samples = AtomicUsize::new(0);
        // Warm up as many threads at once as the test runs: thread
        // libraries keep some of what they allocate for a thread (glibc
        // keeps a thread's TLS bookkeeping with its stack in the stack
        // cache), so the first run of five concurrent threads may leave
        // memory live that later runs reuse. With a one-thread warm-up the
        // end was 1,152 bytes above the start once, under load (not
        // reproduced in 30 loaded runs since).
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..=WORKERS).map(|_| sc.spawn(|| ())).collect();
            for h in hs {
                h.join().unwrap();
            }
        });
        common::settle();
        let start = in_use();
        // Live at once: each worker's held blocks and outgoing batch, and
        // what the mailboxes hold (at most 64 batches each, see below).
        let bound = WORKERS * (HELD + BATCH + 64 * BATCH) * MAX;
        let free = |(p, s): (usize, usize)| {
            // SAFETY: allocated below with this size and alignment 8.
            unsafe { dealloc(p as *mut u8, Layout::from_size_align(s, 8).unwrap()) }
        };
        std::thread::scope(|sc| {
            let mut handles = Vec::new();
            for (id, (held, out)) in helds.iter_mut().zip(outs.iter_mut()).enumerate() {
                let (mailboxes, free) = (&mailboxes, &free);
                handles.push(sc.spawn(move || {
                    let mut rng = Rng::new(id as u64 + 7);
                    for round in 0..20_000 {
                        let s = rng.log_size(1, MAX);
                        // SAFETY: non-zero size.
                        let p = unsafe { alloc(Layout::from_size_align(s, 8).unwrap()) };
                        assert!(!p.is_null());
                        held.push((p as usize, s));
                        if held.len() > HELD {
                            let i = rng.range(0, held.len() - 1);
                            let b = held.swap_remove(i);
                            if out.len() < BATCH {
                                out.push(b);
                            } else {
                                free(b);
                            }
                        }
                        if round % 64 == 0 {
                            // Hand the batch to the next worker (if its
                            // mailbox has room) and free what was handed
                            // to us: remote frees.
                            let mut next = mailboxes[(id + 1) % WORKERS].lock().unwrap();
                            if next.len() + out.len() <= next.capacity() {
                                next.append(out);
                            }
                            drop(next);
                            let mut mine = mailboxes[id].lock().unwrap();
                            while let Some(b) = mine.pop() {
                                free(b);
                            }
                        }
                    }
                    for b in held.drain(..).chain(out.drain(..)) {
                        free(b);
                    }
                }));
            }
            let sampler = sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let u = in_use();
                    assert!(
                        u <= start + bound,
                        "in_use {u} over everything that can be live ({})",
                        start + bound
                    );
                    samples.fetch_add(1, Ordering::Relaxed);
                }
            });
            for h in handles {
                h.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            sampler.join().unwrap();
        });
        for m in &mailboxes {
            for b in m.lock().unwrap().drain(..) {
                free(b);
            }
        }
        assert!(samples.load(Ordering::Relaxed) > 0);
        assert_eq!(in_use(), start, "after every worker freed everything");
    });
}

#[test]
fn remote_frees_are_counted_once_collected_or_not() {
    in_child(
        "remote_frees_are_counted_once_collected_or_not",
        &[],
        || {
            const N: usize = 1000;
            let make = |k: u8| -> Vec<Box<[u8; 64]>> {
                (0..N).map(|i| Box::new([(i as u8) ^ k; 64])).collect()
            };
            let remote = || chunkmalloc::stats().remote_frees;
            let blocks = make(1);
            let before = remote();
            // Another thread frees them: the frees wait on the chunks' remote
            // lists, which this thread has not collected yet.
            std::thread::spawn(move || {
                for (i, b) in blocks.iter().enumerate() {
                    assert!(b.iter().all(|&x| x == (i as u8) ^ 1));
                }
                drop(blocks);
            })
            .join()
            .unwrap();
            let pending = remote() - before;
            // The spawn's own bookkeeping may add a few remote frees.
            assert!(
                (N..N + 32).contains(&pending),
                "{pending} remote frees counted for {N} blocks freed by another thread"
            );
            // Allocating the same size again collects them (this thread owns
            // their chunks): counted once, not again.
            let again = make(2);
            let after = remote() - before;
            assert!(
                (pending..pending + 32).contains(&after),
                "remote frees {pending} before the owner collected them, {after} after"
            );
            for (i, b) in again.iter().enumerate() {
                assert!(b.iter().all(|&x| x == (i as u8) ^ 2));
            }
        },
    );
}

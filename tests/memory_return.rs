//! Memory goes back to the OS (its own test binary; each scenario runs in a
//! child process so RSS and committed bytes see only that scenario).
//!
//! * `purge()` after freeing ~256 MiB of small and large objects: RSS
//!   falls by at least 75% of what was added and `committed` returns to
//!   within a few MiB of its start.
//! * Without `purge()`: with a zero or short purge delay, freed chunks are
//!   decommitted by the allocator's own slow-path housekeeping.
//! * Cached small-object chunks are decommitted when a huge mapping is
//!   made, however long the purge delay.
//! * A buffer that `realloc` grows step by step to 2 MiB leaves none of
//!   the chunks it outgrew cached: past 128 KiB it lives in a mapping of
//!   its own, resized in place.

mod common;

use std::time::Duration;

use common::{in_child, rss, Rng, KIB, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

type Blocks = Vec<Box<[u8]>>;

struct Snapshot {
    rss: usize,
    committed: usize,
    cached: usize,
}

fn snap() -> Snapshot {
    let s = chunkmalloc::stats();
    Snapshot {
        rss: rss(),
        committed: s.committed,
        cached: s.cached,
    }
}

/// Allocates and touches ~128 MiB of small objects (64 B - 4 KiB), 112
/// large objects of 1 MiB and two huge ones of 8 MiB + 1 (own mappings),
/// checks a few, and returns them.
fn allocate_256m() -> (Blocks, Blocks) {
    let mut rng = Rng::new(42);
    let mut small: Vec<Box<[u8]>> = Vec::with_capacity(80_000);
    let mut total = 0;
    while total < 128 * MIB {
        let n = rng.range(64, 4 * KIB);
        small.push(vec![(small.len() % 251) as u8; n].into_boxed_slice());
        total += n;
    }
    let mut large: Vec<Box<[u8]>> = (0..112)
        .map(|i| vec![i as u8 + 1; MIB].into_boxed_slice())
        .collect();
    large.push(vec![113; 8 * MIB + 1].into_boxed_slice());
    large.push(vec![114; 8 * MIB + 1].into_boxed_slice());
    for (i, b) in small.iter().enumerate().step_by(97) {
        assert!(b.iter().all(|&x| x == (i % 251) as u8));
    }
    for (i, b) in large.iter().enumerate() {
        let last = b.len() - 1;
        assert_eq!((b[0], b[last]), (i as u8 + 1, i as u8 + 1));
    }
    (small, large)
}

/// Asserts memory went back: RSS fell by at least 75 % of what was added
/// (`s1` at the peak, `after` at the end) and committed bytes are within
/// `slack` of the start (`s0`).
fn assert_returned(
    s0: &Snapshot,
    s1: &Snapshot,
    after: &Snapshot,
    added: usize,
    slack: usize,
    what: &str,
) {
    let fallen = s1.rss.saturating_sub(after.rss);
    assert!(
        fallen * 4 >= added * 3,
        "{what}: RSS fell by {} MiB of the {} MiB added",
        fallen / MIB,
        added / MIB
    );
    assert!(
        after.committed <= s0.committed + slack,
        "{what}: committed {} KiB, {} KiB at start",
        after.committed / KIB,
        s0.committed / KIB
    );
}

fn report(tag: &str, s: &Snapshot) {
    eprintln!(
        "{tag}: rss {} MiB, committed {} KiB, cached {} KiB",
        s.rss / MIB,
        s.committed / KIB,
        s.cached / KIB
    );
}

#[test]
fn purge_returns_memory_to_the_os() {
    in_child("purge_returns_memory_to_the_os", &[], || {
        let s0 = snap();
        report("start", &s0);
        let (small, large) = allocate_256m();
        let s1 = snap();
        report("allocated", &s1);
        assert!(s1.committed >= s0.committed + 256 * MIB);
        let added = s1.rss.saturating_sub(s0.rss);
        assert!(
            added >= 200 * MIB,
            "touching 256 MiB added only {added} bytes of RSS"
        );
        drop(small);
        drop(large);
        let released = chunkmalloc::purge();
        let s2 = snap();
        report("freed + purge", &s2);
        assert!(released >= 200 * MIB, "purge() reported {released} bytes");
        // What may stay committed: the header page of each decommitted
        // chunk the cache keeps mapped for reuse (at most 512 of them,
        // 2 MiB), plus chunk-map leaves.
        assert_returned(&s0, &s1, &s2, added, 4 * MIB, "freed + purge");
        assert!(
            s2.cached <= MIB,
            "{} KiB still cached committed",
            s2.cached / KIB
        );
    });
}

/// Frees ~256 MiB, waits `wait`, then runs a few allocations that take the
/// slow path (classes not used before, and a 200 KiB object whose acquire
/// and release both run the provider's housekeeping), and checks that the
/// freed chunks were decommitted without any `purge()` call. (Only the
/// chunks those last allocations just freed may still be cached: the
/// 200 KiB object's 256 KiB chunk.)
fn delayed_purge_scenario(delay_ms: u64, wait: Duration) {
    chunkmalloc::config::set_purge_delay_ms(delay_ms);
    assert_eq!(chunkmalloc::config::purge_delay_ms(), delay_ms);
    let s0 = snap();
    report("start", &s0);
    let (small, large) = allocate_256m();
    let s1 = snap();
    report("allocated", &s1);
    let added = s1.rss.saturating_sub(s0.rss);
    drop(small);
    drop(large);
    let s2 = snap();
    report("freed", &s2);
    std::thread::sleep(wait);
    for round in 0..3 {
        let objs: Vec<Vec<u8>> = [16usize, 20 * KIB, 40 * KIB, 200 * KIB]
            .iter()
            .map(|&n| vec![round as u8; n])
            .collect();
        drop(objs);
    }
    let s3 = snap();
    report("after a few more allocations", &s3);
    assert!(
        s3.cached <= 2 * MIB,
        "{} KiB of free chunks still committed in caches (delay {delay_ms} ms)",
        s3.cached / KIB
    );
    // Slab chunks that stay attached as their class's current chunk are
    // not cached (about 60 classes x 64 KiB here), plus decommitted
    // chunks' header pages: well under 16 MiB of the 256 MiB.
    assert_returned(
        &s0,
        &s1,
        &s3,
        added,
        16 * MIB,
        &format!("delay {delay_ms} ms"),
    );
}

#[test]
fn zero_purge_delay_decommits_without_purge() {
    in_child("zero_purge_delay_decommits_without_purge", &[], || {
        delayed_purge_scenario(0, Duration::ZERO)
    });
}

#[test]
fn short_purge_delay_decommits_without_purge() {
    in_child("short_purge_delay_decommits_without_purge", &[], || {
        delayed_purge_scenario(20, Duration::from_millis(100))
    });
}

/// The purge delay can also be set from the environment.
#[test]
fn purge_delay_from_environment() {
    in_child(
        "purge_delay_from_environment",
        &[("CHUNKMALLOC_PURGE_DELAY_MS", "1234")],
        || assert_eq!(chunkmalloc::config::purge_delay_ms(), 1234),
    );
}

/// Objects allocated by threads that have exited, freed by the main
/// thread: their chunks belong to abandoned heaps, which `purge()` collects.
#[test]
fn memory_of_exited_threads_is_returned() {
    in_child("memory_of_exited_threads_is_returned", &[], || {
        let s0 = snap();
        report("start", &s0);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut rng = Rng::new(t);
                    let mut v = Vec::new();
                    let mut total = 0;
                    while total < 32 * MIB {
                        let n = rng.range(64, 4 * KIB);
                        v.push(vec![t as u8; n].into_boxed_slice());
                        total += n;
                    }
                    v.extend((0..8).map(|_| vec![t as u8; MIB].into_boxed_slice()));
                    v
                })
            })
            .collect();
        // All four ran at once, so they had four heaps, now abandoned.
        let objs: Vec<Box<[u8]>> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let s1 = snap();
        report("allocated by 4 exited threads", &s1);
        let added = s1.rss.saturating_sub(s0.rss);
        drop(objs);
        chunkmalloc::purge();
        let s2 = snap();
        report("freed by main + purge", &s2);
        assert_returned(&s0, &s1, &s2, added, 8 * MIB, "freed by main + purge");
    });
}

/// Cached small-object chunks give way when the program maps huge memory:
/// a fresh huge mapping decommits about as many bytes of the oldest
/// cached 64 KiB chunks (`GlobalCache::trim_slabs`), so the two peaks do
/// not stack, whatever the purge delay (a minute here). Fails with the
/// trim removed: the cache keeps its ~6 MiB and `committed` grows by the
/// whole mapping.
#[test]
fn cached_slab_chunks_give_way_to_a_huge_mapping() {
    in_child(
        "cached_slab_chunks_give_way_to_a_huge_mapping",
        &[("CHUNKMALLOC_PURGE_DELAY_MS", "60000")],
        || {
            // ~8 MiB of 1000 B blocks, then all freed: their chunks go to
            // the heap's local cache (up to 2 MiB) and the global cache.
            let blocks: Vec<Vec<u8>> = (0..8192).map(|i| vec![i as u8; 1000]).collect();
            for (i, b) in blocks.iter().enumerate() {
                assert!(
                    b.iter().all(|&x| x == i as u8),
                    "block {i} lost its contents"
                );
            }
            drop(blocks);
            let before = snap();
            assert!(
                before.cached >= 6 * MIB,
                "the freed chunks were not cached: {} KiB",
                before.cached / KIB
            );
            let mut big = vec![0u8; 6 * MIB];
            big[6 * MIB - 1] = 1;
            let after = snap();
            report("before", &before);
            report("after", &after);
            assert!(
                before.cached - after.cached >= 5 * MIB,
                "cached slab chunks kept beside a fresh 6 MiB mapping: cached {} -> {} KiB",
                before.cached / KIB,
                after.cached / KIB
            );
            assert!(
                after.committed < before.committed + 2 * MIB,
                "committed grew by {} KiB for a 6 MiB mapping while slab chunks were cached",
                (after.committed - before.committed) / KIB
            );
            assert_eq!(big.iter().map(|&x| x as usize).sum::<usize>(), 1);
        },
    );
}

#[test]
fn realloc_growth_leaves_no_outgrown_chunks_cached() {
    in_child(
        "realloc_growth_leaves_no_outgrown_chunks_cached",
        &[("CHUNKMALLOC_PURGE_DELAY_MS", "60000")],
        || {
            use std::alloc::{alloc, dealloc, realloc, Layout};
            let before = snap();
            let huge_before = chunkmalloc::stats().huge_chunks;
            // A vector's growth: x1.5 from 16 KiB to 2 MiB, each new part
            // written, the whole checked at every step.
            let mut len = 16 * KIB;
            // SAFETY: non-zero size, alignment 8.
            let mut p = unsafe { alloc(Layout::from_size_align(len, 8).unwrap()) };
            assert!(!p.is_null());
            let byte = |i: usize| (i % 251) as u8;
            // SAFETY: `p` holds `len` bytes.
            unsafe { (0..len).for_each(|i| p.add(i).write(byte(i))) };
            // Once the buffer is a mapping of its own, a page mapped right
            // after it makes its next growth move (into a larger target);
            // the growth after that must still be an `mremap`, not a copy
            // that caches the mapping it leaves.
            let mut guard = None;
            let mut most_cached = before.cached;
            while len < 2 * MIB {
                let huge_now = chunkmalloc::stats().huge_chunks;
                if guard.is_none() && huge_now == huge_before + 1 {
                    let end = (p as usize + len).next_multiple_of(64 * KIB);
                    let g = common::reserve_at(end, 4096);
                    assert!(!g.is_null(), "guard page not placed after the buffer");
                    guard = Some((g, p));
                }
                let new = (len + len / 2).min(2 * MIB);
                // SAFETY: `p` is live with this layout; `new` is non-zero.
                p = unsafe { realloc(p, Layout::from_size_align(len, 8).unwrap(), new) };
                assert!(!p.is_null(), "realloc to {new} failed");
                // SAFETY: `p` holds `new` bytes, the first `len` written.
                unsafe {
                    assert!(
                        (0..len).step_by(61).all(|i| *p.add(i) == byte(i)),
                        "contents lost growing {len} -> {new}"
                    );
                    (len..new).for_each(|i| p.add(i).write(byte(i)));
                }
                len = new;
                most_cached = most_cached.max(chunkmalloc::stats().cached);
            }
            let after = snap();
            let huge_after = chunkmalloc::stats().huge_chunks;
            report("before", &before);
            report("after", &after);
            let (g, guarded) = guard.expect("the buffer never became a mapping");
            assert_ne!(p, guarded, "the guarded mapping did not move");
            common::unreserve(g, 4096);
            // SAFETY: as above.
            unsafe {
                assert!((0..len).step_by(7).all(|i| *p.add(i) == byte(i)));
                dealloc(p, Layout::from_size_align(len, 8).unwrap());
            }
            assert_eq!(
                huge_after,
                huge_before + 1,
                "the grown buffer is not a mapping of its own"
            );
            // Moving through the chunk classes would leave each outgrown
            // chunk (128 KiB .. 1.5 MiB, about 4 MiB in all) cached for the
            // purge delay.
            assert!(
                most_cached < before.cached + 256 * KIB,
                "outgrown chunks cached: {} -> {} KiB at most",
                before.cached / KIB,
                most_cached / KIB
            );
        },
    );
}

/// Blocks of 64 bytes allocated by [`scattered_survivors`], and one in
/// [`KEEP`] of them kept.
const BLOCKS: usize = 1 << 20;
const KEEP: usize = 512;

/// A kept 64-byte block and its index.
type Kept = Vec<(usize, Box<[u64; 8]>)>;

/// What block `i` of a run seeded with `seed` holds.
fn block_fill(seed: u64, i: usize) -> [u64; 8] {
    [(i as u64).wrapping_mul(0x9E37_79B9) ^ seed; 8]
}

/// 64 MiB of 64-byte blocks, all but one in 512 freed: one live block per
/// eight pages, in every slab, so no chunk is empty and only giving back
/// the free pages inside the chunks returns memory. Returns the kept ones.
fn scattered_survivors(seed: u64) -> Kept {
    let mut kept = Vec::with_capacity(BLOCKS / KEEP);
    let mut all: Vec<Option<Box<[u64; 8]>>> = (0..BLOCKS)
        .map(|i| Some(Box::new(block_fill(seed, i))))
        .collect();
    for (i, b) in all.iter_mut().enumerate() {
        let b = b.take().unwrap();
        if i % KEEP == 0 {
            kept.push((i, b));
        }
    }
    kept
}

/// Every kept block still holds what it was given.
fn check_survivors(kept: &Kept, seed: u64) {
    for (i, b) in kept {
        assert_eq!(**b, block_fill(seed, *i), "survivor {i} changed");
    }
}

/// Allocates and frees blocks of another size (slow-path entries, so the
/// allocator's housekeeping runs), 20 ms apart, until `committed` has
/// fallen 40 MiB below `s1` or `secs` have passed; asserts the fall.
fn housekeeping_gives_back_40m(s1: &Snapshot, secs: u64, what: &str) {
    let t0 = std::time::Instant::now();
    let mut s2 = snap();
    while t0.elapsed() < Duration::from_secs(secs) {
        let other: Vec<Box<[u8; 200]>> = (0..2000).map(|_| Box::new([1; 200])).collect();
        drop(other);
        std::thread::sleep(Duration::from_millis(20));
        s2 = snap();
        if s1.committed.saturating_sub(s2.committed) >= 40 * MIB {
            break;
        }
    }
    report(what, &s2);
    assert!(
        s1.committed.saturating_sub(s2.committed) >= 40 * MIB,
        "{what}: committed {} -> {} KiB",
        s1.committed / KIB,
        s2.committed / KIB
    );
}

/// `purge()` after [`scattered_survivors`] must give back most of the 64
/// MiB with every survivor intact; allocating the same amount again must
/// reuse those pages (committed stays at the first peak, not above) with
/// blocks disjoint from the survivors; and once everything is freed and
/// purged, committed must come back to its start, which it cannot if a
/// page given back were released from the budget twice or never charged
/// again.
#[test]
fn purge_gives_back_free_pages_inside_partly_used_slabs() {
    in_child(
        "purge_gives_back_free_pages_inside_partly_used_slabs",
        &[],
        || {
            let s0 = snap();
            let kept = scattered_survivors(1);
            let s1 = snap();
            report("one in 512 kept", &s1);
            let released = chunkmalloc::purge();
            let s2 = snap();
            report("purged", &s2);
            assert!(
                released >= 40 * MIB,
                "purge() gave back {} KiB",
                released / KIB
            );
            assert!(
                s1.committed - s2.committed >= 40 * MIB,
                "committed {} -> {} KiB",
                s1.committed / KIB,
                s2.committed / KIB
            );
            assert!(
                s1.rss.saturating_sub(s2.rss) >= 40 * MIB,
                "RSS {} -> {} MiB",
                s1.rss / MIB,
                s2.rss / MIB
            );
            let holes = chunkmalloc::stats().slab_holes;
            assert!(
                holes >= 40 * MIB && holes <= released,
                "{} KiB of slab holes after purge() gave back {} KiB",
                holes / KIB,
                released / KIB
            );
            check_survivors(&kept, 1);
            // The same number of blocks again: the holes' blocks come back.
            let mut again: Vec<Box<[u64; 8]>> = Vec::with_capacity(BLOCKS);
            again.extend((0..BLOCKS).map(|i| Box::new(block_fill(2, i))));
            let s3 = snap();
            report("allocated again", &s3);
            assert!(
                chunkmalloc::stats().slab_holes <= 2 * MIB,
                "{} KiB of holes left after as many blocks were allocated again",
                chunkmalloc::stats().slab_holes / KIB
            );
            assert!(
                s3.committed <= s1.committed + 2 * MIB,
                "the pages given back were not reused: committed {} KiB, {} KiB at the first peak",
                s3.committed / KIB,
                s1.committed / KIB
            );
            let mut seen = std::collections::HashSet::with_capacity(BLOCKS + kept.len());
            for b in again
                .iter()
                .map(|b| &**b)
                .chain(kept.iter().map(|(_, b)| &**b))
            {
                let a = b as *const [u64; 8] as usize;
                assert_eq!(a % 16, 0, "block {a:#x} misaligned");
                assert!(seen.insert(a), "block {a:#x} handed out twice");
            }
            drop(seen);
            for (i, b) in again.iter().enumerate() {
                assert_eq!(
                    **b,
                    block_fill(2, i),
                    "block {i} of the second round changed"
                );
            }
            check_survivors(&kept, 1);
            drop(again);
            drop(kept);
            chunkmalloc::purge();
            let s4 = snap();
            report("all freed and purged", &s4);
            // (The purge gives back free pages of whatever else is partly
            // used, so a few holes may be new.)
            assert!(
                chunkmalloc::stats().slab_holes <= MIB,
                "{} KiB of holes after every block was freed",
                chunkmalloc::stats().slab_holes / KIB
            );
            assert_returned(
                &s0,
                &s1,
                &s4,
                s1.rss.saturating_sub(s0.rss),
                4 * MIB,
                "all freed",
            );
        },
    );
}

/// `purge()` in one thread reaches another live thread's partly used
/// slabs at that thread's next housekeeping tick: a worker makes
/// [`scattered_survivors`] and waits; the main thread purges; the worker
/// then makes a burst of allocations (one of each of 64 size classes, each
/// a slow-path entry) and the worker's free pages must be gone from
/// `committed`. Its survivors stay intact.
#[test]
fn purge_reaches_other_threads_at_their_next_tick() {
    in_child(
        "purge_reaches_other_threads_at_their_next_tick",
        &[],
        || {
            use std::sync::mpsc::channel;
            let (to_main, from_worker) = channel::<()>();
            let (to_worker, from_main) = channel::<()>();
            let worker = std::thread::spawn(move || {
                let kept = scattered_survivors(3);
                to_main.send(()).unwrap();
                from_main.recv().unwrap();
                let burst: Vec<Vec<u8>> = (1..=64).map(|k| vec![k as u8; k * 16]).collect();
                drop(burst);
                to_main.send(()).unwrap();
                from_main.recv().unwrap();
                check_survivors(&kept, 3);
            });
            from_worker.recv().unwrap();
            let s1 = snap();
            report("worker holds one in 512", &s1);
            chunkmalloc::purge();
            let s2 = snap();
            report("main purged", &s2);
            to_worker.send(()).unwrap();
            from_worker.recv().unwrap();
            let s3 = snap();
            report("worker ticked", &s3);
            assert!(
                s1.committed.saturating_sub(s3.committed) >= 40 * MIB,
                "the worker's free pages were not given back: committed {} -> {} KiB",
                s1.committed / KIB,
                s3.committed / KIB
            );
            to_worker.send(()).unwrap();
            worker.join().unwrap();
        },
    );
}

/// Without `purge()`: a heap's slabs that no allocation has come back to
/// for ten purge delays (here 10 ms each), mostly free, give back their
/// free pages at the owner's housekeeping, which the same thread's
/// allocations of another size run. The survivors stay intact.
#[test]
fn idle_slabs_give_back_their_free_pages_without_purge() {
    in_child(
        "idle_slabs_give_back_their_free_pages_without_purge",
        &[("CHUNKMALLOC_PURGE_DELAY_MS", "10")],
        || {
            let kept = scattered_survivors(4);
            let s1 = snap();
            report("one in 512 kept", &s1);
            housekeeping_gives_back_40m(&s1, 3, "after housekeeping, no purge()");
            check_survivors(&kept, 4);
        },
    );
}

/// `purge()` reaches the slabs of a thread that has exited (its heap
/// abandoned, adopted by nobody): the thread makes [`scattered_survivors`],
/// hands them to main and exits; main purges, and `committed` must fall by
/// 40 MiB or more with every survivor intact.
#[test]
fn purge_reaches_the_slabs_of_exited_threads() {
    in_child("purge_reaches_the_slabs_of_exited_threads", &[], || {
        let kept = std::thread::spawn(|| scattered_survivors(5))
            .join()
            .unwrap();
        let s1 = snap();
        report("thread exited", &s1);
        assert!(chunkmalloc::stats().abandoned_heaps >= 1);
        chunkmalloc::purge();
        let s2 = snap();
        report("purged", &s2);
        assert!(
            s1.committed.saturating_sub(s2.committed) >= 40 * MIB,
            "committed {} -> {} KiB",
            s1.committed / KIB,
            s2.committed / KIB
        );
        check_survivors(&kept, 5);
    });
}

/// Without `purge()`: an exited thread's slabs (its heap abandoned,
/// adopted by nobody), mostly free, give back their free pages once idle
/// for ten purge delays (here 10 ms each), through the sweeps that any
/// allocating thread's housekeeping runs. Survivors intact.
#[test]
fn exited_threads_slabs_give_back_their_free_pages_without_purge() {
    in_child(
        "exited_threads_slabs_give_back_their_free_pages_without_purge",
        &[("CHUNKMALLOC_PURGE_DELAY_MS", "10")],
        || {
            let kept = std::thread::spawn(|| scattered_survivors(6))
                .join()
                .unwrap();
            let s1 = snap();
            report("thread exited", &s1);
            housekeeping_gives_back_40m(&s1, 3, "after sweeps, no purge()");
            check_survivors(&kept, 6);
        },
    );
}

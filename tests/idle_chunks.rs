//! Chunks that hold no live block but that nothing allocates from go back
//! to the provider without waiting for the owner's bin walk, a sweep or
//! the thread's exit (its own test binary; every scenario runs in a child
//! process, so the chunk counts see only that scenario):
//!
//! * an empty `current` chunk of an idle class serves the next class that
//!   needs a chunk of the same size, before the global cache or new
//!   memory; a loop cycling through sizes keeps its classes' chunks;
//! * an attached chunk that is not `current`, whose every block another
//!   thread freed, is retired by its owner's housekeeping within a few
//!   milliseconds of slow-path activity, while the owner allocates only
//!   other classes;
//! * chunks of a dead thread's heap that remote frees emptied are retired
//!   by any thread's housekeeping, with no thread mapping memory and the
//!   periodic sweep out of reach (a one-minute purge delay).
//!
//! * a chunk reused by a class that carves little of it gives back the
//!   pages an earlier use touched beyond its carve cursor, once the cursor
//!   has stood still for a few housekeeping ticks; carving on afterwards
//!   charges and fills them again.
//!
//! Each test fails with its mechanism removed (the first: the second
//! class's block lands in another chunk; the others: the chunk count stays
//! where it was until the deadline).

mod common;

use std::alloc::{alloc, dealloc, Layout};
use std::time::{Duration, Instant};

use chunkmalloc::stats;
use common::in_child;

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// Slab chunks are 64 KiB-aligned for blocks below 16 KiB.
const CHUNK: usize = 64 * 1024;
/// A block size no other code in the test process uses (its class holds
/// 21 blocks per chunk).
const SIZE: usize = 3000;
/// A minute: the periodic sweep (every two purge delays) cannot run
/// during a test, so only the mechanism under test can retire chunks.
const LONG_DELAY: &[(&str, &str)] = &[("CHUNKMALLOC_PURGE_DELAY_MS", "60000")];

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn granule(p: usize) -> usize {
    p & !(CHUNK - 1)
}

/// Allocates `n` blocks of `size` bytes, each filled with its index.
fn blocks(n: usize, size: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            // SAFETY: a non-zero size.
            let p = unsafe { alloc(layout(size)) };
            assert!(!p.is_null());
            // SAFETY: `p` holds `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            p as usize
        })
        .collect()
}

/// Checks and frees block `i` of `size` bytes from [`blocks`].
fn free_block(p: usize, i: usize, size: usize) {
    let p = p as *mut u8;
    // SAFETY: a live block of `size` bytes from `blocks`.
    unsafe {
        assert!(
            (0..size).all(|k| *p.add(k) == i as u8),
            "block {i} lost its contents"
        );
        dealloc(p, layout(size));
    }
}

/// `n` allocations of a 100-byte block, each freed at once.
fn pairs_100(n: usize) {
    for _ in 0..n {
        // SAFETY: a non-zero size; freed at once.
        unsafe {
            // `black_box`: the compiler may remove an allocation whose
            // memory is never read.
            let p = std::hint::black_box(alloc(layout(100)));
            assert!(!p.is_null());
            p.write(1);
            dealloc(std::hint::black_box(p), layout(100));
        }
    }
}

/// Lets every class but the 100-byte one become idle: a class counts as
/// idle once the heap has taken its slow path a few hundred times since
/// the class last did, and a one-block alloc/free loop takes it once per
/// page of blocks (36 allocations of 100 B).
fn idle_a_while() {
    pairs_100(64 * 1024);
}

/// Gives the class [`tick_until_slab_chunks`] uses a chunk before the
/// scenario counts chunks (acquiring it later could reclaim from other
/// heaps on the way, or add a chunk), and keeps one block in it for the
/// rest of the (child) process so that it is never an empty current chunk
/// another class could take.
fn warm() {
    // SAFETY: a non-zero size; the block is deliberately never freed.
    let p = unsafe { alloc(layout(100)) };
    assert!(!std::hint::black_box(p).is_null());
}

/// Runs slow-path allocations of another class (an alloc/free pair of a
/// 100-byte block refills from its own frees through the slow path every
/// other allocation, and housekeeping ticks every 16th slow path) until
/// `done()`, or two seconds pass.
fn tick_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        pairs_100(256);
        if done() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// [`tick_until`] `stats().slab_chunks` is at most `target`; returns the
/// last count.
fn tick_until_slab_chunks(target: usize) -> usize {
    tick_until(|| stats().slab_chunks <= target);
    stats().slab_chunks
}

#[test]
fn idle_current_serves_another_class() {
    in_child("idle_current_serves_another_class", &[], || {
        // Retires every empty current chunk of this heap and decommits the
        // global cache, which then holds chunks a new class could take.
        chunkmalloc::purge();
        // SAFETY: non-zero sizes; each block is freed once.
        unsafe {
            let x = alloc(layout(5000));
            assert!(!x.is_null());
            x.write_bytes(7, 5000);
            dealloc(x, layout(5000));
            idle_a_while();
            // 7000 B is another class with a 64 KiB chunk; the only empty
            // current chunk of an idle class is the 5000 B class's.
            let y = alloc(layout(7000));
            assert!(!y.is_null());
            y.write_bytes(9, 7000);
            assert!((0..7000).all(|k| *y.add(k) == 9));
            assert_eq!(
                granule(y as usize),
                granule(x as usize),
                "the 7000 B block ({y:p}) is not in the empty chunk the 5000 B class \
                 left ({x:p})"
            );
            dealloc(y, layout(7000));
        }
    });
}

/// The other side of [`idle_current_serves_another_class`]: a loop that
/// cycles through sizes of different classes keeps each class's current
/// chunk empty between uses, and none of them may be taken from a class
/// in use. Taking them made every allocation of such a loop steal the
/// chunk the previous one had just taken (a chunk acquisition per
/// allocation, 656 instead of 47 instructions per pair).
#[test]
fn cycling_sizes_keep_their_chunks() {
    in_child("cycling_sizes_keep_their_chunks", &[], || {
        const SIZES: [usize; 8] = [16, 32, 48, 64, 128, 256, 384, 512];
        let cycle = |rounds: usize| {
            for i in 0..rounds * SIZES.len() {
                let l = layout(SIZES[i % SIZES.len()]);
                // SAFETY: a non-zero size; freed at once.
                unsafe {
                    let p = std::hint::black_box(alloc(l));
                    assert!(!p.is_null());
                    p.write(i as u8);
                    dealloc(std::hint::black_box(p), l);
                }
            }
        };
        cycle(1000);
        let acquired = || {
            let s = stats();
            s.chunks_mapped_total + s.chunks_reused_total
        };
        let before = acquired();
        cycle(100_000);
        let after = acquired();
        assert!(
            after - before <= 8,
            "a loop over 8 sizes acquired {} chunks in 800,000 allocations",
            after - before
        );
    });
}

#[test]
fn chunk_emptied_remotely_is_retired_by_its_owner() {
    in_child(
        "chunk_emptied_remotely_is_retired_by_its_owner",
        LONG_DELAY,
        || {
            warm();
            // Three chunks' worth: the first two fill up and are detached,
            // the last is the class's current chunk.
            let ps = blocks(60, SIZE);
            let a = granule(ps[0]);
            assert_ne!(granule(ps[59]), a, "60 blocks of 3000 B fit one chunk");
            let in_a: Vec<usize> = (0..ps.len()).filter(|&i| granule(ps[i]) == a).collect();
            assert!(in_a.len() > 2, "chunk A holds {} blocks", in_a.len());
            // A local free brings the full chunk back: attached, behind the
            // current chunk.
            free_block(ps[in_a[0]], in_a[0], SIZE);
            // Another thread frees the rest of chunk A.
            let rest: Vec<(usize, usize)> = in_a[1..].iter().map(|&i| (ps[i], i)).collect();
            std::thread::spawn(move || {
                for (p, i) in rest {
                    free_block(p, i, SIZE);
                }
            })
            .join()
            .unwrap();
            let before = stats().slab_chunks;
            let after = tick_until_slab_chunks(before - 1);
            assert!(
                after < before,
                "chunk A, with every block freed, is still attached: slab chunks \
                 {before} -> {after}"
            );
            for (i, &p) in ps.iter().enumerate() {
                if granule(p) != a {
                    free_block(p, i, SIZE);
                }
            }
        },
    );
}

#[test]
fn dead_heap_chunks_emptied_remotely_are_retired() {
    in_child(
        "dead_heap_chunks_emptied_remotely_are_retired",
        LONG_DELAY,
        || {
            warm();
            // A thread allocates three chunks' worth and exits: its heap is
            // abandoned with them attached (or detached as full) and armed.
            let ps = std::thread::spawn(|| blocks(60, SIZE)).join().unwrap();
            let chunks = {
                let mut g: Vec<usize> = ps.iter().map(|&p| granule(p)).collect();
                g.sort();
                g.dedup();
                g.len()
            };
            assert!(chunks >= 3, "60 blocks of 3000 B in {chunks} chunks");
            // Freed here, remotely: each chunk's first free queues it on the
            // dead heap's pending stack.
            for (i, &p) in ps.iter().enumerate() {
                free_block(p, i, SIZE);
            }
            let before = stats().slab_chunks;
            let after = tick_until_slab_chunks(before - chunks);
            assert!(
                after <= before - chunks,
                "the dead heap's {chunks} emptied chunks were not all retired: slab chunks \
             {before} -> {after}"
            );
        },
    );
}

#[test]
fn reused_chunk_gives_back_pages_beyond_its_cursor() {
    in_child(
        "reused_chunk_gives_back_pages_beyond_its_cursor",
        LONG_DELAY,
        || {
            warm();
            // No cached chunk and no other empty current chunk from here on.
            chunkmalloc::purge();
            // 60 blocks of 1000 B carve a 64 KiB chunk nearly to its end;
            // freed, it stays as the class's empty current chunk.
            let xs = blocks(60, 1000);
            let x = granule(xs[0]);
            assert!(
                xs.iter().all(|&p| granule(p) == x),
                "60 blocks of 1000 B in one chunk"
            );
            for (i, &p) in xs.iter().enumerate() {
                free_block(p, i, 1000);
            }
            idle_a_while();
            // Another class takes that chunk and carves one 5000 B block
            // (two pages) of it; ~56 KiB stay charged beyond the cursor.
            // SAFETY: a non-zero size.
            let y = unsafe { alloc(layout(5000)) };
            assert!(!y.is_null());
            assert_eq!(
                granule(y as usize),
                x,
                "the 5000 B block took the idle chunk"
            );
            // SAFETY: `y` holds 5000 bytes.
            unsafe { y.write_bytes(0x5a, 5000) };
            let before = stats().committed;
            tick_until(|| stats().committed + 40 * 1024 <= before);
            let after = stats().committed;
            assert!(
                after + 40 * 1024 <= before,
                "the reused chunk kept its pages beyond the cursor: committed {before} -> {after}"
            );
            // Carving on charges and faults the pages again.
            let more = blocks(11, 5000);
            // SAFETY: `y` is live and 5000 bytes long.
            unsafe {
                assert!(
                    (0..5000).all(|k| *y.add(k) == 0x5a),
                    "the first block lost its contents"
                );
            }
            for (i, &p) in more.iter().enumerate() {
                free_block(p, i, 5000);
            }
            // SAFETY: freed once.
            unsafe { dealloc(y, layout(5000)) };
        },
    );
}

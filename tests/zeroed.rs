//! `alloc_zeroed` memory is zero even when it reuses dirty memory: for
//! every size class (and large and huge sizes, and a few alignments) blocks
//! are allocated and dirtied over their whole usable size, freed, and the
//! same sizes are then requested with `alloc_zeroed` and checked byte by
//! byte. Repeated after `purge()` (decommitted chunks coming back), and
//! with the frees done by another thread (remote frees collected into the
//! free lists).

mod common;

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::collections::HashSet;

use common::{assert_zero_raw, size_classes, KIB, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// Every object class (its exact size and one granule less, so both a
/// class-sized and a rounded-up request are seen), then large and huge
/// sizes.
fn all_sizes() -> Vec<usize> {
    let mut v: Vec<usize> = size_classes()
        .into_iter()
        .flat_map(|c| [c.saturating_sub(17).max(1), c])
        .collect();
    v.extend([
        64 * KIB + 1,
        100 * KIB,
        MIB,
        4 * MIB + 3,
        8 * MIB - 128, // the largest object an oversized chunk takes
        8 * MIB - 127, // the smallest huge mapping
        8 * MIB + 1,
        16 * MIB,
    ]);
    v
}

/// How many blocks of `size` at `align` to cycle: enough to fill several
/// slab chunks for small classes, a few for large and huge sizes (and for
/// big alignments, which take a chunk per block).
fn count_for(size: usize, align: usize) -> usize {
    (512 * KIB / size.max(align)).clamp(3, 2048)
}

/// Allocates and dirties `count` blocks of `layout` (over their whole
/// usable size). Returns the addresses.
fn dirty_blocks(layout: Layout, count: usize) -> Vec<usize> {
    (0..count)
        .map(|_| {
            // SAFETY: non-zero size; checked; written within usable_size.
            unsafe {
                let p = alloc(layout);
                assert!(!p.is_null(), "alloc {layout:?}");
                let usable = chunkmalloc::usable_size(p);
                assert!(usable >= layout.size());
                p.write_bytes(0xA5, usable);
                p as usize
            }
        })
        .collect()
}

fn free_all(blocks: &[usize], layout: Layout) {
    for &p in blocks {
        // SAFETY: live blocks from `alloc(layout)`.
        unsafe { dealloc(p as *mut u8, layout) };
    }
}

/// Requests `count` zeroed blocks of `layout` and checks them. Returns how
/// many came back at an address in `dirty` (memory that held 0xA5).
fn zeroed_blocks(layout: Layout, count: usize, dirty: &HashSet<usize>, what: &str) -> usize {
    let mut reused = 0;
    let blocks: Vec<usize> = (0..count)
        .map(|i| {
            // SAFETY: non-zero size; checked; read within the size.
            unsafe {
                let p = alloc_zeroed(layout);
                assert!(!p.is_null(), "alloc_zeroed {layout:?}");
                assert_eq!(p as usize % layout.align(), 0);
                assert_zero_raw(
                    p,
                    layout.size(),
                    &format!(
                        "{what}: alloc_zeroed({}, align {}) #{i}",
                        layout.size(),
                        layout.align()
                    ),
                );
                if dirty.contains(&(p as usize)) {
                    reused += 1;
                }
                // Dirty it too, so the next size class sees dirty memory.
                p.write_bytes(0x5A, layout.size());
                p as usize
            }
        })
        .collect();
    free_all(&blocks, layout);
    reused
}

/// The cycle for every size at `align`: dirty, free, (purge), zeroed.
/// Returns (sizes with a reused address, sizes tried).
fn cycle(align: usize, purge: bool, remote: bool, what: &str) -> (usize, usize) {
    let mut sizes_reused = 0;
    let sizes = all_sizes();
    for &size in &sizes {
        let layout = Layout::from_size_align(size, align).unwrap();
        let n = count_for(size, align);
        let blocks = dirty_blocks(layout, n);
        if remote {
            // Freed by another thread: the blocks come back through the
            // owner's remote-free lists.
            let b = blocks.clone();
            std::thread::spawn(move || free_all(&b, layout))
                .join()
                .unwrap();
        } else {
            free_all(&blocks, layout);
        }
        if purge {
            chunkmalloc::purge();
        }
        let dirty: HashSet<usize> = blocks.into_iter().collect();
        if zeroed_blocks(layout, n, &dirty, what) > 0 {
            sizes_reused += 1;
        }
    }
    (sizes_reused, sizes.len())
}

#[test]
fn zeroed_after_reuse_every_class() {
    let (reused, total) = cycle(1, false, false, "local reuse");
    eprintln!("local reuse: {reused} of {total} sizes reused an address");
    // The test is only meaningful if freed dirty memory is really handed
    // out again; without a purge the allocator reuses blocks LIFO.
    assert!(
        reused * 2 > total,
        "only {reused} of {total} sizes reused a dirty address"
    );
}

#[test]
fn zeroed_after_purge_every_class() {
    let (reused, total) = cycle(1, true, false, "after purge");
    eprintln!("after purge: {reused} of {total} sizes reused an address");
    assert!(
        reused * 2 > total,
        "only {reused} of {total} sizes reused an address after purge"
    );
}

#[test]
fn zeroed_after_remote_free_every_class() {
    let (reused, total) = cycle(1, false, true, "after remote free");
    eprintln!("remote free: {reused} of {total} sizes reused an address");
    assert!(
        reused * 2 > total,
        "only {reused} of {total} sizes reused a dirty address"
    );
}

#[test]
fn zeroed_aligned_after_reuse() {
    for align in [32, 64, 256, 4096, 64 * KIB] {
        let (reused, total) = cycle(align, false, false, "aligned");
        eprintln!("align {align}: {reused} of {total} sizes reused an address");
        assert!(reused > 0, "align {align}: no reuse in {total} sizes");
    }
}

/// A zeroed huge request reuses a cached dirty mapping of another size:
/// grown (the added pages are fresh), used as it is with a resident dirty
/// tail, or shrunk. Every byte of every object must read zero, and the
/// sizes are chosen so that each case is met.
#[test]
fn zeroed_huge_reuses_dirty_mappings_of_other_sizes() {
    // (dirty size freed first, zeroed size requested next)
    let cases = [
        (12 * MIB, 20 * MIB), // grown
        (20 * MIB, 10 * MIB), // used as it is: dirty tail beyond the object
        (40 * MIB, 9 * MIB),  // shrunk
        (16 * MIB, 16 * MIB), // same size
    ];
    for (dirty, want) in cases {
        let d = Layout::from_size_align(dirty, 16).unwrap();
        let w = Layout::from_size_align(want, 16).unwrap();
        // SAFETY: non-zero sizes; checked; written within the object.
        unsafe {
            let p = alloc(d);
            assert!(!p.is_null());
            p.write_bytes(0x5A, dirty);
            dealloc(p, d);
            let q = alloc_zeroed(w);
            assert!(!q.is_null());
            assert_zero_raw(q, want, &format!("huge {dirty} -> zeroed {want}"));
            // Dirty it too, so the next case starts from a dirty cache.
            q.write_bytes(0x5A, want);
            dealloc(q, w);
        }
    }
}

//! Freed blocks come before fresh ones: when the current chunk of a class
//! runs dry, blocks another thread freed into a chunk behind it (one that
//! filled up, was set aside and came back through the pending stack) are
//! allocated before the current chunk carves its next page. Carving first
//! left such blocks waiting while every refill touched a new page.
//!
//! Runs in a child process, so the class's chunks hold only this test's
//! blocks. Fails with the mechanism removed: none of the new blocks lands
//! in the first chunk, whose freed blocks wait until the second is carved
//! to its end.

mod common;

use std::alloc::{alloc, dealloc, Layout};

use common::in_child;

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// Slab chunks are 64 KiB-aligned for blocks below 16 KiB.
const CHUNK: usize = 64 * 1024;
/// A block size nothing else in the child uses: about 90 blocks per
/// chunk, five per page.
const SIZE: usize = 700;

fn layout() -> Layout {
    Layout::from_size_align(SIZE, 8).unwrap()
}

fn granule(p: usize) -> usize {
    p & !(CHUNK - 1)
}

/// A block filled with `tag`.
fn block(tag: u8) -> usize {
    // SAFETY: a non-zero size.
    let p = unsafe { alloc(layout()) };
    assert!(!p.is_null());
    // SAFETY: `p` holds SIZE bytes.
    unsafe { p.write_bytes(tag, SIZE) };
    p as usize
}

/// Checks that `p` still holds `tag` and frees it.
fn free_block(p: usize, tag: u8) {
    let p = p as *mut u8;
    // SAFETY: a live block of SIZE bytes from `block`.
    unsafe {
        assert!(
            (0..SIZE).all(|k| *p.add(k) == tag),
            "a block lost its contents"
        );
        dealloc(p, layout());
    }
}

#[test]
fn remotely_freed_blocks_come_before_carving() {
    in_child("remotely_freed_blocks_come_before_carving", &[], || {
        // Fill a first chunk: allocate until a block lands in another.
        let mut first = vec![block(1)];
        let a = granule(first[0]);
        let mut second = Vec::new();
        while second.is_empty() {
            let p = block(1);
            if granule(p) == a {
                first.push(p);
            } else {
                second.push(p);
            }
        }
        assert!(first.len() > 40, "{} blocks in a chunk", first.len());
        // Another thread frees every other block of the first chunk.
        let freed: Vec<usize> = first.iter().copied().step_by(2).collect();
        let n = freed.len();
        std::thread::spawn(move || freed.into_iter().for_each(|p| free_block(p, 1)))
            .join()
            .unwrap();
        // As many allocations as were freed: after what the second chunk's
        // carved page still holds, they come from the first chunk.
        let again: Vec<usize> = (0..n).map(|_| block(2)).collect();
        let reused = again.iter().filter(|&&p| granule(p) == a).count();
        eprintln!("{reused} of {n} new blocks reuse the first chunk's freed blocks");
        assert!(
            reused + 10 >= n,
            "only {reused} of {n} new blocks reuse the first chunk's freed blocks"
        );
        again.into_iter().for_each(|p| free_block(p, 2));
        first
            .into_iter()
            .skip(1)
            .step_by(2)
            .for_each(|p| free_block(p, 1));
        second.into_iter().for_each(|p| free_block(p, 1));
    });
}

//! Alignment sweep through `std::alloc` (the `GlobalAlloc` shim): every
//! power of two from 1 B to 1 GiB, several sizes each, via `alloc`,
//! `alloc_zeroed`, `realloc` (grow and shrink) and `dealloc`; plus
//! disjointness of many simultaneously live small aligned blocks.

mod common;

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};

use common::{assert_zero_raw, check_raw, fill_raw, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// Sizes tried for an alignment: 1, 7, align-1, align, align+1, 3*align;
/// for alignments of 64 MiB and more, small sizes only.
fn sizes_for(align: usize) -> Vec<usize> {
    let mut v = vec![1, 7];
    if align < 64 * MIB {
        v.extend([align.saturating_sub(1), align, align + 1, 3 * align]);
    } else {
        v.extend([4096, 100_000]);
    }
    v.retain(|&s| s > 0);
    v.sort_unstable();
    v.dedup();
    v
}

#[track_caller]
fn assert_aligned(p: *mut u8, align: usize, what: &str) {
    assert!(!p.is_null(), "{what}: null");
    assert_eq!(
        p as usize % align,
        0,
        "{what}: {p:p} not aligned to {align}"
    );
}

/// One (align, size) case: alloc + fill + check + usable_size, realloc up
/// and down with contents checked, alloc_zeroed checked zero.
fn one_case(align: usize, size: usize) {
    let what = format!("align {align} size {size}");
    let layout = Layout::from_size_align(size, align).unwrap();
    let seed = (align as u64) << 20 ^ size as u64;
    // SAFETY: non-zero-size layouts; every pointer is checked non-null
    // before use and used within its size; each is freed once with the
    // layout it currently has.
    unsafe {
        let p = alloc(layout);
        assert_aligned(p, align, &what);
        let usable = chunkmalloc::usable_size(p);
        assert!(usable >= size, "{what}: usable_size {usable} < {size}");
        fill_raw(p, size, seed);
        check_raw(p, size, seed, &what);

        // Grow: the whole old contents must survive, alignment must hold.
        let big = size * 2 + 1;
        let q = realloc(p, layout, big);
        assert_aligned(q, align, &format!("{what}: realloc to {big}"));
        check_raw(q, size, seed, &format!("{what}: after growing to {big}"));
        assert!(chunkmalloc::usable_size(q) >= big);
        // Write the new tail too (it must be writable).
        q.add(size).write_bytes(0xC3, big - size);
        assert_eq!(*q.add(big - 1), 0xC3);

        // Shrink below the original size.
        let small = size.div_ceil(2);
        let grown = Layout::from_size_align(big, align).unwrap();
        let r = realloc(q, grown, small);
        assert_aligned(r, align, &format!("{what}: realloc to {small}"));
        check_raw(
            r,
            small,
            seed,
            &format!("{what}: after shrinking to {small}"),
        );
        assert!(chunkmalloc::usable_size(r) >= small);
        dealloc(r, Layout::from_size_align(small, align).unwrap());

        // Zeroed, after the same sizes were just dirtied and freed.
        let z = alloc_zeroed(layout);
        assert_aligned(z, align, &format!("{what}: alloc_zeroed"));
        assert_zero_raw(z, size, &format!("{what}: alloc_zeroed"));
        fill_raw(z, size, !seed);
        check_raw(z, size, !seed, &what);
        dealloc(z, layout);
    }
}

#[test]
fn every_power_of_two_up_to_64k() {
    for shift in 0..=16 {
        let align = 1usize << shift;
        for size in sizes_for(align) {
            one_case(align, size);
        }
    }
}

#[test]
fn every_power_of_two_from_128k_to_32m() {
    for shift in 17..=25 {
        let align = 1usize << shift;
        for size in sizes_for(align) {
            one_case(align, size);
        }
    }
}

#[test]
fn every_power_of_two_from_64m_to_1g() {
    for shift in 26..=30 {
        let align = 1usize << shift;
        for size in sizes_for(align) {
            one_case(align, size);
        }
    }
}

/// Many live blocks of mixed small alignments and sizes: all aligned, all
/// disjoint (sorted address ranges do not overlap), each keeps its own
/// contents while the others are written.
#[test]
fn many_live_aligned_blocks_are_disjoint() {
    // (address, size, layout, seed)
    let mut blocks: Vec<(usize, usize, Layout, u64)> = Vec::new();
    let mut rng = common::Rng::new(7);
    for round in 0..20_000u64 {
        let align = 1usize << rng.range(0, 13); // 1 B .. 8 KiB
        let size = match round % 4 {
            0 => rng.range(1, 64),
            1 => rng.range(1, 1024),
            2 => align + rng.range(0, 64),
            _ => rng.range(1, 20_000),
        };
        let layout = Layout::from_size_align(size, align).unwrap();
        let zero = round % 3 == 0;
        // SAFETY: non-zero size; checked non-null.
        let p = unsafe {
            if zero {
                alloc_zeroed(layout)
            } else {
                alloc(layout)
            }
        };
        assert_aligned(p, align, &format!("block {round} ({size} B)"));
        // SAFETY: p is a live block of `size` bytes.
        unsafe {
            if zero {
                assert_zero_raw(p, size, "alloc_zeroed block");
            }
            fill_raw(p, size, round);
        }
        blocks.push((p as usize, size, layout, round));
        // Free some as we go so freed slots are reused by later blocks.
        if round % 5 == 4 {
            let i = rng.range(0, blocks.len() - 1);
            let (p, size, layout, seed) = blocks.swap_remove(i);
            // SAFETY: live block from alloc with `layout`.
            unsafe {
                check_raw(p as *const u8, size, seed, "aligned block before free");
                dealloc(p as *mut u8, layout);
            }
        }
    }
    assert!(blocks.len() > 15_000);
    // Ranges must not overlap.
    let mut ranges: Vec<(usize, usize)> = blocks.iter().map(|&(p, s, _, _)| (p, p + s)).collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "blocks overlap: [{:#x}, {:#x}) and [{:#x}, {:#x})",
            w[0].0,
            w[0].1,
            w[1].0,
            w[1].1
        );
    }
    // Every block still holds its own pattern.
    for &(p, size, _, seed) in &blocks {
        // SAFETY: live block of `size` bytes.
        unsafe { check_raw(p as *const u8, size, seed, "live aligned block") };
    }
    for (p, _, layout, _) in blocks {
        // SAFETY: live block from alloc with `layout`.
        unsafe { dealloc(p as *mut u8, layout) };
    }
}

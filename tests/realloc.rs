//! realloc: growth from 1 B to 64 MiB in steps (x1.5 and +1) and shrinking
//! back, contents preserved at every step; realloc across the class
//! boundaries (slab / oversized chunk at 64 KiB, oversized / huge mapping
//! at 2.25 MiB) in both directions; `usable_size >= requested` everywhere.

mod common;

use std::alloc::{alloc, dealloc, realloc, Layout};

use common::{check_at, fill_at, KIB, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// A buffer resized through `std::alloc::realloc`, holding the pattern for
/// `seed` over its whole length.
struct Buf {
    p: *mut u8,
    len: usize,
    align: usize,
    seed: u64,
}

impl Buf {
    fn new(len: usize, align: usize, seed: u64) -> Buf {
        let layout = Layout::from_size_align(len, align).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null(), "alloc({len}, {align}) failed");
        let mut b = Buf {
            p,
            len,
            align,
            seed,
        };
        b.check_usable();
        b.fill(0, len);
        b
    }

    fn fill(&mut self, from: usize, to: usize) {
        // SAFETY: `[from, to)` lies inside the live block.
        let s = unsafe { std::slice::from_raw_parts_mut(self.p.add(from), to - from) };
        fill_at(s, from, self.seed);
    }

    #[track_caller]
    fn check(&self, upto: usize, what: &str) {
        // SAFETY: `upto <= len`, inside the live block.
        let s = unsafe { std::slice::from_raw_parts(self.p, upto) };
        if let Err(i) = check_at(s, 0, self.seed) {
            panic!(
                "{what}: contents lost at byte {i} of {upto} (buffer {:p}, len {}, align {})",
                self.p, self.len, self.align
            );
        }
    }

    #[track_caller]
    fn check_range(&self, from: usize, to: usize, what: &str) {
        // SAFETY: `[from, to)` lies inside the live block.
        let s = unsafe { std::slice::from_raw_parts(self.p.add(from), to - from) };
        if let Err(i) = check_at(s, from, self.seed) {
            panic!(
                "{what}: contents lost at byte {} (buffer {:p}, len {}, align {})",
                from + i,
                self.p,
                self.len,
                self.align
            );
        }
    }

    #[track_caller]
    fn check_usable(&self) {
        // SAFETY: live block.
        let u = unsafe { chunkmalloc::usable_size(self.p) };
        assert!(
            u >= self.len,
            "usable_size {u} < requested {} at {:p}",
            self.len,
            self.p
        );
    }

    /// Resizes, checks that the common prefix survived, alignment held and
    /// usable_size covers the request, then patterns any new tail.
    #[track_caller]
    fn resize(&mut self, new_len: usize) {
        let old = Layout::from_size_align(self.len, self.align).unwrap();
        // SAFETY: `p` is live with layout `old`; new_len > 0.
        let q = unsafe { realloc(self.p, old, new_len) };
        assert!(
            !q.is_null(),
            "realloc {} -> {new_len} (align {}) failed",
            self.len,
            self.align
        );
        assert_eq!(
            q as usize % self.align,
            0,
            "realloc {} -> {new_len} lost alignment {}",
            self.len,
            self.align
        );
        let kept = self.len.min(new_len);
        let from = self.len;
        let moved = q != self.p;
        self.p = q;
        self.len = new_len;
        let what = format!("realloc {from} -> {new_len}");
        if moved || kept <= 256 * KIB {
            self.check(kept, &what);
        } else {
            // Resized in place: the bytes did not move, so checking the
            // head and the tail next to the resize point is enough (a full
            // compare of 8 MiB per single-byte step would dominate the
            // suite's runtime). Full checks run on every move and at the
            // end of each walk.
            self.check_range(0, 4 * KIB, &what);
            self.check_range(kept - 128 * KIB, kept, &what);
        }
        self.check_usable();
        if new_len > kept {
            self.fill(kept, new_len);
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.check(self.len, "before free");
        let layout = Layout::from_size_align(self.len, self.align).unwrap();
        // SAFETY: live block with this layout.
        unsafe { dealloc(self.p, layout) };
    }
}

/// Sizes 1 .. 64 MiB: from each size s, s+1 then (s+1)*1.5.
fn growth_steps() -> Vec<usize> {
    let mut v = vec![1];
    let mut s = 1usize;
    while s < 64 * MIB {
        s += 1;
        v.push(s);
        s = (s + s / 2).min(64 * MIB);
        v.push(s);
    }
    v
}

fn grow_and_shrink(align: usize, seed: u64) {
    let steps = growth_steps();
    assert_eq!(*steps.last().unwrap(), 64 * MIB);
    let mut b = Buf::new(1, align, seed);
    for &s in &steps[1..] {
        b.resize(s);
    }
    b.check(b.len, "at 64 MiB");
    // And back down through the same sizes.
    for &s in steps.iter().rev().skip(1) {
        b.resize(s);
    }
    assert_eq!(b.len, 1);
}

#[test]
fn grow_from_1b_to_64m_and_back() {
    grow_and_shrink(1, 0x1234);
}

#[test]
fn grow_from_1b_to_64m_and_back_aligned_4k() {
    grow_and_shrink(4096, 0x4321);
}

/// Largest footprint of an oversized chunk; above it objects are huge.
const LARGE_MAX: usize = 2304 * KIB;

/// Sizes around the 64 KiB (slab max) and 2.25 MiB (oversized chunk max; the
/// object's footprint includes its header, 128 B or the alignment) limits.
/// At alignments above 1 only the sizes either side of that alignment's
/// footprint limit are big, to keep the quadratic sweep cheap.
fn boundary_sizes(align: usize) -> Vec<usize> {
    let mut v = vec![1, 100, 8 * KIB + 1];
    for d in [-1isize, 0, 1] {
        v.push((64 * KIB as isize + d) as usize);
    }
    if align == 1 {
        for d in [-129isize, -128, -127, 0, 1] {
            v.push((LARGE_MAX as isize + d) as usize);
        }
        v.push(20 * MIB);
    } else {
        let last_large = LARGE_MAX - align.clamp(128, 64 * KIB);
        v.extend([last_large, last_large + 1]);
    }
    v
}

/// Every pair of boundary sizes, in both directions, at several
/// alignments: realloc a -> b -> a, checking contents each time.
#[test]
fn realloc_across_class_boundaries() {
    let mut n = 0u64;
    for align in [1usize, 16, 64, 4096, 64 * KIB] {
        let sizes = boundary_sizes(align);
        for &a in &sizes {
            for &b in &sizes {
                if a == b {
                    continue;
                }
                n += 1;
                let mut buf = Buf::new(a, align, n);
                buf.resize(b);
                buf.resize(a);
                buf.check(a, &format!("{a} -> {b} -> {a} (align {align})"));
            }
        }
    }
    assert!(n > 300);
}

/// Single-byte steps up and then down across each boundary: the slab limit
/// (64 KiB), the oversized-chunk limit for the object's footprint (2.25 MiB
/// minus the header: 128 B, or the alignment when larger) and 2.25 MiB
/// itself.
#[test]
fn single_byte_steps_across_boundaries() {
    for (center, align, header) in [
        (64 * KIB, 1, 0),
        (64 * KIB, 256, 256),
        (LARGE_MAX, 1, 128),
        (LARGE_MAX, 4096, 4096),
    ] {
        // Positions walked one byte at a time: around `center - header`
        // and around `center`.
        let mut walk: Vec<usize> = (center - header - 12..=center - header + 12).collect();
        walk.extend(center - 12..=center + 12);
        walk.sort_unstable();
        walk.dedup();
        let mut b = Buf::new(walk[0], align, center as u64);
        for &s in &walk[1..] {
            b.resize(s);
        }
        b.check(b.len, "after walking up");
        for &s in walk.iter().rev().skip(1) {
            b.resize(s);
        }
        b.check(b.len, "after walking down");
        assert_eq!(b.len, walk[0]);
    }
}

#[test]
fn usable_size_of_foreign_and_null_pointers_is_zero() {
    let on_stack = [0u8; 64];
    // SAFETY: null and memory chunkmalloc never handed out.
    unsafe {
        assert_eq!(chunkmalloc::usable_size(std::ptr::null()), 0);
        assert_eq!(chunkmalloc::usable_size(on_stack.as_ptr()), 0);
        static IN_DATA: [u8; 16] = [0; 16];
        assert_eq!(chunkmalloc::usable_size(IN_DATA.as_ptr()), 0);
    }
    // And for every size class and beyond, usable_size covers the request
    // without wild over-reporting on the slab path.
    for size in common::size_classes().into_iter().flat_map(|c| [c - 15, c]) {
        let v: Vec<u8> = Vec::with_capacity(size);
        // SAFETY: live allocation of `size` bytes.
        let u = unsafe { chunkmalloc::usable_size(v.as_ptr()) };
        assert!(u >= size, "size {size}: usable {u}");
        assert!(
            u <= size + size / 8 + 16,
            "size {size}: usable {u} beyond its class"
        );
    }
}

//! Differential test: random sequences of alloc / alloc_zeroed / realloc /
//! dealloc with random sizes and alignments, run through `ChunkMalloc`
//! (called directly, and installed as the global allocator) and checked
//! against a shadow model of what must be true: every live block is
//! aligned, lies inside no other live block, keeps the pattern written into
//! it (across reallocs, up to the smaller size), zeroed blocks read zero,
//! and `usable_size` covers the request. Several threads run their own
//! sequences, and a share of blocks is freed by another thread.
//!
//! `DIFF_OPS` (default 200,000 per thread) and `DIFF_SEED` set the length
//! and the seed, so a long run is `DIFF_OPS=20000000 cargo test --release
//! --test differential`.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::mpsc;

use chunkmalloc::ChunkMalloc;

#[global_allocator]
static GLOBAL: ChunkMalloc = ChunkMalloc;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Sizes weighted like real programs: mostly small, some medium,
    /// occasionally large or huge.
    fn size(&mut self) -> usize {
        match self.below(100) {
            0..=69 => 1 + self.below(256) as usize,
            70..=89 => 1 + self.below(16 << 10) as usize,
            90..=97 => 1 + self.below(1 << 20) as usize,
            // Around the 2.25 MiB class limit and well above it, so that
            // cached huge mappings of many sizes are split and gathered.
            _ => (2 << 20) + self.below(10 << 20) as usize,
        }
    }
    fn align(&mut self) -> usize {
        match self.below(100) {
            0..=79 => 8,
            80..=89 => 16,
            90..=97 => 1 << (5 + self.below(8)), // 32 .. 4096
            _ => 1 << (13 + self.below(9)),      // 8 KiB .. 1 MiB
        }
    }
}

#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    size: usize,
    align: usize,
    seed: u8,
}

/// The byte expected at offset `i` of a block filled with `seed`.
fn pat(seed: u8, i: usize) -> u8 {
    seed ^ (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8)
}

/// Writes the pattern at a few places (start, end, and a sample), enough to
/// catch overlap and corruption without making huge blocks slow.
fn fill(b: &Block) {
    for i in sample(b.size) {
        // SAFETY: i < size; the block is live and ours.
        unsafe { *((b.ptr + i) as *mut u8) = pat(b.seed, i) };
    }
}

/// Checks the positions `fill` wrote (for `b.size`) below `upto`.
fn check(b: &Block, upto: usize, what: &str) {
    for i in sample(b.size).filter(|&i| i < upto) {
        // SAFETY: i < size; the block is live.
        let v = unsafe { *((b.ptr + i) as *const u8) };
        assert_eq!(
            v,
            pat(b.seed, i),
            "{what}: block {:#x}+{i} (size {}) corrupted",
            b.ptr,
            b.size
        );
    }
}

fn sample(size: usize) -> impl Iterator<Item = usize> {
    let head = 0..size.min(64);
    let tail = size.saturating_sub(64).max(64.min(size))..size;
    let step = (size / 61).max(1);
    let mid = (64..size.saturating_sub(64)).step_by(step);
    head.chain(mid).chain(tail)
}

/// The shadow model: live blocks by address, to check disjointness.
#[derive(Default)]
struct Shadow {
    live: BTreeMap<usize, Block>,
}

impl Shadow {
    fn insert(&mut self, b: Block) {
        assert_eq!(
            b.ptr % b.align,
            0,
            "block {:#x} not aligned to {}",
            b.ptr,
            b.align
        );
        // SAFETY: b.ptr is a live block from chunkmalloc.
        let usable = unsafe { chunkmalloc::usable_size(b.ptr as *const u8) };
        assert!(
            usable >= b.size,
            "usable_size {usable} < requested {}",
            b.size
        );
        if let Some((_, prev)) = self.live.range(..=b.ptr).next_back() {
            assert!(
                prev.ptr + prev.size <= b.ptr,
                "block {:#x} overlaps {:#x}",
                b.ptr,
                prev.ptr
            );
        }
        if let Some((_, next)) = self.live.range(b.ptr + 1..).next() {
            assert!(
                b.ptr + b.size <= next.ptr,
                "block {:#x} overlaps {:#x}",
                b.ptr,
                next.ptr
            );
        }
        self.live.insert(b.ptr, b);
    }
}

fn run(
    seed: u64,
    ops: usize,
    to_other: Option<mpsc::Sender<Vec<Block>>>,
    from_other: Option<mpsc::Receiver<Vec<Block>>>,
) {
    let a = ChunkMalloc;
    let mut rng = Rng(seed | 1);
    let mut shadow = Shadow::default();
    let mut order: Vec<usize> = Vec::new();
    let mut outbox: Vec<Block> = Vec::new();
    for op in 0..ops {
        if let Some(rx) = &from_other {
            if op % 512 == 0 {
                while let Ok(batch) = rx.try_recv() {
                    for b in batch {
                        check(&b, b.size, "received");
                        // SAFETY: allocated by the other thread with this layout.
                        unsafe {
                            a.dealloc(
                                b.ptr as *mut u8,
                                Layout::from_size_align(b.size, b.align).unwrap(),
                            )
                        };
                    }
                }
            }
        }
        let live = order.len();
        let r = rng.below(100);
        if live == 0 || (r < 45 && live < 4000) {
            let size = rng.size();
            let align = rng.align();
            let layout = Layout::from_size_align(size, align).unwrap();
            let zeroed = rng.below(4) == 0;
            // SAFETY: non-zero size.
            let p = unsafe {
                if zeroed {
                    a.alloc_zeroed(layout)
                } else {
                    a.alloc(layout)
                }
            };
            assert!(!p.is_null(), "allocation of {size} (align {align}) failed");
            if zeroed {
                for i in sample(size) {
                    // SAFETY: inside the fresh block.
                    assert_eq!(
                        unsafe { *p.add(i) },
                        0,
                        "alloc_zeroed({size}, {align}) not zero at {i}"
                    );
                }
            }
            let b = Block {
                ptr: p as usize,
                size,
                align,
                seed: rng.next() as u8,
            };
            shadow.insert(b);
            fill(&b);
            order.push(b.ptr);
        } else {
            let i = rng.below(live as u64) as usize;
            let ptr = order.swap_remove(i);
            let b = shadow.live.remove(&ptr).unwrap();
            check(&b, b.size, "before free/realloc");
            if r < 70 {
                // realloc to a new size, same alignment
                let new_size = if rng.below(2) == 0 {
                    b.size + 1 + rng.below(b.size as u64 * 2 + 64) as usize
                } else {
                    1 + rng.below(b.size as u64) as usize
                };
                // SAFETY: live block with this layout; non-zero new size.
                let q = unsafe {
                    a.realloc(
                        b.ptr as *mut u8,
                        Layout::from_size_align(b.size, b.align).unwrap(),
                        new_size,
                    )
                };
                if q.is_null() {
                    // SAFETY: realloc failed, so `b` is still live.
                    let usable = unsafe { chunkmalloc::usable_size(b.ptr as *const u8) };
                    let c =
                        chunkmalloc::chunk_map::lookup(b.ptr) as *const chunkmalloc::chunk::Chunk;
                    let kind = if c.is_null() {
                        "unmapped".to_string()
                    } else {
                        // SAFETY: a registered chunk header.
                        unsafe {
                            format!("{:?} size {} off {}", (*c).kind, (*c).size, (*c).obj_offset)
                        }
                    };
                    panic!(
                        "realloc of {:#x} (size {}, align {}, usable {usable}, chunk {kind}) to {new_size} failed",
                        b.ptr, b.size, b.align
                    );
                }
                // The moved block still holds the old block's pattern.
                let moved = Block {
                    ptr: q as usize,
                    ..b
                };
                check(&moved, b.size.min(new_size), "after realloc");
                let nb = Block {
                    size: new_size,
                    seed: rng.next() as u8,
                    ..moved
                };
                shadow.insert(nb);
                fill(&nb);
                order.push(nb.ptr);
            } else if to_other.is_some() && rng.below(3) == 0 {
                outbox.push(b);
                if outbox.len() >= 64 {
                    let _ = to_other.as_ref().unwrap().send(std::mem::take(&mut outbox));
                }
            } else {
                // SAFETY: live block with this layout.
                unsafe {
                    a.dealloc(
                        b.ptr as *mut u8,
                        Layout::from_size_align(b.size, b.align).unwrap(),
                    )
                };
            }
        }
    }
    for (_, b) in std::mem::take(&mut shadow.live) {
        check(&b, b.size, "at the end");
        // SAFETY: live block with this layout.
        unsafe {
            a.dealloc(
                b.ptr as *mut u8,
                Layout::from_size_align(b.size, b.align).unwrap(),
            )
        };
    }
    if let Some(tx) = to_other {
        let _ = tx.send(outbox);
    }
    if let Some(rx) = from_other {
        // Drain what the other thread still sends until it hangs up.
        for batch in rx {
            for b in batch {
                check(&b, b.size, "received late");
                // SAFETY: as above.
                unsafe {
                    a.dealloc(
                        b.ptr as *mut u8,
                        Layout::from_size_align(b.size, b.align).unwrap(),
                    )
                };
            }
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn single_thread_against_shadow_model() {
    run(
        env("DIFF_SEED", 0x5eed),
        env("DIFF_OPS", 200_000) as usize,
        None,
        None,
    );
}

#[test]
fn threads_in_a_ring_against_shadow_model() {
    let n = 4;
    let ops = env("DIFF_OPS", 200_000) as usize / 2;
    let seed = env("DIFF_SEED", 0x5eed);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel::<Vec<Block>>()).unzip();
    let mut rxs: Vec<Option<_>> = rxs.into_iter().map(Some).collect();
    std::thread::scope(|s| {
        for i in 0..n {
            let tx = txs[(i + 1) % n].clone();
            let rx = rxs[i].take().unwrap();
            s.spawn(move || run(seed.wrapping_add(i as u64 * 7919), ops, Some(tx), Some(rx)));
        }
        drop(txs);
    });
}

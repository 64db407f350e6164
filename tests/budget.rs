//! The process-wide byte budget (its own test binary; every scenario runs
//! in a child process, so the cap never touches the test harness).
//!
//! While a cap is set, nothing in the measured phases may allocate
//! infallibly (a failed infallible allocation aborts): worker threads are
//! spawned and their bookkeeping reserved before the cap bites, and
//! allocations go through `std::alloc::alloc` or `try_reserve`.

mod common;

use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use chunkmalloc::{budget, set_budget, stats};
use common::{check_raw, fill_raw, free_half, in_child, rss_noalloc, Rng, KIB, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

const CAP: usize = 64 * MIB;

/// A block a worker holds: address, layout, pattern seed.
type Held = (usize, Layout, u64);

/// Fills a block: wholly if small, else its first and last 4 KiB (enough
/// to catch overlap or loss without making the test slow).
///
/// # Safety
/// `p` is a live block of `layout.size()` bytes.
unsafe fn mark(p: *mut u8, layout: Layout, seed: u64) {
    let n = layout.size();
    // SAFETY: within the block.
    unsafe {
        if n <= 8 * KIB {
            fill_raw(p, n, seed);
        } else {
            fill_raw(p, 4 * KIB, seed);
            fill_raw(p.add(n - 4 * KIB), 4 * KIB, seed ^ 1);
        }
    }
}

/// Checks what [`mark`] wrote.
///
/// # Safety
/// As [`mark`].
unsafe fn verify(p: *mut u8, layout: Layout, seed: u64) {
    let n = layout.size();
    // SAFETY: within the block.
    unsafe {
        if n <= 8 * KIB {
            check_raw(p, n, seed, "block under the budget");
        } else {
            check_raw(p, 4 * KIB, seed, "block head under the budget");
            check_raw(p.add(n - 4 * KIB), 4 * KIB, seed ^ 1, "block tail");
        }
    }
}

/// Allocates mixed sizes (16 B .. 8 MiB) until 30 allocations have failed.
/// Returns (blocks held, nulls seen).
fn fill_to_cap(t: u64, held: &mut Vec<Held>) -> usize {
    let mut rng = Rng::new(t + 11);
    let mut nulls = 0;
    let mut i = 0u64;
    while nulls < 30 && held.len() < held.capacity() {
        let size = rng.log_size(16, 8 * MIB);
        let align = [8usize, 16, 64, 4096][rng.range(0, 3)];
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(layout) };
        if p.is_null() {
            nulls += 1;
            continue;
        }
        assert_eq!(p as usize % align, 0);
        let seed = t << 40 | i;
        i += 1;
        // SAFETY: a live block of `size` bytes.
        unsafe { mark(p, layout, seed) };
        held.push((p as usize, layout, seed));
    }
    nulls
}

fn free_blocks(blocks: impl Iterator<Item = Held>) {
    for (p, layout, seed) in blocks {
        // SAFETY: live blocks allocated with `layout`, freed once.
        unsafe {
            verify(p as *mut u8, layout, seed);
            dealloc(p as *mut u8, layout);
        }
    }
}

/// 8 threads allocate mixed sizes until allocations fail under a 64 MiB
/// cap. A sampler watches `committed`, which must never exceed the cap;
/// every failure is a null; `try_reserve` reports `Err` at the cap; after
/// the workers free half their blocks, allocation succeeds again.
#[test]
fn cap_holds_with_8_threads_and_recovers() {
    in_child("cap_holds_with_8_threads_and_recovers", &[], || {
        const THREADS: usize = 8;
        let stop = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let nulls = Arc::new(AtomicUsize::new(0));
        // Workers: fill, wait (main checks the cap), free half, wait (main
        // checks recovery), free the rest.
        let go = Arc::new(Barrier::new(THREADS + 1));
        let filled = Arc::new(Barrier::new(THREADS + 1));
        let checked = Arc::new(Barrier::new(THREADS + 1));
        let halved = Arc::new(Barrier::new(THREADS + 1));
        let recovered = Arc::new(Barrier::new(THREADS + 1));
        let failures_before = stats().failed_allocs;
        let rss_before = rss_noalloc();
        set_budget(Some(CAP));
        assert_eq!(budget(), Some(CAP));
        assert_eq!(stats().budget_limit, Some(CAP));
        assert!(stats().committed < CAP / 4, "child starts small");

        let sampler = {
            let (stop, max_seen) = (Arc::clone(&stop), Arc::clone(&max_seen));
            std::thread::spawn(move || {
                // stats() does not allocate, so sampling cannot fail under
                // the cap.
                while !stop.load(Ordering::Relaxed) {
                    max_seen.fetch_max(stats().committed, Ordering::Relaxed);
                    std::hint::spin_loop();
                }
            })
        };
        let workers: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                let nulls = Arc::clone(&nulls);
                let go = Arc::clone(&go);
                let (filled, checked, halved, recovered) = (
                    Arc::clone(&filled),
                    Arc::clone(&checked),
                    Arc::clone(&halved),
                    Arc::clone(&recovered),
                );
                let mut held: Vec<Held> = Vec::with_capacity(50_000);
                std::thread::spawn(move || {
                    go.wait();
                    nulls.fetch_add(fill_to_cap(t, &mut held), Ordering::Relaxed);
                    filled.wait();
                    checked.wait();
                    // Free half of the blocks and at least half of the
                    // bytes (local frees; nothing allocated).
                    free_half(
                        &mut held,
                        |b| b.1.size(),
                        |b| free_blocks(std::iter::once(b)),
                    );
                    halved.wait();
                    recovered.wait();
                    free_blocks(held.drain(..));
                })
            })
            .collect();
        // Every thread exists and every list is allocated: start filling.
        go.wait();
        filled.wait();
        // --- at the cap ---
        let s = stats();
        let total_nulls = nulls.load(Ordering::Relaxed);
        assert!(total_nulls >= THREADS * 30, "every worker saw its failures");
        assert!(
            s.failed_allocs - failures_before >= total_nulls,
            "failed_allocs rose by {} for {total_nulls} nulls",
            s.failed_allocs - failures_before
        );
        assert!(s.committed <= CAP, "committed {} > cap", s.committed);
        // The kernel's view agrees: what the process gained in resident
        // memory stays within the cap, plus 8 MiB of slack for what is not
        // chunkmalloc's (thread stacks, the test harness).
        let rss_gain = rss_noalloc().saturating_sub(rss_before);
        assert!(
            rss_gain <= CAP + 8 * MIB,
            "VmRSS grew by {rss_gain} bytes under a cap of {CAP}"
        );
        assert!(
            s.committed >= CAP - 16 * MIB,
            "workers gave up well below the cap: committed {}",
            s.committed
        );
        let room = CAP - s.committed;
        // More than the room left cannot be had, fallibly.
        let mut v: Vec<u8> = Vec::new();
        assert!(
            v.try_reserve(room + MIB).is_err(),
            "try_reserve({}) succeeded with {room} bytes of budget left",
            room + MIB
        );
        assert!(v.try_reserve_exact(room + MIB).is_err());
        assert!(v.try_reserve(CAP).is_err());
        // SAFETY: non-zero size; the result is only compared with null.
        // `black_box`: an allocation whose result is only compared with
        // null may be elided by the compiler and the test folded to "not
        // null" (it happened once the allocator's fast path inlined
        // differently); the pointer must escape.
        let p = std::hint::black_box(unsafe {
            alloc(Layout::from_size_align(room + 8 * MIB, 16).unwrap())
        });
        assert!(p.is_null(), "allocation beyond the cap succeeded");
        checked.wait();
        halved.wait();
        // --- after the workers freed half ---
        // SAFETY: non-zero sizes; checked; freed below.
        unsafe {
            let l = Layout::from_size_align(MIB, 16).unwrap();
            let p = alloc(l);
            assert!(!p.is_null(), "1 MiB allocation failed after half was freed");
            mark(p, l, 99);
            let mut w: Vec<u64> = Vec::new();
            assert!(
                w.try_reserve(MIB).is_ok(),
                "try_reserve(8 MiB) failed after half was freed (committed {})",
                stats().committed
            );
            w.extend((0..MIB as u64).map(|x| x * 3));
            assert!(w.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
            verify(p, l, 99);
            dealloc(p, l);
        }
        recovered.wait();
        for w in workers {
            w.join().expect("worker panicked");
        }
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        let max = max_seen.load(Ordering::Relaxed);
        eprintln!(
            "at the cap: committed {} ({} nulls); sampler max {max}; peak {}",
            s.committed,
            total_nulls,
            stats().peak_committed
        );
        assert!(max > CAP / 2, "sampler saw a max of only {max}");
        assert!(max <= CAP, "sampler saw committed {max} > cap {CAP}");
        assert!(
            stats().peak_committed <= CAP,
            "peak_committed {} > cap",
            stats().peak_committed
        );
    });
}

/// The cap lowered below current use and raised again at run time.
#[test]
fn cap_lowered_and_raised_at_run_time() {
    in_child("cap_lowered_and_raised_at_run_time", &[], || {
        let held = vec![7u8; 24 * MIB];
        let committed = stats().committed;
        // Below current use: nothing is taken back, new chunks are refused.
        set_budget(Some(committed - 8 * MIB));
        assert_eq!(budget(), Some(committed - 8 * MIB));
        let failed = stats().failed_allocs;
        // SAFETY: non-zero size; only compared with null (escaping through
        // `black_box`, so the call is not elided).
        let p =
            std::hint::black_box(unsafe { alloc(Layout::from_size_align(2 * MIB, 16).unwrap()) });
        assert!(p.is_null(), "allocation succeeded above a lowered cap");
        assert!(stats().failed_allocs > failed);
        let mut v: Vec<u8> = Vec::new();
        assert!(v.try_reserve(4 * MIB).is_err());
        assert!(held.iter().all(|&b| b == 7), "held memory disturbed");
        assert!(
            stats().committed <= committed,
            "committed grew above the cap"
        );
        // Freeing brings use under the cap again.
        drop(held);
        chunkmalloc::purge();
        assert!(stats().committed < committed - 8 * MIB);
        assert!(
            v.try_reserve(4 * MIB).is_ok(),
            "after freeing below the cap"
        );
        drop(v);
        // Raised well above the old cap (64 MiB).
        set_budget(Some(256 * MIB));
        assert_eq!(budget(), Some(256 * MIB));
        let mut big: Vec<u8> = Vec::new();
        assert!(big.try_reserve_exact(100 * MIB).is_ok());
        big.resize(100 * MIB, 1);
        assert!(stats().committed >= 100 * MIB);
        assert!(stats().committed <= 256 * MIB);
        let mut more: Vec<u8> = Vec::new();
        assert!(
            more.try_reserve(200 * MIB).is_err(),
            "300 MiB fit under a 256 MiB cap"
        );
        // Cleared: no cap at all.
        set_budget(None);
        assert_eq!(budget(), None);
        assert_eq!(stats().budget_limit, None);
        assert!(more.try_reserve(200 * MIB).is_ok());
        more.resize(200 * MIB, 2);
        assert!(stats().committed >= 300 * MIB);
        assert_eq!((big[100 * MIB - 1], more[200 * MIB - 1]), (1, 2));
    });
}

/// Memory allocated by threads that have since exited, freed by the main
/// thread, is usable again under the cap (the exited threads' heaps are
/// abandoned; the purge a failing allocation runs must reach them).
#[test]
fn memory_of_exited_threads_is_reusable_under_the_cap() {
    in_child(
        "memory_of_exited_threads_is_reusable_under_the_cap",
        &[],
        || {
            set_budget(Some(CAP));
            let mut all: Vec<Held> = Vec::with_capacity(80_000);
            // Four threads alive at once (four heaps), 8 MiB each, in
            // small blocks (64 KiB slab chunks, so little of the cap goes
            // to partly used chunks) and some large ones.
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let mut held: Vec<Held> = Vec::with_capacity(20_000);
                    std::thread::spawn(move || {
                        let mut rng = Rng::new(t);
                        let mut total = 0;
                        while total < 8 * MIB && held.len() < held.capacity() {
                            let size = if held.len() % 50 == 49 {
                                100 * KIB
                            } else {
                                rng.log_size(16, 4 * KIB)
                            };
                            let l = Layout::from_size_align(size, 16).unwrap();
                            // SAFETY: non-zero size.
                            let p = unsafe { alloc(l) };
                            if p.is_null() {
                                break; // reported by the main thread
                            }
                            let seed = t << 40 | held.len() as u64;
                            // SAFETY: live block.
                            unsafe { mark(p, l, seed) };
                            held.push((p as usize, l, seed));
                            total += l.size();
                        }
                        (held, total)
                    })
                })
                .collect();
            let mut allocated = 0;
            for h in threads {
                let (held, total) = h.join().unwrap();
                allocated += total;
                all.extend(held);
            }
            let before = stats().committed;
            free_blocks(all.drain(..));
            assert!(
                allocated >= 32 * MIB,
                "the threads could allocate only {allocated} bytes"
            );
            assert!(
                before > 16 * MIB + CAP - 48 * MIB,
                "committed only {before}"
            );
            // 48 MiB cannot fit next to what the threads had committed; it
            // fits only if their freed memory is really given back. No
            // explicit purge: the failing path must find the memory.
            let mut v: Vec<u8> = Vec::new();
            let r = v.try_reserve_exact(48 * MIB);
            let after = stats();
            assert!(
                r.is_ok(),
                "48 MiB not available after freeing everything (committed {} before the frees, {} now, {} abandoned heaps)",
                before,
                after.committed,
                after.abandoned_heaps
            );
        },
    );
}

/// Under a 64 MiB cap, 64-byte blocks fill the cap; all but one in 512
/// are freed, so no chunk is empty and the free memory lies in pages
/// inside partly used chunks. A 32 MiB reservation must then succeed with
/// no explicit purge (the failing path gives those pages back), and the
/// blocks allocated after it must still fit under the cap: committed never
/// exceeds it, the allocations stop at it, and every survivor is intact.
/// Without the pages given back the reservation fails; with the pages
/// not charged again when they are reused, the refill runs past the cap.
#[test]
fn free_pages_inside_partly_used_chunks_serve_a_large_request() {
    in_child(
        "free_pages_inside_partly_used_chunks_serve_a_large_request",
        &[],
        || {
            const KEEP: usize = 512;
            let l = Layout::from_size_align(64, 16).unwrap();
            // Every vector is reserved before the cap bites (a failed
            // infallible allocation would abort).
            let mut held: Vec<usize> = Vec::with_capacity(CAP / 64);
            let mut kept = Vec::with_capacity(CAP / 64 / KEEP + 1);
            let mut again = Vec::with_capacity(CAP / 64);
            set_budget(Some(CAP));
            let fill = |p: usize, i: usize| {
                // SAFETY: a live 64-byte block.
                unsafe { (p as *mut u64).write(i as u64 ^ 0xa5a5) }
            };
            let check = |p: usize, i: usize, what: &str| {
                // SAFETY: as above.
                let v = unsafe { (p as *const u64).read() };
                assert_eq!(v, i as u64 ^ 0xa5a5, "{what} {i} changed");
            };
            // Blocks until the first null (or the vector's capacity),
            // each filled; every 4,096th checks the cap.
            let alloc_until_null = |v: &mut Vec<usize>| {
                while v.len() < v.capacity() {
                    // SAFETY: non-zero size.
                    let p = unsafe { alloc(l) } as usize;
                    if p == 0 {
                        break;
                    }
                    fill(p, v.len());
                    v.push(p);
                    if v.len() % 4096 == 0 {
                        assert!(stats().committed <= CAP);
                    }
                }
            };
            alloc_until_null(&mut held);
            assert!(
                held.len() * 64 >= CAP / 2,
                "only {} blocks fitted under the cap",
                held.len()
            );
            for (i, &p) in held.iter().enumerate() {
                if i % KEEP == 0 {
                    kept.push((i, p));
                } else {
                    // SAFETY: a live block of layout `l`, freed once.
                    unsafe { dealloc(p as *mut u8, l) };
                }
            }
            drop(held);
            let mut big: Vec<u8> = Vec::new();
            let r = big.try_reserve_exact(32 * MIB);
            assert!(
                r.is_ok(),
                "32 MiB not available with 7/8 of the blocks freed (committed {} KiB)",
                stats().committed / KIB
            );
            big.resize(32 * MIB, 7);
            assert!(stats().committed <= CAP);
            drop(big);
            alloc_until_null(&mut again);
            let s = stats();
            assert!(s.committed <= CAP, "committed {} over the cap", s.committed);
            assert!(
                (again.len() + kept.len()) * 64 <= CAP,
                "{} blocks of 64 bytes live under a {} MiB cap",
                again.len() + kept.len(),
                CAP / MIB
            );
            for &(i, p) in &kept {
                check(p, i, "survivor");
            }
            for (i, &p) in again.iter().enumerate() {
                check(p, i, "block");
            }
            for p in again.into_iter().chain(kept.into_iter().map(|(_, p)| p)) {
                // SAFETY: live blocks of layout `l`, freed once.
                unsafe { dealloc(p as *mut u8, l) };
            }
        },
    );
}

/// The budget can be set from the environment: `CHUNKMALLOC_BUDGET=48M`.
#[test]
fn cap_from_environment() {
    in_child(
        "cap_from_environment",
        &[("CHUNKMALLOC_BUDGET", "48M")],
        || {
            assert_eq!(budget(), Some(48 * MIB));
            let mut v: Vec<u8> = Vec::new();
            assert!(v.try_reserve(64 * MIB).is_err());
            assert!(v.try_reserve(16 * MIB).is_ok());
            v.resize(16 * MIB, 3);
            assert!(stats().committed <= 48 * MIB);
        },
    );
}

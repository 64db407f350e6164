//! How much of the budget a program can actually use (its own test binary;
//! every scenario runs in a child process, so the cap never touches the
//! test harness and scenarios never share the process-wide budget).
//!
//! The usable fraction is the bytes of live, touched blocks the workers
//! hold when allocation fails, over the budget left for them: the cap minus
//! what was committed when they were released (the harness, the workers'
//! bookkeeping vectors and thread records, allocated before the cap bites,
//! since an infallible allocation failing at the cap would abort).
//!
//! * mixed sizes, log-uniform 16 B .. 8 MiB (a deterministic PRNG per
//!   thread), every page of every block written, allocated until each
//!   thread has seen 30 refusals: at least 95 % with 1 and 4 threads, at
//!   least 85 % with 16, under a 64 MiB cap;
//! * exactly 1, 2 or 4 MiB blocks, one thread, each size in its own run,
//!   until the first refusal: at least 97 % under a 256 MiB cap (with 64
//!   MiB, 4 MiB blocks alone could not reach 97 %: 15 of 16 fit once any
//!   byte of overhead exists);
//! * throughout: a sampler checks `committed` never exceeds the cap, and
//!   `peak_committed` ends within it; VmRSS grows by at most the cap plus
//!   8 MiB (thread stacks and the harness, which chunkmalloc does not
//!   count); after the workers free half their blocks, allocation works
//!   again.

mod common;

use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use chunkmalloc::{set_budget, stats};
use common::{free_half, in_child, rss_noalloc, size_classes, Rng, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// Slack over the cap allowed for VmRSS growth: thread stacks, the test
/// harness's own pages, none of which chunkmalloc maps.
/// Refusals each mixed-size worker sees before it stops.
const NULLS: usize = 200;

const RSS_SLACK: usize = 8 * MIB;

/// A block a worker holds: address, size, fill byte.
type Held = (usize, usize, u8);

/// Writes every page of a block (and its last byte).
///
/// # Safety
/// `p` is a live block of `n` bytes.
unsafe fn touch(p: *mut u8, n: usize, v: u8) {
    let mut off = 0;
    while off < n {
        // SAFETY: inside the block.
        unsafe { p.add(off).write_volatile(v) };
        off += 4096;
    }
    // SAFETY: as above.
    unsafe { p.add(n - 1).write_volatile(v) };
}

/// Checks what [`touch`] wrote.
///
/// # Safety
/// As [`touch`].
unsafe fn verify(p: *mut u8, n: usize, v: u8) {
    let mut off = 0;
    while off < n {
        // SAFETY: inside the block.
        assert_eq!(unsafe { p.add(off).read_volatile() }, v, "block contents");
        off += 4096;
    }
    // SAFETY: as above.
    assert_eq!(unsafe { p.add(n - 1).read_volatile() }, v, "block tail");
}

fn layout(n: usize) -> Layout {
    Layout::from_size_align(n, 16).unwrap()
}

fn free_held(b: Held) {
    // SAFETY: a live block of `b.1` bytes allocated with `layout(b.1)`,
    // freed once.
    unsafe {
        verify(b.0 as *mut u8, b.1, b.2);
        dealloc(b.0 as *mut u8, layout(b.1));
    }
}

/// Allocates (and touches) blocks of `size()` bytes until `max_nulls`
/// refusals or `held` is at capacity. Returns the refusals seen.
fn fill(held: &mut Vec<Held>, mut size: impl FnMut() -> usize, max_nulls: usize, v: u8) -> usize {
    let mut nulls = 0;
    while nulls < max_nulls && held.len() < held.capacity() {
        let n = size();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(layout(n)) };
        if p.is_null() {
            nulls += 1;
            continue;
        }
        // SAFETY: a live block of `n` bytes.
        unsafe { touch(p, n, v) };
        held.push((p as usize, n, v));
    }
    nulls
}

/// Starts a thread that records the highest `committed` it sees until
/// `stop` (stats() does not allocate, so sampling works at the cap).
fn sampler(stop: &Arc<AtomicBool>, max: &Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
    let (stop, max) = (Arc::clone(stop), Arc::clone(max));
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            max.fetch_max(stats().committed, Ordering::Relaxed);
            std::thread::yield_now();
        }
    })
}

/// Checks the cap held: the sampler's maximum, `peak_committed`, VmRSS.
fn assert_cap_held(cap: usize, max_seen: usize, rss_before: usize) {
    let s = stats();
    assert!(
        max_seen <= cap,
        "sampler saw committed {max_seen} > cap {cap}"
    );
    assert!(
        s.peak_committed <= cap,
        "peak_committed {} > cap {cap}",
        s.peak_committed
    );
    let rss_gain = rss_noalloc().saturating_sub(rss_before);
    assert!(
        rss_gain <= cap + RSS_SLACK,
        "VmRSS grew by {rss_gain} bytes under a cap of {cap}"
    );
}

/// `threads` workers allocate mixed sizes under a 64 MiB cap until each has
/// seen [`NULLS`] refusals; asserts the usable fraction is at least `want`,
/// the cap held, and allocation recovers once half is freed. With `warm`,
/// each worker first allocates (and keeps) one block of every small size
/// class, as a thread that has run for a while holds partly used chunks of
/// many classes.
fn mixed(threads: usize, warm: bool, want: f64) {
    const CAP: usize = 64 * MIB;
    let go = Arc::new(Barrier::new(threads + 1));
    let filled = Arc::new(Barrier::new(threads + 1));
    let checked = Arc::new(Barrier::new(threads + 1));
    let halved = Arc::new(Barrier::new(threads + 1));
    let recovered = Arc::new(Barrier::new(threads + 1));
    let held_bytes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let rss_before = rss_noalloc();
    let sampler = sampler(&stop, &max_seen);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (go, filled, checked, halved, recovered) = (
                Arc::clone(&go),
                Arc::clone(&filled),
                Arc::clone(&checked),
                Arc::clone(&halved),
                Arc::clone(&recovered),
            );
            let held_bytes = Arc::clone(&held_bytes);
            let mut held: Vec<Held> = Vec::with_capacity(8000);
            let classes = if warm { size_classes() } else { Vec::new() };
            std::thread::spawn(move || {
                let v = t as u8 + 1;
                let mut rng = Rng::new(t as u64 + 1);
                go.wait();
                for n in classes {
                    // SAFETY: non-zero size.
                    let p = unsafe { alloc(layout(n)) };
                    if p.is_null() {
                        break;
                    }
                    // SAFETY: a live block of `n` bytes.
                    unsafe { touch(p, n, v) };
                    held.push((p as usize, n, v));
                }
                let nulls = fill(&mut held, || rng.log_size(16, 8 * MIB), NULLS, v);
                assert!(nulls == NULLS, "worker {t} ran out of bookkeeping room");
                held_bytes.fetch_add(held.iter().map(|b| b.1).sum(), Ordering::Relaxed);
                filled.wait();
                checked.wait();
                // Free half of the blocks and at least half of the bytes.
                free_half(&mut held, |b| b.1, free_held);
                halved.wait();
                recovered.wait();
                held.drain(..).for_each(free_held);
            })
        })
        .collect();
    // Every worker exists with its bookkeeping: set the cap and go.
    let base = stats().committed;
    assert!(base < CAP / 4, "the child starts small: {base}");
    set_budget(Some(CAP));
    go.wait();
    filled.wait();
    // --- every worker has met the cap ---
    let s = stats();
    let held = held_bytes.load(Ordering::Relaxed);
    let frac = held as f64 / (CAP - base) as f64;
    eprintln!(
        "mixed, {threads} threads (warm: {warm}): {held} bytes held of {} available ({:.1} %); committed {}, live budget {}, cached {}, in use {}",
        CAP - base,
        frac * 100.0,
        s.committed,
        s.budget_live,
        s.cached,
        s.in_use
    );
    assert!(s.committed <= CAP, "committed {} > cap", s.committed);
    assert!(
        s.budget_live <= s.committed,
        "live budget {} above committed {}",
        s.budget_live,
        s.committed
    );
    assert!(
        s.budget_live >= held,
        "live budget {} below the {held} bytes held",
        s.budget_live
    );
    checked.wait();
    halved.wait();
    // --- half freed: allocation succeeds again ---
    // SAFETY: non-zero sizes; checked and freed below.
    unsafe {
        for n in [100, 5000, 200 << 10, 3 * MIB] {
            let p = alloc(layout(n));
            assert!(
                !p.is_null(),
                "{n}-byte allocation failed after half was freed (committed {})",
                stats().committed
            );
            touch(p, n, 9);
            verify(p, n, 9);
            dealloc(p, layout(n));
        }
    }
    recovered.wait();
    for w in workers {
        w.join().expect("worker panicked");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_cap_held(CAP, max_seen.load(Ordering::Relaxed), rss_before);
    assert!(
        frac >= want,
        "{threads} threads used {:.1} % of the budget; want at least {:.0} %",
        frac * 100.0,
        want * 100.0
    );
}

/// One thread allocates blocks of exactly `size` bytes under a 256 MiB cap
/// until the first refusal; asserts at least 97 % of the budget is usable.
fn exact(size: usize) {
    const CAP: usize = 256 * MIB;
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let rss_before = rss_noalloc();
    let sampler = sampler(&stop, &max_seen);
    let mut held: Vec<Held> = Vec::with_capacity(1000);
    let base = stats().committed;
    set_budget(Some(CAP));
    fill(&mut held, || size, 1, 5);
    let bytes: usize = held.iter().map(|b| b.1).sum();
    let frac = bytes as f64 / (CAP - base) as f64;
    let s = stats();
    eprintln!(
        "exact {size}: {} blocks, {bytes} bytes of {} available ({:.2} %); committed {}, live budget {}",
        held.len(),
        CAP - base,
        frac * 100.0,
        s.committed,
        s.budget_live
    );
    assert!(s.budget_live <= s.committed && s.budget_live >= bytes);
    // Recovery: free half, the same blocks fit again.
    let n = held.len();
    let mut k = 0;
    held.retain(|&b| {
        k += 1;
        if k % 2 == 0 {
            free_held(b);
        }
        k % 2 == 1
    });
    let freed = n - held.len();
    fill(&mut held, || size, 1, 6);
    assert!(
        held.len() >= n,
        "after freeing {freed} blocks only {} of {n} fit again",
        held.len()
    );
    held.drain(..).for_each(free_held);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_cap_held(CAP, max_seen.load(Ordering::Relaxed), rss_before);
    assert!(
        frac >= 0.97,
        "{size}-byte blocks used {:.2} % of the budget; want at least 97 %",
        frac * 100.0
    );
}

#[test]
fn mixed_sizes_one_thread_use_95_percent() {
    in_child("mixed_sizes_one_thread_use_95_percent", &[], || {
        mixed(1, false, 0.95)
    });
}

#[test]
fn mixed_sizes_four_threads_use_95_percent() {
    in_child("mixed_sizes_four_threads_use_95_percent", &[], || {
        mixed(4, false, 0.95)
    });
}

#[test]
fn mixed_sizes_sixteen_threads_use_85_percent() {
    in_child("mixed_sizes_sixteen_threads_use_85_percent", &[], || {
        mixed(16, false, 0.85)
    });
}

#[test]
fn warm_sixteen_threads_use_85_percent() {
    in_child("warm_sixteen_threads_use_85_percent", &[], || {
        mixed(16, true, 0.85)
    });
}

#[test]
fn exact_1_mib_blocks_use_97_percent() {
    in_child("exact_1_mib_blocks_use_97_percent", &[], || exact(MIB));
}

#[test]
fn exact_2_mib_blocks_use_97_percent() {
    in_child("exact_2_mib_blocks_use_97_percent", &[], || exact(2 * MIB));
}

#[test]
fn exact_4_mib_blocks_use_97_percent() {
    in_child("exact_4_mib_blocks_use_97_percent", &[], || exact(4 * MIB));
}

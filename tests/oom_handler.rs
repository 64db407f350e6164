//! The exhaustion callback: called when an allocation is about to fail
//! under the budget; if it frees memory and returns `true`, the allocation
//! is retried once and succeeds. Runs in a child process so the cap never
//! touches the test harness. Every allocation goes through `black_box`:
//! a release build may otherwise fold away an allocation that is only
//! tested for null, and with it the failure the test expects.

mod common;

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use chunkmalloc::{set_budget, set_oom_handler, stats};
use common::{in_child, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// A ballast block the handler gives back (address, 0 when gone).
static BALLAST: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
const BALLAST_SIZE: usize = 24 * MIB;

fn ballast_layout() -> Layout {
    Layout::from_size_align(BALLAST_SIZE, 16).unwrap()
}

fn release_ballast(_size: usize) -> bool {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let p = BALLAST.swap(0, Ordering::AcqRel);
    if p == 0 {
        return false;
    }
    // SAFETY: allocated below with this layout; taken exactly once.
    unsafe { dealloc(p as *mut u8, ballast_layout()) };
    true
}

#[test]
fn handler_frees_memory_and_the_allocation_succeeds() {
    in_child(
        "handler_frees_memory_and_the_allocation_succeeds",
        &[],
        || {
            let cap = stats().committed + 40 * MIB;
            set_budget(Some(cap));
            // SAFETY: non-zero size.
            let ballast = black_box(unsafe { alloc(ballast_layout()) });
            assert!(!ballast.is_null());
            // SAFETY: the block is 24 MiB long.
            unsafe { ballast.write_bytes(1, BALLAST_SIZE) };
            BALLAST.store(ballast as usize, Ordering::Release);

            // Without a handler a 24 MiB request fails: 24 + 24 > 40.
            let big = Layout::from_size_align(24 * MIB, 16).unwrap();
            // SAFETY: non-zero size.
            let p = black_box(unsafe { alloc(big) });
            assert!(p.is_null(), "the cap should refuse a second 24 MiB block");
            assert_eq!(CALLS.load(Ordering::Relaxed), 0);

            set_oom_handler(Some(release_ballast));
            // SAFETY: non-zero size.
            let p = black_box(unsafe { alloc(big) });
            assert!(
                !p.is_null(),
                "the handler freed 24 MiB; the retry must succeed"
            );
            assert_eq!(CALLS.load(Ordering::Relaxed), 1, "called once");
            // SAFETY: p is a live 24 MiB block.
            unsafe {
                p.write_bytes(2, 24 * MIB);
                assert_eq!(*p.add(24 * MIB - 1), 2);
            }

            // A handler with nothing left to free returns false: plain failure.
            // SAFETY: non-zero size.
            let q = black_box(unsafe { alloc(big) });
            assert!(q.is_null());
            assert_eq!(CALLS.load(Ordering::Relaxed), 2);
            set_oom_handler(None);
            // SAFETY: allocated above with this layout.
            unsafe { dealloc(p, big) };
            assert!(stats().committed <= cap);
        },
    );
}

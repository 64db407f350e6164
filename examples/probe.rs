//! Fast-path probe: runs one allocation pattern `N` times through one
//! allocator's `GlobalAlloc` methods, called directly (not installed as the
//! global allocator), so the same loop measures every allocator.
//!
//! Usage: `probe <allocator> <scenario> <n>` with allocator one of
//! `chunkmalloc`, `system`, `jemalloc`, `mimalloc` and scenario one of
//! `single` (alloc+free pairs cycling over 8 sizes from 16 to 512 B),
//! `batch` (1,000 allocations then 1,000 LIFO frees), `remote` (a second
//! thread frees what the first allocates, in batches of 1,000).
//! `scripts/fastpath-probe.sh` runs it under callgrind at two `n` and
//! reports instructions per malloc+free pair from the difference.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc;

const SIZES: [usize; 8] = [16, 32, 48, 64, 128, 256, 384, 512];

/// The layouts, built once so the loops measure the allocator, not
/// `Layout` validation.
fn layout(i: usize) -> Layout {
    // SAFETY: every size is non-zero and 8 is a power of two.
    unsafe { Layout::from_size_align_unchecked(SIZES[i & 7], 8) }
}

/// mimalloc through its own C entry points (`mi_malloc`/`mi_free`): the
/// `mimalloc` crate's `GlobalAlloc` routes every call through
/// `mi_malloc_aligned`, which is not mimalloc's fast path.
struct MiNative;

// SAFETY: forwards to mimalloc, whose blocks are at least 16-byte aligned;
// the probe only uses alignment 8.
unsafe impl GlobalAlloc for MiNative {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: plain C allocation.
        unsafe { libmimalloc_sys::mi_malloc(l.size()).cast() }
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: `p` came from mi_malloc.
        unsafe { libmimalloc_sys::mi_free(p.cast()) }
    }
}

/// An allocator that does nothing: hands out one scratch buffer. Its count
/// is the harness's own cost, subtracted from every other figure.
struct Noop;

static mut SCRATCH: [u64; 64] = [0; 64];
static SCRATCH_PTR: SyncPtr = SyncPtr(std::ptr::addr_of_mut!(SCRATCH) as *mut u8);
static mut SINK: usize = 0;

struct SyncPtr(*mut u8);
// SAFETY: the pointer is only read.
unsafe impl Sync for SyncPtr {}

// SAFETY: never used for real storage; the probe only writes one byte to
// each "allocation", and the buffer outlives every use.
unsafe impl GlobalAlloc for Noop {
    // One volatile access each way keeps the loops from being optimised
    // away without adding work a real allocator would not also do.
    unsafe fn alloc(&self, _l: Layout) -> *mut u8 {
        // SAFETY: reading a static's address, no data race (single value).
        unsafe { std::ptr::read_volatile(std::ptr::addr_of!(SCRATCH_PTR.0)) }
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: SINK is written only here; racing writes of a usize by the
        // remote scenario's one consumer thread are not possible (one thread
        // frees).
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!(SINK), p as usize) }
    }
}

#[inline(never)]
fn single<A: GlobalAlloc>(a: &A, n: usize) {
    for i in 0..n {
        let l = layout(i);
        // SAFETY: non-zero size; freed with the same layout.
        unsafe {
            let p = black_box(a.alloc(l));
            p.write(1);
            a.dealloc(p, l);
        }
    }
}

#[inline(never)]
fn batch<A: GlobalAlloc>(a: &A, n: usize) {
    let mut ptrs = vec![std::ptr::null_mut::<u8>(); 1000];
    for _ in 0..n / 1000 {
        for (i, slot) in ptrs.iter_mut().enumerate() {
            let l = layout(i);
            // SAFETY: non-zero size.
            unsafe {
                *slot = black_box(a.alloc(l));
                slot.write(1);
            }
        }
        for (i, &p) in ptrs.iter().enumerate().rev() {
            let l = layout(i);
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, l) };
        }
    }
}

struct SendPtrs(Vec<usize>);

fn remote<A: GlobalAlloc + Sync>(a: &A, n: usize) {
    let (tx, rx) = mpsc::sync_channel::<SendPtrs>(4);
    let (back_tx, back_rx) = mpsc::sync_channel::<SendPtrs>(4);
    for _ in 0..4 {
        back_tx.send(SendPtrs(Vec::with_capacity(1000))).unwrap();
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            while let Ok(SendPtrs(mut v)) = rx.recv() {
                for (i, &p) in v.iter().enumerate() {
                    let l = layout(i);
                    // SAFETY: allocated by the producer with this layout.
                    unsafe { a.dealloc(p as *mut u8, l) };
                }
                v.clear();
                if back_tx.send(SendPtrs(v)).is_err() {
                    break;
                }
            }
        });
        for _ in 0..n / 1000 {
            let SendPtrs(mut v) = back_rx.recv().unwrap();
            for i in 0..1000 {
                let l = layout(i);
                // SAFETY: non-zero size.
                let p = unsafe { black_box(a.alloc(l)) };
                // SAFETY: p is a fresh block.
                unsafe { p.write(1) };
                v.push(p as usize);
            }
            tx.send(SendPtrs(v)).unwrap();
        }
        drop(tx);
    });
}

fn run<A: GlobalAlloc + Sync>(a: &A, scenario: &str, n: usize) {
    match scenario {
        "single" => single(a, n),
        "batch" => batch(a, n),
        "remote" => remote(a, n),
        _ => {
            eprintln!("unknown scenario {scenario}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: probe <chunkmalloc|system|jemalloc|mimalloc|mimalloc-crate|noop> <single|batch|remote> <n>");
        std::process::exit(2);
    }
    let n: usize = args[3].parse().expect("n");
    match args[1].as_str() {
        "chunkmalloc" => run(&chunkmalloc::ChunkMalloc, &args[2], n),
        "system" => run(&System, &args[2], n),
        "jemalloc" => run(&tikv_jemallocator::Jemalloc, &args[2], n),
        "mimalloc" => run(&MiNative, &args[2], n),
        "mimalloc-crate" => run(&mimalloc::MiMalloc, &args[2], n),
        "noop" => run(&Noop, &args[2], n),
        other => {
            eprintln!("unknown allocator {other}");
            std::process::exit(2);
        }
    }
}

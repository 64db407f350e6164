//! In-process allocator benchmarks (Criterion).
//!
//! Every allocator is called through its `GlobalAlloc` methods directly,
//! not installed as the global allocator (the bench binary itself, and
//! Criterion, allocate through `std::alloc::System`). Each benchmark group
//! runs the same monomorphised loop over every allocator so Criterion
//! prints them side by side:
//!
//! | label | what is called |
//! |---|---|
//! | `chunkmalloc` | `chunkmalloc::ChunkMalloc` |
//! | `glibc` | `std::alloc::System` (glibc `malloc`/`free`/`realloc`) |
//! | `jemalloc` | `tikv_jemallocator::Jemalloc` (`mallocx`/`sdallocx`/`rallocx`) |
//! | `mimalloc-crate` | `mimalloc::MiMalloc`: the crate routes every call through `mi_malloc_aligned`/`mi_realloc_aligned` |
//! | `mimalloc-direct` | `libmimalloc_sys::mi_malloc`/`mi_free`/`mi_realloc`, mimalloc's own fast path |
//!
//! Groups:
//! - `pair/<size>`: one allocation and its free, one byte written
//!   (throughput: 1 element = 1 pair);
//! - `batch/1000x<size>`: 1,000 allocations, then 1,000 frees, newest
//!   first (`lifo`) or oldest first (`fifo`) (1,000 elements);
//! - `realloc_grow`: a block grown from 16 B to 1 MiB by ×1.5 steps, one
//!   byte written at the new end after each step, then freed (one element
//!   per `realloc`);
//! - `cross_thread`: batches of 1,000 blocks (sizes cycling over 16–512 B)
//!   allocated on the bench thread and freed by a second thread that lives
//!   for the whole group, pointers handed over through a channel; a sample
//!   ends when every block of it has been freed (1,000 elements a batch).
//!
//! After the groups, jemalloc's own statistics (`tikv-jemalloc-ctl`) are
//! printed beside `chunkmalloc::stats()`.
//!
//! Clock: wall time by default. `BENCH_CLOCK=cpu` measures the process's
//! CPU time instead (`CLOCK_PROCESS_CPUTIME_ID`, all threads), which other
//! processes competing for the cores inflate far less; for `cross_thread`
//! it is then the CPU both threads spend per block, not the elapsed time.
//!
//! `cargo bench --bench alloc` runs it (about two minutes on two cores);
//! `cargo bench --bench alloc -- --test` (and `cargo test --all-targets`)
//! runs each benchmark once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};

/// The benchmarks' clock: monotonic wall time, or the process's CPU time
/// (`BENCH_CLOCK=cpu`). Values are `Duration`s, shown as Criterion shows
/// wall time.
#[derive(Clone, Copy)]
struct Clock {
    cpu: bool,
}

/// Lends Criterion's duration formatting to `Clock`.
static WALL: WallTime = WallTime;

impl Clock {
    fn from_env() -> Clock {
        Clock {
            cpu: std::env::var("BENCH_CLOCK").is_ok_and(|v| v == "cpu"),
        }
    }

    fn now(&self) -> Duration {
        let id = if self.cpu {
            libc::CLOCK_PROCESS_CPUTIME_ID
        } else {
            libc::CLOCK_MONOTONIC
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; both clocks exist on Linux.
        let rc = unsafe { libc::clock_gettime(id, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime failed");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }
    fn end(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

type Group<'a> = BenchmarkGroup<'a, Clock>;

/// mimalloc through its C entry points, without the crate's detour through
/// the aligned API.
struct MiDirect;

// SAFETY: mimalloc's blocks are aligned to at least 16 bytes (its
// `MI_MAX_ALIGN_SIZE`); this bench only asks for alignment 8 (`ALIGN`).
unsafe impl GlobalAlloc for MiDirect {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        debug_assert!(l.align() <= 16);
        // SAFETY: a plain C allocation.
        unsafe { libmimalloc_sys::mi_malloc(l.size()).cast() }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: `p` came from mi_malloc/mi_realloc.
        unsafe { libmimalloc_sys::mi_free(p.cast()) }
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        debug_assert!(l.align() <= 16);
        // SAFETY: `p` came from mi_malloc/mi_realloc and is live.
        unsafe { libmimalloc_sys::mi_realloc(p.cast(), new_size).cast() }
    }
}

static CHUNKMALLOC: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;
static GLIBC: System = System;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC_CRATE: mimalloc::MiMalloc = mimalloc::MiMalloc;
static MIMALLOC_DIRECT: MiDirect = MiDirect;

/// Calls `$f($args..., label, &ALLOCATOR)` once per allocator, each call
/// monomorphised (no dynamic dispatch inside the timed loops).
macro_rules! each_allocator {
    ($f:ident($($arg:expr),*)) => {{
        $f($($arg,)* "chunkmalloc", &CHUNKMALLOC);
        $f($($arg,)* "glibc", &GLIBC);
        $f($($arg,)* "jemalloc", &JEMALLOC);
        $f($($arg,)* "mimalloc-crate", &MIMALLOC_CRATE);
        $f($($arg,)* "mimalloc-direct", &MIMALLOC_DIRECT);
    }};
}

/// Alignment of every request: what a `Vec<u64>` or a C `malloc` caller
/// without special needs would ask for.
const ALIGN: usize = 8;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("valid layout")
}

/// Allocates and checks for null (a null here is a failed run, not a
/// figure).
///
/// # Safety
/// `l` has a non-zero size.
#[inline(always)]
unsafe fn alloc_checked<A: GlobalAlloc>(a: &A, l: Layout) -> *mut u8 {
    // SAFETY: the caller's contract.
    let p = unsafe { a.alloc(l) };
    assert!(!p.is_null(), "allocation of {} bytes failed", l.size());
    p
}

// ---------------------------------------------------------------- pair

const PAIR_SIZES: [usize; 7] = [16, 64, 256, 1024, 4096, 32768, 262144];

fn pair_one<A: GlobalAlloc>(g: &mut Group<'_>, size: usize, name: &str, a: &'static A) {
    let l = layout(size);
    g.bench_function(name, |b| {
        b.iter(|| {
            // SAFETY: non-zero size; freed once, with the same layout.
            unsafe {
                let p = black_box(alloc_checked(a, l));
                p.write(1);
                a.dealloc(p, l);
            }
        })
    });
}

fn pair(c: &mut Criterion<Clock>) {
    for size in PAIR_SIZES {
        let mut g = c.benchmark_group(format!("pair/{size}"));
        g.throughput(Throughput::Elements(1));
        each_allocator!(pair_one(&mut g, size));
        g.finish();
    }
}

// --------------------------------------------------------------- batch

const BATCH: usize = 1000;
const BATCH_SIZES: [usize; 2] = [32, 256];

#[derive(Clone, Copy)]
enum Order {
    Lifo,
    Fifo,
}

fn batch_one<A: GlobalAlloc>(
    g: &mut Group<'_>,
    size: usize,
    order: Order,
    name: &str,
    a: &'static A,
) {
    let l = layout(size);
    // Allocated once (by System, the process allocator), outside the loop.
    let mut ptrs = vec![std::ptr::null_mut::<u8>(); BATCH];
    let label = match order {
        Order::Lifo => "lifo",
        Order::Fifo => "fifo",
    };
    g.bench_function(BenchmarkId::new(label, name), |b| {
        b.iter(|| {
            for slot in ptrs.iter_mut() {
                // SAFETY: non-zero size.
                unsafe {
                    let p = alloc_checked(a, l);
                    p.write(1);
                    *slot = black_box(p);
                }
            }
            match order {
                Order::Lifo => {
                    for &p in ptrs.iter().rev() {
                        // SAFETY: allocated just above with `l`, freed once.
                        unsafe { a.dealloc(p, l) };
                    }
                }
                Order::Fifo => {
                    for &p in ptrs.iter() {
                        // SAFETY: as above.
                        unsafe { a.dealloc(p, l) };
                    }
                }
            }
        })
    });
}

fn batch(c: &mut Criterion<Clock>) {
    for size in BATCH_SIZES {
        let mut g = c.benchmark_group(format!("batch/{BATCH}x{size}"));
        g.throughput(Throughput::Elements(BATCH as u64));
        each_allocator!(batch_one(&mut g, size, Order::Lifo));
        each_allocator!(batch_one(&mut g, size, Order::Fifo));
        g.finish();
    }
}

// ------------------------------------------------------------- realloc

const GROW_FROM: usize = 16;
const GROW_TO: usize = 1 << 20;

/// The next size of the growth sequence (×1.5, capped at `GROW_TO`).
fn grow_step(size: usize) -> usize {
    (size + size / 2).min(GROW_TO)
}

/// How many `realloc` calls one growth from `GROW_FROM` to `GROW_TO` makes.
fn grow_steps() -> u64 {
    let (mut size, mut n) = (GROW_FROM, 0);
    while size < GROW_TO {
        size = grow_step(size);
        n += 1;
    }
    n
}

fn realloc_one<A: GlobalAlloc>(g: &mut Group<'_>, name: &str, a: &'static A) {
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut l = layout(GROW_FROM);
            // SAFETY: non-zero size; every realloc passes the block's
            // current layout; the block is freed once at the end.
            unsafe {
                let mut p = alloc_checked(a, l);
                p.write(1);
                while l.size() < GROW_TO {
                    let new = grow_step(l.size());
                    p = a.realloc(black_box(p), l, new);
                    assert!(!p.is_null(), "realloc to {new} bytes failed");
                    p.add(new - 1).write(1);
                    l = layout(new);
                }
                a.dealloc(black_box(p), l);
            }
        })
    });
}

fn realloc_grow(c: &mut Criterion<Clock>) {
    let mut g = c.benchmark_group("realloc_grow");
    g.throughput(Throughput::Elements(grow_steps()));
    each_allocator!(realloc_one(&mut g));
    g.finish();
}

// -------------------------------------------------------- cross_thread

/// Sizes of the cross-thread blocks, cycled by index (as `examples/probe.rs`
/// does, so the figures compare with its `remote` scenario).
const REMOTE_SIZES: [usize; 8] = [16, 32, 48, 64, 128, 256, 384, 512];

fn remote_layout(i: usize) -> Layout {
    layout(REMOTE_SIZES[i % REMOTE_SIZES.len()])
}

/// Batches in flight at once; the channels hold this many, so a send never
/// blocks and the two threads overlap.
const IN_FLIGHT: usize = 4;

/// A second thread that frees whatever batch of pointers it is sent, then
/// sends the emptied vector back. It lives for one allocator's benchmark.
struct Freer {
    to_freer: Option<SyncSender<Vec<usize>>>,
    back: Receiver<Vec<usize>>,
    /// Empty vectors on hand (the rest are with the freer).
    spare: Vec<Vec<usize>>,
    thread: Option<JoinHandle<()>>,
}

impl Freer {
    fn start<A: GlobalAlloc + Sync>(a: &'static A) -> Freer {
        let (to_freer, rx) = mpsc::sync_channel::<Vec<usize>>(IN_FLIGHT);
        let (back_tx, back) = mpsc::sync_channel::<Vec<usize>>(IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("freer".into())
            .spawn(move || {
                while let Ok(mut v) = rx.recv() {
                    for (i, &p) in v.iter().enumerate() {
                        // SAFETY: allocated by the bench thread with this
                        // layout and handed over; freed once.
                        unsafe { a.dealloc(p as *mut u8, remote_layout(i)) };
                    }
                    v.clear();
                    if back_tx.send(v).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the freer thread");
        Freer {
            to_freer: Some(to_freer),
            back,
            spare: (0..IN_FLIGHT).map(|_| Vec::with_capacity(BATCH)).collect(),
            thread: Some(thread),
        }
    }

    /// Allocates `batches` batches, hands each to the freer, and waits
    /// until all have been freed; returns the time taken on `clock`.
    fn run<A: GlobalAlloc>(&mut self, a: &A, clock: Clock, batches: u64) -> Duration {
        let tx = self.to_freer.as_ref().expect("freer running");
        let start = clock.start();
        let mut away = 0;
        for _ in 0..batches {
            let mut v = match self.spare.pop() {
                Some(v) => v,
                None => {
                    away -= 1;
                    self.back.recv().expect("freer alive")
                }
            };
            for i in 0..BATCH {
                // SAFETY: non-zero size; the freer frees it with this layout.
                unsafe {
                    let p = alloc_checked(a, remote_layout(i));
                    p.write(1);
                    v.push(p as usize);
                }
            }
            tx.send(v).expect("freer alive");
            away += 1;
        }
        while away > 0 {
            self.spare.push(self.back.recv().expect("freer alive"));
            away -= 1;
        }
        clock.end(start)
    }
}

impl Drop for Freer {
    fn drop(&mut self) {
        drop(self.to_freer.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("freer thread panicked");
        }
    }
}

fn cross_one<A: GlobalAlloc + Sync>(g: &mut Group<'_>, name: &str, a: &'static A) {
    let clock = Clock::from_env();
    let mut freer = Freer::start(a);
    g.bench_function(name, |b| b.iter_custom(|iters| freer.run(a, clock, iters)));
}

fn cross_thread(c: &mut Criterion<Clock>) {
    let mut g = c.benchmark_group("cross_thread");
    g.throughput(Throughput::Elements(BATCH as u64));
    each_allocator!(cross_one(&mut g));
    g.finish();
}

// ---------------------------------------------------------- statistics

fn print_allocator_stats() {
    use tikv_jemalloc_ctl::{epoch, stats};

    println!();
    println!("allocator statistics after the benchmarks (blocks all freed):");
    let s = chunkmalloc::stats();
    println!(
        "  chunkmalloc  in_use {:>12} B   committed {:>12} B   (peak committed {} B)",
        s.in_use, s.committed, s.peak_committed
    );
    // jemalloc refreshes its statistics only when the epoch advances.
    let je =
        epoch::advance().and_then(|_| Ok((stats::allocated::read()?, stats::resident::read()?)));
    match je {
        Ok((allocated, resident)) => println!(
            "  jemalloc     allocated {:>9} B   resident  {:>12} B",
            allocated, resident
        ),
        Err(e) => println!("  jemalloc     statistics unavailable: {e}"),
    }
}

fn main() {
    let clock = Clock::from_env();
    let listing = std::env::args().any(|a| a == "--list");
    if !listing {
        let what = if clock.cpu {
            "process CPU time (BENCH_CLOCK=cpu)"
        } else {
            "wall time"
        };
        println!("clock: {what}");
    }
    let mut c = Criterion::default()
        .with_measurement(clock)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    pair(&mut c);
    batch(&mut c);
    realloc_grow(&mut c);
    cross_thread(&mut c);
    c.final_summary();
    // `--list` output is read by tools; keep it to Criterion's lines.
    if !listing {
        print_allocator_stats();
    }
}

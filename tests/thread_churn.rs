//! Thread churn (its own test binary: it reads process-wide statistics).
//!
//! 10,000 short-lived threads, spawned in waves of 16, each allocate
//! objects, verify them, leave some in a shared pool and free some that
//! earlier threads left there. Heaps of exited threads are abandoned and
//! adopted by new threads, so the number of heap records and the committed
//! memory must stay bounded by the peak number of threads alive at once,
//! not grow with the number of threads ever created.

mod common;

use std::sync::Mutex;

use common::{check, fill, Rng, KIB, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

struct Obj {
    data: Box<[u8]>,
    seed: u64,
}

impl Obj {
    fn new(size: usize, seed: u64) -> Obj {
        let mut data = vec![0u8; size].into_boxed_slice();
        fill(&mut data, seed);
        Obj { data, seed }
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        check(&self.data, self.seed, "object before free");
    }
}

static POOL: Mutex<Vec<Obj>> = Mutex::new(Vec::new());

const THREADS: usize = 10_000;
const WAVE: usize = 16;

fn worker(id: usize) {
    let mut rng = Rng::new(id as u64 + 1);
    let n = rng.range(10, 40);
    let mut mine: Vec<Obj> = (0..n)
        .map(|i| Obj::new(rng.log_size(8, 16 * KIB), (id as u64) << 16 | i as u64))
        .collect();
    if id % 10 == 0 {
        // Now and then a large (oversized-chunk) object.
        mine.push(Obj::new(100 * KIB + id % 4096, (id as u64) << 16 | 0xFFFF));
    }
    // Leave up to 3 for later threads; free up to 3 that earlier threads
    // left (remote frees into heaps that may be abandoned or re-adopted).
    let mut leave: Vec<Obj> = mine.drain(..3.min(mine.len())).collect();
    let taken: Vec<Obj> = {
        let mut pool = POOL.lock().unwrap();
        let k = pool.len().min(3);
        let start = pool.len() - k;
        let taken = pool.drain(start..).collect();
        pool.append(&mut leave);
        taken
    };
    drop(taken);
    drop(mine);
}

fn heaps() -> usize {
    let s = chunkmalloc::stats();
    s.live_heaps + s.abandoned_heaps
}

#[test]
fn ten_thousand_short_lived_threads() {
    let start = chunkmalloc::stats();
    let mut max_heaps = start.live_heaps + start.abandoned_heaps;
    let mut peak_committed = 0;
    for wave in 0..THREADS / WAVE {
        let hs: Vec<_> = (0..WAVE)
            .map(|k| {
                let id = wave * WAVE + k;
                std::thread::spawn(move || worker(id))
            })
            .collect();
        max_heaps = max_heaps.max(heaps());
        for h in hs {
            h.join().expect("worker panicked");
        }
        let s = chunkmalloc::stats();
        max_heaps = max_heaps.max(s.live_heaps + s.abandoned_heaps);
        peak_committed = peak_committed.max(s.committed);
    }
    assert_eq!(
        POOL.lock().unwrap().len(),
        3 * THREADS - 3 * (THREADS - 1),
        "pool bookkeeping"
    );
    drop(std::mem::take(&mut *POOL.lock().unwrap()));
    let end = chunkmalloc::stats();
    chunkmalloc::purge();
    let purged = chunkmalloc::stats();
    eprintln!(
        "heaps max {max_heaps}, peak committed {peak_committed}, end {}, after purge {}\n{purged:?}",
        end.committed, purged.committed
    );
    // At most WAVE workers + the test thread + the harness's main thread
    // are alive at once; heap records are reused, never leaked.
    assert!(
        max_heaps <= 64,
        "{max_heaps} heap records for at most {} live threads",
        WAVE + 2
    );
    assert!(purged.live_heaps + purged.abandoned_heaps <= 64);
    // Chunks are reused across threads: far fewer are mapped than threads
    // were created (each thread needs several chunks).
    let mapped = purged.chunks_mapped_total - start.chunks_mapped_total;
    let reused = purged.chunks_reused_total - start.chunks_reused_total;
    assert!(
        mapped < THREADS / 5,
        "{mapped} chunks mapped (and {reused} reused) for {THREADS} threads"
    );
    assert!(reused > THREADS, "only {reused} chunks reused");
    // Committed memory stays bounded during the churn (it holds about
    // 20 threads' worth of objects plus caches waiting for the purge
    // delay) and falls back after purge.
    assert!(
        peak_committed < 64 * MIB,
        "committed reached {peak_committed} bytes during the churn"
    );
    assert!(
        purged.committed < 16 * MIB,
        "committed after churn and purge: {} bytes",
        purged.committed
    );
}

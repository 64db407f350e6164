//! A multi-threaded workload run with chunkmalloc as the global allocator;
//! prints throughput, peak RSS and chunkmalloc's statistics.
//!
//! `cargo run --release --example workload [threads] [seconds-ish scale]`
//!
//! Each thread builds and tears down maps and strings, keeps a rolling
//! window of live objects of random sizes (16 B to 64 KiB, some up to
//! 4 MiB), and hands a share of them to the next thread to free, so local
//! frees, remote frees, large objects and memory return are all exercised.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Log-uniform size in [16, max].
    fn size(&mut self, max: usize) -> usize {
        let bits = 4 + (self.next() % (max.ilog2() as u64 - 3)) as u32;
        let hi = 1usize << bits;
        hi / 2 + (self.next() as usize % (hi / 2)).max(1)
    }
}

fn rss_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn worker(id: usize, rounds: usize, tx: mpsc::Sender<Vec<u8>>, rx: mpsc::Receiver<Vec<u8>>) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((id as u64 + 1) * 0x2545_f491_4f6c_dd1d));
    let mut ops = 0u64;
    let mut window: Vec<Vec<u8>> = Vec::with_capacity(4096);
    for round in 0..rounds {
        // Maps and strings: many small objects with short lives.
        let mut m: HashMap<u64, String> = HashMap::new();
        for k in 0..2000u64 {
            m.insert(k ^ rng.next(), format!("value-{k}-{round}"));
        }
        ops += 4000;
        drop(m);
        // A rolling window of random sizes; a share goes to the next thread.
        for _ in 0..4000 {
            let max = if rng.next() % 512 == 0 {
                4 << 20
            } else {
                64 << 10
            };
            let n = rng.size(max);
            let mut v = vec![0u8; n];
            v[0] = id as u8;
            v[n - 1] = n as u8;
            ops += 1;
            if window.len() == window.capacity() {
                let i = rng.next() as usize % window.len();
                let old = window.swap_remove(i);
                assert_eq!(old[old.len() - 1], old.len() as u8, "corrupted block");
                if rng.next() % 4 == 0 {
                    let _ = tx.send(old);
                }
            }
            window.push(v);
        }
        while let Ok(v) = rx.try_recv() {
            assert_eq!(
                v[v.len() - 1],
                v.len() as u8,
                "corrupted block from another thread"
            );
            ops += 1;
        }
    }
    ops
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(60);
    let start = Instant::now();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel()).unzip();
    let mut rxs: Vec<Option<mpsc::Receiver<Vec<u8>>>> = rxs.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let tx = txs[(i + 1) % threads].clone();
            let rx = rxs[i].take().unwrap();
            std::thread::spawn(move || worker(i, rounds, tx, rx))
        })
        .collect();
    drop(txs);
    let ops: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    let peak = rss_kib("VmHWM:");
    let before = rss_kib("VmRSS:");
    let s = chunkmalloc::stats();
    let released = chunkmalloc::purge();
    let after = rss_kib("VmRSS:");
    println!("chunkmalloc workload: {threads} threads, {rounds} rounds");
    println!("  operations        {ops}");
    println!(
        "  time              {secs:.3} s ({:.1} M ops/s)",
        ops as f64 / secs / 1e6
    );
    println!("  peak RSS          {:.1} MiB", peak as f64 / 1024.0);
    println!(
        "  RSS at end        {:.1} MiB, after purge {:.1} MiB ({:.1} MiB released)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        released as f64 / 1048576.0
    );
    println!(
        "  committed         {:.1} MiB (peak {:.1} MiB)",
        s.committed as f64 / 1048576.0,
        s.peak_committed as f64 / 1048576.0
    );
    println!(
        "  chunks mapped     {} (reused from caches {})",
        s.chunks_mapped_total, s.chunks_reused_total
    );
    println!("  remote frees      {}", s.remote_frees);
    println!(
        "  heaps             {} live, {} abandoned",
        s.live_heaps, s.abandoned_heaps
    );
}

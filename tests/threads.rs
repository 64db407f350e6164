//! Cross-thread frees: objects passed around a ring of threads and freed
//! by the receiver; objects outliving the thread that allocated them;
//! frees from a thread that never allocated; remote-freed blocks being
//! recycled by their owner.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Barrier};

use common::{check, fill, Rng, KIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// A patterned heap object. Dropping it checks the pattern first.
struct Obj {
    data: Box<[u8]>,
    seed: u64,
}

impl Obj {
    fn new(size: usize, seed: u64, zeroed: bool) -> Obj {
        let data = if zeroed {
            let mut v = vec![0u8; size].into_boxed_slice();
            assert!(v.iter().all(|&b| b == 0), "vec![0; {size}] not zero");
            fill(&mut v, seed);
            v
        } else {
            let mut v: Vec<u8> = Vec::with_capacity(size);
            // SAFETY: capacity is `size`; every byte is written before
            // `set_len` exposes it.
            unsafe {
                common::fill_raw(v.as_mut_ptr(), size, seed);
                v.set_len(size);
            }
            v.into_boxed_slice()
        };
        Obj { data, seed }
    }

    fn verify(&self, what: &str) {
        check(&self.data, self.seed, what);
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        self.verify("object before free");
    }
}

/// Sends without blocking forever: while the channel is full, drain our own
/// inbox (so a ring of full channels cannot deadlock).
fn send_or_drain(tx: &SyncSender<Obj>, mut msg: Obj, rx: &Receiver<Obj>, inbox: &mut Inbox) {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return,
            Err(TrySendError::Full(m)) => {
                msg = m;
                let mut any = false;
                while let Ok(o) = rx.try_recv() {
                    inbox.take(o);
                    any = true;
                }
                if !any {
                    std::thread::yield_now();
                }
            }
            Err(TrySendError::Disconnected(_)) => panic!("ring neighbour hung up early"),
        }
    }
}

/// What a ring thread does with received objects: keeps up to 64 for a
/// while and frees a random one when full, so frees come out of order.
struct Inbox {
    held: Vec<Obj>,
    rng: Rng,
    received: usize,
    slab_received: usize,
}

impl Inbox {
    fn take(&mut self, o: Obj) {
        o.verify("received object");
        self.received += 1;
        if o.data.len() <= 64 * KIB {
            self.slab_received += 1;
        }
        if self.held.len() < 64 {
            self.held.push(o);
        } else {
            let i = self.rng.range(0, self.held.len() - 1);
            self.held[i] = o; // frees the previous occupant (remotely)
        }
    }
}

#[test]
fn ring_of_8_threads_frees_each_others_objects() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 8000;
    let before = chunkmalloc::stats().remote_frees;
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..THREADS {
        let (tx, rx) = mpsc::sync_channel::<Obj>(32);
        txs.push(Some(tx));
        rxs.push(Some(rx));
    }
    let slab_freed_remotely = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            // Thread t sends to t+1 and receives from t-1.
            let tx = txs[(t + 1) % THREADS].take().unwrap();
            let rx = rxs[t].take().unwrap();
            let counter = Arc::clone(&slab_freed_remotely);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 1);
                let mut inbox = Inbox {
                    held: Vec::with_capacity(64),
                    rng: Rng::new(t as u64 + 100),
                    received: 0,
                    slab_received: 0,
                };
                start.wait();
                for i in 0..PER_THREAD {
                    let size = rng.log_size(1, 256 * KIB);
                    let seed = ((t as u64) << 32) | i as u64;
                    let o = Obj::new(size, seed, i % 7 == 0);
                    send_or_drain(&tx, o, &rx, &mut inbox);
                    while let Ok(o) = rx.try_recv() {
                        inbox.take(o);
                    }
                }
                drop(tx);
                // Drain until the sender upstream is done too.
                for o in rx.iter() {
                    inbox.take(o);
                }
                assert_eq!(inbox.received, PER_THREAD, "thread {t} lost messages");
                let slab = inbox.slab_received;
                drop(inbox); // frees what is still held, remotely
                counter.fetch_add(slab, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("ring thread panicked");
    }
    let after = chunkmalloc::stats().remote_frees;
    let slab = slab_freed_remotely.load(Ordering::Relaxed);
    assert!(
        slab > THREADS * PER_THREAD / 2,
        "too few slab-sized objects"
    );
    // Every slab-sized object was freed by a thread other than its
    // allocator, so each is a remote free (other tests can only add more).
    assert!(
        after - before >= slab,
        "remote_frees rose by {} but {slab} slab objects were freed remotely",
        after - before
    );
}

/// Objects outlive the threads that allocated them: freed later by the
/// main thread and by new threads (which adopt the abandoned heaps).
#[test]
fn objects_outlive_their_threads() {
    let mut objs: Vec<Obj> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(1000 + t);
                (0..2000)
                    .map(|i| Obj::new(rng.log_size(1, 200 * KIB), t << 32 | i, i % 5 == 0))
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(objs.len(), 8000);
    // Free every other object here (the allocating heaps are abandoned).
    let mut i = 0;
    objs.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    // New threads allocate (adopting abandoned heaps), verify their own
    // objects, and free the rest of the old ones.
    let chunks: Vec<Vec<Obj>> = {
        let mut out = Vec::new();
        while !objs.is_empty() {
            let n = objs.len().min(1000);
            out.push(objs.drain(..n).collect());
        }
        out
    };
    let handles: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(k, old)| {
            std::thread::spawn(move || {
                let mine: Vec<Obj> = (0..1000)
                    .map(|i| {
                        Obj::new(
                            1 + (i * 37) % 5000,
                            0xAB << 40 | (k as u64) << 20 | i as u64,
                            false,
                        )
                    })
                    .collect();
                for o in &old {
                    o.verify("old object in new thread");
                }
                drop(old);
                drop(mine);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

struct FreeJob {
    ptrs: *const usize,
    n: usize,
    layout_size: usize,
}

extern "C" fn free_job(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is a FreeJob the spawner keeps alive until join; every
    // pointer is a live block of `layout_size` bytes, align 1. Nothing here
    // allocates before the frees.
    unsafe {
        let job = &*(arg as *const FreeJob);
        let layout = std::alloc::Layout::from_size_align_unchecked(job.layout_size, 1);
        for i in 0..job.n {
            std::alloc::dealloc(*job.ptrs.add(i) as *mut u8, layout);
        }
    }
    std::ptr::null_mut()
}

/// A raw pthread that has never allocated frees slab, large and huge
/// blocks; the owner then reuses the memory and nothing else is disturbed.
#[test]
fn frees_from_a_thread_that_never_allocated() {
    for size in [24usize, 3000, 100 * KIB, 9 * 1024 * KIB] {
        let n = if size > KIB * KIB { 2 } else { 200 };
        let keep: Vec<Obj> = (0..n)
            .map(|i| Obj::new(size, 7 << 40 | i as u64, false))
            .collect();
        let layout = std::alloc::Layout::from_size_align(size, 1).unwrap();
        let ptrs: Vec<usize> = (0..n)
            .map(|_| {
                // SAFETY: non-zero size; checked.
                let p = unsafe { std::alloc::alloc(layout) };
                assert!(!p.is_null());
                // SAFETY: fresh block of `size` bytes.
                unsafe { p.write_bytes(0xEE, size) };
                p as usize
            })
            .collect();
        let job = FreeJob {
            ptrs: ptrs.as_ptr(),
            n,
            layout_size: size,
        };
        // SAFETY: standard pthread create/join; `job` and `ptrs` outlive
        // the thread (joined below).
        unsafe {
            let mut th: libc::pthread_t = std::mem::zeroed();
            let rc = libc::pthread_create(
                &mut th,
                std::ptr::null(),
                free_job,
                &job as *const FreeJob as *mut libc::c_void,
            );
            assert_eq!(rc, 0, "pthread_create");
            assert_eq!(libc::pthread_join(th, std::ptr::null_mut()), 0);
        }
        for o in &keep {
            o.verify("neighbour of heapless-freed blocks");
        }
        // The freed memory is usable again from this thread.
        let again: Vec<Obj> = (0..n)
            .map(|i| Obj::new(size, 9 << 40 | i as u64, true))
            .collect();
        drop(again);
        drop(keep);
    }
}

/// One producer, three consumers freeing everything it makes: the
/// producer's heap must recycle the remotely freed blocks (distinct
/// addresses stay near the number in flight, far below the number of
/// allocations).
#[test]
fn remote_frees_are_recycled_by_the_owner() {
    const BATCH: usize = 1000;
    const BATCHES: usize = 200;
    let mut txs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = mpsc::sync_channel::<Vec<Obj>>(2);
        txs.push(tx);
        handles.push(std::thread::spawn(move || {
            let mut n = 0;
            for batch in rx.iter() {
                n += batch.len();
                drop(batch); // verified and freed (remote frees)
            }
            n
        }));
    }
    let mut seen: HashSet<usize> = HashSet::with_capacity(BATCH * BATCHES / 4);
    let mut total = 0;
    for b in 0..BATCHES {
        let batch: Vec<Obj> = (0..BATCH)
            .map(|i| {
                let o = Obj::new(48, (b * BATCH + i) as u64, false);
                seen.insert(o.data.as_ptr() as usize);
                o
            })
            .collect();
        total += batch.len();
        txs[b % 3].send(batch).unwrap();
    }
    drop(txs);
    let freed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(freed, total);
    // At most 3 * (2 queued + 1 being freed) + 1 batches are live at once.
    eprintln!("{} distinct addresses for {total} allocations", seen.len());
    assert!(
        seen.len() < total / 4,
        "{} distinct addresses for {total} allocations: remote frees not recycled",
        seen.len()
    );
}

//! The remote free's worst moment, made deterministic with the test-only
//! hook (feature `test-hooks`): a freeing thread is parked right after the
//! CAS that published its block while the owner collects, retires and
//! purges the chunk (purge delay 0, no decommitted chunk kept mapped, so
//! the chunk is unmapped). The freer must touch nothing in the chunk
//! after that CAS, unless its CAS claimed the full-chunk notification, in
//! which case the owner must not retire the chunk until it has been queued.
//!
//! Run: `cargo test --features test-hooks --test remote_free_race`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use chunkmalloc::hooks::{self, Point};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

const CHUNK: usize = 64 * 1024;
const SIZE: usize = 2048;

/// Chunk to park in (0: none), whether the next push into it parks, and
/// the parked / resume hand-shake.
static TARGET: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static PARKED: AtomicBool = AtomicBool::new(false);
static RESUME: AtomicBool = AtomicBool::new(false);
static SERIAL: Mutex<()> = Mutex::new(());

fn hook(p: Point, chunk: usize) {
    if p == Point::AfterRemotePush
        && chunk == TARGET.load(Ordering::Acquire)
        && ARMED.swap(false, Ordering::AcqRel)
    {
        PARKED.store(true, Ordering::Release);
        while !RESUME.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }
}

fn mapped(addr: usize) -> bool {
    // SAFETY: msync only inspects the mapping; ENOMEM means unmapped.
    unsafe { libc::msync(addr as *mut libc::c_void, 4096, libc::MS_ASYNC) == 0 }
}

fn wait_parked() {
    let t = Instant::now();
    while !PARKED.load(Ordering::Acquire) {
        assert!(t.elapsed() < Duration::from_secs(20), "freer never parked");
        std::thread::yield_now();
    }
}

/// Allocates 2 KiB blocks on this thread until one lands in a second
/// chunk; returns the first chunk's base and its blocks (the chunk is then
/// full and detached: it comes back only through its pending stack).
fn fill_one_chunk() -> (usize, Vec<usize>, Vec<usize>) {
    let mut first = Vec::new();
    let mut rest = Vec::new();
    let mut base = 0;
    loop {
        let mut v = Vec::<u8>::with_capacity(SIZE);
        v.resize(SIZE, 0xA5);
        let p = v.as_mut_ptr() as usize;
        std::mem::forget(v);
        let c = p & !(CHUNK - 1);
        if base == 0 {
            base = c;
        }
        if c == base {
            first.push(p);
        } else {
            rest.push(p);
            // A few more so the second chunk is the current one.
            if rest.len() >= 4 {
                return (base, first, rest);
            }
        }
    }
}

fn free_block(p: usize) {
    // SAFETY: `p` came from a Vec<u8> of capacity SIZE that was forgotten.
    unsafe { drop(Vec::from_raw_parts(p as *mut u8, 0, SIZE)) };
}

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    chunkmalloc::config::set_purge_delay_ms(0);
    hooks::KEEP_DECOMMITTED.store(0, Ordering::Relaxed);
    PARKED.store(false, Ordering::Relaxed);
    RESUME.store(false, Ordering::Relaxed);
    hooks::set(Some(hook));
    g
}

/// The last remote free of a chunk parks after its CAS; the owner then
/// collects the chunk, finds it empty, retires it and purges it, which
/// unmaps it. The parked freer resumes and must not fault.
#[test]
fn freer_parked_after_publishing_survives_unmap() {
    let _g = setup();
    let (base, blocks, rest) = fill_one_chunk();
    TARGET.store(base, Ordering::Release);
    let (tx, rx) = mpsc::channel::<()>();
    let last = *blocks.last().unwrap();
    let all = blocks.clone();
    let freer = std::thread::spawn(move || {
        for &p in &all[..all.len() - 1] {
            free_block(p);
        }
        ARMED.store(true, Ordering::Release);
        free_block(last); // parks in the hook, after its CAS
        tx.send(()).unwrap();
    });
    wait_parked();
    // The owner: every block of the chunk is on its remote list; purge
    // collects the pending chunk, retires it and unmaps it.
    chunkmalloc::purge();
    assert!(
        !mapped(base),
        "the purge must have unmapped the emptied chunk (or the test shows nothing)"
    );
    RESUME.store(true, Ordering::Release);
    rx.recv_timeout(Duration::from_secs(20))
        .expect("freer finishes");
    freer.join().unwrap();
    for p in rest {
        // SAFETY: blocks of SIZE bytes filled with 0xA5 above.
        let s = unsafe { std::slice::from_raw_parts(p as *const u8, SIZE) };
        assert!(
            s.iter().all(|&b| b == 0xA5),
            "live blocks keep their contents"
        );
        free_block(p);
    }
    hooks::set(None);
}

/// The first remote free into a full chunk claims its notification and
/// parks before queuing the chunk. Meanwhile the owner purges: it must not
/// retire the chunk (it is not on the pending stack yet, and the freer is
/// about to write its link). After the freer resumes, the chunk is queued,
/// and the next purge retires it once every block is back.
#[test]
fn claimed_notification_keeps_the_chunk_until_queued() {
    let _g = setup();
    let (base, blocks, rest) = fill_one_chunk();
    TARGET.store(base, Ordering::Release);
    let (tx, rx) = mpsc::channel::<()>();
    let all = blocks.clone();
    ARMED.store(true, Ordering::Release);
    let freer = std::thread::spawn(move || {
        free_block(all[0]); // claims the notification, parks before queuing
        tx.send(()).unwrap();
        for &p in &all[1..] {
            free_block(p);
        }
    });
    wait_parked();
    chunkmalloc::purge();
    assert!(mapped(base), "a chunk whose notification is claimed stays");
    RESUME.store(true, Ordering::Release);
    rx.recv_timeout(Duration::from_secs(20))
        .expect("freer finishes");
    freer.join().unwrap();
    chunkmalloc::purge();
    assert!(
        !mapped(base),
        "once queued and empty, the chunk is retired and unmapped"
    );
    for p in rest {
        free_block(p);
    }
    hooks::set(None);
}

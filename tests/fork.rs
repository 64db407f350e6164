//! `fork` from a multi-threaded process: 4 threads keep allocating and
//! freeing while the main thread forks 20 times. Each child allocates,
//! frees, verifies contents (including objects that the parent's other
//! threads allocated before the fork, whose heaps are orphaned in the
//! child), starts a thread of its own, and `_exit`s with 0 only if all of
//! that worked. The parent asserts every child exited 0 in time.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{check, fill, Rng, KIB, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

struct Obj {
    data: Box<[u8]>,
    seed: u64,
}

impl Obj {
    fn new(size: usize, seed: u64) -> Obj {
        let mut v: Vec<u8> = Vec::with_capacity(size);
        // SAFETY: every byte is written before `set_len`.
        unsafe {
            common::fill_raw(v.as_mut_ptr(), size, seed);
            v.set_len(size);
        }
        Obj {
            data: v.into_boxed_slice(),
            seed,
        }
    }

    fn verify(&self) {
        check(&self.data, self.seed, "object");
    }
}

/// The child's work. Returns normally only if everything checked out.
fn child_work(inherited: Vec<Obj>, round: usize) {
    // Objects allocated before the fork by the parent's other threads.
    for o in &inherited {
        o.verify();
    }
    drop(inherited); // frees into heaps orphaned by the fork
    let mut rng = Rng::new(round as u64 + 77);
    let mut objs: Vec<Obj> = (0..3000)
        .map(|i| Obj::new(rng.log_size(1, 64 * KIB), i))
        .collect();
    objs.push(Obj::new(MIB + 5, 1 << 40)); // large
    objs.push(Obj::new(9 * MIB, 2 << 40)); // huge
    for o in &objs {
        o.verify();
    }
    objs.retain(|o| o.seed % 2 == 0);
    let mut m: HashMap<u64, String> = HashMap::new();
    for i in 0..20_000u64 {
        m.insert(i, format!("v{i}"));
    }
    assert!((0..20_000u64).all(|i| m[&i] == format!("v{i}")));
    for o in &objs {
        o.verify();
    }
    // A thread in the child gets a heap (possibly an abandoned one).
    let h = std::thread::spawn(|| {
        let v: Vec<Obj> = (0..500).map(|i| Obj::new(100 + i, i as u64)).collect();
        v.iter().for_each(Obj::verify);
        v.len()
    });
    assert_eq!(h.join().unwrap(), 500);
    let mut zeroed = vec![0u8; 300 * KIB];
    assert!(common::first_nonzero(&zeroed).is_none());
    fill(&mut zeroed, 5);
    check(&zeroed, 5, "child buffer");
}

/// Waits for `pid` for up to `timeout`; returns its wait status, or None
/// (after killing it) if it hung.
fn wait_with_timeout(pid: libc::pid_t, timeout: Duration) -> Option<libc::c_int> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            return Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn fork_while_other_threads_allocate() {
    const FORKS: usize = 20;
    let stop = Arc::new(AtomicBool::new(false));
    // Set while a child runs, so the child is not starved of CPU by the
    // workers (they only need to be busy at the moment of each fork).
    let pause = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    // Objects the workers hand to the main thread for the children.
    let handoff: Arc<Mutex<Vec<Obj>>> = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let pause = Arc::clone(&pause);
            let ops = Arc::clone(&ops);
            let handoff = Arc::clone(&handoff);
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 1);
                let mut held: Vec<Obj> = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if pause.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let size = rng.log_size(1, 256 * KIB);
                    held.push(Obj::new(size, t << 48 | i));
                    i += 1;
                    if held.len() > 200 {
                        let k = rng.range(0, held.len() - 1);
                        let o = held.swap_remove(k);
                        o.verify();
                        if i % 16 == 0 {
                            handoff.lock().unwrap().push(o);
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                held.iter().for_each(Obj::verify);
            })
        })
        .collect();

    let mut failures = Vec::new();
    for round in 0..FORKS {
        // Let the workers get going between forks.
        let target = ops.load(Ordering::Relaxed) + 500;
        while ops.load(Ordering::Relaxed) < target {
            std::thread::yield_now();
        }
        // Objects allocated by the workers, owned by this thread now; the
        // child frees them (the lock is not held across the fork).
        let inherited: Vec<Obj> = std::mem::take(&mut *handoff.lock().unwrap());
        // SAFETY: fork; the child only runs `child_work` and `_exit`s, never
        // returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // Report panics straight to fd 2 (the harness's output capture
            // would swallow them).
            std::panic::set_hook(Box::new(|info| {
                let msg = format!("fork child: {info}\n");
                // SAFETY: writing a live buffer to stderr.
                unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            }));
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child_work(inherited, round)
            }))
            .is_ok();
            // SAFETY: leave the child without running the parent's
            // atexit handlers or the harness.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        pause.store(true, Ordering::Relaxed);
        // Parent: its copy of the inherited objects is still valid here.
        inherited.iter().for_each(Obj::verify);
        drop(inherited);
        match wait_with_timeout(pid, Duration::from_secs(60)) {
            None => failures.push(format!("fork {round}: child hung (killed)")),
            Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
            Some(st) if libc::WIFEXITED(st) => failures.push(format!(
                "fork {round}: child exited with {}",
                libc::WEXITSTATUS(st)
            )),
            Some(st) => failures.push(format!(
                "fork {round}: child killed by signal {}",
                libc::WTERMSIG(st)
            )),
        }
        pause.store(false, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

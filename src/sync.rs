//! The one lock chunkmalloc takes, and the atomics shim.
//!
//! [`SpinLock`] guards the rare global structures (the process-wide chunk
//! cache and the abandoned-heap list). It is a test-and-set lock that
//! yields with `sched_yield` under contention. A parking lock
//! (`parking_lot`, `std::sync::Mutex` on some targets) may allocate a
//! parking table the first time it contends, which would re-enter the
//! allocator while the lock is held; this one never allocates. Every
//! `SpinLock` is taken in `fork`'s prepare handler and released in both
//! parent and child (see `thread`), so `fork` never leaves one held.

use core::sync::atomic::{AtomicBool, Ordering};

/// A test-and-test-and-set lock that never allocates.
pub struct SpinLock {
    held: AtomicBool,
}

impl SpinLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        SpinLock {
            held: AtomicBool::new(false),
        }
    }

    /// Takes the lock, spinning and then yielding.
    #[inline]
    pub fn lock(&self) {
        if self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            while self.held.load(Ordering::Relaxed) {
                if spins < 64 {
                    core::hint::spin_loop();
                    spins += 1;
                } else {
                    // SAFETY: sched_yield has no preconditions and does not
                    // allocate.
                    unsafe {
                        libc::sched_yield();
                    }
                }
            }
            if self
                .held
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Releases the lock. The caller must hold it.
    #[inline]
    pub fn unlock(&self) {
        self.held.store(false, Ordering::Release);
    }

    /// Forces the lock free: only for the `fork` child, where the thread
    /// that held it no longer exists (the prepare handler held it, so no
    /// structure is mid-update).
    pub fn force_unlock(&self) {
        self.held.store(false, Ordering::Release);
    }
}

impl Default for SpinLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::SpinLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn lock_excludes() {
        static L: SpinLock = SpinLock::new();
        static IN: AtomicUsize = AtomicUsize::new(0);
        let hs: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..10_000 {
                        L.lock();
                        assert_eq!(IN.fetch_add(1, Ordering::Relaxed), 0);
                        IN.fetch_sub(1, Ordering::Relaxed);
                        L.unlock();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}

//! The atomics shim and the one lock type chunkmalloc takes.
//!
//! [`atomic`] is `core::sync::atomic`, or loom's atomics when the crate is
//! built with `--cfg loom`: the cross-thread protocols (`remote`, `stack`,
//! `budget`) use it so that `tests/loom.rs` model-checks the code that
//! ships, not a copy.
//!
//! [`SpinLock`] guards the rare global structures (the process-wide chunk
//! cache, the heap registry) and each heap's slow paths. It is a
//! test-and-set lock that yields with `sched_yield` under contention. A
//! parking lock (`parking_lot`, `std::sync::Mutex` on some targets) may
//! allocate a parking table the first time it contends, which would
//! re-enter the allocator while the lock is held; this one never
//! allocates. The lock word holds the holder's thread identity, so a
//! `fork` child can tell a lock held by a thread that did not survive the
//! fork from one held by itself (an interrupted slow path), see `thread`.
//! No lock is held across `fork`.

/// `core::sync::atomic`, or loom's under `cfg(loom)`.
pub mod atomic {
    pub use core::sync::atomic::Ordering;
    #[cfg(not(loom))]
    pub use core::sync::atomic::{AtomicPtr, AtomicUsize};
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicPtr, AtomicUsize};
}

#[cfg(not(loom))]
pub use lock::{thread_id, SpinLock};

#[cfg(not(loom))]
mod lock {
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// A non-zero identity of the calling thread, without a call: on x86-64
    /// the thread pointer (`%fs:0` holds its own address by the ELF TLS
    /// ABI, and glibc's `pthread_self()` is that value), elsewhere
    /// `pthread_self()`. A `fork` child's only thread keeps the forking
    /// thread's identity.
    #[inline(always)]
    pub fn thread_id() -> usize {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            let tp: usize;
            // SAFETY: reads the thread pointer word at %fs:0, which the TLS
            // ABI guarantees for every thread; no memory is written.
            unsafe {
                core::arch::asm!(
                    "mov {tp}, qword ptr fs:[0]",
                    tp = out(reg) tp,
                    options(nostack, readonly, preserves_flags, pure),
                );
            }
            tp
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            // SAFETY: no preconditions; does not allocate.
            unsafe { libc::pthread_self() as usize }
        }
    }

    /// A test-and-test-and-set lock that never allocates. The word is 0
    /// when free, else the holder's [`thread_id`].
    pub struct SpinLock {
        holder: AtomicUsize,
    }

    impl SpinLock {
        /// An unlocked lock.
        pub const fn new() -> Self {
            SpinLock {
                holder: AtomicUsize::new(0),
            }
        }

        /// Takes the lock, spinning and then yielding.
        #[inline]
        pub fn lock(&self) {
            let me = thread_id();
            if self
                .holder
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                self.lock_contended(me);
            }
        }

        /// Takes the lock if it is free; never waits.
        #[inline]
        pub fn try_lock(&self) -> bool {
            self.holder.load(Ordering::Relaxed) == 0
                && self
                    .holder
                    .compare_exchange(0, thread_id(), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        }

        #[cold]
        fn lock_contended(&self, me: usize) {
            let mut spins = 0u32;
            loop {
                while self.holder.load(Ordering::Relaxed) != 0 {
                    if spins < 64 {
                        core::hint::spin_loop();
                        spins += 1;
                    } else {
                        crate::os::yield_now();
                    }
                }
                if self
                    .holder
                    .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
        }

        /// Releases the lock. The caller must hold it.
        #[inline]
        pub fn unlock(&self) {
            self.holder.store(0, Ordering::Release);
        }

        /// The holder's [`thread_id`], or 0 when free.
        pub fn holder(&self) -> usize {
            self.holder.load(Ordering::Acquire)
        }

        /// Whether a thread other than the caller holds the lock. In a
        /// `fork` child that thread does not exist any more.
        pub fn held_by_other(&self) -> bool {
            let h = self.holder();
            h != 0 && h != thread_id()
        }

        /// Forces the lock free: only for the `fork` child, after the
        /// structure it guards has been reset, when the holder was a
        /// thread that did not survive the fork.
        pub fn force_unlock(&self) {
            self.holder.store(0, Ordering::Release);
        }
    }

    impl Default for SpinLock {
        fn default() -> Self {
            Self::new()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{thread_id, SpinLock};
        use std::sync::atomic::{AtomicUsize, Ordering};

        #[test]
        fn lock_excludes() {
            static L: SpinLock = SpinLock::new();
            static IN: AtomicUsize = AtomicUsize::new(0);
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    std::thread::spawn(|| {
                        for i in 0..10_000 {
                            if i % 2 == 0 {
                                L.lock();
                            } else {
                                while !L.try_lock() {
                                    std::hint::spin_loop();
                                }
                            }
                            assert_eq!(IN.fetch_add(1, Ordering::Relaxed), 0);
                            assert_eq!(L.holder(), thread_id());
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

        #[test]
        fn holder_identity_tells_threads_apart() {
            static L: SpinLock = SpinLock::new();
            L.lock();
            assert!(!L.held_by_other());
            assert!(!L.try_lock(), "not reentrant");
            let other = std::thread::spawn(|| (L.held_by_other(), thread_id()))
                .join()
                .unwrap();
            assert!(other.0);
            assert_ne!(other.1, thread_id());
            L.unlock();
            assert_eq!(L.holder(), 0);
        }
    }
}

//! The process-wide byte budget: one counter of bytes committed from the OS
//! and one cap.
//!
//! Every byte chunkmalloc commits (the used pages of slab and oversized
//! chunks, huge mappings, metadata) is reserved here first and released
//! when it is unmapped or decommitted. Reservation is a CAS loop that never overshoots
//! the cap, so the cap holds with any number of racing threads. It runs per
//! chunk, never per `malloc`.

use crate::sync::atomic::{AtomicUsize, Ordering};

/// A byte counter with a cap. The allocator uses the one [`GLOBAL`] budget;
/// the type exists on its own so its arithmetic can be tested in isolation.
pub struct Budget {
    /// Bytes currently reserved.
    committed: AtomicUsize,
    /// Highest value `committed` has reached.
    peak: AtomicUsize,
    /// The cap; `usize::MAX` means none.
    limit: AtomicUsize,
    /// Requests refused because of the cap.
    failures: AtomicUsize,
}

/// The process-wide budget.
#[cfg(not(loom))]
pub static GLOBAL: Budget = Budget::new();

impl Budget {
    /// A budget with nothing reserved and no cap.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Budget {
            committed: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            failures: AtomicUsize::new(0),
        }
    }

    /// A budget with nothing reserved and no cap (loom's atomics have no
    /// `const` constructor).
    #[cfg(loom)]
    pub fn new() -> Self {
        Budget {
            committed: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            failures: AtomicUsize::new(0),
        }
    }

    /// Reserves `n` bytes against the cap. Returns false, changing nothing,
    /// if that would exceed it.
    #[inline]
    pub fn try_reserve(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let r = self
            .committed
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |cur| {
                cur.checked_add(n).filter(|&new| new <= limit)
            });
        match r {
            Ok(prev) => {
                let new = prev + n;
                if new > self.peak.load(Ordering::Relaxed) {
                    self.peak.fetch_max(new, Ordering::Relaxed);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Returns `n` previously reserved bytes.
    #[inline]
    pub fn release(&self, n: usize) {
        self.committed.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether use is within 1/16 of the cap (always false without one).
    /// Caches stop holding on to free memory privately then, so that a
    /// thread that hits the cap can give it back to the OS.
    #[inline]
    pub fn under_pressure(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit != usize::MAX && self.committed() >= limit - limit / 16
    }

    /// Records a refused allocation request.
    pub fn note_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes reserved now.
    pub fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// Peak reserved bytes.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Number of refused requests.
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::Relaxed)
    }

    /// The cap, if any.
    pub fn limit(&self) -> Option<usize> {
        match self.limit.load(Ordering::Relaxed) {
            usize::MAX => None,
            n => Some(n),
        }
    }

    /// Sets or clears the cap. Lowering it below current use makes later
    /// reservations fail until use drops; nothing is taken back.
    pub fn set_limit(&self, limit: Option<usize>) {
        self.limit
            .store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reserve_respects_limit_exactly() {
        let b = Budget::new();
        b.set_limit(Some(1000));
        assert!(b.try_reserve(600));
        assert!(!b.try_reserve(401));
        assert_eq!(b.committed(), 600, "a refused reservation changes nothing");
        assert!(b.try_reserve(400), "exactly at the cap is allowed");
        b.release(1000);
        assert_eq!(b.committed(), 0);
        assert_eq!(b.peak(), 1000);
        b.set_limit(None);
        assert!(b.try_reserve(usize::MAX));
        assert!(!b.try_reserve(1), "overflow is refused, not wrapped");
    }

    #[test]
    fn racing_threads_never_exceed_the_cap() {
        static B: Budget = Budget::new();
        B.set_limit(Some(64 * 1000));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut held = 0usize;
                    for i in 0..20_000 {
                        if i % 3 == 2 && held > 0 {
                            B.release(1000);
                            held -= 1;
                        } else if B.try_reserve(1000) {
                            held += 1;
                        }
                        assert!(B.committed() <= 64 * 1000);
                    }
                    held
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(B.committed(), total * 1000);
        assert!(B.peak() <= 64 * 1000);
    }
}

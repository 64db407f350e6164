//! Test-only hooks (feature `test-hooks`): named points in the
//! cross-thread protocols where a test can park a thread to open the
//! window between two steps as wide as it likes. Compiled out of every
//! normal build; `tests/remote_free_race.rs` uses them.

use core::sync::atomic::{AtomicUsize, Ordering};

/// Where a hook can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// In a remote free, right after the CAS that published the block
    /// (and, if it claimed one, before the chunk is queued on the owner's
    /// pending stack). Argument: the chunk's start (not its header's
    /// address, which a slab's color moves).
    AfterRemotePush,
}

static HOOK: AtomicUsize = AtomicUsize::new(0);

/// How many decommitted chunks the global cache keeps mapped (normally
/// `provider::GLOBAL_MAX_DECOMMITTED`); a test sets 0 so that a purge
/// unmaps every chunk it decommits.
pub static KEEP_DECOMMITTED: AtomicUsize =
    AtomicUsize::new(crate::provider::GLOBAL_MAX_DECOMMITTED);

/// Installs (or with `None` removes) the hook. It runs on the thread that
/// reaches the point, inside the allocator: it must not allocate or free.
pub fn set(f: Option<fn(Point, usize)>) {
    HOOK.store(f.map_or(0, |f| f as usize), Ordering::Release);
}

/// Called at each point.
#[inline]
pub fn reached(p: Point, arg: usize) {
    let f = HOOK.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: stored from a `fn(Point, usize)` by `set`.
        let f: fn(Point, usize) = unsafe { core::mem::transmute(f) };
        f(p, arg);
    }
}

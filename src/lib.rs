//! chunkmalloc: a general-purpose memory allocator.
//!
//! Per-thread heaps over chunk providers, lock-free remote frees and a hard
//! per-process byte budget. Install it with
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;
//! ```
//!
//! Modules follow the layer order of `docs/DESIGN.md`: each uses only the
//! ones listed before it (`os` → `budget`/`stats`/`config` → `size_class` →
//! `chunk_map` → `chunk` → `provider` → `heap` → `thread` → shims).

// The preload library (`ffi`, built with `panic = "abort"`) is `no_std`, so
// that no std code and no `libgcc_s` is loaded into every process (see
// `preload/src/lib.rs`); this crate is then `no_std` too, wherever the heap
// pointer needs no std `thread_local!` (`thread::tls`). Tests and
// unwinding builds keep std.
#![cfg_attr(
    all(
        feature = "ffi",
        panic = "abort",
        not(test),
        target_arch = "x86_64",
        target_os = "linux",
        not(feature = "dynamic-tls")
    ),
    no_std
)]
#![deny(unsafe_op_in_unsafe_fn)]

/// Checks an internal invariant in debug builds. A violation writes a
/// message and aborts: never a panic, since unwinding out of an allocator
/// is undefined behaviour (and a debug build's panic would do exactly
/// that). Release builds compile the check out.
#[cfg(not(loom))]
macro_rules! check {
    ($cond:expr, $msg:literal) => {
        if cfg!(debug_assertions) && !$cond {
            crate::os::fatal(concat!("internal invariant violated: ", $msg));
        }
    };
}

// Under `--cfg loom` only the cross-thread protocols are built, on loom's
// atomics, for the models in `tests/loom.rs`.
pub mod budget;
pub mod remote;
pub mod stack;
pub mod sync;

#[cfg(not(loom))]
pub mod chunk;
#[cfg(not(loom))]
pub mod chunk_map;
#[cfg(not(loom))]
pub mod config;
#[cfg(all(feature = "ffi", not(loom)))]
pub mod ffi;
#[cfg(not(loom))]
mod fmt;
#[cfg(not(loom))]
mod global;
#[cfg(not(loom))]
pub mod heap;
#[cfg(all(feature = "test-hooks", not(loom)))]
pub mod hooks;
#[cfg(not(loom))]
pub mod os;
#[cfg(not(loom))]
pub mod provider;
#[cfg(not(loom))]
pub mod registry;
#[cfg(not(loom))]
pub mod size_class;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
pub mod thread;

#[cfg(not(loom))]
pub use api::*;
#[cfg(not(loom))]
pub use global::ChunkMalloc;
#[cfg(not(loom))]
pub use stats::Stats;

#[cfg(not(loom))]
mod api {
    use crate::*;

    /// Forces memory back to the OS: the calling thread's heap is collected,
    /// the pages no live block touches inside its partly used slabs are
    /// given back, its cached chunks and every chunk in the process-wide
    /// cache are decommitted, and other threads flush their caches and give
    /// back their slabs' free pages on their next slow path. Returns the
    /// bytes given back by this call.
    pub fn purge() -> usize {
        thread::purge()
    }

    /// A snapshot of the allocator's statistics.
    pub fn stats() -> Stats {
        let mut s = Stats::default();
        registry::add_stats(&mut s);
        let g = provider::GLOBAL_CACHE.stats();
        let page = os::page_size();
        s.cached += g.committed_bytes;
        s.cached_chunks += g.committed_count + g.decommitted_count;
        s.committed = budget::GLOBAL.committed();
        s.peak_committed = budget::GLOBAL.peak();
        s.mapped = s.committed + g.decommitted_bytes - g.decommitted_count * page + s.slab_holes;
        s.metadata += chunk_map::metadata_bytes();
        // Read at slightly different instants: clamped.
        s.budget_live = s
            .committed
            .saturating_sub(s.cached + g.decommitted_count * page + s.metadata);
        s.budget_limit = budget::GLOBAL.limit();
        s.failed_allocs = budget::GLOBAL.failures();
        s
    }

    /// Sets (or with `None` clears) the process-wide byte budget. Lowering it
    /// below current use makes later allocations fail until use drops.
    pub fn set_budget(limit: Option<usize>) {
        budget::GLOBAL.set_limit(limit);
    }

    /// Sets (or clears) the function called when an allocation is about to
    /// fail: it gets the requested size and may free memory; returning `true`
    /// retries the allocation once. See [`thread::set_oom_handler`].
    pub fn set_oom_handler(handler: Option<fn(usize) -> bool>) {
        thread::set_oom_handler(handler);
    }

    /// The process-wide byte budget, if one is set.
    pub fn budget() -> Option<usize> {
        budget::GLOBAL.limit()
    }

    /// Bytes usable at `p` (0 for null or pointers chunkmalloc did not hand out).
    ///
    /// # Safety
    /// `p` is null, live, or a pointer into memory chunkmalloc never handed out
    /// (not one it handed out and has since taken back).
    pub unsafe fn usable_size(p: *const u8) -> usize {
        // SAFETY: forwarded contract.
        unsafe { thread::usable_size(p as *mut u8) }
    }

    /// Writes the statistics table to stderr without allocating.
    pub fn print_stats() {
        let s = stats();
        let rows: [(&[u8], usize); 15] = [
            (b"in use", s.in_use),
            (b"committed", s.committed),
            (b"budget live", s.budget_live),
            (b"metadata", s.metadata),
            (b"peak committed", s.peak_committed),
            (b"cached", s.cached),
            (b"mapped", s.mapped),
            (b"slab holes", s.slab_holes),
            (b"slab chunks", s.slab_chunks),
            (b"large chunks", s.large_chunks),
            (b"huge mappings", s.huge_chunks),
            (b"cached chunks", s.cached_chunks),
            (b"remote frees", s.remote_frees),
            (b"live heaps", s.live_heaps),
            (b"abandoned heaps", s.abandoned_heaps),
        ];
        os::write_stderr(b"chunkmalloc statistics\n");
        for (name, v) in rows {
            let mut b = fmt::Buf::new();
            b.push(b"  ").push(name);
            for _ in name.len()..18 {
                b.push(b" ");
            }
            b.push_num_padded(v as u64, 16).push(b"\n");
            os::write_stderr(b.as_bytes());
        }
        let mut b = fmt::Buf::new();
        b.push(b"  budget            ");
        match s.budget_limit {
            Some(l) => b.push_num_padded(l as u64, 16),
            None => b.push(b"            none"),
        };
        b.push(b"\n  failed allocs     ")
            .push_num_padded(s.failed_allocs as u64, 16)
            .push(b"\n");
        os::write_stderr(b.as_bytes());
    }
}

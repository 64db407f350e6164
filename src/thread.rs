//! The thread's heap pointer, thread exit, `fork`, and the allocation entry
//! points every shim calls.
//!
//! The heap pointer is a thread-local word with no destructor (an
//! initial-exec TLS variable on x86-64 Linux, a const `thread_local!`
//! elsewhere; see `tls`): it never registers a TLS destructor of its own
//! making (which would call `calloc` through `__cxa_thread_atexit_impl`
//! and recurse), and starts at the static [`EMPTY_HEAP`] so a thread's
//! first allocation falls into the slow path, which attaches a heap. Only
//! then is the thread-exit hook armed ([`on_thread_exit`]: with glibc a
//! thread-local destructor whose list node is the thread's TLS exit node,
//! elsewhere a `pthread_key_t` value), which abandons the heap. An
//! allocation made after it (by a later destructor) borrows a heap for
//! that one call ([`DEAD_HEAP`]).
//!
//! Process-wide hooks (the key, `pthread_atfork`, the exit-time statistics
//! printer) are installed once, by the first thread to attach, after its
//! heap pointer is set: if installing them allocates, that allocation is
//! served by the new heap instead of recursing into initialisation.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use crate::budget;
use crate::chunk::Chunk;
use crate::config;
use crate::heap::{self, FreeResult, Heap, DEAD_HEAP, EMPTY_HEAP, REGISTERING_HEAP};
use crate::os;
use crate::registry;
use crate::size_class::CHUNK_SIZE;

/// The thread's heap pointer on x86-64 Linux: an initial-exec TLS
/// variable, defined here in assembly because stable Rust has no TLS-model
/// switch and `thread_local!` in a shared object uses the general-dynamic
/// model, a call to `__tls_get_addr` per access (11 instructions each,
/// measured; see docs/PERF.md). Initial-exec is what glibc's manual asks
/// of a replacement malloc. In an executable the linker relaxes the access
/// to one `fs:`-relative load. The initial value is the empty heap's
/// address (a relocation in the TLS image), so no thread ever sees null.
/// The symbol is hidden: each linked copy of chunkmalloc has its own.
#[cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "dynamic-tls")
))]
mod tls {
    use super::{Heap, EMPTY_HEAP};

    core::arch::global_asm!(
        ".pushsection .tdata.chunkmalloc_tls_heap,\"awT\",@progbits",
        ".p2align 3",
        ".globl chunkmalloc_tls_heap",
        ".hidden chunkmalloc_tls_heap",
        ".type chunkmalloc_tls_heap,@object",
        ".size chunkmalloc_tls_heap,8",
        "chunkmalloc_tls_heap:",
        ".quad {empty}",
        ".popsection",
        ".pushsection .tbss.chunkmalloc_tls_exit_node,\"awT\",@nobits",
        ".p2align 4",
        ".globl chunkmalloc_tls_exit_node",
        ".hidden chunkmalloc_tls_exit_node",
        ".type chunkmalloc_tls_exit_node,@object",
        ".size chunkmalloc_tls_exit_node,{node}",
        "chunkmalloc_tls_exit_node:",
        ".zero {node}",
        ".popsection",
        empty = sym EMPTY_HEAP,
        node = const super::EXIT_NODE_BYTES,
    );

    /// This thread's exit node (`super::EXIT_NODE_BYTES` zeroed bytes at
    /// thread start, 16-byte aligned).
    #[inline(always)]
    pub fn exit_node() -> *mut u8 {
        let p: *mut u8;
        // SAFETY: computes the address of this thread's copy of the TLS
        // object above (thread pointer at fs:0 plus its initial-exec
        // offset); nothing is written.
        unsafe {
            core::arch::asm!(
                "mov {p}, qword ptr fs:[0]",
                "add {p}, qword ptr [rip + chunkmalloc_tls_exit_node@GOTTPOFF]",
                p = out(reg) p,
                options(nostack, readonly, pure),
            );
        }
        p
    }

    #[inline(always)]
    pub fn get() -> *mut Heap {
        let h: *mut Heap;
        // SAFETY: reads this thread's 8-byte TLS slot defined above through
        // the initial-exec sequence; no memory is written.
        unsafe {
            core::arch::asm!(
                "mov {h}, qword ptr [rip + chunkmalloc_tls_heap@GOTTPOFF]",
                "mov {h}, qword ptr fs:[{h}]",
                h = out(reg) h,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        h
    }

    #[inline(always)]
    pub fn set(h: *mut Heap) {
        // SAFETY: writes this thread's TLS slot defined above.
        unsafe {
            core::arch::asm!(
                "mov {off}, qword ptr [rip + chunkmalloc_tls_heap@GOTTPOFF]",
                "mov qword ptr fs:[{off}], {h}",
                off = out(reg) _,
                h = in(reg) h,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Elsewhere (or with the `dynamic-tls` feature, kept to measure what the
/// initial-exec variable saves): a const-initialised `thread_local!`
/// without a destructor.
#[cfg(not(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "dynamic-tls")
)))]
mod tls {
    use super::{Heap, EMPTY_HEAP, EXIT_NODE_BYTES};
    use core::cell::{Cell, UnsafeCell};

    /// `EXIT_NODE_BYTES` bytes, 16-byte aligned.
    #[repr(C, align(16))]
    struct Node(UnsafeCell<[u8; EXIT_NODE_BYTES]>);

    thread_local! {
        static HEAP: Cell<*mut Heap> = const { Cell::new(EMPTY_HEAP.as_ptr()) };
        static NODE: Node = const { Node(UnsafeCell::new([0; EXIT_NODE_BYTES])) };
    }

    /// This thread's exit node (zeroed at thread start).
    #[inline(always)]
    pub fn exit_node() -> *mut u8 {
        NODE.with(|n| n.0.get().cast())
    }

    #[inline(always)]
    pub fn get() -> *mut Heap {
        HEAP.with(|h| h.get())
    }

    #[inline(always)]
    pub fn set(h: *mut Heap) {
        HEAP.with(|c| c.set(h));
    }
}

/// Bytes of a thread's exit node, the static TLS block that serves the one
/// allocation of [`on_thread_exit`]'s registration (glibc's 32-byte
/// `struct dtor_list`, `calloc`ed by `__cxa_thread_atexit_impl`): up to
/// [`EXIT_NODE_USABLE`] bytes are handed out; the last byte records that
/// they were.
pub(crate) const EXIT_NODE_BYTES: usize = 64;
/// The most an allocation served by the exit node may ask for.
const EXIT_NODE_USABLE: usize = 48;

/// The byte that records whether this thread's exit node was handed out
/// (the node's last, never handed out itself).
fn exit_node_taken() -> *mut u8 {
    // SAFETY: within this thread's own `EXIT_NODE_BYTES`-byte node.
    unsafe { tls::exit_node().add(EXIT_NODE_BYTES - 1) }
}

/// Hands out this thread's exit node if it is still unused and `size` and
/// `align` fit it; null otherwise. The node is zero (TLS blocks start
/// zeroed and the node is handed out once), so it serves `calloc` too.
fn take_exit_node(size: usize, align: usize) -> *mut u8 {
    let taken = exit_node_taken();
    // SAFETY: the flag byte is this thread's own.
    unsafe {
        if size > EXIT_NODE_USABLE || align > 16 || *taken != 0 {
            return ptr::null_mut();
        }
        *taken = 1;
    }
    tls::exit_node()
}

/// The calling thread's heap (the empty heap until its first allocation).
#[inline(always)]
pub fn current() -> *mut Heap {
    tls::get()
}

/// 0 = hooks not installed, 1 = installing, 2 = installed.
static HOOKS: AtomicU8 = AtomicU8::new(0);
/// The thread-exit key (valid once `HOOKS` is 2; without glibc only).
#[cfg(not(target_env = "gnu"))]
static mut KEY: libc::pthread_key_t = 0;

/// Gives the calling thread a heap. Null if no memory can be had.
#[cold]
#[inline(never)]
fn attach() -> *mut Heap {
    let cur = current();
    if cur != EMPTY_HEAP.as_ptr() {
        return cur;
    }
    config::init();
    let h = registry::acquire();
    if h.is_null() {
        return h;
    }
    tls::set(h);
    install_hooks();
    on_thread_exit(h);
    h
}

/// Arranges for [`thread_exit`] to run with `h` when the calling thread
/// exits. With glibc, a thread-local destructor
/// (`__cxa_thread_atexit_impl`, what C++ `thread_local` and Rust's
/// `thread_local!` use), not a `pthread_key_t`: a thread with any key
/// value set makes glibc scan every key slot at its exit
/// (`__nptl_deallocate_tsd`, 678 instructions a thread, callgrind on
/// `brief_threads`), where a thread-local destructor is one call. The
/// registration allocates its list node (`calloc`), served by `h`, which
/// is already set. The main thread registers nothing: its heap is not
/// abandoned at `exit` (thread-local destructors run there too), so exit
/// handlers that free keep the fast path; a main thread that ends with
/// `pthread_exit` leaves its heap live for the sweepers' idle-heap
/// reclamation.
#[cfg(target_env = "gnu")]
fn on_thread_exit(h: *mut Heap) {
    extern "C" {
        fn __cxa_thread_atexit_impl(
            dtor: extern "C" fn(*mut libc::c_void),
            obj: *mut libc::c_void,
            dso_symbol: *mut libc::c_void,
        ) -> libc::c_int;
    }
    // SAFETY: `h` is a heap record; `registry::acquire` stored the
    // calling thread's ids in it.
    let (pid, tid) = unsafe {
        (
            (*h).pid.load(Ordering::Relaxed),
            (*h).tid.load(Ordering::Relaxed),
        )
    };
    if tid == pid {
        return;
    }
    // The node glibc allocates for the registration comes from the exit
    // node while the thread's pointer is the registering heap (the
    // allocation falls through to `alloc_retry`). glibc frees the node
    // after `thread_exit` has abandoned the heap; from a heap that free
    // was a remote free into an abandoned heap's armed chunk, which
    // queued the chunk for a sweeper (223 instructions a thread, callgrind
    // on `brief_threads`); the exit node's free is a compare
    // (`free_miss`). A second registration in the same thread (after a
    // `fork` child dropped its heap) finds the node taken and allocates
    // from `h`.
    // SAFETY: the flag byte is this thread's own.
    let node_free = unsafe { *exit_node_taken() == 0 };
    if node_free {
        tls::set(REGISTERING_HEAP.as_ptr());
    }
    // SAFETY: glibc (2.18 and later) provides the function; the DSO symbol
    // is a static of this object, so glibc keeps the object loaded while
    // the destructor is pending; `thread_exit` never unwinds.
    unsafe {
        __cxa_thread_atexit_impl(
            thread_exit,
            h.cast(),
            ptr::addr_of!(HOOKS) as *mut libc::c_void,
        );
    }
    tls::set(h);
}

/// Arranges for [`thread_exit`] to run with `h` when the calling thread
/// exits: a `pthread_key_t` destructor (created by `install_hooks`).
#[cfg(not(target_env = "gnu"))]
fn on_thread_exit(h: *mut Heap) {
    // SAFETY: KEY was created by `install_hooks` (HOOKS == 2). A
    // `pthread_setspecific` that allocates is served by `h`, already set.
    unsafe {
        libc::pthread_setspecific(KEY, h as *const libc::c_void);
    }
}

fn install_hooks() {
    if HOOKS.load(Ordering::Acquire) == 2 {
        return;
    }
    if HOOKS
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // SAFETY: KEY is written once, here, before HOOKS becomes 2; the
        // handlers are `extern "C"` functions that never unwind.
        unsafe {
            #[cfg(not(target_env = "gnu"))]
            {
                let mut key: libc::pthread_key_t = 0;
                if libc::pthread_key_create(&mut key, Some(thread_exit)) != 0 {
                    os::fatal("pthread_key_create failed");
                }
                KEY = key;
            }
            libc::pthread_atfork(None, None, Some(fork_child));
            libc::atexit(process_exit);
        }
        HOOKS.store(2, Ordering::Release);
    } else {
        while HOOKS.load(Ordering::Acquire) != 2 {
            // SAFETY: no preconditions; does not allocate.
            unsafe {
                libc::sched_yield();
            }
        }
    }
}

/// Thread-exit destructor: abandons the heap for another thread to adopt.
/// The thread's pointer becomes [`DEAD_HEAP`]: destructors that run after
/// this one (key destructors, which glibc runs after the thread-local
/// ones, for at most `PTHREAD_DESTRUCTOR_ITERATIONS` rounds, and glibc's
/// own freeing of its thread state) would otherwise attach a heap that no
/// destructor abandons (one leaked heap per thread); such allocations
/// borrow a heap per call.
extern "C" fn thread_exit(value: *mut libc::c_void) {
    let h = value.cast::<Heap>();
    if h.is_null() || h != current() {
        return;
    }
    tls::set(DEAD_HEAP.as_ptr());
    // SAFETY: `h` was this thread's heap and the thread uses it no more.
    unsafe { registry::abandon(h) };
}

/// An allocation from a thread whose exit destructor has run: borrow a
/// heap (adopting an abandoned one if possible), allocate, abandon it again.
#[cold]
fn alloc_dead_thread(size: usize, align: usize, zero: bool) -> *mut u8 {
    let h = registry::acquire();
    if h.is_null() {
        return fail(size);
    }
    // SAFETY: `h` is exclusively ours until abandoned below.
    unsafe {
        let p = heap::malloc_aligned(h, size, align, zero);
        registry::abandon(h);
        if p.is_null() {
            return fail(size);
        }
        p
    }
}

extern "C" fn process_exit() {
    if config::show_stats() {
        crate::print_stats();
    }
}

/// `fork` takes no chunkmalloc lock: holding one across `fork` deadlocks
/// with an `atfork` handler registered before ours that allocates (it
/// runs while we would hold our locks), with stdio (glibc takes its list
/// lock after the `atfork` prepare handlers, while a thread inside
/// `malloc` may hold a `FILE` lock), and with a `fork` from a signal
/// handler that interrupted our own prepare handler. Instead the child
/// repairs what a thread that did not survive the fork may have left
/// half-done (see `registry::after_fork_child`,
/// `GlobalCache::after_fork_child`).
extern "C" fn fork_child() {
    crate::chunk_map::after_fork_child();
    crate::provider::GLOBAL_CACHE.after_fork_child();
    if !registry::after_fork_child(current()) {
        // A vanished thread was reclaiming from our heap: start over with
        // a new one (the old one's blocks stay valid).
        tls::set(EMPTY_HEAP.as_ptr());
    }
}

/// Installs the process-wide hooks (thread-exit key, `fork` child handler,
/// exit statistics) now, by attaching the calling thread: the preload
/// library calls this from its load-time constructor, so that our `fork`
/// handler is registered before most programs' own.
pub fn init_at_load() {
    if current() == EMPTY_HEAP.as_ptr() {
        attach();
    }
}

// ---------------------------------------------------------------------------
// Entry points.
// ---------------------------------------------------------------------------

/// Allocates `size` bytes aligned to 16; null when memory (or the budget)
/// is exhausted.
#[inline(always)]
pub fn malloc(size: usize) -> *mut u8 {
    let p = malloc_fast(size);
    if !p.is_null() {
        return p;
    }
    malloc_cold(size)
}

/// The inline pop of [`malloc`] (null when it misses; no side effects).
#[inline(always)]
pub fn malloc_fast(size: usize) -> *mut u8 {
    // SAFETY: `current()` is this thread's heap.
    unsafe { heap::malloc_fast(current(), size) }
}

/// [`malloc_fast`] for sizes up to 1 KiB (the exported `malloc`'s inline
/// part; see `heap::malloc_fast_small`).
#[inline(always)]
pub fn malloc_fast_small(size: usize) -> *mut u8 {
    // SAFETY: `current()` is this thread's heap.
    unsafe { heap::malloc_fast_small(current(), size) }
}

/// Everything [`malloc_fast`] leaves: refill, large and huge sizes, the
/// first allocation of a thread, budget failures. Out of line, so the
/// callers stay leaves that tail-call it.
#[cold]
#[inline(never)]
pub fn malloc_cold(size: usize) -> *mut u8 {
    // SAFETY: `current()` is this thread's heap.
    let p = unsafe { heap::malloc(current(), size) };
    if !p.is_null() {
        return p;
    }
    alloc_retry(size, 16, false)
}

/// Allocates `size` zeroed bytes aligned to 16.
#[inline]
pub fn malloc_zeroed(size: usize) -> *mut u8 {
    // SAFETY: as in `malloc`.
    let p = unsafe { heap::malloc_zeroed(current(), size) };
    if !p.is_null() {
        return p;
    }
    alloc_retry(size, 16, true)
}

/// Allocates `size` bytes aligned to `align` (a power of two), optionally
/// zeroed.
#[inline]
pub fn malloc_aligned(size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: as in `malloc`.
    let p = unsafe { heap::malloc_aligned(current(), size, align, zero) };
    if !p.is_null() {
        return p;
    }
    alloc_retry(size, align, zero)
}

/// The slow end of every allocation: attach a heap if the thread has
/// none, retry, and on failure purge caches and retry once more.
#[cold]
#[inline(never)]
fn alloc_retry(size: usize, align: usize, zero: bool) -> *mut u8 {
    let mut h = current();
    if h == REGISTERING_HEAP.as_ptr() {
        // `on_thread_exit`'s registration: the exit node, or (if an
        // allocation it did not expect comes first, e.g. from a signal
        // handler) a block from a borrowed heap.
        let p = take_exit_node(size, align);
        if !p.is_null() {
            return p;
        }
        return alloc_dead_thread(size, align, zero);
    }
    if h == DEAD_HEAP.as_ptr() {
        return alloc_dead_thread(size, align, zero);
    }
    if h == EMPTY_HEAP.as_ptr() {
        h = attach();
        if h.is_null() {
            return fail(size);
        }
        // SAFETY: `h` is this thread's heap now.
        let p = unsafe { heap::malloc_aligned(h, size, align, zero) };
        if !p.is_null() {
            return p;
        }
    }
    if size > heap::MAX_REQUEST {
        return fail(size);
    }
    // Reclaim from every heap and retry; while that keeps giving memory
    // back (other threads free and allocate meanwhile), try again, a
    // bounded number of times.
    for _ in 0..4 {
        // SAFETY: `h` is this thread's heap.
        unsafe {
            let before = budget::GLOBAL.committed();
            heap::purge(h);
            let p = heap::malloc_aligned(h, size, align, zero);
            if !p.is_null() {
                return p;
            }
            if budget::GLOBAL.committed() >= before {
                break;
            }
        }
    }
    if call_oom_handler(size) {
        // SAFETY: `h` is this thread's heap.
        let p = unsafe { heap::malloc_aligned(h, size, align, zero) };
        if !p.is_null() {
            return p;
        }
    }
    fail(size)
}

/// The exhaustion callback (a `fn(usize) -> bool` stored as an address; 0
/// for none).
static OOM_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// Set while a handler runs, so an allocation that fails inside the
/// handler (on any thread) fails at once instead of recursing.
static OOM_HANDLER_BUSY: AtomicBool = AtomicBool::new(false);

/// Sets the function called when an allocation is about to fail (budget
/// or OS exhausted, after chunkmalloc has purged its own caches). It gets
/// the requested size; if it frees memory and returns `true`, the
/// allocation is retried once. It may allocate, but an allocation that
/// fails while a handler runs fails without calling it again; it must not
/// unwind.
pub fn set_oom_handler(handler: Option<fn(usize) -> bool>) {
    OOM_HANDLER.store(handler.map_or(0, |f| f as usize), Ordering::Release);
}

fn call_oom_handler(size: usize) -> bool {
    let f = OOM_HANDLER.load(Ordering::Acquire);
    if f == 0 || OOM_HANDLER_BUSY.swap(true, Ordering::AcqRel) {
        return false;
    }
    // SAFETY: the value was stored from a `fn(usize) -> bool` by
    // `set_oom_handler`; function pointers round-trip through usize.
    let handler: fn(usize) -> bool = unsafe { core::mem::transmute(f) };
    let retry = handler(size);
    OOM_HANDLER_BUSY.store(false, Ordering::Release);
    retry
}

#[cold]
fn fail(size: usize) -> *mut u8 {
    budget::GLOBAL.note_failure();
    if config::verbose() {
        report_failure(size);
    }
    ptr::null_mut()
}

fn report_failure(size: usize) {
    use core::sync::atomic::AtomicU64;
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = os::now_ms();
    let last = LAST_MS.load(Ordering::Relaxed);
    if last != 0 && now < last + 1000 {
        return;
    }
    LAST_MS.store(now.max(1), Ordering::Relaxed);
    let mut b = crate::fmt::Buf::new();
    b.push(b"chunkmalloc: allocation of ")
        .push_num(size as u64)
        .push(b" bytes failed (committed ")
        .push_num(budget::GLOBAL.committed() as u64)
        .push(b", budget ");
    match budget::GLOBAL.limit() {
        Some(l) => b.push_num(l as u64),
        None => b.push(b"none"),
    };
    b.push(b")\n");
    os::write_stderr(b.as_bytes());
}

/// Frees `p` (null is a no-op). Reports pointers chunkmalloc never handed
/// out and leaves them alone. The owner's push is inline; every other
/// case is a tail call to an out-of-line path, so no registers are saved
/// on the way. Null takes no test of its own: the chunk map never
/// registers granule 0 (`chunk_map::register`), so its lookup misses and
/// `free_miss` returns.
///
/// # Safety
/// `p` is null, a live pointer from chunkmalloc, or a pointer into memory
/// chunkmalloc never handed out.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    let h = current();
    // SAFETY: `h` is this thread's heap; `p` is null, live or foreign,
    // and each out-of-line path is handed what `free_fast` found.
    unsafe {
        match heap::free_fast(h, p) {
            heap::FastFree::Done => {}
            heap::FastFree::Last(c) => free_last(p, c, h),
            heap::FastFree::Other(c, tag) => free_other(p, c, h, tag),
            heap::FastFree::Miss => free_miss(p),
        }
    }
}

/// Frees a non-null `p` (the `GlobalAlloc::dealloc` path, which is never
/// handed null): [`free`].
///
/// # Safety
/// As [`free`], and `p` is not null.
#[inline(always)]
pub unsafe fn free_nonnull(p: *mut u8) {
    check!(!p.is_null(), "dealloc is never handed null");
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// A pointer the heap's view of the chunk map does not know: null (a
/// no-op), foreign, or freed by a thread without a heap (whose view is
/// empty). Looked up again in the global map.
///
/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
unsafe fn free_miss(p: *mut u8) {
    if p.is_null() {
        return;
    }
    if p == tls::exit_node() {
        // glibc's free of the node of `on_thread_exit`'s registration:
        // the node is this thread's TLS (no chunk holds it, so every
        // heap's lookup misses), handed out once and never reused.
        return;
    }
    // SAFETY: forwarded contract.
    let r = unsafe { heap::free(current(), p) };
    if r != FreeResult::Done {
        // SAFETY: forwarded contract.
        unsafe { free_retry(p, r) };
    }
}

/// A local free that emptied its chunk, or found it empty (a double free,
/// reported).
///
/// # Safety
/// `free_fast(h, p)` returned `Last(c)`.
#[cold]
#[inline(never)]
unsafe fn free_last(p: *mut u8, c: *mut Chunk, h: *mut Heap) {
    // SAFETY: forwarded contract.
    if unsafe { heap::free_last(h, c) } == FreeResult::Invalid {
        report_invalid(p, b"free");
    }
}

/// A free into a chunk that is not the caller's attached slab. A remote
/// free into another heap's slab (not cold: producer/consumer programs
/// live here) is done inline; the rest (the owner's full, aligned, large
/// and huge chunks) is a tail call. `p` comes first here and in
/// [`free_last`], as in `free`: the tail calls then find it in the
/// register it arrived in (one move fewer on every free).
///
/// # Safety
/// `free_fast(h, p)` returned `Other(c, tag)`, so `h` is a heap record
/// (the empty and dead heaps have an empty chunk-map view and never get
/// here).
#[inline(never)]
unsafe fn free_other(p: *mut u8, c: *mut Chunk, h: *mut Heap, tag: usize) {
    if heap::is_plain_remote(h, tag) {
        // SAFETY: a slab of another heap without aligned blocks (its tag
        // says so), freed by a heap record, per the contract.
        unsafe { heap::free_remote_of(c, p) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { free_other_slow(p, c, h, tag) }
}

/// [`free_other`]'s cases other than a plain remote free.
///
/// # Safety
/// As [`free_other`].
#[cold]
#[inline(never)]
unsafe fn free_other_slow(p: *mut u8, c: *mut Chunk, h: *mut Heap, tag: usize) {
    // SAFETY: forwarded contract.
    let r = unsafe { heap::free_other(h, c, p, tag) };
    if r != FreeResult::Done {
        // SAFETY: forwarded contract.
        unsafe { free_retry(p, r) };
    }
}

/// The slow end of `free`: report invalid pointers; give a heapless thread
/// a heap (so its later frees are counted locally) and free again.
///
/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
unsafe fn free_retry(p: *mut u8, r: FreeResult) {
    let r = if r == FreeResult::NeedsHeap {
        let cur = current();
        let h = if cur == DEAD_HEAP.as_ptr() || cur == REGISTERING_HEAP.as_ptr() {
            ptr::null_mut()
        } else {
            attach()
        };
        // SAFETY: `h` is this thread's heap; `p` unchanged since the first try.
        unsafe {
            if h.is_null() {
                heap::free_heapless(p)
            } else {
                heap::free(h, p)
            }
        }
    } else {
        r
    };
    if r == FreeResult::Invalid {
        report_invalid(p, b"free");
    }
}

/// Reports a pointer chunkmalloc did not hand out (first 16 reports).
#[cold]
pub fn report_invalid(p: *mut u8, what: &[u8]) {
    use core::sync::atomic::AtomicUsize;
    static REPORTS: AtomicUsize = AtomicUsize::new(0);
    if REPORTS.fetch_add(1, Ordering::Relaxed) >= 16 {
        return;
    }
    let mut b = crate::fmt::Buf::new();
    b.push(b"chunkmalloc: ")
        .push(what)
        .push(b"(")
        .push_hex(p as u64)
        .push(b"): pointer was not allocated by chunkmalloc (or was already freed); ignored\n");
    os::write_stderr(b.as_bytes());
}

/// Usable size of `p`; 0 for null or foreign pointers.
///
/// # Safety
/// As [`free`].
pub unsafe fn usable_size(p: *mut u8) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is live or foreign; the lookup is checked.
    unsafe { heap::usable_size(p) }.unwrap_or(0)
}

/// Resizes `p` to `new_size` bytes with alignment `align`, in place when
/// the block allows; `p` null allocates. Null on failure, with `p` intact
/// (a pointer chunkmalloc did not hand out is reported).
///
/// # Safety
/// As [`free`]; on success `p` must no longer be used.
pub unsafe fn realloc(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { realloc_checked(p, new_size, align) }.unwrap_or(ptr::null_mut())
}

/// [`realloc`] telling a pointer chunkmalloc did not hand out (`None`,
/// reported on stderr, nothing changed) from a failed allocation
/// (`Some(null)`), for the C shim's `errno`.
///
/// # Safety
/// As [`realloc`].
pub unsafe fn realloc_checked(p: *mut u8, new_size: usize, align: usize) -> Option<*mut u8> {
    if p.is_null() {
        return Some(malloc_aligned(new_size, align, false));
    }
    // The in-place answer is the common case (a string grown by appends
    // stays in its block most steps): everything else is out of line, so
    // this path saves no registers.
    // SAFETY: `p` is live or foreign; every helper checks the chunk map.
    unsafe {
        match heap::resize_in_place(p, new_size) {
            heap::InPlace::Done => Some(p),
            heap::InPlace::Moves(old) => Some(realloc_move(p, new_size, align, old)),
            heap::InPlace::Invalid => {
                report_invalid(p, b"realloc");
                None
            }
        }
    }
}

/// The `realloc` that cannot stay in place: a huge object is resized by
/// [`heap::realloc_huge`], anything else moves to a new block (with
/// headroom when it grows). Null on failure, with `p` intact.
///
/// # Safety
/// `p` is a live block of `old` usable bytes.
#[inline(never)]
unsafe fn realloc_move(p: *mut u8, new_size: usize, align: usize, old: usize) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe {
        if new_size > crate::size_class::MAX_SMALL {
            // A huge object stays huge and is resized with mremap (null if
            // `p` is not huge, if a cached mapping holds its growth whole,
            // which `alloc_huge` below then takes, or if the kernel
            // refuses).
            let q = heap::realloc_huge(p, new_size);
            if !q.is_null() {
                return q;
            }
        }
        // A block that grows and must move gets a quarter more than it
        // asked for (half more above 32 KiB; up to the largest chunk
        // class), so a buffer grown step by step (a string or vector built
        // with `realloc`) is copied a few times, not at every size class
        // (they are 12.5 % apart). Its usable size reports the headroom.
        // With the headroom only above 32 KiB, the harness's `realloc_grow`
        // copied 247 M instructions' worth of memcpy against tcmalloc's
        // 109 M (callgrind, scale 0.2) and took 1.78x its time; with it,
        // 119 M, at 1.04x the peak RSS (a half more everywhere: 133 M,
        // 1.10x).
        let mut want = new_size;
        if new_size > old {
            let grown = if old > crate::size_class::MAX_SMALL / 2 {
                old + old / 2
            } else {
                old + old / 4
            };
            want = new_size.max(grown.min(crate::size_class::MAX_CHUNK_CLASS_SIZE - CHUNK_SIZE));
        }
        // Past `GROW_TO_HUGE` a growing block moves to a mapping of its
        // own, which later growth resizes with mremap (`realloc_huge`
        // above). Where the budget refuses it, the chunk path below is
        // tried as it would have been (and refused the same way).
        let mut q = ptr::null_mut();
        if new_size > old && new_size >= heap::GROW_TO_HUGE && align <= CHUNK_SIZE {
            q = heap::alloc_huge(new_size, align, false);
        }
        if q.is_null() {
            q = malloc_aligned(want, align, false);
        }
        if q.is_null() {
            return q;
        }
        ptr::copy_nonoverlapping(p, q, old.min(new_size));
        free(p);
        q
    }
}

/// Collects the calling thread's heap and decommits every cached chunk.
/// Returns the bytes given back by this call.
pub fn purge() -> usize {
    // SAFETY: `current()` is this thread's heap.
    unsafe { heap::purge(current()) }
}

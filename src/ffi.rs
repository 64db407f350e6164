//! The C ABI: `malloc` and friends, exported by the preload library
//! (`preload/`, built as `libchunkmalloc.so`). Compiled only with the `ffi`
//! feature, so a Rust program that merely uses `ChunkMalloc` as its global
//! allocator never interposes the process's `malloc`.
//!
//! Every function is a thin mapping onto `thread`'s entry points plus the
//! C contract: `errno = ENOMEM` with `NULL` on failure, `EINVAL` for bad
//! alignments, overflow checks in `calloc`/`reallocarray`/`pvalloc`, and
//! `free` never changing `errno` (the OS layer's system calls leave
//! `errno` alone: raw `syscall`s on x86-64 Linux, `errno` restored
//! elsewhere). Nothing here allocates through the system
//! allocator: the library's own Rust code does not allocate (where it
//! links std, std allocates through chunkmalloc, its `#[global_allocator]`),
//! and messages are written with the raw `write` system call, which
//! (unlike libc's `write`) is not a cancellation point.
//!
//! Pointers chunkmalloc never handed out (found through the chunk map) are
//! reported on stderr with their address (the first 16 times) and:
//! `free`/`cfree`/`free_sized` ignore them; `realloc` returns `NULL` with
//! `errno = EINVAL` and leaves them alone; `malloc_usable_size` returns 0.

use core::ffi::{c_int, c_void};
use core::ptr;

use crate::heap::MAX_REQUEST;
use crate::os;
use crate::thread;

/// Reads the `CHUNKMALLOC_*` settings when the library is loaded, in case
/// the first allocation came before libc had set `environ` (from a
/// `.preinit_array` function) and found nothing to read.
extern "C" fn read_settings_at_load() {
    crate::config::init();
    crate::thread::init_at_load();
}

#[used]
#[link_section = ".init_array"]
static READ_SETTINGS_AT_LOAD: extern "C" fn() = read_settings_at_load;

/// glibc's `MALLOC_ALIGNMENT` on 64-bit targets: what `malloc` guarantees.
const MIN_ALIGN: usize = 16;

#[inline(always)]
fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

#[inline(always)]
fn oom<T>() -> *mut T {
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// `p` as the C result: a null allocation sets `ENOMEM`.
#[inline(always)]
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        return oom();
    }
    p.cast()
}

#[inline(always)]
fn do_malloc(size: usize) -> *mut c_void {
    or_enomem(thread::malloc(size))
}

#[inline(always)]
unsafe fn do_free(p: *mut c_void) {
    // SAFETY: C's contract for free: `p` is null or from this allocator;
    // foreign pointers are detected and reported.
    unsafe { thread::free(p.cast()) }
}

fn do_calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        return oom();
    };
    or_enomem(thread::malloc_zeroed(total))
}

unsafe fn do_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return do_malloc(size);
    }
    if size == 0 {
        // glibc frees and returns NULL (REALLOC_ZERO_BYTES_FREES).
        // SAFETY: forwarded contract.
        unsafe { do_free(p) };
        return ptr::null_mut();
    }
    // SAFETY: forwarded contract; a pointer chunkmalloc did not hand out
    // is reported there and changes nothing.
    match unsafe { thread::realloc_checked(p.cast(), size, MIN_ALIGN) } {
        Some(q) => or_enomem(q),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// Aligned allocation with glibc's `memalign` semantics: `align` is a power
/// of two here. A size or an alignment no mapping could satisfy fails with
/// `ENOMEM` at once, without purging caches first.
fn do_aligned(align: usize, size: usize) -> *mut c_void {
    if size > MAX_REQUEST || align > MAX_REQUEST / 2 {
        return oom();
    }
    or_enomem(if align <= MIN_ALIGN {
        thread::malloc(size)
    } else {
        thread::malloc_aligned(size, align, false)
    })
}

/// `malloc(3)`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // A leaf: the pop inline, everything else a tail call.
    let p = thread::malloc_fast_small(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_cold(size)
}

/// What `malloc`'s inline pop leaves (with `errno` on failure).
#[cold]
#[inline(never)]
fn malloc_cold(size: usize) -> *mut c_void {
    or_enomem(thread::malloc_cold(size))
}

/// `free(3)`; null is a no-op; `errno` is preserved.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { do_free(p) }
}

/// `cfree(3)` (obsolete alias of `free`).
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { do_free(p) }
}

/// C23 `free_sized`: the size is not needed (the chunk map knows it).
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { do_free(p) }
}

/// C23 `free_aligned_sized`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { do_free(p) }
}

/// `calloc(3)`: overflow of `n * size` gives `NULL` + `ENOMEM`. Memory
/// fresh from the OS is not cleared again.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    do_calloc(n, size)
}

/// `realloc(3)` with glibc's behaviour: `realloc(NULL, n)` is `malloc(n)`,
/// `realloc(p, 0)` frees `p` and returns `NULL`; on failure `NULL` +
/// `ENOMEM` and `p` is untouched.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { do_realloc(p, size) }
}

/// `reallocarray(3)`: `realloc(p, n * size)` with an overflow check.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        return oom();
    };
    // SAFETY: forwarded contract.
    unsafe { do_realloc(p, total) }
}

/// `posix_memalign(3)`: `EINVAL` (returned, `errno` untouched) unless
/// `align` is a power of two multiple of `sizeof(void *)`; `ENOMEM` on
/// failure.
///
/// # Safety
/// C's contract; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let saved = os::errno();
    let p = do_aligned(align, size);
    os::set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: C's contract: `out` is valid for a write.
    unsafe { *out = p };
    0
}

/// `__posix_memalign`, glibc's internal alias.
///
/// # Safety
/// As [`posix_memalign`].
#[no_mangle]
pub unsafe extern "C" fn __posix_memalign(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { posix_memalign(out, align, size) }
}

/// C11 `aligned_alloc`: `NULL` + `EINVAL` unless `align` is a power of two
/// (glibc 2.38 and later); any size is accepted, as glibc does.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    do_aligned(align, size)
}

/// `memalign(3)` as glibc documents it: an alignment above
/// `SIZE_MAX / 2 + 1` gives `NULL` + `EINVAL`; any other alignment that is
/// not a power of two is rounded up to the next one; an alignment that is
/// valid but too large to satisfy (such as 2^62 or 2^63) gives `NULL` +
/// `ENOMEM`, like any other allocation failure.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // `None` exactly when `align > SIZE_MAX / 2 + 1`.
    let Some(a) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    do_aligned(a, size)
}

/// `valloc(3)`: page-aligned.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    do_aligned(os::page_size(), size)
}

/// `pvalloc(3)`: page-aligned, size rounded up to whole pages.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = os::page_size();
    let Some(s) = os::align_up_checked(size.max(1), page) else {
        return oom();
    };
    do_aligned(page, s)
}

/// `malloc_usable_size(3)`: exact for chunkmalloc's blocks, 0 for `NULL`;
/// a foreign pointer is reported and gives 0.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: forwarded contract.
    let n = unsafe { thread::usable_size(p.cast()) };
    if n == 0 {
        thread::report_invalid(p.cast(), b"malloc_usable_size");
    }
    n
}

/// `malloc_trim(3)`: gives cached memory and the free pages inside partly
/// used slabs back to the OS (`crate::purge`); 1 if any was released,
/// else 0.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    let saved = os::errno();
    let released = crate::purge();
    os::set_errno(saved);
    (released > 0) as c_int
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo2 {
    /// Non-mmapped space: bytes committed in chunks.
    pub arena: usize,
    /// Number of free chunks (cached chunks).
    pub ordblks: usize,
    /// Unused (0).
    pub smblks: usize,
    /// Number of huge mappings.
    pub hblks: usize,
    /// Bytes in huge mappings.
    pub hblkhd: usize,
    /// Unused (0).
    pub usmblks: usize,
    /// Unused (0).
    pub fsmblks: usize,
    /// Bytes in use by the program.
    pub uordblks: usize,
    /// Committed bytes not in use.
    pub fordblks: usize,
    /// Cached bytes that `malloc_trim` could release.
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (the same fields as `int`, saturating).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo {
    /// See [`Mallinfo2`].
    pub arena: c_int,
    /// See [`Mallinfo2`].
    pub ordblks: c_int,
    /// See [`Mallinfo2`].
    pub smblks: c_int,
    /// See [`Mallinfo2`].
    pub hblks: c_int,
    /// See [`Mallinfo2`].
    pub hblkhd: c_int,
    /// See [`Mallinfo2`].
    pub usmblks: c_int,
    /// See [`Mallinfo2`].
    pub fsmblks: c_int,
    /// See [`Mallinfo2`].
    pub uordblks: c_int,
    /// See [`Mallinfo2`].
    pub fordblks: c_int,
    /// See [`Mallinfo2`].
    pub keepcost: c_int,
}

/// `mallinfo2(3)`, filled from [`crate::stats`].
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let s = crate::stats();
    let huge_bytes = crate::stats::GLOBALS
        .huge_bytes
        .load(core::sync::atomic::Ordering::Relaxed);
    Mallinfo2 {
        arena: s.committed,
        ordblks: s.cached_chunks,
        smblks: 0,
        hblks: s.huge_chunks,
        hblkhd: huge_bytes,
        usmblks: 0,
        fsmblks: 0,
        uordblks: s.in_use,
        fordblks: s.committed.saturating_sub(s.in_use),
        keepcost: s.cached,
    }
}

/// `mallinfo(3)`: as [`mallinfo2`], saturated to `int`.
#[no_mangle]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    let c = |v: usize| v.min(c_int::MAX as usize) as c_int;
    Mallinfo {
        arena: c(m.arena),
        ordblks: c(m.ordblks),
        smblks: c(m.smblks),
        hblks: c(m.hblks),
        hblkhd: c(m.hblkhd),
        usmblks: c(m.usmblks),
        fsmblks: c(m.fsmblks),
        uordblks: c(m.uordblks),
        fordblks: c(m.fordblks),
        keepcost: c(m.keepcost),
    }
}

/// `mallopt(3)`: accepted and ignored; returns 1 (success) as glibc does
/// for the parameters it knows. chunkmalloc's own settings come from
/// `CHUNKMALLOC_*` variables.
#[no_mangle]
pub extern "C" fn mallopt(_param: c_int, _value: c_int) -> c_int {
    1
}

/// `malloc_stats(3)`: chunkmalloc's statistics table on stderr.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    crate::print_stats();
}

/// glibc alias of `malloc`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    do_malloc(size)
}

/// glibc alias of `free`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { do_free(p) }
}

/// glibc alias of `calloc`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    do_calloc(n, size)
}

/// glibc alias of `realloc`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { do_realloc(p, size) }
}

/// glibc alias of `memalign`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { memalign(align, size) }
}

/// glibc alias of `valloc`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { valloc(size) }
}

/// glibc alias of `pvalloc`.
///
/// # Safety
/// C's contract.
#[no_mangle]
pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { pvalloc(size) }
}

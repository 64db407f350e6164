//! OS pages: the only module that calls the kernel for memory.
//!
//! Owns `mmap`/`munmap`/`madvise`/`mremap`, the page size, aligned mappings
//! (over-map and trim) and [`OsPages`], the `allocator_api2::Allocator` page
//! source the provider is generic over; also the other system calls the
//! allocator makes (thread ids, `tgkill`, `sched_yield`, `write`). Nothing
//! here allocates, locks or panics; every failure is reported as a null
//! pointer or `Err`.
//!
//! On x86-64 Linux the system calls are `syscall` instructions ([`sys`]),
//! not libc's wrappers: a wrapper's page of libc text is made resident
//! with its 64 KiB fault-around window, in a process that otherwise might
//! never run that part of libc (the preload library took 60 KiB more RSS
//! for `/bin/true` with the wrappers, mean of 150 runs), and the raw call
//! leaves `errno` alone, so there is nothing to save and restore.

use core::ptr::{self, NonNull};
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
use core::sync::atomic::{AtomicUsize, Ordering};

use allocator_api2::alloc::{AllocError, Allocator, Layout};

/// Raw system calls: `call(nr, args)` returns the kernel's result, a
/// negative errno on failure. On x86-64 Linux a `syscall` instruction
/// (no libc text, `errno` untouched, never a cancellation point);
/// elsewhere libc's `syscall`, with `errno` restored.
mod sys {
    /// Whether a raw result is an error (`-4095..=-1`, as the kernel and
    /// libc define it; a mapping's address is never in that range).
    #[inline(always)]
    pub fn failed(r: isize) -> bool {
        (-4095..0).contains(&r)
    }

    /// # Safety
    /// The system call `nr` with these arguments must be sound (it may
    /// read or write memory the arguments point at).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[inline(always)]
    pub unsafe fn call(nr: libc::c_long, a: [usize; 6]) -> isize {
        let r: isize;
        // The Linux x86-64 system call ABI: number in rax, arguments in rdi,
        // rsi, rdx, r10, r8, r9; the kernel clobbers rcx and r11.
        // SAFETY: the kernel touches no stack memory of ours; what the
        // call itself does is the caller's contract.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => r,
                in("rdi") a[0],
                in("rsi") a[1],
                in("rdx") a[2],
                in("r10") a[3],
                in("r8") a[4],
                in("r9") a[5],
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        r
    }

    /// # Safety
    /// As above.
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    pub unsafe fn call(nr: libc::c_long, a: [usize; 6]) -> isize {
        let saved = super::errno();
        // SAFETY: the caller's contract; extra arguments are ignored.
        let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        let r = if r == -1 {
            -(super::errno() as isize)
        } else {
            r as isize
        };
        super::set_errno(saved);
        r
    }
}

/// Page size assumed until [`page_size`] has asked the kernel once.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
const DEFAULT_PAGE: usize = 4096;
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The system page size: 4 KiB on x86-64 (the architecture has no other
/// base page size); elsewhere read once with `sysconf`, which does not
/// allocate.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
pub fn page_size() -> usize {
    4096
}

/// The system page size (read once with `sysconf`, which does not allocate).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[inline]
pub fn page_size() -> usize {
    let p = PAGE_SIZE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf is async-signal-safe and allocation-free.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if r > 0 { r as usize } else { DEFAULT_PAGE };
    PAGE_SIZE.store(p, Ordering::Relaxed);
    p
}

/// Rounds `n` up to a multiple of the power of two `a`; `None` on overflow.
#[inline]
pub const fn align_up_checked(n: usize, a: usize) -> Option<usize> {
    match n.checked_add(a - 1) {
        Some(v) => Some(v & !(a - 1)),
        None => None,
    }
}

/// This thread's `errno`.
#[inline]
pub fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's `errno`.
#[inline]
pub fn set_errno(e: libc::c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e }
}

/// Maps `len` bytes of fresh, zeroed, read-write memory; null on failure.
fn map_raw(len: usize) -> *mut u8 {
    map_prot(len, libc::PROT_READ | libc::PROT_WRITE)
}

/// Maps `len` bytes of fresh anonymous memory with protection `prot`;
/// null on failure.
fn map_prot(len: usize, prot: libc::c_int) -> *mut u8 {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: an anonymous private mapping with no address hint touches no
    // existing memory; the kernel picks the place. fd -1, offset 0.
    let r = unsafe {
        sys::call(
            libc::SYS_mmap,
            [0, len, prot as usize, flags as usize, usize::MAX, 0],
        )
    };
    if sys::failed(r) {
        ptr::null_mut()
    } else {
        r as *mut u8
    }
}

/// Reserves `len` bytes of read-only, zero-reading address space, charged
/// to no commit limit (a private read-only mapping is not accounted, even
/// with strict overcommit); null on failure. Parts become writable with
/// [`protect_rw`].
pub fn reserve_readonly(len: usize) -> *mut u8 {
    map_prot(len, libc::PROT_READ)
}

/// Makes `[p, p + len)` of a [`reserve_readonly`] region writable. False
/// if the kernel refuses (commit limit, or too many mappings).
pub fn protect_rw(p: *mut u8, len: usize) -> bool {
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as usize;
    // SAFETY: the range lies inside a reservation of ours; changing its
    // protection to read-write keeps its (zero) contents.
    unsafe { sys::call(libc::SYS_mprotect, [p as usize, len, prot, 0, 0, 0]) == 0 }
}

/// Maps `len` bytes (a multiple of the page size) such that `result + offset`
/// is a multiple of `align` (a power of two, at least the page size).
/// Returns null on failure. The memory is zeroed.
///
/// Over-maps by `align` and trims both ends, so no address space stays
/// reserved beyond `len`.
pub fn map_aligned(len: usize, align: usize, offset: usize) -> *mut u8 {
    let page = page_size();
    check!(
        len % page == 0 && offset % page == 0 && align.is_power_of_two(),
        "page-multiple lengths, power-of-two alignments"
    );
    if align <= page && offset % align == 0 {
        return map_raw(len);
    }
    // Up to 64 KiB, first try an exact-size mapping: the kernel often hands
    // out addresses that already satisfy the alignment when earlier
    // mappings were. At a huge page's alignment that rarely holds (it
    // missed for most huge mappings), so those are over-mapped at once.
    if align < HUGE_PAGE {
        let p = map_raw(len);
        if p.is_null() {
            return p;
        }
        if (p as usize).wrapping_add(offset) % align == 0 {
            return p;
        }
        unmap(p, len);
    }
    let Some(total) = len.checked_add(align) else {
        return ptr::null_mut();
    };
    let raw = map_raw(total);
    if raw.is_null() {
        return raw;
    }
    let raw_addr = raw as usize;
    // The first address >= raw_addr whose (addr + offset) is aligned.
    let target = ((raw_addr + offset + align - 1) & !(align - 1)) - offset;
    let target = if target < raw_addr {
        target + align
    } else {
        target
    };
    let head = target - raw_addr;
    let tail = total - head - len;
    if head > 0 {
        unmap(raw, head);
    }
    if tail > 0 {
        unmap((target + len) as *mut u8, tail);
    }
    target as *mut u8
}

/// Returns a mapping to the kernel.
pub fn unmap(p: *mut u8, len: usize) {
    // SAFETY: callers pass a range they mapped with `map_aligned`/`remap`
    // and no longer reference; munmap of such a range cannot affect other
    // memory.
    unsafe {
        sys::call(libc::SYS_munmap, [p as usize, len, 0, 0, 0, 0]);
    }
}

/// Drops the physical pages behind `[p, p+len)` (`MADV_DONTNEED`): RSS falls
/// at once and the next touch sees zero-filled pages. The range stays mapped.
pub fn decommit(p: *mut u8, len: usize) {
    let advice = libc::MADV_DONTNEED as usize;
    // SAFETY: the caller owns the page-aligned range and holds no data in it.
    unsafe {
        sys::call(libc::SYS_madvise, [p as usize, len, advice, 0, 0, 0]);
    }
}

/// The size of a transparent huge page on x86-64 and aarch64 (with 4 KiB
/// base pages): huge mappings are aligned to it so that their interior can
/// be backed by huge pages.
pub const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back `[p, p+len)` with transparent huge pages where
/// it can (`MADV_HUGEPAGE`). Only advice: where THP is disabled or no huge
/// page is free, the range keeps base pages.
pub fn advise_huge_pages(p: *mut u8, len: usize) {
    let advice = libc::MADV_HUGEPAGE as usize;
    // SAFETY: advice on a range the caller mapped; it changes no contents.
    unsafe {
        sys::call(libc::SYS_madvise, [p as usize, len, advice, 0, 0, 0]);
    }
}

/// How [`resize_in_place`] went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Resize {
    Done,
    /// The kernel refused (no room to grow into, or out of memory).
    Refused,
    /// The range spans several kernel mappings (VMAs), which mremap
    /// cannot resize (`EFAULT`); it can only move them (Linux 6.17+).
    SpansMappings,
}

/// Resizes `[p, p+old_len)` without moving it, saying why it could not.
///
/// A range that spans several kernel mappings (a mapping that was once
/// moved into a larger target keeps the moved pages and the target's
/// fresh tail as two VMAs) cannot be resized by `mremap`; it grows by
/// mapping the addresses after it instead, which only needs them free.
pub fn resize_in_place(p: *mut u8, old_len: usize, new_len: usize) -> Resize {
    // SAFETY: `p..p+old_len` is owned by the caller; without
    // MREMAP_MAYMOVE the kernel resizes in place or fails, changing nothing.
    let r = unsafe { sys::call(libc::SYS_mremap, [p as usize, old_len, new_len, 0, 0, 0]) };
    if !sys::failed(r) {
        Resize::Done
    } else if r == -(libc::EFAULT as isize) {
        // `p + old_len` is the end of the caller's range (an address only).
        if new_len > old_len && map_after(p.wrapping_add(old_len), new_len - old_len) {
            Resize::Done
        } else {
            Resize::SpansMappings
        }
    } else {
        Resize::Refused
    }
}

/// Maps `len` bytes of fresh memory exactly at `at` if nothing is mapped
/// there (`MAP_FIXED_NOREPLACE`, which never replaces a mapping). False if
/// the range is taken or the kernel refuses.
fn map_after(at: *mut u8, len: usize) -> bool {
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as usize;
    // SAFETY: MAP_FIXED_NOREPLACE fails (EEXIST) rather than touch an
    // existing mapping; a kernel older than 4.17 ignores the flag and takes
    // `at` as a hint, and a mapping placed elsewhere is unmapped below.
    let r = unsafe {
        sys::call(
            libc::SYS_mmap,
            [at as usize, len, prot, flags as usize, usize::MAX, 0],
        )
    };
    if sys::failed(r) {
        return false;
    }
    if r as usize != at as usize {
        unmap(r as *mut u8, len);
        return false;
    }
    true
}

/// Moves the pages of a mapping onto `target` (a mapping of `new_len`
/// bytes the caller owns, which is replaced), resizing it; no data is
/// copied. False on failure, with both mappings intact.
pub fn remap_to(p: *mut u8, old_len: usize, new_len: usize, target: *mut u8) -> bool {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as usize;
    // SAFETY: both ranges are whole mappings owned by the caller; with
    // MREMAP_FIXED the kernel atomically replaces `target`'s pages or fails
    // leaving both intact.
    let r = unsafe {
        sys::call(
            libc::SYS_mremap,
            [p as usize, old_len, new_len, flags, target as usize, 0],
        )
    };
    !sys::failed(r)
}

/// Monotonic milliseconds from the vDSO coarse clock (no syscall, no
/// allocation); used only on slow paths for purge delays.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; clock_gettime does not allocate.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Writes bytes to stderr with the raw `write` system call: no buffering,
/// no allocation, `errno` unchanged. libc's `write` is a cancellation point,
/// so a thread with a pending cancellation request would be cancelled
/// inside `free` or `malloc_stats` and print nothing (glibc's own bug
/// 22830); the raw call ([`sys`]) never acts on cancellation. Retries
/// after `EINTR` and partial writes; gives up on any other error.
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let fd = libc::STDERR_FILENO as usize;
        // SAFETY: SYS_write only reads `rest.len()` bytes from
        // `rest.as_ptr()`, which the slice keeps valid for reads.
        let n = unsafe {
            sys::call(
                libc::SYS_write,
                [fd, rest.as_ptr() as usize, rest.len(), 0, 0, 0],
            )
        };
        if n > 0 {
            // The kernel never reports more than it was given; `get`
            // keeps a panic path out all the same.
            rest = rest.get(n as usize..).unwrap_or_default();
        } else if n == -(libc::EINTR as isize) {
            continue;
        } else {
            // 0 or another error: give up (a message is not worth
            // spinning for).
            return;
        }
    }
}

/// The calling process's id.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { sys::call(libc::SYS_getpid, [0; 6]) as i32 }
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { sys::call(libc::SYS_gettid, [0; 6]) as i32 }
}

/// Whether thread `tid` of process `pid` is known to be gone:
/// `tgkill(pid, tid, 0)` answers `ESRCH`.
pub fn thread_gone(pid: i32, tid: i32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    let r = unsafe { sys::call(libc::SYS_tgkill, [pid as usize, tid as usize, 0, 0, 0, 0]) };
    r == -(libc::ESRCH as isize)
}

/// Gives the CPU to another runnable thread (`sched_yield`).
pub fn yield_now() {
    // SAFETY: sched_yield has no arguments and no effect on memory.
    unsafe {
        sys::call(libc::SYS_sched_yield, [0; 6]);
    }
}

/// Aborts the process after printing `msg`; used where continuing would
/// corrupt memory. Never unwinds.
pub fn fatal(msg: &str) -> ! {
    write_stderr(b"chunkmalloc: fatal: ");
    write_stderr(msg.as_bytes());
    write_stderr(b"\n");
    // SAFETY: abort never returns and needs no invariant.
    unsafe { libc::abort() }
}

/// The kernel as an `allocator_api2::Allocator`: every allocation is its own
/// mapping, aligned to `layout.align()` (at least a page), zeroed.
///
/// The provider is generic over this trait so tests can plug in a counting
/// page source; the real allocator uses `OsPages`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsPages;

// SAFETY: allocate returns fresh mappings of at least `layout.size()` bytes
// aligned to `layout.align()`; deallocate unmaps exactly what allocate
// mapped (the length is recomputed from the same layout).
unsafe impl Allocator for OsPages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let page = page_size();
        let len = align_up_checked(layout.size().max(1), page).ok_or(AllocError)?;
        let p = map_aligned(len, layout.align().max(page), 0);
        let nn = NonNull::new(p).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(nn, len))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let len = layout.size().max(1).next_multiple_of(page_size());
        unmap(ptr.as_ptr(), len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_mappings_are_aligned_and_zeroed() {
        for shift in [12u32, 16, 21, 24] {
            let align = 1usize << shift;
            for offset in [0usize, 4096, 65536] {
                let p = map_aligned(3 * 65536, align, offset);
                assert!(!p.is_null());
                assert_eq!((p as usize + offset) % align, 0);
                // SAFETY: freshly mapped, 3*64KiB long.
                let s = unsafe { core::slice::from_raw_parts_mut(p, 3 * 65536) };
                assert!(s.iter().all(|&b| b == 0));
                s.fill(7);
                decommit(p, 3 * 65536);
                assert!(s.iter().all(|&b| b == 0), "DONTNEED must zero");
                unmap(p, 3 * 65536);
            }
        }
    }

    #[test]
    fn os_pages_allocator_round_trip() {
        let layout = Layout::from_size_align(100_000, 1 << 20).unwrap();
        let blk = OsPages.allocate(layout).unwrap();
        assert_eq!(blk.cast::<u8>().as_ptr() as usize % (1 << 20), 0);
        assert!(blk.len() >= 100_000);
        // SAFETY: allocated just above with the same layout.
        unsafe { OsPages.deallocate(blk.cast(), layout) };
    }

    #[test]
    fn remap_preserves_contents() {
        let p = map_aligned(65536, 65536, 0);
        // SAFETY: 64 KiB mapped above.
        unsafe { p.write_bytes(0x5a, 65536) };
        let len = 1 << 22;
        let q = if resize_in_place(p, 65536, len) == Resize::Done {
            p
        } else {
            let t = map_aligned(len, 65536, 0);
            assert!(remap_to(p, 65536, len, t));
            t
        };
        assert_eq!(q as usize % 65536, 0);
        // SAFETY: q is a 4 MiB mapping whose first 64 KiB came from p.
        let s = unsafe { core::slice::from_raw_parts(q, len) };
        assert!(s[..65536].iter().all(|&b| b == 0x5a));
        assert!(s[65536..].iter().all(|&b| b == 0));
        unmap(q, len);
    }
    /// A range of two kernel mappings (VMAs) grows in place by mapping the
    /// addresses after it, keeping its contents, and says `SpansMappings`
    /// when those addresses are taken.
    #[test]
    fn range_of_two_mappings_grows_in_place() {
        const K: usize = 1024;
        // Other tests map concurrently and may take the free addresses
        // after the range; enough tries make that unlikely to matter (8
        // were not: the tests around it map and unmap chunks in loops).
        for _ in 0..256 {
            let p = map_aligned(512 * K, 65536, 0);
            assert!(!p.is_null());
            // The upper half, given back, is the room to grow into.
            unmap(p.wrapping_add(256 * K), 256 * K);
            // SAFETY: 256 KiB mapped above.
            unsafe { p.write_bytes(0x3c, 256 * K) };
            // Different flags on the second 128 KiB split the range in two
            // VMAs, so `mremap` cannot resize it.
            // SAFETY: advice on our own range; contents are unchanged.
            let split =
                unsafe { libc::madvise(p.add(128 * K).cast(), 128 * K, libc::MADV_DONTFORK) };
            assert_eq!(split, 0);
            match resize_in_place(p, 256 * K, 384 * K) {
                Resize::Done => {
                    // SAFETY: the range is 384 KiB now.
                    let s = unsafe { core::slice::from_raw_parts_mut(p, 384 * K) };
                    assert!(s[..256 * K].iter().all(|&b| b == 0x3c));
                    assert!(s[256 * K..].iter().all(|&b| b == 0));
                    s[256 * K..].fill(1);
                    // Blocked: the next addresses hold a mapping of ours.
                    // (Another test may have mapped them since the growth:
                    // then try again.)
                    if !map_after(p.wrapping_add(384 * K), 4096) {
                        unmap(p, 384 * K);
                        continue;
                    }
                    assert_eq!(resize_in_place(p, 384 * K, 512 * K), Resize::SpansMappings);
                    assert!(s[256 * K..].iter().all(|&b| b == 1));
                    unmap(p, 384 * K + 4096);
                    return;
                }
                r => {
                    assert_eq!(r, Resize::SpansMappings);
                    unmap(p, 256 * K);
                }
            }
        }
        panic!("the addresses after the range were taken at every try");
    }
}

//! Settings, read once from the environment without allocating.
//!
//! `std::env` allocates (it copies into `OsString`), so this module walks
//! the C `environ` array directly, the way mimalloc does. Each setting is an
//! atomic so it can also be changed from Rust at run time.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::budget;
use crate::os;

/// Default delay before cached free chunks are decommitted, in
/// milliseconds (mimalloc v2 uses 10 ms, v3 1000 ms). 100 ms measured best
/// on the comparison harness: at 10 ms a program that frees and
/// re-allocates spent up to 4× the system time re-faulting decommitted
/// pages, for under 5 % less peak RSS (see docs/PERF.md).
pub const DEFAULT_PURGE_DELAY_MS: u64 = 100;

static PURGE_DELAY_MS: AtomicU64 = AtomicU64::new(DEFAULT_PURGE_DELAY_MS);
static SHOW_STATS: AtomicBool = AtomicBool::new(false);
static HUGE_PAGES: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);
/// 0 = not read, 1 = reading, 2 = done.
static STATE: AtomicU8 = AtomicU8::new(0);

extern "C" {
    static environ: *const *const libc::c_char;
}

/// Reads the environment once. Cheap to call again; safe before `main`.
#[inline]
pub fn init() {
    if STATE.load(Ordering::Acquire) == 2 {
        return;
    }
    init_slow();
}

#[cold]
fn init_slow() {
    if STATE
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Another thread is reading; settings are plain atomics, so going on
        // with defaults for a moment is harmless.
        return;
    }
    // SAFETY: `environ` is the C runtime's NULL-terminated array of
    // NUL-terminated strings; it is valid for the whole process. We only read.
    let mut p = unsafe { environ };
    if p.is_null() {
        // Too early: an allocation from a `.preinit_array` function runs
        // before libc has set `environ`. Stay unread so a later call (the
        // preload library's constructor, or the next thread) reads it.
        STATE.store(0, Ordering::Release);
        return;
    }
    // SAFETY: as above.
    unsafe {
        while !(*p).is_null() {
            let entry = core::ffi::CStr::from_ptr(*p).to_bytes();
            apply(entry);
            p = p.add(1);
        }
    }
    STATE.store(2, Ordering::Release);
    if verbose() {
        print_config();
    }
}

fn apply(entry: &[u8]) {
    let Some(eq) = entry.iter().position(|&b| b == b'=') else {
        return;
    };
    let (name, value) = (&entry[..eq], &entry[eq + 1..]);
    match name {
        b"CHUNKMALLOC_BUDGET" => match parse_size(value) {
            Some(n) => budget::GLOBAL.set_limit(Some(n)),
            None => report_bad(name, value),
        },
        b"CHUNKMALLOC_PURGE_DELAY_MS" => match parse_size(value) {
            Some(n) => PURGE_DELAY_MS.store(n as u64, Ordering::Relaxed),
            None => report_bad(name, value),
        },
        b"CHUNKMALLOC_HUGE_PAGES" => HUGE_PAGES.store(parse_bool(value), Ordering::Relaxed),
        b"CHUNKMALLOC_SHOW_STATS" => SHOW_STATS.store(parse_bool(value), Ordering::Relaxed),
        b"CHUNKMALLOC_VERBOSE" => VERBOSE.store(parse_bool(value), Ordering::Relaxed),
        _ => {}
    }
}

fn report_bad(name: &[u8], value: &[u8]) {
    os::write_stderr(b"chunkmalloc: ignoring unparsable ");
    os::write_stderr(name);
    os::write_stderr(b"=");
    os::write_stderr(value);
    os::write_stderr(b"\n");
}

fn parse_bool(v: &[u8]) -> bool {
    !matches!(v, b"" | b"0" | b"false" | b"no" | b"off")
}

/// Parses `1048576`, `512K`, `512KiB`, `512KB`, `64M`, `64MiB`, `2G`, `2GiB`
/// (case-insensitive suffix, binary multiples). `None` if malformed or
/// overflowing.
pub fn parse_size(v: &[u8]) -> Option<usize> {
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: usize = 0;
    for &b in &v[..digits] {
        n = n.checked_mul(10)?.checked_add((b - b'0') as usize)?;
    }
    let suffix = &v[digits..];
    let shift = match suffix.first().map(|b| b.to_ascii_uppercase()) {
        None => return Some(n),
        Some(b'B') if suffix.len() == 1 => 0,
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        _ => return None,
    };
    let rest = &suffix[1..];
    let ok = rest.is_empty() || rest.eq_ignore_ascii_case(b"B") || rest.eq_ignore_ascii_case(b"iB");
    if !ok {
        return None;
    }
    n.checked_mul(1usize << shift)
}

/// Delay before cached free chunks are decommitted.
#[inline]
pub fn purge_delay_ms() -> u64 {
    PURGE_DELAY_MS.load(Ordering::Relaxed)
}

/// Sets the purge delay (0 = decommit as soon as a chunk is cached beyond
/// the reserve).
pub fn set_purge_delay_ms(ms: u64) {
    PURGE_DELAY_MS.store(ms, Ordering::Relaxed);
}

/// Whether huge mappings (objects above 2.25 MiB) ask the kernel for
/// transparent huge pages (`MADV_HUGEPAGE`; off by default, on with
/// `CHUNKMALLOC_HUGE_PAGES=1`). The mappings are 2 MiB-aligned either
/// way, so a kernel whose THP setting is `always` backs them with huge
/// pages unasked. Off by default because a huge page is zeroed whole by
/// the thread that faults it, and on virtual machines that hand free
/// guest memory back to the host (free page reporting, as on the one
/// `docs/PERF.md` was measured on) it is often memory the host must back
/// again: there asking cost `large_blocks` 2x and `cycling_buffers` 1.3x
/// the time after another process's churn. Only whole 2 MiB-aligned
/// stretches inside a mapping become huge pages, so an object's resident
/// size may exceed what it touches by up to 2 MiB per touched stretch.
pub fn huge_pages() -> bool {
    HUGE_PAGES.load(Ordering::Relaxed)
}

/// Sets whether huge mappings ask for transparent huge pages.
pub fn set_huge_pages(on: bool) {
    HUGE_PAGES.store(on, Ordering::Relaxed);
}

/// Whether to print statistics at exit.
pub fn show_stats() -> bool {
    SHOW_STATS.load(Ordering::Relaxed)
}

/// Sets whether statistics are printed at exit.
pub fn set_show_stats(on: bool) {
    SHOW_STATS.store(on, Ordering::Relaxed);
}

/// Whether to print configuration and budget failures.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Sets verbose reporting.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

fn print_config() {
    let mut buf = crate::fmt::Buf::new();
    buf.push(b"chunkmalloc: budget=");
    match budget::GLOBAL.limit() {
        Some(n) => buf.push_num(n as u64),
        None => buf.push(b"none"),
    };
    buf.push(b" purge_delay_ms=");
    buf.push_num(purge_delay_ms());
    buf.push(b" huge_pages=");
    buf.push_num(huge_pages() as u64);
    buf.push(b" show_stats=");
    buf.push_num(show_stats() as u64);
    buf.push(b"\n");
    os::write_stderr(buf.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size(b"1048576"), Some(1 << 20));
        assert_eq!(parse_size(b"512K"), Some(512 << 10));
        assert_eq!(parse_size(b"512KiB"), Some(512 << 10));
        assert_eq!(parse_size(b"512kb"), Some(512 << 10));
        assert_eq!(parse_size(b"64M"), Some(64 << 20));
        assert_eq!(parse_size(b"64MiB"), Some(64 << 20));
        assert_eq!(parse_size(b"2G"), Some(2 << 30));
        assert_eq!(parse_size(b"2GiB"), Some(2 << 30));
        for bad in [
            &b""[..],
            b"x",
            b"12Q",
            b"12MiBx",
            b"-1",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_size(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn booleans() {
        assert!(parse_bool(b"1"));
        assert!(parse_bool(b"yes"));
        assert!(!parse_bool(b"0"));
        assert!(!parse_bool(b""));
    }
}

//! Helpers shared by the integration tests (each test file that needs them
//! says `mod common;`; not every file uses every helper).
//!
//! * A position-dependent fill pattern whose writes and checks run through
//!   `memcpy`/`memcmp`, so multi-hundred-MiB buffers are cheap to verify
//!   even in the debug profile.
//! * Running a test body in a child process (for tests that measure
//!   process-global numbers: committed bytes, RSS, the budget).
//! * A tiny deterministic PRNG, RSS reading, the object size classes.
//! * Address ranges reserved where nothing is mapped: a guard page right
//!   after an allocator mapping (its in-place growth then fails), or room
//!   kept free for a growth.

#![allow(dead_code)]

use std::process::Command;

/// Pattern block length: every 4 KiB of a buffer is one block.
pub const BLOCK: usize = 4096;

const PAT_LEN: usize = BLOCK + 256;

const fn build_pattern() -> [u8; PAT_LEN] {
    let mut a = [0u8; PAT_LEN];
    let mut i = 0;
    while i < PAT_LEN {
        // Period 251 (prime) mixed with a slower term, so neighbouring
        // blocks and shifted copies differ.
        a[i] = ((i % 251) as u8).wrapping_mul(7) ^ ((i >> 5) as u8) ^ 0x5a;
        i += 1;
    }
    a
}

static PAT: [u8; PAT_LEN] = build_pattern();
static ZERO: [u8; BLOCK] = [0; BLOCK];

/// The 8-byte tag at the start of block `k` of a buffer filled with `seed`.
#[inline]
fn tag(k: usize, seed: u64) -> [u8; 8] {
    ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed).to_le_bytes()
}

/// The expected byte at position `pos` of a buffer filled with `seed`.
pub fn pattern_byte(pos: usize, seed: u64) -> u8 {
    let (k, o) = (pos / BLOCK, pos % BLOCK);
    if o < 8 {
        tag(k, seed)[o]
    } else {
        PAT[o + (seed % 256) as usize]
    }
}

/// Calls `f(block, offset_in_block, sub_slice_range)` for each block
/// segment of positions `[start, start + len)`.
fn for_segments(start: usize, len: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let mut j = 0;
    while j < len {
        let pos = start + j;
        let (k, o) = (pos / BLOCK, pos % BLOCK);
        let n = (BLOCK - o).min(len - j);
        f(k, o, j, n);
        j += n;
    }
}

/// Fills `buf`, which holds positions `start..start + buf.len()` of a
/// patterned buffer, with the pattern for `seed`.
pub fn fill_at(buf: &mut [u8], start: usize, seed: u64) {
    let s = (seed % 256) as usize;
    for_segments(start, buf.len(), |k, o, j, n| {
        let seg = &mut buf[j..j + n];
        let mut i = 0;
        while i < n && o + i < 8 {
            seg[i] = tag(k, seed)[o + i];
            i += 1;
        }
        if i < n {
            seg[i..].copy_from_slice(&PAT[o + i + s..o + n + s]);
        }
    });
}

/// Checks `buf` (positions `start..`) against the pattern for `seed`.
/// Returns the first mismatching index into `buf`.
pub fn check_at(buf: &[u8], start: usize, seed: u64) -> Result<(), usize> {
    let s = (seed % 256) as usize;
    let mut bad = None;
    for_segments(start, buf.len(), |k, o, j, n| {
        if bad.is_some() {
            return;
        }
        let seg = &buf[j..j + n];
        let mut i = 0;
        while i < n && o + i < 8 {
            if seg[i] != tag(k, seed)[o + i] {
                bad = Some(j + i);
                return;
            }
            i += 1;
        }
        if i < n && seg[i..] != PAT[o + i + s..o + n + s] {
            let m = (i..n)
                .find(|&x| seg[x] != PAT[o + x + s])
                .expect("slices differ");
            bad = Some(j + m);
        }
    });
    match bad {
        None => Ok(()),
        Some(i) => Err(i),
    }
}

/// Fills the whole buffer with the pattern for `seed`.
pub fn fill(buf: &mut [u8], seed: u64) {
    fill_at(buf, 0, seed);
}

/// Checks the whole buffer; panics with the position of the first bad byte.
#[track_caller]
pub fn check(buf: &[u8], seed: u64, what: &str) {
    if let Err(i) = check_at(buf, 0, seed) {
        panic!(
            "{what}: pattern mismatch at byte {i} of {} (found {:#04x}, want {:#04x}, seed {seed:#x}, buffer at {:p})",
            buf.len(),
            buf[i],
            pattern_byte(i, seed),
            buf.as_ptr(),
        );
    }
}

/// Raw-pointer form of [`fill`].
///
/// # Safety
/// `p` is valid for writes of `len` bytes.
pub unsafe fn fill_raw(p: *mut u8, len: usize, seed: u64) {
    // SAFETY: per the contract.
    fill(unsafe { std::slice::from_raw_parts_mut(p, len) }, seed);
}

/// Raw-pointer form of [`check`].
///
/// # Safety
/// `p` is valid for reads of `len` bytes.
#[track_caller]
pub unsafe fn check_raw(p: *const u8, len: usize, seed: u64, what: &str) {
    // SAFETY: per the contract.
    check(unsafe { std::slice::from_raw_parts(p, len) }, seed, what);
}

/// Index of the first non-zero byte, if any.
pub fn first_nonzero(buf: &[u8]) -> Option<usize> {
    let mut off = 0;
    for c in buf.chunks(BLOCK) {
        if c != &ZERO[..c.len()] {
            return Some(off + c.iter().position(|&b| b != 0).expect("chunk differs"));
        }
        off += c.len();
    }
    None
}

/// Panics unless `len` bytes at `p` are all zero.
///
/// # Safety
/// `p` is valid for reads of `len` bytes.
#[track_caller]
pub unsafe fn assert_zero_raw(p: *const u8, len: usize, what: &str) {
    // SAFETY: per the contract.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    if let Some(i) = first_nonzero(s) {
        panic!(
            "{what}: byte {i} of {len} at {p:p} is {:#04x}, want 0",
            s[i]
        );
    }
}

/// xorshift64* — deterministic, allocation-free.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Roughly log-uniform in `lo..=hi` (`lo >= 1`): small sizes dominate,
    /// as in real programs, but every magnitude appears.
    pub fn log_size(&mut self, lo: usize, hi: usize) -> usize {
        let bits_lo = usize::BITS - lo.leading_zeros() - 1;
        let bits_hi = usize::BITS - hi.leading_zeros();
        let b = self.range(bits_lo as usize, bits_hi as usize - 1);
        let v = (1usize << b) + self.range(0, (1usize << b) - 1);
        v.clamp(lo, hi)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Resident bytes from `/proc/self/statm`, read into a stack buffer: at the
/// cap an allocating reader could itself fail.
pub fn rss_noalloc() -> usize {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; `buf` is valid for `buf.len()` bytes;
    // the descriptor is closed before returning.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0, "open /proc/self/statm");
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0, "read /proc/self/statm");
    // Fields: size resident shared ... (in pages).
    let text = &buf[..n as usize];
    let mut fields = text.split(|&b| b == b' ');
    fields.next();
    let resident = fields.next().expect("resident field");
    let pages = resident
        .iter()
        .fold(0usize, |acc, &d| acc * 10 + (d - b'0') as usize);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// Frees every other block of `held`, then the largest remaining ones
/// until at least half of the held bytes are freed. With log-uniform sizes
/// a few blocks hold most of the bytes, so every other block alone may
/// give back little, and a "recovers after half is freed" check would pass
/// or fail on which blocks those were. Does not allocate (at the cap).
pub fn free_half<T: Copy>(held: &mut Vec<T>, size: impl Fn(&T) -> usize, mut free: impl FnMut(T)) {
    let total: usize = held.iter().map(&size).sum();
    let mut freed = 0;
    let mut k = 0;
    held.retain(|b| {
        k += 1;
        if k % 2 == 0 {
            freed += size(b);
            free(*b);
        }
        k % 2 == 1
    });
    while freed * 2 < total {
        let Some((i, _)) = held.iter().enumerate().max_by_key(|(_, b)| size(b)) else {
            break;
        };
        let b = held.swap_remove(i);
        freed += size(&b);
        free(b);
    }
}

/// Resident set size of this process in bytes (VmRSS).
pub fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// Every object size class (16 B granules up to 128 B, then eight steps per
/// power of two up to 64 KiB), computed independently of the allocator.
pub fn size_classes() -> Vec<usize> {
    let mut v: Vec<usize> = (1..=8).map(|u| u * 16).collect();
    let mut k = 3;
    while *v.last().unwrap() < 64 * 1024 {
        for j in 1..=8 {
            v.push(((1 << k) + j * (1 << (k - 3))) * 16);
        }
        k += 1;
    }
    assert_eq!(v.len(), 80);
    assert_eq!(*v.last().unwrap(), 64 * 1024);
    v
}

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// Environment variable naming the test a child process should run.
pub const CHILD_ENV: &str = "CHUNKMALLOC_TEST_CHILD";

/// Whether this process is a child started by [`in_child`] for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(test)
}

/// In a child process: on any panic, write the message to stderr without
/// allocating and `_exit(101)`. The default hook allocates (message,
/// backtrace) and a panic while a budget cap is exhausted would then abort
/// or deadlock instead of reporting; exiting at once also stops any threads
/// waiting on the panicking one. The parent reports the message.
fn install_exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        struct Buf {
            b: [u8; 2048],
            n: usize,
        }
        impl std::fmt::Write for Buf {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let k = s.len().min(self.b.len() - self.n);
                self.b[self.n..self.n + k].copy_from_slice(&s.as_bytes()[..k]);
                self.n += k;
                Ok(())
            }
        }
        let mut buf = Buf { b: [0; 2048], n: 0 };
        let _ = std::fmt::write(&mut buf, format_args!("child test panicked: {info}\n"));
        // SAFETY: writing a live buffer to fd 2, then leaving the process.
        unsafe {
            libc::write(2, buf.b.as_ptr().cast(), buf.n);
            libc::_exit(101);
        }
    }));
}

/// Waits until the test harness's other thread has finished the
/// bookkeeping it does (allocating) right after starting the test thread,
/// so the test's baseline measurements are not disturbed by it: until
/// `stats().in_use` stays unchanged over three 10 ms intervals (at most
/// ~1 s).
pub fn settle() {
    let mut last = chunkmalloc::stats().in_use;
    let mut stable = 0;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let now = chunkmalloc::stats().in_use;
        if now == last {
            stable += 1;
            if stable == 3 {
                return;
            }
        } else {
            stable = 0;
            last = now;
        }
    }
}

/// Runs `body` in a fresh child process (this test binary re-executed with
/// `--exact test --nocapture`) so that process-global numbers (committed
/// bytes, RSS, the budget) see only this test. In the parent, waits for the
/// child and fails unless it ran exactly this one test and it passed.
/// Returns the child's stdout+stderr (in the child: an empty string).
///
/// `test` must be the test function's name; `env` is extra environment
/// for the child.
pub fn in_child(test: &str, env: &[(&str, &str)], body: impl FnOnce()) -> String {
    if is_child(test) {
        install_exit_on_panic();
        settle();
        body();
        return String::new();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("--- child stdout ---\n{stdout}\n--- child stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "child process for `{test}` failed ({})\n{text}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "child process for `{test}` did not run exactly one test\n{text}"
    );
    print!("{text}");
    text
}

/// Maps `len` inaccessible bytes at `addr` if nothing is mapped there
/// (`MAP_FIXED_NOREPLACE`, which never replaces a mapping): a page placed
/// right after an allocator mapping makes the kernel refuse to grow that
/// mapping in place, and a longer range keeps addresses free for a later
/// growth. Returns the range, or null where the addresses are taken. Give
/// it back with [`unreserve`].
pub fn reserve_at(addr: usize, len: usize) -> *mut libc::c_void {
    // SAFETY: MAP_FIXED_NOREPLACE fails rather than touch an existing
    // mapping; the range is anonymous and inaccessible.
    let g = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if g == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    if g as usize != addr {
        // Placed elsewhere by a kernel without the flag: ours to unmap.
        unreserve(g, len);
        return std::ptr::null_mut();
    }
    g
}

/// Unmaps a range from [`reserve_at`] (null: nothing to do).
pub fn unreserve(g: *mut libc::c_void, len: usize) {
    if !g.is_null() {
        // SAFETY: a range `reserve_at` mapped, ours.
        unsafe { libc::munmap(g, len) };
    }
}

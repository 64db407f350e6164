//! Freed huge mappings (objects above 2 MiB) serve later requests of any
//! size without faulting their pages in again, and huge mappings ask for
//! transparent huge pages. Each scenario runs in its own child process
//! (with a long purge delay, so nothing cached is purged while it runs, and
//! without transparent huge pages where faults are counted, so that one
//! fault is one 4 KiB page).
//!
//! * Two freed mappings are gathered (their pages moved, not copied) into
//!   one for a larger zeroed request: it reads zero and faults almost
//!   nothing.
//! * One large freed mapping is split: a small request takes its head, and
//!   a later request takes the rest without faults.
//! * A huge object shrunk by `realloc` caches the rest of its mapping, and
//!   one grown by `realloc` that has to move takes cached pages for the
//!   growth.
//! * A huge object grown by `realloc` in place takes cached pages for the
//!   growth too, and a buffer of up to 2.25 MiB whose growth a cached
//!   mapping holds whole moves into that mapping (copied), so its later
//!   growth stays within it.
//! * A gather leaves no rest too small to cache behind (it would be
//!   unmapped with its pages): the object's mapping takes it along.
//! * When the cache is full (its bytes or its slots), a freed mapping
//!   displaces smaller cached ones instead of being unmapped.
//! * With `CHUNKMALLOC_HUGE_PAGES=1` a huge object's mapping is eligible
//!   for transparent huge pages where the kernel offers them on request;
//!   by default (off) it is not, unless the kernel gives them unasked.

mod common;

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::hint::black_box;

use common::{check, fill, first_nonzero, in_child, MIB};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    ru.ru_minflt
}

/// Allocates `size` bytes and writes every byte. The pointer goes through
/// `black_box` here and in [`free`]: in a release build the compiler may
/// otherwise drop an allocation whose contents nothing reads before it is
/// freed, and the scenario with it.
fn dirty(size: usize) -> *mut u8 {
    let l = Layout::from_size_align(size, 16).unwrap();
    // SAFETY: non-zero size; checked for null.
    let p = black_box(unsafe { alloc(l) });
    assert!(!p.is_null());
    // SAFETY: `p` holds `size` bytes.
    unsafe { p.write_bytes(0x5A, size) };
    p
}

/// [`dirty`], asserting that it faulted almost nothing (its pages came
/// from the cache); `what` says what was not reused otherwise.
fn dirty_from_cache(size: usize, what: &str) -> *mut u8 {
    let f0 = minor_faults();
    let p = dirty(size);
    let faults = minor_faults() - f0;
    assert!(faults < FEW_FAULTS, "{faults} faults: {what}");
    p
}

fn free(p: *mut u8, size: usize) {
    // SAFETY: allocated with this layout by `dirty` or the test.
    unsafe { dealloc(black_box(p), Layout::from_size_align(size, 16).unwrap()) };
}

const ENV: &[(&str, &str)] = &[
    ("CHUNKMALLOC_PURGE_DELAY_MS", "600000"),
    ("CHUNKMALLOC_HUGE_PAGES", "0"),
];

/// A fresh mapping would fault every page of the object (3,072 for
/// 12 MiB); moved pages are resident already. What the test itself
/// touches (its stack, a page of a slab) is far below this bound.
const FEW_FAULTS: i64 = 256;

#[test]
fn freed_mappings_are_gathered_for_a_larger_request() {
    in_child(
        "freed_mappings_are_gathered_for_a_larger_request",
        ENV,
        || {
            let (a, b) = (dirty(6 * MIB), dirty(8 * MIB));
            free(a, 6 * MIB);
            free(b, 8 * MIB);
            let f0 = minor_faults();
            let size = 12 * MIB;
            let l = Layout::from_size_align(size, 16).unwrap();
            // SAFETY: non-zero size; checked for null; accessed within `size`.
            unsafe {
                let c = alloc_zeroed(l);
                assert!(!c.is_null());
                let s = std::slice::from_raw_parts_mut(c, size);
                assert_eq!(first_nonzero(s), None, "gathered dirty pages not zeroed");
                fill(s, 12);
                let faults = minor_faults() - f0;
                assert!(
                    faults < FEW_FAULTS,
                    "{faults} faults: the freed mappings were not reused"
                );
                assert!(chunkmalloc::usable_size(c) >= size);
                check(s, 12, "gathered object");
                // Grown by realloc: a gathered mapping spans several kernel
                // VMAs, which mremap cannot resize, only move.
                let g = std::alloc::realloc(c, l, 30 * MIB);
                assert!(!g.is_null());
                check(
                    std::slice::from_raw_parts(g, size),
                    12,
                    "gathered object, grown",
                );
                dealloc(g, Layout::from_size_align(30 * MIB, 16).unwrap());
            }
        },
    );
}

#[test]
fn a_large_freed_mapping_is_split_for_smaller_requests() {
    in_child(
        "a_large_freed_mapping_is_split_for_smaller_requests",
        ENV,
        || {
            free(dirty(24 * MIB), 24 * MIB);
            let small = dirty_from_cache(4 * MIB, "the split mapping's head was not reused");
            let rest = dirty_from_cache(16 * MIB, "the rest of the split mapping was not reused");
            assert!(
                small.wrapping_add(4 * MIB) <= rest || rest.wrapping_add(16 * MIB) <= small,
                "overlapping objects"
            );
            free(small, 4 * MIB);
            free(rest, 16 * MIB);
        },
    );
}

#[test]
fn a_gathered_mapping_keeps_a_rest_too_small_to_cache() {
    in_child(
        "a_gathered_mapping_keeps_a_rest_too_small_to_cache",
        ENV,
        || {
            let (a, b) = (dirty(6 * MIB), dirty(8 * MIB));
            free(a, 6 * MIB);
            free(b, 8 * MIB);
            let s0 = chunkmalloc::stats();
            // 13 MiB from the two pieces leaves about 1 MiB of the 6 MiB
            // one: too small to cache on its own, it comes along with the
            // object instead of being unmapped.
            let c = dirty(13 * MIB);
            let s1 = chunkmalloc::stats();
            assert_eq!(s1.cached, 0, "a piece stayed cached");
            assert!(
                s1.committed >= s0.committed,
                "resident pages were unmapped: committed {} -> {}",
                s0.committed,
                s1.committed
            );
            free(c, 13 * MIB);
            // And they come back with it.
            assert!(chunkmalloc::stats().cached >= s0.cached);
        },
    );
}

#[test]
fn a_huge_object_shrunk_by_realloc_caches_the_rest() {
    in_child(
        "a_huge_object_shrunk_by_realloc_caches_the_rest",
        ENV,
        || {
            let size = 24 * MIB;
            let p = dirty(size);
            // SAFETY: `p` holds `size` bytes.
            unsafe { fill(std::slice::from_raw_parts_mut(p, size), 31) };
            let c0 = chunkmalloc::stats().cached;
            // SAFETY: allocated with this layout by `dirty`.
            let q = unsafe {
                std::alloc::realloc(p, Layout::from_size_align(size, 16).unwrap(), 6 * MIB)
            };
            assert!(!q.is_null());
            // SAFETY: `q` holds 6 MiB.
            unsafe { check(std::slice::from_raw_parts(q, 6 * MIB), 31, "shrunk object") };
            let c1 = chunkmalloc::stats().cached;
            assert!(
                c1 >= c0 + 17 * MIB,
                "the rest was not cached: cached {c0} -> {c1}"
            );
            let r = dirty_from_cache(16 * MIB, "the shrunk object's rest was not reused");
            free(r, 16 * MIB);
            free(q, 6 * MIB);
        },
    );
}

#[test]
fn a_huge_object_grown_by_realloc_takes_cached_pages() {
    in_child(
        "a_huge_object_grown_by_realloc_takes_cached_pages",
        ENV,
        || {
            let size = 8 * MIB;
            let a = dirty(size);
            // SAFETY: `a` holds `size` bytes.
            unsafe { fill(std::slice::from_raw_parts_mut(a, size), 41) };
            // Its mapping ends at the next 64 KiB boundary after the
            // object; a page mapped there (when free) makes the kernel
            // refuse to grow it in place, so the growth must move it.
            let end = (a as usize + size).next_multiple_of(64 << 10);
            let guard = common::reserve_at(end, 4096);
            let b = dirty(10 * MIB);
            free(b, 10 * MIB);
            let f0 = minor_faults();
            let grown = 18 * MIB;
            // SAFETY: allocated with this layout by `dirty`; the grown
            // object is written within its new size.
            unsafe {
                let g = std::alloc::realloc(a, Layout::from_size_align(size, 16).unwrap(), grown);
                assert!(!g.is_null());
                g.add(size).write_bytes(0x33, grown - size);
                let faults = minor_faults() - f0;
                assert!(
                    faults < FEW_FAULTS,
                    "{faults} faults: the growth did not take the cached pages"
                );
                check(std::slice::from_raw_parts(g, size), 41, "grown object");
                free(g, grown);
            }
            common::unreserve(guard, 4096);
        },
    );
}

#[test]
fn a_huge_object_grown_in_place_takes_cached_pages() {
    in_child(
        "a_huge_object_grown_in_place_takes_cached_pages",
        ENV,
        || {
            let size = 8 * MIB;
            // Within what the 2 MiB alignment trims off the end of a fresh
            // mapping (up to 2 MiB less 64 KiB), which stays free unless
            // something small lands there: the object grows in place.
            let room = 3 * MIB / 2;
            let grown = size + room;
            // An object whose next addresses are free, reserved while the
            // cached mapping is made (objects without are kept aside: a later
            // one lands below them, just below its own trimmed tail).
            let mut aside = Vec::new();
            let (a, kept) = loop {
                let a = dirty(size);
                let end = (a as usize + size).next_multiple_of(64 << 10);
                let kept = common::reserve_at(end, room);
                if !kept.is_null() {
                    break (a, kept);
                }
                assert!(aside.len() < 16, "no object with free addresses after it");
                aside.push(a);
            };
            // SAFETY: `a` holds `size` bytes.
            unsafe { fill(std::slice::from_raw_parts_mut(a, size), 43) };
            let b = dirty(10 * MIB);
            free(b, 10 * MIB);
            common::unreserve(kept, room);
            let f0 = minor_faults();
            // SAFETY: allocated with this layout by `dirty`; the grown object
            // is written within its new size.
            unsafe {
                let g = std::alloc::realloc(a, Layout::from_size_align(size, 16).unwrap(), grown);
                assert_eq!(g, a, "the object did not grow in place");
                g.add(size).write_bytes(0x33, room);
                let faults = minor_faults() - f0;
                assert!(
                    faults < FEW_FAULTS,
                    "{faults} faults: the growth did not take the cached pages"
                );
                check(std::slice::from_raw_parts(g, size), 43, "grown object");
                // Grown again: its mapping now spans two kernel mappings (its
                // own and the moved piece), and it still grows.
                let g2 =
                    std::alloc::realloc(g, Layout::from_size_align(grown, 16).unwrap(), 20 * MIB);
                assert!(!g2.is_null());
                check(std::slice::from_raw_parts(g2, size), 43, "grown object");
                assert!((size..grown).all(|i| *g2.add(i) == 0x33), "growth lost");
                free(g2, 20 * MIB);
            }
            aside.into_iter().for_each(|p| free(p, size));
        },
    );
}

#[test]
fn a_growing_buffer_moves_into_a_cached_mapping_that_holds_it() {
    in_child(
        "a_growing_buffer_moves_into_a_cached_mapping_that_holds_it",
        ENV,
        || {
            // A buffer grown past 128 KiB gets a mapping of its own.
            let l = |n: usize| Layout::from_size_align(n, 16).unwrap();
            // SAFETY: non-zero sizes; each pointer is live with the layout
            // it is passed with; writes stay within the current size.
            unsafe {
                let a = std::alloc::alloc(l(64 << 10));
                assert!(!a.is_null());
                a.write_bytes(7, 64 << 10);
                let a = std::alloc::realloc(a, l(64 << 10), 256 << 10);
                assert!(!a.is_null());
                a.add(64 << 10).write_bytes(7, 192 << 10);
                // A freed 4 MiB mapping, cached whole.
                let b = dirty(4 * MIB);
                free(b, 4 * MIB);
                let f0 = minor_faults();
                let g = std::alloc::realloc(a, l(256 << 10), 2 * MIB);
                assert!(!g.is_null());
                assert_eq!(g, b, "the buffer did not move into the cached mapping");
                g.add(256 << 10).write_bytes(9, 2 * MIB - (256 << 10));
                // Later growth stays within that mapping.
                let g2 = std::alloc::realloc(g, l(2 * MIB), 3 * MIB + 12345);
                assert_eq!(g2, g, "growth within the cached mapping moved");
                g2.add(2 * MIB).write_bytes(9, MIB + 12345);
                let faults = minor_faults() - f0;
                assert!(
                    faults < FEW_FAULTS,
                    "{faults} faults growing into the cache"
                );
                assert!((0..256 << 10).all(|i| *g2.add(i) == 7), "contents lost");
                assert!(
                    (256 << 10..3 * MIB + 12345).all(|i| *g2.add(i) == 9),
                    "growth lost"
                );
                free(g2, 3 * MIB + 12345);
            }
        },
    );
}

#[test]
fn a_freed_mapping_displaces_a_smaller_one_when_every_slot_is_taken() {
    in_child(
        "a_freed_mapping_displaces_a_smaller_one_when_every_slot_is_taken",
        ENV,
        || {
            // A live 400 MiB object (never touched, so never resident)
            // raises the cache's byte cap to 200 MiB, so the 96 MiB of the
            // 32 small mappings below fill the slots, not the bytes.
            let l = Layout::from_size_align(400 * MIB, 16).unwrap();
            // SAFETY: non-zero size; freed below with the same layout.
            let live = black_box(unsafe { alloc(l) });
            assert!(!live.is_null());
            let slots = chunkmalloc::provider::HUGE_SLOTS;
            let small: Vec<usize> = (0..slots).map(|_| dirty(3 * MIB) as usize).collect();
            let big = dirty(24 * MIB);
            for p in small {
                free(p as *mut u8, 3 * MIB);
            }
            let c0 = chunkmalloc::stats().cached;
            assert!(
                c0 >= slots * 3 * MIB,
                "the small mappings were not all kept"
            );
            free(big, 24 * MIB);
            let c1 = chunkmalloc::stats().cached;
            // Kept in place of one small mapping: 24 - 3 MiB more.
            assert!(
                c1 >= c0 + 20 * MIB,
                "the 24 MiB mapping was not kept: cached {c0} -> {c1}"
            );
            let p = dirty_from_cache(20 * MIB, "the cached 24 MiB mapping was not reused");
            free(p, 20 * MIB);
            // SAFETY: allocated above with `l`.
            unsafe { dealloc(black_box(live), l) };
        },
    );
}

#[test]
fn a_freed_mapping_displaces_smaller_cached_ones_when_the_cache_is_full() {
    in_child(
        "a_freed_mapping_displaces_smaller_cached_ones_when_the_cache_is_full",
        ENV,
        || {
            // Sixteen 3 MiB mappings (49 MiB, under the cache's 64 MiB
            // floor; nothing else is live, so the floor is the cap).
            let small: Vec<usize> = (0..16).map(|_| dirty(3 * MIB) as usize).collect();
            let big = dirty(24 * MIB);
            for p in small {
                free(p as *mut u8, 3 * MIB);
            }
            let c0 = chunkmalloc::stats().cached;
            free(big, 24 * MIB);
            let c1 = chunkmalloc::stats().cached;
            // Kept, in place of the three smallest (73 MiB would exceed the
            // cap): the cache grows by 24 - 9 MiB.
            assert!(
                c1 >= c0 + 12 * MIB,
                "the 24 MiB mapping was not kept: cached {c0} -> {c1}"
            );
            let p = dirty_from_cache(20 * MIB, "the cached 24 MiB mapping was not reused");
            free(p, 20 * MIB);
        },
    );
}

/// `THPeligible` of the mapping in /proc/self/smaps that contains `p`.
fn thp_eligible(p: *const u8) -> Option<bool> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let addr = p as usize;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = lo <= addr && addr < hi;
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("THPeligible:") {
                return Some(v.trim() == "1");
            }
        }
    }
    None
}

/// Whether the kernel gives transparent huge pages to ranges that ask.
fn thp_on_request() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map(|s| s.contains("[madvise]") || s.contains("[always]"))
        .unwrap_or(false)
}

fn huge_object_eligibility() -> Option<bool> {
    let size = 20 * MIB;
    let p = dirty(size);
    // The middle of the object: whole 2 MiB-aligned stretches lie there.
    let e = thp_eligible(p.wrapping_add(size / 2));
    free(p, size);
    e
}

#[test]
fn huge_pages_on_from_environment() {
    in_child(
        "huge_pages_on_from_environment",
        &[("CHUNKMALLOC_HUGE_PAGES", "1")],
        || {
            assert!(chunkmalloc::config::huge_pages());
            if thp_on_request() {
                assert_eq!(huge_object_eligibility(), Some(true));
            }
        },
    );
}

#[test]
fn huge_pages_off_by_default() {
    in_child("huge_pages_off_by_default", &[], || {
        assert!(!chunkmalloc::config::huge_pages());
        let always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|s| s.contains("[always]"))
            .unwrap_or(false);
        if !always {
            assert_ne!(huge_object_eligibility(), Some(true));
        }
    });
}

//! Standard collections with millions of entries on chunkmalloc: contents
//! verified after construction and again after removing half. The four
//! tests run concurrently (the harness's threads), so they also exercise
//! several heaps growing and shrinking at once.

use std::collections::{BTreeMap, HashMap};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

fn value(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 7)
}

#[test]
fn vec_of_4m_u64() {
    const N: u64 = 4_000_000;
    // Grown by push (a long chain of reallocs across every size regime).
    let mut v: Vec<u64> = Vec::new();
    for i in 0..N {
        v.push(value(i));
    }
    assert_eq!(v.len(), N as usize);
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(x, value(i as u64), "index {i}");
    }
    // The buffer really is as big as it claims.
    // SAFETY: `v` is live; usable_size only reads allocator metadata.
    let usable = unsafe { chunkmalloc::usable_size(v.as_ptr().cast()) };
    assert!(usable >= v.capacity() * 8, "usable {usable} < capacity");

    // Remove every odd element, then shrink the buffer (a shrinking realloc).
    let mut i = 0u64;
    v.retain(|_| {
        i += 1;
        (i - 1) % 2 == 0
    });
    assert_eq!(v.len(), (N / 2) as usize);
    v.shrink_to_fit();
    assert_eq!(v.capacity(), v.len());
    for (k, &x) in v.iter().enumerate() {
        assert_eq!(x, value(2 * k as u64), "after removal, index {k}");
    }
    // Truncate to half again and shrink: the large-to-large shrink path.
    v.truncate(v.len() / 2);
    v.shrink_to_fit();
    for (k, &x) in v.iter().enumerate() {
        assert_eq!(x, value(2 * k as u64), "after truncate, index {k}");
    }
}

fn piece(i: usize) -> String {
    format!("{i:x};")
}

#[test]
fn string_of_1m_pieces() {
    const N: usize = 1_000_000;
    let mut s = String::new();
    let mut ends = Vec::with_capacity(N);
    for i in 0..N {
        s.push_str(&piece(i));
        ends.push(s.len());
    }
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        assert_eq!(&s[start..end], piece(i), "piece {i}");
        start = end;
    }
    assert_eq!(start, s.len());
    let parsed = s
        .split_terminator(';')
        .enumerate()
        .all(|(i, p)| usize::from_str_radix(p, 16) == Ok(i));
    assert!(parsed, "split/parse mismatch");

    // Remove the second half, shrink, and check the first half.
    let half = ends[N / 2 - 1];
    s.truncate(half);
    s.shrink_to_fit();
    assert_eq!(s.len(), half);
    let mut n = 0;
    for (i, p) in s.split_terminator(';').enumerate() {
        assert_eq!(
            usize::from_str_radix(p, 16),
            Ok(i),
            "after removal, piece {i}"
        );
        n += 1;
    }
    assert_eq!(n, N / 2);
    // And the removed half can be appended again.
    for i in N / 2..N {
        s.push_str(&piece(i));
    }
    assert_eq!(s.len(), *ends.last().unwrap());
    assert!(s
        .split_terminator(';')
        .enumerate()
        .all(|(i, p)| usize::from_str_radix(p, 16) == Ok(i)));
}

#[test]
fn hashmap_of_1m_strings() {
    const N: u64 = 1_000_000;
    let mut m: HashMap<u64, String> = HashMap::new();
    for i in 0..N {
        assert!(
            m.insert(value(i), i.to_string()).is_none(),
            "duplicate key {i}"
        );
    }
    assert_eq!(m.len(), N as usize);
    for i in 0..N {
        let got = m.get(&value(i)).map(|s| s.parse::<u64>());
        assert_eq!(got, Some(Ok(i)), "key {i}");
    }
    // Remove the odd ones.
    for i in (1..N).step_by(2) {
        let got = m.remove(&value(i)).map(|s| s.parse::<u64>());
        assert_eq!(got, Some(Ok(i)), "remove {i}");
    }
    m.shrink_to_fit();
    // N/2 entries and every even key present with its value: so exactly the
    // odd keys are gone.
    assert_eq!(m.len(), (N / 2) as usize);
    for i in (0..N).step_by(2) {
        let got = m.get(&value(i)).map(|s| s.parse::<u64>());
        assert_eq!(got, Some(Ok(i)), "kept {i}");
    }
    let sum: usize = m.values().map(|s| s.len()).sum();
    let want: usize = (0..N).step_by(2).map(|i| i.to_string().len()).sum();
    assert_eq!(sum, want);
}

#[test]
fn btreemap_of_1m() {
    const N: u64 = 1_000_000;
    // Insert in a scrambled order: i -> i * P mod N is a permutation of
    // 0..N because P is coprime to N = 2^6 * 5^6.
    const P: u64 = 999_983;
    // P^-1 mod N, so a key's position in the insertion order is k * P_INV.
    let p_inv = (1..N).find(|&x| x * P % N == 1).expect("P is invertible");
    let order = |i: u64| i * P % N;
    let mut m: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..N {
        assert!(m.insert(order(i), value(order(i))).is_none());
    }
    assert_eq!(m.len(), N as usize);
    for (k, (&key, &v)) in m.iter().enumerate() {
        assert_eq!(key, k as u64, "iteration order");
        assert_eq!(v, value(key));
    }
    // Remove the keys inserted first.
    for i in 0..N / 2 {
        assert_eq!(m.remove(&order(i)), Some(value(order(i))));
    }
    // N/2 distinct keys remain, all from the second half of the insertion
    // order and in ascending order: exactly the kept set.
    assert_eq!(m.len(), (N / 2) as usize);
    let mut prev = None;
    for (&k, &v) in &m {
        assert!(k * p_inv % N >= N / 2, "removed key {k} still present");
        assert_eq!(v, value(k));
        assert!(prev < Some(k));
        prev = Some(k);
    }
}

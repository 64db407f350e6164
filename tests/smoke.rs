use chunkmalloc::ChunkMalloc;
#[global_allocator]
static GLOBAL: ChunkMalloc = ChunkMalloc;

#[test]
fn smoke() {
    let mut v: Vec<Box<[u8]>> = Vec::new();
    for i in 0..100_000usize {
        let n = (i * 7919) % 3000 + 1;
        v.push(vec![(i % 251) as u8; n].into_boxed_slice());
    }
    for (i, b) in v.iter().enumerate() {
        assert!(b.iter().all(|&x| x == (i % 251) as u8));
    }
    drop(v);
    let s: String = (0..10000).map(|i| i.to_string()).collect();
    assert!(s.len() > 10000);
    let big = vec![1u8; 20 << 20];
    assert_eq!(big.iter().map(|&x| x as usize).sum::<usize>(), 20 << 20);
    let st = chunkmalloc::stats();
    eprintln!("{st:?}");
}

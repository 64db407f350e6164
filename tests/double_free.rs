//! A double free of a block whose chunk has no other block out is detected
//! (the chunk's `used` count would wrap), undone and reported, in every
//! build profile: it must not panic out of the allocator (a debug build's
//! arithmetic check used to do exactly that) and must lose nothing, i.e.
//! the block is not handed out twice afterwards.

mod common;

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: chunkmalloc::ChunkMalloc = chunkmalloc::ChunkMalloc;

#[test]
fn double_free_into_an_empty_chunk_is_reported_and_undone() {
    let out = common::in_child(
        "double_free_into_an_empty_chunk_is_reported_and_undone",
        &[],
        || {
            // A size class nothing else in this process uses: its chunk
            // holds only our block.
            let layout = Layout::from_size_align(37_000, 16).unwrap();
            // SAFETY: allocating and freeing through the global allocator;
            // the second dealloc is the double free under test.
            unsafe {
                let p = GLOBAL.alloc(layout);
                assert!(!p.is_null());
                p.write_bytes(0x5A, layout.size());
                GLOBAL.dealloc(p, layout);
                GLOBAL.dealloc(p, layout);
                // Nothing was lost or duplicated: the next blocks are
                // distinct, usable and aligned.
                let a = GLOBAL.alloc(layout);
                let b = GLOBAL.alloc(layout);
                assert!(!a.is_null() && !b.is_null());
                assert_ne!(a, b, "the double-freed block is handed out once");
                a.write_bytes(1, layout.size());
                b.write_bytes(2, layout.size());
                assert!(std::slice::from_raw_parts(a, layout.size())
                    .iter()
                    .all(|&x| x == 1));
                GLOBAL.dealloc(a, layout);
                GLOBAL.dealloc(b, layout);
            }
        },
    );
    if !common::is_child("double_free_into_an_empty_chunk_is_reported_and_undone") {
        assert!(
            out.contains("already freed"),
            "the double free is reported on stderr:\n{out}"
        );
    }
}

//! A double free of a block whose chunk has no other block out is detected
//! (the chunk's `used` count would wrap), undone and reported, in every
//! build profile: it must not panic out of the allocator (a debug build's
//! arithmetic check used to do exactly that) and must lose nothing, i.e.
//! the block is not handed out twice afterwards. A `realloc` of a pointer
//! chunkmalloc never handed out (inside a large object, on the stack) is
//! reported and changes nothing.

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

/// `realloc` of a pointer into the middle of a large object, or of one
/// chunkmalloc never handed out, is reported and changes nothing: the
/// object keeps its size and contents (an interior pointer used to pass
/// the in-place test, which rewrote the object's size, before the
/// validity check refused it).
#[test]
fn realloc_of_a_pointer_never_handed_out_is_reported_and_changes_nothing() {
    let name = "realloc_of_a_pointer_never_handed_out_is_reported_and_changes_nothing";
    let out = common::in_child(name, &[], || {
        let layout = Layout::from_size_align(100 << 10, 16).unwrap();
        // SAFETY: a live large object; the interior and stack pointers are
        // only handed to the checked realloc, which must refuse them.
        unsafe {
            let p = GLOBAL.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(0x6B, layout.size());
            let usable = chunkmalloc::usable_size(p);
            let inner = p.add(4096);
            assert_eq!(
                chunkmalloc::thread::realloc_checked(inner, 90 << 10, 16),
                None
            );
            let mut local = [0u8; 64];
            assert_eq!(
                chunkmalloc::thread::realloc_checked(local.as_mut_ptr(), 128, 16),
                None
            );
            assert_eq!(
                chunkmalloc::usable_size(p),
                usable,
                "the object was resized"
            );
            assert!(std::slice::from_raw_parts(p, layout.size())
                .iter()
                .all(|&x| x == 0x6B));
            // The real pointer still resizes.
            let q = chunkmalloc::thread::realloc_checked(p, 90 << 10, 16).unwrap();
            assert!(!q.is_null());
            assert!(std::slice::from_raw_parts(q, 90 << 10)
                .iter()
                .all(|&x| x == 0x6B));
            GLOBAL.dealloc(q, Layout::from_size_align(90 << 10, 16).unwrap());
        }
    });
    if !common::is_child(name) {
        assert!(
            out.matches("realloc").count() >= 2,
            "both bad pointers are reported on stderr:\n{out}"
        );
    }
}

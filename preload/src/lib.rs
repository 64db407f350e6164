//! `libchunkmalloc.so`: chunkmalloc's C ABI (`malloc`, `free`, `calloc`,
//! `realloc`, the aligned variants, `malloc_usable_size`, the glibc
//! `__libc_*` aliases, `mallinfo2`, `malloc_trim`, ...) for `LD_PRELOAD`.
//!
//! The exports live in `chunkmalloc::ffi`; this crate only links them into
//! a shared object and routes the library's own Rust allocations to
//! chunkmalloc directly, so they never go through the exported `malloc`
//! (with `std::alloc::System` they would re-enter it through the PLT).

pub use chunkmalloc_core::ffi::*;

#[global_allocator]
static GLOBAL: chunkmalloc_core::ChunkMalloc = chunkmalloc_core::ChunkMalloc;

//! `libchunkmalloc.so`: chunkmalloc's C ABI (`malloc`, `free`, `calloc`,
//! `realloc`, the aligned variants, `malloc_usable_size`, the glibc
//! `__libc_*` aliases, `mallinfo2`, `malloc_trim`, ...) for `LD_PRELOAD`.
//!
//! The exports live in `chunkmalloc::ffi`; this crate only links them into
//! a shared object.
//!
//! Built with `panic = "abort"` (the release profile) the library is
//! `#![no_std]`, and so is chunkmalloc under `ffi` (see its `lib.rs`): it
//! links no Rust std, so neither std's backtrace and formatting code
//! (about 240 KiB of text) nor `libgcc_s.so.1` (std's unwinder) is loaded
//! into every process. Nothing in it allocates, so it has no global
//! allocator; a panic (a bug: no path is meant to panic) aborts through
//! [`os::fatal`](chunkmalloc_core::os::fatal). Built with unwinding (the
//! dev profile, which a `no_std` cdylib cannot use on stable Rust), with
//! `dynamic-tls` or off x86-64 Linux (where the heap pointer is a std
//! `thread_local!`), it links
//! std and routes std's allocations to chunkmalloc directly, so they never
//! go through the exported `malloc` (with `std::alloc::System` they would
//! re-enter it through the PLT).

#![cfg_attr(
    all(
        panic = "abort",
        target_arch = "x86_64",
        target_os = "linux",
        not(feature = "dynamic-tls")
    ),
    no_std
)]

pub use chunkmalloc_core::ffi::*;

#[cfg(not(all(
    panic = "abort",
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "dynamic-tls")
)))]
#[global_allocator]
static GLOBAL: chunkmalloc_core::ChunkMalloc = chunkmalloc_core::ChunkMalloc;

/// What a `no_std` library needs that std would bring: libc, and a panic
/// handler.
#[cfg(all(
    panic = "abort",
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "dynamic-tls")
))]
mod no_std_runtime {
    // Without std nothing else asks for libc; `-lc` through the compiler
    // driver also brings glibc's `libc_nonshared.a` (`atexit` lives there).
    #[link(name = "c")]
    extern "C" {}

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        chunkmalloc_core::os::fatal("panic inside the allocator")
    }
}

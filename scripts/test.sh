#!/usr/bin/env bash
# The project's test command (README "Quick start"):
#   1. every Rust test (unit, integration with chunkmalloc as the global
#      allocator, in debug and release builds; the test-hook race tests,
#      doc tests, loom models);
#   2. the preload library under LD_PRELOAD: the C conformance, stress,
#      fork and budget programs, and real programs (python3, git, gcc,
#      perl, sqlite3, ruby) compared with and without it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
# The unit and integration tests again, optimised: what users link is a
# release build, and only there may the compiler drop an allocation that
# nothing reads (six scenarios of two test files did not test what they
# meant in release until they kept theirs with `black_box`).
cargo test --workspace --release --tests "$@"
# The remote free parked at its worst moment (test-only hooks).
cargo test -p chunkmalloc --features test-hooks --test remote_free_race "$@"
cargo test --workspace --doc "$@"
# Loom models of the cross-thread protocols (the crate's own code on
# loom's atomics; a target directory of their own, as --cfg loom changes
# every crate's build). Three preemptions explore the orderings these
# small models have in a few seconds.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
    cargo test -p chunkmalloc --release --test loom "$@"
cargo build --release -p chunkmalloc-preload
bash scripts/preload-tests.sh "$PWD/target/release/libchunkmalloc.so"

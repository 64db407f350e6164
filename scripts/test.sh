#!/usr/bin/env bash
# The project's test command (README "Quick start"): every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
cargo test --doc "$@"

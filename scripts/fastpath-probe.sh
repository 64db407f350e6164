#!/usr/bin/env bash
# Instructions per malloc+free pair, by callgrind, for chunkmalloc and the
# allocators it is compared with. Each figure is the difference between two
# runs of examples/probe.rs (n and 2n operations) divided by n, so start-up
# and warm-up cancel out; the harness's own cost (the same loop over an
# allocator that does nothing) is subtracted.
# Usage: scripts/fastpath-probe.sh [n] [allocators...]
#   allocators: chunkmalloc mimalloc jemalloc system (called in-process
#   through GlobalAlloc), or preload:NAME=PATH.so, which calls libc's
#   malloc/free (Rust's System allocator) with PATH.so preloaded, as a C
#   program would; preload rows include the PLT call and System's own
#   alignment check (about 3 instructions) beyond the in-process rows.
#   --preload adds rows for libchunkmalloc.so and, through
#   scripts/anchors.sh (the libraries scripts/bench.sh compares against,
#   cached in target/bench-libs/), mimalloc 3, snmalloc, tcmalloc, jemalloc
#   and mimalloc 2 where they can be had, and glibc.
set -euo pipefail
cd "$(dirname "$0")/.."
preload=0
if [ "${1:-}" = --preload ]; then preload=1; shift; fi
n=${1:-200000}
shift || true
allocs=("$@")
[ ${#allocs[@]} -gt 0 ] || allocs=(chunkmalloc mimalloc jemalloc system)
if [ $preload = 1 ]; then
  cargo build --release -p chunkmalloc-preload -q
  allocs+=("preload:chunkmalloc=$PWD/target/release/libchunkmalloc.so")
  ANCHOR_LOG_PREFIX=fastpath-probe.sh
  # shellcheck source=scripts/anchors.sh
  . scripts/anchors.sh
  for a in "${ANCHOR_NAMES[@]}"; do
    if anchor_setup "$a"; then
      allocs+=("preload:$ANCHOR_LABEL=$ANCHOR_LIB")
    else
      echo "fastpath-probe.sh: no $a row: $ANCHOR_WHY" >&2
    fi
  done
  allocs+=("preload:glibc $(anchor_glibc_version)=")
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --example probe -q
bin=target/release/examples/probe
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ir() { # allocator scenario n -> total instructions; on failure the program's own messages go to $tmp/why
  local lib="" a=$1
  if [[ $a == preload:* ]]; then lib=${a#*=}; a=system; fi
  if ! LD_PRELOAD=$lib valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" "$a" "$2" "$3" >/dev/null 2>"$tmp/err"; then
    grep -v '^==' "$tmp/err" | grep . | head -n3 | tr '\n' ' ' >"$tmp/why"
    return 1
  fi
  grep -E '^summary:|^totals:' "$tmp/out" | head -1 | awk '{print $2}'
}
per_op() { # allocator scenario -> instructions per pair, harness included
  local lo hi
  lo=$(ir "$1" "$2" "$n") && hi=$(ir "$1" "$2" $((2 * n))) || return 1
  awk -v a="$lo" -v b="$hi" -v n="$n" 'BEGIN{printf "%.2f", (b-a)/n}'
}
declare -A base
for s in single batch remote; do
  base[$s]=$(per_op noop "$s") || { echo "the probe's harness run failed: $(cat "$tmp/why")" >&2; exit 1; }
done
printf '%-30s %10s %10s %10s   (instructions per malloc+free pair, harness of %s/%s/%s subtracted)\n' \
  allocator single batch remote "${base[single]}" "${base[batch]}" "${base[remote]}"
for a in "${allocs[@]}"; do
  row=() why=""
  for s in single batch remote; do
    if [[ -z $why ]] && v=$(per_op "$a" "$s"); then
      row+=("$(awk -v v="$v" -v b="${base[$s]}" 'BEGIN{printf "%.1f", v-b}')")
    else
      row+=(failed)
      [[ -n $why ]] || why=$(cat "$tmp/why")
    fi
  done
  name=$a
  [[ $a == preload:* ]] && { name=${a#preload:}; name="${name%%=*} (LD_PRELOAD)"; }
  printf '%-30s %10s %10s %10s\n' "$name" "${row[@]}"
  [[ -z $why ]] || printf '%-30s (does not run under valgrind: %s)\n' "" "${why% }"
done

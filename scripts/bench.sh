#!/usr/bin/env bash
# scripts/bench.sh - whole-program allocator comparison (wall time, peak RSS
# and minor page faults).
#
# Runs every workload under each available allocator - glibc (no preload),
# and through LD_PRELOAD mimalloc 3 and snmalloc (built from the sources
# bundled in the libmimalloc-sys and snmalloc-sys crates), tcmalloc, jemalloc
# and mimalloc 2 (Debian packages) and chunkmalloc
# (target/release/libchunkmalloc.so) - for N repetitions in rotating order,
# checks exit codes and output checksums against glibc, and writes
# results.csv, report.md and chart.svg into a report folder.  The anchors
# are obtained by scripts/anchors.sh.  Run `scripts/bench.sh --help` for
# options.
set -euo pipefail
shopt -s inherit_errexit nullglob

usage() {
    cat <<'EOF'
usage: scripts/bench.sh [options]

  --quick          scale 0.1 and 1 repetition (a smoke run, under 2 minutes
                   once the anchors are built)
  --reps N         repetitions per workload and allocator (default 5)
  --scale X        workload scale factor (default 1.0; --quick sets 0.1)
  --out DIR        report folder (default target/bench-report/<timestamp>,
                   and target/bench-report/latest points to it)
  --only A,B,...   run only these workloads (a program name such as
                   "pareto" selects all of its entries); see --list
  --alloc A,B,...  run only these allocators: glibc, mimalloc3 (or mimalloc),
                   snmalloc, tcmalloc, jemalloc, mimalloc2, chunkmalloc
  --no-build       do not build chunkmalloc or the workloads; use what exists
  --timeout SEC    per-run time limit (default 60 + 90 * scale seconds); a
                   workload that times out under an allocator is not run
                   again under that allocator
  --list           list the workloads and exit
  -h, --help       this text

Environment: BENCH_NO_APT=1 never uses apt-get (exercises the fallbacks);
ANCHOR_REFRESH=1 fetches the newest libmimalloc-sys / snmalloc-sys sources
again (they are fetched once into target/bench-libs/crates, and the built
libraries are cached in target/bench-libs/<name>-<version>/);
BENCH_CHUNKMALLOC_LIB=PATH benchmarks that library as chunkmalloc instead of
building target/release/libchunkmalloc.so; BENCH_NO_PERF_MD=1 leaves
docs/PERF.md alone. A full run (not --quick, --only or --alloc) also runs
scripts/fastpath-probe.sh --preload (when valgrind exists) into the report
and copies the report into docs/PERF.md (scripts/update_perf_md.py).
Exit status: 0 when every run passed, 1 on usage/setup errors, 3 when some
run failed or printed a checksum that differs from glibc's (the report is
still written).
EOF
}

die() { printf 'bench.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '%s\n' "$*" >&2; }
note() { printf 'bench.sh: %s\n' "$*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
unset LD_PRELOAD

# ------------------------------------------------------------------ options
SCALE="" REPS="" OUT="" ONLY="" ALLOC_ONLY="" NO_BUILD=0 QUICK=0 TIMEOUT="" LIST=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1 ;;
        --reps) [[ $# -ge 2 ]] || die "--reps needs a value"; REPS=$2; shift ;;
        --reps=*) REPS=${1#*=} ;;
        --scale) [[ $# -ge 2 ]] || die "--scale needs a value"; SCALE=$2; shift ;;
        --scale=*) SCALE=${1#*=} ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT=$2; shift ;;
        --out=*) OUT=${1#*=} ;;
        --only) [[ $# -ge 2 ]] || die "--only needs a value"; ONLY=$2; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --alloc) [[ $# -ge 2 ]] || die "--alloc needs a value"; ALLOC_ONLY=$2; shift ;;
        --alloc=*) ALLOC_ONLY=${1#*=} ;;
        --timeout) [[ $# -ge 2 ]] || die "--timeout needs a value"; TIMEOUT=$2; shift ;;
        --timeout=*) TIMEOUT=${1#*=} ;;
        --no-build) NO_BUILD=1 ;;
        --list) LIST=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
    shift
done
if [[ $QUICK == 1 ]]; then
    : "${SCALE:=0.1}" "${REPS:=1}"
fi
: "${SCALE:=1.0}" "${REPS:=5}"
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer, got '$REPS'"
[[ $SCALE =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && awk -v s="$SCALE" 'BEGIN { exit !(s > 0 && s <= 1000) }' ||
    die "--scale wants a number in (0, 1000], got '$SCALE'"
[[ -n $TIMEOUT ]] || TIMEOUT=$(awk -v s="$SCALE" 'BEGIN { printf "%d", 60 + 90 * s }')
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout wants a positive integer number of seconds"

ANCHOR_LOG_PREFIX=bench.sh
if [[ $NO_BUILD == 1 ]]; then ANCHOR_NO_BUILD=1; fi
# shellcheck source=scripts/anchors.sh
. "$ROOT/scripts/anchors.sh"

if [[ -n $ALLOC_ONLY ]]; then
    IFS=, read -r -a _a <<<"$ALLOC_ONLY"
    ALLOC_ONLY=""
    for a in "${_a[@]}"; do
        [[ $a == mimalloc ]] && a=mimalloc3
        [[ -z $a || $a == glibc || $a == chunkmalloc || -n ${ANCHOR_TITLE[$a]:-} ]] ||
            die "unknown allocator '$a' (glibc, ${ANCHOR_NAMES[*]}, chunkmalloc)"
        ALLOC_ONLY+=",$a"
    done
    ALLOC_ONLY=${ALLOC_ONLY#,}
fi

TARGET=$ROOT/target
BIN=$TARGET/bench-bin
LIBS=$TARGET/bench-libs
GEN=$TARGET/bench-gen/scale-$SCALE
WL_SRC=$ROOT/bench/workloads
PROG_SRC=$ROOT/bench/programs
START_TS=$(date +%s)

# ------------------------------------------------------------------ workloads
# entry name -> (kind, binary or program, extra arguments, description)
declare -A WL_KIND WL_PROG WL_ARGS WL_DESC
WORKLOADS=()

c_description() { # first paragraph of the header comment: " * name - text ..."
    awk 'NR == 1 { next }
         /^ \*\/?$/ || /^ \*\// { exit }
         { sub(/^ \* ?/, ""); text = text (text == "" ? "" : " ") $0 }
         END { sub(/^[a-z0-9_]+ - /, "", text); sub(/\.$/, "", text); print text }' "$1"
}

add_workload() { # name kind prog args description
    WORKLOADS+=("$1")
    WL_KIND[$1]=$2 WL_PROG[$1]=$3 WL_ARGS[$1]=$4 WL_DESC[$1]=$5
}

# C workloads in a fixed order; new files in bench/workloads are appended
C_ORDER=(smallobj_churn lifo_sets fifo_sets larson prodcons false_passive false_active
    thread_churn longlived_thread brief_threads large_blocks cycling_buffers pareto realloc_grow fragmentation)
declare -A seen=()
c_files=()
for n in "${C_ORDER[@]}"; do
    if [[ -f $WL_SRC/$n.c ]]; then c_files+=("$n"); seen[$n]=1; fi
done
for f in "$WL_SRC"/*.c; do
    n=$(basename "$f" .c)
    [[ -n ${seen[$n]:-} ]] || c_files+=("$n")
done
for n in "${c_files[@]}"; do
    desc=$(c_description "$WL_SRC/$n.c")
    if [[ $n == pareto ]]; then
        for t in 1 2 4; do add_workload "pareto_${t}t" c pareto "$t" "$desc, $t thread(s)"; done
    else
        add_workload "$n" c "$n" "" "$desc"
    fi
done
add_workload py_json program python "" "CPython (PYTHONMALLOC=malloc): JSON round trips, dict/list/str churn (bench/programs/py_bench.py)"
add_workload gcc_compile program gcc "" "gcc -O1 -c on a generated C file (bench/programs/gen_inputs.py cfile)"
add_workload git_repo program git "" "git init, fast-import, checkout, add, commit, log -p, diff, gc, fsck on a generated repository"
add_workload sqlite program sqlite3 "" "sqlite3 :memory: running a generated SQL script (inserts, indexes, joins, group by)"

if [[ $LIST == 1 ]]; then
    for w in "${WORKLOADS[@]}"; do printf '%-18s %s\n' "$w" "${WL_DESC[$w]}"; done
    exit 0
fi

if [[ -n $ONLY ]]; then
    selected=()
    IFS=, read -r -a want <<<"$ONLY"
    for x in "${want[@]}"; do
        [[ -z $x ]] && continue
        hit=0
        for w in "${WORKLOADS[@]}"; do
            if [[ $w == "$x" || ${WL_PROG[$w]} == "$x" && ${WL_KIND[$w]} == c ]]; then
                [[ " ${selected[*]-} " == *" $w "* ]] || selected+=("$w")
                hit=1
            fi
        done
        [[ $hit == 1 ]] || die "unknown workload '$x' (see --list)"
    done
    WORKLOADS=("${selected[@]}")
fi
[[ ${#WORKLOADS[@]} -gt 0 ]] || die "no workload selected"

# ------------------------------------------------------------------ tools

if [[ ! -x /usr/bin/time ]]; then
    apt_install time || true
    [[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is missing; install the 'time' package"
fi
command -v cc >/dev/null || die "no C compiler (cc) found"
command -v python3 >/dev/null || die "python3 is needed for the report"
command -v timeout >/dev/null || die "timeout (coreutils) is missing"
# the real interpreter, not a pyenv-style wrapper script
PYTHON=$(python3 -c 'import sys; print(sys.executable)')

mkdir -p "$BIN" "$LIBS"

# ------------------------------------------------------------------ allocators
ALLOCS=(glibc)
declare -A ALLOC_LIB=([glibc]="") ALLOC_VER ALLOC_SRC ALLOC_LABEL
ALLOC_VER[glibc]=$(anchor_glibc_version)
ALLOC_SRC[glibc]="system C library (no preload)"
ALLOC_LABEL[glibc]="glibc ${ALLOC_VER[glibc]}"
SKIPPED=()

want_alloc() { [[ -z $ALLOC_ONLY || ",$ALLOC_ONLY," == *",$1,"* ]]; }
skip_alloc() { SKIPPED+=("$1: $2"); note "skipping $1: $2"; }

# build the probe that tells which library provides malloc
PROBE=$BIN/which_malloc
if [[ $NO_BUILD == 0 || ! -x $PROBE ]]; then
    cc -O2 -o "$PROBE" "$ROOT/bench/tools/which_malloc.c" -ldl || die "cannot build bench/tools/which_malloc.c"
fi

# register NAME LIB VERSION SOURCE LABEL: check that the preload really takes over malloc
register_alloc() {
    local name=$1 lib=$2 out got
    out=$(env LD_PRELOAD="$lib" "$PROBE" 2>&1) || true
    got=$(env LD_PRELOAD="$lib" "$PROBE" 2>/dev/null | sed -n 1p) || true
    if [[ -z $got || $(readlink -f "$got" 2>/dev/null) != "$(readlink -f "$lib")" ]]; then
        skip_alloc "$5" "LD_PRELOAD=$lib does not take over malloc (probe says: ${out//$'\n'/ })"
        return 0
    fi
    ALLOCS+=("$name")
    ALLOC_LIB[$name]=$lib ALLOC_VER[$name]=$3 ALLOC_SRC[$name]=$4 ALLOC_LABEL[$name]=$5
    note "$5: $lib"
}

setup_anchor() { # NAME: mimalloc3, snmalloc, ... (scripts/anchors.sh)
    if anchor_setup "$1"; then
        register_alloc "$1" "$ANCHOR_LIB" "$ANCHOR_VER" "$ANCHOR_FROM" "$ANCHOR_LABEL"
    else
        skip_alloc "$1" "$ANCHOR_WHY"
    fi
}

setup_chunkmalloc() {
    local lib=$TARGET/release/libchunkmalloc.so ver
    ver=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?")
    if [[ -n ${BENCH_CHUNKMALLOC_LIB:-} ]]; then # explicit library, e.g. another build
        [[ -f $BENCH_CHUNKMALLOC_LIB ]] || die "BENCH_CHUNKMALLOC_LIB=$BENCH_CHUNKMALLOC_LIB does not exist"
        register_alloc chunkmalloc "$(readlink -f "$BENCH_CHUNKMALLOC_LIB")" "given by BENCH_CHUNKMALLOC_LIB" \
            "$BENCH_CHUNKMALLOC_LIB" "chunkmalloc ($(basename "$BENCH_CHUNKMALLOC_LIB"))"
        return 0
    fi
    if [[ -d $ROOT/preload ]]; then
        if [[ $NO_BUILD == 0 ]]; then
            if ! command -v cargo >/dev/null; then
                note "cargo not found: not building chunkmalloc-preload"
            else
                note "building chunkmalloc: cargo build --release -p chunkmalloc-preload"
                if ! cargo build --release -p chunkmalloc-preload >&2; then
                    skip_alloc chunkmalloc "cargo build --release -p chunkmalloc-preload failed"
                    return 0
                fi
            fi
        fi
    elif [[ ! -f $lib ]]; then
        skip_alloc chunkmalloc "no preload/ crate in this checkout yet and no $lib"
        return 0
    fi
    if [[ ! -f $lib ]]; then
        skip_alloc chunkmalloc "$lib was not produced"
        return 0
    fi
    register_alloc chunkmalloc "$lib" "$ver" "this repository (target/release/libchunkmalloc.so)" "chunkmalloc $ver"
}

want_alloc glibc || ALLOCS=()
for a in "${ANCHOR_NAMES[@]}"; do
    if want_alloc "$a"; then setup_anchor "$a"; fi
done
if want_alloc chunkmalloc; then setup_chunkmalloc; fi
[[ ${#ALLOCS[@]} -gt 0 ]] || die "no allocator available"

# ------------------------------------------------------------------ build workloads
need_build() { # out src... : out missing or older than a source
    local out=$1 s
    shift
    [[ -x $out ]] || return 0
    for s in "$@"; do [[ $s -nt $out ]] && return 0; done
    return 1
}

declare -A built=()
for w in "${WORKLOADS[@]}"; do
    [[ ${WL_KIND[$w]} == c ]] || continue
    p=${WL_PROG[$w]}
    [[ -n ${built[$p]:-} ]] && continue
    built[$p]=1
    if [[ $NO_BUILD == 1 ]]; then
        [[ -x $BIN/$p ]] || die "--no-build but $BIN/$p does not exist"
    elif need_build "$BIN/$p" "$WL_SRC/$p.c" "$WL_SRC/wl.h"; then
        note "compiling $p"
        cc -O2 -pthread -Wall -o "$BIN/$p" "$WL_SRC/$p.c" -lm || die "compiling bench/workloads/$p.c failed"
    fi
done

# ------------------------------------------------------------------ program inputs
gen_input() { # kind path : (re)generate when missing or older than the generator
    local kind=$1 path=$2
    if [[ ! -e $path || $PROG_SRC/gen_inputs.py -nt $path ]]; then
        rm -rf "$path"
        mkdir -p "$(dirname "$path")"
        note "generating $kind input for scale $SCALE"
        "$PYTHON" "$PROG_SRC/gen_inputs.py" "$kind" "$SCALE" "$path.tmp"
        mv "$path.tmp" "$path"
    fi
}

keep=()
for w in "${WORKLOADS[@]}"; do
    ok=1
    case $w in
        gcc_compile)
            if command -v gcc >/dev/null; then gen_input cfile "$GEN/big.c"; else
                note "skipping gcc_compile: gcc not found"; ok=0; fi ;;
        git_repo)
            if command -v git >/dev/null; then gen_input git "$GEN/git"; else
                note "skipping git_repo: git not found"; ok=0; fi ;;
        sqlite)
            command -v sqlite3 >/dev/null || apt_install sqlite3 || true
            if command -v sqlite3 >/dev/null; then gen_input sql "$GEN/script.sql"; else
                note "skipping sqlite: sqlite3 not found and cannot be installed"; ok=0; fi ;;
    esac
    if [[ $ok == 1 ]]; then keep+=("$w"); fi
done
WORKLOADS=("${keep[@]}")
[[ ${#WORKLOADS[@]} -gt 0 ]] || die "no workload can run"

# ------------------------------------------------------------------ report folder
if [[ -z $OUT ]]; then
    stamp=$(date +%Y%m%d-%H%M%S)
    OUT=$TARGET/bench-report/$stamp
    mkdir -p "$OUT"
    ln -sfn "$stamp" "$TARGET/bench-report/latest"
else
    mkdir -p "$OUT"
fi
OUT=$(cd "$OUT" && pwd)
LOGDIR=$OUT/logs
mkdir -p "$LOGDIR"

if [[ -d /dev/shm && -w /dev/shm ]]; then
    WORKTMP=$(mktemp -d /dev/shm/chunkmalloc-bench.XXXXXX)
else
    mkdir -p "$TARGET/tmp"
    WORKTMP=$(mktemp -d "$TARGET/tmp/bench.XXXXXX")
fi
trap 'rm -rf "$WORKTMP"' EXIT

# ------------------------------------------------------------------ running
# wl_command NAME: sets CMD (array), STDIN and CHECK (how to get the checksum)
wl_command() {
    local w=$1
    STDIN=/dev/null CHECK=stdout-line RUN_DIR=$WORKTMP/run
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    case ${WL_KIND[$w]} in
        c)
            CMD=("$BIN/${WL_PROG[$w]}" "$SCALE")
            if [[ -n ${WL_ARGS[$w]} ]]; then CMD+=("${WL_ARGS[$w]}"); fi
            ;;
        *)
            case $w in
                py_json) CMD=(env PYTHONMALLOC=malloc PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
                    "$PYTHON" "$PROG_SRC/py_bench.py" "$SCALE") ;;
                gcc_compile) CMD=(gcc -O1 -c "$GEN/big.c" -o "$RUN_DIR/big.o"); CHECK=file:$RUN_DIR/big.o ;;
                git_repo) CMD=(bash "$PROG_SRC/git_bench.sh" "$GEN/git" "$RUN_DIR/git") ;;
                sqlite) CMD=(sqlite3 -batch :memory:); STDIN=$GEN/script.sql; CHECK=stdout-hash ;;
                *) die "no command for workload $w" ;;
            esac
            ;;
    esac
}

RUNS_CSV=$OUT/runs.csv
echo "workload,alloc_id,allocator,rep,wall_s,user_s,sys_s,maxrss_kib,minflt,status,checksum" >"$RUNS_CSV"
declare -A REF=() SUM=() STATUS=() TIMED_OUT=()
FAILS=0

# run_one WORKLOAD ALLOC REP: sets R_WALL R_USER R_SYS R_RSS R_FLT R_STATUS R_SUM
run_one() {
    local w=$1 a=$2 rep=$3 tag="$1.$2.$3" rc=0 lib=${ALLOC_LIB[$2]}
    local out=$LOGDIR/$tag.out err=$LOGDIR/$tag.err tf=$LOGDIR/$tag.time
    wl_command "$w"
    local pre=(env -u LD_PRELOAD)
    [[ -n $lib ]] && pre=(env LD_PRELOAD="$lib")
    (
        cd "$RUN_DIR"
        export WORKLOAD_SCALE=$SCALE LC_ALL=C
        ulimit -c 0 # no core dumps from crashing runs
        exec /usr/bin/time -f '%e %U %S %M %R' -o "$tf" \
            timeout -k 5 "$TIMEOUT" "${pre[@]}" "${CMD[@]}" <"$STDIN" >"$out" 2>"$err"
    ) || rc=$?
    R_WALL="" R_USER="" R_SYS="" R_RSS="" R_FLT="" R_SUM="" R_STATUS=ok
    if [[ -s $tf ]]; then
        read -r R_WALL R_USER R_SYS R_RSS R_FLT < <(tail -n1 "$tf") || true
    fi
    if [[ $rc == 124 || $rc == 137 ]]; then
        R_STATUS="timeout after ${TIMEOUT}s"
    elif [[ $rc != 0 ]]; then
        R_STATUS="exit $rc"
        [[ $rc -gt 128 ]] && R_STATUS="killed by signal $((rc - 128))"
        grep -q 'terminated by signal' "$tf" 2>/dev/null && R_STATUS="killed: $(grep -o 'signal [0-9]*' "$tf" | sed -n 1p)"
    elif grep -q 'cannot be preloaded' "$err"; then
        R_STATUS="preload failed"
    elif ! [[ $R_WALL =~ ^[0-9.]+$ && $R_RSS =~ ^[0-9]+$ ]]; then
        R_STATUS="no timing"
    fi
    case $CHECK in
        stdout-line) R_SUM=$(grep '^checksum ' "$out" | tail -n1 | awk '{print $NF}') || true ;;
        stdout-hash) R_SUM=$(sha256sum <"$out" | cut -c1-16) ;;
        file:*) if [[ -f ${CHECK#file:} ]]; then R_SUM=$(sha256sum <"${CHECK#file:}" | cut -c1-16); fi ;;
    esac
    if [[ $R_STATUS == ok && -z $R_SUM ]]; then R_STATUS="no checksum"; fi
    # keep the logs of failed runs (and any stderr output)
    [[ -s $err ]] || rm -f "$err"
    if [[ $R_STATUS == ok ]]; then rm -f "$tf" "$out"; fi
    rm -rf "$RUN_DIR"
}

fail_run() { # w a rep reason
    FAILS=$((FAILS + 1))
    printf '%s,%s,%s,%s,"%s"\n' "$1" "$2" "${ALLOC_LABEL[$2]}" "$3" "${4//\"/\'}" >>"$OUT/failures.csv"
    note "FAILED: $1 under ${ALLOC_LABEL[$2]} (rep $3): $4"
}

check_sum() { # w a rep : compare with the reference; returns 1 on mismatch
    local w=$1 a=$2 rep=$3 ref=${REF[$1]:-}
    [[ -n $ref ]] || return 0
    if [[ ${SUM[$w,$a,$rep]} != "$ref" ]]; then
        STATUS[$w,$a,$rep]=mismatch
        fail_run "$w" "$a" "$rep" "checksum ${SUM[$w,$a,$rep]} differs from glibc's $ref"
        return 1
    fi
}

echo "workload,alloc_id,allocator,rep,reason" >"$OUT/failures.csv"
NW=${#WORKLOADS[@]} NA=${#ALLOCS[@]}
TOTAL=$((REPS * NW * NA))
REF_ALLOC=glibc
[[ " ${ALLOCS[*]} " == *" glibc "* ]] || REF_ALLOC=${ALLOCS[0]}
labels=$(for a in "${ALLOCS[@]}"; do printf '%s, ' "${ALLOC_LABEL[$a]}"; done)
note "running $NW workload(s) x $NA allocator(s) [${labels%, }] x $REPS rep(s) at scale $SCALE = $TOTAL runs"
note "report folder: $OUT"
# progress W A: "[rep 2/5] larson under snmalloc 0.7.6 (37/190 runs left, ~4m left) ... "
# The estimate counts each run left at the mean duration of that workload's
# runs so far (of all runs so far for a workload not yet run).
declare -A WL_US=() WL_N=()
RUN_US=0
usecs() { local t=${EPOCHREALTIME/[.,]/}; printf '%s' "$((10#$t))"; }
progress() {
    local left=$((TOTAL - i)) eta="" t=0 x n wx
    if [[ $i -gt 0 ]]; then
        for ((x = 0; x < NW; x++)); do
            wx=${WORKLOADS[$x]}
            n=$(((REPS - rep) * NA))
            if ((x > wi)); then n=$((n + NA)); elif ((x == wi)); then n=$((n + NA - k)); fi
            if [[ -n ${WL_N[$wx]:-} ]]; then
                t=$((t + n * WL_US[$wx] / WL_N[$wx]))
            else
                t=$((t + n * (RUN_US / i)))
            fi
        done
        t=$(((t + 500000) / 1000000))
        if [[ $t -ge 90 ]]; then eta=", ~$(((t + 30) / 60))m left"; else eta=", ~${t}s left"; fi
    fi
    printf '[rep %d/%d] %s under %s (%d/%d runs left%s) ... ' "$rep" "$REPS" "$1" "${ALLOC_LABEL[$2]}" \
        "$left" "$TOTAL" "$eta" >&2
}

i=0
BENCH_T0=$(date +%s)
for ((rep = 1; rep <= REPS; rep++)); do
    for ((wi = 0; wi < NW; wi++)); do
        w=${WORKLOADS[$wi]}
        # rotate the allocator order per repetition and per workload
        off=$(((rep - 1 + wi) % NA))
        order=("${ALLOCS[@]:off}" "${ALLOCS[@]:0:off}")
        k=0
        for a in "${order[@]}"; do
            progress "$w" "$a"
            t_start=$(usecs)
            if [[ -n ${TIMED_OUT[$w,$a]:-} ]]; then
                # do not wait for the same hang again
                R_WALL="" R_USER="" R_SYS="" R_RSS="" R_FLT="" R_SUM="" R_STATUS="not run: timed out in rep ${TIMED_OUT[$w,$a]}"
            else
                run_one "$w" "$a" "$rep"
                if [[ $R_STATUS == timeout* ]]; then TIMED_OUT[$w,$a]=$rep; fi
            fi
            t_run=$(($(usecs) - t_start))
            i=$((i + 1)) k=$((k + 1)) RUN_US=$((RUN_US + t_run))
            WL_US[$w]=$((${WL_US[$w]:-0} + t_run)) WL_N[$w]=$((${WL_N[$w]:-0} + 1))
            SUM[$w,$a,$rep]=$R_SUM
            STATUS[$w,$a,$rep]=$R_STATUS
            if [[ $R_STATUS == ok ]]; then
                printf '%s s, %s MiB, %s faults\n' "$R_WALL" "$(((R_RSS + 512) / 1024))" "${R_FLT:-?}" >&2
            else
                printf 'FAILED (%s)\n' "$R_STATUS" >&2
                if [[ $R_STATUS == "not run"* ]]; then
                    fail_run "$w" "$a" "$rep" "$R_STATUS"
                else
                    fail_run "$w" "$a" "$rep" "$R_STATUS; logs in $LOGDIR/$w.$a.$rep.*"
                fi
            fi
            printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$w" "$a" "${ALLOC_LABEL[$a]}" "$rep" "$R_WALL" "$R_USER" \
                "$R_SYS" "$R_RSS" "$R_FLT" "$R_STATUS" "$R_SUM" >>"$RUNS_CSV"
            [[ $R_STATUS == ok ]] || continue
            if [[ $a == "$REF_ALLOC" && -z ${REF[$w]:-} ]]; then
                # first good reference run: check the runs that were waiting for it
                REF[$w]=$R_SUM
                for b in "${ALLOCS[@]}"; do
                    for ((r = 1; r <= rep; r++)); do
                        [[ $b == "$a" && $r == "$rep" ]] && continue
                        if [[ ${STATUS[$w,$b,$r]:-} == ok ]]; then check_sum "$w" "$b" "$r" || true; fi
                    done
                done
            else
                check_sum "$w" "$a" "$rep" || true
            fi
        done
    done
done
BENCH_T1=$(date +%s)

# results.csv: the runs that passed every check; runs.csv gets the final statuses
{
    echo "workload,alloc_id,allocator,rep,wall_s,user_s,sys_s,maxrss_kib,minflt"
    tail -n +2 "$RUNS_CSV" | while IFS=, read -r w a label rep wall usr sys rss flt _; do
        if [[ ${STATUS[$w,$a,$rep]} == ok ]]; then
            printf '%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$w" "$a" "$label" "$rep" "$wall" "$usr" "$sys" "$rss" "$flt"
        fi
    done
} >"$OUT/results.csv"
{
    head -n1 "$RUNS_CSV"
    tail -n +2 "$RUNS_CSV" | while IFS=, read -r w a label rep wall usr sys rss flt _ sum; do
        printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$w" "$a" "$label" "$rep" "$wall" "$usr" "$sys" "$rss" "$flt" \
            "${STATUS[$w,$a,$rep]}" "$sum"
    done
} >"$RUNS_CSV.tmp"
mv "$RUNS_CSV.tmp" "$RUNS_CSV"

# ------------------------------------------------------------------ metadata and report
meta() { printf '%s=%s\n' "$1" "${2//$'\n'/ }"; }
{
    meta date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    meta host_cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | sed -n 1p)"
    meta host_nproc "$(nproc)"
    meta host_kernel "$(uname -r)"
    meta host_os "$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}")"
    meta host_mem "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    meta host_load "$(cut -d' ' -f1-3 /proc/loadavg)"
    meta cc "$(cc --version | sed -n 1p)"
    meta scale "$SCALE"
    meta reps "$REPS"
    meta quick "$QUICK"
    meta timeout "$TIMEOUT"
    meta bench_seconds "$((BENCH_T1 - BENCH_T0))"
    meta commit "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
    meta reference "$REF_ALLOC"
    meta allocators "${ALLOCS[*]}"
    for a in "${ALLOCS[@]}"; do
        meta "alloc.$a.lib" "${ALLOC_LIB[$a]:-(none)}"
        meta "alloc.$a.version" "${ALLOC_VER[$a]:-?}"
        meta "alloc.$a.source" "${ALLOC_SRC[$a]:-?}"
        meta "alloc.$a.label" "${ALLOC_LABEL[$a]:-$a}"
    done
    for s in "${SKIPPED[@]}"; do meta skipped "$s"; done
    meta workloads "${WORKLOADS[*]}"
    for w in "${WORKLOADS[@]}"; do meta "desc.$w" "${WL_DESC[$w]}"; done
} >"$OUT/meta.txt"

# Full runs (every workload, every allocator) also count fast-path
# instructions with callgrind and refresh docs/PERF.md.
FULL_RUN=0
[[ $QUICK == 0 && -z $ONLY && -z $ALLOC_ONLY ]] && FULL_RUN=1
if [[ $FULL_RUN == 1 ]]; then
    if command -v valgrind >/dev/null; then
        echo "bench.sh: fast-path probe (callgrind) ..." >&2
        bash "$ROOT/scripts/fastpath-probe.sh" --preload 100000 >"$OUT/fastpath.txt" 2>"$OUT/fastpath.err" ||
            echo "bench.sh: fast-path probe failed (see $OUT/fastpath.err)" >&2
    else
        echo "bench.sh: valgrind not found; no fast-path probe in this report" >&2
    fi
fi

SUMMARY=$("$PYTHON" "$ROOT/scripts/bench_report.py" "$OUT") || die "scripts/bench_report.py failed"
if [[ $FULL_RUN == 1 && ${BENCH_NO_PERF_MD:-0} != 1 ]]; then
    "$PYTHON" "$ROOT/scripts/update_perf_md.py" "$OUT" || echo "bench.sh: docs/PERF.md not updated" >&2
fi
echo
echo "$SUMMARY"
echo
echo "report: $OUT/report.md"
echo "chart:  $OUT/chart.svg"
echo "total time: $(($(date +%s) - START_TS)) s (of which runs: $((BENCH_T1 - BENCH_T0)) s)"
if [[ $FAILS -gt 0 ]]; then
    echo "$FAILS run(s) FAILED - see $OUT/failures.csv"
    exit 3
fi

#!/usr/bin/env bash
# preload-tests.sh - validate a malloc replacement under LD_PRELOAD.
#
# Usage: scripts/preload-tests.sh [path/to/lib.so]
#        (default: target/release/libchunkmalloc.so in the repository)
#
# 1. Builds the C test programs in tests/c/ with `cc -O2 -pthread` into
#    target/c-tests/ and runs them with LD_PRELOAD=<lib>:
#      conformance    malloc ABI edge cases (strict chunkmalloc mode, see
#                     tests/c/conformance.c, is switched on automatically when
#                     the library's file name contains "chunkmalloc")
#      stress         8 threads, cross-thread frees, pattern checks (also
#                     under `ulimit -v` 8 GiB: the chunk map's radix fallback)
#      fork_threads   fork() while threads allocate; children exec or exit
#      budget_enomem  1 MiB blocks until NULL, run with CHUNKMALLOC_BUDGET=64MiB
#      lifecycle      allocation before main (.preinit_array, constructor),
#                     in and around a dlopen()ed library (tests/c/dl_plugin.c,
#                     built with -shared -fPIC), in dlsym/dlerror, in thread
#                     key and TLS destructors, after a thread's heap was
#                     abandoned, in atexit handlers and destructors
#      tls_dtor       C++ thread_local destructors that allocate (built with
#                     $CXX, default g++; SKIP when there is no C++ compiler)
#      fork_atfork_alloc  pthread_atfork handlers, registered before the
#                     allocator's, that malloc 16 MiB and a small block;
#                     forks from main and from a thread while another
#                     thread allocates (fork_atfork_alloc-child: only the
#                     child handler allocates)
#      fork_stdio     fork() while threads malloc/free, fprintf, getline and
#                     fflush(NULL) (glibc's tst-malloc-fork-deadlock shape)
#      fork_signal    fork() from a SIGUSR1 handler while the single thread
#                     mallocs, frees and forks (glibc's tst-mallocfork2 shape)
#      idle_owner-rss memory freed by main while its owner thread is idle
#                     must leave the resident set (after malloc_trim; without
#                     it, within 2 s - that part only for chunkmalloc)
#      flow_stress    8 threads, 16 B..32 MiB, cross-thread frees, exiting
#                     threads, malloc_trim, 64 MiB live under
#                     CHUNKMALLOC_BUDGET=160MiB; ~20 s
#      thread_exit    2,000 short threads: blocks intact, nothing reported
#                     on stderr (glibc's free of each thread's exit-hook
#                     node); with chunkmalloc, a thread's first malloc adds
#                     only its own block to the bytes in use
#      trim_interior  64 MiB of 64-byte blocks, one in 512 kept: malloc_trim(0)
#                     gives back the free pages inside the slabs (resident
#                     set falls by 40 MiB or more), survivors intact, and the
#                     same number of blocks again reuse those pages (that
#                     part and the fall only for chunkmalloc);
#                     trim_interior-idle: no malloc_trim, the resident set
#                     must fall within 4 s while the program allocates
#                     another size (enforced only for chunkmalloc)
#    These, and the chunkmalloc-only C tests below, run under
#    `timeout 60`, so a deadlock is a FAIL (exit status 124).
# 2. Runs real programs with and without the preload and compares their
#    standard output (and exit status) byte for byte: python3
#    (PYTHONMALLOC=malloc), git, gcc (and the program it builds), perl,
#    sqlite3, ruby.  A missing sqlite3 or ruby is installed with apt-get when
#    running as root; a program that cannot be had is reported as SKIP.
#    python3 is run as the interpreter itself (sys.executable), not through
#    a wrapper such as a pyenv shim.
# 3. Only when the library is chunkmalloc (CONFORMANCE_EXPECT_CHUNKMALLOC=1):
#      py-memerror    CHUNKMALLOC_BUDGET=64MiB PYTHONMALLOC=malloc python3
#                     tests/programs/py_memerror.py must hit MemoryError,
#                     recover, print its result line and exit 0
#      show-stats     CHUNKMALLOC_SHOW_STATS=1 python3 -c pass prints the
#                     "chunkmalloc statistics" table on stderr
#      idle_owner-budget  CHUNKMALLOC_BUDGET=320MiB: after main frees what an
#                     idle thread allocated (256 x 1 MiB; 200 MiB of small
#                     blocks), main's own 1 MiB allocations must not fail
#      first_alloc_last_round  threads whose first allocation is in their
#                     last key-destructor round must not leave heaps or
#                     committed memory behind (malloc_stats/mallinfo2)
#
# Prints "ok <name>", "FAIL <name>" or "SKIP <name>" per test, and finally
#   preload: N passed, M failed
# exiting non-zero when M > 0.  Logs of every run are kept in
# target/c-tests/logs/.
#
# Environment:
#   PRELOAD_SHOW_STATS_CHECK=0|1 the show-stats check (default: on for
#                                chunkmalloc, off otherwise)
#   CONFORMANCE_EXPECT_CHUNKMALLOC=0|1   override the automatic strict mode
#                                (also decides whether the chunkmalloc-only
#                                checks of step 3 run)
#   LIFECYCLE_LAST_ROUND_LEAK=0  skip lifecycle's check that a key
#                                destructor allocating in the last
#                                destructor round does not leak per thread
#   PRELOAD_PREINIT_ENV_CHECK=0  skip lifecycle-preinit-env: CHUNKMALLOC_*
#                                settings must hold when the first malloc of
#                                the process is made in .preinit_array
#   CC, CXX                      compilers for the test programs (cc, g++)
# The wl_* workload functions are called indirectly through compare_runs.
# shellcheck disable=SC2317
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIB_ARG="${1:-$ROOT/target/release/libchunkmalloc.so}"
if [[ ! -f "$LIB_ARG" ]]; then
    echo "preload-tests: library not found: $LIB_ARG" >&2
    echo "usage: $0 [path/to/lib.so]" >&2
    exit 2
fi
LIB="$(cd "$(dirname "$LIB_ARG")" && pwd)/$(basename "$LIB_ARG")"
CC="${CC:-cc}"
CXX="${CXX:-g++}"
BUILD="$ROOT/target/c-tests"
LOGS="$BUILD/logs"
mkdir -p "$BUILD" "$LOGS"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/preload-tests.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

if [[ -z "${CONFORMANCE_EXPECT_CHUNKMALLOC:-}" ]]; then
    case "$(basename "$LIB")" in
    *chunkmalloc*) export CONFORMANCE_EXPECT_CHUNKMALLOC=1 ;;
    *) export CONFORMANCE_EXPECT_CHUNKMALLOC=0 ;;
    esac
fi

PASSED=0
FAILED=0
SKIPPED=0
ok() { echo "ok $1"; PASSED=$((PASSED + 1)); }
skip() { echo "SKIP $1${2:+ ($2)}"; SKIPPED=$((SKIPPED + 1)); }
fail() {
    echo "FAIL $1${2:+: $2}"
    FAILED=$((FAILED + 1))
}
# show the last lines of a log, indented
# show FILE [N]: print up to N (default 25) lines of a log, indented; for a
# longer log its first 10 lines and its last N-10.
show() {
    local file=$1 max=${2:-25}
    [[ -s "$file" ]] || return 0
    if [[ $(wc -l <"$file") -le $max ]]; then
        sed 's/^/    | /' "$file"
    else
        { head -n 10 "$file"; echo "..."; tail -n $((max - 10)) "$file"; } | sed 's/^/    | /'
    fi
}
finish() {
    if [[ $SKIPPED -gt 0 ]]; then echo "preload: $SKIPPED skipped"; fi
    echo "preload: $PASSED passed, $FAILED failed"
    if [[ $FAILED -gt 0 ]]; then exit 1; fi
    exit 0
}

echo "preload-tests: library $LIB"

# ----------------------------------------------------------------------------
# Build the C programs.
PROGRAMS=(conformance stress fork_threads budget_enomem lifecycle fork_atfork_alloc fork_stdio fork_signal
    idle_owner first_alloc_last_round flow_stress thread_exit trim_interior)
declare -A BUILT=()
for prog in "${PROGRAMS[@]}"; do
    if "$CC" -O2 -pthread -Wall -Wextra -o "$BUILD/$prog" "$ROOT/tests/c/$prog.c" -ldl \
        >"$LOGS/build-$prog.log" 2>&1; then
        BUILT[$prog]=1
    else
        fail "build-$prog" "compiler errors"
        show "$LOGS/build-$prog.log"
    fi
done
# lifecycle's dlopen() plugin; lifecycle is useless without it
PLUGIN="$BUILD/dl_plugin.so"
if [[ -n "${BUILT[lifecycle]:-}" ]]; then
    if ! "$CC" -O2 -Wall -Wextra -shared -fPIC -o "$PLUGIN" "$ROOT/tests/c/dl_plugin.c" \
        >"$LOGS/build-dl_plugin.log" 2>&1; then
        fail build-dl_plugin "compiler errors"
        show "$LOGS/build-dl_plugin.log"
        unset 'BUILT[lifecycle]'
    fi
fi
# the C++ program, when there is a C++ compiler
if command -v "$CXX" >/dev/null 2>&1; then
    if "$CXX" -O2 -pthread -Wall -Wextra -o "$BUILD/tls_dtor" "$ROOT/tests/c/tls_dtor.cpp" \
        >"$LOGS/build-tls_dtor.log" 2>&1; then
        BUILT[tls_dtor]=1
    else
        fail build-tls_dtor "compiler errors"
        show "$LOGS/build-tls_dtor.log"
    fi
fi

# ----------------------------------------------------------------------------
# Is the library really the one providing malloc?  (ld.so only warns and goes
# on without it when a preload cannot be loaded.)
if [[ -n "${BUILT[conformance]:-}" ]]; then
    provider="$(LD_PRELOAD="$LIB" "$BUILD/conformance" --provider 2>"$LOGS/provider.err" || true)"
    if [[ -n "$provider" && "$(readlink -f "$provider")" == "$(readlink -f "$LIB")" ]] &&
        ! grep -q 'cannot be preloaded' "$LOGS/provider.err"; then
        ok preload-active
    else
        fail preload-active "malloc comes from '${provider:-?}', not from $LIB"
        show "$LOGS/provider.err"
        echo "preload-tests: the library is not in use; the remaining tests would prove nothing"
        finish
    fi
fi

# ----------------------------------------------------------------------------
# C test programs under the preload.  Each must exit 0 and end with
# "<label>: N passed, 0 failed".
# run_c NAME LABEL [VAR=VALUE...] [-- PROGRAM-ARGUMENTS...]
# RUN_C_TIMEOUT (seconds, default 300) and RUN_C_NAME (the name reported
# and of the log, default NAME: for a program run more than once) may be
# set for one call: RUN_C_TIMEOUT=60 run_c ...
run_c() {
    local name=$1 label=$2 limit=${RUN_C_TIMEOUT:-300}
    local shown=${RUN_C_NAME:-$1}
    shift 2
    local -a envs=() args=()
    while [[ $# -gt 0 && "$1" != -- ]]; do
        envs+=("$1")
        shift
    done
    if [[ $# -gt 0 ]]; then
        shift
        args=("$@")
    fi
    if [[ -z "${BUILT[$name]:-}" ]]; then
        skip "$shown" "not built"
        return
    fi
    local log="$LOGS/$shown.log" rc=0
    set +e
    local -a wrap=()
    # RUN_C_ULIMIT_V=KiB: run under that address-space limit (ulimit -v).
    if [[ -n "${RUN_C_ULIMIT_V:-}" ]]; then
        wrap=(bash -c 'ulimit -v "$0" && exec "$@"' "$RUN_C_ULIMIT_V")
    fi
    timeout "$limit" "${wrap[@]}" env LD_PRELOAD="$LIB" "${envs[@]}" "$BUILD/$name" "${args[@]}" >"$log" 2>&1
    rc=$?
    set -e
    if [[ $rc -eq 0 ]] && tail -n 1 "$log" | grep -Eq "^$label: [0-9]+ passed, 0 failed\$"; then
        ok "$shown"
    else
        fail "$shown" "exit status $rc$([[ $rc -eq 124 ]] && echo " (timeout after $limit s)")"
        grep -E '^FAIL' "$log" | head -n 40 | sed 's/^/    | /' || true
        grep -vE '^FAIL' "$log" | tail -n 5 | sed 's/^/    | /' || true
    fi
}

run_c conformance conformance
run_c stress stress
# Under an address-space limit below the flat chunk map's 16 GiB
# reservation (8 GiB), the map falls back to its radix form: every
# allocation must still work (before the fallback, all of them failed).
RUN_C_ULIMIT_V=8388608 RUN_C_NAME=stress-ulimit-v run_c stress stress
run_c fork_threads fork
run_c budget_enomem budget CHUNKMALLOC_BUDGET=64MiB
run_c lifecycle lifecycle LIFECYCLE_LAST_ROUND_LEAK="${LIFECYCLE_LAST_ROUND_LEAK:-1}" -- "$PLUGIN"
if [[ "${LIFECYCLE_LAST_ROUND_LEAK:-1}" != 1 ]]; then
    skip lifecycle-last-round "LIFECYCLE_LAST_ROUND_LEAK=0"
fi
if [[ -n "${BUILT[tls_dtor]:-}" ]]; then
    run_c tls_dtor tls_dtor
else
    skip tls_dtor "no C++ compiler ($CXX)"
fi
# Defect regressions (tests/c/*.c headers say what each asserts).  Bounded:
# a deadlock must end as a FAIL, not as a stuck run.
RUN_C_TIMEOUT=60 run_c fork_atfork_alloc fork_atfork_alloc
# only the child handler allocates: the child-side deadlock on its own
RUN_C_TIMEOUT=60 RUN_C_NAME=fork_atfork_alloc-child run_c fork_atfork_alloc fork_atfork_alloc -- child-handler
RUN_C_TIMEOUT=60 run_c fork_stdio fork_stdio
RUN_C_TIMEOUT=60 run_c fork_signal fork_signal
# the "idle" phases are enforced only with CONFORMANCE_EXPECT_CHUNKMALLOC=1
RUN_C_TIMEOUT=60 RUN_C_NAME=idle_owner-rss run_c idle_owner idle_owner -- rss
RUN_C_TIMEOUT=60 run_c flow_stress flow_stress CHUNKMALLOC_BUDGET=160MiB
RUN_C_TIMEOUT=60 run_c thread_exit thread_exit
RUN_C_TIMEOUT=60 run_c trim_interior trim_interior
RUN_C_TIMEOUT=60 RUN_C_NAME=trim_interior-idle run_c trim_interior trim_interior -- idle
if [[ "$CONFORMANCE_EXPECT_CHUNKMALLOC" == 1 ]]; then
    RUN_C_TIMEOUT=60 RUN_C_NAME=idle_owner-budget run_c idle_owner idle_owner CHUNKMALLOC_BUDGET=320MiB -- budget
    RUN_C_TIMEOUT=60 run_c first_alloc_last_round first_alloc_last_round
else
    skip idle_owner-budget "chunkmalloc only"
    skip first_alloc_last_round "chunkmalloc only"
fi

# lifecycle allocates in .preinit_array, before libc has set up environ:
# chunkmalloc's settings must still be read from the environment (the
# library's constructor reads them if the first allocation found none).
if [[ "$CONFORMANCE_EXPECT_CHUNKMALLOC" == 1 && -n "${BUILT[lifecycle]:-}" ]]; then
    if [[ "${PRELOAD_PREINIT_ENV_CHECK:-1}" == 1 ]]; then
        set +e
        timeout 300 env LD_PRELOAD="$LIB" CHUNKMALLOC_SHOW_STATS=1 CHUNKMALLOC_BUDGET=1GiB \
            LIFECYCLE_LAST_ROUND_LEAK=0 "$BUILD/lifecycle" "$PLUGIN" >"$LOGS/lifecycle-preinit-env.out" 2>"$LOGS/lifecycle-preinit-env.err"
        rc=$?
        set -e
        if [[ $rc -eq 0 ]] && grep -q 'chunkmalloc statistics' "$LOGS/lifecycle-preinit-env.err" &&
            grep -Eq '^ *budget +1073741824$' "$LOGS/lifecycle-preinit-env.err"; then
            ok lifecycle-preinit-env
        else
            fail lifecycle-preinit-env "status $rc; CHUNKMALLOC_SHOW_STATS/CHUNKMALLOC_BUDGET ignored when the first malloc is in .preinit_array"
            show "$LOGS/lifecycle-preinit-env.err" 10
        fi
    else
        skip lifecycle-preinit-env "PRELOAD_PREINIT_ENV_CHECK=0"
    fi
fi

# ----------------------------------------------------------------------------
# Real programs: same output with and without the preload.

# Runs "$@" under the preload when PRELOAD is set (inside compare_runs).
p() {
    if [[ -n "${PRELOAD:-}" ]]; then
        LD_PRELOAD="$PRELOAD" "$@"
    else
        "$@"
    fi
}

# compare_runs NAME FUNCTION: run FUNCTION twice in subshells, without and
# with the preload, and compare exit status and standard output.
compare_runs() {
    local name=$1 fn=$2
    local base="$LOGS/$name.base" pre="$LOGS/$name.preload" rc_base rc_pre
    set +e
    (
        set -e
        PRELOAD=
        "$fn"
    ) >"$base" 2>"$base.err"
    rc_base=$?
    (
        set -e
        PRELOAD="$LIB"
        "$fn"
    ) >"$pre" 2>"$pre.err"
    rc_pre=$?
    set -e
    if [[ $rc_base -ne 0 ]]; then
        fail "$name" "the run without preload failed (status $rc_base) - environment problem?"
        show "$base.err"
    elif [[ $rc_pre -ne 0 ]]; then
        fail "$name" "exit status $rc_pre with the preload"
        show "$pre.err"
    elif grep -q 'cannot be preloaded' "$pre.err"; then
        fail "$name" "the library was not preloaded"
        show "$pre.err"
    elif ! cmp -s "$base" "$pre"; then
        fail "$name" "output differs with the preload"
        diff "$base" "$pre" | head -n 20 | sed 's/^/    | /' || true
        show "$pre.err" 10
    elif [[ ! -s "$base" ]]; then
        fail "$name" "no output to compare"
    else
        ok "$name"
    fi
}

APT_UPDATED=0
# have CMD [DEBIAN-PACKAGE]: true if CMD exists, installing the package first
# when possible (root + apt-get).
have() {
    local cmd=$1 pkg=${2:-}
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [[ -n "$pkg" && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        if [[ $APT_UPDATED -eq 0 ]]; then
            echo "preload-tests: installing missing programs with apt-get"
            apt-get update -qq >/dev/null 2>&1 || true
            APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" \
            >"$LOGS/apt-$pkg.log" 2>&1 || true
    fi
    command -v "$cmd" >/dev/null 2>&1
}

# --- python3 -----------------------------------------------------------------
# The interpreter itself: python3 may be a wrapper (a pyenv shim is a shell
# script that runs several programs before the interpreter).
PYTHON=
if have python3 python3; then
    PYTHON="$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)"
    if [[ -z "$PYTHON" || ! -x "$PYTHON" ]]; then PYTHON="$(command -v python3)"; fi
    echo "preload-tests: python3 is $PYTHON"
fi
wl_python() {
    p env PYTHONMALLOC=malloc PYTHONHASHSEED=0 "$PYTHON" "$ROOT/tests/programs/py_workload.py"
}
if [[ -n "$PYTHON" ]]; then compare_runs python3 wl_python; else skip python3 "not available"; fi

# --- git ---------------------------------------------------------------------
# A generated tree of 320 files in 16 directories.
make_git_tree() {
    local dir=$1 d
    mkdir -p "$dir"
    for d in $(seq 0 15); do mkdir -p "$dir/dir$d/sub$((d % 4))"; done
    awk -v root="$dir" 'BEGIN {
        srand(7)
        for (i = 0; i < 320; i++) {
            f = sprintf("%s/dir%d/sub%d/file%03d.txt", root, i % 16, (i % 16) % 4, i)
            lines = 5 + int(rand() * 120)
            for (l = 0; l < lines; l++) {
                printf "file %d line %d: %s %d%s\n", i, l, (l % 9 == 0 ? "needle" : "hay"), \
                    int(rand() * 1000000), (i % 5 == 0 ? " padding-padding-padding" : "") > f
            }
            close(f)
        }
    }'
}
wl_git() {
    local repo
    repo="$(mktemp -d "$WORK/git.XXXXXX")"
    cp -R "$WORK/git-tree/." "$repo/"
    cd "$repo"
    export HOME="$repo" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
    export GIT_AUTHOR_NAME="Preload Test" GIT_AUTHOR_EMAIL="preload@example.invalid"
    export GIT_COMMITTER_NAME="Preload Test" GIT_COMMITTER_EMAIL="preload@example.invalid"
    export GIT_AUTHOR_DATE="2024-01-02T03:04:05+00:00" GIT_COMMITTER_DATE="2024-01-02T03:04:05+00:00"
    export TZ=UTC LC_ALL=C
    p git init -q -b main .
    p git add -A
    p git commit -q -m "initial import"
    local i
    for i in $(seq 0 9 319); do
        echo "appended line $i" >>"dir$((i % 16))/sub$(((i % 16) % 4))/file$(printf %03d "$i").txt"
    done
    rm -f dir3/sub3/file003.txt dir5/sub1/file005.txt
    mkdir -p newdir && seq 1 2000 >newdir/numbers.txt
    p git add -A
    GIT_AUTHOR_DATE="2024-01-03T03:04:05+00:00" GIT_COMMITTER_DATE="2024-01-03T03:04:05+00:00" \
        p git commit -q -m "second commit"
    p git mv dir0 renamed0
    GIT_AUTHOR_DATE="2024-01-04T03:04:05+00:00" GIT_COMMITTER_DATE="2024-01-04T03:04:05+00:00" \
        p git commit -q -m "rename"
    p git rev-parse HEAD HEAD~1 HEAD~2
    p git log --stat --format='%H %an <%ae> %ad %s' --date=iso
    p git diff --stat HEAD~2 HEAD
    p git diff HEAD~2 HEAD~1 | sha256sum
    p git log -p --follow --format=%s -- renamed0/sub0/file016.txt | sha256sum
    p git grep -c needle HEAD
    p git archive --format=tar HEAD | sha256sum
    p git -c pack.threads=1 gc -q
    p git fsck --full --no-progress
    p git rev-list --all --objects | wc -l
}
if have git git; then
    make_git_tree "$WORK/git-tree"
    compare_runs git wl_git
else
    skip git "not available"
fi

# --- gcc ---------------------------------------------------------------------
# A generated C file with 2000 functions of four shapes; main calls them all
# through a table, stores the results in malloc'ed memory and prints a digest.
make_c_source() {
    awk -v n=2000 'BEGIN {
        print "#include <stdio.h>"
        print "#include <stdlib.h>"
        print "#include <string.h>"
        print "struct rec { unsigned long a, b; char name[40]; };"
        for (i = 0; i < n; i++) {
            k = i % 4
            c = (i * 7919) % 65521 + 3
            printf "static unsigned long f%d(unsigned long x)\n{\n", i
            if (k == 0) {
                printf "    unsigned long a = x * %du + %d;\n", c, i
                printf "    for (unsigned j = 0; j < (x & %d) + 3; j++)\n", 1 + i % 15
                printf "        a = (a << 5) ^ (a >> 3) ^ (unsigned long)j * %du;\n", c
                printf "    return a;\n"
            } else if (k == 1) {
                printf "    unsigned long v[32], s = 0, n = (x %% %d) + 2;\n", 8 + i % 24
                printf "    for (unsigned j = 0; j < n; j++)\n"
                printf "        v[j] = x * (j + %d) + %du;\n", i % 5 + 1, c
                printf "    for (unsigned j = 1; j < n; j += 2)\n"
                printf "        s += v[j] ^ v[j - 1];\n"
                printf "    return s;\n"
            } else if (k == 2) {
                printf "    switch (x %% 5) {\n"
                for (m = 0; m < 5; m++)
                    printf "    case %d: return x * %du + %d;\n", m, c + m, m * i
                printf "    }\n    return 0;\n"
            } else {
                printf "    struct rec r;\n"
                printf "    r.a = x + %d;\n    r.b = x * %du;\n", i, c
                printf "    snprintf(r.name, sizeof r.name, \"f%d-%%lu-%%lu\", r.a %% 1000, r.b %% 977);\n", i
                printf "    return strlen(r.name) * %du + r.a + r.b;\n", c
            }
            printf "}\n\n"
        }
        printf "static unsigned long (*const table[%d])(unsigned long) = {\n", n
        for (i = 0; i < n; i++)
            printf "    f%d,\n", i
        print "};"
        print "int main(void)"
        print "{"
        printf "    unsigned long *res = malloc(%d * sizeof *res), sum = 0;\n", n
        print "    char *text = NULL;"
        print "    size_t len = 0;"
        printf "    for (int i = 0; i < %d; i++) {\n", n
        print "        res[i] = table[i]((unsigned long)i * 7 + 1);"
        print "        sum = sum * 31 + res[i];"
        print "        char item[64];"
        print "        int m = snprintf(item, sizeof item, \"%lu,\", res[i] % 100000);"
        print "        text = realloc(text, len + (size_t)m + 1);"
        print "        memcpy(text + len, item, (size_t)m + 1);"
        print "        len += (size_t)m;"
        print "        if (i % 250 == 0)"
        print "            printf(\"f%d = %lu\\n\", i, res[i]);"
        print "    }"
        print "    unsigned long h = 5381;"
        print "    for (size_t i = 0; i < len; i++)"
        print "        h = h * 33 ^ (unsigned char)text[i];"
        print "    printf(\"sum %lu text %zu bytes hash %lu\\n\", sum, len, h);"
        print "    free(text);"
        print "    free(res);"
        print "    return 0;"
        print "}"
    }' >"$1"
}
wl_gcc() {
    local dir
    dir="$(mktemp -d "$WORK/gcc.XXXXXX")"
    cp "$WORK/gen.c" "$dir/gen.c"
    cd "$dir"
    p gcc -O1 -c gen.c -o gen.o
    p gcc gen.o -o gen
    sha256sum gen.o | cut -d' ' -f1
    p ./gen
}
if have gcc gcc; then
    make_c_source "$WORK/gen.c"
    compare_runs gcc wl_gcc
else
    skip gcc "not available"
fi

# --- perl --------------------------------------------------------------------
wl_perl() { p perl "$ROOT/tests/programs/workload.pl"; }
if have perl perl; then compare_runs perl wl_perl; else skip perl "not available"; fi

# --- sqlite3 -----------------------------------------------------------------
# 100k single-row INSERTs in one transaction, then indexes and aggregates.
make_sql() {
    awk 'BEGIN {
        srand(11)
        q = sprintf("%c", 39)
        print "CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val INTEGER, note TEXT);"
        print "BEGIN;"
        for (i = 1; i <= 100000; i++) {
            note = ""
            for (j = int(rand() * 6); j > 0; j--) note = note "lorem-" int(rand() * 100) " "
            printf "INSERT INTO t VALUES(%d, %d, %sname-%d-%d%s, %d, %s%s%s);\n", \
                i, int(rand() * 250), q, i % 977, int(rand() * 50), q, int(rand() * 1000000), q, note, q
        }
        print "COMMIT;"
        print "SELECT count(*), sum(grp), sum(val), count(DISTINCT name) FROM t;"
        print "CREATE INDEX t_grp ON t(grp, val);"
        print "CREATE INDEX t_name ON t(name);"
        print "SELECT grp, count(*), sum(val), min(name), max(name) FROM t GROUP BY grp ORDER BY grp;"
        print "SELECT id, name, val FROM t WHERE grp = 42 ORDER BY val DESC, id LIMIT 20;"
        print "SELECT name, count(*) AS c FROM t GROUP BY name ORDER BY c DESC, name LIMIT 20;"
        print "UPDATE t SET val = val * 2, note = note || upper(note) WHERE id % 7 = 0;"
        print "DELETE FROM t WHERE id % 11 = 0;"
        print "SELECT count(*), sum(val), sum(length(note)) FROM t;"
        print "SELECT id, sum(val) OVER (PARTITION BY grp ORDER BY id ROWS 3 PRECEDING) FROM t WHERE id < 300 ORDER BY id;"
        print "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) SELECT count(*), sum(x * x % 1000) FROM c;"
        print "SELECT grp, group_concat(id, " q "-" q ") FROM (SELECT grp, id FROM t WHERE id < 2000 ORDER BY id) GROUP BY grp ORDER BY grp LIMIT 30;"
        print "SELECT json_group_array(json_object(" q "id" q ", id, " q "n" q ", name)) FROM (SELECT id, name FROM t ORDER BY id LIMIT 50);"
        print "CREATE TABLE agg AS SELECT grp, avg(val) AS a, total(val) AS s FROM t GROUP BY grp;"
        print "SELECT count(*), sum(s) FROM agg;"
        print "VACUUM;"
        print "PRAGMA integrity_check;"
    }' >"$1"
}
wl_sqlite() {
    local dir
    dir="$(mktemp -d "$WORK/sqlite.XXXXXX")"
    p sqlite3 -batch "$dir/test.db" <"$WORK/workload.sql"
}
if have sqlite3 sqlite3; then
    make_sql "$WORK/workload.sql"
    compare_runs sqlite3 wl_sqlite
else
    skip sqlite3 "not available and could not be installed"
fi

# --- ruby --------------------------------------------------------------------
wl_ruby() { p ruby "$ROOT/tests/programs/workload.rb"; }
if have ruby ruby; then compare_runs ruby wl_ruby; else skip ruby "not available and could not be installed"; fi

# --- chunkmalloc only -----------------------------------------------------------
if [[ "$CONFORMANCE_EXPECT_CHUNKMALLOC" == 1 ]]; then
    # python3 at a budget: MemoryError, caught, then recovery; exit 0
    if [[ -n "$PYTHON" ]]; then
        set +e
        timeout 120 env LD_PRELOAD="$LIB" CHUNKMALLOC_BUDGET=64MiB PYTHONMALLOC=malloc \
            "$PYTHON" "$ROOT/tests/programs/py_memerror.py" \
            >"$LOGS/py-memerror.out" 2>"$LOGS/py-memerror.err"
        rc=$?
        set -e
        line="$(grep -E '^py_memerror: MemoryError after [0-9]+ MiB; recovered$' "$LOGS/py-memerror.out" || true)"
        if [[ $rc -eq 0 && -n "$line" ]]; then
            ok py-memerror
        else
            fail py-memerror "exit status $rc$([[ $rc -gt 128 ]] && echo " (signal $((rc - 128)))")$([[ -z "$line" ]] && echo ', no result line')"
            show "$LOGS/py-memerror.out" 5
            show "$LOGS/py-memerror.err" 15
        fi
    else
        skip py-memerror "python3 not available"
    fi
fi

# CHUNKMALLOC_SHOW_STATS=1 prints the statistics table at exit
if [[ "${PRELOAD_SHOW_STATS_CHECK:-$CONFORMANCE_EXPECT_CHUNKMALLOC}" == 1 ]]; then
    if [[ -n "$PYTHON" ]]; then
        set +e
        CHUNKMALLOC_SHOW_STATS=1 LD_PRELOAD="$LIB" PYTHONMALLOC=malloc "$PYTHON" -c pass \
            >"$LOGS/show-stats.out" 2>"$LOGS/show-stats.err"
        rc=$?
        set -e
        if [[ $rc -eq 0 ]] && grep -q 'chunkmalloc statistics' "$LOGS/show-stats.err"; then
            ok show-stats
        else
            fail show-stats "status $rc, no 'chunkmalloc statistics' on stderr with CHUNKMALLOC_SHOW_STATS=1"
            show "$LOGS/show-stats.err" 10
        fi
    else
        skip show-stats "python3 not available"
    fi
fi

finish

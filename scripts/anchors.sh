# shellcheck shell=bash disable=SC2034 # the ANCHOR_* results are read by the callers
# scripts/anchors.sh - obtain the allocators chunkmalloc is compared with.
#
# Sourced (not run) by scripts/bench.sh and scripts/fastpath-probe.sh:
#
#   . scripts/anchors.sh
#   if anchor_setup mimalloc3; then use "$ANCHOR_LIB" "$ANCHOR_VER" "$ANCHOR_FROM"
#   else echo "no mimalloc 3: $ANCHOR_WHY"; fi
#
# Names: mimalloc3 and snmalloc (built from the C/C++ sources bundled in the
# libmimalloc-sys and snmalloc-sys crates, fetched with `cargo vendor` into
# target/bench-libs/crates), tcmalloc, jemalloc and mimalloc2 (Debian
# packages, installed with apt-get when running as root; mimalloc2 falls back
# to the crate's bundled v2 sources).  Built libraries are cached in
# target/bench-libs/<name>-<version>/, so a second run builds nothing.
# Nothing here fails the caller: an allocator that cannot be had returns 1
# with the reason in ANCHOR_WHY.
#
# Environment: ANCHOR_NO_APT=1 (or BENCH_NO_APT=1) never uses apt-get;
# ANCHOR_NO_BUILD=1 uses only libraries that are already built;
# ANCHOR_REFRESH=1 resolves the newest crate versions again (otherwise the
# sources fetched once are reused); ANCHOR_LOG_PREFIX names the caller in
# messages.  anchor_glibc_version prints glibc's version; apt_install,
# apt_known and pkg_version are shared with the callers.

ANCHOR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ANCHOR_LIBS=$ANCHOR_ROOT/target/bench-libs
ANCHOR_MULTIARCH=$(cc -print-multiarch 2>/dev/null || true)
[[ -n $ANCHOR_MULTIARCH ]] || ANCHOR_MULTIARCH=x86_64-linux-gnu
ANCHOR_FETCHED=0
CAN_APT=0
if [[ $(id -u) == 0 && -z ${ANCHOR_NO_APT:-}${BENCH_NO_APT:-} ]] && command -v apt-get >/dev/null; then CAN_APT=1; fi
APT_UPDATED=0

anchor_note() { printf '%s: %s\n' "${ANCHOR_LOG_PREFIX:-anchors}" "$*" >&2; }

apt_install() { # pkgs... ; returns non-zero when it could not install
    [[ $CAN_APT == 1 ]] || return 1
    anchor_note "installing $* with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; then
        if [[ $APT_UPDATED == 0 ]]; then
            APT_UPDATED=1
            DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 || return 1
    fi
}

apt_has_candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -qv '(none)'; }

apt_known() { # pkg: is the package known to apt (update the lists once if not)
    [[ $CAN_APT == 1 ]] || return 1
    apt_has_candidate "$1" && return 0
    [[ $APT_UPDATED == 0 ]] || return 1
    APT_UPDATED=1
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || return 1
    apt_has_candidate "$1"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# upstream part of a Debian version: 1:2.0.9+ds-2 -> 2.0.9
upstream_version() { sed -E 's/^[0-9]+://; s/-[^-]*$//; s/[+~].*$//' <<<"$1"; }

anchor_glibc_version() {
    getconf GNU_LIBC_VERSION 2>/dev/null | sed 's/^glibc //' ||
        ldd --version 2>/dev/null | sed -n 1p | sed 's/.* //'
}

# ------------------------------------------------------------------ crate sources
# Vendors the newest libmimalloc-sys and snmalloc-sys (with their build
# dependencies, which are not used) into target/bench-libs/crates/vendor.
anchor_fetch_crates() {
    [[ $ANCHOR_FETCHED == 0 ]] || return 0
    ANCHOR_FETCHED=1
    command -v cargo >/dev/null || { anchor_note "cargo not found: cannot fetch the crate sources"; return 1; }
    local dir=$ANCHOR_LIBS/crates
    mkdir -p "$dir"
    cat >"$dir/Cargo.toml" <<'EOF'
# written by scripts/anchors.sh: only used to fetch the allocators' sources
[package]
name = "bench-anchor-sources"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = "lib.rs"

[dependencies]
libmimalloc-sys = ">=0.1.49"
snmalloc-sys = ">=0.7"

[workspace]
EOF
    : >"$dir/lib.rs"
    [[ -z ${ANCHOR_REFRESH:-} ]] || rm -f "$dir/Cargo.lock"
    anchor_note "fetching the libmimalloc-sys and snmalloc-sys sources (cargo vendor)"
    if ! (cd "$dir" && timeout 300 cargo vendor --versioned-dirs vendor.tmp >/dev/null 2>"$dir/vendor.log"); then
        rm -rf "$dir/vendor.tmp"
        anchor_note "cargo vendor failed (see $dir/vendor.log)"
        return 1
    fi
    rm -rf "$dir/vendor"
    mv "$dir/vendor.tmp" "$dir/vendor"
}

newest_dir() { printf '%s\n' "$@" | grep -v '[*]' | sort -V | tail -n1 || true; } # of a glob's matches

# anchor_crate_src CRATE: sets ANCHOR_SRC to the newest source directory of
# CRATE, fetched once (or found unpacked in the cargo registry when fetching
# fails), or to "" when there is none
anchor_crate_src() {
    local vendor=$ANCHOR_LIBS/crates/vendor
    ANCHOR_SRC=$(newest_dir "$vendor/$1"-[0-9]*/)
    if [[ -z $ANCHOR_SRC || -n ${ANCHOR_REFRESH:-} ]] && anchor_fetch_crates; then
        ANCHOR_SRC=$(newest_dir "$vendor/$1"-[0-9]*/)
    fi
    [[ -n $ANCHOR_SRC ]] || ANCHOR_SRC=$(newest_dir "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$1"-[0-9]*/)
    ANCHOR_SRC=${ANCHOR_SRC%/}
}

crate_version() { basename "$1" | sed 's/.*-\([0-9][0-9.]*[^/]*\)$/\1/'; }

# built_at OUT STAMP: OUT exists and was built by the same command
built_at() { [[ -f $1 && -f $1.cmd && $(cat "$1.cmd") == "$2" ]]; }

# ------------------------------------------------------------------ mimalloc
# mimalloc_version DIR: 30302 -> 3.3.2
mimalloc_version() {
    local v
    v=$(sed -n 's/^#define MI_MALLOC_VERSION *\([0-9]*\).*/\1/p' "$1/include/mimalloc.h" 2>/dev/null | sed -n 1p)
    [[ -n $v ]] && printf '%d.%d.%d' $((v / 10000)) $((v / 100 % 100)) $((v % 100))
}

# build_mimalloc DIR CRATE: the flags of mimalloc's own CMake shared-library
# build (MI_MALLOC_OVERRIDE exports malloc & co. for LD_PRELOAD)
build_mimalloc() {
    local dir=$1 crate=$2 ver out cmd
    ver=$(mimalloc_version "$dir")
    [[ -n $ver ]] || { ANCHOR_WHY="no MI_MALLOC_VERSION in $dir/include/mimalloc.h"; return 1; }
    out=$ANCHOR_LIBS/mimalloc-$ver/libmimalloc.so
    cmd="cc -shared -fPIC -O3 -DNDEBUG -DMI_BUILD_RELEASE -DMI_MALLOC_OVERRIDE -DMI_SHARED_LIB -DMI_SHARED_LIB_EXPORT"
    cmd+=" -fvisibility=hidden -ftls-model=initial-exec -fno-builtin-malloc -I$dir/include $dir/src/static.c -pthread"
    if ! built_at "$out" "$cmd"; then
        [[ -z ${ANCHOR_NO_BUILD:-} ]] || { ANCHOR_WHY="not built yet ($out) and building is off"; return 1; }
        mkdir -p "${out%/*}"
        anchor_note "building mimalloc $ver from $(basename "$crate") (cc, ~10 s)"
        # shellcheck disable=SC2086 # cmd is a plain word list
        if ! $cmd -o "$out.tmp" 2>"${out%/*}/build.log"; then
            ANCHOR_WHY="building $dir/src/static.c failed (see ${out%/*}/build.log)"
            return 1
        fi
        mv "$out.tmp" "$out"
        printf '%s' "$cmd" >"$out.cmd"
    fi
    ANCHOR_LIB=$out ANCHOR_VER=$ver ANCHOR_FROM="built from the sources bundled in $(basename "$crate") (crates.io)"
}

setup_mimalloc3() {
    local src dir
    anchor_crate_src libmimalloc-sys
    src=$ANCHOR_SRC
    [[ -n $src ]] || { ANCHOR_WHY="no libmimalloc-sys sources (not fetched and none in the cargo registry)"; return 1; }
    for dir in "$src/c_src/mimalloc/v3" "$src/c_src/mimalloc"; do
        [[ -f $dir/src/static.c && $(mimalloc_version "$dir") == 3.* ]] && break
    done
    [[ -f $dir/src/static.c && $(mimalloc_version "$dir") == 3.* ]] ||
        { ANCHOR_WHY="$(basename "$src") bundles no mimalloc 3 sources"; return 1; }
    build_mimalloc "$dir" "$src"
}

# Debian's libmimalloc (2.0.9 on bookworm); else the crate's v2 sources
setup_mimalloc2() {
    local lib="" pkg="" src
    for lib in /usr/lib/"$ANCHOR_MULTIARCH"/libmimalloc.so.2 ""; do [[ -f $lib ]] && break; done
    if [[ -z $lib ]] && apt_known libmimalloc2.0 && apt_install libmimalloc2.0; then
        lib=/usr/lib/$ANCHOR_MULTIARCH/libmimalloc.so.2
    fi
    if [[ -n $lib && -f $lib ]]; then
        pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | sed -n 1p | cut -d: -f1 || true)
        ANCHOR_LIB=$lib ANCHOR_VER=$(upstream_version "$(pkg_version "${pkg:-libmimalloc2.0}")")
        ANCHOR_FROM="Debian package ${pkg:-?} $(pkg_version "${pkg:-libmimalloc2.0}")"
        [[ -n $ANCHOR_VER ]] || ANCHOR_VER="2.x"
        return 0
    fi
    anchor_crate_src libmimalloc-sys
    src=$ANCHOR_SRC
    if [[ -n $src && -f $src/c_src/mimalloc/v2/src/static.c ]]; then
        build_mimalloc "$src/c_src/mimalloc/v2" "$src"
        return
    fi
    ANCHOR_WHY="no Debian libmimalloc2.0 and no v2 sources in libmimalloc-sys"
    return 1
}

# ------------------------------------------------------------------ snmalloc
# the shim target only (libsnmallocshim.so, the LD_PRELOAD library), -j2
setup_snmalloc() {
    local src ver out bdir cmd
    anchor_crate_src snmalloc-sys
    src=$ANCHOR_SRC
    [[ -n $src && -f $src/upstream/CMakeLists.txt ]] ||
        { ANCHOR_WHY="no snmalloc-sys sources (not fetched and none in the cargo registry)"; return 1; }
    ver=$(crate_version "$src")
    out=$ANCHOR_LIBS/snmalloc-$ver/libsnmallocshim.so
    bdir=$ANCHOR_LIBS/snmalloc-$ver/build
    cmd="cmake -S $src/upstream -B $bdir -DCMAKE_BUILD_TYPE=Release -DSNMALLOC_BUILD_TESTING=OFF; cmake --build $bdir --target snmallocshim -j2"
    if ! built_at "$out" "$cmd"; then
        [[ -z ${ANCHOR_NO_BUILD:-} ]] || { ANCHOR_WHY="not built yet ($out) and building is off"; return 1; }
        command -v cmake >/dev/null || apt_install cmake || true
        command -v cmake >/dev/null || { ANCHOR_WHY="cmake is missing (apt-get install cmake)"; return 1; }
        command -v c++ >/dev/null || apt_install g++ || true
        command -v c++ >/dev/null || { ANCHOR_WHY="no C++ compiler (apt-get install g++)"; return 1; }
        mkdir -p "${out%/*}"
        rm -rf "$bdir"
        anchor_note "building snmalloc $ver from $(basename "$src") (cmake, shim target only, ~20 s)"
        if ! { cmake -S "$src/upstream" -B "$bdir" -DCMAKE_BUILD_TYPE=Release -DSNMALLOC_BUILD_TESTING=OFF &&
            cmake --build "$bdir" --target snmallocshim -j2; } >"${out%/*}/build.log" 2>&1 ||
            [[ ! -f $bdir/libsnmallocshim.so ]]; then
            ANCHOR_WHY="cmake build of snmallocshim failed (see ${out%/*}/build.log)"
            return 1
        fi
        cp "$bdir/libsnmallocshim.so" "$out"
        printf '%s' "$cmd" >"$out.cmd"
        rm -rf "$bdir"
    fi
    ANCHOR_LIB=$out ANCHOR_VER=$ver ANCHOR_FROM="built with cmake from the sources bundled in $(basename "$src") (crates.io)"
}

# ------------------------------------------------------------------ Debian packages
# debian_anchor PKG LIB: the package's library, installed when missing
debian_anchor() {
    local pkg=$1 lib=/usr/lib/$ANCHOR_MULTIARCH/$2
    if [[ ! -f $lib ]] && apt_known "$pkg"; then apt_install "$pkg" || true; fi
    [[ -f $lib ]] || { ANCHOR_WHY="no $lib (Debian package $pkg not installed and apt-get not usable)"; return 1; }
    ANCHOR_LIB=$lib ANCHOR_VER=$(upstream_version "$(pkg_version "$pkg")")
    ANCHOR_FROM="Debian package $pkg $(pkg_version "$pkg")"
}

setup_tcmalloc() { debian_anchor libtcmalloc-minimal4 libtcmalloc_minimal.so.4; }
setup_jemalloc() { debian_anchor libjemalloc2 libjemalloc.so.2; }

# ------------------------------------------------------------------ entry point
ANCHOR_NAMES=(mimalloc3 snmalloc tcmalloc jemalloc mimalloc2)
declare -A ANCHOR_TITLE=([mimalloc3]=mimalloc [mimalloc2]=mimalloc [snmalloc]=snmalloc
    [tcmalloc]=tcmalloc [jemalloc]=jemalloc)

# anchor_setup NAME: 0 with ANCHOR_LIB, ANCHOR_VER, ANCHOR_LABEL ("mimalloc
# 3.3.2") and ANCHOR_FROM set, or 1 with ANCHOR_WHY
anchor_setup() {
    ANCHOR_LIB="" ANCHOR_VER="" ANCHOR_FROM="" ANCHOR_WHY="" ANCHOR_LABEL=""
    [[ -n ${ANCHOR_TITLE[$1]:-} ]] || { ANCHOR_WHY="unknown allocator '$1'"; return 1; }
    "setup_$1" || { [[ -n $ANCHOR_WHY ]] || ANCHOR_WHY="not available"; return 1; }
    ANCHOR_LABEL="${ANCHOR_TITLE[$1]} $ANCHOR_VER"
}

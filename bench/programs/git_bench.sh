#!/usr/bin/env bash
# Whole-program allocator workload: git on a generated repository.
#
#   git_bench.sh GENDIR WORKDIR
#
# GENDIR comes from `gen_inputs.py git SCALE GENDIR` (history.fi + overlay/).
# WORKDIR must not exist; it is created and left for the caller to delete.
# Runs init, fast-import, checkout, add, commit, log, diff, gc, fsck and
# prints "checksum git_repo HEX" built from commit ids and command outputs,
# which are identical under every allocator (fixed names and dates).
set -euo pipefail
shopt -s inherit_errexit

gendir=$(cd "$1" && pwd)
work=$2
mkdir "$work"
cd "$work"

# a hermetic environment: no user/system config, fixed identity and dates
export HOME=$PWD GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
export GIT_AUTHOR_DATE='1700000000 +0000' GIT_COMMITTER_DATE='1700000000 +0000'
# (no fsync: the benchmark is about memory, not about the disk)
g() { git -c gc.auto=0 -c core.autocrlf=false -c core.fsync=none -c init.defaultBranch=main "$@"; }

g init -q repo
cd repo
g fast-import --quiet <"$gendir/history.fi"
g checkout -q -f main
cp -R "$gendir/overlay/." .
g add -A
g commit -q -m "overlay commit"
n=$(g rev-list --count HEAD)
sum=$(
    {
        g rev-parse HEAD
        echo "$n"
        g log --stat --format='%H %s' | cksum
        g log -p -n 60 --format='%H' | cksum
        g diff --stat "HEAD~$((n / 3))" HEAD | cksum
        g ls-files -s | cksum
    } | cksum
)
g gc -q --prune=now
g fsck --no-progress --strict >/dev/null
g count-objects -v | grep -E '^(in-pack|count)' >/dev/null
echo "checksum git_repo ${sum// /-}"

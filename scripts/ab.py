#!/usr/bin/env python3
"""Interleaved A/B runs of the harness's workloads under several allocators.

The comparison `docs/PERF.md` means by "interleaved runs, new / old": each
repetition runs every workload under every allocator one after the other,
in reverse order on odd repetitions, so that load from elsewhere on a
shared machine falls on all of them alike; the report gives per workload
the median wall time, CPU time (user + sys), peak RSS and minor page
faults, each as a ratio to the first allocator, and their geometric means.

usage: scripts/ab.py [--reps N] [--scale X] [--only A,B,...] [--programs]
                     NAME=SPEC [NAME=SPEC ...]

  SPEC     `glibc` (no preload) or a shared library to preload, optionally
           followed by `:VAR=VAL[,VAR=VAL...]`, environment for its runs:
             old=/tmp/before.so new=target/release/libchunkmalloc.so
             d100=target/release/libchunkmalloc.so \\
             d5=target/release/libchunkmalloc.so:CHUNKMALLOC_PURGE_DELAY_MS=5
  --reps N       repetitions (default 3)
  --scale X      workload scale (default 1.0; the generated inputs are looked
                 up under the same spelling as `scripts/bench.sh --scale X`)
  --only A,B     these workloads only (names as in `scripts/bench.sh --list`)
  --programs     also sqlite, gcc_compile and py_json, whose inputs
                 `scripts/bench.sh` generates into target/bench-gen/scale-X

The C workloads are compiled into target/bench-bin as `scripts/bench.sh`
does when missing or older than their sources. cycling_buffers (4 s a run)
runs only when named in --only. Needs GNU time (/usr/bin/time). Exits 3 if
a run fails.
"""

import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WL_SRC = os.path.join(ROOT, "bench", "workloads")
BIN = os.path.join(ROOT, "target", "bench-bin")


def die(msg):
    sys.exit("ab.py: " + msg)


def parse_spec(arg):
    if "=" not in arg:
        die(f"allocator {arg!r} is not NAME=SPEC")
    name, spec = arg.split("=", 1)
    lib, _, envs = spec.partition(":")
    env = {}
    for kv in filter(None, envs.split(",")):
        if "=" not in kv:
            die(f"{kv!r} in {arg!r} is not VAR=VAL")
        k, v = kv.split("=", 1)
        env[k] = v
    if lib != "glibc":
        lib = os.path.abspath(lib)
        if not os.path.isfile(lib):
            die(f"{lib} does not exist")
    return name, lib, env


def build(prog):
    out, src = os.path.join(BIN, prog), os.path.join(WL_SRC, prog + ".c")
    deps = [src, os.path.join(WL_SRC, "wl.h")]
    if os.path.exists(out) and all(os.path.getmtime(d) <= os.path.getmtime(out) for d in deps):
        return out
    os.makedirs(BIN, exist_ok=True)
    print(f"ab.py: compiling {prog}", file=sys.stderr)
    subprocess.run(["cc", "-O2", "-pthread", "-Wall", "-o", out, src, "-lm"], check=True)
    return out


def workloads(scale, only, programs):
    names = sorted(f[:-2] for f in os.listdir(WL_SRC) if f.endswith(".c"))
    wl = []
    for n in names:
        for name, args in ([(f"pareto_{t}t", [str(t)]) for t in (1, 2, 4)]
                           if n == "pareto" else [(n, [])]):
            if (only and name not in only and n not in only) or \
                    (not only and name == "cycling_buffers"):
                continue
            wl.append((name, [build(n), scale] + args, None))
    if programs or only:
        gen = os.path.join(ROOT, "target", "bench-gen", "scale-" + scale)
        sql, big = os.path.join(gen, "script.sql"), os.path.join(gen, "big.c")
        progs = [  # name, command, stdin, the generated input it needs
            ("sqlite", ["sqlite3", "-batch", ":memory:"], sql, sql),
            ("gcc_compile", ["gcc", "-O1", "-c", big, "-o", "/dev/null"], None, big),
            ("py_json", ["env", "PYTHONMALLOC=malloc", "PYTHONHASHSEED=0",
                         "PYTHONDONTWRITEBYTECODE=1", "python3",
                         os.path.join(ROOT, "bench", "programs", "py_bench.py"), scale],
             None, None),
        ]
        for name, cmd, stdin, need in progs:
            if only and name not in only:
                continue
            if need and not os.path.exists(need):
                print(f"ab.py: skipping {name}: {need} is missing "
                      f"(scripts/bench.sh --scale {scale} --only {name} makes it)", file=sys.stderr)
                continue
            wl.append((name, cmd, stdin))
    if not wl:
        die("no workload selected")
    return wl


def run(cmd, stdin, lib, env):
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    e.update(env)
    if lib != "glibc":
        e["LD_PRELOAD"] = lib
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%U %S %M %R"] + cmd, env=e, stdin=fin,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    if stdin:
        fin.close()
    lines = p.stderr.strip().splitlines()
    if p.returncode != 0 or not lines:
        return None, (lines[-3:] if lines else [f"exit status {p.returncode}"])
    u, s, m, r = lines[-1].split()
    return (wall, float(u) + float(s), int(m), int(r)), None


def main(argv):
    reps, scale, only, programs, specs = 3, "1.0", set(), False, []
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        if a == "--reps":
            v = next(it, "")
            if not v.isdigit():
                die(f"--reps wants a count, not {v!r}")
            reps = int(v)
        elif a == "--scale":
            scale = next(it, "")
            try:
                float(scale)
            except ValueError:
                die(f"--scale wants a number, not {scale!r}")
        elif a == "--only":
            only = set(next(it, "").split(","))
        elif a == "--programs":
            programs = True
        elif a.startswith("-"):
            die(f"unknown option {a} (see --help)")
        else:
            specs.append(parse_spec(a))
    if reps < 1 or not specs:
        die("give at least one NAME=SPEC and --reps of 1 or more (see --help)")
    if not os.access("/usr/bin/time", os.X_OK):
        die("GNU time is needed (apt-get install time)")
    wl = workloads(scale, only, programs)
    res, failed = {}, 0
    total, done = reps * len(wl) * len(specs), 0
    for r in range(reps):
        order = specs if r % 2 == 0 else specs[::-1]
        for name, cmd, stdin in wl:
            for sname, lib, env in order:
                done += 1
                print(f"\r[{done}/{total}] rep {r + 1}/{reps} {name} under {sname}   ",
                      end="", file=sys.stderr, flush=True)
                m, why = run(cmd, stdin, lib, env)
                if m is None:
                    failed += 1
                    print(f"\nab.py: {name} under {sname} failed: {' | '.join(why)}", file=sys.stderr)
                else:
                    res.setdefault((name, sname), []).append(m)
    print(file=sys.stderr)
    first = specs[0][0]
    nw = max(10, *(len(s[0]) for s in specs))
    logs = {s[0]: [0.0, 0.0, 0.0, 0] for s in specs}
    print(f"{reps} interleaved run(s) at scale {scale}; medians; ratios to {first}")
    print(f"{'workload':18} {'allocator':{nw}} {'wall s':>7} {'cpu s':>7} {'rss KiB':>9} "
          f"{'faults':>8} | {'wall':>6} {'cpu':>6} {'rss':>6}")
    for name, _, _ in wl:
        med = {}
        for sname, _, _ in specs:
            v = res.get((name, sname))
            if v:
                med[sname] = [statistics.median(x[i] for x in v) for i in range(4)]
        for sname, _, _ in specs:
            if sname not in med:
                print(f"{name:18} {sname:{nw}} (no run passed)")
                continue
            w, c, m, f = med[sname]
            line = f"{name:18} {sname:{nw}} {w:7.3f} {c:7.3f} {m:9.0f} {f:8.0f}"
            if first in med:
                b = med[first]
                rw, rc, rm = w / b[0], max(c, 1e-3) / max(b[1], 1e-3), m / b[2]
                line += f" | {rw:6.3f} {rc:6.3f} {rm:6.3f}"
                g = logs[sname]
                g[0] += math.log(rw)
                g[1] += math.log(rc)
                g[2] += math.log(rm)
                g[3] += 1
            print(line)
    print("geometric means:")
    for sname, (lw, lc, lm, n) in logs.items():
        if n:
            print(f"  {sname:{nw}} wall {math.exp(lw / n):.3f} cpu {math.exp(lc / n):.3f} "
                  f"peak RSS {math.exp(lm / n):.3f} over {n} workload(s)")
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Turn a scripts/bench.sh report folder into report.md and chart.svg.

    scripts/bench_report.py REPORT_DIR

Reads REPORT_DIR/results.csv (workload, alloc_id, allocator, rep, wall_s,
user_s, sys_s, maxrss_kib, minflt), REPORT_DIR/meta.txt (key=value lines
written by bench.sh) and REPORT_DIR/failures.csv, writes REPORT_DIR/report.md
and REPORT_DIR/chart.svg, and prints a short geometric-mean summary on
stdout.  Allocators are keyed by their id (mimalloc3, snmalloc, ...) and
shown by their label with the version (meta.txt alloc.ID.label, e.g.
"mimalloc 3.3.2").  Standard library only.
"""

import csv
import math
import os
import statistics
import sys
from html import escape

COLORS = {
    "glibc": "#9a9a9a",
    "jemalloc": "#4e79a7",
    "mimalloc3": "#f28e2b",
    "snmalloc": "#b07aa1",
    "tcmalloc": "#e15759",
    "mimalloc2": "#f1c27d",
    "mimalloc": "#f28e2b",
    "chunkmalloc": "#3c9a4f",
}
# the anchors of issue 9's targets: chunkmalloc against the best of these
TARGET_ANCHORS = ("mimalloc3", "snmalloc", "tcmalloc")
# workloads whose page faults the report shows (when they were run)
FAULT_WORKLOADS = ("cycling_buffers", "large_blocks", "fragmentation", "realloc_grow", "brief_threads")
LABELS = {}


def label(a):
    return LABELS.get(a, a)
EXTRA_COLORS = ["#76b7b2", "#edc948", "#ff9da7", "#9c755f"]


# ---------------------------------------------------------------- loading

def read_meta(path):
    meta, multi = {}, {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" not in line:
                    continue
                key, value = line.split("=", 1)
                multi.setdefault(key, []).append(value)
                meta[key] = value
    return meta, multi


def read_results(path):
    runs = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                wall, user, sys_ = float(row["wall_s"]), float(row["user_s"]), float(row["sys_s"])
                rss = int(row["maxrss_kib"])
            except (KeyError, ValueError):
                continue
            try:
                flt = int(row.get("minflt") or "")
            except ValueError:
                flt = None
            alloc = row.get("alloc_id") or row["allocator"]
            runs.setdefault((row["workload"], alloc), []).append((wall, user + sys_, rss, flt))
    return runs


def read_failures(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def geomean(values):
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ---------------------------------------------------------------- statistics

class Stats:
    def __init__(self, runs, workloads, allocs):
        self.workloads, self.allocs = workloads, allocs
        self.wall, self.cpu, self.rss, self.spread, self.n, self.flt = {}, {}, {}, {}, {}, {}
        for (w, a), rs in runs.items():
            walls = [r[0] for r in rs]
            self.wall[w, a] = statistics.median(walls)
            self.cpu[w, a] = statistics.median(r[1] for r in rs)
            self.rss[w, a] = statistics.median(r[2] for r in rs) / 1024.0  # MiB
            flts = [r[3] for r in rs if r[3] is not None]
            if flts:
                self.flt[w, a] = statistics.median(flts)
            self.n[w, a] = len(rs)
            med = self.wall[w, a]
            self.spread[w, a] = (max(walls) - min(walls)) / med if len(walls) > 1 and med > 0 else None

    def ratio(self, metric, w, a, base):
        table = getattr(self, metric)
        x, b = table.get((w, a)), table.get((w, base))
        if x is None or not b:
            return None
        return max(x, 0.005) / max(b, 0.005) if metric != "rss" else x / b

    def geo(self, metric, a, base):
        return geomean([self.ratio(metric, w, a, base) for w in self.workloads])

    def best(self, metric, w, among=None):
        """(allocator, value) with the lowest median on workload w, or None"""
        vals = [(getattr(self, metric)[w, a], a) for a in (among or self.allocs)
                if (w, a) in getattr(self, metric)]
        return (min(vals)[1], min(vals)[0]) if vals else None

    def worst_vs_best(self, a, metric="wall"):
        """(ratio, workload, best allocator): a's largest ratio to the best on a workload"""
        worst = None
        for w in self.workloads:
            b = self.best(metric, w)
            if b is None or (w, a) not in getattr(self, metric):
                continue
            r = self.ratio(metric, w, a, b[0])
            if r is not None and (worst is None or r > worst[0]):
                worst = (r, w, b[0])
        return worst

    def vs_best_anchor(self, a, metric, anchors):
        """(ratio, anchor): geometric mean of a ÷ anchor over the workloads both
        passed, for the anchor where it is largest (the best anchor)"""
        out = None
        for b in anchors:
            if b not in self.allocs or b == a:
                continue
            g = self.geo(metric, a, b)
            if g is not None and (out is None or g > out[0]):
                out = (g, b)
        return out


# ---------------------------------------------------------------- markdown

def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def fmt_time(t):
    return "fail" if t is None else f"{t:.2f}"


def fmt_mib(m):
    if m is None:
        return "fail"
    return f"{m:.0f}" if m >= 100 else f"{m:.1f}"


def value_table(st, metric, fmt, base, unit):
    allocs = st.allocs
    head = "| workload | " + " | ".join(f"{label(a)} ({unit})" for a in allocs) + " |"
    lines = [head, "|---|" + "---:|" * len(allocs)]
    table = getattr(st, metric)
    for w in st.workloads:
        present = [table[w, a] for a in allocs if (w, a) in table]
        best = min(present) if present else None
        cells = []
        for a in allocs:
            v = table.get((w, a))
            if v is None:
                cells.append("**fail**" if any((w, b) in table for b in allocs) else "–")
                continue
            text = fmt(v)
            if base and a != base and (w, base) in table:
                text += f" ({fmt_ratio(st.ratio(metric, w, a, base))})"
            if len(present) > 1 and v == best:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    if base:
        cells = []
        for a in allocs:
            g = st.geo(metric, a, base)
            n_ok = sum(1 for w in st.workloads if st.ratio(metric, w, a, base) is not None)
            cell = "1.00×" if a == base else fmt_ratio(g)
            if a != base and g is not None and n_ok < len(st.workloads):
                cell += f" ({n_ok} of {len(st.workloads)})"
            cells.append(cell)
        lines.append(f"| *geometric mean vs {label(base)}* | " + " | ".join(cells) + " |")
    return lines


def fmt_flt(f):
    if f is None:
        return "–"
    return f"{f / 1e6:.2f} M" if f >= 1e6 else f"{f / 1e3:.1f} k" if f >= 1e4 else f"{f:.0f}"


def chunk_table(st, chunk, anchors):
    """chunkmalloc's wall time against the best allocator and each anchor, per workload"""
    others = [a for a in anchors if a in st.allocs and a != chunk]
    head = ("| workload | best allocator | chunkmalloc ÷ best | "
            + " | ".join(f"÷ {label(a)}" for a in others) + " |")
    lines = [head, "|---|---|---:|" + "---:|" * len(others)]
    for w in st.workloads:
        b = st.best("wall", w)
        if b is None or (w, chunk) not in st.wall:
            continue
        r = st.ratio("wall", w, chunk, b[0])
        cell = fmt_ratio(r)
        if r is not None and r > 1.25:
            cell = f"**{cell}**"
        cells = [fmt_ratio(st.ratio("wall", w, chunk, a)) for a in others]
        lines.append(f"| {w} | {label(b[0])} | {cell} | " + " | ".join(cells) + " |")
    cells = [fmt_ratio(st.geo("wall", chunk, a)) for a in others]
    lines.append("| *geometric mean* | | | " + " | ".join(cells) + " |")
    return lines


def targets(st, chunk, base):
    """issue 9's targets for chunkmalloc: list of (target, measured, met)"""
    out = []
    if chunk not in st.allocs:
        return out
    ba = st.vs_best_anchor(chunk, "wall", TARGET_ANCHORS)
    if ba:
        out.append(("geometric mean of wall time ≤ 0.9× the best of mimalloc 3 / snmalloc / tcmalloc",
                    f"{fmt_ratio(ba[0])} {label(ba[1])} (the best anchor)", ba[0] <= 0.9))
    g = st.geo("rss", chunk, base)
    if g is not None and base != chunk:
        out.append((f"geometric mean of peak RSS ≤ {label(base)}'s", f"{fmt_ratio(g)} {label(base)}", g <= 1.0))
    wv = st.worst_vs_best(chunk)
    if wv:
        over = [w for w in st.workloads
                if st.best("wall", w) and (w, chunk) in st.wall
                and (st.ratio("wall", w, chunk, st.best("wall", w)[0]) or 0) > 1.25]
        text = f"worst: {wv[1]} {fmt_ratio(wv[0])} {label(wv[2])}"
        if over:
            text += f"; over 1.25×: {', '.join(over)}"
        out.append(("no workload slower than 1.25× the best allocator on it", text, wv[0] <= 1.25))
    return out


def write_markdown(path, st, meta, multi, failures, base):
    reps, scale = meta.get("reps", "?"), meta.get("scale", "?")
    allocs = st.allocs
    L = []
    L.append("# chunkmalloc allocator comparison")
    L.append("")
    L.append(f"{meta.get('date', '?')} · scale {scale} · {reps} repetition(s) · "
             f"commit `{meta.get('commit', '?')}` · {len(st.workloads)} workloads × {len(allocs)} allocators")
    if meta.get("quick") == "1":
        L.append("")
        L.append("> Quick mode (`--quick`): small scale and a single repetition - a smoke test, "
                 "not a measurement.")
    L.append("")
    L.append("![time and peak RSS relative to glibc](chart.svg)")
    L.append("")

    # summary
    chunk = "chunkmalloc" if "chunkmalloc" in allocs else None
    L.append("## Summary (geometric means over all workloads)")
    L.append("")
    lb = label(base)
    head = (f"| allocator | time vs {lb} | peak RSS vs {lb} | CPU time vs {lb} | worst workload vs its best |"
            " fastest in | smallest in | failed runs |")
    L += [head, "|---|---:|---:|---:|---|---:|---:|---:|"]
    fastest = {a: 0 for a in allocs}
    smallest = {a: 0 for a in allocs}
    for w in st.workloads:
        for table, counter in ((st.wall, fastest), (st.rss, smallest)):
            vals = [(table[w, a], a) for a in allocs if (w, a) in table]
            if len(vals) > 1:
                counter[min(vals)[1]] += 1
    nfail = {a: sum(1 for f in failures if (f.get("alloc_id") or f.get("allocator")) == a) for a in allocs}
    for a in allocs:
        wv = st.worst_vs_best(a)
        worst = "–" if wv is None else (
            "best everywhere" if wv[0] <= 1.0 else f"{fmt_ratio(wv[0])} {label(wv[2])} ({wv[1]})")
        L.append(f"| {label(a)} | {fmt_ratio(st.geo('wall', a, base))} | {fmt_ratio(st.geo('rss', a, base))} | "
                 f"{fmt_ratio(st.geo('cpu', a, base))} | {worst} | {fastest[a]} | {smallest[a]} | {nfail[a]} |")
    L.append("")
    L.append("Ratios below 1 mean faster / smaller than the reference.  \"Worst workload vs its best\" is "
             "the allocator's largest wall-time ratio to the fastest allocator on a workload.  \"Fastest in\" "
             "and \"smallest in\" count the workloads where the allocator has the best median wall time "
             "and peak RSS.  CPU time (user + sys) is less sensitive than wall time to other load on "
             "a shared machine, but does not show time lost waiting.")
    L.append("")
    tg = targets(st, chunk, base) if chunk else []
    if tg:
        L.append("### Targets (issue 9)")
        L.append("")
        L.append(f"| target for {label(chunk)} | measured | met |")
        L.append("|---|---|---|")
        for t, m, ok in tg:
            L.append(f"| {t} | {m} | {'yes' if ok else '**no**'} |")
        L.append("")
        L.append("The best anchor is the one of mimalloc 3, snmalloc and tcmalloc against which chunkmalloc's "
                 "geometric-mean time ratio is largest (over the workloads both passed).")
        L.append("")

    L.append("## Wall time")
    L.append("")
    L.append(f"Median wall-clock seconds; in parentheses the ratio to {lb}.  Best per row in bold.")
    L.append("")
    L += value_table(st, "wall", fmt_time, base, "s")
    L.append("")

    L.append("## Peak RSS")
    L.append("")
    L.append(f"Median of the maximum resident set size (MiB, as reported by GNU time); "
             f"in parentheses the ratio to {lb}.")
    L.append("")
    L += value_table(st, "rss", fmt_mib, base, "MiB")
    L.append("")

    if chunk and len(allocs) > 1:
        L.append("## chunkmalloc against the fastest allocator and the anchors")
        L.append("")
        L.append("chunkmalloc's median wall time divided by the fastest allocator's on each workload "
                 "(bold: over 1.25×) and by each anchor's.")
        L.append("")
        L += chunk_table(st, chunk, ("mimalloc3", "snmalloc", "tcmalloc", "jemalloc", "mimalloc2", "glibc"))
        L.append("")

    fw = [w for w in FAULT_WORKLOADS if w in st.workloads and any((w, a) in st.flt for a in allocs)]
    if fw:
        L.append("## Minor page faults")
        L.append("")
        L.append(f"Median minor page faults per run (GNU time `%R`) on the workloads where they matter; "
                 f"in parentheses the ratio to {lb}.  Every workload's faults are in `runs.csv`.")
        L.append("")
        fst = Stats({}, fw, allocs)
        fst.wall = st.flt
        L += value_table(fst, "wall", fmt_flt, base, "faults")
        L.append("")

    L.append("## CPU time (user + sys)")
    L.append("")
    L.append("Median seconds of CPU time; for multi-threaded workloads this exceeds the wall time "
             "when threads ran in parallel, and shows spinning or system-call overhead.")
    L.append("")
    L += value_table(st, "cpu", fmt_time, base, "s")
    L.append("")

    spreads = {a: [st.spread[w, a] for w in st.workloads if st.spread.get((w, a)) is not None] for a in allocs}
    if any(spreads.values()):
        L.append("## Run-to-run noise")
        L.append("")
        L.append("Spread of wall time across repetitions, (max − min) / median, per allocator: "
                 "median and worst over the workloads.")
        L.append("")
        L.append("| allocator | median spread | worst spread (workload) |")
        L.append("|---|---:|---|")
        for a in allocs:
            s = spreads[a]
            if not s:
                continue
            worst_w = max((w for w in st.workloads if st.spread.get((w, a)) is not None),
                          key=lambda w: st.spread[w, a])
            L.append(f"| {label(a)} | {statistics.median(s) * 100:.0f}% | "
                     f"{st.spread[worst_w, a] * 100:.0f}% ({worst_w}) |")
        L.append("")

    if failures:
        L.append("## Failures")
        L.append("")
        L.append("Failed runs are left out of the medians (a cell reads **fail** when no run passed).")
        L.append("")
        L.append("| workload | allocator | rep | reason |")
        L.append("|---|---|---:|---|")
        for f in failures:
            L.append(f"| {f.get('workload')} | {f.get('allocator')} | {f.get('rep')} | "
                     f"{(f.get('reason') or '').replace('|', '/')} |")
        L.append("")

    L.append("## Workloads")
    L.append("")
    L.append("| workload | what it does |")
    L.append("|---|---|")
    for w in st.workloads:
        L.append(f"| {w} | {meta.get('desc.' + w, '').replace('|', '/')} |")
    L.append("")

    L.append("## Machine and allocators")
    L.append("")
    L.append(f"- CPU: {meta.get('host_cpu', '?')}, {meta.get('host_nproc', '?')} logical CPUs "
             f"(`nproc`); memory {meta.get('host_mem', '?')}")
    L.append(f"- Kernel {meta.get('host_kernel', '?')} ({meta.get('host_os', '?')}); "
             f"load average at the end: {meta.get('host_load', '?')}")
    L.append(f"- Compiler for the workloads: {meta.get('cc', '?')} (`-O2 -pthread`)")
    L.append("")
    L.append("| allocator | version | library | from |")
    L.append("|---|---|---|---|")
    for a in allocs:
        L.append(f"| {label(a)} | {meta.get(f'alloc.{a}.version', '?')} | `{meta.get(f'alloc.{a}.lib', '?')}` "
                 f"| {meta.get(f'alloc.{a}.source', '?')} |")
    for s in multi.get("skipped", []):
        L.append(f"| ~~{s.split(':', 1)[0]}~~ | | | skipped: {s.split(':', 1)[1].strip() if ':' in s else s} |")
    L.append("")

    L.append("## Method")
    L.append("")
    L.append(
        "Each workload is a separate process started by `scripts/bench.sh`; the allocator under test "
        "is injected with `LD_PRELOAD` (glibc runs without a preload), and a probe checks beforehand "
        "that the preloaded library really provides `malloc`.  Every run is measured by "
        "`/usr/bin/time -f '%e %U %S %M %R'` (wall, user and system seconds, peak RSS in KiB of the "
        "largest process, minor page faults).  mimalloc 3 and snmalloc are built from the sources "
        "bundled in the libmimalloc-sys and snmalloc-sys crates, the other anchors are Debian's "
        "packages (`scripts/anchors.sh`; versions in the table above).  Repetitions are interleaved: each repetition runs every workload under "
        "every allocator, and the allocator order is rotated per repetition and per workload so that "
        "slow drifts of the machine do not favour one allocator.  A run counts only if it exits 0 and "
        "its checksum line (computed from the data it produced, never from addresses) equals the "
        f"glibc run's; the workloads also verify the contents of every block before freeing it.  "
        f"Tables report medians of {reps} repetition(s); ratios are median over median, and summary "
        "rows are geometric means of the per-workload ratios.  The machine is shared and noisy, so "
        "differences of a few percent are not meaningful.")
    L.append("")
    L.append("Files: `results.csv` (passing runs), `runs.csv` (all runs with status and checksum), "
             "`failures.csv`, `meta.txt`, `logs/` (output of failed runs).  Reproduce with "
             f"`scripts/bench.sh --scale {scale} --reps {reps}`.")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


# ---------------------------------------------------------------- SVG chart

def color_of(a, allocs):
    if a in COLORS:
        return COLORS[a]
    extras = [x for x in allocs if x not in COLORS]
    return EXTRA_COLORS[extras.index(a) % len(EXTRA_COLORS)]


def nice_bounds(ratios):
    lo = min([0.5] + ratios)
    hi = max([2.0] + ratios)
    lo_e = max(-4, math.floor(math.log2(lo) + 1e-9))
    hi_e = min(4, math.ceil(math.log2(hi) - 1e-9))
    return lo_e, hi_e


def tick_label(v):
    return f"{v:g}×"


def svg_panel(out, st, metric, base, title, x0, y0, width, height, label_room):
    """One panel: grouped bars of ratio-to-base per workload, log2 y axis."""
    allocs = st.allocs
    bars = [a for a in allocs if a != base]  # the baseline is drawn as the 1x line
    groups = list(st.workloads) + ["geomean"]
    table = getattr(st, metric)
    complete = {a: sum(1 for w in st.workloads if st.ratio(metric, w, a, base) is not None) for a in bars}
    partial = False

    def ratio(w, a):
        if w == "geomean":
            return st.geo(metric, a, base)
        return st.ratio(metric, w, a, base)

    vals = [ratio(w, a) for w in groups for a in bars]
    lo_e, hi_e = nice_bounds([v for v in vals if v])
    lo, hi = 2.0 ** lo_e, 2.0 ** hi_e
    axis_w = 56
    px0, pw = x0 + axis_w, width - axis_w - 10
    py0, ph = y0 + 34, height - 34 - label_room

    def ypos(v):
        v = min(max(v, lo), hi)
        return py0 + ph * (math.log2(hi) - math.log2(v)) / (math.log2(hi) - math.log2(lo))

    bg, grid, fg = [], [], []
    out.append(f'<text x="{x0 + 4}" y="{y0 + 18}" class="title">{escape(title)}</text>')
    bg.append(f'<rect x="{px0}" y="{py0}" width="{pw}" height="{ph}" class="plot"/>')
    # grid: powers of two labelled, 1.5x steps light
    for e in range(lo_e, hi_e + 1):
        v = 2.0 ** e
        y = ypos(v)
        if e != 0:
            grid.append(f'<line x1="{px0}" x2="{px0 + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        grid.append(f'<text x="{px0 - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{tick_label(v)}</text>')
        if e < hi_e:
            ym = ypos(v * 1.5)
            grid.append(f'<line x1="{px0}" x2="{px0 + pw}" y1="{ym:.1f}" y2="{ym:.1f}" class="minor"/>')
    grid.append(f'<text x="{x0 + 12}" y="{py0 + ph / 2:.1f}" class="axis" text-anchor="middle" '
                f'transform="rotate(-90 {x0 + 12} {py0 + ph / 2:.1f})">× {escape(label(base))} (log scale)</text>')

    ng, na = len(groups), max(1, len(bars))
    gm_scale = 1.8  # the geomean group is wider, to leave room for its labels
    gw = pw / (ng - 1 + gm_scale)
    bar_w = min(16.0, (gw - 6) / na)
    y1 = ypos(1.0)
    for gi, w in enumerate(groups):
        gx0, gwid, bw = px0 + gi * gw, gw, bar_w
        if w == "geomean":
            gwid = gw * gm_scale
            bw = min(26.0, (gwid - 8) / na)
            bg.append(f'<rect x="{gx0:.1f}" y="{py0}" width="{gwid:.1f}" height="{ph}" class="gmbg"/>')
            bg.append(f'<line x1="{gx0:.1f}" x2="{gx0:.1f}" y1="{py0}" y2="{py0 + ph}" class="sep"/>')
        elif gi % 2 == 1:
            bg.append(f'<rect x="{gx0:.1f}" y="{py0}" width="{gwid:.1f}" height="{ph}" class="band"/>')
        gx = gx0 + (gwid - bw * na) / 2
        for ai, a in enumerate(bars):
            r = ratio(w, a)
            bx = gx + ai * bw
            cx = bx + bw / 2
            if r is None:
                if w != "geomean" and (w, base) in table:
                    fg.append(f'<text x="{cx:.1f}" y="{y1 - 4:.1f}" class="fail" text-anchor="middle">✕'
                              f'<title>{escape(a)} on {escape(w)}: no passing run</title></text>')
                continue
            yr = ypos(r)
            top, h = min(yr, y1), max(abs(yr - y1), 1.0)
            tip = f"{label(a)} on {w}: {r:.2f}× {label(base)}"
            if w != "geomean":
                raw = table.get((w, a))
                tip += f" ({raw:.2f} s)" if metric in ("wall", "cpu") else f" ({raw:.1f} MiB)"
            else:
                tip += f" (geometric mean over {complete[a]} of {len(st.workloads)} workloads)"
            fg.append(f'<rect x="{bx + 0.5:.1f}" y="{top:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                      f'fill="{color_of(a, allocs)}"><title>{escape(tip)}</title></rect>')
            if r > hi or r < lo:  # clipped: print the value at the edge
                ty = py0 + 10 if r > hi else py0 + ph - 4
                fg.append(f'<text x="{cx:.1f}" y="{ty:.1f}" class="clip" text-anchor="middle">{r:.1f}</text>')
            if w == "geomean":
                star = ""
                if complete[a] < len(st.workloads):
                    star, partial = "*", True
                ty = top - 4 if r >= 1 else top + h + 11
                fg.append(f'<text x="{cx:.1f}" y="{ty:.1f}" class="gmval" text-anchor="middle">{r:.2f}{star}</text>')
        lx = gx0 + gwid / 2
        ly = py0 + ph + 10
        cls = "wlab gm" if w == "geomean" else "wlab"
        fg.append(f'<text x="{lx:.1f}" y="{ly:.1f}" class="{cls}" text-anchor="end" '
                  f'transform="rotate(-40 {lx:.1f} {ly:.1f})">{escape(w)}</text>')
    base_line = f'<line x1="{px0}" x2="{px0 + pw}" y1="{y1:.1f}" y2="{y1:.1f}" class="base"/>'
    out.extend(bg + grid + [base_line] + fg)
    return partial


def legend_layout(allocs, base, width):
    """[(allocator or None for the note, text, x, y offset)], wrapped to the width"""
    items = [(a, f"{label(a)} (= 1×)" if a == base else label(a)) for a in allocs]
    items.append((None, "✕ = no passing run"))
    out, lx, ly = [], 10, 0
    for a, text in items:
        w = int(7.4 * len(text)) + 40
        if lx > 10 and lx + w > width - 10:
            lx, ly = 10, ly + 20
        out.append((a, text, lx, ly))
        lx += w
    return out


def write_svg(path, st, base, meta):
    allocs = st.allocs
    ng = len(st.workloads) + 1
    nbars = max(1, len([a for a in allocs if a != base]))
    width = max(760, int(56 + 10 + ng * max(14 * nbars + 12, 40)))
    label_room = 16 + int(5.0 * max(len(w) for w in list(st.workloads) + ["geomean"]))
    panel_h = 300 + label_room
    legend = legend_layout(allocs, base, width)
    header = 78 + legend[-1][3]
    partial = any(st.ratio(m, w, a, base) is None and (w, base) in getattr(st, m)
                  for m in ("wall", "rss") for w in st.workloads for a in allocs if a != base)
    height = header + 2 * panel_h + (22 if partial else 0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           "<style>",
           ".title{font-size:15px;font-weight:bold;fill:#222}",
           ".sub{font-size:12px;fill:#555}",
           ".tick{font-size:11px;fill:#444}",
           ".axis{font-size:11px;fill:#444}",
           ".wlab{font-size:11.5px;fill:#222}",
           ".gm{font-weight:bold}",
           ".gmval{font-size:10px;fill:#222;font-weight:bold}",
           ".clip{font-size:9px;fill:#000}",
           ".fail{font-size:13px;fill:#c00;font-weight:bold}",
           ".leg{font-size:12px;fill:#222}",
           ".note{font-size:11px;fill:#555}",
           ".plot{fill:#fff;stroke:#bbb}",
           ".band{fill:#f4f4f4}",
           ".gmbg{fill:#fff6e0}",
           ".grid{stroke:#d0d0d0;stroke-width:1}",
           ".minor{stroke:#ececec;stroke-width:1}",
           ".base{stroke:#333;stroke-width:1.3}",
           ".sep{stroke:#999;stroke-dasharray:4 3}",
           "</style>",
           f'<rect width="{width}" height="{height}" fill="#fff"/>']
    out.append(f'<text x="10" y="22" class="title" style="font-size:17px">'
               f'Allocator comparison: wall time and peak RSS relative to {escape(label(base))}</text>')
    sub = (f"median of {meta.get('reps', '?')} run(s) per cell at scale {meta.get('scale', '?')} · "
           f"{meta.get('host_nproc', '?')} CPUs · {meta.get('date', '')} · lower is better")
    skipped = [x.split(":", 1)[0] for x in meta.get("_skipped", [])]
    if skipped:
        sub += " · not available: " + ", ".join(skipped)
    out.append(f'<text x="10" y="42" class="sub">{escape(sub)}</text>')
    # legend on its own row(s)
    for a, text, lx, ly in legend:
        if a is None:
            out.append(f'<text x="{lx}" y="{65 + ly}" class="note">{escape(text)}</text>')
            continue
        if a == base:
            out.append(f'<line x1="{lx}" x2="{lx + 14}" y1="{60.5 + ly}" y2="{60.5 + ly}" class="base" '
                       f'style="stroke-width:2"/>')
        else:
            out.append(f'<rect x="{lx}" y="{54 + ly}" width="13" height="13" fill="{color_of(a, allocs)}"/>')
        out.append(f'<text x="{lx + 19}" y="{65 + ly}" class="leg">{escape(text)}</text>')
    svg_panel(out, st, "wall", base, f"Wall time ÷ {label(base)}", 0, header, width, panel_h, label_room)
    svg_panel(out, st, "rss", base, f"Peak RSS ÷ {label(base)}", 0, header + panel_h, width, panel_h, label_room)
    if partial:
        out.append(f'<text x="10" y="{height - 8}" class="note">* geometric mean over the workloads '
                   f'where the allocator had a passing run</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    meta, multi = read_meta(os.path.join(folder, "meta.txt"))
    runs = read_results(os.path.join(folder, "results.csv"))
    failures = read_failures(os.path.join(folder, "failures.csv"))
    allocs = meta.get("allocators", "").split() or sorted({a for _, a in runs})
    workloads = meta.get("workloads", "").split() or sorted({w for w, _ in runs})
    base = meta.get("reference") or allocs[0]
    for a in allocs:
        LABELS[a] = meta.get(f"alloc.{a}.label", a)
    st = Stats(runs, workloads, allocs)
    write_markdown(os.path.join(folder, "report.md"), st, meta, multi, failures, base)
    write_svg(os.path.join(folder, "chart.svg"), st, base, dict(meta, _skipped=multi.get("skipped", [])))

    # summary for the terminal
    lines = [f"geometric means over {len(workloads)} workloads "
             f"(scale {meta.get('scale', '?')}, {meta.get('reps', '?')} rep(s)); ratio to {label(base)}:"]
    width = max([9] + [len(label(a)) for a in allocs])
    lines.append(f"  {'allocator':<{width}} {'wall':>7} {'peak RSS':>9} {'CPU':>7}   worst workload vs its best")
    for a in allocs:
        wv = st.worst_vs_best(a)
        worst = "" if wv is None else f"{fmt_ratio(wv[0])} {label(wv[2])} ({wv[1]})"
        lines.append(f"  {label(a):<{width}} {fmt_ratio(st.geo('wall', a, base)):>7} "
                     f"{fmt_ratio(st.geo('rss', a, base)):>9} {fmt_ratio(st.geo('cpu', a, base)):>7}   {worst}")
    if "chunkmalloc" in allocs:
        for t, m, ok in targets(st, "chunkmalloc", base):
            lines.append(f"  target: {t}: {m} - {'met' if ok else 'NOT met'}")
    if failures:
        lines.append(f"  {len(failures)} failed run(s), see failures.csv")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Copies a benchmark report into docs/PERF.md.

usage: scripts/update_perf_md.py REPORT_DIR

Replaces the text between the markers `<!-- bench-report:begin -->` and
`<!-- bench-report:end -->` in docs/PERF.md with REPORT_DIR/report.md
(its title dropped, its headings moved one level down, the chart link
pointed at docs/bench-chart.svg, which is copied from REPORT_DIR/chart.svg),
followed by REPORT_DIR/fastpath.txt when present. Everything outside the
markers is left as it is. Standard library only.
"""
import pathlib
import re
import shutil
import sys

BEGIN = "<!-- bench-report:begin -->"
END = "<!-- bench-report:end -->"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    report_dir = pathlib.Path(sys.argv[1])
    root = pathlib.Path(__file__).resolve().parent.parent
    perf = root / "docs" / "PERF.md"
    report = (report_dir / "report.md").read_text()
    lines = report.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = []
    for line in lines:
        if line.startswith("#"):
            line = "#" + line
        line = re.sub(r"\]\(chart\.svg\)", "](bench-chart.svg)", line)
        body.append(line)
    fast = report_dir / "fastpath.txt"
    if fast.exists():
        body += [
            "",
            "### Fast-path instructions in the same run",
            "",
            "`scripts/fastpath-probe.sh --preload 100000` (callgrind; see above for the method):",
            "",
            "```",
            fast.read_text().rstrip(),
            "```",
        ]
    chart = report_dir / "chart.svg"
    if chart.exists():
        shutil.copyfile(chart, root / "docs" / "bench-chart.svg")
    text = perf.read_text()
    block = BEGIN + "\n" + "\n".join(body).strip() + "\n" + END
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Whole-program comparison (`scripts/bench.sh`)\n\n" + block + "\n"
    perf.write_text(text)
    print(f"updated {perf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The tables of docs/benchmarks.md from the JSON of benches/bench_node.py or benches/compare.py, as Markdown on
stdout, so the page is updated by pasting, not by retyping figures.

    .venv/bin/python benches/node_table.py docs/bench_node.json
    .venv/bin/python benches/node_table.py docs/compare.json
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import orjson


def tables(results: dict) -> str:
    w = results["workload"]
    methods = results["methods"]
    out = [f"Workload: {w['procs_per_job']} processes per job (fanout {w['fanout']}, {w['threads']}, each waking "
           f"once a second), {w['cgroups']}; sampling at {w['hz']} Hz. Machine: {results['machine']['cpu']}, "
           f"{results['machine']['cores']} cores, Linux {results['machine']['kernel']}, Python "
           f"{results['machine']['python']}, psutil {results['machine']['psutil']}. Date {results['date']}. "
           f"{results['rounds']} rounds of {results['seconds']:g} s per method. Command: `{results['command']}`.", ""]
    out[0] = textwrap.fill(out[0], width=118, break_on_hyphens=False, break_long_words=False)
    for why_m, why in results.get("skipped", {}).items():
        out.append(f"- {why_m} skipped: {why}")
    if results.get("skipped"):
        out.append("")
    out.append("CPU % of one core, median of the rounds (min-max):")
    out.append("")
    out.append("| method | " + " | ".join(f"{p['jobs']} jobs ({p['nprocs']} procs)" for p in results["points"]) + " |")
    out.append("|---|" + "---:|" * len(results["points"]))
    for m in methods:
        cells = []
        for p in results["points"]:
            s = p["methods"][m]
            cells.append(f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    rates = [f"{m} {p['methods'][m]['samples_per_s'][0]:.2f}/s at {p['jobs']} jobs" for p in results["points"]
             for m in methods if p["methods"][m].get("samples_per_s") and p["methods"][m]["samples_per_s"][0] != 1.0]
    if rates:
        out.append("")
        out.append(textwrap.fill("Samples per second of each job where not 1 (first round): " + ", ".join(rates) + ".",
                                 width=118, break_on_hyphens=False, break_long_words=False))
    out.append("")
    out.append("Ratios within a round, median (min-max); processes on the node and load average (1, 5, 15 min) "
               "at the end of each round:")
    out.append("")
    out.append("| ratio | " + " | ".join(f"{p['jobs']} jobs" for p in results["points"]) + " |")
    out.append("|---|" + "---:|" * len(results["points"]))
    names = list(results["points"][-1]["ratios"])
    for r in names:
        cells = []
        for p in results["points"]:
            s = p["ratios"].get(r)
            cells.append(f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})" if s else "")
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    out.append("| processes on the node | " + " | ".join(
        f"{p['node_procs']['min']}-{p['node_procs']['max']}" for p in results["points"]) + " |")
    out.append("| load | " + " | ".join(
        "; ".join(" ".join(f"{x:.1f}" for x in la) for la in p["loadavg"]) for p in results["points"]) + " |")
    return "\n".join(out) + "\n"


def compare_table(results: dict) -> str:
    m = results["machine"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, psutil {m['psutil']}. "
           f"Date {results.get('date', '?')}. Command: `{results.get('command', 'benches/compare.py')}`.", ""]
    out[0] = textwrap.fill(out[0], width=118, break_on_hyphens=False, break_long_words=False)
    for name, why in results.get("skipped", {}).items():
        out.append(f"- {name} skipped: {why}")
    if results.get("skipped"):
        out.append("")
    out.append("| processes | on the node | native | C floor | psutil | prmon --fast-memmon | prmon | native / C floor "
               "| psutil / native | prmon-fast / native | prmon / native |")
    out.append("|---:" * 11 + "|")

    def us(v):
        return "" if v is None else (f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs")

    def x(v):
        return "" if v is None else f"{v:.2f}x"

    for t in results["trees"]:
        out.append(f"| {t['procs']} | {t['node_procs']} | {us(t['native_us'])} | {us(t.get('cfloor_us'))} | "
                   f"{us(t['psutil_us'])} | {us(t.get('prmon_fast_us'))} | {us(t.get('prmon_us'))} | "
                   f"{x(t.get('native_over_cfloor'))} | {x(t['psutil_over_native'])} | "
                   f"{x(t.get('prmon_fast_over_native'))} | {x(t.get('prmon_over_native'))} |")
    if "cgroup" in results:
        c = results["cgroup"]
        out.append("")
        out.append(f"CgroupSampler.sample(): {c['at_10_us']:.1f} µs with 10 processes in the cgroup, "
                   f"{c['at_1000_us']:.1f} µs with 1000 ({c['ratio']:.2f}x).")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        results = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        print(f"node_table: cannot read {path}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(compare_table(results) if "trees" in results else tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The figures of docs/, made from text sources in the repository (`make docs` runs this):

- docs/pieces.svg from docs/pieces.dot, by Graphviz's `dot` (Debian package `graphviz`);
- docs/bench_node_ratios.png and docs/compare.png from the benchmark JSON in docs/, by matplotlib (the `bench` extra).

Each figure carries the SHA-256 of its source (an XML comment in the SVG, a tEXt chunk in the PNGs), so
tests/integration/test_docs_pages.py finds a figure older than its source without Graphviz or matplotlib.

    .venv/bin/python tools/docs_figures.py            # all figures
    .venv/bin/python tools/docs_figures.py pieces     # only the picture of the pieces
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: The SVG comment and the PNG text key that hold the source's hash; tests/integration/test_docs_pages.py reads the same.
SOURCE_KEY = "gridpilot-source-sha256"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pieces() -> None:
    """docs/pieces.svg: dot's SVG with the hash comment after the XML declaration."""
    src = DOCS / "pieces.dot"
    svg = subprocess.run(["dot", "-Tsvg", str(src)], check=True, capture_output=True, text=True).stdout
    declaration, rest = svg.split("\n", 1)
    (DOCS / "pieces.svg").write_text(f"{declaration}\n<!-- {SOURCE_KEY}: {source_hash(src)} -->\n{rest}")


def _save(fig, out: Path, src: Path) -> None:
    # No date in the metadata: the same JSON gives the same file.
    fig.savefig(out, dpi=110, bbox_inches="tight",
                metadata={SOURCE_KEY: source_hash(src), "Software": None, "Source": src.name})


def node_ratios() -> None:
    """docs/bench_node_ratios.png: every method's CPU against the C floor's (tree discovery), over jobs per node."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = DOCS / "bench_node.json"
    data = json.loads(src.read_text())
    jobs = [p["jobs"] for p in data["points"]]
    floor = [p["methods"]["cfloor-tree"]["median"] for p in data["points"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for method in data["methods"]:
        if method == "cfloor-tree":
            continue
        ratio = [p["methods"][method]["median"] / f for p, f in zip(data["points"], floor)]
        ax.plot(jobs, ratio, marker="o", label=method)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="C floor (tree)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(jobs, [f"{j}\n({j * data['workload']['procs_per_job']} procs)" for j in jobs])
    ax.set_xlabel("jobs per node")
    ax.set_ylabel("CPU / the C floor's (median of rounds)")
    ax.set_title(f"The full node at 1 Hz, {data['date']}: CPU against the C floor", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, DOCS / "bench_node_ratios.png", src)
    plt.close(fig)


def compare() -> None:
    """docs/compare.png: the cost of one sample of one job's tree, per method, over the tree's size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = DOCS / "compare.json"
    data = json.loads(src.read_text())
    trees = data["trees"]
    procs = [t["procs"] for t in trees]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, label in (("native_us", "native TreeSampler.sample()"), ("cfloor_us", "C floor"),
                       ("psutil_us", "psutil"), ("prmon_fast_us", "prmon --fast-memmon (per sample)"),
                       ("prmon_us", "prmon (per sample)")):
        if all(key in t for t in trees):
            ax.plot(procs, [t[key] / 1000 for t in trees], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(procs, [f"{t['procs']}\n({t['node_procs']} on node)" for t in trees])
    ax.set_xlabel("processes in the job")
    ax.set_ylabel("ms per sample")
    ax.set_title(f"One job's tree, one sample, {data['date']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, DOCS / "compare.png", src)
    plt.close(fig)


FIGURES = {"pieces": pieces, "bench_node_ratios": node_ratios, "compare": compare}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("figures", nargs="*", metavar="FIGURE", help=f"which ({', '.join(FIGURES)}; default all)")
    names = ap.parse_args(argv).figures or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        ap.error(f"no figure {', '.join(unknown)}")
    for name in names:
        FIGURES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""docs/benchmarks.md is executed at a test's scale: its ```sh bench blocks run in order in one bash
(`set -euo pipefail`) from the checkout, with `--quick` added to each benchmark and the files they write put in a
temporary directory instead of docs/. The JSON must hold every method, measured (CPU % > 0, and the processes seen
equal to the processes spawned) or skipped with the reason; prmon is measured only when PRMON names a binary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson

from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs
from support import paths

ROOT = paths.ROOT
PAGE = ROOT / "docs" / "benchmarks.md"
_FENCE = re.compile(r"^```([A-Za-z0-9_ -]*)\n(.*?)^```\s*$", re.M | re.S)
QUICK = ("benches/bench_node.py", "benches/compare.py")

sys.path.insert(0, str(ROOT / "benches"))
import bench_node  # noqa: E402


def bench_blocks() -> list[str]:
    return [body for tag, body in _FENCE.findall(PAGE.read_text()) if tag.split() == ["sh", "bench"]]


def at_quick_scale(script: str, out: Path) -> str:
    lines = []
    for line in script.splitlines():
        line = line.replace("docs/", f"{out}/").replace(".venv/bin/python", sys.executable)
        if any(b in line for b in QUICK):
            line += " --quick"
        lines.append(line)
    return "\n".join(lines)


def test_the_page_runs_and_every_method_is_measured_or_skipped_with_why(tmp_path):
    blocks = bench_blocks()
    assert blocks, "docs/benchmarks.md lost its ```sh bench blocks"
    script = "set -euo pipefail\n" + "\n".join(at_quick_scale(b, tmp_path) for b in blocks)
    for name in ("bench_node.py", "node_table.py", "compare.py"):
        assert name in script, f"the executed part of the page lost {name}"
    env = {k: v for k, v in os.environ.items() if k != "PRMON"}
    if os.environ.get("PRMON"):
        env["PRMON"] = os.environ["PRMON"]
    res = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr

    node = orjson.loads((tmp_path / "bench_node.json").read_bytes())
    try:
        cgroups = cgroupfs.can_make_children(cgroupfs.own_v2_dir())
    except CgroupError:
        cgroups = False
    skipped = node["skipped"]
    assert "pilot" in node["methods"] and node["pilot"]["measured_jobs"] == 2
    for m in bench_node.METHODS:
        if m in node["methods"]:
            continue
        assert m in skipped and skipped[m], f"{m} neither measured nor skipped with a reason"
        if m.startswith("prmon"):
            assert not env.get("PRMON") and "PRMON" in skipped[m]
        else:
            assert m in bench_node.CGROUP_METHODS and not cgroups, f"{m} skipped: {skipped[m]}"
    assert [p["jobs"] for p in node["points"]] == [2, 4]
    for point in node["points"]:
        assert point["nprocs"] == point["jobs"] * node["workload"]["procs_per_job"]
        for m in node["methods"]:
            s = point["methods"][m]
            assert all(c > 0 for c in s["cpu_pct"]), (m, s)
            assert s["min"] <= s["median"] <= s["max"]
            if m not in bench_node.UNCOUNTED:
                assert s["nprocs_seen"] == [point["nprocs"]] * node["rounds"], (m, s)
            if m != "pilot":
                assert len(s["ticks"]) == node["rounds"] and all(t >= 1 for t in s["ticks"]), (m, s)
        assert all(r["median"] > 0 for r in point["ratios"].values())
    assert "| native-tree |" in res.stdout, "node_table.py printed no table"

    cmp = orjson.loads((tmp_path / "compare.json").read_bytes())
    assert [t["procs"] for t in cmp["trees"]] == [10, 30]
    for t in cmp["trees"]:
        assert t["native_us"] > 0 and t["psutil_us"] > 0 and t["node_procs"] >= t["procs"]
        assert ("cfloor_us" in t) != ("cfloor" in cmp["skipped"])
